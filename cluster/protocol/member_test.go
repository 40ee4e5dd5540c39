package protocol

import (
	"slices"
	"strings"
	"testing"
	"time"
)

type mapStore map[int64]Watermark

func (s mapStore) Watermark(rule int64) (Watermark, bool) { w, ok := s[rule]; return w, ok }
func (s mapStore) FiredWatermarks(parts []int) []Watermark {
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

func newTestMember(t *testing.T, self string, expect int, st mapStore) *Member {
	t.Helper()
	m, err := NewMember(MemberConfig{Self: Incarnation{self, 1}, Expect: expect, Partitions: 4,
		PartitionOf: func(int64) int { return 0 }, Ring: func([]string) Ring { return oneOwner("z") },
		Store: st}, Durable{})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func sent[T Message](out []Effect) []T {
	var msgs []T
	for _, e := range out {
		if s, ok := e.(Send); ok {
			if m, ok := s.Msg.(T); ok {
				msgs = append(msgs, m)
			}
		}
	}
	return msgs
}

// A peer that expects another cluster size is acked and counted; both count the larger
// N, so quorums of the two sizes still meet during a rolling change of TIMERD_EXPECT.
func TestExpectMismatchCountsTheLarger(t *testing.T) {
	m := newTestMember(t, "a", 3, mapStore{})
	now := Time{Boot: time.Hour, Wall: 1}
	out := m.Step(now, Receive{Msg: Heartbeat{From: Incarnation{"b", 1}, Seq: 1, Expect: 4, Wall: 1}})
	acks := sent[HeartbeatAck](out)
	if len(acks) != 1 || acks[0].Fenced || acks[0].Mismatch {
		t.Fatalf("answer to a peer expecting 4 = %+v, want one plain ack", acks)
	}
	if q := m.Quorum(); q != 3 {
		t.Errorf("quorum with a peer expecting 4 = %d, want 3 (of N = 4)", q)
	}
	if m.Stats().MismatchedPeers != 1 {
		t.Errorf("MismatchedPeers = %d, want 1", m.Stats().MismatchedPeers)
	}
}

// A leaving member's store is merged once per chunk, acknowledged every time, and a
// watermark from too far ahead is left out; the promised epochs it carries are kept.
func TestTransferIsMergedOnceAndAcknowledged(t *testing.T) {
	m := newTestMember(t, "a", 3, mapStore{})
	wall := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano()
	now := Time{Boot: time.Hour, Wall: wall}
	b := Incarnation{"b", 2}
	tr := Transfer{From: b, ID: 1, Chunk: 0, Chunks: 2, Epochs: []PartitionEpoch{{Partition: 2, Epoch: Epoch{5, "c"}}},
		Watermarks: []Watermark{{Rule: 1, Slot: wall - int64(time.Second), Count: 3},
			{Rule: 2, Slot: wall + int64(time.Hour), Count: 1}}}
	out := m.Step(now, Receive{Msg: tr})
	var saved []Watermark
	var epochs map[int]Epoch
	for _, e := range out {
		switch e := e.(type) {
		case SaveWatermarks:
			saved = append(saved, e.Watermarks...)
		case SaveEpochs:
			epochs = e.Epochs
		}
	}
	if len(saved) != 1 || saved[0].Rule != 1 {
		t.Errorf("merged %+v, want rule 1 only (rule 2 is an hour ahead)", saved)
	}
	if epochs[2] != (Epoch{5, "c"}) {
		t.Errorf("epochs saved %+v, want partition 2 at 5/c", epochs)
	}
	if acks := sent[TransferAck](out); len(acks) != 1 || acks[0] != (TransferAck{From: m.Self(), To: b, ID: 1, Chunk: 0}) {
		t.Errorf("acks %+v, want chunk 0 of copy 1 acknowledged", acks)
	}
	// The same chunk again (resent while this member was busy): acknowledged, not merged.
	out = m.Step(now, Receive{Msg: tr})
	if len(sent[TransferAck](out)) != 1 || len(out) != 1 {
		t.Errorf("a chunk merged before, again: %+v, want only its ack", out)
	}
}

// A leaving member retires cleanly (the others stop counting it) only once a quorum
// of the cluster without it holds its store; forced before, it retires not cleanly.
func TestLeaveRetiresCleanlyOnceAQuorumHoldsTheStore(t *testing.T) {
	for _, force := range []bool{false, true} {
		m := newTestMember(t, "a", 1, mapStore{7: {Rule: 7, Slot: 100, Count: 1}})
		now := Time{Boot: time.Hour, Wall: 1000}
		peers := []Incarnation{{"b", 1}, {"c", 1}, {"d", 1}, {"e", 1}}
		for _, p := range peers {
			m.Step(now, Receive{Msg: Heartbeat{From: p, Seq: 1, Expect: 1, Wall: 1000}})
		}
		// N = 5: retiring cleanly takes copies at Q(4) = 3 members.
		now.Boot += time.Millisecond
		out := m.Step(now, Leave{})
		chunks := sent[Transfer](out)
		if len(chunks) != len(peers) || len(chunks[0].Watermarks) != 1 {
			t.Fatalf("leave sent %d chunks (%+v), want one with rule 7 to each of 4 members", len(chunks), chunks)
		}
		var retired []Retired
		for i, p := range peers[:3] {
			now.Boot += time.Millisecond
			out = m.Step(now, Receive{Msg: TransferAck{From: p, To: m.Self(), ID: chunks[0].ID, Chunk: 0}})
			out = append(out, m.Step(now, Tick{})...)
			retired = sent[Retired](out)
			if i < 2 && len(retired) > 0 {
				t.Fatalf("retired after %d acks: %+v, want 3", i+1, retired)
			}
			if i == 1 && force {
				out = m.Step(now, Leave{Force: true})
				if r := sent[Retired](out); len(r) == 0 || r[0].Clean {
					t.Fatalf("forced with 2 of 3 copies: %+v, want a retirement that is not clean", r)
				}
				break
			}
		}
		if !force && (len(retired) == 0 || !retired[0].Clean) {
			t.Errorf("after 3 copies: %+v, want a clean retirement", retired)
		}
		if !m.Retired() {
			t.Errorf("force %v: not retired", force)
		}
	}
}

// A grant's watermarks are a peer's word too: one whose slot is later than now
// plus the skew allowance (a forged or broken peer) would hold the rule's slots
// back for as long. It is refused and counted; the others are taken.
func TestGrantRefusesFutureWatermarks(t *testing.T) {
	m, err := NewMember(MemberConfig{Self: Incarnation{"a", 1}, Expect: 3, Partitions: 1,
		PartitionOf: func(int64) int { return 0 }, Ring: func([]string) Ring { return oneOwner("a") },
		Store: mapStore{}}, Durable{})
	if err != nil {
		t.Fatal(err)
	}
	wall := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano()
	now := Time{Boot: time.Hour, Wall: wall}
	peers := []Incarnation{{"b", 1}, {"c", 1}}
	m.Step(now, Known{Names: []string{"a", "b", "c"}})
	for _, p := range peers {
		m.Step(now, Receive{Msg: Heartbeat{From: p, Seq: 1, Expect: 3, Wall: wall}})
	}
	m.Step(now, Ready{})
	var asks []Acquire
	for i := 0; i < 5 && len(asks) == 0; i++ {
		now.Boot += 100 * time.Millisecond
		out := m.Step(now, Tick{})
		for _, hb := range sent[Heartbeat](out) {
			for _, p := range peers {
				out = append(out, m.Step(now, Receive{Msg: HeartbeatAck{From: p, To: m.Self(), Seq: hb.Seq, Wall: wall, Echo: hb.Wall}})...)
			}
			break
		}
		out = append(out, m.Step(now, Tick{})...)
		asks = sent[Acquire](out)
	}
	if len(asks) == 0 {
		t.Fatal("a asked nobody for its partition")
	}
	good := Watermark{Rule: 1, Slot: wall - int64(time.Second), Count: 3}
	future := Watermark{Rule: 2, Slot: wall + int64(time.Hour), Count: 1}
	var started []StartFiring
	warned := 0
	for _, p := range peers {
		g := Grant{From: p, To: m.Self(), ID: asks[0].ID, Granted: []int{0}, Members: append(peers, m.Self()),
			Watermarks: []Watermark{good, future}}
		for _, e := range m.Step(now, Receive{Msg: g}) {
			switch e := e.(type) {
			case StartFiring:
				started = append(started, e)
			case Log:
				if e.Warn && strings.Contains(e.Msg, "later than now plus the skew allowance") {
					warned++
				}
			}
		}
	}
	if warned != 1 {
		t.Errorf("warned %d times of the refused watermarks, want once (at most once a minute)", warned)
	}
	if len(started) != 1 {
		t.Fatalf("StartFiring %d times after a quorum of grants, want once", len(started))
	}
	for _, w := range started[0].Watermarks {
		if w.Rule == future.Rule {
			t.Errorf("a started firing with rule 2's watermark an hour ahead: %+v", w)
		}
	}
	if len(started[0].Watermarks) != 1 || started[0].Watermarks[0].Rule != good.Rule {
		t.Errorf("StartFiring watermarks %+v, want rule 1's", started[0].Watermarks)
	}
	if got := m.Stats().FutureRecords; got != 2 {
		t.Errorf("FutureRecords = %d, want 2 (one from each grant)", got)
	}
}

// A grant and a store copy carry the watermarks of rules that fired (a count or a
// chain), not those of rules never fired: their anchors, which every member holds
// with the rule.
func TestGrantAndCopyCarryOnlyFiredWatermarks(t *testing.T) {
	chain := Chain{{From: 50, Last: 50, Firer: Incarnation{"c", 1}, Epoch: Epoch{N: 1, Node: "c"}}}
	store := mapStore{
		1: {Rule: 1, Slot: 100},                       // anchor only
		2: {Rule: 2, Slot: 200, Count: 2},             // fired here
		3: {Rule: 3, Slot: 300, Chain: chain},         // rescheduled after fires (count reset, chain kept)
		4: {Rule: 4, Slot: 400, Count: 0, Chain: nil}, // anchor only
	}
	m := newTestMember(t, "a", 1, store)
	now := Time{Boot: time.Hour, Wall: 1000}
	b := Incarnation{"b", 1}
	m.Step(now, Receive{Msg: Heartbeat{From: b, Seq: 1, Expect: 1, Wall: 1000}})
	out := m.Step(now, Receive{Msg: Acquire{From: b, ID: 1, Parts: []PartitionEpoch{{Partition: 0, Epoch: Epoch{N: 1, Node: "b"}}}}})
	grants := sent[Grant](out)
	if len(grants) != 1 || len(grants[0].Granted) != 1 {
		t.Fatalf("grants %+v, want partition 0 granted", grants)
	}
	var rules []int64
	for _, w := range grants[0].Watermarks {
		rules = append(rules, w.Rule)
	}
	slices.Sort(rules)
	if !slices.Equal(rules, []int64{2, 3}) {
		t.Errorf("the grant carries the watermarks of rules %v, want [2 3] (those that fired)", rules)
	}
	now.Boot += time.Millisecond
	chunks := sent[Transfer](m.Step(now, Leave{}))
	if len(chunks) != 1 || len(chunks[0].Watermarks) != 2 {
		t.Errorf("the leave's copy: %+v, want one chunk of rules 2 and 3", chunks)
	}
}
