package store

import (
	"cmp"
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
// into the watermarks bucket, touching each page once per cycle.
//
// A fold of the whole journal in one transaction holds the store's single writer for
// hundreds of milliseconds at 20,000 fires/s, and every fire due meanwhile waits. So
// CommitFires folds in a cycle of steps, one per commit (foldStep): each step applies
// the latest record of every rule in one contiguous range of ids (a slice: 1/S of the
// bucket's pages) and leaves the journal as it is; the last step deletes the journal
// keys every slice has folded past. A folded rule keeps its index entry until its keys
// are deleted, so writers keep journaling it (writing the bucket under a journal record
// would be undone by the next fold, and read back wrong): the truth stays the last
// journal record, and the bucket only ever holds an older or equal record.
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
	// defaultFoldSlices: a cycle of 8 steps holds the writer about 1/8 as long per step.
	defaultFoldSlices = 8

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
	records int    // records since the last fold (or cycle of fold steps)
	cycle   foldCycle
}

// foldCycle is a cycle of fold steps under way. Guarded like journalState.
type foldCycle struct {
	next  int      // the slice the next step folds; 0 when no cycle is under way
	cuts  []uint64 // slice i holds the keys in [cuts[i-1], cuts[i]), the ends open
	first uint64   // the journal's last key at step 0: every slice folds past it
}

// inSlice reports whether key k (a rule id's key as a number) is in slice i.
func (c *foldCycle) inSlice(i int, k uint64) bool {
	return (i == 0 || k >= c.cuts[i-1]) && (i == len(c.cuts) || k < c.cuts[i])
}

// sliceCuts splits the watermarks bucket's key range into up to n slices of equal
// width, so that a slice's keys sit on about 1/n of its pages.
func sliceCuts(wb *bolt.Bucket, n int) []uint64 {
	c := wb.Cursor()
	fk, _ := c.First()
	lk, _ := c.Last()
	if fk == nil || n < 2 {
		return nil
	}
	lo, hi := binary.BigEndian.Uint64(fk), binary.BigEndian.Uint64(lk)
	var cuts []uint64
	for i := 1; i < n; i++ {
		cut := lo + (hi-lo)/uint64(n)*uint64(i)
		if cut > lo && (len(cuts) == 0 || cut > cuts[len(cuts)-1]) {
			cuts = append(cuts, cut)
		}
	}
	return cuts
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
	s.j.cycle = foldCycle{}
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

// foldStep folds the next slice of a cycle, starting one if none is under way: in one
// transaction, the last journal record of every rule of the slice goes to the
// watermarks bucket; the last slice's step also deletes the journal keys up to the
// cycle's first step, which every slice has folded past. A failed step changes
// nothing and is tried again. Caller holds s.wmu.
func (s *Store) foldStep() error {
	cy := s.j.cycle
	cy.cuts = slices.Clone(cy.cuts)
	err := s.update(func(tx *bolt.Tx) error {
		jb, wb := tx.Bucket(bucketJournal), tx.Bucket(bucketWatermarks)
		if cy.next == 0 {
			cy.cuts = sliceCuts(wb, s.foldSlices)
		}
		recs, last, err := s.sliceRecords(jb, &cy)
		if err != nil {
			return err
		}
		if cy.next == 0 {
			cy.first = last
		}
		if err := putFolded(wb, recs); err != nil {
			return err
		}
		if s.foldFault != nil {
			if err := s.foldFault(cy.next); err != nil {
				return err
			}
		}
		if cy.next < len(cy.cuts) {
			return nil
		}
		var keys [][]byte
		c := jb.Cursor()
		for k, _ := c.First(); k != nil && binary.BigEndian.Uint64(k) <= cy.first; k, _ = c.Next() {
			keys = append(keys, k)
		}
		for _, k := range keys {
			if err := jb.Delete(k); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	s.imu.Lock()
	defer s.imu.Unlock()
	if cy.next < len(cy.cuts) {
		cy.next++
		s.j.cycle = cy
		return nil
	}
	if cy.first > 0 {
		maps.DeleteFunc(s.j.idx, func(_ int64, e idxEntry) bool { return e.seq <= cy.first })
		s.j.floor = max(s.j.floor, cy.first+1)
	}
	s.j.records = 0
	s.j.cycle = foldCycle{}
	return nil
}

// sliceRecords returns the last journal record of every rule of slice cy.next, in key
// order, and the journal's last key (0 if it is empty). The index has them when it
// covers the whole journal, as it does unless something the index does not know was
// written (then the journal is read, and its errors are the step's). Caller holds s.wmu.
func (s *Store) sliceRecords(jb *bolt.Bucket, cy *foldCycle) ([]journalRec, uint64, error) {
	c := jb.Cursor()
	fk, _ := c.First()
	if fk == nil {
		return nil, 0, nil
	}
	lk, _ := c.Last()
	first, last := binary.BigEndian.Uint64(fk), binary.BigEndian.Uint64(lk)
	var recs []journalRec
	s.imu.RLock()
	covered := first >= s.j.floor && last <= s.j.applied
	if covered {
		for id, e := range s.j.idx {
			if cy.inSlice(cy.next, uint64(id)) {
				r := journalRec{kind: recSet, id: id, wm: e.wm, chain: e.chain}
				if e.tomb {
					r.kind = recTomb
				}
				recs = append(recs, r)
			}
		}
	}
	s.imu.RUnlock()
	if !covered {
		latest := map[int64]journalRec{}
		for k, v := c.First(); k != nil; k, v = c.Next() {
			seq, err := keyID(k)
			if err != nil {
				return nil, 0, err
			}
			err = forEachJournalRec(uint64(seq), v, func(r journalRec) {
				if cy.inSlice(cy.next, uint64(r.id)) {
					latest[r.id] = r
				}
			})
			if err != nil {
				return nil, 0, err
			}
		}
		recs = slices.AppendSeq(recs, maps.Values(latest))
	}
	slices.SortFunc(recs, func(a, b journalRec) int { return cmp.Compare(uint64(a.id), uint64(b.id)) })
	return recs, last, nil
}

// putFolded writes folded records, sorted by key, to the watermarks bucket.
func putFolded(wb *bolt.Bucket, recs []journalRec) error {
	wb.FillPercent = watermarksFill
	for _, r := range recs {
		var err error
		if r.kind == recTomb {
			err = wb.Delete(idKey(r.id))
		} else {
			err = wb.Put(idKey(r.id), encodeWatermark(r.wm, r.chain))
		}
		if err != nil {
			return fmt.Errorf("fold watermark of rule %d: %w", r.id, err)
		}
	}
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
	recs := slices.AppendSeq(make([]journalRec, 0, len(latest)), maps.Values(latest))
	// One pass over the bucket, in key order.
	slices.SortFunc(recs, func(a, b journalRec) int { return cmp.Compare(uint64(a.id), uint64(b.id)) })
	if err := putFolded(wb, recs); err != nil {
		return 0, err
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
