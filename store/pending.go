package store

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/timerd/timerd/cluster/protocol"
)

// Pending outbox entries (since schema version 3): fires of the protocol committed but
// not deliverable yet, awaiting replication to a quorum or a holder's verdict. They are
// kept apart from the outbox, in bucket pending keyed by the fire
// (rule i64 | slot i64 | firer incarnation u64 | firer node), so that
//   - the delivery reads (Outbox, AckOutbox, DeadLetter, OutboxLen) see ready entries
//     only, unchanged, and files written before (every entry ready) read as they were;
//   - MarkReady appends an entry to the outbox with a new sequence: delivery reads the
//     outbox by a cursor of sequences, and an entry made ready after later ones were
//     read must come after them;
//   - a ref finds its entry without a scan.
// Values are outbox values of codec v2 (the event and its fire).

func pendingKey(ref protocol.EventRef) []byte {
	k := make([]byte, 0, 24+len(ref.Firer.Node))
	k = binary.BigEndian.AppendUint64(k, uint64(ref.Rule))
	k = binary.BigEndian.AppendUint64(k, uint64(ref.Slot))
	k = binary.BigEndian.AppendUint64(k, ref.Firer.N)
	return append(k, ref.Firer.Node...)
}

// putPending adds an entry; fresh is false if the same fire was pending already (it is
// replaced by the same event).
func putPending(pb *bolt.Bucket, e Event, now time.Time, ref *fireRef, buf *[]byte) (fresh bool, err error) {
	k := pendingKey(protocol.EventRef{Rule: e.RuleID, Slot: timeNanos(e.Slot), Firer: ref.firer})
	fresh = pb.Get(k) == nil
	if err := pb.Put(k, carve(buf, e, now, ref)); err != nil {
		return false, fmt.Errorf("pending entry of rule %d: %w", e.RuleID, err)
	}
	return fresh, nil
}

// decodePending decodes a pending value and checks it against its key.
func decodePending(k, v []byte) (OutboxEntry, error) {
	e, err := decodeOutboxEntry(0, v)
	if err == nil && (e.Firer.Node == "" || !bytes.Equal(k, pendingKey(e.Ref()))) {
		err = fmt.Errorf("%w: entry does not match its key", ErrCorrupt)
	}
	if err != nil {
		return OutboxEntry{}, fmt.Errorf("pending entry %x: %w", k, err)
	}
	e.Pending = true
	return e, nil
}

// pendingRefs checks refs (each naming a pending entry, by rule, slot and firer; Prev
// and Count are not compared) and returns their keys without repeats, in refs order.
func pendingRefs(pb *bolt.Bucket, refs []protocol.EventRef) ([][]byte, error) {
	keys := make([][]byte, 0, len(refs))
	seen := make(map[string]bool, len(refs))
	for _, ref := range refs {
		k := pendingKey(ref)
		if seen[string(k)] {
			continue
		}
		seen[string(k)] = true
		v := pb.Get(k)
		if v == nil {
			return nil, fmt.Errorf("event of rule %d slot %d fired by %v: %w (not pending)", ref.Rule, ref.Slot, ref.Firer, ErrNotFound)
		}
		if _, err := decodePending(k, v); err != nil {
			return nil, err
		}
		keys = append(keys, k)
	}
	return keys, nil
}

// MarkReady makes pending entries deliverable (a Deliverable effect), in one
// transaction: each moves to the outbox with a new sequence, in refs order. A ref that
// names no pending entry (unknown, already ready, dropped) fails the call with
// ErrNotFound, and nothing changes.
func (s *Store) MarkReady(refs []protocol.EventRef) error {
	var b ProtocolBatch
	b.MarkReady(refs)
	return s.commitProtocol("mark ready", &b)
}

// markReadyTx moves the pending entries of refs to the outbox, returning how many.
func markReadyTx(tx *bolt.Tx, refs []protocol.EventRef) (int64, error) {
	pb, ob := tx.Bucket(bucketPending), tx.Bucket(bucketOutbox)
	ob.FillPercent = outboxFill
	keys, err := pendingRefs(pb, refs)
	if err != nil {
		return 0, err
	}
	for _, k := range keys {
		v := bytes.Clone(pb.Get(k)) // the Delete may reuse the page's memory
		seq, err := ob.NextSequence()
		if err != nil {
			return 0, err
		}
		if err := ob.Put(binary.BigEndian.AppendUint64(nil, seq), v); err != nil {
			return 0, err
		}
		if err := pb.Delete(k); err != nil {
			return 0, err
		}
	}
	n := int64(len(keys))
	return n, errors.Join(addCounter(tx, keyOutboxLen, n), addCounter(tx, keyPendingLen, -n))
}

// DropPending removes pending entries (a Drop effect: their slots were fired by another
// incarnation, or nobody can tell), in one transaction. A ref that names no pending
// entry fails the call with ErrNotFound, and nothing changes.
func (s *Store) DropPending(refs []protocol.EventRef) error {
	var b ProtocolBatch
	b.DropPending(refs)
	return s.commitProtocol("drop pending", &b)
}

// dropPendingTx deletes the pending entries of refs, returning how many.
func dropPendingTx(tx *bolt.Tx, refs []protocol.EventRef) (int64, error) {
	pb := tx.Bucket(bucketPending)
	keys, err := pendingRefs(pb, refs)
	if err != nil {
		return 0, err
	}
	for _, k := range keys {
		if err := pb.Delete(k); err != nil {
			return 0, err
		}
	}
	n := int64(len(keys))
	return n, addCounter(tx, keyPendingLen, -n)
}

// Pending returns every pending entry, by rule, slot and firer (Seq 0, Pending set):
// at start-up, the Unsettled input of protocol.Member (OutboxEntry.Ref).
func (s *Store) Pending() ([]OutboxEntry, error) {
	var out []OutboxEntry
	err := s.view(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketPending).ForEach(func(k, v []byte) error {
			e, err := decodePending(k, v)
			out = append(out, e)
			return err
		})
	})
	if err != nil {
		return nil, s.wrap("read pending", err)
	}
	return out, nil
}

// PendingLen is the number of pending entries, like OutboxLen (the error is always nil).
func (s *Store) PendingLen() (int, error) { return int(s.pendingLen.Load()), nil }
