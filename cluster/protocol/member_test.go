package protocol

import (
	"testing"
	"time"
)

type mapStore map[int64]Watermark

func (s mapStore) Watermark(rule int64) (Watermark, bool) { w, ok := s[rule]; return w, ok }
func (s mapStore) PartitionWatermarks(parts []int) []Watermark {
	var out []Watermark
	for _, w := range s {
		out = append(out, w)
	}
	return out
}

type oneOwner string

func (o oneOwner) Owner(int) string { return string(o) }

// A member acks a peer's fire records and stores them, except a slot more than the
// skew allowance ahead of its clock (it could hold the rule's slots back for as long)
// and anything from an incarnation it has fenced.
func TestFiredRefusesFutureSlotsAndFencedSenders(t *testing.T) {
	m, err := NewMember(MemberConfig{Self: Incarnation{"a", 1}, Expect: 3, Partitions: 4,
		PartitionOf: func(int64) int { return 0 }, Ring: func([]string) Ring { return oneOwner("a") },
		Store: mapStore{}}, Durable{Fences: map[string]uint64{"c": 2}})
	if err != nil {
		t.Fatal(err)
	}
	wall := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano()
	now := Time{Boot: time.Hour, Wall: wall}
	b := Incarnation{"b", 1}
	recs := []FireRecord{
		{Rule: 1, Prev: NoSlot, Slot: wall - int64(time.Second), Count: 1, Firer: b, Epoch: Epoch{1, "b"}},
		{Rule: 2, Prev: NoSlot, Slot: wall + int64(2*time.Minute), Count: 1, Firer: b, Epoch: Epoch{1, "b"}},
	}
	var saved []Watermark
	var ack *FiredAck
	for _, e := range m.Step(now, Receive{Msg: Fired{From: b, Seq: 7, Records: recs}}) {
		switch e := e.(type) {
		case SaveWatermarks:
			saved = append(saved, e.Watermarks...)
		case Send:
			if a, ok := e.Msg.(FiredAck); ok {
				ack = &a
			}
		}
	}
	if len(saved) != 1 || saved[0].Rule != 1 {
		t.Errorf("stored %+v, want rule 1 only (rule 2's slot is 2 minutes ahead)", saved)
	}
	if ack == nil || len(ack.Refused) != 1 || ack.Refused[0] != 1 {
		t.Errorf("ack %+v, want record 1 refused", ack)
	}
	if m.Stats().FutureRecords != 1 {
		t.Errorf("FutureRecords = %d, want 1", m.Stats().FutureRecords)
	}

	// c#2 is fenced here (a stored fence): its fires are not heard, not even acked.
	c := Incarnation{"c", 2}
	out := m.Step(now, Receive{Msg: Fired{From: c, Seq: 1, Records: []FireRecord{
		{Rule: 3, Prev: NoSlot, Slot: wall - int64(time.Second), Count: 1, Firer: c, Epoch: Epoch{1, "c"}}}}})
	if len(out) != 0 {
		t.Errorf("a fenced incarnation's fire produced %+v, want nothing", out)
	}
}
