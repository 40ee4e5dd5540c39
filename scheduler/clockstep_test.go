package scheduler

import (
	"context"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

// steppedClock is a wall clock that can be stepped (NTP, a resumed VM)
// while the bubble's monotonic time, which the engine's timer runs on,
// goes on undisturbed.
type steppedClock struct {
	offset atomic.Int64 // ns added to time.Now
	calls  atomic.Int64 // Now calls: one per wake-up of the engine loop
}

func (c *steppedClock) Now() time.Time {
	c.calls.Add(1)
	return time.Now().Add(time.Duration(c.offset.Load()))
}

func (c *steppedClock) step(d time.Duration) { c.offset.Add(int64(d)) }

// checkSlots fails unless fs are one fire per slot, first, first+every, …,
// in order, with consecutive counts, none before its slot (by the clock
// that fired it) and none a catch-up.
func checkSlots(t *testing.T, fs []Fire, first time.Time, every time.Duration, n int) {
	t.Helper()
	if len(fs) != n {
		t.Fatalf("%d fires, want %d: %+v", len(fs), n, fs)
	}
	for i, f := range fs {
		want := first.Add(time.Duration(i) * every)
		if !f.Slot.Equal(want) || f.Count != fs[0].Count+uint64(i) || f.CatchUp {
			t.Errorf("fire %d: slot %v count %d catch-up %v; want slot %v count %d, no catch-up", i, f.Slot, f.Count, f.CatchUp, want, fs[0].Count+uint64(i))
		}
		if f.FiredAt.Before(f.Slot) {
			t.Errorf("fire %d: slot %v fired early, at %v", i, f.Slot, f.FiredAt)
		}
	}
}

// TestClockStepForward: a rule due in an hour by the old clock; the wall
// clock steps forward. A slot the step made due fires within maxSleep of
// the step; one it did not make due fires when due by the new clock, not
// before; no slot fires twice.
func TestClockStepForward(t *testing.T) {
	tests := []struct {
		name string
		step time.Duration
		// The first fire after the step, in real (monotonic) time from the
		// step, and how late by the new clock.
		wantAfterMin, wantAfterMax time.Duration
		wantLateMax                time.Duration
	}{
		// Stepped at t0+10s to t0+1h10s: the t0+1h slot is 10 s overdue.
		{"past the slot", time.Hour, 0, maxSleep, 10*time.Second + maxSleep},
		// Stepped at t0+10s to t0+59m10s: the slot is 50 s away.
		{"short of the slot", 59 * time.Minute, 50 * time.Second, 50 * time.Second, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				t0 := time.Now()
				var clock steppedClock
				e, rec := newEngine(t, Config{Now: clock.Now})
				e.Upsert(1, every(time.Hour, t0), Watermark{Slot: t0}) // next slot t0+1h
				stop := start(t, e)
				defer stop()

				time.Sleep(10 * time.Second)
				synctest.Wait()
				if fs := rec.fires(); len(fs) != 0 {
					t.Fatalf("fired before the step: %+v", fs)
				}
				clock.step(tc.step)
				stepped := time.Now()
				time.Sleep(tc.wantAfterMin - time.Nanosecond)
				synctest.Wait()
				if fs := rec.fires(); tc.wantAfterMin > 0 && len(fs) != 0 {
					t.Fatalf("step %v: fired %v after the step, want not before %v: %+v", tc.step, time.Since(stepped), tc.wantAfterMin, fs)
				}
				time.Sleep(tc.wantAfterMax - time.Since(stepped))
				synctest.Wait()
				fs := rec.fires()
				if len(fs) != 1 {
					t.Fatalf("step %v: %d fires %v after the step, want 1: %+v", tc.step, len(fs), time.Since(stepped), fs)
				}
				rec.mu.Lock()
				after := rec.attempts[0].Sub(stepped)
				rec.mu.Unlock()
				if late := fs[0].FiredAt.Sub(fs[0].Slot); late < 0 || late > tc.wantLateMax {
					t.Errorf("step %v: slot %v fired at %v (by the new clock): %v late, want 0..%v", tc.step, fs[0].Slot, fs[0].FiredAt, late, tc.wantLateMax)
				}
				if after < tc.wantAfterMin || after > tc.wantAfterMax {
					t.Errorf("step %v: fired %v after the step, want %v..%v", tc.step, after, tc.wantAfterMin, tc.wantAfterMax)
				}

				// Two more hours by the new clock: each later slot once, on time.
				endNew := clock.Now().Add(2 * time.Hour)
				time.Sleep(2 * time.Hour)
				synctest.Wait()
				n := int(endNew.Sub(t0) / time.Hour)
				fs = rec.of(1)
				checkSlots(t, fs, t0.Add(time.Hour), time.Hour, n)
				for _, f := range fs[1:] {
					if !f.FiredAt.Equal(f.Slot) {
						t.Errorf("slot %v after the step fired at %v, want on time", f.Slot, f.FiredAt)
					}
				}
				checkInvariants(t, e)
			})
		})
	}
}

// TestClockStepBackward: the wall clock goes back 10 minutes. Nothing
// fires twice; the next slot fires when due by the new clock; a rule
// created after the step fires when due by the new clock, not once the
// new clock has caught up with the last fire.
func TestClockStepBackward(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		t0 := time.Now()
		var clock steppedClock
		e, rec := newEngine(t, Config{Now: clock.Now})
		e.Upsert(1, every(time.Minute, t0), Watermark{Slot: t0})
		stop := start(t, e)
		defer stop()

		time.Sleep(5*time.Minute + 30*time.Second)
		synctest.Wait()
		checkSlots(t, rec.of(1), t0.Add(time.Minute), time.Minute, 5)

		clock.step(-10 * time.Minute) // the clock reads t0-4m30s
		created := clock.Now()
		e.Upsert(2, at(created.Add(300*time.Millisecond), 0, ""), Watermark{Slot: created})
		time.Sleep(300 * time.Millisecond)
		synctest.Wait()
		if fs := rec.of(2); len(fs) != 1 || !fs[0].FiredAt.Equal(fs[0].Slot) {
			t.Errorf("rule created after the step, due 300ms later by the new clock: fires %+v, want one on time", fs)
		}

		// The new clock reaches t0+6m 10m30s after the step.
		time.Sleep(10*time.Minute + 29*time.Second + 700*time.Millisecond - time.Nanosecond)
		synctest.Wait()
		if fs := rec.of(1); len(fs) != 5 {
			t.Fatalf("before t0+6m by the new clock: %d fires of rule 1, want the 5 before the step: %+v", len(fs), fs[5:])
		}
		time.Sleep(time.Nanosecond)
		synctest.Wait()
		fs := rec.of(1)
		checkSlots(t, fs, t0.Add(time.Minute), time.Minute, 6)
		if f := fs[5]; !f.FiredAt.Equal(f.Slot) {
			t.Errorf("slot t0+6m fired at t0%+v by the new clock, want on time", f.FiredAt.Sub(t0))
		}
		time.Sleep(5 * time.Minute)
		synctest.Wait()
		checkSlots(t, rec.of(1), t0.Add(time.Minute), time.Minute, 11)
		checkInvariants(t, e)
	})
}

// TestSleepCapped: with only a slot an hour away, the engine still looks at
// the clock once every maxSleep, and no more often.
func TestSleepCapped(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		t0 := time.Now()
		var clock steppedClock
		e, rec := newEngine(t, Config{Now: clock.Now})
		e.Upsert(1, every(time.Hour, t0), Watermark{Slot: t0})
		stop := start(t, e)
		defer stop()
		synctest.Wait()
		before := clock.calls.Load()
		time.Sleep(10 * maxSleep)
		synctest.Wait()
		if got := clock.calls.Load() - before; got != 10 {
			t.Errorf("%d wake-ups in 10×maxSleep with nothing due, want 10", got)
		}
		if fs := rec.fires(); len(fs) != 0 {
			t.Errorf("fires with nothing due: %+v", fs)
		}
	})
}

// BenchmarkEngineWakeups runs the engine's loop on a simulated clock,
// sleeping what prepare asks for, and reports wake-ups (sleeps) per second
// of clock time. Dense is benchEngine's 10,000 rules every second (phases
// about 1 ms apart); sparse is one rule an hour. One op is span of clock.
func BenchmarkEngineWakeups(b *testing.B) {
	tests := []struct {
		name  string
		rules int
		span  time.Duration
	}{
		{"dense", 10_000, 10 * time.Second},
		{"sparse", 0, 2 * time.Hour},
	}
	for _, tc := range tests {
		b.Run(tc.name, func(b *testing.B) {
			clock := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
			e := benchEngine(b, tc.rules, &clock)
			if tc.rules == 0 {
				e.Upsert(1, every(time.Hour, clock.Add(time.Minute)), Watermark{Slot: clock})
			}
			tm := time.NewTimer(time.Hour)
			defer tm.Stop()
			ctx := context.Background()
			wakes, fires := 0, 0
			for b.Loop() {
				end := clock.Add(tc.span)
				for clock.Before(end) {
					wait, armed := e.prepare()
					if len(e.flights) > 0 {
						fires += len(e.fires)
						e.commit(ctx, tm)
						continue
					}
					if !armed || wait <= 0 {
						b.Fatalf("prepare: wait %v, armed %v with rules pending", wait, armed)
					}
					clock = clock.Add(wait)
					wakes++
				}
			}
			secs := (time.Duration(b.N) * tc.span).Seconds()
			b.ReportMetric(float64(wakes)/secs, "wakes/s")
			b.ReportMetric(float64(fires)/secs, "fires/s")
		})
	}
}
