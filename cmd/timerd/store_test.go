package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/timerd/timerd/cmd/timerd/node"
	"github.com/timerd/timerd/ingest/apiserver"
	"github.com/timerd/timerd/store"
	"github.com/timerd/timerd/test/testkit"
)

// newNodeStore makes DIR/node.db with n rules and returns DIR.
func newNodeStore(t *testing.T, n int) string {
	t.Helper()
	dir := t.TempDir()
	st, err := store.Open(filepath.Join(dir, "node.db"), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var rules []store.Rule
	for id := int64(1); id <= int64(n); id++ {
		rules = append(rules, store.Rule{ID: id, Ref: fmt.Sprintf("pack.r%d", id), TriggerRef: "core.intervaltimer",
			Params: json.RawMessage(`{"interval":5}`), UpdatedAt: time.Unix(1700000000, 0)})
	}
	if err := st.PutRules(rules, nil); err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	return dir
}

// storeRefs opens the store at path and returns its rule refs.
func storeRefs(t *testing.T, path string) []string {
	t.Helper()
	st, err := store.Open(path, store.Options{})
	if err != nil {
		t.Fatalf("store.Open(%s) = %v", path, err)
	}
	defer st.Close()
	var refs []string
	if err := st.ForEachRule(func(r store.Rule, _ store.Watermark) error {
		refs = append(refs, r.Ref)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return refs
}

func TestStoreBackupAndCompactOffline(t *testing.T) {
	t.Parallel()
	dir := newNodeStore(t, 500)
	out := filepath.Join(t.TempDir(), "backup.db")
	stdout, code, err := run("store", "backup", "--data-dir", dir, "--out", out)
	if code != 0 || !strings.Contains(stdout, "backed up "+filepath.Join(dir, "node.db")) || !strings.Contains(stdout, "500 rules") {
		t.Fatalf("store backup --data-dir = exit %d, %v, %q; want 0 and a line naming node.db and its 500 rules", code, err, stdout)
	}
	if refs := storeRefs(t, out); len(refs) != 500 {
		t.Errorf("backup holds %d rules, want 500", len(refs))
	}
	if _, code, err := run("store", "backup", "--data-dir", dir, "--out", out); code != 1 || err == nil || !strings.Contains(err.Error(), "exists") {
		t.Errorf("store backup onto an existing file = exit %d, %v; want 1 saying it exists", code, err)
	}

	stdout, code, err = run("store", "compact", "--data-dir", dir, "--keep-backup")
	if code != 0 || !strings.Contains(stdout, "compacted ") || !strings.Contains(stdout, "→") || !strings.Contains(stdout, "node.db.bak") {
		t.Fatalf("store compact --keep-backup = exit %d, %v, %q; want 0, sizes before → after and the .bak", code, err, stdout)
	}
	if refs := storeRefs(t, filepath.Join(dir, "node.db")); len(refs) != 500 {
		t.Errorf("compacted store holds %d rules, want 500", len(refs))
	}
	if refs := storeRefs(t, filepath.Join(dir, "node.db.bak")); len(refs) != 500 {
		t.Errorf("node.db.bak holds %d rules, want 500", len(refs))
	}
	other := filepath.Join(t.TempDir(), "compact.db")
	if stdout, code, err := run("store", "compact", "--data-dir", dir, "--out", other); code != 0 || !strings.Contains(stdout, other) {
		t.Errorf("store compact --out = exit %d, %v, %q; want 0 naming %s", code, err, stdout, other)
	}
}

// A store a node holds is refused, saying why, and left as it was.
func TestStoreCommandsRefuseARunningNode(t *testing.T) {
	t.Parallel()
	dir := newNodeStore(t, 3)
	st, err := store.Open(filepath.Join(dir, "node.db"), store.Options{}) // what a running node does
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	out := filepath.Join(t.TempDir(), "b.db")
	for _, args := range [][]string{
		{"store", "backup", "--data-dir", dir, "--out", out},
		{"store", "compact", "--data-dir", dir},
	} {
		_, code, err := run(args...)
		if code != 1 || err == nil || !strings.Contains(err.Error(), "is a node running on this data dir?") || !errors.Is(err, store.ErrLocked) {
			t.Errorf("%s with the store open = exit %d, %v; want 1 asking whether a node is running", strings.Join(args[:2], " "), code, err)
		}
	}
	if _, err := os.Stat(out); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a refused backup left %s", out)
	}
	if n, err := st.RuleCount(); err != nil || n != 3 {
		t.Errorf("the held store has %d rules (%v), want 3", n, err)
	}
}

func TestStoreCommandUsageErrors(t *testing.T) {
	t.Parallel()
	dir := newNodeStore(t, 1)
	empty := t.TempDir()
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"backup without --out", []string{"store", "backup", "--data-dir", dir}, "--out: required"},
		{"backup without a source", []string{"store", "backup", "--out", "x.db"}, "one of --data-dir"},
		{"backup with both sources", []string{"store", "backup", "--data-dir", dir, "--addr", "127.0.0.1:1", "--out", "x.db"}, "one of --data-dir"},
		{"backup of a dir without node.db", []string{"store", "backup", "--data-dir", empty, "--out", "x.db"}, "no node.db there"},
		{"compact without --data-dir", []string{"store", "compact"}, "--data-dir: required"},
		{"compact keeping a backup with --out", []string{"store", "compact", "--data-dir", dir, "--out", "x.db", "--keep-backup"}, "--keep-backup"},
		{"addr with a password", []string{"store", "backup", "--addr", "http://op:s3cret-pw@127.0.0.1:1", "--out", "x.db"}, "--addr"},
		{"addr not http", []string{"store", "backup", "--addr", "ftp://127.0.0.1:1", "--out", "x.db"}, "--addr"},
		{"zero timeout", []string{"store", "backup", "--addr", "127.0.0.1:1", "--out", "x.db", "--timeout", "0s"}, "--timeout"},
	} {
		_, code, err := run(tc.args...)
		if code != 2 || err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "s3cret-pw") {
			t.Errorf("%s: exit %d, %v; want 2 with %q (and never the password)", tc.name, code, err, tc.want)
		}
	}
}

// startNodeForBackup runs an API and a node with an operator token, a rule
// firing every second; it returns the node's address and the token file.
func startNodeForBackup(t *testing.T) (addr, tokenFile string) {
	t.Helper()
	api, err := apiserver.New(apiserver.Config{DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	apiDone := make(chan struct{})
	go func() { defer close(apiDone); _ = api.Serve(ctx, ln) }()
	apiURL := "http://" + ln.Addr().String()
	resp, err := http.Post(apiURL+"/api/v1/rules", "application/json",
		strings.NewReader(`{"ref":"ops.tick","trigger_ref":"core.intervaltimer","trigger_params":{"interval":1}}`))
	if err != nil || resp.StatusCode != http.StatusCreated {
		t.Fatalf("create rule: %v %v", resp, err)
	}
	resp.Body.Close()

	dir := t.TempDir()
	tokenFile = filepath.Join(dir, "http.token")
	if err := os.WriteFile(tokenFile, []byte("store-backup-operator-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	n, err := node.New(node.Config{DataDir: filepath.Join(dir, "node"), APIURL: apiURL, HTTPAddr: "127.0.0.1:0", NodeName: "b",
		ReconcileInterval: -1, HTTPTokenFile: tokenFile, Registry: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	nodeDone := make(chan error, 1)
	go func() { nodeDone <- n.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-nodeDone; err != nil {
			t.Errorf("node Run: %v", err)
		}
		<-apiDone
		api.Close()
	})
	testkit.Eventually(t, 10*time.Second, "the node fired ops.tick", func() bool {
		resp, err := http.Get(apiURL + "/api/v1/events?rule_ref=ops.tick")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		var l struct {
			Items []json.RawMessage `json:"items"`
		}
		return json.NewDecoder(resp.Body).Decode(&l) == nil && len(l.Items) > 0
	})
	return n.HTTPAddr(), tokenFile
}

// store backup --addr of a running node: a copy that opens as a store with
// the node's rule; a wrong token is refused without a file or the token in
// the error.
func TestStoreBackupOnline(t *testing.T) {
	t.Parallel()
	addr, tokenFile := startNodeForBackup(t)
	out := filepath.Join(t.TempDir(), "online.db")

	wrong := filepath.Join(t.TempDir(), "wrong.token")
	if err := os.WriteFile(wrong, []byte("not-the-operator-token-xyz"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, code, err := run("store", "backup", "--addr", addr, "--token-file", wrong, "--out", out)
	if code != 1 || err == nil || !strings.Contains(err.Error(), "status 401") || strings.Contains(err.Error(), "not-the-operator-token") {
		t.Errorf("store backup --addr with a wrong token = exit %d, %v; want 1 with status 401 and not the token", code, err)
	}
	if _, err := os.Stat(out); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a refused backup left %s", out)
	}

	stdout, code, err := run("store", "backup", "--addr", "http://"+addr+"/", "--token-file", tokenFile, "--out", out)
	if code != 0 || !strings.Contains(stdout, "backed up the store of http://"+addr+" to "+out) || !strings.Contains(stdout, "1 rules") {
		t.Fatalf("store backup --addr = exit %d, %v, %q; want 0 and a line naming the node, the file and its 1 rule", code, err, stdout)
	}
	if refs := storeRefs(t, out); len(refs) != 1 || refs[0] != "ops.tick" {
		t.Errorf("online backup holds rules %v, want [ops.tick]", refs)
	}
}

// What a node that is not well answers: a body cut short, no length, a
// redirect (not followed: the token stays home). Nothing is left at --out.
func TestStoreBackupOnlineBadAnswers(t *testing.T) {
	t.Parallel()
	var elsewhere atomic.Int64
	other := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { elsewhere.Add(1) }))
	defer other.Close()
	mux := http.NewServeMux()
	mux.HandleFunc("GET /short/v1/backup", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Length", "100000")
		w.Write(make([]byte, 4096))
		panic(http.ErrAbortHandler)
	})
	mux.HandleFunc("GET /nolength/v1/backup", func(w http.ResponseWriter, _ *http.Request) {
		w.(http.Flusher).Flush() // chunked: no Content-Length
		w.Write([]byte("data"))
	})
	mux.HandleFunc("GET /moved/v1/backup", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, other.URL+"/v1/backup", http.StatusFound)
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()
	tok := filepath.Join(t.TempDir(), "tok")
	if err := os.WriteFile(tok, []byte("operator-token-0123456789"), 0o600); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for _, tc := range []struct{ path, want string }{
		{"/short", "cut short after 4096 of 100000 bytes"},
		{"/nolength", "no Content-Length"},
		{"/moved", "not followed"},
	} {
		out := filepath.Join(dir, strings.TrimPrefix(tc.path, "/")+".db")
		_, code, err := run("store", "backup", "--addr", srv.URL+tc.path, "--token-file", tok, "--out", out)
		if code != 1 || err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("store backup from %s = exit %d, %v; want 1 with %q", tc.path, code, err, tc.want)
		}
		if _, err := os.Stat(out); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("store backup from %s left %s", tc.path, out)
		}
	}
	if left, _ := filepath.Glob(filepath.Join(dir, ".*")); len(left) != 0 {
		t.Errorf("temporary files left: %v", left)
	}
	if n := elsewhere.Load(); n != 0 {
		t.Errorf("the redirect's target got %d requests, want none", n)
	}
}

func TestEventRetentionFlag(t *testing.T) {
	t.Setenv("TIMERD_API_KEY_FILE", "")
	for _, v := range []string{"soon", "-1h", "7x"} {
		_, code, err := run("api", "--data-dir", t.TempDir(), "--event-retention", v)
		if code != 2 || err == nil || !strings.Contains(err.Error(), "--event-retention") {
			t.Errorf("timerd api --event-retention %s = exit %d, %v; want 2 naming --event-retention", v, code, err)
		}
	}
	t.Setenv("TIMERD_API_EVENT_RETENTION", "soon")
	if _, code, err := run("api", "--data-dir", t.TempDir()); code != 2 || err == nil || !strings.HasPrefix(err.Error(), "TIMERD_API_EVENT_RETENTION: ") {
		t.Errorf("timerd api with TIMERD_API_EVENT_RETENTION=soon = exit %d, %v; want 2 naming the variable", code, err)
	}
}
