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
	if len(events) == 0 {
		return nil
	}
	for _, e := range events {
		if err := validateEvent(e); err != nil {
			return s.wrap("append handed-over events", err)
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
		return addCounter(tx, keyOutboxLen, int64(len(events)))
	})
	if err != nil {
		return s.wrap("append handed-over events", err)
	}
	s.outboxLen.Add(int64(len(events)))
	return nil
}
