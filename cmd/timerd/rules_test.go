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

const describeJSON = `{
  "rule_id": 4711, "answered_by": "timerd-1", "owner": "timerd-1", "owner_http_addr": "10.0.0.2:8470",
  "partition": 9194, "forwarded_by": "timerd-0",
  "state": {"known": true, "firing": true},
  "schedule": {"trigger_ref": "core.crontimer", "kind": "cron", "expression": "0 30 2 * * *", "timezone": "Europe/Berlin",
    "dst_gap": "skip", "dst_overlap": "once", "misfire": "fire_all", "misfire_grace": "5m0s", "jitter": "30s"},
  "watermark": {"slot": "2026-03-28T01:30:00Z", "count": 12},
  "last_fired_at": "2026-03-28T01:30:07.5Z",
  "next": [{"slot": "2026-03-30T00:30:00Z", "fires_at": "2026-03-30T00:30:21Z"}],
  "lateness": [{"slot": "2026-03-28T01:30:00Z", "fired_at": "2026-03-28T01:30:07.5Z", "late": "1.2ms", "lateness_seconds": 0.0012}],
  "dead_letters": [{"seq": 31, "rule_id": 4711, "slot": "2026-03-27T01:30:00Z", "status": 404, "reason": "404 Not Found: no such rule", "at": "2026-03-27T01:40:00Z", "body": {}}],
  "dead_letters_total": 3,
  "generated_at": "2026-03-28T12:00:00Z"
}`

const unreachableJSON = `{
  "rule_id": 7, "answered_by": "timerd-0", "owner": "timerd-2", "owner_http_addr": "10.0.0.3:8470", "partition": 12,
  "owner_unreachable": "10.0.0.3:8470: dial tcp 10.0.0.3:8470: connect: connection refused",
  "state": {"known": true, "firing": false},
  "schedule": {"trigger_ref": "core.intervaltimer", "kind": "interval", "interval": "1m0s", "misfire": "skip", "misfire_grace": "unlimited"},
  "watermark": {"slot": "2026-03-28T01:30:00Z", "count": 0},
  "next": [], "lateness": [], "dead_letters": [], "dead_letters_total": 0
}`

func TestRulesDescribeCommand(t *testing.T) {
	const operatorToken = "operator-token-0123456789"
	var auth atomic.Value
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/rules/4711", func(w http.ResponseWriter, r *http.Request) {
		auth.Store(r.Header.Get("Authorization"))
		w.Write([]byte(describeJSON))
	})
	mux.HandleFunc("GET /v1/rules/7", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte(unreachableJSON)) })
	mux.HandleFunc("GET /v1/rules/8", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte(describeJSON)) }) // another rule's
	mux.HandleFunc("GET /v1/rules/9", func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "rule 9 is not known: timerd-0 stores no rule, tombstone, watermark or dead letter of it", http.StatusNotFound)
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
		errorHas string
	}{
		{
			name: "forwarded, for people",
			args: []string{"4711", "--addr", host, "--token-file", tokenFile},
			want: []string{"rule 4711", "owner timerd-1 at 10.0.0.2:8470, partition 9194", "answered by timerd-1 (forwarded by timerd-0)",
				"state enabled; firing here",
				`schedule cron "0 30 2 * * *" in Europe/Berlin, dst gap skip, dst overlap once (core.crontimer)`,
				"misfire fire_all, grace 5m0s", "jitter up to 30s after each slot",
				"last fired 2026-03-28T01:30:07.5Z", "NEXT SLOT FIRES AT", "FIRED SLOT FIRED AT LATE",
				"2026-03-28T01:30:00Z 2026-03-28T01:30:07.5Z 1.2ms",
				"DEAD LETTER SLOT STATUS AT REASON", "31 2026-03-27T01:30:00Z 404 2026-03-27T01:40:00Z 404 Not Found: no such rule",
				"1 shown, 3 of this rule on timerd-1 (timerd dead-letters list|redrive --addr ...)"},
		},
		{
			name: "owner unreachable",
			args: []string{"7", "--addr", host},
			want: []string{"owner timerd-2 at 10.0.0.3:8470, partition 12", "answered by timerd-0",
				"OWNER UNREACHABLE 10.0.0.3:8470: dial tcp 10.0.0.3:8470: connect: connection refused",
				"below is what timerd-0 knows itself; ask timerd rules describe 7 --addr 10.0.0.3:8470",
				"state enabled; not firing here", "schedule interval every 1m0s (core.intervaltimer)", "misfire skip, grace unlimited",
				"last slot none fired yet (slots after 2026-03-28T01:30:00Z)", "no coming slots",
				"no recent fires recorded on timerd-0 (it keeps the lateness of the rules it fired lately, since its start)",
				"no dead letters on timerd-0"},
		},
		{name: "json as served", args: []string{"4711", "--addr", host, "--json", "--token-file", tokenFile}, want: []string{`"partition": 9194, "forwarded_by": "timerd-0",`}},
		{name: "unknown rule", args: []string{"9", "--addr", host}, code: 1, errorHas: "status 404: rule 9 is not known"},
		{name: "answer for another rule", args: []string{"8", "--addr", host}, code: 1, errorHas: "describes rule 4711"},
		{name: "bad id", args: []string{"x12", "--addr", host}, code: 2, errorHas: `rule id "x12": want a whole number ≥ 1`},
		{name: "zero id", args: []string{"0", "--addr", host}, code: 2, errorHas: "want a whole number ≥ 1"},
		{name: "no id", args: []string{"--addr", host}, code: 2, errorHas: "want one rule id, got 0 arguments"},
		{name: "nobody listening", args: []string{"1", "--addr", "127.0.0.1:1", "--timeout", "2s"}, code: 1, errorHas: "GET http://127.0.0.1:1/v1/rules/1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, code, err := run(append([]string{"rules", "describe"}, tt.args...)...)
			if code != tt.code {
				t.Fatalf("timerd rules describe %v: exit %d (%v), want %d; output:\n%s", tt.args, code, err, tt.code, out)
			}
			if tt.errorHas != "" && (err == nil || !strings.Contains(err.Error(), tt.errorHas)) {
				t.Errorf("timerd rules describe %v: error %v, want one containing %q", tt.args, err, tt.errorHas)
			}
			lines := map[string]bool{}
			for _, l := range strings.Split(out, "\n") {
				lines[strings.Join(strings.Fields(l), " ")] = true
			}
			for _, w := range tt.want {
				if !lines[w] && !strings.Contains(out, w) {
					t.Errorf("timerd rules describe %v: no line %q in:\n%s", tt.args, w, out)
				}
			}
			if err != nil && strings.Contains(err.Error(), operatorToken) {
				t.Errorf("the error quotes the token: %v", err)
			}
		})
	}
	if got := auth.Load(); got != "Bearer "+operatorToken {
		t.Errorf("the node got Authorization %q, want the token of --token-file", got)
	}
}
