package main

import (
	"context"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/timerd/timerd/scheduler"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// The command's core end to end on a small load: 200 rules of 1 s through a
// real `timerd dev`, every slot from each create to 5 s after the last
// stored exactly once.
func TestRunSmallLoadExactlyOnce(t *testing.T) {
	if testing.Short() {
		t.Skip("starts timerd dev for ~10 s")
	}
	cfg := defaultConfig()
	cfg.Rules, cfg.Interval, cfg.Duration, cfg.Concurrency = 200, time.Second, 5*time.Second, 8
	cfg.Settle, cfg.DrainTimeout = time.Second, 10*time.Second
	cfg.DataDir = t.TempDir()
	var progress strings.Builder
	cfg.Progress = &progress
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	rep, err := run(ctx, cfg)
	if err != nil {
		t.Fatalf("run(200 rules of 1s for 5s): %v\nprogress:\n%s", err, progress.String())
	}
	var out strings.Builder
	printReport(&out, rep)
	t.Logf("report:\n%s", out.String())
	// Each rule owes every slot from its create to 5 s after the last one.
	if least := 200 * 4; rep.Expected < least {
		t.Errorf("fires expected = %d, want ≥ %d", rep.Expected, least)
	}
	if rep.Missing != 0 || rep.Duplicates != 0 || rep.OffGrid != 0 || rep.Stored != rep.Expected {
		t.Errorf("stored %d of %d slots, missing %d, duplicates %d, off-grid %d; want every slot once",
			rep.Stored, rep.Expected, rep.Missing, rep.Duplicates, rep.OffGrid)
	}
	if !strings.Contains(out.String(), "PASS exactly once") {
		t.Errorf("printed report lacks %q", "PASS exactly once")
	}
}

func TestAnalyze(t *testing.T) {
	const iv = 10 * time.Second
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	// The run: creates from t0 to t0+20s, then 30 s more.
	s := span{Start: t0, CreatedEnd: t0.Add(20 * time.Second), End: t0.Add(50 * time.Second)}
	rule := func(id int64, sent time.Duration) ruleSpec {
		tm, err := scheduler.Parse("core.intervaltimer", []byte(`{"interval":10}`), id)
		if err != nil {
			t.Fatal(err)
		}
		return ruleSpec{ID: id, Sent: t0.Add(sent), Acked: t0.Add(sent + 5*time.Millisecond), Timer: tm}
	}
	ev := func(rule int64, slot time.Time, stored time.Duration) event {
		var e event
		e.TriggerInstanceID = fmt.Sprintf("rule_%d", rule)
		e.IdempotencyKey = fmt.Sprintf("%d:%d", rule, slot.UnixNano())
		e.Payload.ScheduledAt = slot
		e.Payload.FiredAt = slot.Add(time.Millisecond)
		e.Created = slot.Add(stored)
		return e
	}
	// Rule 1 created at the start, rule 2 at +15 s: the events of every
	// slot after their creates, to the end of the run, and one after it.
	r1, r2 := rule(1, 0), rule(2, 15*time.Second)
	slots := func(r ruleSpec) []event {
		var evs []event
		for slot, ok := r.Timer.Next(r.Acked); ok && slot.Before(s.End.Add(iv)); slot, ok = r.Timer.Next(slot) {
			evs = append(evs, ev(r.ID, slot, 5*time.Millisecond))
		}
		return evs
	}
	n1, n2 := 0, 0
	for slot, ok := r1.Timer.Next(r1.Acked); ok && slot.Before(s.End); slot, ok = r1.Timer.Next(slot) {
		n1++
	}
	for slot, ok := r2.Timer.Next(r2.Acked); ok && slot.Before(s.End); slot, ok = r2.Timer.Next(slot) {
		n2++
	}
	if n1 != 5 || n2 < 3 || n2 > 4 {
		t.Fatalf("slots owed: rule 1 %d, rule 2 %d; want 5 and 3 or 4", n1, n2)
	}
	full := append(slots(r1), slots(r2)...)
	first2 := slots(r2)[0].Payload.ScheduledAt
	before := r2.Sent.Add(-iv / 2) // a time before rule 2 existed
	onGridBefore, _ := r2.Timer.Next(before.Add(-iv))
	tests := []struct {
		name  string
		rules []ruleSpec
		evs   []event
		want  analysis // counts only
	}{
		{"every slot once", []ruleSpec{r1, r2}, full,
			analysis{Expected: n1 + n2, Stored: n1 + n2}},
		{"a slot missing", []ruleSpec{r1, r2}, without(full, 2),
			analysis{Expected: n1 + n2, Stored: n1 + n2 - 1, Missing: 1}},
		{"a rule's first slot missing", []ruleSpec{r1, r2}, drop(full, 2, first2),
			analysis{Expected: n1 + n2, Stored: n1 + n2 - 1, Missing: 1}},
		{"a slot stored twice", []ruleSpec{r1, r2}, plus(full, full[2]),
			analysis{Expected: n1 + n2, Stored: n1 + n2, Duplicates: 1}},
		{"an event off the rule's grid", []ruleSpec{r1, r2}, plus(full, ev(1, full[1].Payload.ScheduledAt.Add(time.Second), 0)),
			analysis{Expected: n1 + n2, Stored: n1 + n2, OffGrid: 1}},
		{"an event before the rule was created", []ruleSpec{r1, r2}, plus(full, ev(2, onGridBefore, 0)),
			analysis{Expected: n1 + n2, Stored: n1 + n2, Early: 1}},
		{"an event of another rule", []ruleSpec{r1, r2}, plus(full, ev(9, t0.Add(time.Second), 0)),
			analysis{Expected: n1 + n2, Stored: n1 + n2, Foreign: 1}},
		{"a rule with no event", []ruleSpec{r1, r2, rule(3, time.Second)}, full,
			analysis{Expected: n1 + n2 + 5, Stored: n1 + n2, Missing: 5}},
		{"no events", []ruleSpec{r1}, nil,
			analysis{Expected: n1, Missing: n1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := analyze(tt.rules, tt.evs, s)
			g := [...]int{got.Expected, got.Stored, got.Missing, got.Duplicates, got.OffGrid, got.Early, got.Foreign}
			x := [...]int{tt.want.Expected, tt.want.Stored, tt.want.Missing, tt.want.Duplicates, tt.want.OffGrid, tt.want.Early, tt.want.Foreign}
			if g != x {
				t.Errorf("analyze(%s): [expected stored missing dups offgrid early foreign] = %v, want %v", tt.name, g, x)
			}
		})
	}
	got := analyze([]ruleSpec{r1, r2}, full, s)
	if n := n1 + n2; got.Latency.N != n || got.Latency.P99 != 5 || got.Lateness.Max != 1 || got.Store.P50 != 4 {
		t.Errorf("analyze(every slot once): latency %+v, lateness %+v, fired→stored %+v; want %d of 5ms, lateness 1ms, stored 4ms after firing",
			got.Latency, got.Lateness, got.Store, n)
	}
	after := 0
	for _, e := range full {
		if sl := e.Payload.ScheduledAt; !sl.Before(s.CreatedEnd) && sl.Before(s.End) {
			after++
		}
	}
	if got.LatencyAfter.N != after || got.LatenessAfter.N != after {
		t.Errorf("analyze(every slot once): %d and %d slots after creation, want %d", got.LatencyAfter.N, got.LatenessAfter.N, after)
	}
}

// drop removes the event of rule's slot.
func drop(evs []event, rule int64, slot time.Time) []event {
	var out []event
	for _, e := range evs {
		if id, _ := e.ruleID(); id == rule && e.Payload.ScheduledAt.Equal(slot) {
			continue
		}
		out = append(out, e)
	}
	return out
}

func plus(evs []event, e event) []event {
	return append(append([]event(nil), evs...), e)
}

func without(evs []event, i int) []event {
	out := append([]event(nil), evs[:i]...)
	return append(out, evs[i+1:]...)
}

func TestNewDist(t *testing.T) {
	var ds []time.Duration
	for i := 1; i <= 1000; i++ {
		ds = append(ds, time.Duration(i)*time.Millisecond)
	}
	got := newDist(ds)
	want := dist{N: 1000, P50: 500, P90: 900, P99: 990, P999: 999, Max: 1000}
	if got != want {
		t.Errorf("newDist(1..1000 ms) = %+v, want %+v", got, want)
	}
	if got := newDist(nil); got != (dist{}) {
		t.Errorf("newDist(nil) = %+v, want zero", got)
	}
}

func TestPromText(t *testing.T) {
	const page = `# HELP timerd_deliveries_total x
# TYPE timerd_deliveries_total counter
timerd_deliveries_total{code="200"} 3
timerd_deliveries_total{code="201"} 97
timerd_outbox_depth 4
timerd_x_seconds_bucket{le="0.01"} 50
timerd_x_seconds_bucket{le="0.1"} 90
timerd_x_seconds_bucket{le="+Inf"} 100
timerd_x_seconds_sum 3.5
timerd_x_seconds_count 100
odd{a="q\"x,y"} 1e3
`
	s, err := parseProm(strings.NewReader(page))
	if err != nil {
		t.Fatalf("parseProm: %v", err)
	}
	if v, ok := s.sum("timerd_deliveries_total", map[string]string{"code": "201"}); !ok || v != 97 {
		t.Errorf("sum(deliveries code=201) = %v, %v; want 97, true", v, ok)
	}
	if v, _ := s.sum("timerd_deliveries_total", nil); v != 100 {
		t.Errorf("sum(deliveries) = %v, want 100", v)
	}
	if v, ok := s.sum("odd", map[string]string{"a": `q"x,y`}); !ok || v != 1000 {
		t.Errorf("sum(odd with an escaped label) = %v, %v; want 1000, true", v, ok)
	}
	h := s.histograms()["timerd_x_seconds"]
	if h == nil || h.count != 100 || h.sum != 3.5 {
		t.Fatalf("histograms()[timerd_x_seconds] = %+v, want count 100 sum 3.5", h)
	}
	for _, c := range []struct{ q, want float64 }{{0.25, 0.005}, {0.5, 0.01}, {0.7, 0.055}, {0.99, 0.1}} {
		if got := h.quantile(c.q); math.Abs(got-c.want) > 1e-9 {
			t.Errorf("quantile(%v) = %v, want %v", c.q, got, c.want)
		}
	}
	d := h.minus(&histo{buckets: map[float64]float64{0.01: 50, 0.1: 50, math.Inf(1): 50}, count: 50, sum: 1})
	if got := d.quantile(0.5); math.Abs(got-0.06625) > 1e-9 || d.count != 50 {
		t.Errorf("minus then quantile(0.5) = %v (count %v), want 0.06625 (count 50)", got, d.count)
	}
}
