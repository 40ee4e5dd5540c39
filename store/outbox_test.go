package store

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/timerd/timerd/cluster/protocol"
	"github.com/timerd/timerd/test/testkit"
)

func TestCommitFires(t *testing.T) {
	s := openTest(t, Options{NoSync: true})
	if err := s.PutRules([]Rule{testRule(1), testRule(2)}, []*Watermark{{Slot: t0, Count: 0}, nil}); err != nil {
		t.Fatal(err)
	}
	s1, s2 := t0.Add(time.Minute), t0.Add(2*time.Minute)
	recs := []FireRecord{
		testFire(1, s1, 1),
		testFire(2, s1, 1),
		testFire(1, s2, 2), // a second slot of rule 1 in the same batch
		testFire(3, s1, 9), // rule 3 is not stored: outbox entry, no watermark
	}
	if err := s.CommitFires(recs); err != nil {
		t.Fatalf("CommitFires: %v", err)
	}
	s = reopen(t, s)

	wantWM := map[int64]Watermark{1: {Slot: s2, Count: 2}, 2: {Slot: s1, Count: 1}}
	for id, want := range wantWM {
		if _, wm, ok, err := s.Rule(id); err != nil || !ok || !wmEqual(wm, want) {
			t.Errorf("Rule(%d) watermark = %+v (ok %v, err %v), want %+v", id, wm, ok, err, want)
		}
	}
	if _, _, ok, _ := s.Rule(3); ok {
		t.Errorf("Rule(3) found after CommitFires; a fire must not create a rule")
	}
	got, err := s.Outbox(0, 100)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(recs) {
		t.Fatalf("Outbox(0, 100) = %d entries, want %d", len(got), len(recs))
	}
	for i, e := range got {
		if e.Seq != uint64(i+1) || !eventEqual(e.Event, recs[i].Event) || e.CreatedAt.IsZero() {
			t.Errorf("Outbox entry %d = %+v, want seq %d event %+v", i, e, i+1, recs[i].Event)
		}
	}
	if n, err := s.OutboxLen(); err != nil || n != len(recs) {
		t.Errorf("OutboxLen() = %d, %v; want %d", n, err, len(recs))
	}
}

func TestCommitFiresWatermarkNeverMovesBack(t *testing.T) {
	s := openTest(t, Options{NoSync: true})
	later := Watermark{Slot: t0.Add(time.Hour), Count: 10}
	if err := s.PutRule(testRule(1), &later); err != nil {
		t.Fatal(err)
	}
	if err := s.CommitFires([]FireRecord{testFire(1, t0, 3)}); err != nil {
		t.Fatal(err)
	}
	if _, wm, _, _ := s.Rule(1); !wmEqual(wm, later) {
		t.Errorf("watermark after an older fire = %+v, want unchanged %+v", wm, later)
	}
	if n, _ := s.OutboxLen(); n != 1 {
		t.Errorf("OutboxLen() = %d, want 1: the older fire is still delivered", n)
	}
}

func TestCommitFiresSkipped(t *testing.T) {
	s := openTest(t, Options{NoSync: true})
	if err := s.PutRules([]Rule{testRule(1), testRule(2)}, nil); err != nil {
		t.Fatal(err)
	}
	s1, s2 := t0.Add(time.Minute), t0.Add(2*time.Minute)
	skipped := testFire(1, s2, 2)
	skipped.Skipped = true
	recs := []FireRecord{testFire(1, s1, 1), skipped, testFire(2, s1, 1)}
	if err := s.CommitFires(recs); err != nil {
		t.Fatalf("CommitFires: %v", err)
	}
	s = reopen(t, s)
	if _, wm, _, _ := s.Rule(1); !wmEqual(wm, Watermark{Slot: s2, Count: 2}) {
		t.Errorf("rule 1 watermark = %+v, want the skipped slot %v count 2", wm, s2)
	}
	got, err := s.Outbox(0, 100)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Event.RuleID != 1 || !got[0].Event.Slot.Equal(s1) || got[1].Event.RuleID != 2 {
		t.Errorf("Outbox = %+v, want rule 1 at %v and rule 2: no entry for the skipped slot", got, s1)
	}
	if n, err := s.OutboxLen(); err != nil || n != 2 {
		t.Errorf("OutboxLen() = %d, %v; want 2", n, err)
	}
}

func TestCommitFiresInvalidWritesNothing(t *testing.T) {
	tests := []struct {
		name string
		recs []FireRecord
		want string
	}{
		{"zero rule id", []FireRecord{testFire(1, t0, 1), testFire(0, t0, 1)}, "rule id 0"},
		{"slot out of range", []FireRecord{testFire(1, time.Date(2300, 1, 1, 0, 0, 0, 0, time.UTC), 1)}, "1678"},
	}
	s := openTest(t, Options{NoSync: true})
	if err := s.PutRule(testRule(1), nil); err != nil {
		t.Fatal(err)
	}
	for _, tc := range tests {
		if err := s.CommitFires(tc.recs); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: CommitFires err = %v, want one containing %q", tc.name, err, tc.want)
		}
		if n, _ := s.OutboxLen(); n != 0 {
			t.Errorf("%s: OutboxLen() = %d after a refused batch, want 0", tc.name, n)
		}
		if _, wm, _, _ := s.Rule(1); !wmEqual(wm, Watermark{}) {
			t.Errorf("%s: watermark = %+v after a refused batch, want zero", tc.name, wm)
		}
	}
}

// A failure inside the transaction, after earlier records were written, must leave
// neither their outbox entries nor their watermarks.
func TestCommitFiresAtomic(t *testing.T) {
	s := openTest(t, Options{NoSync: true})
	if err := s.PutRules([]Rule{testRule(1), testRule(2)}, nil); err != nil {
		t.Fatal(err)
	}
	path := s.Path()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// Damage rule 2's watermark behind the store's back.
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketWatermarks).Put(idKey(2), []byte{1, 2, 3})
	}); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = Open(path, Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	err = s.CommitFires([]FireRecord{testFire(1, t0, 1), testFire(2, t0, 1)})
	if !errors.Is(err, ErrCorrupt) {
		t.Fatalf("CommitFires over a damaged watermark: err %v, want ErrCorrupt", err)
	}
	s = reopen(t, s)
	if n, _ := s.OutboxLen(); n != 0 {
		t.Errorf("OutboxLen() after failed commit = %d, want 0", n)
	}
	if e, _ := s.Outbox(0, 10); len(e) != 0 {
		t.Errorf("Outbox after failed commit = %+v, want none", e)
	}
	if _, wm, _, _ := s.Rule(1); !wmEqual(wm, Watermark{}) {
		t.Errorf("rule 1 watermark after failed commit = %+v, want zero", wm)
	}
}

func TestOutboxPagingAndAck(t *testing.T) {
	s := openTest(t, Options{NoSync: true})
	var recs []FireRecord
	for i := range 25 {
		recs = append(recs, testFire(int64(i+1), t0, 1))
	}
	if err := s.CommitFires(recs); err != nil {
		t.Fatal(err)
	}
	var seen []uint64
	after := uint64(0)
	for {
		page, err := s.Outbox(after, 10)
		if err != nil {
			t.Fatal(err)
		}
		if len(page) == 0 {
			break
		}
		if len(page) > 10 {
			t.Fatalf("Outbox(%d, 10) returned %d entries", after, len(page))
		}
		for _, e := range page {
			seen = append(seen, e.Seq)
		}
		after = page[len(page)-1].Seq
	}
	if len(seen) != 25 || seen[0] != 1 || seen[24] != 25 {
		t.Fatalf("paged seqs = %v, want 1…25", seen)
	}

	// Ack odd seqs, some twice and one unknown.
	var odd []uint64
	for seq := uint64(1); seq <= 25; seq += 2 {
		odd = append(odd, seq)
	}
	if err := s.AckOutbox(append(odd, 1, 3, 999)...); err != nil {
		t.Fatal(err)
	}
	if err := s.AckOutbox(); err != nil {
		t.Errorf("AckOutbox() with no seqs: %v", err)
	}
	s = reopen(t, s)
	if n, err := s.OutboxLen(); err != nil || n != 12 {
		t.Errorf("OutboxLen() after acking 13 = %d, %v; want 12", n, err)
	}
	rest, err := s.Outbox(0, 100)
	if err != nil {
		t.Fatal(err)
	}
	for i, e := range rest {
		if want := uint64(2 * (i + 1)); e.Seq != want {
			t.Errorf("Outbox after ack: entry %d seq %d, want %d", i, e.Seq, want)
		}
	}
	// New entries keep counting up: a seq is never reused.
	if err := s.CommitFires([]FireRecord{testFire(1, t0, 2)}); err != nil {
		t.Fatal(err)
	}
	if e, _ := s.Outbox(24, 10); len(e) != 1 || e[0].Seq != 26 {
		t.Errorf("Outbox(24, 10) after a new commit = %+v, want seq 26", e)
	}

	for _, limit := range []int{0, -1} {
		if _, err := s.Outbox(0, limit); err == nil {
			t.Errorf("Outbox(0, %d): no error, want one", limit)
		}
	}
	if e, err := s.Outbox(^uint64(0), 10); err != nil || len(e) != 0 {
		t.Errorf("Outbox(MaxUint64, 10) = %v, %v; want nothing", e, err)
	}
}

func TestDeadLetter(t *testing.T) {
	s := openTest(t, Options{NoSync: true})
	recs := []FireRecord{testFire(1, t0, 1), testFire(2, t0, 1), testFire(3, t0, 1)}
	if err := s.CommitFires(recs); err != nil {
		t.Fatal(err)
	}
	if err := s.DeadLetter(2, "422 unknown trigger", 422); err != nil {
		t.Fatalf("DeadLetter(2): %v", err)
	}
	if err := s.DeadLetter(3, "", 0); err != nil {
		t.Fatalf("DeadLetter(3): %v", err)
	}
	for _, seq := range []uint64{2, 99} {
		if err := s.DeadLetter(seq, "again", 400); !errors.Is(err, ErrNotFound) {
			t.Errorf("DeadLetter(%d) of a missing entry: err %v, want ErrNotFound", seq, err)
		}
	}
	s = reopen(t, s)
	if n, err := s.OutboxLen(); err != nil || n != 1 {
		t.Errorf("OutboxLen() = %d, %v; want 1", n, err)
	}
	if n, err := s.DeadLetterCount(); err != nil || n != 2 {
		t.Errorf("DeadLetterCount() = %d, %v; want 2", n, err)
	}
	dls, err := s.DeadLetters(0, 10)
	if err != nil || len(dls) != 2 {
		t.Fatalf("DeadLetters(0, 10) = %+v, %v; want 2", dls, err)
	}
	d := dls[0]
	if d.Seq != 2 || d.Reason != "422 unknown trigger" || d.Status != 422 || d.At.IsZero() || !eventEqual(d.Event, recs[1].Event) {
		t.Errorf("DeadLetters[0] = %+v, want seq 2, reason, status 422 and the event of rule 2", d)
	}
	if page, _ := s.DeadLetters(2, 10); len(page) != 1 || page[0].Seq != 3 || page[0].Status != 0 {
		t.Errorf("DeadLetters(2, 10) = %+v, want only seq 3 with status 0", page)
	}
	if err := s.DeleteDeadLetters(2, 7); err != nil {
		t.Fatal(err)
	}
	if n, _ := s.DeadLetterCount(); n != 1 {
		t.Errorf("DeadLetterCount() after deleting one = %d, want 1", n)
	}
}

// OutboxOldest names the commit time of the oldest deliverable entry, and moves on as
// entries are delivered; an empty outbox has none.
func TestOutboxOldest(t *testing.T) {
	s := openTest(t, Options{NoSync: true})
	if _, ok, err := s.OutboxOldest(); ok || err != nil {
		t.Fatalf("empty outbox: OutboxOldest = %v, %v; want none", ok, err)
	}
	before := time.Now()
	if err := s.CommitFires([]FireRecord{testFire(1, t0, 1)}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond)
	mid := time.Now()
	if err := s.CommitFires([]FireRecord{testFire(2, t0, 1)}); err != nil {
		t.Fatal(err)
	}
	at, ok, err := s.OutboxOldest()
	if err != nil || !ok || at.Before(before.Add(-time.Millisecond)) || !at.Before(mid) {
		t.Fatalf("OutboxOldest = %v, %v, %v; want the first commit's time, between %v and %v", at, ok, err, before, mid)
	}
	page, err := s.Outbox(0, 1)
	if err != nil || len(page) != 1 {
		t.Fatal(page, err)
	}
	if err := s.AckOutbox(page[0].Seq); err != nil {
		t.Fatal(err)
	}
	if at, ok, err = s.OutboxOldest(); err != nil || !ok || at.Before(mid) {
		t.Errorf("after the first was delivered: OutboxOldest = %v, %v, %v; want the second's time (after %v)", at, ok, err, mid)
	}
}

// A redriven dead letter is back in the outbox, after every entry there, with its
// Idempotency-Key, body and fire unchanged; unknown seqs are skipped; the counters
// follow, also across a reopen.
func TestRedriveDeadLetters(t *testing.T) {
	s := openTest(t, Options{NoSync: true})
	recs := []FireRecord{testFire(1, t0, 1), testFire(2, t0, 1), testFire(3, t0, 1), testFire(4, t0, 1)}
	// Seq 2 is a fire of the protocol: its ref must survive the round trip.
	recs[1].Firer, recs[1].Epoch, recs[1].Ready = protocol.Incarnation{Node: "n1", N: 3}, protocol.Epoch{Node: "n1", N: 1}, true
	if err := s.CommitFires(recs); err != nil {
		t.Fatal(err)
	}
	before, _ := s.Outbox(0, 10)
	if before[1].Firer.Node != "n1" {
		t.Fatalf("outbox entry 2 = %+v, want a fire of n1", before[1])
	}
	for _, seq := range []uint64{1, 2, 3} {
		if err := s.DeadLetter(seq, "400 Bad Request", 400); err != nil {
			t.Fatalf("DeadLetter(%d): %v", seq, err)
		}
	}
	moved, err := s.RedriveDeadLetters(2, 2, 99)
	if err != nil || len(moved) != 1 || moved[0] != 2 {
		t.Fatalf("RedriveDeadLetters(2, 2, 99) = %v, %v; want [2]", moved, err)
	}
	s = reopen(t, s)
	if n, _ := s.DeadLetterCount(); n != 2 {
		t.Errorf("DeadLetterCount() = %d, want 2", n)
	}
	if n, _ := s.OutboxLen(); n != 2 {
		t.Errorf("OutboxLen() = %d, want 2 (seq 4 and the redriven one)", n)
	}
	out, err := s.Outbox(0, 10)
	if err != nil || len(out) != 2 {
		t.Fatalf("Outbox = %+v, %v; want 2 entries", out, err)
	}
	got := out[1]
	if out[0].Seq != 4 || got.Seq <= 4 {
		t.Errorf("outbox seqs %d, %d; want 4 then the redriven entry after it", out[0].Seq, got.Seq)
	}
	if !eventEqual(got.Event, recs[1].Event) {
		t.Errorf("redriven event = %+v, want %+v", got.Event, recs[1].Event)
	}
	if got.Ref() != before[1].Ref() {
		t.Errorf("redriven ref = %+v, want %+v", got.Ref(), before[1].Ref())
	}
	if !got.CreatedAt.After(before[1].CreatedAt) {
		t.Errorf("redriven CreatedAt %v, want after the first commit %v", got.CreatedAt, before[1].CreatedAt)
	}

	all, err := s.RedriveDeadLetters()
	if err != nil || len(all) != 2 || all[0] != 1 || all[1] != 3 {
		t.Fatalf("RedriveDeadLetters() = %v, %v; want [1 3]", all, err)
	}
	if n, _ := s.DeadLetterCount(); n != 0 {
		t.Errorf("DeadLetterCount() after redriving all = %d, want 0", n)
	}
	if n, _ := s.OutboxLen(); n != 4 {
		t.Errorf("OutboxLen() after redriving all = %d, want 4", n)
	}
	if none, err := s.RedriveDeadLetters(); err != nil || len(none) != 0 {
		t.Errorf("RedriveDeadLetters() with none = %v, %v; want nothing", none, err)
	}
}

// The retention deletes only the dead letters written before the cutoff.
func TestDeleteDeadLettersBefore(t *testing.T) {
	s := openTest(t, Options{NoSync: true})
	if err := s.CommitFires([]FireRecord{testFire(1, t0, 1), testFire(2, t0, 1), testFire(3, t0, 1)}); err != nil {
		t.Fatal(err)
	}
	if err := s.DeadLetter(1, "old", 400); err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond)
	cutoff := time.Now()
	for _, seq := range []uint64{2, 3} {
		if err := s.DeadLetter(seq, "new", 400); err != nil {
			t.Fatal(err)
		}
	}
	n, err := s.DeleteDeadLettersBefore(cutoff)
	if err != nil || n != 1 {
		t.Fatalf("DeleteDeadLettersBefore = %d, %v; want 1", n, err)
	}
	dls, _ := s.DeadLetters(0, 10)
	if len(dls) != 2 || dls[0].Seq != 2 || dls[1].Seq != 3 {
		t.Errorf("dead letters left %+v, want seqs 2 and 3", dls)
	}
	s = reopen(t, s)
	if c, _ := s.DeadLetterCount(); c != 2 {
		t.Errorf("DeadLetterCount() after reopen = %d, want 2", c)
	}
	if n, err := s.DeleteDeadLettersBefore(cutoff); n != 0 || err != nil {
		t.Errorf("second DeleteDeadLettersBefore = %d, %v; want 0, nil", n, err)
	}
}

// txID is the id of the store's last committed read-write transaction.
func txID(t *testing.T, s *Store) int {
	t.Helper()
	var id int
	if err := s.db.View(func(tx *bolt.Tx) error { id = tx.ID(); return nil }); err != nil {
		t.Fatal(err)
	}
	return id
}

// waitAckQueued waits until AckOutbox calls have queued n seqs.
func waitAckQueued(t *testing.T, s *Store, n int) {
	t.Helper()
	testkit.Eventually(t, 10*time.Second, fmt.Sprintf("AckOutbox queues %d seqs", n), func() bool {
		s.acks.mu.Lock()
		defer s.acks.mu.Unlock()
		return s.acks.open != nil && len(s.acks.open.seqs) >= n
	})
}

// While fires are committed, acks ride in the next fires transaction: no commit of
// their own, and AckOutbox returns once that transaction is durable.
func TestAckOutboxRidesOnFiresCommit(t *testing.T) {
	s := openTest(t, Options{})
	s.acks.wait = time.Minute // the fires commit below comes first, however slow the machine
	var recs []FireRecord
	for i := range 10 {
		recs = append(recs, testFire(int64(i+1), t0, 1))
	}
	if err := s.CommitFires(recs); err != nil {
		t.Fatal(err)
	}
	before := txID(t, s)
	errs := make(chan error, 2)
	go func() { errs <- s.AckOutbox(1, 2, 3) }()
	waitAckQueued(t, s, 3)
	go func() { errs <- s.AckOutbox(4, 5, 999) }() // joins the batch
	waitAckQueued(t, s, 6)
	if err := s.CommitFires([]FireRecord{testFire(1, t0.Add(time.Minute), 2)}); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatalf("AckOutbox: %v", err)
		}
	}
	if got := txID(t, s); got != before+1 {
		t.Errorf("acks and one fires commit took %d transactions, want 1", got-before)
	}
	s = reopen(t, s)
	if n, _ := s.OutboxLen(); n != 6 {
		t.Errorf("OutboxLen() after acking 5 of 11 = %d, want 6", n)
	}
	rest, err := s.Outbox(0, 100)
	if err != nil {
		t.Fatal(err)
	}
	for i, e := range rest {
		if want := uint64(6 + i); e.Seq != want {
			t.Errorf("Outbox after acks: entry %d seq %d, want %d", i, e.Seq, want)
		}
	}
}

// Acks that rode in a failed fires commit fail with it: nothing is deleted, the
// error says so (delivery keeps them and acks again), and the next ack commits them.
func TestAckOutboxRideFailsWithTheCommit(t *testing.T) {
	s := openTest(t, Options{NoSync: true})
	s.acks.wait = time.Minute
	if err := s.PutRules([]Rule{testRule(7)}, nil); err != nil {
		t.Fatal(err)
	}
	if err := s.CommitFires([]FireRecord{testFire(1, t0, 1), testFire(2, t0, 1)}); err != nil {
		t.Fatal(err)
	}
	// A damaged watermark of rule 7 fails the next fires commit of rule 7.
	if err := s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketWatermarks).Put(idKey(7), []byte{0xff})
	}); err != nil {
		t.Fatal(err)
	}
	errs := make(chan error, 1)
	go func() { errs <- s.AckOutbox(1) }()
	waitAckQueued(t, s, 1)
	if err := s.CommitFires([]FireRecord{testFire(7, t0, 1)}); err == nil {
		t.Fatal("CommitFires over a damaged watermark: no error")
	}
	if err := <-errs; err == nil {
		t.Error("AckOutbox that rode in a failed commit returned nil")
	}
	if n, _ := s.OutboxLen(); n != 2 {
		t.Errorf("OutboxLen() after a failed ack = %d, want 2", n)
	}
	s.acks.wait = time.Millisecond
	if err := s.AckOutbox(1); err != nil {
		t.Fatalf("AckOutbox again: %v", err)
	}
	if e, _ := s.Outbox(0, 10); len(e) != 1 || e[0].Seq != 2 {
		t.Errorf("Outbox after the second ack = %+v, want seq 2 alone", e)
	}
}

// Without fires, an ack commits at once, on its own.
func TestAckOutboxWithoutFires(t *testing.T) {
	s := openTest(t, Options{NoSync: true})
	if err := s.CommitFires([]FireRecord{testFire(1, t0, 1), testFire(2, t0, 1)}); err != nil {
		t.Fatal(err)
	}
	s.acks.lastFires.Store(time.Now().Add(-time.Hour).UnixNano()) // the fires were long ago
	s.acks.wait = time.Hour                                       // would hang the test if waited for
	before := txID(t, s)
	if err := s.AckOutbox(2); err != nil {
		t.Fatal(err)
	}
	if got := txID(t, s); got != before+1 {
		t.Errorf("an ack took %d transactions, want 1", got-before)
	}
	if e, _ := s.Outbox(0, 10); len(e) != 1 || e[0].Seq != 1 {
		t.Errorf("Outbox after acking 2 = %+v, want seq 1 alone", e)
	}
}

// The freelist is written while short and left out once an outage's drain freed many
// pages; the next Open rebuilds it, and the file checks out whole either way.
func TestFreelistWrittenWhileShort(t *testing.T) {
	const maxPages = 64
	opts := Options{NoSync: true, FreelistSyncPages: maxPages}
	s := openTest(t, opts)
	commit := func(n int, slot time.Time) {
		t.Helper()
		recs := make([]FireRecord, n)
		for i := range recs {
			recs[i] = testFire(int64(i+1), slot, 1)
		}
		if err := s.CommitFires(recs); err != nil {
			t.Fatal(err)
		}
	}
	check := func(when string) {
		t.Helper()
		if err := s.db.View(func(tx *bolt.Tx) error {
			for err := range tx.Check() {
				return err
			}
			return nil
		}); err != nil {
			t.Fatalf("%s: bbolt check: %v", when, err)
		}
	}
	commit(10, t0)
	commit(10, t0.Add(time.Minute))
	if free := s.db.Stats().FreePageN; free > maxPages || s.db.NoFreelistSync {
		t.Fatalf("fresh store: %d free pages, freelist written %v; want ≤ %d and written", free, !s.db.NoFreelistSync, maxPages)
	}
	// An outage: thousands of events, then all delivered.
	for i := range 20 {
		commit(1000, t0.Add(time.Duration(i+2)*time.Minute))
	}
	drain := func() {
		t.Helper()
		for {
			page, err := s.Outbox(0, 5000)
			if err != nil {
				t.Fatal(err)
			}
			if len(page) == 0 {
				return
			}
			seqs := make([]uint64, len(page))
			for i, e := range page {
				seqs[i] = e.Seq
			}
			if err := s.AckOutbox(seqs...); err != nil {
				t.Fatal(err)
			}
		}
	}
	drain()
	commit(10, t0.Add(time.Hour))
	free := s.db.Stats().FreePageN
	if free <= maxPages || !s.db.NoFreelistSync {
		t.Fatalf("after the drain: %d free pages, freelist written %v; want > %d and not written", free, !s.db.NoFreelistSync, maxPages)
	}
	check("after the drain")
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2, err := Open(s.Path(), opts)
	if err != nil {
		t.Fatalf("reopen without a written freelist: %v", err)
	}
	s = s2
	t.Cleanup(func() { _ = s.Close() })
	if got := s.db.Stats().FreePageN; got < free-maxPages {
		t.Errorf("rebuilt freelist lists %d free pages, want about %d", got, free)
	}
	check("after the reopen")
	if n, _ := s.OutboxLen(); n != 10 {
		t.Errorf("OutboxLen() after the reopen = %d, want 10", n)
	}
	drain()
	commit(10, t0.Add(2*time.Hour))
	check("after more commits")
}
