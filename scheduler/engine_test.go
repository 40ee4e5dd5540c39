package scheduler

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var errBoom = errors.New("boom")

// recorder is a CommitFunc that keeps what it committed and can fail.
type recorder struct {
	mu       sync.Mutex
	batches  [][]Fire    // batches with fires
	missed   []Miss      // the misses of every batch committed
	attempts []time.Time // time.Now of every call, failed or not
	fail     int         // fail this many calls from now
}

func (r *recorder) commit(fires []Fire, missed []Miss) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.attempts = append(r.attempts, time.Now())
	if r.fail > 0 {
		r.fail--
		return errBoom
	}
	if len(fires) > 0 {
		r.batches = append(r.batches, slices.Clone(fires))
	}
	r.missed = append(r.missed, missed...)
	return nil
}

func (r *recorder) misses() []Miss {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.missed)
}

func (r *recorder) fires() []Fire {
	r.mu.Lock()
	defer r.mu.Unlock()
	var all []Fire
	for _, b := range r.batches {
		all = append(all, b...)
	}
	return all
}

func (r *recorder) batchSizes() []int {
	r.mu.Lock()
	defer r.mu.Unlock()
	var n []int
	for _, b := range r.batches {
		n = append(n, len(b))
	}
	return n
}

func (r *recorder) of(id int64) []Fire {
	var out []Fire
	for _, f := range r.fires() {
		if f.RuleID == id {
			out = append(out, f)
		}
	}
	return out
}

func every(d time.Duration, anchor time.Time) *Timer {
	return &Timer{Kind: KindInterval, Interval: d, Anchor: anchor}
}

func at(t time.Time, grace time.Duration, p MisfirePolicy) *Timer {
	return &Timer{Kind: KindDatetime, FireAt: t, MisfireGrace: grace, Misfire: p}
}

func newEngine(t *testing.T, cfg Config) (*Engine, *recorder) {
	t.Helper()
	rec := &recorder{}
	if cfg.Commit == nil {
		cfg.Commit = rec.commit
	}
	e, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return e, rec
}

// start runs e until the returned stop is called.
func start(t *testing.T, e *Engine) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	return func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: got %v, want nil", err)
		}
	}
}

func slotsOf(fs []Fire) []time.Time {
	out := make([]time.Time, len(fs))
	for i, f := range fs {
		out[i] = f.Slot
	}
	return out
}

// checkInvariants verifies the heap order, the position index, the id index
// and the rule states, and that each heap key is the fire time of the rule's next slot.
func checkInvariants(t *testing.T, e *Engine) {
	t.Helper()
	e.mu.Lock()
	defer e.mu.Unlock()
	h := &e.heap
	if err := heapErr(h); err != nil {
		t.Fatal(err)
	}
	for i, en := range h.entries() {
		r := e.rules[en.idx]
		var buf Timer
		tm := r.timerInto(&buf)
		next, ok := tm.Next(e.wmSlot(en.idx))
		if r.state != queued || !ok || key(tm.FireTime(r.id, next)) != en.at {
			t.Fatalf("heap entry %d: rule state %d, Next(watermark) %v %v, entry at %d", i, r.state, next, ok, en.at)
		}
	}
	queuedN, indexed := 0, 0
	for _, v := range e.ids.slots {
		if v == 0 {
			continue
		}
		indexed++
		r := e.rules[v-1]
		if _, idx, ok := e.ids.find(e.rules, r.id); !ok || idx != v-1 || r.removed || r.timer == nil {
			t.Fatalf("index entry slab %d (id %d, removed %v): find gives %d %v", v-1, r.id, r.removed, idx, ok)
		}
		if r.state == queued {
			queuedN++
		}
	}
	if indexed != e.ids.n {
		t.Fatalf("index holds %d entries, counts %d", indexed, e.ids.n)
	}
	if queuedN != h.len() {
		t.Fatalf("%d queued rules, %d heap entries", queuedN, h.len())
	}
}

func TestConfigValidate(t *testing.T) {
	ok := func([]Fire, []Miss) error { return nil }
	tests := []struct {
		name string
		cfg  Config
		want string // substring of the error; "" for none
	}{
		{"defaults", Config{Commit: ok}, ""},
		{"unlimited grace", Config{Commit: ok, DefaultMisfireGrace: UnlimitedGrace}, ""},
		{"no commit", Config{}, "Commit"},
		{"negative grace", Config{Commit: ok, DefaultMisfireGrace: -2}, "DefaultMisfireGrace"},
		{"negative catch-up", Config{Commit: ok, MaxCatchUp: -1}, "MaxCatchUp"},
		{"huge catch-up", Config{Commit: ok, MaxCatchUp: 1 << 30}, "MaxCatchUp"},
		{"negative batch", Config{Commit: ok, MaxBatch: -1}, "MaxBatch"},
		{"negative retry min", Config{Commit: ok, RetryMin: -1}, "RetryMin"},
		{"negative retry max", Config{Commit: ok, RetryMax: -1}, "RetryMax"},
		{"min above max", Config{Commit: ok, RetryMin: time.Minute}, "RetryMin"},
		{"no coalescing", Config{Commit: ok, Coalesce: NoCoalesce}, ""},
		{"coalesce too long", Config{Commit: ok, Coalesce: 2 * time.Second}, "Coalesce"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("Validate(%+v) = %v, want nil", tc.cfg, err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("Validate(%+v) = %v, want an error naming %s", tc.cfg, err, tc.want)
			}
			if _, nerr := New(tc.cfg); (nerr == nil) != (err == nil) {
				t.Fatalf("New(%+v) = %v, Validate = %v", tc.cfg, nerr, err)
			}
		})
	}
}

func TestRunTwice(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e, _ := newEngine(t, Config{})
		stop := start(t, e)
		synctest.Wait()
		if err := e.Run(context.Background()); err == nil {
			t.Errorf("second Run: got nil, want an error")
		}
		stop()
	})
}

func TestFiresInSlotOrder(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		t0 := time.Now()
		e, rec := newEngine(t, Config{})
		ivals := map[int64]time.Duration{1: time.Second, 2: 1500 * time.Millisecond, 3: 2500 * time.Millisecond}
		for id, d := range ivals {
			e.Upsert(id, every(d, t0), Watermark{Slot: t0})
		}
		if next, ok := e.NextFire(); !ok || !next.Equal(t0.Add(time.Second)) {
			t.Fatalf("NextFire = %v, %v; want %v", next, ok, t0.Add(time.Second))
		}
		stop := start(t, e)
		time.Sleep(5 * time.Second)
		synctest.Wait()
		stop()

		all := rec.fires()
		if !slices.IsSortedFunc(all, bySlot) {
			t.Errorf("fires not in slot order: %v", slotsOf(all))
		}
		for id, d := range ivals {
			fs := rec.of(id)
			want := int(5 * time.Second / d)
			if len(fs) != want {
				t.Fatalf("rule %d (every %v): %d fires, want %d", id, d, len(fs), want)
			}
			for i, f := range fs {
				slot := t0.Add(time.Duration(i+1) * d)
				if !f.Slot.Equal(slot) || !f.FiredAt.Equal(slot) || f.Count != uint64(i+1) ||
					!f.Next.Equal(slot.Add(d)) || f.CatchUp || f.Timer == nil {
					t.Errorf("rule %d fire %d = %+v; want slot=fired_at=%v count %d next %v", id, i, f, slot, i+1, slot.Add(d))
				}
			}
			wm, _ := e.Watermark(id)
			if last := fs[len(fs)-1]; !wm.Slot.Equal(last.Slot) || wm.Count != last.Count {
				t.Errorf("Watermark(%d) = %+v, want {%v %d}", id, wm, last.Slot, last.Count)
			}
		}
	})
}

func TestGroupCommit(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		t0 := time.Now()
		e, rec := newEngine(t, Config{})
		tm := every(time.Minute, t0)
		for id := range int64(1000) {
			e.Upsert(id, tm, Watermark{Slot: t0})
		}
		stop := start(t, e)
		defer stop()
		time.Sleep(time.Minute)
		synctest.Wait()
		if got := rec.batchSizes(); !slices.Equal(got, []int{1000}) {
			t.Fatalf("after 1m: batch sizes %v, want [1000] (one commit)", got)
		}
		time.Sleep(time.Minute)
		synctest.Wait()
		if got := rec.batchSizes(); !slices.Equal(got, []int{1000, 1000}) {
			t.Fatalf("after 2m: batch sizes %v, want [1000 1000]", got)
		}
	})
}

func TestMaxBatch(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		t0 := time.Now()
		e, rec := newEngine(t, Config{MaxBatch: 100})
		tm := every(time.Minute, t0)
		for id := range int64(250) {
			e.Upsert(id, tm, Watermark{Slot: t0})
		}
		stop := start(t, e)
		defer stop()
		time.Sleep(time.Minute)
		synctest.Wait()
		if got := rec.batchSizes(); !slices.Equal(got, []int{100, 100, 50}) {
			t.Fatalf("batch sizes %v, want [100 100 50]", got)
		}
		seen := map[int64]bool{}
		for _, f := range rec.fires() {
			if seen[f.RuleID] || !f.FiredAt.Equal(t0.Add(time.Minute)) {
				t.Fatalf("fire %+v: duplicate or late", f)
			}
			seen[f.RuleID] = true
		}
	})
}

func TestCommitErrorRetried(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		t0 := time.Now()
		e, rec := newEngine(t, Config{RetryMin: 100 * time.Millisecond, RetryMax: 400 * time.Millisecond})
		rec.fail = 4
		e.Upsert(1, every(10*time.Second, t0), Watermark{Slot: t0})
		stop := start(t, e)
		defer stop()

		time.Sleep(10*time.Second + 500*time.Millisecond)
		synctest.Wait()
		if wm, _ := e.Watermark(1); !wm.Slot.Equal(t0) || wm.Count != 0 {
			t.Fatalf("Watermark during failures = %+v, want {%v 0}", wm, t0)
		}
		time.Sleep(15 * time.Second) // to t0+25.5s
		synctest.Wait()

		rec.mu.Lock()
		var got []time.Duration
		for _, a := range rec.attempts {
			got = append(got, a.Sub(t0))
		}
		rec.mu.Unlock()
		want := []time.Duration{10 * time.Second, 10100 * time.Millisecond, 10300 * time.Millisecond,
			10700 * time.Millisecond, 11100 * time.Millisecond, 20 * time.Second}
		if !slices.Equal(got, want) {
			t.Errorf("commit attempts at %v, want %v (backoff 100ms doubling to 400ms)", got, want)
		}
		fs := rec.fires()
		wantSlots := []time.Time{t0.Add(10 * time.Second), t0.Add(20 * time.Second)}
		if !slices.EqualFunc(slotsOf(fs), wantSlots, time.Time.Equal) {
			t.Fatalf("committed slots %v, want %v", slotsOf(fs), wantSlots)
		}
		if fs[0].Count != 1 || fs[1].Count != 2 || !fs[0].FiredAt.Equal(t0.Add(11100*time.Millisecond)) {
			t.Errorf("fires %+v: want counts 1,2 and the first fired at the successful attempt", fs)
		}
		if wm, _ := e.Watermark(1); !wm.Slot.Equal(wantSlots[1]) || wm.Count != 2 {
			t.Errorf("Watermark after success = %+v, want {%v 2}", wm, wantSlots[1])
		}
	})
}

func TestRemoveDuringFailingCommitDropsItsFires(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		t0 := time.Now()
		e, rec := newEngine(t, Config{RetryMin: time.Second, RetryMax: time.Second})
		rec.fail = 1
		tm := every(10*time.Second, t0)
		e.Upsert(1, tm, Watermark{Slot: t0})
		e.Upsert(2, tm, Watermark{Slot: t0})
		stop := start(t, e)
		defer stop()
		time.Sleep(10*time.Second + 500*time.Millisecond) // first attempt failed, retry at 11s
		e.Remove(2)
		if n := e.Len(); n != 1 {
			t.Errorf("Len after Remove = %d, want 1", n)
		}
		time.Sleep(25 * time.Second)
		synctest.Wait()
		if f2 := rec.of(2); len(f2) != 0 {
			t.Errorf("removed rule 2 fired %v", slotsOf(f2))
		}
		if f1 := rec.of(1); len(f1) != 3 {
			t.Errorf("rule 1 fired %v, want 3 slots", slotsOf(f1))
		}
		checkInvariants(t, e)
	})
}

func TestUpsert(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		t0 := time.Now()
		e, rec := newEngine(t, Config{})
		tm := every(10*time.Second, t0)
		e.Upsert(1, tm, Watermark{Slot: t0})
		stop := start(t, e)
		defer stop()
		time.Sleep(25 * time.Second)
		synctest.Wait()

		// Same timer again (a repeated "enable"): nothing changes.
		e.Upsert(1, tm, Watermark{Slot: t0})
		if wm, _ := e.Watermark(1); !wm.Slot.Equal(t0.Add(20*time.Second)) || wm.Count != 2 {
			t.Fatalf("Watermark after same-timer Upsert = %+v, want {t0+20s 2}", wm)
		}
		time.Sleep(10 * time.Second) // t0+35s
		synctest.Wait()
		if fs := rec.of(1); len(fs) != 3 || fs[2].Count != 3 || !fs[2].Slot.Equal(t0.Add(30*time.Second)) {
			t.Fatalf("fires after same-timer Upsert %+v, want a third at t0+30s with count 3", fs)
		}

		// A different interval: continues after the watermark, count kept.
		e.Upsert(1, every(3*time.Second, t0), Watermark{Slot: t0})
		if next, _ := e.NextFire(); !next.Equal(t0.Add(33 * time.Second)) {
			t.Fatalf("NextFire after changing to 3s = %v, want t0+33s", next.Sub(t0))
		}
		time.Sleep(5 * time.Second) // t0+40s: 3s slots 33, 36, 39
		synctest.Wait()
		fs := rec.of(1)
		var got []time.Duration
		for _, f := range fs {
			got = append(got, f.Slot.Sub(t0))
		}
		want := []time.Duration{10 * time.Second, 20 * time.Second, 30 * time.Second, 33 * time.Second, 36 * time.Second, 39 * time.Second}
		if !slices.Equal(got, want) {
			t.Fatalf("slots %v, want %v", got, want)
		}
		if c := fs[len(fs)-1].Count; c != 6 {
			t.Errorf("count after change = %d, want 6", c)
		}

		// A newer watermark with a changed timer moves the schedule forward.
		e.Upsert(1, every(time.Second, t0), Watermark{Slot: t0.Add(time.Hour), Count: 100})
		if wm, _ := e.Watermark(1); !wm.Slot.Equal(t0.Add(time.Hour)) || wm.Count != 100 {
			t.Errorf("Watermark after Upsert with a later wm = %+v, want {t0+1h 100}", wm)
		}
		checkInvariants(t, e)
	})
}

func TestUpsertWakesEngine(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		t0 := time.Now()
		e, rec := newEngine(t, Config{})
		e.Upsert(1, every(time.Hour, t0), Watermark{Slot: t0})
		stop := start(t, e)
		defer stop()
		time.Sleep(time.Second)
		e.Upsert(2, every(5*time.Second, t0), Watermark{Slot: t0.Add(time.Second)})
		time.Sleep(5 * time.Second)
		synctest.Wait()
		if fs := rec.of(2); len(fs) != 1 || !fs[0].FiredAt.Equal(t0.Add(5*time.Second)) {
			t.Fatalf("rule 2 fires %+v, want one at t0+5s", fs)
		}
	})
}

func TestRemoveStopsFires(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		t0 := time.Now()
		e, rec := newEngine(t, Config{})
		e.Upsert(1, every(time.Second, t0), Watermark{Slot: t0})
		e.Upsert(2, every(time.Second, t0), Watermark{Slot: t0})
		stop := start(t, e)
		defer stop()
		time.Sleep(3*time.Second + time.Millisecond)
		e.Remove(1)
		e.Remove(99) // unknown: no-op
		time.Sleep(5 * time.Second)
		synctest.Wait()
		if n := len(rec.of(1)); n != 3 {
			t.Errorf("removed rule fired %d times, want 3 (before Remove)", n)
		}
		if n := len(rec.of(2)); n != 8 {
			t.Errorf("kept rule fired %d times, want 8", n)
		}
		if _, ok := e.Watermark(1); ok || e.Len() != 1 {
			t.Errorf("after Remove: Watermark known %v, Len %d; want false, 1", ok, e.Len())
		}
		checkInvariants(t, e)
	})
}

func TestDatetimeFiresOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		t0 := time.Now()
		e, rec := newEngine(t, Config{})
		tm := at(t0.Add(5*time.Second), UnlimitedGrace, "")
		e.Upsert(1, tm, Watermark{Slot: t0})
		stop := start(t, e)
		defer stop()
		time.Sleep(10 * time.Second)
		synctest.Wait()
		e.Upsert(1, tm, Watermark{Slot: t0}) // repeated enable
		time.Sleep(time.Hour)
		synctest.Wait()
		fs := rec.of(1)
		if len(fs) != 1 || !fs[0].Slot.Equal(t0.Add(5*time.Second)) || fs[0].Count != 1 || !fs[0].Next.IsZero() {
			t.Fatalf("datetime fires %+v, want exactly one at t0+5s, count 1, no next", fs)
		}
		if _, ok := e.NextFire(); ok {
			t.Errorf("NextFire after the datetime fired: ok, want none")
		}
		if e.Len() != 1 {
			t.Errorf("Len = %d, want 1: a fired datetime stays known", e.Len())
		}
		checkInvariants(t, e)
	})
}

func TestMisfireInEngine(t *testing.T) {
	const week = 7 * 24 * time.Hour
	tests := []struct {
		name       string
		timer      func(t0 time.Time) *Timer
		wm         func(t0 time.Time) time.Time
		maxCatchUp int
		fires      int
		catchUps   int
		first      time.Duration // slot of the first fire, relative to t0
	}{
		{"fire_once week 1s", func(t0 time.Time) *Timer { return every(time.Second, t0.Add(-week)) },
			func(t0 time.Time) time.Time { return t0.Add(-week) }, 0, 62, 1, -61 * time.Second},
		{"fire_all week 1s", func(t0 time.Time) *Timer {
			tm := every(time.Second, t0.Add(-week))
			tm.Misfire = FireAll
			return tm
		}, func(t0 time.Time) time.Time { return t0.Add(-week) }, 0, 161, 100, -160 * time.Second},
		{"fire_all cap 10", func(t0 time.Time) *Timer {
			tm := every(time.Second, t0.Add(-week))
			tm.Misfire = FireAll
			return tm
		}, func(t0 time.Time) time.Time { return t0.Add(-week) }, 10, 71, 10, -70 * time.Second},
		{"skip week 1s", func(t0 time.Time) *Timer {
			tm := every(time.Second, t0.Add(-week))
			tm.Misfire = Skip
			return tm
		}, func(t0 time.Time) time.Time { return t0.Add(-week) }, 0, 61, 0, -60 * time.Second},
		{"datetime unlimited grace", func(t0 time.Time) *Timer { return at(t0.Add(-3*time.Hour), UnlimitedGrace, "") },
			func(t0 time.Time) time.Time { return t0.Add(-4 * time.Hour) }, 0, 1, 0, -3 * time.Hour},
		{"datetime fire_once late", func(t0 time.Time) *Timer { return at(t0.Add(-3*time.Hour), 0, "") },
			func(t0 time.Time) time.Time { return t0.Add(-4 * time.Hour) }, 0, 1, 1, -3 * time.Hour},
		{"datetime skip late", func(t0 time.Time) *Timer { return at(t0.Add(-time.Hour), time.Minute, Skip) },
			func(t0 time.Time) time.Time { return t0.Add(-2 * time.Hour) }, 0, 0, 0, 0},
		{"datetime skip within grace", func(t0 time.Time) *Timer { return at(t0.Add(-30*time.Second), time.Minute, Skip) },
			func(t0 time.Time) time.Time { return t0.Add(-2 * time.Hour) }, 0, 1, 0, -30 * time.Second},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				t0 := time.Now()
				e, rec := newEngine(t, Config{MaxCatchUp: tc.maxCatchUp})
				tm := tc.timer(t0)
				e.Load([]Item{{ID: 7, Timer: tm, Watermark: Watermark{Slot: tc.wm(t0), Count: 5}}})
				stop := start(t, e)
				synctest.Wait()
				stop()

				fs := rec.of(7)
				catchUps := 0
				for i, f := range fs {
					if f.CatchUp {
						catchUps++
					}
					if f.Count != uint64(5+i+1) || !f.FiredAt.Equal(t0) {
						t.Errorf("fire %d = %+v: want count %d, fired at t0", i, f, 5+i+1)
					}
				}
				if len(fs) != tc.fires || catchUps != tc.catchUps {
					t.Fatalf("%d fires (%d catch-up), want %d (%d)", len(fs), catchUps, tc.fires, tc.catchUps)
				}
				if len(fs) > 0 && !fs[0].Slot.Equal(t0.Add(tc.first)) {
					t.Errorf("first slot t0%v, want t0%v", fs[0].Slot.Sub(t0), tc.first)
				}
				for i := 1; i < len(fs); i++ {
					if !fs[i].Slot.After(fs[i-1].Slot) || (fs[i-1].CatchUp && !fs[i-1].Next.Equal(fs[i].Slot)) {
						t.Fatalf("fires %d,%d out of order: %v %v", i-1, i, fs[i-1].Slot, fs[i].Slot)
					}
				}
				e.mu.Lock()
				calls := e.calls
				e.mu.Unlock()
				capN := tc.maxCatchUp
				if capN == 0 {
					capN = DefaultMaxCatchUp
				}
				if limit := uint64(tc.fires + capN + 10); calls > limit {
					t.Errorf("%d Next/Last calls for %d fires, want at most %d (never O(gap))", calls, tc.fires, limit)
				}
				// Every slot up to now is decided, fired or not.
				wm, _ := e.Watermark(7)
				if tm.Kind == KindInterval && !wm.Slot.Equal(t0) {
					t.Errorf("Watermark slot t0%v, want t0", wm.Slot.Sub(t0))
				}
				if wm.Count != uint64(5+len(fs)) {
					t.Errorf("Watermark count %d, want %d", wm.Count, 5+len(fs))
				}
			})
		})
	}
}

func TestLoad100k(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		t0 := time.Now()
		e, rec := newEngine(t, Config{Coalesce: NoCoalesce}) // every slot exactly on time
		const n = 100_000
		timers := make([]*Timer, 1000)
		for j := range timers {
			timers[j] = every(time.Minute, t0.Add(-time.Minute+time.Duration(j+1)*time.Millisecond))
		}
		items := make([]Item, n)
		for i := range items {
			items[i] = Item{ID: int64(i), Timer: timers[(i*7)%1000], Watermark: Watermark{Slot: t0}}
		}
		e.Load(items)
		if e.Len() != n {
			t.Fatalf("Len after Load = %d, want %d", e.Len(), n)
		}
		if next, _ := e.NextFire(); !next.Equal(t0.Add(time.Millisecond)) {
			t.Fatalf("NextFire = t0+%v, want t0+1ms", next.Sub(t0))
		}
		checkInvariants(t, e)
		stop := start(t, e)
		defer stop()
		time.Sleep(time.Second)
		synctest.Wait()
		fs := rec.fires()
		if len(fs) != n {
			t.Fatalf("%d fires in the first second, want %d", len(fs), n)
		}
		if !slices.IsSortedFunc(fs, bySlot) {
			t.Errorf("fires not in slot order")
		}
		for _, f := range fs {
			if !f.FiredAt.Equal(f.Slot) {
				t.Fatalf("fire %+v late", f)
			}
		}
		checkInvariants(t, e)
	})
}

// TestCoalesce: slots 1ms apart are taken in groups one Coalesce apart,
// none before its slot and none more than Coalesce late; a slot after a
// quiet spell fires on time.
func TestCoalesce(t *testing.T) {
	tests := []struct {
		name     string
		coalesce time.Duration
		want     time.Duration // effective window
	}{
		{"default", 0, DefaultCoalesce},
		{"5ms", 5 * time.Millisecond, 5 * time.Millisecond},
		{"off", NoCoalesce, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				t0 := time.Now()
				e, rec := newEngine(t, Config{Coalesce: tc.coalesce})
				const n = 100 // rule i fires at t0 + (i+1) ms, then every 10 s
				for i := range int64(n) {
					e.Upsert(i, every(10*time.Second, t0.Add(time.Duration(i+1)*time.Millisecond)), Watermark{Slot: t0})
				}
				e.Upsert(n, every(10*time.Second, t0.Add(5*time.Second)), Watermark{Slot: t0}) // alone at t0+5s
				stop := start(t, e)
				time.Sleep(6 * time.Second)
				synctest.Wait()
				stop()
				fs := rec.fires()
				if len(fs) != n+1 {
					t.Fatalf("%d fires, want %d", len(fs), n+1)
				}
				for _, f := range fs {
					late := f.FiredAt.Sub(f.Slot)
					if late < 0 || late > tc.want {
						t.Errorf("rule %d: slot t0+%v fired at t0+%v: %v late, want 0..%v", f.RuleID, f.Slot.Sub(t0), f.FiredAt.Sub(t0), late, tc.want)
					}
				}
				if last := fs[n]; last.RuleID != n || !last.FiredAt.Equal(last.Slot) {
					t.Errorf("lone slot after a quiet spell: %+v, want fired on time", last)
				}
				batches := len(rec.batchSizes())
				wantBatches := n + 1
				if tc.want > 0 {
					wantBatches = n/int(tc.want/time.Millisecond) + 1 + 1
				}
				if batches > wantBatches {
					t.Errorf("%d commits for %d fires 1ms apart, want at most %d", batches, n, wantBatches)
				}
			})
		})
	}
}

// TestCoalesceUpsertDoesNotDelay: a wake-up from an Upsert or Remove while a
// coalesced group waits does not push the group back: it is taken Coalesce
// after the wake that last fired.
func TestCoalesceUpsertDoesNotDelay(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		t0 := time.Now()
		e, rec := newEngine(t, Config{Coalesce: 10 * time.Millisecond})
		e.Upsert(1, every(time.Hour, t0.Add(time.Second)), Watermark{Slot: t0})
		e.Upsert(2, every(time.Hour, t0.Add(time.Second+time.Millisecond)), Watermark{Slot: t0})
		stop := start(t, e)
		defer stop()
		time.Sleep(time.Second + 500*time.Microsecond)                                               // rule 1 fired at t0+1s; rule 2 waits for t0+1.01s
		e.Upsert(3, every(time.Hour, t0.Add(time.Second+900*time.Microsecond)), Watermark{Slot: t0}) // new root: a wake-up
		time.Sleep(200 * time.Microsecond)
		e.Remove(3) // root again rule 2: another wake-up
		time.Sleep(time.Second)
		synctest.Wait()
		fs := rec.of(2)
		if len(fs) != 1 || !fs[0].FiredAt.Equal(t0.Add(time.Second+10*time.Millisecond)) {
			t.Fatalf("rule 2 fires %+v, want one at t0+1.01s", fs)
		}
		if fs := rec.of(3); len(fs) != 0 {
			t.Errorf("removed rule 3 fired: %+v", fs)
		}
	})
}

// TestWatermarkRange: the engine keeps watermarks as Unix ns; the zero time
// and slots outside 1678–2262 must come back exact, and a slot before 1678
// (its heap key saturated) must still fire.
func TestWatermarkRange(t *testing.T) {
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	ancient := time.Date(1600, 1, 1, 0, 0, 0, 7, time.UTC)
	tests := []struct {
		name  string
		timer *Timer
		wm    time.Time
		fires []time.Time
	}{
		{"zero", every(time.Hour, now.Add(time.Minute)), time.Time{}, []time.Time{now.Add(time.Minute - time.Hour)}},
		{"year 1600, datetime in 1650", at(time.Date(1650, 6, 1, 0, 0, 0, 0, time.UTC), UnlimitedGrace, FireOnce), ancient,
			[]time.Time{time.Date(1650, 6, 1, 0, 0, 0, 0, time.UTC)}},
		{"year 2300", every(time.Hour, now), time.Date(2300, 1, 1, 0, 0, 0, 0, time.UTC), nil},
		{"in range, off UTC", every(time.Hour, now.Add(time.Minute)), now.Add(-time.Hour).In(time.FixedZone("x", 3600)), []time.Time{now.Add(time.Minute - time.Hour)}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e, rec := newEngine(t, Config{Now: func() time.Time { return now }})
			e.Upsert(1, tc.timer, Watermark{Slot: tc.wm, Count: 3})
			e.Upsert(2, every(time.Hour, now), Watermark{Slot: ancient}) // a second far watermark, released below
			if wm, ok := e.Watermark(1); !ok || !wm.Slot.Equal(tc.wm) || wm.Slot.IsZero() != tc.wm.IsZero() || wm.Count != 3 {
				t.Fatalf("Watermark after Upsert(wm %v) = %+v, %v", tc.wm, wm, ok)
			}
			e.Remove(2)
			checkInvariants(t, e)
			e.prepare()
			if len(e.flights) > 0 {
				tm := time.NewTimer(time.Hour)
				defer tm.Stop()
				e.commit(context.Background(), tm)
			}
			fs := rec.of(1)
			if !slices.EqualFunc(slotsOf(fs), tc.fires, time.Time.Equal) {
				t.Fatalf("fired %v, want %v", slotsOf(fs), tc.fires)
			}
			if len(fs) > 0 {
				if wm, _ := e.Watermark(1); !wm.Slot.Equal(fs[len(fs)-1].Slot) || wm.Count != 4 {
					t.Errorf("Watermark after the fire = %+v, want {%v 4}", wm, fs[len(fs)-1].Slot)
				}
			}
			checkInvariants(t, e)
			e.mu.Lock()
			if fw := len(e.far); fw > 1 {
				t.Errorf("%d far watermarks kept, want at most rule 1's", fw)
			}
			e.mu.Unlock()
		})
	}
}

func TestLoadIntoLoadedEngine(t *testing.T) {
	for _, n := range []int{3, 5000} { // pushed one by one, and heapified
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			t0 := time.Unix(1_700_000_000, 0)
			e, _ := newEngine(t, Config{Now: func() time.Time { return t0 }})
			for id := range int64(1000) {
				e.Upsert(id, every(time.Duration(id+10)*time.Second, t0), Watermark{Slot: t0})
			}
			var items []Item
			for i := range n {
				id := int64(500 + i) // half of the first ones exist already
				items = append(items, Item{ID: id, Timer: every(time.Duration(i%97+1)*time.Second, t0), Watermark: Watermark{Slot: t0}})
			}
			items = append(items, Item{ID: 1, Timer: at(t0.Add(-time.Hour), 0, "")}) // no next slot
			e.Load(items)
			checkInvariants(t, e)
			if want := max(1000, 500+n); e.Len() != want {
				t.Errorf("Len = %d, want %d", e.Len(), want)
			}
			if next, _ := e.NextFire(); !next.Equal(t0.Add(time.Second)) {
				t.Errorf("NextFire = t0+%v, want t0+1s", next.Sub(t0))
			}
		})
	}
}

// TestConcurrentUpsertRemove runs in real time: the point is -race.
func TestConcurrentUpsertRemove(t *testing.T) {
	rec := &recorder{}
	seen := map[[2]int64]bool{}
	var dup error
	commit := func(fs []Fire, _ []Miss) error {
		for _, f := range fs {
			k := [2]int64{f.RuleID, f.Slot.UnixNano()}
			if seen[k] && dup == nil {
				dup = fmt.Errorf("rule %d slot %v fired twice", f.RuleID, f.Slot)
			}
			seen[k] = true
		}
		return rec.commit(fs, nil)
	}
	e, _ := newEngine(t, Config{Commit: commit, MaxBatch: 50})
	stop := start(t, e)
	base := time.Now()
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(g), 1))
			deadline := time.Now().Add(200 * time.Millisecond)
			for time.Now().Before(deadline) {
				id := rng.Int64N(200)
				switch rng.IntN(5) {
				case 0:
					e.Remove(id)
				case 1:
					e.Load([]Item{{ID: id, Timer: every(time.Duration(1+rng.IntN(3))*time.Millisecond, base), Watermark: Watermark{Slot: time.Now()}}})
				default:
					e.Upsert(id, every(time.Duration(1+rng.IntN(3))*time.Millisecond, base), Watermark{Slot: time.Now()})
				}
				e.NextFire()
				e.Watermark(id)
				time.Sleep(50 * time.Microsecond) // pacing, not waiting for a condition
			}
		})
	}
	wg.Wait()
	stop()
	if dup != nil {
		t.Error(dup)
	}
	if len(rec.fires()) == 0 {
		t.Error("no fires at all during the run")
	}
	checkInvariants(t, e)
}

func TestUpsertNilTimerIgnored(t *testing.T) {
	e, _ := newEngine(t, Config{})
	e.Upsert(1, nil, Watermark{})
	e.Load([]Item{{ID: 2}})
	if e.Len() != 0 {
		t.Errorf("Len after nil timers = %d, want 0", e.Len())
	}
}

func TestLongCatchUpSplitAcrossBatches(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		t0 := time.Now()
		e, rec := newEngine(t, Config{MaxBatch: 1000, DefaultMisfireGrace: UnlimitedGrace})
		e.Upsert(1, every(time.Second, t0.Add(-time.Hour)), Watermark{Slot: t0.Add(-time.Hour)})
		e.Upsert(2, every(time.Hour, t0.Add(-time.Hour)), Watermark{Slot: t0.Add(-time.Minute)})
		stop := start(t, e)
		synctest.Wait()
		stop()
		if got := rec.batchSizes(); len(got) != 4 || got[0] != 1000 || got[3] != 601 {
			t.Fatalf("batch sizes %v, want 1000,1000,1000,601", got)
		}
		fs := rec.of(1)
		for i, f := range fs {
			if want := t0.Add(-time.Hour + time.Duration(i+1)*time.Second); !f.Slot.Equal(want) || f.Count != uint64(i+1) || f.CatchUp {
				t.Fatalf("fire %d = %+v, want slot t0%v count %d", i, f, want.Sub(t0), i+1)
			}
		}
		if len(fs) != 3600 || len(rec.of(2)) != 1 {
			t.Fatalf("rule 1 fired %d, rule 2 %d; want 3600 and 1", len(fs), len(rec.of(2)))
		}
	})
}
