package store

import (
	"errors"
	"reflect"
	"testing"

	"github.com/timerd/timerd/cluster/protocol"
)

// TestProtocolBatchOneTransaction: a batch's every kind of write lands in one
// commit, later calls win where they disagree, and the counters follow.
func TestProtocolBatchOneTransaction(t *testing.T) {
	s := openTest(t, Options{NoSync: true})
	if err := s.PutRules([]Rule{testRule(1), testRule(2)}, nil); err != nil {
		t.Fatal(err)
	}
	refs, err := s.CommitFireRefs([]FireRecord{protoFire(1, sec(1), incA, epA, false), protoFire(2, sec(1), incA, epA, false)})
	if err != nil || len(refs) != 2 {
		t.Fatalf("CommitFireRefs = %d refs, %v", len(refs), err)
	}
	if err := s.SetHeld(map[int]protocol.Epoch{7: epA}, nil); err != nil {
		t.Fatal(err)
	}

	var b ProtocolBatch
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(b.MergeWatermarks([]protocol.Watermark{{Rule: 1, Slot: ns(sec(5)), Count: 5}}))
	must(b.SetHeld(map[int]protocol.Epoch{3: epA, 4: epA}, []int{7}))
	must(b.SetHeld(map[int]protocol.Epoch{7: epB}, []int{4})) // 7 back, 4 gone
	must(b.SaveEpochs(map[int]protocol.Epoch{3: epB}))
	must(b.SaveEpochs(map[int]protocol.Epoch{3: epA})) // lower: epB stays
	must(b.SaveFence("b", 4))
	must(b.SaveFence("b", 2)) // lower: 4 stays
	b.MarkReady(refs[:1])
	b.DropPending(refs[1:])
	before := txID(t, s)
	must(s.CommitProtocol(&b))
	if got := txID(t, s) - before; got != 1 {
		t.Errorf("CommitProtocol took %d transactions, want 1", got)
	}

	d, err := s.Durable()
	must(err)
	if want := map[int]protocol.Epoch{3: epA, 7: epB}; !reflect.DeepEqual(d.Held, want) {
		t.Errorf("held = %v, want %v", d.Held, want)
	}
	if d.Epochs[3] != epB {
		t.Errorf("epoch of partition 3 = %v, want %v", d.Epochs[3], epB)
	}
	if d.Fences["b"] != 4 {
		t.Errorf("fence of b = %d, want 4", d.Fences["b"])
	}
	if wm, ok := s.Watermark(1); !ok || wm.Slot != ns(sec(5)) {
		t.Errorf("watermark of rule 1 = %+v, %v; want slot %v", wm, ok, sec(5))
	}
	if n, _ := s.PendingLen(); n != 0 {
		t.Errorf("PendingLen() = %d, want 0", n)
	}
	if n, _ := s.OutboxLen(); n != 1 {
		t.Errorf("OutboxLen() = %d, want 1 (the one made ready)", n)
	}
	s = reopen(t, s)
	if n, _ := s.OutboxLen(); n != 1 {
		t.Errorf("OutboxLen() after reopen = %d, want 1", n)
	}

	b.Reset()
	if !b.Empty() {
		t.Error("a reset batch is not empty")
	}
	before = txID(t, s)
	must(s.CommitProtocol(&b))
	if txID(t, s) != before {
		t.Error("an empty batch committed a transaction")
	}
}

// TestProtocolBatchAllOrNothing: a part that fails (an event not pending) fails the
// whole batch, and none of its other writes land; bad input is refused when added.
func TestProtocolBatchAllOrNothing(t *testing.T) {
	s := openTest(t, Options{NoSync: true})
	if err := s.PutRules([]Rule{testRule(1)}, nil); err != nil {
		t.Fatal(err)
	}
	var b ProtocolBatch
	if err := b.MergeWatermarks([]protocol.Watermark{{Rule: 1, Slot: ns(sec(5)), Count: 5}}); err != nil {
		t.Fatal(err)
	}
	if err := b.SaveEpochs(map[int]protocol.Epoch{3: epB}); err != nil {
		t.Fatal(err)
	}
	if err := b.SaveFence("b", 4); err != nil {
		t.Fatal(err)
	}
	b.MarkReady([]protocol.EventRef{{Rule: 1, Slot: ns(sec(9)), Firer: incA}})
	if err := s.CommitProtocol(&b); !errors.Is(err, ErrNotFound) {
		t.Fatalf("CommitProtocol with an unknown event = %v, want ErrNotFound", err)
	}
	d, err := s.Durable()
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Epochs) != 0 || len(d.Fences) != 0 {
		t.Errorf("after a failed batch: epochs %v, fences %v; want none", d.Epochs, d.Fences)
	}
	if wm, ok := s.Watermark(1); ok && wm.Slot == ns(sec(5)) {
		t.Errorf("after a failed batch the watermark of rule 1 is %+v", wm)
	}

	var bad ProtocolBatch
	if err := bad.MergeWatermarks([]protocol.Watermark{{Rule: 0, Slot: 1}}); err == nil {
		t.Error("a watermark of rule 0 was taken")
	}
	if err := bad.SetHeld(map[int]protocol.Epoch{1: {N: 1}}, nil); err == nil {
		t.Error("an epoch without a node was taken")
	}
	if err := bad.SaveEpochs(map[int]protocol.Epoch{-1: epA}); err == nil {
		t.Error("partition -1 was taken")
	}
	if err := bad.SaveFence("", 1); err == nil {
		t.Error("a fence without a node was taken")
	}
	if !bad.Empty() {
		t.Error("refused input was kept in the batch")
	}
}
