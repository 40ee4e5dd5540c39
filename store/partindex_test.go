package store

import (
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"reflect"
	"slices"
	"sync"
	"testing"

	"github.com/timerd/timerd/cluster/protocol"
)

const testParts = 31

func testPart(id int64) int { return int(uint64(id) * 2654435761 % testParts) }

// TestPartitionIndexFollowsEveryWriter drives random writes of every kind (rules put and
// removed, watermarks merged for rules stored or not, protocol fires journaled and
// folded) and checks after each that the index holds exactly the ids with a rule or a
// watermark, and that the indexed reads answer what the walks of the whole store answer.
func TestPartitionIndexFollowsEveryWriter(t *testing.T) {
	for seed := range uint64(4) {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			t.Parallel()
			rng := rand.New(rand.NewPCG(seed, 15))
			s := openTest(t, Options{NoSync: true})
			s.foldAfter, s.foldSlices = 1+rng.IntN(6), 1+rng.IntN(3)
			// Some rules before the index, so that the build walks them.
			for id := int64(1); id <= 150; id += 3 {
				if err := s.PutRule(testRule(id), &Watermark{Slot: sec(1), Count: 1}); err != nil {
					t.Fatal(err)
				}
			}
			if err := s.IndexPartitions(testPart); err != nil {
				t.Fatal(err)
			}
			checkIndex(t, s, "after the build")
			slot := 10
			for step := range 300 {
				id := 1 + rng.Int64N(150)
				slot++
				var what string
				var err error
				switch rng.IntN(7) {
				case 0:
					what = "PutRule"
					err = s.PutRule(testRule(id), nil)
				case 1:
					what = "PutRules with a watermark"
					err = s.PutRules([]Rule{testRule(id), testRule(id + 1)}, []*Watermark{{Slot: sec(slot), Count: 2}, nil})
				case 2:
					what = "RemoveRules"
					err = s.RemoveRules([]Tombstone{{ID: id, Version: sec(slot)}, {ID: id + 2, Version: sec(slot)}})
				case 3:
					what = "DeleteRule"
					err = s.DeleteRule(id)
				case 4:
					what = "MergeWatermarks"
					err = s.MergeWatermarks([]protocol.Watermark{{Rule: id, Slot: ns(sec(slot)), Count: 3}})
				case 5:
					what = "CommitFireRefs"
					_, err = s.CommitFireRefs([]FireRecord{protoFire(id, sec(slot), incA, epA, step%2 == 0)})
				case 6:
					what = "PutRule with an anchor" // never fired, unless a chain was kept
					err = s.PutRule(testRule(id), &Watermark{Slot: sec(slot)})
				}
				if err != nil {
					t.Fatalf("step %d %s(%d): %v", step, what, id, err)
				}
				checkIndex(t, s, fmt.Sprintf("step %d, %s(%d)", step, what, id))
				if t.Failed() {
					return
				}
			}
			// A rebuild (a restart) finds what the writers kept.
			kept, _ := s.PartitionIDs(allTestParts())
			keptFired := s.parts.Load().fired
			s = reopen(t, s)
			if err := s.IndexPartitions(testPart); err != nil {
				t.Fatal(err)
			}
			if rebuilt, _ := s.PartitionIDs(allTestParts()); !slices.Equal(rebuilt, kept) {
				t.Errorf("index rebuilt after reopen = %v\nkept by the writers = %v", rebuilt, kept)
			}
			checkIndex(t, s, "after the rebuild")
			// The writers' index of fired ones is a superset of the rebuilt one (an id
			// stays until its rule and watermark go), and a rebuild finds each fired one.
			for p, ids := range s.parts.Load().fired {
				for _, id := range ids {
					if !slices.Contains(keptFired[p], id) {
						t.Errorf("rule %d: fired after the rebuild, not in the writers' index", id)
					}
				}
			}
		})
	}
}

func allTestParts() []int {
	ps := make([]int, testParts)
	for i := range ps {
		ps[i] = i
	}
	return ps
}

// checkIndex compares the index and the indexed reads with walks of the whole store.
func checkIndex(t *testing.T, s *Store, when string) {
	t.Helper()
	want := map[int64]bool{}
	type ruleWM struct {
		r  Rule
		wm Watermark
	}
	var rules []ruleWM
	if err := s.ForEachRule(func(r Rule, wm Watermark) error {
		want[r.ID] = true
		rules = append(rules, ruleWM{r, wm})
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	allWMs, err := s.PartitionWatermarksOf(allTestParts(), testPart)
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range allWMs {
		want[w.Rule] = true
	}
	got, err := s.PartitionIDs(allTestParts())
	if err != nil {
		t.Fatal(err)
	}
	if wantIDs := slices.Sorted(maps.Keys(want)); !slices.Equal(got, wantIDs) {
		t.Errorf("%s: PartitionIDs(all) = %v, want the ids with a rule or a watermark %v", when, got, wantIDs)
	}
	// Each partition alone (looked up), two together, and all (walked).
	sets := [][]int{{0}, {3}, {testParts - 1}, {1, 4}, allTestParts()}
	for _, parts := range sets {
		in := func(id int64) bool { return slices.Contains(parts, testPart(id)) }
		var wantRules []ruleWM
		for _, rw := range rules {
			if in(rw.r.ID) {
				wantRules = append(wantRules, rw)
			}
		}
		var gotRules []ruleWM
		if err := s.ForEachPartitionRule(parts, func(r Rule, wm Watermark) error {
			gotRules = append(gotRules, ruleWM{r, wm})
			return nil
		}); err != nil {
			t.Fatalf("%s: ForEachPartitionRule(%v): %v", when, parts, err)
		}
		if len(gotRules) != len(wantRules) {
			t.Errorf("%s: ForEachPartitionRule(%v) gave %d rules, the walk %d", when, parts, len(gotRules), len(wantRules))
		} else {
			for i := range gotRules {
				g, w := gotRules[i], wantRules[i]
				if !ruleEqual(g.r, w.r) || !wmEqual(g.wm, w.wm) {
					t.Errorf("%s: ForEachPartitionRule(%v)[%d] = %+v %+v, the walk %+v %+v", when, parts, i, g.r.ID, g.wm, w.r.ID, w.wm)
				}
			}
		}
		gotWMs, err := s.IndexedPartitionWatermarks(parts)
		if err != nil {
			t.Fatalf("%s: IndexedPartitionWatermarks(%v): %v", when, parts, err)
		}
		wantWMs, err := s.PartitionWatermarksOf(parts, testPart)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(normWMs(gotWMs), normWMs(wantWMs)) {
			t.Errorf("%s: IndexedPartitionWatermarks(%v) = %+v\nPartitionWatermarksOf = %+v", when, parts, gotWMs, wantWMs)
		}
		gotFired, err := s.IndexedFiredWatermarks(parts)
		if err != nil {
			t.Fatalf("%s: IndexedFiredWatermarks(%v): %v", when, parts, err)
		}
		wantFired := slices.DeleteFunc(wantWMs, protocol.NotFired)
		if !reflect.DeepEqual(normWMs(gotFired), normWMs(wantFired)) {
			t.Errorf("%s: IndexedFiredWatermarks(%v) = %+v\nthe walk's fired ones = %+v", when, parts, gotFired, wantFired)
		}
	}
}

func normWMs(wms []protocol.Watermark) []protocol.Watermark {
	out := make([]protocol.Watermark, len(wms))
	for i, w := range wms {
		if len(w.Chain) == 0 {
			w.Chain = nil
		}
		out[i] = w
	}
	return out
}

func TestPartitionReadsWithoutIndex(t *testing.T) {
	s := openTest(t, Options{NoSync: true})
	if err := s.PutRule(testRule(1), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := s.PartitionIDs([]int{0}); !errors.Is(err, ErrNotIndexed) {
		t.Errorf("PartitionIDs without an index: err %v, want ErrNotIndexed", err)
	}
	if err := s.ForEachPartitionRule([]int{0}, func(Rule, Watermark) error { return nil }); !errors.Is(err, ErrNotIndexed) {
		t.Errorf("ForEachPartitionRule without an index: err %v, want ErrNotIndexed", err)
	}
	if _, err := s.IndexedPartitionWatermarks([]int{0}); !errors.Is(err, ErrNotIndexed) {
		t.Errorf("IndexedPartitionWatermarks without an index: err %v, want ErrNotIndexed", err)
	}
	if err := s.IndexPartitions(nil); err == nil {
		t.Error("IndexPartitions(nil): err nil")
	}
	if n := s.IndexedIDs(); n != 0 {
		t.Errorf("IndexedIDs without an index = %d, want 0", n)
	}
}

func TestForEachPartitionRuleStopsOnError(t *testing.T) {
	s := openTest(t, Options{NoSync: true})
	if err := s.IndexPartitions(func(int64) int { return 0 }); err != nil {
		t.Fatal(err)
	}
	for id := int64(1); id <= 3; id++ {
		if err := s.PutRule(testRule(id), nil); err != nil {
			t.Fatal(err)
		}
	}
	stop := errors.New("stop")
	calls := 0
	err := s.ForEachPartitionRule([]int{0}, func(Rule, Watermark) error {
		calls++
		return stop
	})
	if !errors.Is(err, stop) || calls != 1 {
		t.Errorf("ForEachPartitionRule with fn failing: err %v after %d calls, want the fn's error after 1", err, calls)
	}
}

// TestPartitionIndexConcurrent reads partitions while rules are put and removed and
// fires committed (run with -race): every rule read is one a writer stored, and at the
// end the index matches the store.
func TestPartitionIndexConcurrent(t *testing.T) {
	s := openTest(t, Options{NoSync: true})
	s.foldAfter = 5
	if err := s.IndexPartitions(testPart); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 3)
	wg.Go(func() {
		for i := range 200 {
			id := int64(1 + i%50)
			if err := s.PutRule(testRule(id), nil); err != nil {
				errs <- err
				return
			}
			if i%3 == 0 {
				if err := s.RemoveRules([]Tombstone{{ID: id, Version: sec(i)}}); err != nil {
					errs <- err
					return
				}
			}
		}
	})
	wg.Go(func() {
		for i := range 200 {
			if _, err := s.CommitFireRefs([]FireRecord{protoFire(int64(1+i%60), sec(1000+i), incA, epA, true)}); err != nil {
				errs <- err
				return
			}
		}
	})
	wg.Go(func() {
		for i := range 300 {
			err := s.ForEachPartitionRule([]int{i % testParts}, func(r Rule, _ Watermark) error {
				if testPart(r.ID) != i%testParts || r.ID < 1 || r.ID > 50 {
					return fmt.Errorf("rule %d read for partition %d", r.ID, i%testParts)
				}
				return nil
			})
			if err == nil {
				_, err = s.IndexedPartitionWatermarks([]int{i % testParts})
			}
			if err != nil {
				errs <- err
				return
			}
		}
	})
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	checkIndex(t, s, "after the concurrent writes")
}
