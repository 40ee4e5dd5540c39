package node

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/timerd/timerd/auth"
	"github.com/timerd/timerd/test/testkit"
)

func TestDevCredentials(t *testing.T) {
	dir := t.TempDir()
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))

	c, err := devCredentials(dir, log)
	if err != nil {
		t.Fatalf("devCredentials(new dir) = %v", err)
	}
	if !c.keyCreated || !c.adminNew {
		t.Errorf("devCredentials(new dir): keyCreated %v adminNew %v, want both", c.keyCreated, c.adminNew)
	}
	for _, p := range []string{c.keyPath, c.adminPath} {
		fi, err := os.Stat(p)
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("stat %s = %v, %v; want mode 0600", p, fi.Mode(), err)
		}
	}
	if want := filepath.Join(dir, "admin.token"); c.adminPath != want {
		t.Errorf("admin token path = %q, want %q", c.adminPath, want)
	}
	readToken := func() string {
		b, err := os.ReadFile(c.adminPath)
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(b))
	}
	tok := readToken()
	claims, err := (&auth.Verifier{Key: c.key}).Verify(tok)
	if err != nil || claims.Scope != auth.ScopeAdmin {
		t.Fatalf("admin.token: Verify = %+v, %v; want a valid admin token", claims, err)
	}

	// A restart keeps both.
	c2, err := devCredentials(dir, log)
	if err != nil || c2.keyCreated || c2.adminNew || !bytes.Equal(c2.key, c.key) || readToken() != tok {
		t.Fatalf("devCredentials(again) = %+v, %v; want the same key and token kept", c2, err)
	}

	// Expired, foreign, wrong-scope or garbage tokens are replaced.
	past := func() time.Time { return time.Now().Add(-devAdminTTL - time.Hour) }
	expired, _, _ := (&auth.Issuer{Key: c.key, Now: past}).Issue(auth.IssueRequest{Subject: "a", Scope: auth.ScopeAdmin, TTL: devAdminTTL})
	foreign, _, _ := (&auth.Issuer{Key: []byte("fedcba9876543210fedcba9876543210")}).Issue(auth.IssueRequest{Subject: "a", Scope: auth.ScopeAdmin, TTL: time.Hour * 24})
	readonly, _, _ := (&auth.Issuer{Key: c.key}).Issue(auth.IssueRequest{Subject: "a", Scope: auth.ScopeReadonly, TTL: time.Hour * 24})
	for name, old := range map[string]string{"expired": expired, "foreign key": foreign, "readonly": readonly, "garbage": "garbage-that-is-no-jwt"} {
		if err := os.WriteFile(c.adminPath, []byte(old+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		c3, err := devCredentials(dir, log)
		if err != nil || !c3.adminNew {
			t.Fatalf("devCredentials with a %s admin token = %+v, %v; want a new token", name, c3, err)
		}
		got := readToken()
		if got == old {
			t.Errorf("%s admin token kept, want it replaced", name)
		}
		if _, err := (&auth.Verifier{Key: c.key}).Verify(got); err != nil {
			t.Errorf("replacement of the %s admin token does not verify: %v", name, err)
		}
		if fi, _ := os.Stat(c.adminPath); fi.Mode().Perm() != 0o600 {
			t.Errorf("replaced admin.token mode = %v, want 0600", fi.Mode().Perm())
		}
		if strings.Contains(logs.String(), old) || strings.Contains(logs.String(), got) {
			t.Errorf("log output shows a token: %s", logs.String())
		}
	}
}

func TestShellQuote(t *testing.T) {
	for in, want := range map[string]string{
		"/tmp/timerd-dev-1/admin.token": "/tmp/timerd-dev-1/admin.token",
		"/tmp/my dir/admin.token":       "'/tmp/my dir/admin.token'",
		"/tmp/it's/admin.token":         `'/tmp/it'\''s/admin.token'`,
	} {
		if got := shellQuote(in); got != want {
			t.Errorf("shellQuote(%q) = %q, want %q", in, got, want)
		}
	}
}

// Dev mode runs in process on port 0: a rule of 1 s created through its API
// fires, its events are stored by the API, and Run returns soon after its
// context is cancelled, leaving no goroutine behind.
func TestDevRunsInProcess(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent(), ignoreFasthttp)
	dir := t.TempDir()
	d, err := NewDev(DevConfig{DataDir: dir, APIAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0"})
	if err != nil {
		t.Fatalf("NewDev = %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	stopped := false
	stop := func() {
		stopped = true
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Dev.Run after cancel = %v, want nil", err)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("Dev.Run did not return within 20s of cancel")
		}
	}
	defer func() {
		if !stopped {
			stop()
		}
	}()

	var banner strings.Builder
	d.WriteBanner(&banner)
	for _, want := range []string{d.APIURL() + "/api/v1/rules", d.NodeURL() + "/readyz", "data dir:  " + dir, d.AdminTokenPath(),
		"lifecycle: an in-process lifecycle bus"} {
		if !strings.Contains(banner.String(), want) {
			t.Errorf("banner does not show %q:\n%s", want, banner.String())
		}
	}
	tok, err := os.ReadFile(d.AdminTokenPath())
	if err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Timeout: 5 * time.Second}
	defer client.CloseIdleConnections()
	call := func(method, url, body string) (int, []byte) {
		t.Helper()
		req, err := http.NewRequest(method, url, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(tok)))
		req.Header.Set("Content-Type", "application/json")
		resp, err := client.Do(req)
		if err != nil {
			return 0, nil
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b
	}
	testkit.Eventually(t, 10*time.Second, "dev's node ready", func() bool {
		code, _ := call(http.MethodGet, d.NodeURL()+"/readyz", "")
		return code == http.StatusOK
	})

	created := time.Now()
	if code, b := call(http.MethodPost, d.APIURL()+"/api/v1/rules",
		`{"ref":"dev.every_second","trigger_ref":"core.intervaltimer","trigger_params":{"interval":1,"unit":"seconds"}}`); code != http.StatusCreated {
		t.Fatalf("create rule: %d %s", code, b)
	}
	testkit.Eventually(t, 5*time.Second, "an event of dev.every_second", func() bool {
		code, b := call(http.MethodGet, d.APIURL()+"/api/v1/events?rule_ref=dev.every_second", "")
		var out struct {
			Items []event `json:"items"`
		}
		return code == http.StatusOK && json.Unmarshal(b, &out) == nil && len(out.Items) > 0
	})
	t.Logf("first event stored %s after the rule was created", time.Since(created).Round(time.Millisecond))
	stop()
}

// A listen address or data directory dev cannot use is a *SettingError
// naming it, and NewDev leaves nothing open behind it.
func TestNewDevBadSettings(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent(), ignoreFasthttp)
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	notADir := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(notADir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		cfg  DevConfig
		want string // the setting
	}{
		{"api addr in use", DevConfig{DataDir: t.TempDir(), APIAddr: busy.Addr().String(), HTTPAddr: "127.0.0.1:0"}, "TIMERD_API_ADDR"},
		{"data dir a file", DevConfig{DataDir: notADir, APIAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0"}, "TIMERD_DATA_DIR"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := NewDev(tt.cfg)
			var se *SettingError
			if !errors.As(err, &se) || se.Setting != tt.want {
				if d != nil {
					_ = d.Run(canceled())
				}
				t.Fatalf("NewDev(%s) = %v, want a *SettingError naming %s", tt.name, err, tt.want)
			}
		})
	}
	// Failing on the node's address, the last one bound, releases the API's
	// store and the node's: dev starts again at once on the same directory.
	dir := t.TempDir()
	d, err := NewDev(DevConfig{DataDir: dir, APIAddr: "127.0.0.1:0", HTTPAddr: busy.Addr().String()})
	if err == nil {
		_ = d.Run(canceled())
		t.Fatalf("NewDev with the node's HTTP address in use = nil error, want one")
	}
	start := time.Now()
	if d, err = NewDev(DevConfig{DataDir: dir, APIAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0"}); err != nil {
		t.Fatalf("NewDev again on the same data dir = %v", err)
	}
	if err := d.Run(canceled()); err != nil {
		t.Errorf("Dev.Run(canceled) = %v, want nil", err)
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("NewDev again took %s: a store was still locked", took)
	}
}

func canceled() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}
