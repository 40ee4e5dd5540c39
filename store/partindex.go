package store

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"sync"

	bolt "go.etcd.io/bbolt"

	"github.com/timerd/timerd/cluster/protocol"
)

// The partition index. In a cluster every node stores every rule, but fires only those
// of the partitions it holds: an acquisition or a release of a few partitions must read
// those partitions' rules and watermarks, not walk a store of a million. The index keeps,
// in memory, each partition's ids: of the rules stored and of the watermarks stored
// without a rule (a grant or a peer's fire ahead of the rule). It is a superset: an id
// leaves it only when both its rule and its watermark are deleted (DeleteRule,
// RemoveRules), and a reader looks every id up in its snapshot, so an id indexed but
// gone reads as nothing. Writers keep it under s.wmu, after their commit; a reader
// that took the ids before a commit that added one and read the store after it misses
// that id, as if it had read before the commit (each id is read whole or not at all).
//
// Cost: 8 bytes per id in a sorted slice per partition (and the slices' spare capacity),
// about 12 bytes a rule at 1,000,000 rules; an insert is a binary search and a move of
// the partition's ids (61 at a million rules over 16,381 partitions).
//
// It also keeps, apart, the ids whose watermark has fired (a count or a fire chain): the
// protocol reads only those (grants, store copies, an acquisition's newest epoch), as a
// rule never fired has its anchor for watermark, which every member derives from the
// rule. A million rules of long intervals made every grant read a tenth of a million
// watermarks, in the protocol's step, to send none of them. Also a superset: an id stays
// until its rule and watermark are deleted, and the readers keep fired watermarks only.

// ErrNotIndexed: a partition read was asked of a store without a partition index
// (IndexPartitions).
var ErrNotIndexed = errors.New("store has no partition index")

// scanShare: a read of partitions holding more than 1/scanShare of the indexed ids walks
// the bucket's keys instead of looking each id up: at 1,000,000 rules a lookup took
// ~2 µs and a step of a walk ~0.1 µs (BenchmarkAdoption, grant). A transfer of every
// watermark, a node acquiring a large share (alone, or one of a few) walks.
const scanShare = 16

type partIndex struct {
	of    func(int64) int
	mu    sync.RWMutex
	ids   map[int][]int64 // partition → ids, ascending
	n     int             // ids indexed
	fired map[int][]int64 // partition → ids of fired watermarks, ascending
}

func (x *partIndex) addLocked(id int64) {
	if insertID(x.ids, x.of(id), id) {
		x.n++
	}
}

func (x *partIndex) addFiredLocked(id int64) {
	p := x.of(id)
	if insertID(x.ids, p, id) {
		x.n++
	}
	insertID(x.fired, p, id)
}

func (x *partIndex) removeLocked(id int64) {
	p := x.of(id)
	if deleteID(x.ids, p, id) {
		x.n--
	}
	deleteID(x.fired, p, id)
}

// insertID adds id to m[p] in order; false if it was there.
func insertID(m map[int][]int64, p int, id int64) bool {
	ids := m[p]
	i, found := slices.BinarySearch(ids, id)
	if found {
		return false
	}
	m[p] = slices.Insert(ids, i, id)
	return true
}

// deleteID removes id from m[p]; false if it was not there.
func deleteID(m map[int][]int64, p int, id int64) bool {
	ids := m[p]
	i, found := slices.BinarySearch(ids, id)
	if !found {
		return false
	}
	ids = slices.Delete(ids, i, i+1)
	if len(ids) == 0 {
		delete(m, p)
	} else {
		m[p] = ids
	}
	return true
}

// firedWatermark is protocol.Watermark.Fired of the store's form of a watermark.
func firedWatermark(wm Watermark, chain protocol.Chain) bool { return wm.Count > 0 || len(chain) > 0 }

// idsOf returns the ids of parts, ascending, and whether they are few enough to look up
// one by one (scanShare).
func (x *partIndex) idsOf(parts []int) (ids []int64, lookup bool) { return x.idsIn(x.ids, parts) }

// firedOf is idsOf for the ids of fired watermarks.
func (x *partIndex) firedOf(parts []int) (ids []int64, lookup bool) { return x.idsIn(x.fired, parts) }

func (x *partIndex) idsIn(m map[int][]int64, parts []int) (ids []int64, lookup bool) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	n := 0
	for _, p := range parts {
		n += len(m[p])
	}
	if n*scanShare > x.n {
		return nil, false
	}
	ids = make([]int64, 0, n)
	for _, p := range parts {
		ids = append(ids, m[p]...)
	}
	slices.Sort(ids) // one read of the pages in key order
	return ids, true
}

// IndexPartitions builds the partition index with partitionOf (the cluster's partition
// of a rule id) from one walk of the rules and watermarks, and keeps it from then on:
// ForEachPartitionRule, PartitionIDs and IndexedPartitionWatermarks read it. Writers wait
// while it is built. Calling it again rebuilds it (with a new partitionOf).
func (s *Store) IndexPartitions(partitionOf func(rule int64) int) error {
	if partitionOf == nil {
		return s.wrap("index partitions", errors.New("nil partitionOf"))
	}
	x := &partIndex{of: partitionOf, ids: map[int][]int64{}, fired: map[int][]int64{}}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	err := s.view(func(tx *bolt.Tx) error {
		// Both buckets in key order, merged: each partition's ids are appended ascending.
		rc, wc := tx.Bucket(bucketRules).Cursor(), tx.Bucket(bucketWatermarks).Cursor()
		rk, _ := rc.First()
		wk, wv := wc.First()
		for rk != nil || wk != nil {
			var k, v []byte // v: the watermark, if k has one
			switch c := bytes.Compare(rk, wk); {
			case wk == nil || rk != nil && c < 0:
				k, rk = rk, next(rc)
			case rk == nil || c > 0:
				k, v = wk, wv
				wk, wv = wc.Next()
			default:
				k, v, rk = rk, wv, next(rc)
				wk, wv = wc.Next()
			}
			id, err := keyID(k)
			if err != nil {
				return err
			}
			p := partitionOf(id)
			x.ids[p] = append(x.ids[p], id)
			x.n++
			if v == nil {
				continue
			}
			wm, chain, err := decodeWatermark(v)
			if err != nil {
				return fmt.Errorf("rule %d: %w", id, err)
			}
			if firedWatermark(wm, chain) {
				x.fired[p] = append(x.fired[p], id)
			}
		}
		return nil
	})
	if err != nil {
		return s.wrap("index partitions", err)
	}
	// Watermarks journaled since Open (the journal's index matches the store under wmu).
	s.imu.RLock()
	for id, e := range s.j.idx {
		switch {
		case e.tomb:
		case firedWatermark(e.wm, e.chain):
			x.addFiredLocked(id)
		default:
			x.addLocked(id)
		}
	}
	s.imu.RUnlock()
	s.parts.Store(x)
	return nil
}

func next(c *bolt.Cursor) []byte {
	k, _ := c.Next()
	return k
}

// indexAdd adds the ids of xs to the partition index, if the store keeps one. Writers
// call it under s.wmu after their commit.
func indexAdd[T any](s *Store, xs []T, id func(T) int64) {
	indexEach(s, xs, id, (*partIndex).addLocked)
}

// indexFired adds the ids of fired watermarks to the partition index, as indexAdd.
func indexFired(s *Store, ids []int64) {
	indexEach(s, ids, func(id int64) int64 { return id }, (*partIndex).addFiredLocked)
}

func indexEach[T any](s *Store, xs []T, id func(T) int64, add func(*partIndex, int64)) {
	x := s.parts.Load()
	if x == nil || len(xs) == 0 {
		return
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	for _, v := range xs {
		add(x, id(v))
	}
}

// firedIDs are the ids of the records of recs that set a fired watermark.
func firedIDs(recs []journalRec) []int64 {
	var ids []int64
	for _, r := range recs {
		if r.kind == recSet && firedWatermark(r.wm, r.chain) {
			ids = append(ids, r.id)
		}
	}
	return ids
}

// indexRemove removes the ids of xs, whose rules and watermarks a commit deleted.
func indexRemove[T any](s *Store, xs []T, id func(T) int64) {
	x := s.parts.Load()
	if x == nil || len(xs) == 0 {
		return
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	for _, v := range xs {
		x.removeLocked(id(v))
	}
}

// PartitionIDs returns the ids the partition index holds for parts, ascending: every
// rule stored of them, and ids of watermarks without a rule (and, for a moment, of rules
// being deleted). ErrNotIndexed without IndexPartitions.
func (s *Store) PartitionIDs(parts []int) ([]int64, error) {
	x := s.parts.Load()
	if x == nil {
		return nil, ErrNotIndexed
	}
	x.mu.RLock()
	defer x.mu.RUnlock()
	var ids []int64
	for _, p := range parts {
		ids = append(ids, x.ids[p]...)
	}
	slices.Sort(ids)
	return ids, nil
}

// IndexedIDs is the number of ids the partition index holds (0 without one).
func (s *Store) IndexedIDs() int {
	x := s.parts.Load()
	if x == nil {
		return 0
	}
	x.mu.RLock()
	defer x.mu.RUnlock()
	return x.n
}

// ForEachPartitionRule is ForEachRule for the rules of parts only: fn is called for each
// of them, in id order, with its watermark (zero if none), from one snapshot. It looks
// up the partition index's ids (a walk of every rule when they are a large share of the
// store). An error from fn stops the walk and is returned; fn must not write to the
// store. ErrNotIndexed without IndexPartitions.
func (s *Store) ForEachPartitionRule(parts []int, fn func(Rule, Watermark) error) error {
	x := s.parts.Load()
	if x == nil {
		return ErrNotIndexed
	}
	if len(parts) == 0 {
		return nil
	}
	ids, lookup := x.idsOf(parts)
	inFn := false
	call := func(r Rule, wm Watermark) error {
		inFn = true
		err := fn(r, wm)
		inFn = false
		if err != nil {
			return &callbackError{err}
		}
		return nil
	}
	err := s.viewCallback(&inFn, func(tx *bolt.Tx) error {
		if !lookup {
			want := partSet(parts)
			return walkPartitionRules(tx, func(id int64) bool { return want[x.of(id)] }, call)
		}
		wms, err := s.watermarksAt(tx, ids)
		if err != nil {
			return err
		}
		rb := tx.Bucket(bucketRules)
		for i, id := range ids {
			v := rb.Get(idKey(id))
			if v == nil {
				continue // a watermark without a rule, or deleted since
			}
			r, err := decodeRule(id, v)
			if err != nil {
				return err
			}
			if err := call(r, wms[i].wm); err != nil {
				return err
			}
		}
		return nil
	})
	if ce := (*callbackError)(nil); errors.As(err, &ce) {
		return ce.err
	}
	return s.wrap("read partition rules", err)
}

// IndexedPartitionWatermarks is PartitionWatermarksOf with the partition index: the
// watermarks of every rule of parts (stored or not), ascending by rule, looked up by id
// (a walk of every watermark when they are a large share of the store). ErrNotIndexed
// without IndexPartitions.
func (s *Store) IndexedPartitionWatermarks(parts []int) ([]protocol.Watermark, error) {
	return s.indexedWatermarks(parts, (*partIndex).idsOf)
}

// IndexedFiredWatermarks is IndexedPartitionWatermarks less the watermarks of rules
// never fired (no count, no chain: a rule's anchor), read by the index of fired ones:
// what the protocol sends and reads of a partition (protocol.Store).
func (s *Store) IndexedFiredWatermarks(parts []int) ([]protocol.Watermark, error) {
	wms, err := s.indexedWatermarks(parts, (*partIndex).firedOf)
	return slices.DeleteFunc(wms, protocol.NotFired), err
}

// indexedWatermarks reads the watermarks of the ids idsOf gives for parts, or walks
// the partitions' watermarks when idsOf says they are too many to look up.
func (s *Store) indexedWatermarks(parts []int, idsOf func(*partIndex, []int) ([]int64, bool)) ([]protocol.Watermark, error) {
	x := s.parts.Load()
	if x == nil {
		return nil, ErrNotIndexed
	}
	if len(parts) == 0 {
		return nil, nil
	}
	ids, lookup := idsOf(x, parts)
	if !lookup {
		return s.PartitionWatermarksOf(parts, x.of)
	}
	return s.lookupWatermarks(ids)
}

// lookupWatermarks reads the watermarks of ids (ascending), in one snapshot.
func (s *Store) lookupWatermarks(ids []int64) ([]protocol.Watermark, error) {
	var out []protocol.Watermark
	err := s.view(func(tx *bolt.Tx) error {
		wms, err := s.watermarksAt(tx, ids)
		if err != nil {
			return err
		}
		for i, id := range ids {
			if wms[i].ok {
				out = append(out, toProtocol(id, wms[i].wm, wms[i].chain))
			}
		}
		return nil
	})
	if err != nil {
		return nil, s.wrap("partition watermarks", err)
	}
	return out, nil
}

// walkPartitionRules is forEachRule's walk for the rules whose id keep says yes to: a
// rule that is not kept is not decoded.
func walkPartitionRules(tx *bolt.Tx, keep func(int64) bool, call func(Rule, Watermark) error) error {
	journal, err := snapshotJournal(tx)
	if err != nil {
		return err
	}
	rc, wc := tx.Bucket(bucketRules).Cursor(), tx.Bucket(bucketWatermarks).Cursor()
	wk, wv := wc.First()
	for k, v := rc.First(); k != nil; k, v = rc.Next() {
		id, err := keyID(k)
		if err != nil {
			return err
		}
		if !keep(id) {
			continue
		}
		r, err := decodeRule(id, v)
		if err != nil {
			return err
		}
		for wk != nil && bytes.Compare(wk, k) < 0 {
			wk, wv = wc.Next()
		}
		wm, err := joinedWatermark(journal, id, k, wk, wv)
		if err != nil {
			return err
		}
		if err := call(r, wm); err != nil {
			return err
		}
	}
	return nil
}

func partSet(parts []int) map[int]bool {
	want := make(map[int]bool, len(parts))
	for _, p := range parts {
		want[p] = true
	}
	return want
}

type snapWM struct {
	wm    Watermark
	chain protocol.Chain // shared: copy before changing it
	ok    bool
}

// watermarksAt is snapshotWatermark for many ids in one snapshot: the journal index is
// checked against the snapshot once, and when it does not match (a commit or a fold
// raced this read) the snapshot's journal is read once, not once per id.
func (s *Store) watermarksAt(tx *bolt.Tx, ids []int64) ([]snapWM, error) {
	out := make([]snapWM, len(ids))
	fromBucket := make([]bool, len(ids))
	c := tx.Bucket(bucketJournal).Cursor()
	fk, _ := c.First()
	if fk == nil {
		for i := range fromBucket {
			fromBucket[i] = true
		}
	} else {
		first := binary.BigEndian.Uint64(fk)
		lk, _ := c.Last()
		last := binary.BigEndian.Uint64(lk)
		var slow []int // ids the index cannot answer for this snapshot
		s.imu.RLock()
		usable := first >= s.j.floor && last <= s.j.applied
		for i, id := range ids {
			e, ok := s.j.idx[id]
			switch {
			case usable && ok && e.seq >= first && e.seq <= last:
				if !e.tomb {
					out[i] = snapWM{wm: e.wm, chain: e.chain, ok: true}
				}
			case usable && !ok:
				fromBucket[i] = true
			default:
				slow = append(slow, i)
			}
		}
		s.imu.RUnlock()
		if len(slow) > 0 {
			journal, err := snapshotJournal(tx)
			if err != nil {
				return nil, err
			}
			for _, i := range slow {
				r, ok := journal[ids[i]]
				switch {
				case !ok:
					fromBucket[i] = true
				case r.kind == recSet:
					out[i] = snapWM{wm: r.wm, chain: r.chain, ok: true}
				}
			}
		}
	}
	wb := tx.Bucket(bucketWatermarks)
	for i, id := range ids {
		if !fromBucket[i] {
			continue
		}
		v := wb.Get(idKey(id))
		if v == nil {
			continue
		}
		wm, chain, err := decodeWatermark(v)
		if err != nil {
			return nil, fmt.Errorf("rule %d: %w", id, err)
		}
		out[i] = snapWM{wm: wm, chain: chain, ok: true}
	}
	return out, nil
}
