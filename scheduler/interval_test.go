package scheduler

import (
	"math"
	"math/rand/v2"
	"testing"
	"time"
)

func mustParse(tb testing.TB, ref, params string, ruleID int64) *Timer {
	tb.Helper()
	t, err := Parse(ref, []byte(params), ruleID)
	if err != nil {
		tb.Fatalf("Parse(%q, %s, %d): %v", ref, params, ruleID, err)
	}
	return t
}

func ts(tb testing.TB, s string) time.Time {
	tb.Helper()
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		tb.Fatalf("bad test time %q: %v", s, err)
	}
	return t
}

func TestIntervalNextLast(t *testing.T) {
	anchor := ts(t, "2026-01-01T00:00:00.25Z")
	s := intervalSchedule{anchor: anchor, period: 10 * time.Second}
	tests := []struct {
		name       string
		after      string
		wantNext   string
		wantLastLE string // Last(−∞, after): latest slot ≤ after
	}{
		{"on the anchor", "2026-01-01T00:00:00.25Z", "2026-01-01T00:00:10.25Z", "2026-01-01T00:00:00.25Z"},
		{"just before a slot", "2026-01-01T00:00:10.249999999Z", "2026-01-01T00:00:10.25Z", "2026-01-01T00:00:00.25Z"},
		{"just after a slot", "2026-01-01T00:00:10.250000001Z", "2026-01-01T00:00:20.25Z", "2026-01-01T00:00:10.25Z"},
		{"before the anchor", "2025-12-31T23:59:55Z", "2026-01-01T00:00:00.25Z", "2025-12-31T23:59:50.25Z"},
		{"before the anchor, mid-period", "2025-12-31T23:59:42Z", "2025-12-31T23:59:50.25Z", "2025-12-31T23:59:40.25Z"},
		{"before the anchor on a slot", "2025-12-31T23:59:50.25Z", "2026-01-01T00:00:00.25Z", "2025-12-31T23:59:50.25Z"},
		{"years later", "2126-07-01T13:00:03Z", "2126-07-01T13:00:10.25Z", "2126-07-01T13:00:00.25Z"},
		{"centuries before", "1700-01-01T00:00:00Z", "1700-01-01T00:00:00.25Z", "1699-12-31T23:59:50.25Z"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			after := ts(t, tt.after)
			got, ok := s.next(after)
			if !ok || !got.Equal(ts(t, tt.wantNext)) {
				t.Errorf("next(%s) = %v, %v; want %s", tt.after, got, ok, tt.wantNext)
			}
			got, ok = s.last(after.Add(-time.Hour), after)
			if !ok || !got.Equal(ts(t, tt.wantLastLE)) {
				t.Errorf("last(…, %s) = %v, %v; want %s", tt.after, got, ok, tt.wantLastLE)
			}
		})
	}
}

// The extremes of time.Time must neither overflow nor loop: the zero time
// (a watermark never set) and a period of 100 years.
func TestIntervalExtremes(t *testing.T) {
	for _, period := range []time.Duration{time.Second, 24 * time.Hour, maxInterval, 1500 * time.Millisecond} {
		s := intervalSchedule{anchor: anchorFor(time.Time{}, period, 7), period: period}
		for _, after := range []time.Time{{}, time.Unix(0, 0), time.Date(9999, 12, 31, 0, 0, 0, 0, time.UTC), time.Unix(math.MaxInt64/4, 0)} {
			n, ok := s.next(after)
			if !ok || !n.After(after) || n.Sub(after) > period {
				t.Errorf("period %v: next(%v) = %v, %v; want within (after, after+period]", period, after, n, ok)
				continue
			}
			if s.phase(n) != 0 {
				t.Errorf("period %v: next(%v) = %v is not a slot (phase %v)", period, after, n, s.phase(n))
			}
		}
	}
}

// The engine calls Next on every fire: it must not allocate, whether the
// timer was parsed or built by hand (the benchmarks and tests build them).
func TestIntervalNextDoesNotAllocate(t *testing.T) {
	anchor := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	timers := map[string]*Timer{
		"parsed":              mustParse(t, "core.intervaltimer", `{"interval":5}`, 1),
		"hand-built interval": {Kind: KindInterval, Interval: 5 * time.Second, Anchor: anchor},
		"hand-built @every":   {Kind: KindCron, Expression: "@every 5s", Interval: 5 * time.Second, Anchor: anchor},
		"hand-built datetime": {Kind: KindDatetime, FireAt: anchor.Add(time.Hour)},
	}
	for name, tm := range timers {
		after := anchor
		if a := testing.AllocsPerRun(100, func() { after, _ = tm.Next(after) }); a != 0 {
			t.Errorf("%s: Timer.Next: %v allocations per call, want 0", name, a)
		}
		if a := testing.AllocsPerRun(100, func() { _, _ = tm.Last(after.Add(-time.Hour), after) }); a != 0 {
			t.Errorf("%s: Timer.Last: %v allocations per call, want 0", name, a)
		}
	}
}

// phase takes a 64-bit shortcut within ±292 years of the anchor; it must
// agree with the 128-bit arithmetic everywhere, on both sides of the anchor
// and at the edges of the shortcut.
func TestIntervalPhaseShortcut(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	anchor := time.Date(2026, 1, 1, 0, 0, 0, 250_000_000, time.UTC)
	edges := []time.Time{anchor, anchor.Add(math.MaxInt64), anchor.Add(math.MinInt64 + 1),
		anchor.Add(math.MaxInt64).Add(time.Nanosecond), anchor.Add(math.MinInt64).Add(-time.Nanosecond), {}}
	for range 2000 {
		edges = append(edges, anchor.Add(time.Duration(rng.Int64())-time.Duration(rng.Int64())/2))
	}
	for _, period := range []time.Duration{time.Nanosecond, time.Second, 1500 * time.Millisecond, 7 * time.Hour, maxInterval} {
		s := intervalSchedule{anchor: anchor, period: period}
		for _, at := range edges {
			if got, want := s.phase(at), s.phaseWide(at); got != want {
				t.Fatalf("period %v: phase(%v) = %v, 128-bit phase %v", period, at, got, want)
			}
		}
	}
}

// 10,000 rules created together with the same interval must not fire
// together: their phases spread evenly over the interval.
func TestIntervalPhaseSpread(t *testing.T) {
	const rules, buckets = 10000, 50
	period := time.Minute
	var hist [buckets]int
	seen := map[time.Duration]int{}
	for id := int64(1); id <= rules; id++ {
		a := anchorFor(time.Time{}, period, id)
		off := a.Sub(time.Unix(0, 0))
		if off < 0 || off >= period || off%time.Millisecond != 0 {
			t.Fatalf("anchorFor(rule %d) offset %v: want a whole millisecond in [0, %v)", id, off, period)
		}
		if b := anchorFor(time.Time{}, period, id); !b.Equal(a) {
			t.Fatalf("anchorFor(rule %d) not stable: %v then %v", id, a, b)
		}
		hist[int(off*buckets/period)]++
		seen[off]++
	}
	mean := rules / buckets
	for i, n := range hist {
		if n < mean/2 || n > mean*3/2 {
			t.Errorf("bucket %d of %d holds %d rules, want about %d (histogram %v)", i, buckets, n, mean, hist)
			break
		}
	}
	if len(seen) < rules*9/10 {
		t.Errorf("%d distinct phases for %d rules, want nearly all distinct", len(seen), rules)
	}
}

func TestIntervalStartAtPinsPhase(t *testing.T) {
	for _, id := range []int64{1, 2, 99} {
		tm := mustParse(t, "core.intervaltimer", `{"interval":90,"start_at":"2026-05-01T10:00:00.5+02:00"}`, id)
		got, _ := tm.Next(ts(t, "2026-05-01T08:00:00Z"))
		if want := ts(t, "2026-05-01T08:00:00.5Z"); !got.Equal(want) {
			t.Errorf("rule %d: Next = %v, want %v (start_at is a slot)", id, got, want)
		}
		got, _ = tm.Next(ts(t, "2026-05-01T07:58:00Z"))
		if want := ts(t, "2026-05-01T07:58:30.5Z"); !got.Equal(want) {
			t.Errorf("rule %d: Next before start_at = %v, want %v (start_at pins the phase only)", id, got, want)
		}
	}
}

func BenchmarkNext(b *testing.B) {
	cases := []struct{ name, ref, params string }{
		{"interval", "core.intervaltimer", `{"interval":5}`},
		{"every", "core.crontimer", `{"expression":"@every 5s"}`},
		{"datetime", "core.datetimetimer", `{"fire_at":"2099-01-01T00:00:00Z"}`},
		{"cron_utc_seconds", "core.crontimer", `{"expression":"*/5 * * * * *"}`},
		{"cron_utc_5field", "core.crontimer", `{"expression":"*/5 9-17 * * MON-FRI"}`},
		{"cron_berlin_seconds", "core.crontimer", `{"expression":"*/5 * * * * *","timezone":"Europe/Berlin"}`},
		{"cron_berlin_daily", "core.crontimer", `{"expression":"30 2 * * *","timezone":"Europe/Berlin","dst_overlap":"twice"}`},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			tm := mustParse(b, c.ref, c.params, 1)
			start := ts(b, "2026-03-20T00:00:00Z")
			after := start
			b.ReportAllocs()
			for b.Loop() {
				n, ok := tm.Next(after)
				if !ok {
					n = start
				}
				after = n
			}
		})
	}
}

func BenchmarkLastAfterAWeek(b *testing.B) {
	tm := mustParse(b, "core.crontimer", `{"expression":"* * * * * *","timezone":"Europe/Berlin"}`, 1)
	after := ts(b, "2026-03-25T00:00:00Z")
	notAfter := after.Add(7 * 24 * time.Hour)
	i := 0 // b.N is 0 inside b.Loop: count the iterations ourselves
	for b.Loop() {
		tm.Last(after, notAfter.Add(-time.Duration(i%1000)*time.Millisecond))
		i++
	}
}
