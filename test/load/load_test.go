package main

import (
	"context"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// The command's core end to end on a small load: 200 rules of 1 s for 5 s
// through a real `timerd dev`, every slot stored exactly once.
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
	if want := 200 * 5; rep.Expected != want {
		t.Errorf("fires expected = %d, want %d", rep.Expected, want)
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
	w0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	w := window{Start: w0, End: w0.Add(30 * time.Second), Interval: iv}
	ev := func(rule int64, slot time.Time, stored time.Duration) event {
		var e event
		e.TriggerInstanceID = fmt.Sprintf("rule_%d", rule)
		e.IdempotencyKey = fmt.Sprintf("%d:%d", rule, slot.UnixNano())
		e.Payload.ScheduledAt = slot
		e.Payload.FiredAt = slot.Add(time.Millisecond)
		e.Created = slot.Add(stored)
		return e
	}
	// Rule 1 has phase 3 s, rule 2 phase 7 s: three slots each in the window.
	slots := func(rule int64, phase time.Duration) []event {
		var evs []event
		for k := -1; k <= 3; k++ { // one slot before and one after the window
			evs = append(evs, ev(rule, w0.Add(phase+time.Duration(k)*iv), 5*time.Millisecond))
		}
		return evs
	}
	full := append(slots(1, 3*time.Second), slots(2, 7*time.Second)...)
	tests := []struct {
		name   string
		rules  []int64
		evs    []event
		phases map[int64]time.Time
		want   analysis // counts only
	}{
		{"every slot once", []int64{1, 2}, full, nil,
			analysis{Expected: 6, Stored: 6}},
		{"a slot missing", []int64{1, 2}, without(full, 2), nil,
			analysis{Expected: 6, Stored: 5, Missing: 1}},
		{"a slot stored twice", []int64{1, 2}, plus(full, full[2]), nil,
			analysis{Expected: 6, Stored: 6, Duplicates: 1}},
		{"an event off the rule's grid", []int64{1, 2}, plus(full, ev(1, w0.Add(4*time.Second), 0)), nil,
			analysis{Expected: 6, Stored: 6, OffGrid: 1}},
		{"an event of another rule", []int64{1, 2}, plus(full, ev(9, w0.Add(time.Second), 0)), nil,
			analysis{Expected: 6, Stored: 6, Foreign: 1}},
		{"a silent rule whose phase is known", []int64{1, 2, 3}, full, map[int64]time.Time{3: w0.Add(-time.Hour + 5*time.Second)},
			analysis{Expected: 9, Stored: 6, Missing: 3}},
		{"a silent rule of unknown phase", []int64{1, 2, 3}, full, nil,
			analysis{Expected: 9, Stored: 6, Missing: 3, UnknownPhase: 1}},
		{"no events", []int64{1}, nil, nil,
			analysis{Expected: 3, Missing: 3, UnknownPhase: 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := analyze(tt.rules, tt.evs, w, tt.phases)
			g := [...]int{got.Expected, got.Stored, got.Missing, got.Duplicates, got.OffGrid, got.Foreign, got.UnknownPhase}
			x := [...]int{tt.want.Expected, tt.want.Stored, tt.want.Missing, tt.want.Duplicates, tt.want.OffGrid, tt.want.Foreign, tt.want.UnknownPhase}
			if g != x {
				t.Errorf("analyze(%s): [expected stored missing dups offgrid foreign unknown] = %v, want %v", tt.name, g, x)
			}
		})
	}
	if got := analyze([]int64{1, 2}, full, w, nil); got.Latency.N != 6 || got.Latency.P99 != 5 || got.Lateness.Max != 1 || got.Store.P50 != 4 {
		t.Errorf("analyze(every slot once): latency %+v, lateness %+v, fired→stored %+v; want 6 of 5ms, lateness 1ms, stored 4ms after firing",
			got.Latency, got.Lateness, got.Store)
	}
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
