package main

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
)

const statusJSON = `{
  "node": "timerd-0", "version": "1.2.3", "ready": true,
  "rules_known": 3000, "rules_owned": 1012, "outbox_depth": 4, "dead_letters": 1,
  "next_fire": "2026-01-01T00:00:01Z", "api_url": "http://api", "sensor_ref": "core.timer",
  "store_path": "/d/node.db", "generated_at": "2026-01-01T00:00:00Z",
  "token_expires_at": "2020-01-01T00:00:00Z", "token_masked": "eyJh…(masked)",
  "quorum": true, "expected_members": 3, "seen_members": 2, "quorum_size": 2,
  "incarnation": "timerd-0#3",
  "partitions_held": 5400,
  "members": [
    {"name": "timerd-0", "addr": "10.0.0.1:7946", "state": "alive", "self": true, "rules_owned": 1012},
    {"name": "timerd-1", "addr": "10.0.0.2:7946", "state": "alive", "self": false, "rules_owned": 1988},
    {"name": "timerd-2", "addr": "10.0.0.3:7946", "state": "left", "self": false, "rules_owned": 0}
  ]
}`

func TestStatusCommand(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte(statusJSON)) })
	mux.HandleFunc("GET /single/v1/status", func(w http.ResponseWriter, _ *http.Request) {
		w.Write([]byte(`{"node":"dev","version":"x","ready":false,"rules_known":1,"rules_owned":1}`))
	})
	mux.HandleFunc("GET /alone/v1/status", func(w http.ResponseWriter, _ *http.Request) {
		w.Write([]byte(`{"node":"timerd-0","ready":false,"quorum":false,"expected_members":3,"seen_members":1,"quorum_size":2,"incarnation":"timerd-0#1","partitions_held":0,
			"members":[{"name":"timerd-0","addr":"10.0.0.1:7946","state":"alive","self":true,"rules_owned":0}]}`))
	})
	mux.HandleFunc("GET /broken/v1/status", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte(`<html>`)) })
	const operatorToken = "operator-token-0123456789"
	mux.HandleFunc("GET /guarded/v1/status", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer "+operatorToken {
			http.Error(w, "this endpoint needs the bearer token of TIMERD_HTTP_TOKEN_FILE", http.StatusUnauthorized)
			return
		}
		w.Write([]byte(statusJSON))
	})
	// Another host, where a redirect of the node's answer points: it must see
	// neither a request nor the operator's token.
	var elsewhere atomic.Int64
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		elsewhere.Add(1)
		w.Write([]byte(statusJSON))
	}))
	defer other.Close()
	mux.HandleFunc("GET /moved/v1/status", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, other.URL+"/v1/status?token=x", http.StatusFound)
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	tokenFile := filepath.Join(t.TempDir(), "http.token")
	if err := os.WriteFile(tokenFile, []byte(operatorToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name     string
		args     []string
		code     int
		want     []string // lines (spacing collapsed) the output holds
		wantNot  []string
		errorHas string
	}{
		{
			name: "cluster node as tables",
			args: []string{"--addr", host},
			want: []string{"node timerd-0", "version 1.2.3", "ready true", "rules known 3000", "rules owned 1012",
				"outbox 4 (dead letters 1)", "next fire 2026-01-01T00:00:01Z", "token expiry 2020-01-01T00:00:00Z (EXPIRED) eyJh…(masked)",
				"quorum yes: 2 of 3 expected members seen, 2 needed", "incarnation timerd-0#3, holding 5400 partitions", "MEMBER ADDR STATE RULES OWNED", "timerd-0 (self) 10.0.0.1:7946 alive 1012",
				"timerd-1 10.0.0.2:7946 alive 1988", "timerd-2 10.0.0.3:7946 left 0"},
		},
		{
			name:    "single node, URL form",
			args:    []string{"--addr", srv.URL + "/single/"},
			want:    []string{"node dev", "ready false", "token expiry -", "next fire -", "no cluster: a single node owning every rule"},
			wantNot: []string{"MEMBER", "incarnation"},
		},
		{
			name: "cluster node without a quorum",
			args: []string{"--addr", srv.URL + "/alone"},
			want: []string{"ready false", "quorum NO: 1 of 3 expected members seen, 2 needed: this node fires nothing"},
		},
		{
			name: "json as served",
			args: []string{"--addr", host, "--json"},
			want: []string{`"incarnation": "timerd-0#3",`},
		},
		{name: "with the node's token", args: []string{"--addr", srv.URL + "/guarded", "--token-file", tokenFile}, want: []string{"node timerd-0"}},
		{name: "without the node's token", args: []string{"--addr", srv.URL + "/guarded"}, code: 1, errorHas: "status 401: this endpoint needs the bearer token"},
		{name: "token file missing", args: []string{"--addr", host, "--token-file", "/nonexistent/token"}, code: 2, errorHas: "--token-file: open /nonexistent/token"},
		{name: "not a status", args: []string{"--addr", srv.URL + "/broken"}, code: 1, errorHas: "not a timerd status"},
		{name: "not found", args: []string{"--addr", srv.URL + "/nothing"}, code: 1, errorHas: "status 404"},
		{name: "redirect not followed", args: []string{"--addr", srv.URL + "/moved", "--token-file", tokenFile}, code: 1,
			errorHas: "302 Found: redirect to " + other.URL + "/v1/status not followed"},
		{name: "bad addr", args: []string{"--addr", "a b/c"}, code: 2, errorHas: `--addr: "a b/c" is not host:port`},
		{name: "nobody listening", args: []string{"--addr", "127.0.0.1:1", "--timeout", "2s"}, code: 1, errorHas: "GET http://127.0.0.1:1/v1/status"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, code, err := run(append([]string{"status"}, tt.args...)...)
			if code != tt.code {
				t.Fatalf("timerd status %v: exit %d (%v), want %d; output:\n%s", tt.args, code, err, tt.code, out)
			}
			if tt.errorHas != "" && (err == nil || !strings.Contains(err.Error(), tt.errorHas)) {
				t.Errorf("timerd status %v: error %v, want one containing %q", tt.args, err, tt.errorHas)
			}
			lines := map[string]bool{}
			for _, l := range strings.Split(out, "\n") {
				lines[strings.Join(strings.Fields(l), " ")] = true
			}
			for _, w := range tt.want {
				if !lines[w] {
					t.Errorf("timerd status %v: no line %q in:\n%s", tt.args, w, out)
				}
			}
			for _, w := range tt.wantNot {
				if strings.Contains(out, w) {
					t.Errorf("timerd status %v: %q in:\n%s", tt.args, w, out)
				}
			}
		})
	}
	if n := elsewhere.Load(); n != 0 {
		t.Errorf("the host a redirect pointed to got %d requests, want none", n)
	}
}
