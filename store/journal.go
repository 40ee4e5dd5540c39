package store

import (
	"encoding/binary"
	"fmt"
	"maps"
	"slices"

	bolt "go.etcd.io/bbolt"

	"github.com/timerd/timerd/cluster/protocol"
)

// The watermark journal. Fires hit rules at random, so writing each fire's watermark
// in place dirties about one page of the watermarks bucket per fire (~630 pages for a
// batch of 1000 among 100k rules, ~80 % of the bytes a commit writes). Instead a batch
// appends all its watermarks as one packed value to bucket wmjournal, in the same
// transaction as its outbox entries, and every foldAfter records the journal is folded
// into the watermarks bucket in one transaction, touching each page once.
//
// The truth for a rule's watermark is its last journal record if any, else the
// watermarks bucket. Open folds whatever a previous run left. Every writer keeps this
// true: CommitFires and PutRules journal a watermark when the journal already holds one
// for that rule (else they write the bucket), DeleteRule journals a tombstone.
//
// s.idx mirrors the journal (rule id → last record) for writers, which are serialized
// by s.wmu and so see it exactly; readers use it only when it provably matches their
// snapshot and otherwise read the journal of the snapshot.

const (
	recSet  = 1
	recTomb = 2

	journalRecLen    = 1 + 8 + 8 + 8 // a record of a v1 value
	defaultFoldAfter = 50_000

	// journalV2 values hold records with fire chains: kind | id | slot | count | chain
	// (appendChain; a uvarint 0 for none). v1 values, fixed 25-byte records without
	// chains, are still read. sealedV3 values are v2's records and a crc32c of the value.
	journalV2 = 2
)

type journalRec struct {
	kind  byte
	id    int64
	wm    Watermark
	chain protocol.Chain
}

type idxEntry struct {
	seq   uint64 // journal key holding the record
	tomb  bool
	wm    Watermark
	chain protocol.Chain // shared: never modified in place
}

// journalState is guarded by s.imu; writers change it only while holding s.wmu.
type journalState struct {
	idx     map[int64]idxEntry
	floor   uint64 // idx covers every journal key ≥ floor …
	applied uint64 // … up to applied
	records int    // records since the last fold
}

func appendJournalRec(b []byte, r journalRec) []byte {
	b = append(b, r.kind)
	b = binary.BigEndian.AppendUint64(b, uint64(r.id))
	b = appendTime(b, r.wm.Slot)
	b = binary.BigEndian.AppendUint64(b, r.wm.Count)
	if len(r.chain) == 0 {
		return append(b, 0)
	}
	return appendChain(b, r.chain)
}

// forEachJournalRec decodes one journal value.
func forEachJournalRec(seq uint64, v []byte, fn func(journalRec)) error {
	if len(v) > 0 && v[0] == sealedV3 {
		body, err := unseal(v)
		if err != nil {
			return fmt.Errorf("watermark journal entry %d: %w", seq, err)
		}
		v = body
	}
	if len(v) > 0 && (v[0] == journalV2 || v[0] == sealedV3) {
		d := decoder{b: v[1:]}
		for len(d.b) > 0 && d.err == nil {
			if len(d.b) < 1+8 {
				d.fail("short record")
				break
			}
			r := journalRec{kind: d.b[0], id: int64(binary.BigEndian.Uint64(d.b[1:]))}
			d.b = d.b[9:]
			if r.kind != recSet && r.kind != recTomb {
				return fmt.Errorf("%w: watermark journal entry %d: record kind %d", ErrCorrupt, seq, r.kind)
			}
			r.wm = Watermark{Slot: d.time("slot"), Count: d.u64("count")}
			r.chain = d.chain()
			if d.err == nil {
				fn(r)
			}
		}
		if d.err != nil {
			return fmt.Errorf("watermark journal entry %d: %w", seq, d.err)
		}
		return nil
	}
	if len(v) == 0 || v[0] != codecV1 || (len(v)-1)%journalRecLen != 0 {
		return fmt.Errorf("%w: watermark journal entry %d: bad length or version", ErrCorrupt, seq)
	}
	for p := v[1:]; len(p) > 0; p = p[journalRecLen:] {
		r := journalRec{kind: p[0], id: int64(binary.BigEndian.Uint64(p[1:]))}
		if r.kind != recSet && r.kind != recTomb {
			return fmt.Errorf("%w: watermark journal entry %d: record kind %d", ErrCorrupt, seq, r.kind)
		}
		r.wm.Slot = nanosTime(int64(binary.BigEndian.Uint64(p[9:])))
		r.wm.Count = binary.BigEndian.Uint64(p[17:])
		fn(r)
	}
	return nil
}

// journalAppend writes recs as one journal value in tx. Caller holds s.wmu and applies
// the returned seq to the index after the commit.
func journalAppend(tx *bolt.Tx, recs []journalRec) (uint64, error) {
	if len(recs) == 0 {
		return 0, nil
	}
	jb := tx.Bucket(bucketJournal)
	jb.FillPercent = 1.0 // append-only
	seq, err := jb.NextSequence()
	if err != nil {
		return 0, err
	}
	n := 1 + crcLen
	for _, r := range recs {
		n += journalRecLen + 1
		if len(r.chain) > 0 {
			n += chainLen(r.chain)
		}
	}
	v := make([]byte, 1, n)
	v[0] = sealedV3
	for _, r := range recs {
		v = appendJournalRec(v, r)
	}
	return seq, jb.Put(binary.BigEndian.AppendUint64(nil, seq), seal(v))
}

// indexJournal records a committed journal value in the index. Caller holds s.wmu.
func (s *Store) indexJournal(seq uint64, recs []journalRec) {
	if len(recs) == 0 {
		return
	}
	s.imu.Lock()
	defer s.imu.Unlock()
	for _, r := range recs {
		s.j.idx[r.id] = idxEntry{seq: seq, tomb: r.kind == recTomb, wm: r.wm, chain: r.chain}
	}
	s.j.applied = seq
	s.j.records += len(recs)
}

// currentWatermark is the latest watermark of id, with its chain (shared: copy before
// changing it), for a writer (holding s.wmu) in tx.
func (s *Store) currentWatermark(tx *bolt.Tx, id int64) (wm Watermark, chain protocol.Chain, ok bool, err error) {
	s.imu.RLock()
	e, inIdx := s.j.idx[id]
	s.imu.RUnlock()
	if inIdx {
		if e.tomb {
			return Watermark{}, nil, false, nil
		}
		return e.wm, e.chain, true, nil
	}
	v := tx.Bucket(bucketWatermarks).Get(idKey(id))
	if v == nil {
		return Watermark{}, nil, false, nil
	}
	wm, chain, err = decodeWatermark(v)
	if err != nil {
		return Watermark{}, nil, false, fmt.Errorf("rule %d: %w", id, err)
	}
	return wm, chain, true, nil
}

// journaled reports whether the journal holds a record for id (writer, holding s.wmu).
func (s *Store) journaled(id int64) bool {
	s.imu.RLock()
	defer s.imu.RUnlock()
	_, ok := s.j.idx[id]
	return ok
}

// fold applies the whole journal to the watermarks bucket and empties it, in one
// transaction. Caller holds s.wmu.
func (s *Store) fold() error {
	var last uint64
	err := s.update(func(tx *bolt.Tx) error {
		var err error
		last, err = foldTx(tx)
		return err
	})
	if err != nil {
		return err
	}
	s.imu.Lock()
	defer s.imu.Unlock()
	if last == 0 {
		return nil // nothing was journaled
	}
	maps.DeleteFunc(s.j.idx, func(_ int64, e idxEntry) bool { return e.seq <= last })
	s.j.floor = last + 1
	if s.j.applied < last {
		s.j.applied = last
	}
	s.j.records = 0
	return nil
}

// foldTx applies and deletes the journal in tx; it returns the last key folded (0 if
// the journal was empty).
func foldTx(tx *bolt.Tx) (uint64, error) {
	jb, wb := tx.Bucket(bucketJournal), tx.Bucket(bucketWatermarks)
	latest := map[int64]journalRec{}
	var keys [][]byte
	c := jb.Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		seq, err := keyID(k)
		if err != nil {
			return 0, err
		}
		if err := forEachJournalRec(uint64(seq), v, func(r journalRec) { latest[r.id] = r }); err != nil {
			return 0, err
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return 0, nil
	}
	ids := make([]int64, 0, len(latest))
	for id := range latest {
		ids = append(ids, id)
	}
	slices.Sort(ids) // one pass over the bucket, in key order
	wb.FillPercent = watermarksFill
	for _, id := range ids {
		r := latest[id]
		var err error
		if r.kind == recTomb {
			err = wb.Delete(idKey(id))
		} else {
			err = wb.Put(idKey(id), encodeWatermark(r.wm, r.chain))
		}
		if err != nil {
			return 0, fmt.Errorf("fold watermark of rule %d: %w", id, err)
		}
	}
	for _, k := range keys {
		if err := jb.Delete(k); err != nil {
			return 0, err
		}
	}
	return uint64(int64(binary.BigEndian.Uint64(keys[len(keys)-1]))), nil
}

// snapshotWatermark is id's watermark as of tx (a reader's snapshot), with its chain
// (shared: copy before changing it); ok is false when it has none.
func (s *Store) snapshotWatermark(tx *bolt.Tx, id int64) (Watermark, protocol.Chain, bool, error) {
	c := tx.Bucket(bucketJournal).Cursor()
	fk, _ := c.First()
	if fk != nil {
		first := binary.BigEndian.Uint64(fk)
		lk, _ := c.Last()
		last := binary.BigEndian.Uint64(lk)
		s.imu.RLock()
		e, ok := s.j.idx[id]
		usable := first >= s.j.floor && last <= s.j.applied
		s.imu.RUnlock()
		switch {
		case usable && ok && e.seq >= first && e.seq <= last:
			if e.tomb {
				return Watermark{}, nil, false, nil
			}
			return e.wm, e.chain, true, nil
		case usable && !ok:
			// No record for id in the snapshot's journal: the bucket has it.
		default:
			// The index and the snapshot disagree (a commit or fold raced this read):
			// look in the snapshot's journal, newest first.
			var found *journalRec
			for k, v := c.Last(); k != nil && found == nil; k, v = c.Prev() {
				err := forEachJournalRec(binary.BigEndian.Uint64(k), v, func(r journalRec) {
					if r.id == id {
						found = &r
					}
				})
				if err != nil {
					return Watermark{}, nil, false, err
				}
			}
			if found != nil {
				if found.kind == recTomb {
					return Watermark{}, nil, false, nil
				}
				return found.wm, found.chain, true, nil
			}
		}
	}
	v := tx.Bucket(bucketWatermarks).Get(idKey(id))
	if v == nil {
		return Watermark{}, nil, false, nil
	}
	wm, chain, err := decodeWatermark(v)
	if err != nil {
		return Watermark{}, nil, false, fmt.Errorf("rule %d: %w", id, err)
	}
	return wm, chain, true, nil
}

// snapshotJournal reads the whole journal of tx: rule id → last record.
func snapshotJournal(tx *bolt.Tx) (map[int64]journalRec, error) {
	out := map[int64]journalRec{}
	c := tx.Bucket(bucketJournal).Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		if err := forEachJournalRec(binary.BigEndian.Uint64(k), v, func(r journalRec) { out[r.id] = r }); err != nil {
			return nil, err
		}
	}
	return out, nil
}
