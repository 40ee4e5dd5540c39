package node

import (
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TIMERD_PPROF serves Go's profiles behind the operator token; without it
// there is no /debug/pprof/ at all.
func TestPprof(t *testing.T) {
	dir := t.TempDir()
	tokFile := filepath.Join(dir, "http.token")
	const tok = "pprof-operator-token-0123"
	if err := os.WriteFile(tokFile, []byte(tok), 0o600); err != nil {
		t.Fatal(err)
	}
	serve := func(pprof bool, tokenFile string) string {
		n, err := New(Config{DataDir: t.TempDir(), APIURL: "http://127.0.0.1:1", NodeName: "pprof", Pprof: pprof, HTTPTokenFile: tokenFile})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = n.Close() })
		srv := httptest.NewServer(n.handler())
		t.Cleanup(srv.Close)
		return srv.URL
	}
	get := func(url, bearer string) (int, string) {
		req, _ := http.NewRequest(http.MethodGet, url, nil)
		if bearer != "" {
			req.Header.Set("Authorization", "Bearer "+bearer)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("GET %s: %v", url, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}

	on := serve(true, tokFile)
	for _, path := range []string{"/debug/pprof/", "/debug/pprof/goroutine?debug=1", "/debug/pprof/heap", "/debug/pprof/profile?seconds=1", "/debug/pprof/trace?seconds=1"} {
		if code, _ := get(on+path, ""); code != http.StatusUnauthorized {
			t.Errorf("GET %s without the token = %d, want 401", path, code)
		}
	}
	if code, b := get(on+"/debug/pprof/goroutine?debug=1", tok); code != http.StatusOK || !strings.Contains(b, "goroutine profile:") {
		t.Errorf("GET /debug/pprof/goroutine?debug=1 with the token = %d %.80q, want 200 and the goroutine profile", code, b)
	}
	if code, b := get(on+"/debug/pprof/", tok); code != http.StatusOK || !strings.Contains(b, "heap") {
		t.Errorf("GET /debug/pprof/ with the token = %d, want 200 and the index of profiles (%.80q)", code, b)
	}
	if code, b := get(on+"/debug/pprof/heap", tok); code != http.StatusOK || len(b) == 0 {
		t.Errorf("GET /debug/pprof/heap with the token = %d (%d bytes), want 200 and a profile", code, len(b))
	}

	off := serve(false, "")
	if code, _ := get(off+"/debug/pprof/goroutine?debug=1", ""); code != http.StatusNotFound {
		t.Errorf("GET /debug/pprof/goroutine without TIMERD_PPROF = %d, want 404", code)
	}
}
