//go:build unix

package node

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/timerd/timerd/ingest"
	"github.com/timerd/timerd/scheduler"
)

// BenchmarkReconcileRound measures one periodic reconcile round of a node
// that holds every rule already (nothing changes: the round a node makes
// every reconcile_interval): s/round and cpu-s/round, the node's side (the
// stand-in API serves pre-encoded rules, a small part of the CPU), with the
// requests and bytes it asked, at the contract's 100 rules a page and at
// 1,000. first-s is the first round, which stores every rule.
//
//	go test -run '^$' -bench ReconcileRound -benchtime 3x ./cmd/timerd/node
//	TIMERD_BENCH_RECONCILE_RULES=1000000 go test -run '^$' -bench ReconcileRound -benchtime 2x -timeout 30m ./cmd/timerd/node
func BenchmarkReconcileRound(b *testing.B) {
	n := 100_000
	if v := os.Getenv("TIMERD_BENCH_RECONCILE_RULES"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 1 {
			b.Fatalf("TIMERD_BENCH_RECONCILE_RULES=%q: not a positive number", v)
		}
	}
	api := newBulkRulesAPI(b, n)
	for _, size := range []int{ingest.FallbackPageSize, ingest.DefaultPageSize} {
		b.Run(fmt.Sprintf("rules=%d/page=%d", n, size), func(b *testing.B) {
			nd, err := New(Config{DataDir: b.TempDir(), APIURL: api.URL, ReconcileInterval: -1, NodeName: "bench",
				Registry: prometheus.NewRegistry(), Logger: slog.New(slog.DiscardHandler)})
			if err != nil {
				b.Fatal(err)
			}
			defer nd.store.Close()
			nd.rules = &ingest.RulesClient{APIURL: api.URL, PageSize: size}
			ctx := context.Background()
			start := time.Now()
			if changes, err := nd.reconcileChanges(ctx); err != nil || changes != n {
				b.Fatalf("first reconcile: %d changes, %v; want %d", changes, err, n)
			}
			first := time.Since(start)
			b.ReportAllocs()
			b.ResetTimer()
			var cpu time.Duration
			for range b.N {
				cpu0 := cpuTime()
				changes, err := nd.reconcileChanges(ctx)
				cpu += cpuTime() - cpu0
				if err != nil || changes != 0 {
					b.Fatalf("reconcile: %d changes, %v; want 0", changes, err)
				}
			}
			b.StopTimer()
			var bytes int64
			for _, trigger := range scheduler.TimerTriggers() {
				l, err := nd.rules.EnabledRules(ctx, trigger)
				if err != nil {
					b.Fatal(err)
				}
				bytes += l.Bytes
			}
			b.ReportMetric(b.Elapsed().Seconds()/float64(b.N), "s/round")
			b.ReportMetric(cpu.Seconds()/float64(b.N), "cpu-s/round")
			b.ReportMetric(first.Seconds(), "first-s")
			b.ReportMetric(float64(api.requests(size)), "requests/round")
			b.ReportMetric(float64(bytes), "bytes/round")
			b.ReportMetric(0, "ns/op")
		})
	}
}

// bulkRulesAPI serves a listing of n enabled timer rules (ids 1..n; mostly
// interval timers, a tenth cron, a tenth datetime, as rebuildFixture) at any
// page size, each rule encoded once.
type bulkRulesAPI struct {
	*httptest.Server
	byTrigger map[string][][]byte
}

func newBulkRulesAPI(b *testing.B, n int) *bulkRulesAPI {
	a := &bulkRulesAPI{byTrigger: map[string][][]byte{}}
	for id := 1; id <= n; id++ {
		var trigger, params string
		switch id % 10 {
		case 0:
			trigger, params = "core.crontimer", fmt.Sprintf(`{"expression":"%d */5 * * * *","timezone":"Europe/Berlin"}`, id%60)
		case 1:
			trigger, params = "core.datetimetimer", fmt.Sprintf(`{"fire_at":"2030-01-01T00:%02d:00Z"}`, id%60)
		default:
			trigger, params = "core.intervaltimer", fmt.Sprintf(`{"interval":%d,"unit":"seconds"}`, 60+id%3600)
		}
		a.byTrigger[trigger] = append(a.byTrigger[trigger], fmt.Appendf(nil,
			`{"id":%d,"ref":"bench.rule.%d","trigger_ref":%q,"trigger_params":%s,"enabled":true,"action_ref":"core.echo","created":"2026-01-01T00:00:00Z","updated":"2026-01-01T00:00:00Z"}`,
			id, id, trigger, params))
	}
	a.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		page, _ := strconv.Atoi(q.Get("page"))
		size, _ := strconv.Atoi(q.Get("page_size"))
		rules := a.byTrigger[q.Get("trigger_ref")]
		if page < 1 || size < 1 || size > 1000 {
			http.Error(w, `{"error":"bad page"}`, http.StatusBadRequest)
			return
		}
		lo := min((page-1)*size, len(rules))
		hi := min(lo+size, len(rules))
		var body bytes.Buffer
		body.WriteString(`{"items":[`)
		for i, enc := range rules[lo:hi] {
			if i > 0 {
				body.WriteByte(',')
			}
			body.Write(enc)
		}
		pages := (len(rules) + size - 1) / size
		fmt.Fprintf(&body, `],"pagination":{"page":%d,"page_size":%d,"total_items":%d,"total_pages":%d,"has_next":%t,"has_previous":%t}}`,
			page, size, len(rules), pages, page < pages, page > 1)
		w.Header().Set("Content-Type", "application/json")
		w.Write(body.Bytes())
	}))
	b.Cleanup(a.Close)
	return a
}

// requests is the pages one round asks for at size.
func (a *bulkRulesAPI) requests(size int) int {
	total := 0
	for _, trigger := range scheduler.TimerTriggers() {
		total += max(1, (len(a.byTrigger[trigger])+size-1)/size)
	}
	return total
}
