package protocol

import (
	"slices"
	"testing"
	"time"
)

// W = min(Q, Replicas) stores hold a fire before it is delivered, and an acquisition
// reads N − W + 1: any read quorum meets any W stores of a fire.
func TestWriteAndReadQuorums(t *testing.T) {
	for _, c := range []struct{ n, replicas, w, r int }{
		{1, 0, 1, 1}, {3, 0, 2, 2}, {5, 0, 3, 3}, {10, 0, 6, 5},
		{3, 3, 2, 2}, {5, 3, 3, 3}, {7, 3, 3, 5}, {10, 3, 3, 8}, {100, 3, 3, 98},
		{5, 2, 2, 4}, {10, 20, 6, 5},
	} {
		m, err := NewMember(MemberConfig{Self: Incarnation{"a", 1}, Expect: c.n, Replicas: c.replicas, Partitions: 4,
			PartitionOf: func(int64) int { return 0 }, Ring: func([]string) Ring { return oneOwner("a") },
			Store: mapStore{}}, Durable{})
		if err != nil {
			t.Fatal(err)
		}
		if w, r := m.writeQuorum(), m.readQuorum(); w != c.w || r != c.r {
			t.Errorf("N %d, Replicas %d: W %d, read %d; want %d, %d", c.n, c.replicas, w, r, c.w, c.r)
		}
		if c.r+c.w <= c.n {
			t.Fatalf("bad case: %d + %d ≤ %d", c.r, c.w, c.n)
		}
	}
	if err := (MemberConfig{Self: Incarnation{"a", 1}, Expect: 3, Partitions: 1, Replicas: 1,
		PartitionOf: func(int64) int { return 0 }, Ring: func([]string) Ring { return oneOwner("a") },
		Store: mapStore{}}).Validate(); err == nil {
		t.Error("Replicas 1 (no copy but the firer's) accepted")
	}
}

// sevenWithReplicas3 is member a of 7 with W = 3, 64 partitions (rule r in r mod 64)
// given to the members in turn by name.
func sevenWithReplicas3(t *testing.T) *Member {
	t.Helper()
	m, err := NewMember(MemberConfig{Self: Incarnation{"a", 1}, Expect: 7, Replicas: 3, Partitions: 64,
		PartitionOf: func(r int64) int { return int(r) % 64 },
		Ring:        func(names []string) Ring { return byName(slices.Sorted(slices.Values(names))) },
		Store:       mapStore{}}, Durable{})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// byName is a ring that gives partition p to the members in turn, by name.
type byName []string

func (r byName) Owner(p int) string { return r[p%len(r)] }

// A fire of partition p goes first to the member that would take p over (the owner by
// the view without the firer), then to others from p's place in the view; only live,
// unfenced members, unless too few are.
func TestReplicasOfPreferTheSuccessorAndLiveMembers(t *testing.T) {
	m := sevenWithReplicas3(t)
	now := Time{Boot: time.Hour, Wall: 1}
	peers := []string{"b", "c", "d", "e", "f", "g"}
	for _, p := range peers {
		m.Step(now, Receive{Msg: Heartbeat{From: Incarnation{p, 1}, Seq: 1, Expect: 7, Wall: 1}})
	}
	m.Step(now, Tick{})
	if m.succ == nil {
		t.Fatal("no successor ring with fires going to 3 of 6 members")
	}
	to := m.recipients()
	seen := map[string]int{}
	for p := range 64 {
		got := m.replicasOf(p, 3, to)
		if len(got) != 3 || slices.Contains(got, "a") || got[0] != m.succ.Owner(p) {
			t.Fatalf("replicas of %d = %v; want 3 others, the successor %s first", p, got, m.succ.Owner(p))
		}
		for _, n := range got {
			seen[n]++
		}
	}
	for _, p := range peers {
		if seen[p] < 64*3/len(peers)/2 {
			t.Errorf("member %s is a replica of %d of 64 partitions: the load is not spread (%v)", p, seen[p], seen)
		}
	}
	// b falls silent: it is passed over once it is no longer live.
	later := Time{Boot: now.Boot + DefaultLease + DefaultFenceMargin + time.Millisecond, Wall: 2}
	for _, p := range peers[1:] {
		m.Step(later, Receive{Msg: Heartbeat{From: Incarnation{p, 1}, Seq: 2, Expect: 7, Wall: 2}})
	}
	for p := range 64 {
		if got := m.replicasOf(p, 3, to); slices.Contains(got, "b") || len(got) != 3 {
			t.Fatalf("replicas of %d with b silent = %v; want 3 live ones", p, got)
		}
	}
	// Too few live members: the others are asked too (any W stores do).
	if got := m.replicasOf(0, 6, to); len(got) != 6 || !slices.Contains(got, "b") {
		t.Errorf("6 replicas with 5 live = %v; want b too", got)
	}
}

// Members set differently (a rolling change of TIMERD_REPLICAS) write with the largest
// W of any live member and read for the smallest, so that any read meets any write;
// a member that falls silent stops counting. The mismatch is counted once a member.
func TestMixedReplicasWriteMostReadForFewest(t *testing.T) {
	for _, c := range []struct {
		self, peers int // Replicas: this member's, and half of its nine peers'
		w, r        int // with those peers live
	}{
		{3, 0, 6, 8}, // going from a majority to 3 (or back): W 6, read 10 − 3 + 1
		{0, 3, 6, 8},
		{3, 3, 3, 8},
		{2, 3, 3, 9},
	} {
		m, err := NewMember(MemberConfig{Self: Incarnation{"a", 1}, Expect: 10, Replicas: c.self, Partitions: 4,
			PartitionOf: func(int64) int { return 0 }, Ring: func([]string) Ring { return oneOwner("a") },
			Store: mapStore{}}, Durable{})
		if err != nil {
			t.Fatal(err)
		}
		peers := []string{"b", "c", "d", "e", "f", "g", "h", "i", "j"}
		beat := func(now Time, onlySame bool) { // b, d, f, h, j are set as c.peers, the others as self
			for i, p := range peers {
				r := c.self
				if i%2 == 0 {
					if onlySame {
						continue
					}
					r = c.peers
				}
				m.Step(now, Receive{Msg: Heartbeat{From: Incarnation{p, 1}, Seq: uint64(now.Wall), Expect: 10, Replicas: r, Wall: 1}})
			}
		}
		now := Time{Boot: time.Hour, Wall: 1}
		beat(now, false)
		beat(now, false)
		if w, r := m.writeQuorum(), m.readQuorum(); w != c.w || r != c.r {
			t.Errorf("Replicas %d, peers' %d: W %d, read %d; want %d, %d", c.self, c.peers, w, r, c.w, c.r)
		}
		wantMismatch := uint64(0)
		if c.self != c.peers {
			wantMismatch = 5 // b, d, f, h, j; once each
		}
		if got := m.Stats().MismatchedReplicas; got != wantMismatch {
			t.Errorf("Replicas %d, peers' %d: MismatchedReplicas %d, want %d", c.self, c.peers, got, wantMismatch)
		}
		// The differently set ones fall silent: this member's own setting counts again.
		beat(Time{Boot: now.Boot + DefaultLease + DefaultFenceMargin + time.Millisecond, Wall: 2}, true)
		want := 6
		if c.self > 0 && c.self < 6 {
			want = c.self
		}
		if w, r := m.writeQuorum(), m.readQuorum(); w != want || r != 10-want+1 {
			t.Errorf("Replicas %d, the others silent: W %d, read %d; want %d, %d", c.self, w, r, want, 10-want+1)
		}
	}
}

// A fire goes to W − 1 replicas while they are heard; when one has been quiet for two
// heartbeat intervals, to one more (the spare), so that it does not wait for the
// resend; once the quiet one is no longer live, to W − 1 live ones again.
func TestSpareOnlyForAQuietReplica(t *testing.T) {
	m := sevenWithReplicas3(t)
	peers := []string{"b", "c", "d", "e", "f", "g"}
	beat := func(now Time, except string) {
		for _, p := range peers {
			if p != except {
				m.Step(now, Receive{Msg: Heartbeat{From: Incarnation{p, 1}, Seq: uint64(now.Boot), Expect: 7, Replicas: 3, Wall: 1}})
			}
		}
	}
	sentTo := func(now Time, rule int64) []string {
		m.Step(now, Tick{})
		m.out = nil
		m.replicate([]FireRecord{{Rule: rule, Slot: now.Wall, Count: 1, Firer: m.self}})
		var to []string
		for _, e := range m.out {
			if s, ok := e.(Send); ok {
				if _, ok := s.Msg.(Fired); ok {
					to = append(to, s.To)
				}
			}
		}
		slices.Sort(to)
		return to
	}
	now := Time{Boot: time.Hour, Wall: 1}
	beat(now, "")
	to := sentTo(now, 5)
	if len(to) != 2 {
		t.Fatalf("every replica heard: a fire went to %v, want 2 members (W − 1)", to)
	}
	quiet := to[0]
	// quiet misses two heartbeats and more; the others beat on.
	for d := DefaultHeartbeat; d <= 3*DefaultHeartbeat; d += DefaultHeartbeat {
		beat(Time{Boot: now.Boot + d, Wall: 2}, quiet)
	}
	later := Time{Boot: now.Boot + 3*DefaultHeartbeat, Wall: 3}
	if got := sentTo(later, 5); len(got) != 3 || !slices.Contains(got, quiet) {
		t.Errorf("%s quiet for %v: a fire went to %v, want 3 members, %s among them", quiet, 3*DefaultHeartbeat, got, quiet)
	}
	// Past the lease and margin it is no longer live: W − 1 live ones.
	gone := Time{Boot: now.Boot + DefaultLease + DefaultFenceMargin + time.Millisecond, Wall: 4}
	beat(gone, quiet)
	if got := sentTo(gone, 5); len(got) != 2 || slices.Contains(got, quiet) {
		t.Errorf("%s no longer live: a fire went to %v, want 2 others", quiet, got)
	}
}
