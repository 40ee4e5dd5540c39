package scheduler

import (
	"errors"
	"fmt"
	"slices"
	"testing"
	"testing/synctest"
	"time"
)

// missString is a Miss as the tests compare it: its times relative to now.
func missString(m Miss, now time.Time) string {
	rel := func(t time.Time) string {
		if t.IsZero() {
			return "-"
		}
		return t.Sub(now).String()
	}
	est := ""
	if m.Estimated {
		est = "~"
	}
	return fmt.Sprintf("%d %s [%s, %s] %s%d", m.RuleID, m.Reason, rel(m.From), rel(m.To), est, m.Count)
}

func missStrings(ms []Miss, now time.Time) []string {
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = missString(m, now)
	}
	return out
}

// plan reports each run of missed slots once, with its reason and count: the
// slots the policy dropped (skip, fire_all beyond its cap, fire_once's
// collapse) and those fired late by catch-up (node_down); on-time slots
// report nothing.
func TestPlanReportsMisses(t *testing.T) {
	now := time.Date(2030, 6, 1, 12, 0, 0, 0, time.UTC)
	const day = 24 * time.Hour
	policy := func(tm *Timer, p MisfirePolicy, g time.Duration) *Timer {
		tm.Misfire, tm.MisfireGrace = p, g
		return tm
	}
	cronEvery := func(expr string, p MisfirePolicy) *Timer {
		tm := mustParse(t, "core.crontimer", fmt.Sprintf(`{"expression":%q,"misfire":%q,"misfire_grace":"1m"}`, expr, p), 9)
		return tm
	}
	tests := []struct {
		name  string
		cfg   Config
		timer *Timer
		wm    time.Time
		room  int
		want  []string
	}{
		{"on time", Config{}, every(time.Second, now), now.Add(-5 * time.Second), 100, []string{}},
		{"late within grace", Config{}, every(time.Second, now), now.Add(-50 * time.Second), 100, []string{}},
		{"fire_once a day of 1s", Config{}, policy(every(time.Second, now), FireOnce, time.Minute), now.Add(-day), 1000,
			[]string{
				// the day less the minute of grace: 86,340 slots, the last of which fires
				"9 collapsed_by_fire_once [-23h59m59s, -1m2s] 86338",
				"9 node_down [-1m1s, -1m1s] 1",
			}},
		{"fire_once one slot missed", Config{}, policy(every(time.Minute, now), FireOnce, time.Minute), now.Add(-3 * time.Minute), 100,
			[]string{"9 node_down [-2m0s, -2m0s] 1"}},
		{"skip a day of 1s", Config{}, policy(every(time.Second, now), Skip, time.Minute), now.Add(-day), 1000,
			[]string{"9 skipped_by_policy [-23h59m59s, -1m1s] 86339"}},
		{"skip everything, nothing on time", Config{}, policy(every(time.Hour, now.Add(30*time.Minute)), Skip, 0), now.Add(-day), 100,
			[]string{"9 skipped_by_policy [-23h30m0s, -30m0s] 24"}},
		{"fire_all under the cap", Config{}, policy(every(time.Minute, now), FireAll, time.Second), now.Add(-5 * time.Minute), 100,
			[]string{"9 node_down [-4m0s, -1m0s] 4"}},
		{"fire_all beyond the cap", Config{MaxCatchUp: 3}, policy(every(time.Minute, now), FireAll, time.Second), now.Add(-50 * time.Hour), 100,
			[]string{"9 skipped_by_policy [-49h59m0s, -4m0s] 2996", "9 node_down [-3m0s, -1m0s] 3"}},
		{"fire_all cut by room", Config{}, policy(every(time.Minute, now), FireAll, time.Second), now.Add(-10 * time.Minute), 4,
			[]string{"9 node_down [-9m0s, -6m0s] 4"}},
		{"datetime late fire_once", Config{}, at(now.Add(-time.Hour), 0, ""), now.Add(-2 * time.Hour), 100,
			[]string{"9 node_down [-1h0m0s, -1h0m0s] 1"}},
		{"datetime late unlimited", Config{}, at(now.Add(-time.Hour), UnlimitedGrace, ""), now.Add(-2 * time.Hour), 100, []string{}},
		{"datetime late skip", Config{}, at(now.Add(-time.Hour), time.Minute, Skip), now.Add(-2 * time.Hour), 100,
			[]string{"9 skipped_by_policy [-1h0m0s, -1h0m0s] 1"}},
		{"cron short run counted", Config{}, cronEvery("0 * * * * *", FireOnce), now.Add(-10 * time.Minute), 100,
			[]string{"9 collapsed_by_fire_once [-9m0s, -3m0s] 7", "9 node_down [-2m0s, -2m0s] 1"}},
		{"cron long run estimated", Config{}, cronEvery("* * * * * *", Skip), now.Add(-day), 100,
			[]string{"9 skipped_by_policy [-23h59m59s, -1m1s] ~86339"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := planEngine(t, tc.cfg)
			first, ok := tc.timer.Next(tc.wm)
			if !ok {
				t.Fatalf("no first slot after %v", tc.wm)
			}
			e.plan(9, tc.timer, Watermark{Slot: tc.wm, Count: 10}, first, now, tc.room)
			got := missStrings(e.missed, now)
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Errorf("misses = %q, want %q", got, tc.want)
			}
			for _, m := range e.missed {
				if !m.At.Equal(now) {
					t.Errorf("miss %s decided at %v, want now", missString(m, now), m.At)
				}
			}
			// The catch-up fires are exactly those the node_down run counts.
			var late uint64
			for _, f := range e.fires {
				if f.CatchUp {
					late++
				}
			}
			var down uint64
			for _, m := range e.missed {
				if m.Reason == MissNodeDown {
					down += m.Count
				}
			}
			if late != down {
				t.Errorf("%d catch-up fires, node_down runs count %d", late, down)
			}
		})
	}
}

// Counting a run costs at most countLimit Next calls for a cron, and none for
// an interval, however long the run.
func TestCountRunIsBounded(t *testing.T) {
	e := planEngine(t, Config{})
	from := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	to := from.Add(365 * 24 * time.Hour)
	cron := mustParse(t, "core.crontimer", `{"expression":"* * * * * *"}`, 1)
	before := e.calls
	n, est := e.countRun(cron, from, to)
	if calls := e.calls - before; calls > countLimit {
		t.Errorf("a year of a 1 s cron: %d Next calls, want at most %d", calls, countLimit)
	}
	if want := uint64(365*24*3600 + 1); !est || n != want {
		t.Errorf("countRun(a year of 1 s cron) = %d, estimated %v; want ~%d", n, est, want)
	}
	before = e.calls
	n, est = e.countRun(every(time.Second, from), from, to)
	if e.calls != before || est || n != 365*24*3600+1 {
		t.Errorf("countRun(a year of 1 s interval) = %d, estimated %v, %d calls; want %d exact, no calls", n, est, e.calls-before, 365*24*3600+1)
	}
	if n, _ := e.countRun(cron, to, from); n != 0 {
		t.Errorf("countRun(to before from) = %d, want 0", n)
	}
}

// The engine hands the misses it decides to Commit with the fires, and a
// batch of misses alone (a skip policy dropped every due slot) is committed
// too.
func TestMissesCommittedWithTheBatch(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		t0 := time.Now()
		e, rec := newEngine(t, Config{})
		once := every(time.Second, t0.Add(-time.Hour))
		skip := every(time.Hour, t0.Add(30*time.Minute))
		skip.Misfire = Skip
		e.Load([]Item{
			{ID: 1, Timer: once, Watermark: Watermark{Slot: t0.Add(-time.Hour)}},
			{ID: 2, Timer: skip, Watermark: Watermark{Slot: t0.Add(-24 * time.Hour)}},
		})
		stop := start(t, e)
		synctest.Wait()
		stop()
		got := missStrings(rec.misses(), t0)
		slices.Sort(got) // in heap order: by due slot
		want := []string{
			"1 collapsed_by_fire_once [-59m59s, -1m2s] 3538",
			"1 node_down [-1m1s, -1m1s] 1",
			"2 skipped_by_policy [-23h30m0s, -30m0s] 24",
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("misses committed = %q, want %q", got, want)
		}
		if fs := rec.of(2); len(fs) != 0 {
			t.Errorf("the skip rule fired %d times, want none", len(fs))
		}
	})
}

// ReportMissed's misses ride with the next batch, which they start when
// nothing is due; a failed commit retries them with the fires, and the misses
// of a rule removed meanwhile are dropped with its fires.
func TestReportMissed(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		t0 := time.Now()
		e, rec := newEngine(t, Config{})
		stop := start(t, e)
		defer stop()
		e.ReportMissed(Miss{RuleID: 5, Reason: MissInvalidSchedule, At: t0, Detail: "bad"})
		synctest.Wait()
		if got := rec.misses(); len(got) != 1 || got[0].RuleID != 5 || got[0].Reason != MissInvalidSchedule || got[0].Detail != "bad" {
			t.Fatalf("after ReportMissed with nothing due: committed %+v, want the one miss", got)
		}

		rec.mu.Lock()
		rec.fail = 2
		rec.mu.Unlock()
		e.Upsert(6, every(time.Second, t0), Watermark{Slot: t0})
		e.ReportMissed(Miss{RuleID: 6, Reason: MissDuplicateGuard, At: t0}, Miss{RuleID: 7, Reason: MissDuplicateGuard, At: t0})
		time.Sleep(time.Second) // rule 6's slot comes due with the misses; the commit fails
		synctest.Wait()
		e.Remove(7) // unknown to the engine: its miss stays
		time.Sleep(time.Second)
		synctest.Wait()
		got := rec.misses()
		if len(got) != 3 || got[1].RuleID != 6 || got[2].RuleID != 7 {
			t.Fatalf("after two failed commits: committed %+v, want rule 5's, then 6's and 7's once", got)
		}
		if len(rec.of(6)) == 0 {
			t.Error("rule 6 did not fire")
		}
	})
}

// A rule removed while its batch's commit fails takes its misses with it.
func TestRemovedRuleDropsItsMisses(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		t0 := time.Now()
		var e *Engine
		calls := 0
		var committed []Miss
		e, _ = newEngine(t, Config{Commit: func(fs []Fire, ms []Miss) error {
			calls++
			if calls == 1 {
				e.Remove(1) // the rule goes while its fire and misses are in flight
				return errors.New("disk full")
			}
			committed = append(committed, ms...)
			return nil
		}})
		e.Load([]Item{{ID: 1, Timer: every(time.Second, t0), Watermark: Watermark{Slot: t0.Add(-time.Hour)}}})
		e.ReportMissed(Miss{RuleID: 2, Reason: MissInvalidSchedule, At: t0})
		stop := start(t, e)
		time.Sleep(time.Second)
		synctest.Wait()
		stop()
		if len(committed) != 1 || committed[0].RuleID != 2 {
			t.Errorf("committed after the removal: %+v, want rule 2's miss only", committed)
		}
	})
}

// At most maxReported misses wait for a commit; more are dropped, not held.
func TestReportMissedIsBounded(t *testing.T) {
	e, _ := newEngine(t, Config{})
	for range 3 {
		e.ReportMissed(make([]Miss, maxReported/2+1)...)
	}
	if n := len(e.reported); n != maxReported {
		t.Errorf("%d misses held, want %d", n, maxReported)
	}
	e.ReportMissed() // nothing: no wake-up owed
}

// A host may report a miss from LoadFrom's callback, which runs with the
// engine locked (a node reports a stored rule that does not parse as it loads).
func TestReportMissedFromLoadFrom(t *testing.T) {
	e, _ := newEngine(t, Config{})
	err := e.LoadFrom(1, func(add func(Item)) error {
		e.ReportMissed(Miss{RuleID: 3, Reason: MissInvalidSchedule})
		add(Item{ID: 4, Timer: every(time.Second, time.Now())})
		return nil
	})
	if err != nil || e.Len() != 1 || len(e.reported) != 1 {
		t.Errorf("LoadFrom reporting a miss: err %v, %d rules, %d reported; want nil, 1, 1", err, e.Len(), len(e.reported))
	}
}
