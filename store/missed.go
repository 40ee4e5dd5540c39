package store

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"time"
	"unicode/utf8"

	bolt "go.etcd.io/bbolt"

	"github.com/timerd/timerd/cluster/protocol"
)

// The missed-fire log: per rule, the last MissedPerRule runs of slots that did not
// fire on time, with why. Records are written in the transaction of the fires they
// were decided with (CommitBatch), or on their own (RecordMissed) for a batch of misses
// alone; on-time fires write none. A rule's records go with the rule (DeleteRule,
// RemoveRules).
//
// Bucket missed, key rule id | sequence (8 + 8 bytes, big-endian; the sequence is the
// bucket's, so a rule's records sort oldest first), value:
//
//	v1 | from i64 | to i64 | uvarint count | flags byte | uvarint len, reason |
//	detected_at i64 | uvarint len, detail | crc32c
//
// The bucket is not part of the schema version: Open creates it when it is missing,
// so a file of an earlier build opens as it is, and an earlier build opens a file that
// has it (ignoring it; the records of rules it deletes then stay behind, harmless and
// unread, as rule ids are not reused).

var bucketMissed = []byte("missed")

// MissedPerRule is how many missed-fire records the store keeps per rule: a new one
// beyond deletes the oldest.
const MissedPerRule = 100

// maxMissedDetail bounds a record's Detail, in bytes.
const maxMissedDetail = 256

const (
	missedV1          = 1
	missedEstimated   = 1 << 0 // flags: Count is an estimate
	missedKeyLen      = 16
	maxMissedReasonLn = 64
)

// MissedSlot is one record of the missed-fire log: a run of one rule's slots that
// did not fire on time.
type MissedSlot struct {
	Seq      uint64 // the record's sequence (0 when writing)
	RuleID   int64
	From, To time.Time // the run's first and last slot (equal for one); zero when unknown
	Count    uint64    // slots in the run
	// Estimated: Count is extrapolated (a long run of a cron schedule).
	Estimated  bool
	Reason     string // a scheduler.MissReason token
	DetectedAt time.Time
	Detail     string // optional: a verdict, a parse error
}

func validateMissed(m MissedSlot) error {
	switch {
	case m.RuleID <= 0:
		return fmt.Errorf("missed slot of rule %d: rule id must be positive", m.RuleID)
	case m.Reason == "" || len(m.Reason) > maxMissedReasonLn:
		return fmt.Errorf("missed slot of rule %d: reason must be 1 to %d bytes, got %d", m.RuleID, maxMissedReasonLn, len(m.Reason))
	case m.To.Before(m.From):
		return fmt.Errorf("missed slot of rule %d: run ends (%v) before it starts (%v)", m.RuleID, m.To, m.From)
	}
	for _, f := range []struct {
		name string
		t    time.Time
	}{{"missed From", m.From}, {"missed To", m.To}, {"missed DetectedAt", m.DetectedAt}} {
		if err := checkTime(m.RuleID, f.name, f.t); err != nil {
			return err
		}
	}
	return nil
}

func missedKey(rule int64, seq uint64) []byte {
	k := make([]byte, 0, missedKeyLen)
	k = binary.BigEndian.AppendUint64(k, uint64(rule))
	return binary.BigEndian.AppendUint64(k, seq)
}

func encodeMissed(m MissedSlot) []byte {
	detail := m.Detail
	if len(detail) > maxMissedDetail {
		cut := maxMissedDetail
		for cut > 0 && !utf8.RuneStart(detail[cut]) {
			cut-- // not inside a character
		}
		detail = detail[:cut]
	}
	b := make([]byte, 0, 1+8+8+10+1+1+len(m.Reason)+8+2+len(detail)+crcLen)
	b = append(b, missedV1)
	b = appendTime(b, m.From)
	b = appendTime(b, m.To)
	b = binary.AppendUvarint(b, m.Count)
	var flags byte
	if m.Estimated {
		flags |= missedEstimated
	}
	b = append(b, flags)
	b = appendString(b, m.Reason)
	b = appendTime(b, m.DetectedAt)
	b = appendString(b, detail)
	return seal(b)
}

func decodeMissed(k, v []byte) (MissedSlot, error) {
	if len(k) != missedKeyLen {
		return MissedSlot{}, fmt.Errorf("%w: missed-slot key of %d bytes, want %d", ErrCorrupt, len(k), missedKeyLen)
	}
	m := MissedSlot{RuleID: int64(binary.BigEndian.Uint64(k)), Seq: binary.BigEndian.Uint64(k[8:])}
	body, err := unseal(v)
	if err != nil {
		return MissedSlot{}, fmt.Errorf("missed slot %d of rule %d: %w", m.Seq, m.RuleID, err)
	}
	d := decoder{b: body}
	d.versionOf(missedV1)
	m.From, m.To = d.time("from"), d.time("to")
	m.Count = d.uvarint("count")
	if len(d.b) < 1 {
		d.fail("short flags")
	} else {
		m.Estimated = d.b[0]&missedEstimated != 0
		d.b = d.b[1:]
	}
	m.Reason = string(d.bytes("reason"))
	m.DetectedAt = d.time("detected_at")
	m.Detail = string(d.bytes("detail"))
	if d.err == nil && len(d.b) > 0 {
		d.fail("trailing bytes")
	}
	if d.err != nil {
		return MissedSlot{}, fmt.Errorf("missed slot %d of rule %d: %w", m.Seq, m.RuleID, d.err)
	}
	return m, nil
}

// ensureMissedBucket creates the missed bucket in a file that lacks it (new, or
// written by an earlier build).
func (s *Store) ensureMissedBucket() error {
	has := false
	if err := s.view(func(tx *bolt.Tx) error {
		has = tx.Bucket(bucketMissed) != nil
		return nil
	}); err != nil || has {
		return err
	}
	return s.update(func(tx *bolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(bucketMissed)
		return err
	})
}

// RecordMissed adds records to the missed-fire log in one transaction. Records of
// rules the store does not hold are left out. Nothing is written if any is invalid.
func (s *Store) RecordMissed(ms []MissedSlot) error {
	if len(ms) == 0 {
		return nil
	}
	for _, m := range ms {
		if err := validateMissed(m); err != nil {
			return s.wrap("record missed slots", err)
		}
	}
	return s.wrap("record missed slots", s.update(func(tx *bolt.Tx) error { return putMissed(tx, ms) }))
}

// CommitBatch is CommitFireRefs of recs with the missed-fire records ms in the same
// transaction (both may be empty): the scheduler's batch, fires and the misses decided
// with them, in one fsync.
func (s *Store) CommitBatch(recs []FireRecord, ms []MissedSlot) ([]protocol.EventRef, error) {
	return s.commitFires(recs, ms)
}

// putMissed writes ms in tx: each rule's records stay the last MissedPerRule. A record
// whose run covers the rule's last record of the same reason replaces it: a skip
// decided again after a restart (its watermark is not stored) is one record, not two.
func putMissed(tx *bolt.Tx, ms []MissedSlot) error {
	mb, rb := tx.Bucket(bucketMissed), tx.Bucket(bucketRules)
	for _, m := range ms {
		rk := idKey(m.RuleID)
		if rb.Get(rk) == nil {
			continue // deleted meanwhile: its log went with it
		}
		v := encodeMissed(m)
		c := mb.Cursor()
		// The rule's last record: the one before the next rule's first.
		var lastK, lastV []byte
		if k, _ := c.Seek(missedKey(m.RuleID+1, 0)); k == nil {
			lastK, lastV = c.Last()
		} else {
			lastK, lastV = c.Prev()
		}
		if lastK != nil && bytes.HasPrefix(lastK, rk) {
			last, err := decodeMissed(lastK, lastV)
			if err != nil {
				return err
			}
			if last.Reason == m.Reason && !m.From.After(last.From) && !m.To.Before(last.To) {
				if err := mb.Put(bytes.Clone(lastK), v); err != nil {
					return fmt.Errorf("missed slot of rule %d: %w", m.RuleID, err)
				}
				continue
			}
		}
		seq, err := mb.NextSequence()
		if err != nil {
			return err
		}
		if err := mb.Put(missedKey(m.RuleID, seq), v); err != nil {
			return fmt.Errorf("missed slot of rule %d: %w", m.RuleID, err)
		}
		if err := trimMissed(mb, rk); err != nil {
			return err
		}
	}
	return nil
}

// trimMissed deletes the oldest records of the rule whose key prefix is rk beyond
// MissedPerRule.
func trimMissed(mb *bolt.Bucket, rk []byte) error {
	var keys [][]byte
	c := mb.Cursor()
	for k, _ := c.Seek(rk); k != nil && bytes.HasPrefix(k, rk); k, _ = c.Next() {
		keys = append(keys, k)
	}
	if len(keys) <= MissedPerRule {
		return nil
	}
	for _, k := range keys[:len(keys)-MissedPerRule] {
		if err := mb.Delete(bytes.Clone(k)); err != nil {
			return err
		}
	}
	return nil
}

// deleteMissed deletes every record of rule id (its deletion).
func deleteMissed(tx *bolt.Tx, id int64) error {
	mb := tx.Bucket(bucketMissed)
	rk := idKey(id)
	c := mb.Cursor()
	for k, _ := c.Seek(rk); k != nil && bytes.HasPrefix(k, rk); k, _ = c.Seek(rk) {
		if err := c.Delete(); err != nil {
			return fmt.Errorf("missed slots of rule %d: %w", id, err)
		}
	}
	return nil
}

// MissedSlots returns rule ruleID's missed-fire records, oldest first (at most
// MissedPerRule); none for a rule without any, or not stored.
func (s *Store) MissedSlots(ruleID int64) ([]MissedSlot, error) {
	var out []MissedSlot
	err := s.view(func(tx *bolt.Tx) error {
		rk := idKey(ruleID)
		c := tx.Bucket(bucketMissed).Cursor()
		for k, v := c.Seek(rk); k != nil && bytes.HasPrefix(k, rk); k, v = c.Next() {
			m, err := decodeMissed(k, v)
			if err != nil {
				return err
			}
			out = append(out, m)
		}
		return nil
	})
	if err != nil {
		return nil, s.wrap("missed slots", err)
	}
	return out, nil
}

// LastFirers is, for each of ids whose watermark has a fire chain, the incarnation that
// fired (or skipped) its latest slot: the chain's last point. One read transaction.
// The node tells a late fire after a change of owner from one after its own outage by it.
func (s *Store) LastFirers(ids []int64) (map[int64]protocol.Incarnation, error) {
	out := make(map[int64]protocol.Incarnation, len(ids))
	err := s.view(func(tx *bolt.Tx) error {
		for _, id := range ids {
			_, chain, ok, err := s.snapshotWatermark(tx, id)
			if err != nil {
				return err
			}
			if ok && len(chain) > 0 {
				out[id] = chain[len(chain)-1].Firer
			}
		}
		return nil
	})
	if err != nil {
		return nil, s.wrap("last firers", err)
	}
	return out, nil
}
