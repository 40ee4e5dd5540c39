package store

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"reflect"
	"slices"
	"strconv"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/timerd/timerd/cluster/protocol"
)

var (
	incA = protocol.Incarnation{Node: "a", N: 1}
	incB = protocol.Incarnation{Node: "b", N: 4}
	epA  = protocol.Epoch{N: 1, Node: "a"}
	epB  = protocol.Epoch{N: 2, Node: "b"}
)

func ns(t time.Time) int64 { return t.UnixNano() }

func sec(n int) time.Time { return t0.Add(time.Duration(n) * time.Second) }

// protoFire is a fire of the protocol of rule id at slot.
func protoFire(id int64, slot time.Time, firer protocol.Incarnation, epoch protocol.Epoch, ready bool) FireRecord {
	r := testFire(id, slot, 0)
	r.Firer, r.Epoch, r.Ready = firer, epoch, ready
	return r
}

func TestIncarnation(t *testing.T) {
	s := openTest(t, Options{NoSync: true})
	if n := s.Incarnation(); n != 0 {
		t.Errorf("Incarnation() of a new store = %d, want 0", n)
	}
	for want := uint64(1); want <= 3; want++ {
		if n, err := s.NextIncarnation(); err != nil || n != want {
			t.Fatalf("NextIncarnation() = %d, %v; want %d", n, err, want)
		}
	}
	s = reopen(t, s)
	if n := s.Incarnation(); n != 3 {
		t.Errorf("Incarnation() after reopen = %d, want 3", n)
	}
	if n, err := s.NextIncarnation(); err != nil || n != 4 {
		t.Errorf("NextIncarnation() after reopen = %d, %v; want 4", n, err)
	}
	if err := s.SetIncarnation(9); err != nil {
		t.Fatalf("SetIncarnation(9): %v", err)
	}
	if err := s.SetIncarnation(9); err != nil {
		t.Errorf("SetIncarnation(9) again: %v, want nil", err)
	}
	if err := s.SetIncarnation(8); !errors.Is(err, ErrBackwards) {
		t.Errorf("SetIncarnation(8) after 9: %v, want ErrBackwards", err)
	}
	s = reopen(t, s)
	if n := s.Incarnation(); n != 9 {
		t.Errorf("Incarnation() after SetIncarnation(9), refused 8 and reopen = %d, want 9", n)
	}
	if n, err := s.NextIncarnation(); err != nil || n != 10 {
		t.Errorf("NextIncarnation() = %d, %v; want 10", n, err)
	}
}

func TestDurable(t *testing.T) {
	s := openTest(t, Options{NoSync: true})
	d, err := s.Durable()
	if err != nil || len(d.Held)+len(d.Epochs)+len(d.Fences) != 0 || d.Held == nil {
		t.Fatalf("Durable() of a new store = %+v, %v; want empty maps", d, err)
	}
	steps := []struct {
		name string
		fn   func() error
	}{
		{"hold 1, 2, 3", func() error {
			return s.SetHeld(map[int]protocol.Epoch{1: epA, 2: epA, 3: {N: 5, Node: "a"}}, nil)
		}},
		{"release 2 and 7, hold 4", func() error { return s.SetHeld(map[int]protocol.Epoch{4: epB}, []int{2, 7}) }},
		{"promise", func() error { return s.SaveEpochs(map[int]protocol.Epoch{1: epB, 9: epA}) }},
		{"promise lower: kept higher", func() error {
			return s.SaveEpochs(map[int]protocol.Epoch{1: epA, 9: {N: 1, Node: "0"}})
		}},
		{"promise higher", func() error { return s.SaveEpochs(map[int]protocol.Epoch{9: {N: 1, Node: "z"}}) }},
		{"fence b#3", func() error { return s.SaveFence("b", 3) }},
		{"fence b#2: kept 3", func() error { return s.SaveFence("b", 2) }},
		{"fence c#1", func() error { return s.SaveFence("c", 1) }},
	}
	for _, st := range steps {
		if err := st.fn(); err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
	}
	want := protocol.Durable{
		Held:   map[int]protocol.Epoch{1: epA, 3: {N: 5, Node: "a"}, 4: epB},
		Epochs: map[int]protocol.Epoch{1: epB, 9: {N: 1, Node: "z"}},
		Fences: map[string]uint64{"b": 3, "c": 1},
	}
	check := func(where string) {
		t.Helper()
		d, err := s.Durable()
		if err != nil || !reflect.DeepEqual(d, want) {
			t.Errorf("%s: Durable() = %+v, %v; want %+v", where, d, err, want)
		}
	}
	check("after the writes")
	bad := []struct {
		name string
		fn   func() error
	}{
		{"SetHeld negative partition", func() error { return s.SetHeld(map[int]protocol.Epoch{-1: epA}, nil) }},
		{"SetHeld epoch without node", func() error { return s.SetHeld(map[int]protocol.Epoch{5: {N: 1}}, nil) }},
		{"SetHeld add and remove", func() error { return s.SetHeld(map[int]protocol.Epoch{5: epA}, []int{5}) }},
		{"SetHeld remove negative", func() error { return s.SetHeld(nil, []int{1, -3}) }},
		{"SaveEpochs without node", func() error { return s.SaveEpochs(map[int]protocol.Epoch{1: {N: 99}}) }},
		{"SaveFence without node", func() error { return s.SaveFence("", 5) }},
	}
	for _, b := range bad {
		if err := b.fn(); err == nil {
			t.Errorf("%s: err nil, want an error", b.name)
		}
	}
	check("after refused writes")
	s = reopen(t, s)
	check("after reopen")
}

func TestExtendChainIsExtend(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	firers := []protocol.Incarnation{incA, incB, {Node: "a", N: 2}}
	epochs := []protocol.Epoch{epA, epB, {N: 3, Node: "a"}}
	for run := range 300 {
		var fast, slow protocol.Chain
		prev := int64(protocol.NoSlot)
		for step := range 30 {
			slot := int64(rng.IntN(1000))
			if prev != protocol.NoSlot {
				slot = prev + 1 + int64(rng.IntN(3))
			}
			if rng.IntN(8) == 0 && prev != protocol.NoSlot {
				prev -= int64(rng.IntN(5)) // a fire after a merge moved things
			}
			i := rng.IntN(len(firers))
			if rng.IntN(4) != 0 {
				i = 0 // mostly the same firer, extending the last point
			}
			f, e := firers[i], epochs[rng.IntN(len(epochs))]
			if i == 0 && rng.IntN(3) != 0 {
				e = epA
			}
			in, before := fast, slices.Clone(fast)
			fast = extendChain(in, prev, slot, f, e)
			slow = slow.Extend(prev, slot, f, e)
			if !slices.Equal(fast, slow) {
				t.Fatalf("run %d step %d: extendChain(%v, %d, %d, %v, %v) = %v; Extend gives %v", run, step, before, prev, slot, f, e, fast, slow)
			}
			if !slices.Equal(in, before) {
				t.Fatalf("run %d step %d: extendChain changed its input %v to %v", run, step, before, in)
			}
			prev = slot
		}
	}
}

func TestCommitFireRefs(t *testing.T) {
	s := openTest(t, Options{NoSync: true})
	if err := s.PutRules([]Rule{testRule(1), testRule(2)}, []*Watermark{{Slot: t0, Count: 10}, nil}); err != nil {
		t.Fatal(err)
	}
	refs, err := s.CommitFireRefs([]FireRecord{
		protoFire(1, sec(1), incA, epA, true),
		protoFire(1, sec(2), incA, epA, true),
		protoFire(2, sec(5), incA, epA, false), // no watermark yet
		testFire(2, sec(4), 1),                 // not of the protocol: its outbox entry is ready, v1
		protoFire(1, sec(2), incA, epA, true),  // decided already: left out
	})
	if err != nil {
		t.Fatalf("CommitFireRefs: %v", err)
	}
	wantRefs := []protocol.EventRef{
		{Rule: 1, Prev: ns(t0), Slot: ns(sec(1)), Count: 11, Firer: incA},
		{Rule: 1, Prev: ns(sec(1)), Slot: ns(sec(2)), Count: 12, Firer: incA},
		{Rule: 2, Prev: protocol.NoSlot, Slot: ns(sec(5)), Count: 0, Firer: incA},
	}
	if !reflect.DeepEqual(refs, wantRefs) {
		t.Errorf("CommitFireRefs refs = %+v\nwant %+v", refs, wantRefs)
	}
	// A fire by another firer and epoch, and one the misfire policy skipped.
	refs, err = s.CommitFireRefs([]FireRecord{protoFire(1, sec(3), incB, epB, false)})
	if err != nil || len(refs) != 1 || refs[0].Count != 13 || refs[0].Prev != ns(sec(2)) {
		t.Fatalf("CommitFireRefs(b's fire) = %+v, %v; want one ref, count 13, prev slot 2", refs, err)
	}
	skip := protoFire(1, sec(4), incB, epB, false)
	skip.Skipped = true
	if refs, err := s.CommitFireRefs([]FireRecord{skip}); err != nil || len(refs) != 0 {
		t.Fatalf("CommitFireRefs(skipped) = %+v, %v; want no refs", refs, err)
	}
	wantWM := map[int64]protocol.Watermark{
		1: {Rule: 1, Slot: ns(sec(4)), Count: 13, Chain: protocol.Chain{
			{From: ns(t0), Last: ns(sec(2)), Firer: incA, Epoch: epA},
			{From: ns(sec(2)), Last: ns(sec(4)), Firer: incB, Epoch: epB},
		}},
		// The v1 record after the fire of slot 5 is before it: the watermark stays.
		2: {Rule: 2, Slot: ns(sec(5)), Count: 0, Chain: protocol.Chain{
			{From: protocol.NoSlot, Last: ns(sec(5)), Firer: incA, Epoch: epA},
		}},
	}
	check := func(where string) {
		t.Helper()
		for id, want := range wantWM {
			got, ok := s.Watermark(id)
			if !ok || !reflect.DeepEqual(got, want) {
				t.Errorf("%s: Watermark(%d) = %+v, %v\nwant %+v", where, id, got, ok, want)
			}
			if _, wm, _, err := s.Rule(id); err != nil || wm.Count != want.Count || ns(wm.Slot) != want.Slot {
				t.Errorf("%s: Rule(%d) watermark = %+v, %v; want slot %d count %d", where, id, wm, err, want.Slot, want.Count)
			}
		}
		if n, err := s.ReadErr(); n != 0 {
			t.Errorf("%s: ReadErr() = %d, %v", where, n, err)
		}
	}
	check("journaled")
	s.wmu.Lock()
	if err := s.fold(); err != nil {
		t.Fatal(err)
	}
	s.wmu.Unlock()
	check("folded")
	s = reopen(t, s)
	check("reopened")

	// The outbox: ready entries in commit order; the v1 one has no fire.
	out, err := s.Outbox(0, 10)
	if err != nil || len(out) != 3 {
		t.Fatalf("Outbox = %+v, %v; want 3 ready entries", out, err)
	}
	if out[0].Ref() != wantRefs[0] || out[1].Ref() != wantRefs[1] || out[0].Pending {
		t.Errorf("Outbox refs = %+v, %+v; want %+v, %+v", out[0].Ref(), out[1].Ref(), wantRefs[0], wantRefs[1])
	}
	if out[2].Firer.Node != "" || out[2].Event.RuleID != 2 {
		t.Errorf("Outbox[2] = %+v; want rule 2's entry without a fire", out[2])
	}
	if !eventEqual(out[0].Event, protoFire(1, sec(1), incA, epA, true).Event) {
		t.Errorf("Outbox[0].Event = %+v; want the committed event", out[0].Event)
	}
	if n, _ := s.PendingLen(); n != 2 {
		t.Errorf("PendingLen() = %d, want 2", n)
	}
}

func TestCommitFireRefsInvalidWritesNothing(t *testing.T) {
	s := openTest(t, Options{NoSync: true})
	if err := s.PutRule(testRule(1), nil); err != nil {
		t.Fatal(err)
	}
	bad := protoFire(1, time.Time{}, incA, epA, false)
	if _, err := s.CommitFireRefs([]FireRecord{protoFire(1, sec(1), incA, epA, false), bad}); err == nil {
		t.Fatal("CommitFireRefs with a fire without a slot: err nil")
	}
	if n, _ := s.PendingLen(); n != 0 {
		t.Errorf("PendingLen() after a refused commit = %d, want 0", n)
	}
	if _, ok := s.Watermark(1); ok {
		t.Error("Watermark(1) after a refused commit: ok, want none")
	}
}

func TestPendingReadyAckDrop(t *testing.T) {
	s := openTest(t, Options{NoSync: true})
	if err := s.PutRules([]Rule{testRule(1), testRule(2), testRule(3)}, nil); err != nil {
		t.Fatal(err)
	}
	// A ready entry first: made-ready entries come after it.
	if err := s.CommitFires([]FireRecord{testFire(3, sec(1), 1)}); err != nil {
		t.Fatal(err)
	}
	var recs []FireRecord
	for i := 1; i <= 3; i++ {
		recs = append(recs, protoFire(1, sec(i), incA, epA, false), protoFire(2, sec(i), incB, epB, false))
	}
	refs, err := s.CommitFireRefs(recs)
	if err != nil || len(refs) != 6 {
		t.Fatalf("CommitFireRefs = %d refs, %v; want 6", len(refs), err)
	}
	if n, _ := s.OutboxLen(); n != 1 {
		t.Errorf("OutboxLen() with 6 pending = %d, want 1", n)
	}
	if out, _ := s.Outbox(0, 100); len(out) != 1 {
		t.Errorf("Outbox() with 6 pending = %d entries, want the 1 ready", len(out))
	}
	s = reopen(t, s)
	if n, _ := s.PendingLen(); n != 6 {
		t.Errorf("PendingLen() after reopen = %d, want 6", n)
	}
	pend, err := s.Pending()
	if err != nil || len(pend) != 6 {
		t.Fatalf("Pending() = %d, %v; want 6", len(pend), err)
	}
	var got []protocol.EventRef
	for _, e := range pend {
		if !e.Pending || e.Seq != 0 {
			t.Errorf("Pending entry %+v: want Pending, Seq 0", e)
		}
		got = append(got, e.Ref())
	}
	want := slices.Clone(refs)
	slices.SortFunc(want, func(a, b protocol.EventRef) int {
		if a.Rule != b.Rule {
			return cmp.Compare(a.Rule, b.Rule)
		}
		return cmp.Compare(a.Slot, b.Slot)
	})
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Pending() refs = %+v\nwant %+v", got, want)
	}

	// Bad input changes nothing.
	unknown := protocol.EventRef{Rule: 1, Slot: ns(sec(9)), Firer: incA}
	wrongFirer := refs[0]
	wrongFirer.Firer = incB
	for name, in := range map[string][]protocol.EventRef{
		"unknown slot":  {refs[0], unknown},
		"another firer": {refs[1], wrongFirer},
	} {
		if err := s.MarkReady(in); !errors.Is(err, ErrNotFound) {
			t.Errorf("MarkReady(%s) = %v, want ErrNotFound", name, err)
		}
		if err := s.DropPending(in); !errors.Is(err, ErrNotFound) {
			t.Errorf("DropPending(%s) = %v, want ErrNotFound", name, err)
		}
	}
	if n, _ := s.PendingLen(); n != 6 {
		t.Errorf("PendingLen() after refused calls = %d, want 6", n)
	}

	// Ready: rule 2's, given twice (counted once), in the order given.
	ready := []protocol.EventRef{refs[5], refs[1], refs[3], refs[1]}
	if err := s.MarkReady(ready); err != nil {
		t.Fatalf("MarkReady: %v", err)
	}
	if err := s.MarkReady(ready[:1]); !errors.Is(err, ErrNotFound) {
		t.Errorf("MarkReady of a ready entry = %v, want ErrNotFound", err)
	}
	out, err := s.Outbox(0, 100)
	if err != nil || len(out) != 4 {
		t.Fatalf("Outbox() = %d entries, %v; want 4", len(out), err)
	}
	for i, r := range ready[:3] {
		e := out[i+1]
		if e.Ref() != r || e.Pending || e.Seq <= out[i].Seq {
			t.Errorf("Outbox()[%d] = seq %d ref %+v pending %v; want ref %+v after seq %d", i+1, e.Seq, e.Ref(), e.Pending, r, out[i].Seq)
		}
		if e.Event.IdempotencyKey != "2:"+strconv.FormatInt(r.Slot, 10) {
			t.Errorf("Outbox()[%d] key %q: not rule 2's event of slot %d", i+1, e.Event.IdempotencyKey, r.Slot)
		}
	}
	// Delivery reads after a cursor see entries made ready later.
	if after, _ := s.Outbox(out[0].Seq, 100); len(after) != 3 {
		t.Errorf("Outbox(after the first) = %d, want 3", len(after))
	}
	if n, _ := s.OutboxLen(); n != 4 {
		t.Errorf("OutboxLen() = %d, want 4", n)
	}
	if n, _ := s.PendingLen(); n != 3 {
		t.Errorf("PendingLen() = %d, want 3", n)
	}
	if err := s.AckOutbox(out[1].Seq, out[2].Seq); err != nil {
		t.Fatal(err)
	}
	if err := s.DeadLetter(out[3].Seq, "gone", 410); err != nil {
		t.Fatalf("DeadLetter of an entry with a fire: %v", err)
	}
	if dl, err := s.DeadLetters(0, 10); err != nil || len(dl) != 1 || dl[0].Event.RuleID != 2 {
		t.Errorf("DeadLetters() = %+v, %v; want rule 2's entry", dl, err)
	}
	if err := s.DropPending([]protocol.EventRef{refs[0], refs[2]}); err != nil {
		t.Fatalf("DropPending: %v", err)
	}
	s = reopen(t, s)
	pend, _ = s.Pending()
	if len(pend) != 1 || pend[0].Ref() != refs[4] {
		t.Errorf("Pending() after drop and reopen = %+v; want %+v", pend, refs[4])
	}
	if n, _ := s.PendingLen(); n != 1 {
		t.Errorf("PendingLen() after reopen = %d, want 1", n)
	}
	if n, _ := s.OutboxLen(); n != 1 {
		t.Errorf("OutboxLen() after reopen = %d, want 1", n)
	}
}

func TestPendingCorrupt(t *testing.T) {
	s := openTest(t, Options{NoSync: true})
	refs, err := s.CommitFireRefs([]FireRecord{protoFire(1, sec(1), incA, epA, false), protoFire(2, sec(1), incA, epA, false)})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketPending).Put(pendingKey(refs[1]), []byte{eventV2, 1, 2})
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Pending(); !errors.Is(err, ErrCorrupt) {
		t.Errorf("Pending() over a damaged entry = %v, want ErrCorrupt", err)
	}
	if err := s.MarkReady(refs); !errors.Is(err, ErrCorrupt) {
		t.Errorf("MarkReady(with a damaged entry) = %v, want ErrCorrupt", err)
	}
	if n, _ := s.OutboxLen(); n != 0 {
		t.Errorf("OutboxLen() after a refused MarkReady = %d, want 0", n)
	}
	if err := s.MarkReady(refs[:1]); err != nil {
		t.Errorf("MarkReady(the sound entry) = %v", err)
	}
}

func TestMergeWatermarks(t *testing.T) {
	s := openTest(t, Options{NoSync: true})
	if err := s.PutRules([]Rule{testRule(1), testRule(2)}, []*Watermark{{Slot: sec(10), Count: 10}, nil}); err != nil {
		t.Fatal(err)
	}
	// Rule 2 is journaled.
	if _, err := s.CommitFireRefs([]FireRecord{protoFire(2, sec(5), incA, epA, true)}); err != nil {
		t.Fatal(err)
	}
	pB := func(from, last int) protocol.Point {
		return protocol.Point{From: ns(sec(from)), Last: ns(sec(last)), Firer: incB, Epoch: epB}
	}
	err := s.MergeWatermarks([]protocol.Watermark{
		{Rule: 1, Slot: ns(sec(8)), Count: 7, Chain: protocol.Chain{pB(6, 8)}},   // behind: chain only
		{Rule: 2, Slot: ns(sec(9)), Count: 3, Chain: protocol.Chain{pB(5, 9)}},   // ahead
		{Rule: 7, Slot: ns(sec(3)), Count: 2, Chain: protocol.Chain{pB(1, 3)}},   // no such rule
		{Rule: 7, Slot: ns(sec(2)), Count: 1, Chain: protocol.Chain{pB(0, 2)}},   // twice, behind
		{Rule: 2, Slot: ns(sec(7)), Count: 9, Chain: protocol.Chain{pB(-9, -8)}}, // twice, count ahead
	})
	if err != nil {
		t.Fatalf("MergeWatermarks: %v", err)
	}
	want := map[int64]protocol.Watermark{
		1: {Rule: 1, Slot: ns(sec(10)), Count: 10, Chain: protocol.Chain{pB(6, 8)}},
		2: {Rule: 2, Slot: ns(sec(9)), Count: 9, Chain: protocol.Chain{pB(-9, -8),
			{From: protocol.NoSlot, Last: ns(sec(5)), Firer: incA, Epoch: epA}, pB(5, 9)}},
		7: {Rule: 7, Slot: ns(sec(3)), Count: 2, Chain: protocol.Chain{pB(0, 3)}},
	}
	check := func(where string) {
		t.Helper()
		for id, w := range want {
			if got, ok := s.Watermark(id); !ok || !reflect.DeepEqual(got, w) {
				t.Errorf("%s: Watermark(%d) = %+v, %v\nwant %+v", where, id, got, ok, w)
			}
		}
	}
	check("merged")
	// Bad input changes nothing.
	for name, in := range map[string][]protocol.Watermark{
		"rule 0":              {{Rule: 1, Slot: ns(sec(99))}, {Rule: 0, Slot: 1}},
		"point without firer": {{Rule: 1, Slot: ns(sec(99))}, {Rule: 2, Chain: protocol.Chain{{From: 1, Last: 2}}}},
		"point backwards":     {{Rule: 1, Slot: ns(sec(99))}, {Rule: 2, Chain: protocol.Chain{{From: 5, Last: 2, Firer: incA}}}},
	} {
		if err := s.MergeWatermarks(in); err == nil {
			t.Errorf("MergeWatermarks(%s): err nil", name)
		}
	}
	check("after refused merges")
	// Merging what is held changes nothing and writes no journal record.
	recs := s.j.records
	if err := s.MergeWatermarks([]protocol.Watermark{want[2]}); err != nil || s.j.records != recs {
		t.Errorf("MergeWatermarks(the stored one) = %v, journal records %d → %d; want nil, unchanged", err, recs, s.j.records)
	}
	s = reopen(t, s)
	check("reopened")
	// Rule 7 arrives: a nil watermark adopts the merged one.
	if err := s.PutRule(testRule(7), nil); err != nil {
		t.Fatal(err)
	}
	if _, wm, ok, err := s.Rule(7); err != nil || !ok || !wm.Slot.Equal(sec(3)) || wm.Count != 2 {
		t.Errorf("Rule(7) after it arrived = %+v, %v, %v; want the merged watermark", wm, ok, err)
	}
	// A rule change with a watermark keeps the chain.
	if err := s.PutRule(testRule(1), &Watermark{Slot: sec(20), Count: 11}); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.Watermark(1); got.Slot != ns(sec(20)) || !reflect.DeepEqual(got.Chain, want[1].Chain) {
		t.Errorf("Watermark(1) after PutRule with a watermark = %+v; want slot 20 s, chain %v", got, want[1].Chain)
	}
	if err := s.DeleteRule(7); err != nil {
		t.Fatal(err)
	}
	if _, ok := s.Watermark(7); ok {
		t.Error("Watermark(7) after DeleteRule: ok, want none")
	}
}

func TestPartitionWatermarks(t *testing.T) {
	part := func(id int64) int { return int(id % 3) }
	s := openTest(t, Options{NoSync: true, PartitionOf: part})
	var rs []Rule
	var wms []*Watermark
	for id := int64(1); id <= 30; id++ {
		rs = append(rs, testRule(id))
		var wm *Watermark
		if id%5 != 0 { // every fifth rule has no watermark
			wm = &Watermark{Slot: sec(int(id)), Count: uint64(id % 4)} // a count of 0: an anchor, never fired
		}
		wms = append(wms, wm)
	}
	if err := s.PutRules(rs, wms); err != nil {
		t.Fatal(err)
	}
	// Some in the journal, one of a rule not stored, one deleted.
	var recs []FireRecord
	for id := int64(1); id <= 30; id += 4 {
		recs = append(recs, protoFire(id, sec(100), incA, epA, true))
	}
	if _, err := s.CommitFireRefs(recs); err != nil {
		t.Fatal(err)
	}
	if err := s.MergeWatermarks([]protocol.Watermark{{Rule: 33, Slot: ns(sec(1)), Count: 1}}); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteRule(9); err != nil { // journaled, partition 0
		t.Fatal(err)
	}
	if err := s.DeleteRule(12); err != nil { // in the bucket, partition 0
		t.Fatal(err)
	}
	expect := func(parts ...int) []protocol.Watermark {
		var out []protocol.Watermark
		for id := int64(1); id <= 33; id++ {
			if wm, ok := s.Watermark(id); ok && slices.Contains(parts, part(id)) {
				out = append(out, wm)
			}
		}
		return out
	}
	check := func(where string) {
		t.Helper()
		for _, parts := range [][]int{{0}, {1, 2}, {0, 1, 2}, {5}} {
			got := s.PartitionWatermarks(parts)
			want := expect(parts...)
			if !reflect.DeepEqual(got, want) {
				t.Errorf("%s: PartitionWatermarks(%v) = %d watermarks %+v\nwant %d %+v", where, parts, len(got), got, len(want), want)
			}
			fired := s.FiredWatermarks(parts)
			if want := slices.DeleteFunc(want, protocol.NotFired); !reflect.DeepEqual(fired, want) {
				t.Errorf("%s: FiredWatermarks(%v) = %+v\nwant the fired ones %+v", where, parts, fired, want)
			}
		}
		if got := s.PartitionWatermarks(nil); len(got) != 0 {
			t.Errorf("%s: PartitionWatermarks(nil) = %+v, want none", where, got)
		}
	}
	check("journaled")
	ids := map[int64]bool{}
	for _, w := range s.PartitionWatermarks([]int{0}) {
		ids[w.Rule] = true
	}
	if want := map[int64]bool{3: true, 6: true, 18: true, 21: true, 24: true, 27: true, 33: true}; !maps.Equal(ids, want) {
		t.Errorf("PartitionWatermarks([0]) rules = %v, want %v", slices.Sorted(maps.Keys(ids)), slices.Sorted(maps.Keys(want)))
	}
	s.wmu.Lock()
	if err := s.fold(); err != nil {
		t.Fatal(err)
	}
	s.wmu.Unlock()
	check("folded")
	if n, err := s.ReadErr(); n != 0 {
		t.Errorf("ReadErr() = %d, %v; want none", n, err)
	}

	// Without PartitionOf: nothing, and the error is kept.
	s2 := openTest(t, Options{NoSync: true})
	if got := s2.PartitionWatermarks([]int{0}); got != nil {
		t.Errorf("PartitionWatermarks without PartitionOf = %+v, want nil", got)
	}
	if n, err := s2.ReadErr(); n != 1 || !errors.Is(err, ErrNoPartitionOf) {
		t.Errorf("ReadErr() without PartitionOf = %d, %v; want 1, ErrNoPartitionOf", n, err)
	}
	if got, err := s2.PartitionWatermarksOf([]int{0}, part); err != nil || len(got) != 0 {
		t.Errorf("PartitionWatermarksOf on an empty store = %+v, %v", got, err)
	}
}

// A file of schema version 2, as the previous timerd wrote it (no protocol or pending
// bucket, no pending counter, chainless watermarks, a journal value of v1, outbox
// entries of v1), opens and reads: watermarks with empty chains, every outbox entry
// ready, incarnation 0; the file is raised to the current version.
func TestOpenSchema2File(t *testing.T) {
	s := openTest(t, Options{NoSync: true})
	if err := s.PutRules([]Rule{testRule(1), testRule(2), testRule(3)}, []*Watermark{{Slot: sec(1), Count: 1}, {Slot: sec(2), Count: 2}, nil}); err != nil {
		t.Fatal(err)
	}
	if err := s.CommitFires([]FireRecord{testFire(3, sec(3), 3), testFire(1, sec(4), 4)}); err != nil {
		t.Fatal(err)
	}
	p := s.Path()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	editStore(t, p, func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketProtocol, bucketPending} {
			if err := tx.DeleteBucket(b); err != nil {
				return err
			}
		}
		meta := tx.Bucket(bucketMeta)
		if err := meta.Delete(keyPendingLen); err != nil {
			return err
		}
		// The journal as v1 wrote it: fixed records, no chain.
		jb := tx.Bucket(bucketJournal)
		if err := jb.ForEach(func(k, _ []byte) error { return jb.Delete(k) }); err != nil {
			return err
		}
		v := []byte{codecV1}
		for _, r := range []journalRec{{kind: recSet, id: 3, wm: Watermark{Slot: sec(3), Count: 3}}, {kind: recSet, id: 1, wm: Watermark{Slot: sec(4), Count: 4}}} {
			v = append(v, r.kind)
			v = binary.BigEndian.AppendUint64(v, uint64(r.id))
			v = appendTime(v, r.wm.Slot)
			v = binary.BigEndian.AppendUint64(v, r.wm.Count)
		}
		if err := jb.Put(binary.BigEndian.AppendUint64(nil, 1), v); err != nil {
			return err
		}
		if err := jb.SetSequence(1); err != nil {
			return err
		}
		// Every value as v2 wrote it.
		if err := rewriteUnsealed(tx, 2); err != nil {
			return err
		}
		if err := tx.Bucket(bucketOutbox).ForEach(func(k, v []byte) error {
			if v[0] != codecV1 {
				t.Errorf("outbox entry %x of version %d before the protocol", k, v[0])
			}
			return nil
		}); err != nil {
			return err
		}
		return meta.Put(keySchemaVersion, []byte("2"))
	})
	s, err := Open(p, Options{NoSync: true})
	if err != nil {
		t.Fatalf("Open(schema 2 file) = %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	for id, want := range map[int64]protocol.Watermark{
		1: {Rule: 1, Slot: ns(sec(4)), Count: 4},
		2: {Rule: 2, Slot: ns(sec(2)), Count: 2},
		3: {Rule: 3, Slot: ns(sec(3)), Count: 3},
	} {
		if got, ok := s.Watermark(id); !ok || !reflect.DeepEqual(got, want) {
			t.Errorf("Watermark(%d) of a schema 2 file = %+v, %v; want %+v", id, got, ok, want)
		}
	}
	out, err := s.Outbox(0, 10)
	if err != nil || len(out) != 2 || out[0].Pending || out[0].Firer.Node != "" {
		t.Errorf("Outbox() of a schema 2 file = %+v, %v; want 2 ready entries without fires", out, err)
	}
	if n, _ := s.OutboxLen(); n != 2 {
		t.Errorf("OutboxLen() = %d, want 2", n)
	}
	if n, _ := s.PendingLen(); n != 0 {
		t.Errorf("PendingLen() = %d, want 0", n)
	}
	if pend, err := s.Pending(); err != nil || len(pend) != 0 {
		t.Errorf("Pending() = %+v, %v; want none", pend, err)
	}
	if d, err := s.Durable(); err != nil || len(d.Held)+len(d.Epochs)+len(d.Fences) != 0 {
		t.Errorf("Durable() = %+v, %v; want empty", d, err)
	}
	if s.Incarnation() != 0 {
		t.Errorf("Incarnation() = %d, want 0", s.Incarnation())
	}
	if n, err := s.NextIncarnation(); err != nil || n != 1 {
		t.Errorf("NextIncarnation() = %d, %v; want 1", n, err)
	}
	// The protocol works on it: a chained fire extends the stored watermark.
	if refs, err := s.CommitFireRefs([]FireRecord{protoFire(2, sec(5), incA, epA, false)}); err != nil || len(refs) != 1 || refs[0].Prev != ns(sec(2)) || refs[0].Count != 3 {
		t.Errorf("CommitFireRefs on an upgraded file = %+v, %v; want prev 2 s, count 3", refs, err)
	}
	s = reopen(t, s)
	_ = s.db.View(func(tx *bolt.Tx) error {
		if v, want := string(tx.Bucket(bucketMeta).Get(keySchemaVersion)), strconv.Itoa(SchemaVersion); v != want {
			t.Errorf("schema_version after the upgrade = %q, want %s", v, want)
		}
		return nil
	})
	if n, _ := s.PendingLen(); n != 1 {
		t.Errorf("PendingLen() after reopen = %d, want 1", n)
	}
	checkAllSealed(t, s)
}

// rewriteUnsealed turns every rule and watermark value of tx into what schema
// version ver (1 or 2, before checksums) wrote: rules of codec v1 or v2, chainless
// watermarks of 16 bytes.
func rewriteUnsealed(tx *bolt.Tx, ver int) error {
	rb, wb := tx.Bucket(bucketRules), tx.Bucket(bucketWatermarks)
	type kv struct{ k, v []byte }
	var puts []struct {
		b *bolt.Bucket
		kv
	}
	err := rb.ForEach(func(k, v []byte) error {
		id, _ := keyID(k)
		r, err := decodeRule(id, v)
		if err != nil {
			return err
		}
		old := encodeRuleV3(r, byte(ver))
		puts = append(puts, struct {
			b *bolt.Bucket
			kv
		}{rb, kv{bytes.Clone(k), old}})
		return nil
	})
	if err != nil {
		return err
	}
	err = wb.ForEach(func(k, v []byte) error {
		wm, chain, err := decodeWatermark(v)
		if err != nil || len(chain) > 0 {
			return fmt.Errorf("watermark %x: %w, chain %v", k, err, chain)
		}
		old := binary.BigEndian.AppendUint64(appendTime(nil, wm.Slot), wm.Count)
		puts = append(puts, struct {
			b *bolt.Bucket
			kv
		}{wb, kv{bytes.Clone(k), old}})
		return nil
	})
	if err != nil {
		return err
	}
	for _, p := range puts {
		if err := p.b.Put(p.k, p.v); err != nil {
			return err
		}
	}
	return nil
}

// checkAllSealed fails t unless every rule and watermark value of s ends in its checksum.
func checkAllSealed(t *testing.T, s *Store) {
	t.Helper()
	_ = s.db.View(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketRules, bucketWatermarks} {
			_ = tx.Bucket(b).ForEach(func(k, v []byte) error {
				if _, err := unseal(v); err != nil || v[0] != sealedV3 && !(v[0] == ruleV4 && bytes.Equal(b, bucketRules)) {
					t.Errorf("%s %x after the upgrade: no checksum (%v)", b, k, err)
				}
				return nil
			})
		}
		return nil
	})
}

func TestWatermarkCodec(t *testing.T) {
	long := protocol.Incarnation{Node: "node-with-a-long-name-0123456789", N: 1 << 40}
	cases := []struct {
		name  string
		wm    Watermark
		chain protocol.Chain
	}{
		{"no chain", Watermark{Slot: t0, Count: 5}, nil},
		{"zero", Watermark{}, nil},
		{"one point", Watermark{Slot: t0, Count: 5}, protocol.Chain{{From: protocol.NoSlot, Last: ns(t0), Firer: incA, Epoch: epA}}},
		{"epoch of another node", Watermark{Slot: t0, Count: 1}, protocol.Chain{
			{From: 1, Last: 2, Firer: incA, Epoch: epB},
			{From: 2, Last: ns(t0), Firer: long, Epoch: protocol.Epoch{N: 1 << 50, Node: long.Node}},
		}},
	}
	for _, c := range cases {
		v := encodeWatermark(c.wm, c.chain)
		wm, chain, err := decodeWatermark(v)
		if err != nil || !wmEqual(wm, c.wm) || !slices.Equal(chain, c.chain) {
			t.Errorf("%s: decode(encode) = %+v %v, %v; want %+v %v", c.name, wm, chain, err, c.wm, c.chain)
		}
		for cut := 0; cut < len(v); cut++ {
			if cut == watermarkLen {
				continue // the length of a watermark before v2, read as one
			}
			if _, _, err := decodeWatermark(v[:cut]); !errors.Is(err, ErrCorrupt) {
				t.Errorf("%s cut to %d bytes: err %v, want ErrCorrupt", c.name, cut, err)
			}
		}
	}
	// A claimed count far beyond the bytes is refused before allocating.
	v := append([]byte{wmV2}, make([]byte, 16)...)
	v = binary.AppendUvarint(v, 1<<40)
	if _, _, err := decodeWatermark(v); !errors.Is(err, ErrCorrupt) {
		t.Errorf("decodeWatermark(chain of 2^40 points) = %v, want ErrCorrupt", err)
	}
}
