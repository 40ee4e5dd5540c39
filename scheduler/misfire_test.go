package scheduler

import (
	"testing"
	"time"
)

func planEngine(t *testing.T, cfg Config) *Engine {
	t.Helper()
	cfg.Commit = func([]Fire, []Miss) error { return nil }
	e, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return e
}

func TestPlan(t *testing.T) {
	now := time.Date(2030, 6, 1, 12, 0, 0, 0, time.UTC)
	withPolicy := func(tm *Timer, p MisfirePolicy, g time.Duration) *Timer {
		tm.Misfire, tm.MisfireGrace = p, g
		return tm
	}
	tests := []struct {
		name     string
		cfg      Config
		timer    *Timer
		wm       time.Time
		room     int
		fires    []time.Duration // slots relative to now
		catchUps int
		last     time.Duration // watermark slot after the plan
		next     time.Duration
		hasNext  bool
	}{
		{"on time within grace", Config{}, every(time.Second, now), now.Add(-5 * time.Second), 100,
			[]time.Duration{-4 * time.Second, -3 * time.Second, -2 * time.Second, -time.Second, 0}, 0, 0, time.Second, true},
		{"grace boundary fire_once", Config{}, withPolicy(every(time.Minute, now), FireOnce, time.Minute), now.Add(-3 * time.Minute), 100,
			[]time.Duration{-2 * time.Minute, -time.Minute, 0}, 1, 0, time.Minute, true},
		{"grace boundary skip", Config{}, withPolicy(every(time.Minute, now), Skip, time.Minute), now.Add(-3 * time.Minute), 100,
			[]time.Duration{-time.Minute, 0}, 0, 0, time.Minute, true},
		{"grace 1ns short fire_once", Config{}, withPolicy(every(time.Minute, now), "", time.Minute-1), now.Add(-3 * time.Minute), 100,
			[]time.Duration{-time.Minute, 0}, 1, 0, time.Minute, true},
		{"grace 1ns short skip", Config{}, withPolicy(every(time.Minute, now), Skip, time.Minute-1), now.Add(-3 * time.Minute), 100,
			[]time.Duration{0}, 0, 0, time.Minute, true},
		{"skip, nothing on time", Config{}, withPolicy(every(time.Hour, now.Add(30*time.Minute)), Skip, 0), now.Add(-24 * time.Hour), 100,
			nil, 0, -30 * time.Minute, 30 * time.Minute, true},
		{"fire_all under the cap", Config{}, withPolicy(every(time.Minute, now), FireAll, time.Second), now.Add(-5 * time.Minute), 100,
			[]time.Duration{-4 * time.Minute, -3 * time.Minute, -2 * time.Minute, -time.Minute, 0}, 4, 0, time.Minute, true},
		{"fire_all cap 3", Config{MaxCatchUp: 3}, withPolicy(every(time.Minute, now), FireAll, time.Second), now.Add(-50 * time.Hour), 100,
			[]time.Duration{-3 * time.Minute, -2 * time.Minute, -time.Minute, 0}, 3, 0, time.Minute, true},
		{"fire_all cap 1", Config{MaxCatchUp: 1}, withPolicy(every(time.Minute, now), FireAll, time.Second), now.Add(-50 * time.Hour), 100,
			[]time.Duration{-time.Minute, 0}, 1, 0, time.Minute, true},
		{"room runs out", Config{}, every(time.Second, now), now.Add(-10 * time.Second), 4,
			[]time.Duration{-9 * time.Second, -8 * time.Second, -7 * time.Second, -6 * time.Second}, 0, -6 * time.Second, -5 * time.Second, true},
		{"unlimited default grace", Config{DefaultMisfireGrace: UnlimitedGrace}, every(time.Hour, now), now.Add(-3 * time.Hour), 100,
			[]time.Duration{-2 * time.Hour, -time.Hour, 0}, 0, 0, time.Hour, true},
		{"datetime late unlimited", Config{}, at(now.Add(-time.Hour), UnlimitedGrace, Skip), now.Add(-2 * time.Hour), 100,
			[]time.Duration{-time.Hour}, 0, -time.Hour, 0, false},
		{"datetime late fire_once", Config{}, at(now.Add(-time.Hour), 0, ""), now.Add(-2 * time.Hour), 100,
			[]time.Duration{-time.Hour}, 1, -time.Hour, 0, false},
		{"datetime late skip", Config{}, at(now.Add(-time.Hour), time.Minute, Skip), now.Add(-2 * time.Hour), 100,
			nil, 0, -time.Hour, 0, false},
		{"datetime late fire_all", Config{}, at(now.Add(-time.Hour), time.Minute, FireAll), now.Add(-2 * time.Hour), 100,
			[]time.Duration{-time.Hour}, 1, -time.Hour, 0, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := planEngine(t, tc.cfg)
			first, ok := tc.timer.Next(tc.wm)
			if !ok {
				t.Fatalf("no first slot after %v", tc.wm)
			}
			p := e.plan(9, tc.timer, Watermark{Slot: tc.wm, Count: 10}, first, now, tc.room)
			if p.n != len(e.fires) || p.n != len(tc.fires) {
				t.Fatalf("plan: n=%d, %d fires appended %v; want %d: %v", p.n, len(e.fires), slotsOf(e.fires), len(tc.fires), tc.fires)
			}
			catchUps := 0
			for i, f := range e.fires {
				if !f.Slot.Equal(now.Add(tc.fires[i])) || f.Count != uint64(11+i) || f.RuleID != 9 || !f.FiredAt.Equal(now) || f.Timer != tc.timer {
					t.Errorf("fire %d = %+v; want slot now%v count %d", i, f, tc.fires[i], 11+i)
				}
				if f.CatchUp {
					catchUps++
				}
			}
			if catchUps != tc.catchUps {
				t.Errorf("%d catch-up fires, want %d", catchUps, tc.catchUps)
			}
			if !p.last.Equal(now.Add(tc.last)) || p.count != uint64(10+len(tc.fires)) || p.hasNext != tc.hasNext ||
				(tc.hasNext && !p.next.Equal(now.Add(tc.next))) {
				t.Errorf("plan = last now%v count %d next now%v/%v; want now%v %d now%v/%v",
					p.last.Sub(now), p.count, p.next.Sub(now), p.hasNext, tc.last, 10+len(tc.fires), tc.next, tc.hasNext)
			}
			if limit := uint64(len(tc.fires) + e.cfg.MaxCatchUp + 5); e.calls > limit {
				t.Errorf("%d Next/Last calls, want at most %d", e.calls, limit)
			}
		})
	}
}

// TestSearchCatchUp starts the window search from bad guesses: too narrow
// (widened by doubling) and too wide (bisected).
func TestSearchCatchUp(t *testing.T) {
	after := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	tm := every(time.Second, after)
	m := after.Add(1_000_000 * time.Second) // 11.6 days of 1s slots missed
	first := after.Add(time.Second)
	for _, span := range []time.Duration{1, time.Second, 50 * time.Second, 100 * time.Second, 1000 * time.Second,
		time.Hour, 24 * time.Hour, maxDuration} {
		t.Run(span.String(), func(t *testing.T) {
			e := planEngine(t, Config{})
			got := e.searchCatchUp(tm, after, first, m, span)
			if want := m.Add(-99 * time.Second); !got.Equal(want) {
				t.Fatalf("searchCatchUp(span %v) = m%v, want m-1m39s", span, got.Sub(m))
			}
			// Each probe costs at most 4·cap+1 calls; there are O(log gap) probes.
			if e.calls > 64*(4*DefaultMaxCatchUp+1) {
				t.Errorf("searchCatchUp(span %v): %d calls", span, e.calls)
			}
			t.Logf("span %v: %d calls", span, e.calls)
		})
	}
	t.Run("fewer than the cap", func(t *testing.T) {
		e := planEngine(t, Config{})
		m := after.Add(40 * time.Second)
		if got := e.searchCatchUp(tm, after, first, m, time.Second); !got.Equal(first) {
			t.Fatalf("searchCatchUp with 40 missed = %v, want the first slot %v", got, first)
		}
	})
}
