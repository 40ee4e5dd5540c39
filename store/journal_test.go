package store

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	bolt "go.etcd.io/bbolt"
)

type modelRule struct {
	wm    Watermark
	hasWM bool
}

// TestWatermarkJournalModel drives random writes, folds (whole, and the slice steps of
// a cycle, some failing) and reopens (some in the middle of a cycle) against a model of
// what each rule's watermark must be, checking Rule and ForEachRule after every step.
func TestWatermarkJournalModel(t *testing.T) {
	for seed := uint64(1); seed <= 8; seed++ {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 99))
			s := openTest(t, Options{NoSync: true})
			s.foldAfter = 1 + rng.IntN(8)
			s.foldSlices = 1 + rng.IntN(4)
			model := map[int64]*modelRule{}
			const ids = 12
			slot := func() time.Time { return t0.Add(time.Duration(rng.IntN(50)) * time.Minute) }
			for step := range 300 {
				var op string
				switch n := rng.IntN(100); {
				case n < 45:
					op = "fires"
					var recs []FireRecord
					for range 1 + rng.IntN(5) {
						id := 1 + rng.Int64N(ids)
						sl := slot()
						recs = append(recs, testFire(id, sl, uint64(rng.IntN(1000))))
					}
					if err := s.CommitFires(recs); err != nil {
						t.Fatal(err)
					}
					for _, r := range recs {
						m := model[r.Event.RuleID]
						if m != nil && (!m.hasWM || !r.Watermark.Slot.Before(m.wm.Slot)) {
							m.wm, m.hasWM = r.Watermark, true
						}
					}
				case n < 65:
					op = "put"
					id := 1 + rng.Int64N(ids)
					var wm *Watermark
					if rng.IntN(2) == 0 {
						wm = &Watermark{Slot: slot(), Count: uint64(rng.IntN(1000))}
					}
					if err := s.PutRule(testRule(id), wm); err != nil {
						t.Fatal(err)
					}
					m := model[id]
					if m == nil {
						m = &modelRule{}
						model[id] = m
					}
					if wm != nil {
						m.wm, m.hasWM = *wm, true
					}
				case n < 80:
					op = "delete"
					id := 1 + rng.Int64N(ids)
					if err := s.DeleteRule(id); err != nil {
						t.Fatal(err)
					}
					delete(model, id)
				case n < 84:
					op = "fold"
					s.wmu.Lock()
					err := s.fold()
					s.wmu.Unlock()
					if err != nil {
						t.Fatal(err)
					}
				case n < 88:
					op = "fold step"
					fail := rng.IntN(3) == 0
					if fail {
						op = "failed fold step"
						s.foldFault = func(int) error { return errTestFault }
					}
					s.wmu.Lock()
					before := s.j.cycle.next
					err := s.foldStep()
					after := s.j.cycle.next
					s.wmu.Unlock()
					s.foldFault = nil
					if fail != (err != nil) || (fail && after != before) {
						t.Fatalf("step %d: %s: err %v, slice %d → %d", step, op, err, before, after)
					}
				default:
					op = "reopen"
					if s.j.cycle.next > 0 {
						op = "reopen mid-cycle"
					}
					s = reopen(t, s)
					s.foldAfter = 1 + rng.IntN(8)
					s.foldSlices = 1 + rng.IntN(4)
				}
				checkModel(t, s, model, fmt.Sprintf("step %d (%s)", step, op))
				if t.Failed() {
					return
				}
			}
		})
	}
}

func checkModel(t *testing.T, s *Store, model map[int64]*modelRule, where string) {
	t.Helper()
	want := func(id int64) Watermark {
		if m := model[id]; m != nil && m.hasWM {
			return m.wm
		}
		return Watermark{}
	}
	for id := int64(1); id <= 12; id++ {
		_, wm, ok, err := s.Rule(id)
		if err != nil {
			t.Fatalf("%s: Rule(%d): %v", where, id, err)
		}
		if ok != (model[id] != nil) || !wmEqual(wm, want(id)) {
			t.Errorf("%s: Rule(%d) = ok %v wm %+v; want ok %v wm %+v", where, id, ok, wm, model[id] != nil, want(id))
		}
	}
	seen := 0
	err := s.ForEachRule(func(r Rule, wm Watermark) error {
		seen++
		if model[r.ID] == nil || !wmEqual(wm, want(r.ID)) {
			t.Errorf("%s: ForEachRule rule %d wm %+v; want in model with wm %+v", where, r.ID, wm, want(r.ID))
		}
		return nil
	})
	if err != nil || seen != len(model) {
		t.Errorf("%s: ForEachRule saw %d rules (err %v), want %d", where, seen, err, len(model))
	}
}

// TestWatermarkReadsDuringFolds: readers racing commits and folds never see a
// watermark go back, and end at the writer's last value.
func TestWatermarkReadsDuringFolds(t *testing.T) {
	s := openTest(t, Options{NoSync: true})
	s.foldAfter = 7
	const rules, rounds = 5, 300
	rs := make([]Rule, rules)
	for i := range rs {
		rs[i] = testRule(int64(i + 1))
	}
	if err := s.PutRules(rs, nil); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	done := make(chan struct{})
	errs := make(chan error, 8)
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(done)
		for k := 1; k <= rounds; k++ {
			var recs []FireRecord
			for id := int64(1); id <= rules; id++ {
				recs = append(recs, testFire(id, t0.Add(time.Duration(k)*time.Second), uint64(k)))
			}
			if err := s.CommitFires(recs); err != nil {
				errs <- err
				return
			}
		}
	}()
	for reader := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			last := map[int64]uint64{}
			check := func(id int64, wm Watermark) error {
				if wm.Count < last[id] {
					return fmt.Errorf("reader %d: rule %d watermark went back from %d to %d", reader, id, last[id], wm.Count)
				}
				last[id] = wm.Count
				return nil
			}
			for {
				select {
				case <-done:
					return
				default:
				}
				var err error
				if reader == 0 {
					err = s.ForEachRule(func(r Rule, wm Watermark) error { return check(r.ID, wm) })
				} else {
					id := 1 + int64(reader)
					var wm Watermark
					if _, wm, _, err = s.Rule(id); err == nil {
						err = check(id, wm)
					}
				}
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for id := int64(1); id <= rules; id++ {
		if _, wm, _, _ := s.Rule(id); wm.Count != rounds {
			t.Errorf("Rule(%d) after %d rounds: count %d, want %d", id, rounds, wm.Count, rounds)
		}
	}
}

// A fold that fails (here: a corrupt journal entry, which reads of the journal report
// too) leaves the fires committed, is counted, and is tried again only after as many
// records more, not on every commit.
func TestFailedFoldIsCountedAndDeferred(t *testing.T) {
	s := openTest(t, Options{NoSync: true})
	s.foldAfter = 2
	if err := s.PutRules([]Rule{testRule(1)}, nil); err != nil {
		t.Fatal(err)
	}
	err := s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketJournal).Put(binary.BigEndian.AppendUint64(nil, 1<<62), []byte{0xff})
	})
	if err != nil {
		t.Fatal(err)
	}
	commits := []struct {
		slot       int
		wantErrors float64
	}{
		{1, 0}, {2, 1}, // 2 records: the fold fails
		{3, 1}, // 3 < 2 + 2: not tried again
		{4, 2}, // 4: tried again, fails again
	}
	for _, c := range commits {
		slot := t0.Add(time.Duration(c.slot) * time.Second)
		if err := s.CommitFires([]FireRecord{testFire(1, slot, uint64(c.slot))}); err != nil {
			t.Fatalf("CommitFires(slot %d) with a failing fold: %v, want the fire committed", c.slot, err)
		}
		if got := testutil.ToFloat64(s.foldErrors); got != c.wantErrors {
			t.Errorf("after slot %d: timerd_store_fold_errors_total = %v, want %v", c.slot, got, c.wantErrors)
		}
	}
	if n, _ := s.OutboxLen(); n != len(commits) {
		t.Errorf("OutboxLen = %d, want %d", n, len(commits))
	}
}

var errTestFault = errors.New("injected fold fault")

// TestFoldStepTouchesOnlyItsSlice: each step of a cycle writes the watermarks of its
// slice's rules and no other key, leaves the journal until the last step, and the
// last step empties the journal (nothing was committed meanwhile) and the index.
func TestFoldStepTouchesOnlyItsSlice(t *testing.T) {
	s := openTest(t, Options{NoSync: true})
	s.foldAfter = 1 << 30 // steps only when the test says
	s.foldSlices = 4
	const rules = 400
	rs := make([]Rule, rules)
	for i := range rs {
		rs[i] = testRule(int64(i + 1))
	}
	if err := s.PutRules(rs, nil); err != nil {
		t.Fatal(err)
	}
	var recs []FireRecord
	for id := int64(1); id <= rules; id++ {
		recs = append(recs, testFire(id, t0, 1))
	}
	if err := s.CommitFires(recs); err != nil { // journaled
		t.Fatal(err)
	}
	s.wmu.Lock()
	if err := s.fold(); err != nil { // every rule now has a watermark in the bucket
		t.Fatal(err)
	}
	s.wmu.Unlock()
	for k := uint64(2); k <= 3; k++ { // two journal keys, every rule in the index
		recs = recs[:0]
		for id := int64(1); id <= rules; id++ {
			recs = append(recs, testFire(id, t0.Add(time.Duration(k)*time.Minute), k))
		}
		if err := s.CommitFires(recs); err != nil {
			t.Fatal(err)
		}
	}
	dump := func() (wms map[int64]string, journal int) {
		wms = map[int64]string{}
		err := s.db.View(func(tx *bolt.Tx) error {
			err := tx.Bucket(bucketWatermarks).ForEach(func(k, v []byte) error {
				wms[int64(binary.BigEndian.Uint64(k))] = string(bytes.Clone(v))
				return nil
			})
			journal = tx.Bucket(bucketJournal).Stats().KeyN
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		return wms, journal
	}
	prev, journal := dump()
	if journal != 2 {
		t.Fatalf("journal keys before the cycle = %d, want 2", journal)
	}
	folded := map[int64]bool{}
	for step := 0; ; step++ {
		s.wmu.Lock()
		err := s.foldStep()
		cy, idx := s.j.cycle, len(s.j.idx)
		s.wmu.Unlock()
		if err != nil {
			t.Fatal(err)
		}
		cur, journal := dump()
		var changed []int64
		for id, v := range cur {
			if prev[id] != v {
				changed = append(changed, id)
				folded[id] = true
			}
		}
		slices.Sort(changed)
		if len(changed) == 0 || len(changed) > rules/2 {
			t.Errorf("step %d changed %d watermarks, want a slice of the %d", step, len(changed), rules)
		}
		if cy.next > 0 { // under way: changed ids are one contiguous range
			if step+1 != cy.next || len(cy.cuts) != 3 {
				t.Fatalf("after step %d: cycle at slice %d of %d", step, cy.next, len(cy.cuts)+1)
			}
			for _, id := range changed {
				if !cy.inSlice(step, uint64(id)) {
					t.Errorf("step %d changed rule %d outside its slice (cuts %v)", step, id, cy.cuts)
				}
			}
			if journal != 2 || idx != rules {
				t.Errorf("after step %d: journal keys %d, index %d; want 2, %d (untouched)", step, journal, idx, rules)
			}
		} else {
			if step != 3 || journal != 0 || idx != 0 {
				t.Errorf("cycle ended after step %d with journal keys %d, index %d; want step 3, 0, 0", step, journal, idx)
			}
			break
		}
		prev = cur
	}
	if len(folded) != rules {
		t.Errorf("the cycle folded %d rules, want %d", len(folded), rules)
	}
	for id := int64(1); id <= rules; id++ {
		if _, wm, _, err := s.Rule(id); err != nil || wm.Count != 3 {
			t.Fatalf("Rule(%d) after the cycle: count %d, err %v; want 3", id, wm.Count, err)
		}
	}
}
