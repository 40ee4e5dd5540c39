package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"
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
}

// OutboxEntry is an event committed and not yet delivered.
type OutboxEntry struct {
	Seq       uint64
	Event     Event
	CreatedAt time.Time
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
//
// The watermarks go to the watermark journal (journal.go); every 50,000 of them the
// call then folds the journal in a second, larger transaction, after the fires are
// already durable.
func (s *Store) CommitFires(recs []FireRecord) error {
	if len(recs) == 0 {
		return nil
	}
	for _, rec := range recs {
		if err := validateEvent(rec.Event); err != nil {
			return s.wrap("commit fires", err)
		}
		if err := checkTime(rec.Event.RuleID, "watermark Slot", rec.Watermark.Slot); err != nil {
			return s.wrap("commit fires", err)
		}
	}
	now := time.Now()
	s.wmu.Lock()
	defer s.wmu.Unlock()
	var (
		buf   []byte
		jseq  uint64
		jrecs []journalRec
		added int64 // outbox entries
	)
	err := s.update(func(tx *bolt.Tx) error {
		rb, ob := tx.Bucket(bucketRules), tx.Bucket(bucketOutbox)
		ob.FillPercent = outboxFill
		latest := make(map[int64]Watermark, len(recs))
		var key [8]byte
		for _, rec := range recs {
			if !rec.Skipped {
				if err := putOutbox(ob, rec.Event, now, &buf); err != nil {
					return err
				}
				added++
			}
			id := rec.Event.RuleID
			binary.BigEndian.PutUint64(key[:], uint64(id))
			if rb.Get(key[:]) == nil {
				continue
			}
			prev, ok := latest[id]
			if !ok {
				var err error
				if prev, ok, err = s.currentWatermark(tx, id); err != nil {
					return err
				}
			}
			if ok && rec.Watermark.Slot.Before(prev.Slot) {
				continue
			}
			latest[id] = rec.Watermark
		}
		jrecs = make([]journalRec, 0, len(latest))
		for id, wm := range latest {
			jrecs = append(jrecs, journalRec{kind: recSet, id: id, wm: wm})
		}
		var err error
		if jseq, err = journalAppend(tx, jrecs); err != nil {
			return err
		}
		return addCounter(tx, keyOutboxLen, added)
	})
	if err != nil {
		return s.wrap("commit fires", err)
	}
	s.outboxLen.Add(added)
	s.indexJournal(jseq, jrecs)
	if s.j.records >= s.foldAfter+s.foldDeferred {
		// The fires are durable; a failed fold leaves the journal, and the next try
		// waits for as many records again rather than weigh on every commit.
		if err := s.fold(); err != nil {
			s.foldDeferred = s.j.records
			s.foldErrors.Inc()
		} else {
			s.foldDeferred = 0
		}
	}
	return nil
}

// putOutbox appends e to the outbox bucket ob.
func putOutbox(ob *bolt.Bucket, e Event, now time.Time, buf *[]byte) error {
	seq, err := ob.NextSequence()
	if err != nil {
		return err
	}
	// bbolt keeps value slices until commit, so each value needs its own memory:
	// carve them from one growing buffer.
	if cap(*buf)-len(*buf) < eventLen(e) {
		*buf = make([]byte, 0, max(64<<10, eventLen(e)))
	}
	start := len(*buf)
	*buf = appendEvent(*buf, e, now)
	var okey [8]byte // bbolt copies keys, not values
	binary.BigEndian.PutUint64(okey[:], seq)
	if err := ob.Put(okey[:], (*buf)[start:len(*buf):len(*buf)]); err != nil {
		return fmt.Errorf("outbox entry of rule %d: %w", e.RuleID, err)
	}
	return nil
}

// Outbox returns up to limit entries with Seq > afterSeq, oldest first.
func (s *Store) Outbox(afterSeq uint64, limit int) ([]OutboxEntry, error) {
	var out []OutboxEntry
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

// AckOutbox deletes delivered entries in one transaction; unknown seqs are ignored.
func (s *Store) AckOutbox(seqs ...uint64) error {
	n, err := s.deleteSeqs(bucketOutbox, keyOutboxLen, seqs)
	if err != nil {
		return s.wrap("ack outbox", err)
	}
	s.outboxLen.Add(-n)
	return nil
}

// deleteSeqs deletes keys from b and lowers the counter at countKey by the number found.
func (s *Store) deleteSeqs(b, countKey []byte, seqs []uint64) (int64, error) {
	if len(seqs) == 0 {
		return 0, nil
	}
	sorted := slices.Clone(seqs)
	slices.Sort(sorted)
	sorted = slices.Compact(sorted)
	var n int64
	err := s.update(func(tx *bolt.Tx) error {
		bk := tx.Bucket(b)
		n = 0
		var key [8]byte
		for _, seq := range sorted {
			binary.BigEndian.PutUint64(key[:], seq)
			if bk.Get(key[:]) == nil {
				continue
			}
			if err := bk.Delete(key[:]); err != nil {
				return err
			}
			n++
		}
		return addCounter(tx, countKey, -n)
	})
	return n, err
}

// OutboxLen is the number of outbox entries: the file's counter, mirrored in memory
// since Open (the error is always nil).
func (s *Store) OutboxLen() (int, error) { return int(s.outboxLen.Load()), nil }

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
