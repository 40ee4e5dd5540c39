package scheduler

import (
	"slices"
	"testing"
	"testing/synctest"
	"time"
)

// slowCommit is a recorder whose commits take d (an fsync, say), so that
// slots come due while a commit runs.
func slowCommit(rec *recorder, d time.Duration) CommitFunc {
	return func(fires []Fire, missed []Miss) error {
		err := rec.commit(fires, missed)
		time.Sleep(d)
		return err
	}
}

// TestCommitsSpacedByCoalesce: under a dense stream of due slots and commits
// far shorter than Coalesce, batches start at least Coalesce apart (rather
// than back to back with the slots that came due during each commit), every
// slot is committed once, none before it is due and none more than Coalesce
// late.
func TestCommitsSpacedByCoalesce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const (
			rules    = 2000
			coalesce = 10 * time.Millisecond
			commitIn = time.Millisecond
		)
		t0 := time.Now()
		rec := &recorder{}
		e, _ := newEngine(t, Config{Coalesce: coalesce, Commit: slowCommit(rec, commitIn)})
		for i := range int64(rules) { // 2 slots due every ms, each rule once a second
			e.Upsert(i, every(time.Second, t0.Add(time.Duration(i%1000)*time.Millisecond)), Watermark{Slot: t0})
		}
		stop := start(t, e)
		time.Sleep(time.Second + 2*coalesce) // the slots up to t0+1s have fired by then
		synctest.Wait()
		stop()
		// Slots t0+1ms .. t0+1s: 2 a ms (the t0 ones are at the watermark).
		type slot struct {
			id int64
			at time.Time
		}
		seen := map[slot]bool{}
		for _, f := range rec.fires() {
			if f.Slot.After(t0.Add(time.Second)) {
				continue
			}
			k := slot{f.RuleID, f.Slot}
			if seen[k] {
				t.Errorf("rule %d slot t0+%v fired twice", f.RuleID, f.Slot.Sub(t0))
			}
			seen[k] = true
			if late := f.FiredAt.Sub(f.Slot); late < 0 || late > coalesce {
				t.Errorf("rule %d slot t0+%v fired at t0+%v: %v late, want 0..%v", f.RuleID, f.Slot.Sub(t0), f.FiredAt.Sub(t0), late, coalesce)
			}
		}
		if want := 2 * 1000; len(seen) != want {
			t.Errorf("%d slots of t0+1ms..t0+1s fired, want %d", len(seen), want)
		}
		starts := rec.attempts
		for i := 1; i < len(starts); i++ {
			if gap := starts[i].Sub(starts[i-1]); gap < coalesce {
				t.Errorf("commit %d started %v after the one before, want at least %v", i, gap, coalesce)
			}
		}
		n := 0
		for _, s := range starts {
			if !s.After(t0.Add(time.Second)) {
				n++
			}
		}
		if most := int(time.Second/coalesce) + 1; n > most {
			t.Errorf("%d commits in 1s, want at most %d", n, most)
		}
		t.Logf("%d commits in 1s, %d fires each on average", n, len(seen)/max(1, n))
	})
}

// TestCatchUpCutByMaxBatchNotSpaced: batches cut by MaxBatch follow one
// another at once; only the batch after the last one waits for Coalesce.
func TestCatchUpCutByMaxBatchNotSpaced(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const (
			coalesce = 10 * time.Millisecond
			commitIn = time.Millisecond
		)
		t0 := time.Now()
		rec := &recorder{}
		e, _ := newEngine(t, Config{Coalesce: coalesce, MaxBatch: 100, Commit: slowCommit(rec, commitIn)})
		for i := range int64(950) { // all due at t0+1s: 9 full batches and 50
			e.Upsert(i, every(time.Hour, t0.Add(time.Second)), Watermark{Slot: t0})
		}
		e.Upsert(1000, every(time.Hour, t0.Add(time.Second+time.Millisecond)), Watermark{Slot: t0})     // due during the catch-up
		e.Upsert(1001, every(time.Hour, t0.Add(time.Second+9*time.Millisecond+1)), Watermark{Slot: t0}) // due after its last batch was taken
		stop := start(t, e)
		time.Sleep(2 * time.Second)
		synctest.Wait()
		stop()
		if sizes, want := rec.batchSizes(), []int{100, 100, 100, 100, 100, 100, 100, 100, 100, 51, 1}; !slices.Equal(sizes, want) {
			t.Fatalf("batch sizes %v, want %v", sizes, want)
		}
		for i, s := range rec.attempts[:10] {
			if want := t0.Add(time.Second + time.Duration(i)*commitIn); !s.Equal(want) {
				t.Errorf("batch %d started at t0+%v, want t0+%v (at once after the full one before)", i, s.Sub(t0), want.Sub(t0))
			}
		}
		// The last batch of the catch-up was not full: the slot due after
		// it was taken waits for Coalesce after it.
		if s, want := rec.attempts[10], t0.Add(time.Second+9*commitIn+coalesce); !s.Equal(want) {
			t.Errorf("batch after the catch-up started at t0+%v, want t0+%v", s.Sub(t0), want.Sub(t0))
		}
	})
}
