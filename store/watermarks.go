package store

import (
	"cmp"
	"errors"
	"fmt"
	"slices"

	bolt "go.etcd.io/bbolt"

	"github.com/timerd/timerd/cluster/protocol"
)

// The store as protocol.Store, and the protocol's watermark merges.
//
// A watermark of a rule the store does not know is kept all the same, as a watermark
// without a rule: the rule may arrive later (a grant or a peer's fire ahead of the
// node's rule intake), and then PutRule with a nil watermark adopts it. ForEachRule and
// Rule do not show such watermarks (they walk rules); Watermark, PartitionWatermarks and
// the merges do. DeleteRule and RemoveRules delete them like any other.

var _ protocol.Store = (*Store)(nil)

// ErrNoPartitionOf: PartitionWatermarks was called on a store opened without
// Options.PartitionOf.
var ErrNoPartitionOf = errors.New("no PartitionOf in the store's options")

func toProtocol(id int64, wm Watermark, chain protocol.Chain) protocol.Watermark {
	return protocol.Watermark{Rule: id, Slot: timeNanos(wm.Slot), Count: wm.Count, Chain: slices.Clone(chain)}
}

// LoadWatermark is rule's watermark with its fire chain; ok is false if the store has
// none.
func (s *Store) LoadWatermark(rule int64) (wm protocol.Watermark, ok bool, err error) {
	err = s.view(func(tx *bolt.Tx) error {
		w, chain, found, err := s.snapshotWatermark(tx, rule)
		if found {
			wm, ok = toProtocol(rule, w, chain), true
		}
		return err
	})
	if err != nil {
		return protocol.Watermark{}, false, s.wrap("get watermark", err)
	}
	return wm, ok, nil
}

// LoadWatermarks is LoadWatermark of each of ids, in one read transaction: the rules
// the store has a watermark of, by id.
func (s *Store) LoadWatermarks(ids []int64) (map[int64]protocol.Watermark, error) {
	out := make(map[int64]protocol.Watermark, len(ids))
	if len(ids) == 0 {
		return out, nil
	}
	err := s.view(func(tx *bolt.Tx) error {
		for _, id := range ids {
			w, chain, found, err := s.snapshotWatermark(tx, id)
			if err != nil {
				return err
			}
			if found {
				out[id] = toProtocol(id, w, chain)
			}
		}
		return nil
	})
	if err != nil {
		return nil, s.wrap("get watermarks", err)
	}
	return out, nil
}

// Watermark is LoadWatermark for protocol.Store, which has no error: a read error is
// reported as no watermark and kept for ReadErr.
func (s *Store) Watermark(rule int64) (protocol.Watermark, bool) {
	wm, ok, err := s.LoadWatermark(rule)
	if err != nil {
		s.readFailed(err)
	}
	return wm, ok
}

// PartitionWatermarks is PartitionWatermarksOf with Options.PartitionOf, without an
// error, as protocol.Store reads: a read error (or no PartitionOf) is kept for ReadErr,
// and what was read before it is returned.
func (s *Store) PartitionWatermarks(parts []int) []protocol.Watermark {
	if s.partitionOf == nil {
		s.readFailed(s.wrap("partition watermarks", ErrNoPartitionOf))
		return nil
	}
	wms, err := s.PartitionWatermarksOf(parts, s.partitionOf)
	if err != nil {
		s.readFailed(err)
	}
	return wms
}

// FiredWatermarks is PartitionWatermarks less the watermarks of rules never fired, for
// protocol.Store (a node reads its partition index instead: IndexedFiredWatermarks).
func (s *Store) FiredWatermarks(parts []int) []protocol.Watermark {
	return slices.DeleteFunc(s.PartitionWatermarks(parts), protocol.NotFired)
}

// PartitionWatermarksOf returns the watermarks of every rule of the partitions, by
// rule id, from one snapshot: those of rules without a rule record included. It scans
// every watermark (O(rules), about 100 ms for a million): acquisitions, which call it,
// are rare.
func (s *Store) PartitionWatermarksOf(parts []int, partitionOf func(rule int64) int) ([]protocol.Watermark, error) {
	if len(parts) == 0 {
		return nil, nil
	}
	want := make(map[int]bool, len(parts))
	for _, p := range parts {
		want[p] = true
	}
	var out []protocol.Watermark
	err := s.view(func(tx *bolt.Tx) error {
		journal, err := snapshotJournal(tx)
		if err != nil {
			return err
		}
		c := tx.Bucket(bucketWatermarks).Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			id, err := keyID(k)
			if err != nil {
				return err
			}
			if _, ok := journal[id]; ok || !want[partitionOf(id)] {
				continue
			}
			wm, chain, err := decodeWatermark(v)
			if err != nil {
				return fmt.Errorf("rule %d: %w", id, err)
			}
			out = append(out, toProtocol(id, wm, chain))
		}
		for id, r := range journal {
			if r.kind == recSet && want[partitionOf(id)] {
				out = append(out, toProtocol(id, r.wm, r.chain))
			}
		}
		return nil
	})
	if err != nil {
		return out, s.wrap("partition watermarks", err)
	}
	slices.SortFunc(out, func(a, b protocol.Watermark) int { return cmp.Compare(a.Rule, b.Rule) })
	return out, nil
}

func (s *Store) readFailed(err error) {
	s.readErrs.Add(1)
	s.readErr.Store(&err)
}

// ReadErr is the last error of a read through protocol.Store (Watermark,
// PartitionWatermarks), which cannot return one, and how many there were. The host
// checks it after each Step: an answer built on a failed read may lack watermarks.
func (s *Store) ReadErr() (n uint64, last error) {
	if p := s.readErr.Load(); p != nil {
		last = *p
	}
	return s.readErrs.Load(), last
}

// MergeWatermarks merges watermarks into the store in one transaction (StartFiring's
// and SaveWatermarks' watermarks): per rule the result is protocol.Merge of the stored
// and the given ones, so a slot or count never moves back and the chains are joined.
// A rule the store does not know keeps its watermark (see above). Nothing is written
// if any watermark is invalid (rule id not positive, a chain point without a firer or
// not ending after it starts).
func (s *Store) MergeWatermarks(wms []protocol.Watermark) error {
	var b ProtocolBatch
	if err := b.MergeWatermarks(wms); err != nil {
		return s.wrap("merge watermarks", err)
	}
	return s.commitProtocol("merge watermarks", &b)
}

// mergeWatermarksTx merges wms into tx, writing a rule's watermark only where the merge
// changes it; records of journaled rules are returned for journalAppend's caller to
// index. Caller holds s.wmu.
func (s *Store) mergeWatermarksTx(tx *bolt.Tx, wms []protocol.Watermark) ([]journalRec, error) {
	var jrecs []journalRec
	wb := tx.Bucket(bucketWatermarks)
	merged := make(map[int64]protocol.Watermark, len(wms))
	order := make([]int64, 0, len(wms))
	for _, w := range wms {
		if cur, ok := merged[w.Rule]; ok {
			merged[w.Rule] = protocol.Merge(cur, w)
			continue
		}
		wm, chain, ok, err := s.currentWatermark(tx, w.Rule)
		if err != nil {
			return nil, err
		}
		order = append(order, w.Rule)
		if !ok {
			merged[w.Rule] = protocol.Merge(w, w) // normalizes the chain
			continue
		}
		cur := toProtocol(w.Rule, wm, chain)
		if m := protocol.Merge(cur, w); !watermarkEqual(m, cur) {
			merged[w.Rule] = m
		} else {
			order = order[:len(order)-1] // nothing new
		}
	}
	slices.Sort(order)
	for _, id := range order {
		m := merged[id]
		wm := Watermark{Slot: nanosTime(m.Slot), Count: m.Count}
		if s.journaled(id) {
			jrecs = append(jrecs, journalRec{kind: recSet, id: id, wm: wm, chain: m.Chain})
			continue
		}
		if err := wb.Put(idKey(id), encodeWatermark(wm, m.Chain)); err != nil {
			return nil, fmt.Errorf("rule %d watermark: %w", id, err)
		}
	}
	return jrecs, nil
}

func validWatermark(w protocol.Watermark) error {
	if w.Rule <= 0 {
		return fmt.Errorf("watermark of rule id %d: must be positive", w.Rule)
	}
	for _, p := range w.Chain {
		if p.Firer.Node == "" || p.Last <= p.From {
			return fmt.Errorf("watermark of rule %d: bad chain point %+v", w.Rule, p)
		}
	}
	return nil
}

func watermarkEqual(a, b protocol.Watermark) bool {
	return a.Slot == b.Slot && a.Count == b.Count && slices.Equal(a.Chain, b.Chain)
}
