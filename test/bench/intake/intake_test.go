package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/timerd/timerd/test/internal/benchkit"
)

func TestAgentsFlag(t *testing.T) {
	var l intList
	if err := l.Set("1, 3,10"); err != nil || l.String() != "1,3,10" {
		t.Errorf("Set(1, 3,10) = %v, %v", err, l)
	}
	for _, bad := range []string{"", "1,,3", "-1", "three"} {
		if err := l.Set(bad); err == nil {
			t.Errorf("Set(%q) = nil, want an error", bad)
		}
	}
	ok := config{Agents: []int{1}, Rules: 1, Concurrency: 1}
	for _, bad := range []config{{Rules: 1, Concurrency: 1}, {Agents: []int{51}, Rules: 1, Concurrency: 1},
		{Agents: []int{1}, Concurrency: 1}, {Agents: []int{1}, Rules: 1}} {
		if err := bad.validate(); err == nil {
			t.Errorf("validate(%+v) = nil, want an error", bad)
		}
	}
	if err := ok.validate(); err != nil {
		t.Errorf("validate(%+v) = %v", ok, err)
	}
}

// createRules posts every rule once, with the admin token, as JSON, and
// counts what is not answered 201.
func TestCreateRules(t *testing.T) {
	var (
		mu   sync.Mutex
		refs = map[string]int{}
		bad  atomic.Int32
		inFl atomic.Int32
		most atomic.Int32
	)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := inFl.Add(1)
		defer inFl.Add(-1)
		for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
		}
		time.Sleep(2 * time.Millisecond)
		b, _ := io.ReadAll(r.Body)
		if r.Method != http.MethodPost || r.URL.Path != "/api/v1/rules" || r.Header.Get("Authorization") != "Bearer tok" ||
			r.Header.Get("Content-Type") != "application/json" || !strings.Contains(string(b), `"trigger_ref":"core.intervaltimer"`) {
			bad.Add(1)
		}
		ref := strings.Split(strings.SplitN(string(b), `"ref":"`, 2)[1], `"`)[0]
		mu.Lock()
		refs[ref]++
		seen := len(refs)
		mu.Unlock()
		if seen%10 == 0 {
			w.WriteHeader(http.StatusConflict) // every tenth fails
			return
		}
		w.WriteHeader(http.StatusCreated)
	}))
	defer srv.Close()
	lat, failed := createRules(context.Background(), srv.URL, "tok", 100, 8)
	if len(lat) != 100 || failed != 10 || bad.Load() != 0 {
		t.Errorf("createRules = %d latencies, %d failed, %d malformed requests; want 100, 10, 0", len(lat), failed, bad.Load())
	}
	if len(refs) != 100 {
		t.Errorf("%d distinct refs posted, want 100", len(refs))
	}
	for ref, n := range refs {
		if n != 1 {
			t.Errorf("ref %s posted %d times", ref, n)
		}
	}
	if m := most.Load(); m < 2 || m > 8 {
		t.Errorf("at most %d creates in flight, want 2..8", m)
	}
	if d := newDist(lat); d.N != 100 || d.P50 < 2 || d.Max < d.P99 || d.P99 < d.P50 {
		t.Errorf("latency %+v", d)
	}
}

// waitApplied returns once every agent knows the rules, and fails with what
// each knows when they do not in time.
func TestWaitApplied(t *testing.T) {
	var known atomic.Int32
	agent := func(n func() int) *proc {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, `{"node":"x","rules_known":%d}`, n())
		}))
		t.Cleanup(srv.Close)
		return &proc{base: srv.URL}
	}
	fast := agent(func() int { return 50 })
	slow := agent(func() int { return int(known.Add(5)) })
	if err := waitApplied(context.Background(), []*proc{fast, slow}, 50, 10*time.Second); err != nil {
		t.Errorf("waitApplied = %v", err)
	}
	stuck := agent(func() int { return 7 })
	err := waitApplied(context.Background(), []*proc{fast, stuck}, 50, 100*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "[50 7] of 50") {
		t.Errorf("waitApplied(stuck) = %v, want an error naming [50 7] of 50", err)
	}
}

func TestParseMetrics(t *testing.T) {
	raw, err := benchkit.ParseMetrics(strings.NewReader(`# HELP timerd_lifecycle_messages_total x
# TYPE timerd_lifecycle_messages_total counter
timerd_lifecycle_messages_total{result="applied",type="RuleCreated"} 9000
timerd_lifecycle_messages_total{result="unchanged",type="RuleCreated"} 12
timerd_lifecycle_messages_totals 5
timerd_store_commit_seconds_count 700
timerd_store_commit_seconds_sum 1.5
garbage
`))
	m := metrics(raw)
	if err != nil {
		t.Fatal(err)
	}
	if got := m.sum("timerd_lifecycle_messages_total"); got != 9012 {
		t.Errorf("sum(lifecycle) = %v, want 9012", got)
	}
	if got := m.sum("timerd_store_commit_seconds_count"); got != 700 {
		t.Errorf("sum(commits) = %v, want 700", got)
	}
	if got := m.sum("timerd_missing"); got != 0 {
		t.Errorf("sum(missing) = %v, want 0", got)
	}
}

// Two builds print side by side with their ratio, one block per run kind.
func TestPrintResults(t *testing.T) {
	base := result{Build: "old", Agents: 10, Rules: 1000, ClientTook: 2 * time.Second, AppliedTook: 2 * time.Second,
		IntakeMessages: 10000, IntakeCommits: 4000, AgentsCPU: 3 * time.Second}
	cur := base
	cur.Build, cur.ClientTook, cur.AppliedTook, cur.IntakeCommits = "this tree", time.Second, time.Second, 1000
	bare := result{Build: "this tree", Agents: 10, Bare: true, Rules: 1000, ClientTook: 500 * time.Millisecond}
	var out strings.Builder
	printResults(&out, config{Rules: 1000, Concurrency: 32}, []result{base, cur, bare})
	s := out.String()
	for _, want := range []string{"10 agents", "10 bare queues", "ratio", "creates/s (client)", "2.00×", "messages per intake commit", "4.00×"} {
		if !strings.Contains(s, want) {
			t.Errorf("output lacks %q:\n%s", want, s)
		}
	}
	if strings.Count(s, "all applied") != 1 {
		t.Errorf("all applied printed for bare queues too:\n%s", s)
	}
}
