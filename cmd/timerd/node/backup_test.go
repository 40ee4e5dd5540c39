package node

import (
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/timerd/timerd/store"
	"github.com/timerd/timerd/test/testkit"
)

func backupRequest(t *testing.T, url, tok string) *http.Response {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return resp
}

// GET /v1/backup of a running, firing node: behind the operator token, a
// whole store file (Content-Length) that opens as a store with the node's
// rule and its fires; the token never reaches the log.
func TestBackupOfARunningNode(t *testing.T) {
	t.Parallel()
	sys := startAPI(t, t.TempDir())
	sys.createRule("r1", "core.intervaltimer", `{"interval":1}`)
	dir := t.TempDir()
	tokFile := filepath.Join(dir, "http.token")
	const tok = "backup-operator-token-0123"
	if err := os.WriteFile(tokFile, []byte(tok), 0o600); err != nil {
		t.Fatal(err)
	}
	var logs lockedBuffer
	n := runNode(t, Config{DataDir: filepath.Join(dir, "node"), APIURL: sys.apiURL, HTTPAddr: "127.0.0.1:0", NodeName: "backup",
		ReconcileInterval: -1, HTTPTokenFile: tokFile, Registry: prometheus.NewRegistry(),
		Logger: slog.New(slog.NewJSONHandler(&logs, nil))})
	url := "http://" + n.HTTPAddr() + "/v1/backup"
	testkit.Eventually(t, 10*time.Second, "two events of r1", func() bool { return len(sys.events("r1")) >= 2 })

	for _, bad := range []string{"", "wrong-token-0123456789"} {
		resp := backupRequest(t, url, bad)
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized || len(body) > 200 {
			t.Errorf("GET /v1/backup with token %q = %d (%d bytes), want 401 and no store", bad, resp.StatusCode, len(body))
		}
	}

	resp := backupRequest(t, url, tok)
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /v1/backup = %d, %v", resp.StatusCode, err)
	}
	if cl, _ := strconv.Atoi(resp.Header.Get("Content-Length")); cl != len(body) || cl == 0 || resp.Header.Get("Content-Type") != "application/octet-stream" {
		t.Errorf("GET /v1/backup: Content-Length %q, Content-Type %q, %d bytes read; want the length of the body and application/octet-stream",
			resp.Header.Get("Content-Length"), resp.Header.Get("Content-Type"), len(body))
	}
	copyPath := filepath.Join(t.TempDir(), "node.db")
	if err := os.WriteFile(copyPath, body, 0o600); err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(copyPath, store.Options{})
	if err != nil {
		t.Fatalf("store.Open(backup) = %v", err)
	}
	defer st.Close()
	var refs []string
	var fires uint64
	if err := st.ForEachRule(func(r store.Rule, wm store.Watermark) error {
		refs = append(refs, r.Ref)
		fires += wm.Count
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(refs) != 1 || refs[0] != "r1" || fires < 2 {
		t.Errorf("backup holds rules %v with %d fires, want r1 with at least 2", refs, fires)
	}
	if out := logs.String(); !strings.Contains(out, `"msg":"backup served"`) || strings.Contains(out, tok) {
		t.Errorf("log: want a line \"backup served\" and never the token; got\n%s", out)
	}
}

// One backup at a time: a second one while the first streams gets 429.
func TestBackupOneAtATime(t *testing.T) {
	t.Parallel()
	sys := startAPI(t, t.TempDir())
	n := runNode(t, Config{DataDir: t.TempDir(), APIURL: sys.apiURL, HTTPAddr: "127.0.0.1:0", NodeName: "backup2",
		ReconcileInterval: -1, Registry: prometheus.NewRegistry()})
	h := n.backupHandler()
	block := &blockingWriter{header: http.Header{}, started: make(chan struct{}), release: make(chan struct{})}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		h(block, httpRequest(t, "/v1/backup"))
	}()
	<-block.started
	rec := &recorder{header: http.Header{}}
	h(rec, httpRequest(t, "/v1/backup"))
	close(block.release)
	wg.Wait()
	if rec.code != http.StatusTooManyRequests || rec.header.Get("Retry-After") == "" {
		t.Errorf("second backup while one streams = %d (Retry-After %q), want 429 with Retry-After", rec.code, rec.header.Get("Retry-After"))
	}
	rec = &recorder{header: http.Header{}}
	h(rec, httpRequest(t, "/v1/backup"))
	if rec.code != http.StatusOK || rec.n == 0 {
		t.Errorf("backup after the first ended = %d, %d bytes; want 200 and the store", rec.code, rec.n)
	}
}

func httpRequest(t *testing.T, path string) *http.Request {
	t.Helper()
	r, err := http.NewRequest(http.MethodGet, "http://node"+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// recorder is a ResponseWriter that counts the body.
type recorder struct {
	header http.Header
	code   int
	n      int
}

func (r *recorder) Header() http.Header { return r.header }
func (r *recorder) WriteHeader(code int) {
	if r.code == 0 {
		r.code = code
	}
}

func (r *recorder) Write(p []byte) (int, error) {
	r.WriteHeader(http.StatusOK)
	r.n += len(p)
	return len(p), nil
}

// blockingWriter blocks its first write until release.
type blockingWriter struct {
	header  http.Header
	once    sync.Once
	started chan struct{}
	release chan struct{}
}

func (b *blockingWriter) Header() http.Header { return b.header }
func (b *blockingWriter) WriteHeader(int)     {}
func (b *blockingWriter) Write(p []byte) (int, error) {
	b.once.Do(func() {
		close(b.started)
		<-b.release
	})
	return len(p), nil
}
