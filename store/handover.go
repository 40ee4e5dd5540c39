package store

import (
	"time"

	bolt "go.etcd.io/bbolt"
)

// AppendReady adds events to the outbox, ready to deliver, in one transaction: the
// ready events a leaving node handed over (they were fired and replicated by it, so
// they carry no fire of this node's and change no watermark). Nothing is written if
// any event is invalid.
func (s *Store) AppendReady(events []Event) error {
	return s.appendReady("append handed-over events", events, nil)
}

// AppendManual adds an operator's events to the outbox, ready to deliver, with the
// records of the rule's history that say so (a backfill, a fire now), in one
// transaction. Like AppendReady it changes no watermark: the events stand for no
// slot of the schedule's own (docs/operations.md, "Backfill and fire now"). Nothing
// is written if an event or a record is invalid.
func (s *Store) AppendManual(events []Event, history []MissedSlot) error {
	for _, m := range history {
		if err := validateMissed(m); err != nil {
			return s.wrap("append manual events", err)
		}
	}
	return s.appendReady("append manual events", events, history)
}

func (s *Store) appendReady(op string, events []Event, history []MissedSlot) error {
	if len(events) == 0 && len(history) == 0 {
		return nil
	}
	for _, e := range events {
		if err := validateEvent(e); err != nil {
			return s.wrap(op, err)
		}
	}
	now := time.Now()
	err := s.update(func(tx *bolt.Tx) error {
		ob := tx.Bucket(bucketOutbox)
		ob.FillPercent = outboxFill
		var buf []byte
		for _, e := range events {
			if err := putOutbox(ob, e, now, nil, &buf); err != nil {
				return err
			}
		}
		if err := putMissed(tx, history); err != nil {
			return err
		}
		return addCounter(tx, keyOutboxLen, int64(len(events)))
	})
	if err != nil {
		return s.wrap(op, err)
	}
	s.outboxLen.Add(int64(len(events)))
	return nil
}
