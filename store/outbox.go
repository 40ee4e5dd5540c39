package store

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/timerd/timerd/cluster/protocol"
)

// Event is one event to POST, built by the caller.
type Event struct {
	RuleID         int64
	Slot           time.Time
	IdempotencyKey string // "<rule_id>:<slot unix nanos>"
	Body           []byte // the JSON to POST
}

// FireRecord is one fire: the rule's new watermark and the event to deliver. The rule
// is Event.RuleID.
type FireRecord struct {
	Watermark Watermark
	Event     Event
	// Skipped records a slot a peer already fired: the watermark advances and nothing
	// goes to the outbox (only Event.RuleID and Event.Slot are read).
	Skipped bool

	// Firer, when set, makes the record a fire of the protocol (docs/protocol.md),
	// fired by Firer holding the rule's partition at Epoch; see CommitFireRefs. Without
	// a Firer a record is written as before the protocol: its entry is ready at once and
	// it adds no point to the fire chain.
	Firer protocol.Incarnation
	Epoch protocol.Epoch
	// Ready: the entry of a fire of the protocol is deliverable at once (a single node
	// needs no replication); else it is pending until MarkReady or DropPending.
	Ready bool
}

// OutboxEntry is an event committed and not yet delivered.
type OutboxEntry struct {
	Seq       uint64 // 0 for a pending entry: it gets its sequence when it is made ready
	Event     Event
	CreatedAt time.Time
	// The fire the event stands for, for an event of the protocol (Firer.Node is empty
	// for an entry committed without a Firer, or by an older timerd).
	Prev    int64 // the rule's watermark slot before the fire (Unix ns, protocol.NoSlot for none)
	Count   uint64
	Firer   protocol.Incarnation
	Pending bool // awaiting replication or a verdict: not delivered (Pending)
}

// Ref is the protocol's name of the entry's fire.
func (e OutboxEntry) Ref() protocol.EventRef {
	return protocol.EventRef{Rule: e.Event.RuleID, Prev: e.Prev, Slot: timeNanos(e.Event.Slot),
		Count: e.Count, Firer: e.Firer}
}

// DeadLetter is an event the receiver refused for good.
type DeadLetter struct {
	Seq    uint64 // its outbox sequence
	Event  Event
	Reason string
	Status int // HTTP status, 0 if none
	At     time.Time
}

// outboxFill packs outbox pages: keys only ever append, so half-empty pages after a
// split would never fill.
const outboxFill = 1.0

// CommitFires makes fires durable in ONE read-write transaction (one fsync for the
// batch): for each record an outbox entry (none when Skipped), and the rule's watermark.
// A record for a rule no longer stored still gets its outbox entry (the fire happened)
// but no watermark. A watermark never moves back: a record whose slot is before the stored
// one leaves it (a repeated or reordered fire). Nothing is written on an invalid record.
// Records with a Firer are fires of the protocol: see CommitFireRefs.
//
// The watermarks go to the watermark journal (journal.go); every 50,000 of them the
// call then folds the journal in a second, larger transaction, after the fires are
// already durable.
func (s *Store) CommitFires(recs []FireRecord) error {
	_, err := s.commitFires(recs, nil)
	return err
}

// CommitFireRefs is CommitFires returning, in record order, the fires of the protocol
// (records with a Firer) it committed an outbox entry for: the Committed input of
// protocol.Member. A record with a Firer:
//   - is decided by Event.Slot (Watermark.Slot is not read): a slot at or before the
//     rule's watermark was decided meanwhile (a merge, a verdict) and the record is left
//     out altogether;
//   - extends the rule's fire chain with Point{From: the watermark's slot, Last: slot,
//     Firer, Epoch} (protocol.Chain.Extend; the common case, the same firer and epoch
//     as the last point, extends it in place);
//   - counts max(Watermark.Count, the stored count + 1) (+ 0 when Skipped);
//   - keeps the watermark of a rule the store does not know, as MergeWatermarks does;
//   - goes to the outbox ready when Ready, else pending (MarkReady, DropPending).
func (s *Store) CommitFireRefs(recs []FireRecord) ([]protocol.EventRef, error) {
	return s.commitFires(recs, nil)
}

// commitFires is CommitBatch: the fires and, with them, the missed-fire records ms.
func (s *Store) commitFires(recs []FireRecord, ms []MissedSlot) ([]protocol.EventRef, error) {
	if len(recs) == 0 && len(ms) == 0 {
		return nil, nil
	}
	for _, m := range ms {
		if err := validateMissed(m); err != nil {
			return nil, s.wrap("commit fires", err)
		}
	}
	for _, rec := range recs {
		if err := validateEvent(rec.Event); err != nil {
			return nil, s.wrap("commit fires", err)
		}
		if err := checkTime(rec.Event.RuleID, "watermark Slot", rec.Watermark.Slot); err != nil {
			return nil, s.wrap("commit fires", err)
		}
		if rec.Firer.Node != "" && rec.Event.Slot.IsZero() {
			return nil, s.wrap("commit fires", fmt.Errorf("rule %d: a fire of the protocol needs a slot", rec.Event.RuleID))
		}
	}
	// One buffer for the batch's outbox values, of their size: carve's 64 KiB chunks
	// were most of a small batch's allocation.
	need := 0
	for i := range recs {
		need += eventLen(recs[i].Event, &fireRef{firer: recs[i].Firer})
	}
	buf := make([]byte, 0, need)
	now := time.Now()
	s.acks.lastFires.Store(now.UnixNano())
	s.wmu.Lock()
	defer s.wmu.Unlock()
	// The acks waiting for a commit ride in this one (AckOutbox).
	acks := s.acks.takeOpen()
	var (
		jseq        uint64
		jrecs       []journalRec
		added, pend int64 // outbox and pending entries
		acked       int64 // outbox entries the acks deleted
		refs        []protocol.EventRef
	)
	type current struct {
		wm    Watermark
		chain protocol.Chain
		ok    bool
	}
	err := s.update(func(tx *bolt.Tx) error {
		added, pend, refs = 0, 0, refs[:0]
		rb, ob, pb := tx.Bucket(bucketRules), tx.Bucket(bucketOutbox), tx.Bucket(bucketPending)
		var err error
		if acked, err = deleteAcked(ob, acks); err != nil {
			return err
		}
		ob.FillPercent = outboxFill
		latest := make(map[int64]current, len(recs))
		read := func(id int64) (current, error) {
			if c, ok := latest[id]; ok {
				return c, nil
			}
			var c current
			var err error
			c.wm, c.chain, c.ok, err = s.currentWatermark(tx, id)
			return c, err
		}
		var key [8]byte
		for i := range recs {
			rec := &recs[i]
			id := rec.Event.RuleID
			if rec.Firer.Node == "" {
				if !rec.Skipped {
					if err := putOutbox(ob, rec.Event, now, nil, &buf); err != nil {
						return err
					}
					added++
				}
				binary.BigEndian.PutUint64(key[:], uint64(id))
				if rb.Get(key[:]) == nil {
					continue
				}
				c, err := read(id)
				if err != nil {
					return err
				}
				if c.ok && rec.Watermark.Slot.Before(c.wm.Slot) {
					continue
				}
				latest[id] = current{wm: rec.Watermark, chain: c.chain, ok: true}
				continue
			}
			c, err := read(id)
			if err != nil {
				return err
			}
			slot, prev := timeNanos(rec.Event.Slot), int64(protocol.NoSlot)
			count := rec.Watermark.Count
			if c.ok {
				prev = timeNanos(c.wm.Slot)
				if slot <= prev {
					continue // decided meanwhile
				}
				if rec.Skipped {
					count = max(count, c.wm.Count)
				} else {
					count = max(count, c.wm.Count+1)
				}
			}
			latest[id] = current{wm: Watermark{Slot: rec.Event.Slot, Count: count},
				chain: extendChain(c.chain, prev, slot, rec.Firer, rec.Epoch), ok: true}
			if rec.Skipped {
				continue
			}
			ref := fireRef{prev: prev, count: count, firer: rec.Firer}
			if rec.Ready {
				if err := putOutbox(ob, rec.Event, now, &ref, &buf); err != nil {
					return err
				}
				added++
			} else {
				fresh, err := putPending(pb, rec.Event, now, &ref, &buf)
				if err != nil {
					return err
				}
				if fresh {
					pend++
				}
			}
			refs = append(refs, protocol.EventRef{Rule: id, Prev: prev, Slot: slot, Count: count, Firer: rec.Firer})
		}
		jrecs = make([]journalRec, 0, len(latest))
		for id, c := range latest {
			jrecs = append(jrecs, journalRec{kind: recSet, id: id, wm: c.wm, chain: c.chain})
		}
		if jseq, err = journalAppend(tx, jrecs); err != nil {
			return err
		}
		if len(ms) > 0 {
			if err := putMissed(tx, ms); err != nil {
				return err
			}
		}
		return errors.Join(addCounter(tx, keyOutboxLen, added-acked), addCounter(tx, keyPendingLen, pend))
	})
	if acks != nil {
		acks.finish(err)
	}
	if err != nil {
		return nil, s.wrap("commit fires", err)
	}
	s.outboxLen.Add(added - acked)
	s.pendingLen.Add(pend)
	s.indexJournal(jseq, jrecs)
	indexAdd(s, jrecs, func(r journalRec) int64 { return r.id })
	indexFired(s, firedIDs(jrecs))
	// A cycle of fold steps starts after foldAfter records and goes on a slice per
	// commit. The fires are durable; a failed step leaves the journal, and the next
	// try waits for as many records again rather than weigh on every commit.
	if s.j.records >= s.foldAfter+s.foldDeferred || (s.j.cycle.next > 0 && s.foldDeferred == 0) {
		if err := s.foldStep(); err != nil {
			s.foldDeferred = s.j.records
			s.foldErrors.Inc()
		} else {
			s.foldDeferred = 0
		}
	}
	return refs, nil
}

// extendChain is c.Extend(prev, slot, firer, epoch), without Extend's merge and sort
// in the common case: the fire continues the chain's last point (the same firer and
// epoch, right after it) in a chain that Extend's merge would leave as it is (its
// points end in increasing order, and no two of one firer and epoch touch); then it
// extends that point, in a copy. c is not modified.
func extendChain(c protocol.Chain, prev, slot int64, firer protocol.Incarnation, epoch protocol.Epoch) protocol.Chain {
	n := len(c)
	if n == 0 || n > protocol.ChainLen || slot <= prev {
		return c.Extend(prev, slot, firer, epoch)
	}
	if last := c[n-1]; last.Last != prev || last.From > prev || last.Firer != firer || last.Epoch != epoch {
		return c.Extend(prev, slot, firer, epoch)
	}
	for i := 0; i < n-1; i++ {
		if c[i].Last >= c[i+1].Last {
			return c.Extend(prev, slot, firer, epoch)
		}
		for j := i + 1; j < n; j++ {
			if c[i].Firer == c[j].Firer && c[i].Epoch == c[j].Epoch && c[j].From <= c[i].Last {
				return c.Extend(prev, slot, firer, epoch)
			}
		}
	}
	out := make(protocol.Chain, n)
	copy(out, c)
	out[n-1].Last = slot
	return out
}

// putOutbox appends e to the outbox bucket ob; ref is nil for an event without a fire
// of the protocol.
func putOutbox(ob *bolt.Bucket, e Event, now time.Time, ref *fireRef, buf *[]byte) error {
	seq, err := ob.NextSequence()
	if err != nil {
		return err
	}
	var okey [8]byte // bbolt copies keys, not values
	binary.BigEndian.PutUint64(okey[:], seq)
	if err := ob.Put(okey[:], carve(buf, e, now, ref)); err != nil {
		return fmt.Errorf("outbox entry of rule %d: %w", e.RuleID, err)
	}
	return nil
}

// carve encodes an event into *buf: bbolt keeps value slices until commit, so each
// value needs its own memory, carved from one growing buffer.
func carve(buf *[]byte, e Event, now time.Time, ref *fireRef) []byte {
	if n := eventLen(e, ref); cap(*buf)-len(*buf) < n {
		*buf = make([]byte, 0, max(64<<10, n))
	}
	start := len(*buf)
	*buf = appendEvent(*buf, e, now, ref)
	return (*buf)[start:len(*buf):len(*buf)]
}

// Outbox returns up to limit entries with Seq > afterSeq, oldest first.
func (s *Store) Outbox(afterSeq uint64, limit int) ([]OutboxEntry, error) {
	// Sized for a delivery page (256) at once rather than grown by doubling: the
	// engine reads one per few hundred events.
	out := make([]OutboxEntry, 0, min(max(limit, 0), 256))
	err := s.scan(bucketOutbox, afterSeq, limit, func(seq uint64, v []byte) error {
		e, err := decodeOutboxEntry(seq, v)
		out = append(out, e)
		return err
	})
	if err != nil {
		return nil, s.wrap("read outbox", err)
	}
	return out, nil
}

// scan calls fn for up to limit keys after afterSeq in bucket b.
func (s *Store) scan(b []byte, afterSeq uint64, limit int, fn func(seq uint64, v []byte) error) error {
	if limit <= 0 {
		return fmt.Errorf("limit %d: must be positive", limit)
	}
	if afterSeq == math.MaxUint64 {
		return nil
	}
	return s.view(func(tx *bolt.Tx) error {
		c := tx.Bucket(b).Cursor()
		n := 0
		for k, v := c.Seek(binary.BigEndian.AppendUint64(nil, afterSeq+1)); k != nil && n < limit; k, v = c.Next() {
			if len(k) != 8 {
				return fmt.Errorf("%w: %s key of %d bytes, want 8", ErrCorrupt, b, len(k))
			}
			if err := fn(binary.BigEndian.Uint64(k), v); err != nil {
				return err
			}
			n++
		}
		return nil
	})
}

// AckOutbox deletes delivered entries and returns once the deletion is durable (or
// failed); unknown seqs are ignored.
//
// While fires are being committed (a CommitFires began within ackRideWindow), the
// deletion waits up to ackRideWait to ride in the next fires transaction instead of
// paying a commit (an fsync) of its own: at 5,000 events/s this halves the node's
// commits. Acks of concurrent callers share that wait and that commit. A crash in the
// wait re-posts those events after the restart, as a crash before any ack commit
// does: they carry their Idempotency-Key. The error is the commit's that carried them.
func (s *Store) AckOutbox(seqs ...uint64) error {
	if len(seqs) == 0 {
		return nil
	}
	q := &s.acks
	q.mu.Lock()
	b := q.open
	first := b == nil
	if first {
		b = &ackBatch{done: make(chan struct{})}
		q.open = b
	}
	b.seqs = append(b.seqs, seqs...)
	q.mu.Unlock()
	if first {
		// The first caller of a batch commits it unless a fires commit takes it first.
		if time.Since(time.Unix(0, q.lastFires.Load())) < ackRideWindow {
			wait := q.wait
			if wait == 0 {
				wait = ackRideWait
			}
			t := time.NewTimer(wait)
			select {
			case <-b.done:
			case <-t.C:
			}
			t.Stop()
		}
		if q.take(b) {
			n, err := s.deleteSeqs(bucketOutbox, keyOutboxLen, b.seqs)
			if err == nil {
				s.outboxLen.Add(-n)
			}
			b.finish(err)
		}
	}
	<-b.done
	if b.err != nil {
		return s.wrap("ack outbox", b.err)
	}
	return nil
}

// How acks ride on fires commits (AckOutbox): they wait for one only while fires are
// being committed, and for less than the scheduler's batches are apart at a few
// thousand fires a second.
const (
	ackRideWindow = 100 * time.Millisecond
	ackRideWait   = 10 * time.Millisecond
)

// ackQueue gathers the acks waiting for a commit (AckOutbox).
type ackQueue struct {
	mu        sync.Mutex
	open      *ackBatch     // the batch new acks join; nil: none
	lastFires atomic.Int64  // when the last CommitFires began, Unix ns
	wait      time.Duration // 0: ackRideWait (a test waits longer)
}

// ackBatch is the acks that one commit deletes.
type ackBatch struct {
	seqs []uint64
	done chan struct{} // closed once err is set
	err  error
}

// take claims b for a commit: false if another commit took it already.
func (q *ackQueue) take(b *ackBatch) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.open != b {
		return false
	}
	q.open = nil
	return true
}

// takeOpen claims the open batch, if any, for a commit.
func (q *ackQueue) takeOpen() *ackBatch {
	q.mu.Lock()
	defer q.mu.Unlock()
	b := q.open
	q.open = nil
	return b
}

func (b *ackBatch) finish(err error) {
	b.err = err
	close(b.done)
}

// deleteAcked deletes the batch's outbox entries in tx and returns how many it found.
func deleteAcked(ob *bolt.Bucket, b *ackBatch) (int64, error) {
	if b == nil {
		return 0, nil
	}
	return deleteKeys(ob, b.seqs)
}

// deleteSeqs deletes keys from b and lowers the counter at countKey by the number found.
func (s *Store) deleteSeqs(b, countKey []byte, seqs []uint64) (int64, error) {
	if len(seqs) == 0 {
		return 0, nil
	}
	var n int64
	err := s.update(func(tx *bolt.Tx) error {
		var err error
		if n, err = deleteKeys(tx.Bucket(b), seqs); err != nil {
			return err
		}
		return addCounter(tx, countKey, -n)
	})
	return n, err
}

// deleteKeys deletes the keys of seqs from bk, in key order, and returns how many it
// found.
func deleteKeys(bk *bolt.Bucket, seqs []uint64) (int64, error) {
	sorted := slices.Clone(seqs)
	slices.Sort(sorted)
	sorted = slices.Compact(sorted)
	var n int64
	var key [8]byte
	c := bk.Cursor() // one seek a key, where Get then Delete took two
	for _, seq := range sorted {
		binary.BigEndian.PutUint64(key[:], seq)
		if k, _ := c.Seek(key[:]); !bytes.Equal(k, key[:]) {
			continue
		}
		if err := c.Delete(); err != nil {
			return 0, err
		}
		n++
	}
	return n, nil
}

// OutboxLen is the number of outbox entries: the file's counter, mirrored in memory
// since Open (the error is always nil).
func (s *Store) OutboxLen() (int, error) { return int(s.outboxLen.Load()), nil }

// OutboxOldest returns when the oldest deliverable entry was committed (its CreatedAt);
// false when the outbox is empty. It reads one entry.
func (s *Store) OutboxOldest() (time.Time, bool, error) {
	var at time.Time
	var ok bool
	err := s.view(func(tx *bolt.Tx) error {
		k, v := tx.Bucket(bucketOutbox).Cursor().First()
		if k == nil {
			return nil
		}
		e, err := decodeOutboxEntry(binary.BigEndian.Uint64(k), v)
		if err != nil {
			return err
		}
		at, ok = e.CreatedAt, true
		return nil
	})
	if err != nil {
		return time.Time{}, false, s.wrap("oldest outbox entry", err)
	}
	return at, ok, nil
}

// DeadLetter moves outbox entry seq to the dead letters in one transaction, with the
// reason and HTTP status (0 if none). ErrNotFound if there is no such entry.
func (s *Store) DeadLetter(seq uint64, reason string, status int) error {
	at := time.Now()
	err := s.update(func(tx *bolt.Tx) error {
		ob, db := tx.Bucket(bucketOutbox), tx.Bucket(bucketDeadLetters)
		k := binary.BigEndian.AppendUint64(nil, seq)
		v := ob.Get(k)
		if v == nil {
			return fmt.Errorf("outbox entry %d: %w", seq, ErrNotFound)
		}
		if _, err := decodeOutboxEntry(seq, v); err != nil {
			return err
		}
		// Copied by encodeDeadLetter before the Delete can reuse v's page.
		if err := db.Put(k, encodeDeadLetter(reason, status, at, v)); err != nil {
			return err
		}
		if err := ob.Delete(k); err != nil {
			return err
		}
		return errors.Join(addCounter(tx, keyOutboxLen, -1), addCounter(tx, keyDeadLetterLen, 1))
	})
	if err != nil {
		return s.wrap("dead-letter", err)
	}
	s.outboxLen.Add(-1)
	s.deadLetterLen.Add(1)
	return nil
}

// DeadLetters returns up to limit dead letters with Seq > afterSeq, oldest first.
func (s *Store) DeadLetters(afterSeq uint64, limit int) ([]DeadLetter, error) {
	var out []DeadLetter
	err := s.scan(bucketDeadLetters, afterSeq, limit, func(seq uint64, v []byte) error {
		d, err := decodeDeadLetter(seq, v)
		out = append(out, d)
		return err
	})
	if err != nil {
		return nil, s.wrap("read dead letters", err)
	}
	return out, nil
}

// DeadLetterCount is the number of dead letters, like OutboxLen.
func (s *Store) DeadLetterCount() (int, error) { return int(s.deadLetterLen.Load()), nil }

// DeleteDeadLetters removes dead letters (after inspection or a replay); unknown seqs
// are ignored.
func (s *Store) DeleteDeadLetters(seqs ...uint64) error {
	n, err := s.deleteSeqs(bucketDeadLetters, keyDeadLetterLen, seqs)
	if err != nil {
		return s.wrap("delete dead letters", err)
	}
	s.deadLetterLen.Add(-n)
	return nil
}

// RedriveDeadLetters moves dead letters back into the outbox in one transaction, all
// of them when seqs is empty, and returns the seqs moved (unknown ones are skipped).
// Each goes to the end of the outbox under a new outbox sequence with its event as it
// was (Idempotency-Key, body and the fire it stands for), so that a receiver that
// took it already drops the repeat; only its commit time becomes now, which is what
// timerd_outbox_oldest_age_seconds measures.
func (s *Store) RedriveDeadLetters(seqs ...uint64) ([]uint64, error) {
	now := time.Now()
	var moved []uint64
	err := s.update(func(tx *bolt.Tx) error {
		moved = moved[:0]
		ob, db := tx.Bucket(bucketOutbox), tx.Bucket(bucketDeadLetters)
		ob.FillPercent = outboxFill
		var keys [][]byte
		if len(seqs) == 0 {
			c := db.Cursor()
			for k, _ := c.First(); k != nil; k, _ = c.Next() {
				keys = append(keys, slices.Clone(k))
			}
		} else {
			for _, seq := range slices.Compact(slices.Sorted(slices.Values(seqs))) {
				keys = append(keys, binary.BigEndian.AppendUint64(nil, seq))
			}
		}
		for _, k := range keys {
			v := db.Get(k)
			if v == nil {
				continue
			}
			if len(k) != 8 {
				return fmt.Errorf("%w: %s key of %d bytes, want 8", ErrCorrupt, bucketDeadLetters, len(k))
			}
			seq := binary.BigEndian.Uint64(k)
			entry, err := outboxValueOfDeadLetter(seq, v, now)
			if err != nil {
				return err
			}
			next, err := ob.NextSequence()
			if err != nil {
				return err
			}
			if err := ob.Put(binary.BigEndian.AppendUint64(nil, next), entry); err != nil {
				return err
			}
			if err := db.Delete(k); err != nil {
				return err
			}
			moved = append(moved, seq)
		}
		n := int64(len(moved))
		return errors.Join(addCounter(tx, keyOutboxLen, n), addCounter(tx, keyDeadLetterLen, -n))
	})
	if err != nil {
		return nil, s.wrap("redrive dead letters", err)
	}
	s.outboxLen.Add(int64(len(moved)))
	s.deadLetterLen.Add(-int64(len(moved)))
	return moved, nil
}

// DeleteDeadLettersBefore deletes the dead letters written before cutoff (the
// retention) and returns how many.
func (s *Store) DeleteDeadLettersBefore(cutoff time.Time) (int, error) {
	var old []uint64
	err := s.view(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketDeadLetters).Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			if len(k) != 8 {
				return fmt.Errorf("%w: %s key of %d bytes, want 8", ErrCorrupt, bucketDeadLetters, len(k))
			}
			at, err := deadLetterAt(v)
			if err != nil {
				return fmt.Errorf("dead letter %d: %w", binary.BigEndian.Uint64(k), err)
			}
			if at.Before(cutoff) {
				old = append(old, binary.BigEndian.Uint64(k))
			}
		}
		return nil
	})
	if err != nil {
		return 0, s.wrap("expire dead letters", err)
	}
	n, err := s.deleteSeqs(bucketDeadLetters, keyDeadLetterLen, old)
	if err != nil {
		return 0, s.wrap("expire dead letters", err)
	}
	s.deadLetterLen.Add(-n)
	return int(n), nil
}
