package main

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
)

// deadLetterNode stands in for a node's dead-letter endpoints and records
// what the commands send.
type deadLetterNode struct {
	mu    sync.Mutex
	calls []string // "METHOD path?query body"
}

func (d *deadLetterNode) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	d.mu.Lock()
	d.calls = append(d.calls, r.Method+" "+r.URL.RequestURI()+" "+string(body))
	d.mu.Unlock()
	switch {
	case r.Method == http.MethodGet && r.URL.Path == "/v1/dead-letters" && r.URL.Query().Get("after") == "0":
		w.Write([]byte(`{"dead_letters":[{"seq":3,"rule_id":7,"slot":"2026-01-01T00:00:01Z","idempotency_key":"7:1767225601000000000",
			"status":400,"reason":"400 Bad Request: no such trigger","at":"2026-01-02T00:00:00Z","body":{"n":1}}],"total":5,"next_after":3}`))
	case r.Method == http.MethodGet && r.URL.Path == "/v1/dead-letters":
		w.Write([]byte(`{"dead_letters":[],"total":5}`))
	case r.Method == http.MethodPost && r.URL.Path == "/v1/dead-letters/redrive" && strings.Contains(string(body), "99"):
		w.Write([]byte(`{"redriven":[3],"not_found":[99]}`))
	case r.Method == http.MethodPost && r.URL.Path == "/v1/dead-letters/redrive":
		w.Write([]byte(`{"redriven":[3,5]}`))
	default:
		http.Error(w, "limit: bad", http.StatusBadRequest)
	}
}

func (d *deadLetterNode) last() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.calls) == 0 {
		return ""
	}
	return d.calls[len(d.calls)-1]
}

func TestDeadLettersCommands(t *testing.T) {
	stub := &deadLetterNode{}
	srv := httptest.NewServer(stub)
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	tests := []struct {
		name     string
		args     []string
		code     int
		wantOut  []string // substrings of stdout
		wantCall string   // the last request the node saw; "" for none
		errorHas string
	}{
		{name: "list as a table", args: []string{"list", "--addr", host, "--limit", "1"}, wantCall: "GET /v1/dead-letters?after=0&limit=1 ",
			wantOut: []string{"ID  RULE  SLOT", "3   7     2026-01-01T00:00:01Z  400     2026-01-02T00:00:00Z  400 Bad Request: no such trigger",
				"1 shown, 5 on the node; more with --after 3"}},
		{name: "list json", args: []string{"list", "--addr", host, "--limit", "1", "--json"}, wantOut: []string{`"idempotency_key":"7:1767225601000000000"`}},
		{name: "list past the end", args: []string{"list", "--addr", srv.URL, "--after", "3"}, wantCall: "GET /v1/dead-letters?after=3&limit=100 ",
			wantOut: []string{"no dead letters here (5 on the node)"}},
		{name: "list limit out of range", args: []string{"list", "--addr", host, "--limit", "0"}, code: 2, errorHas: "--limit: 0 is not in 1..1000"},
		{name: "list bad addr", args: []string{"list", "--addr", "a b/c"}, code: 2, errorHas: `--addr: "a b/c" is not host:port`},
		{name: "redrive ids", args: []string{"redrive", "--addr", host, "--id", "3", "--id", "5"}, wantCall: `POST /v1/dead-letters/redrive {"ids":[3,5]}`,
			wantOut: []string{"redriven: 2 (3, 5)"}},
		{name: "redrive comma ids", args: []string{"redrive", "--addr", host, "--id", "3,5"}, wantCall: `POST /v1/dead-letters/redrive {"ids":[3,5]}`},
		{name: "redrive all", args: []string{"redrive", "--addr", host, "--all"}, wantCall: "POST /v1/dead-letters/redrive ", wantOut: []string{"redriven: 2"}},
		{name: "redrive unknown id", args: []string{"redrive", "--addr", host, "--id", "3", "--id", "99"}, code: 1, errorHas: "no dead letter with id (99)",
			wantOut: []string{"redriven: 1 (3)"}},
		{name: "redrive needs --id or --all", args: []string{"redrive", "--addr", host}, code: 2, errorHas: "name the dead letters with --id, or take every one with --all"},
		{name: "redrive not both", args: []string{"redrive", "--addr", host, "--all", "--id", "3"}, code: 2, errorHas: "--id and --all"},
		{name: "redrive id 0", args: []string{"redrive", "--addr", host, "--id", "0"}, code: 2, errorHas: "--id: 0"},
		{name: "redrive id not a number", args: []string{"redrive", "--addr", host, "--id", "x"}, code: 2, errorHas: "--id"},
		{name: "node refuses", args: []string{"list", "--addr", srv.URL + "/elsewhere"}, code: 1, errorHas: "status 400: limit: bad"},
		{name: "nobody listening", args: []string{"redrive", "--all", "--addr", "127.0.0.1:1"}, code: 1, errorHas: "POST http://127.0.0.1:1/v1/dead-letters/redrive"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := stub.last()
			out, code, err := run(append([]string{"dead-letters"}, tt.args...)...)
			if code != tt.code {
				t.Fatalf("timerd dead-letters %v: exit %d (%v), want %d; output:\n%s", tt.args, code, err, tt.code, out)
			}
			if tt.errorHas != "" && (err == nil || !strings.Contains(err.Error(), tt.errorHas)) {
				t.Errorf("timerd dead-letters %v: error %v, want one containing %q", tt.args, err, tt.errorHas)
			}
			for _, w := range tt.wantOut {
				if !strings.Contains(out, w) {
					t.Errorf("timerd dead-letters %v: no %q in:\n%s", tt.args, w, out)
				}
			}
			if tt.code == 2 && stub.last() != before {
				t.Errorf("timerd dead-letters %v: a usage error sent %q", tt.args, stub.last())
			}
			if tt.wantCall != "" && stub.last() != tt.wantCall {
				t.Errorf("timerd dead-letters %v: node saw %q, want %q", tt.args, stub.last(), tt.wantCall)
			}
		})
	}
}
