package store

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/timerd/timerd/scheduler"
)

// Rule is a timer rule as the node keeps it; Params is stored as given.
type Rule struct {
	ID         int64
	Ref        string
	TriggerRef string
	Params     json.RawMessage
	// UpdatedAt is the rule's source version: when Attune last changed it (the
	// lifecycle message's timestamp, the listing's updated). Zero when unknown: a
	// rule stored before versions were kept (codec v1) reads as zero.
	UpdatedAt time.Time
	// Timer is the rule's parsed timer, stored in binary form next to Params so that a
	// restart needs no JSON parsing. On put it must be nil or what scheduler.Parse gives
	// for (TriggerRef, Params, ID); when nil the store parses Params itself. Rule and
	// ForEachRule return it decoded; it is nil when Params do not parse (or name a time
	// zone this build does not know): the caller's own Parse says why.
	Timer *scheduler.Timer
}

// Tombstone is a removed rule: its id and the source version of its removal, kept so
// that an older change arriving later does not bring the rule back.
type Tombstone struct {
	ID      int64
	Version time.Time
}

// Watermark is the last slot fired (or the baseline) and the number of fires so far.
// The zero Watermark means none recorded.
type Watermark struct {
	Slot  time.Time
	Count uint64
}

// PutRule inserts or replaces r, and drops its tombstone if it has one; a non-nil wm
// also sets its watermark in the same transaction (keeping its fire chain), a nil wm
// leaves any watermark as it is, including one MergeWatermarks stored before the rule
// arrived.
func (s *Store) PutRule(r Rule, wm *Watermark) error {
	return s.wrap("put rule", s.putRules([]Rule{r}, []*Watermark{wm}))
}

// PutRules is PutRule for many rules in one transaction (reconcile, bulk load). wms is
// nil or as long as rs; a nil entry leaves that rule's watermark alone. If the same id
// appears twice the later one wins. Nothing is written if any rule is invalid.
func (s *Store) PutRules(rs []Rule, wms []*Watermark) error {
	return s.wrap("put rules", s.putRules(rs, wms))
}

func (s *Store) putRules(rs []Rule, wms []*Watermark) error {
	if len(wms) != 0 && len(wms) != len(rs) {
		return fmt.Errorf("%d watermarks for %d rules: want none or one per rule", len(wms), len(rs))
	}
	if len(rs) == 0 {
		return nil
	}
	// Encoded before the write lock: encoding may parse a rule's params.
	vals := make([][]byte, len(rs))
	for i, r := range rs {
		if err := validateRule(r); err != nil {
			return err
		}
		vals[i] = encodeRule(r)
		if len(wms) > 0 && wms[i] != nil {
			if err := checkTime(r.ID, "watermark Slot", wms[i].Slot); err != nil {
				return err
			}
		}
	}
	// Writing in key order keeps the B-tree walk local; stable so the later duplicate wins.
	order := make([]int, len(rs))
	for i := range order {
		order[i] = i
	}
	if !slices.IsSortedFunc(rs, func(a, b Rule) int { return cmp.Compare(a.ID, b.ID) }) {
		slices.SortStableFunc(order, func(a, b int) int { return cmp.Compare(rs[a].ID, rs[b].ID) })
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	var (
		jseq  uint64
		jrecs []journalRec
		added int64
		fired []int64 // rules whose watermark tells of a fire
	)
	err := s.update(func(tx *bolt.Tx) error {
		jrecs, added, fired = jrecs[:0], 0, fired[:0]
		rb, wb, tb := tx.Bucket(bucketRules), tx.Bucket(bucketWatermarks), tx.Bucket(bucketTombstones)
		rb.FillPercent, wb.FillPercent = rulesFill, watermarksFill
		for _, i := range order {
			k := idKey(rs[i].ID)
			if rb.Get(k[:]) == nil {
				added++
				if err := tb.Delete(k); err != nil {
					return fmt.Errorf("rule %d tombstone: %w", rs[i].ID, err)
				}
			}
			if err := rb.Put(k, vals[i]); err != nil {
				return fmt.Errorf("rule %d: %w", rs[i].ID, err)
			}
			if len(wms) == 0 || wms[i] == nil {
				continue
			}
			// The fire chain is history, not schedule: a rule change keeps it.
			_, chain, _, err := s.currentWatermark(tx, rs[i].ID)
			if err != nil {
				return err
			}
			if firedWatermark(*wms[i], chain) {
				fired = append(fired, rs[i].ID)
			}
			if s.journaled(rs[i].ID) {
				// A journal record would override the bucket at the next fold.
				jrecs = append(jrecs, journalRec{kind: recSet, id: rs[i].ID, wm: *wms[i], chain: chain})
				continue
			}
			if err := wb.Put(k, encodeWatermark(*wms[i], chain)); err != nil {
				return fmt.Errorf("rule %d watermark: %w", rs[i].ID, err)
			}
		}
		var err error
		jseq, err = journalAppend(tx, jrecs)
		return err
	})
	if err != nil {
		return err
	}
	s.ruleCount.Add(added)
	s.indexJournal(jseq, jrecs)
	indexAdd(s, rs, func(r Rule) int64 { return r.ID })
	indexFired(s, fired)
	return nil
}

// Fill factors for page splits. Ids mostly grow, so rules append at the right edge,
// where bbolt's default of 0.5 would leave every page half empty: more pages to write
// per commit and to read at start-up. Watermarks never change size, so their pages can
// be packed full; rules keep some room for edits that grow them.
const (
	rulesFill      = 0.9
	watermarksFill = 1.0
)

// DeleteRule removes a rule, its watermark and its missed-fire log; a missing rule is not an error. Its
// events already in the outbox stay: those fires happened.
func (s *Store) DeleteRule(id int64) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	var (
		jseq  uint64
		jrecs []journalRec
	)
	if s.journaled(id) {
		jrecs = []journalRec{{kind: recTomb, id: id}}
	}
	existed := false
	err := s.update(func(tx *bolt.Tx) error {
		k := idKey(id)
		existed = tx.Bucket(bucketRules).Get(k[:]) != nil
		if err := tx.Bucket(bucketRules).Delete(k); err != nil {
			return err
		}
		if err := tx.Bucket(bucketWatermarks).Delete(k); err != nil {
			return err
		}
		if err := deleteMissed(tx, id); err != nil {
			return err
		}
		var err error
		jseq, err = journalAppend(tx, jrecs)
		return err
	})
	if err != nil {
		return s.wrap("delete rule", err)
	}
	if existed {
		s.ruleCount.Add(-1)
	}
	s.indexJournal(jseq, jrecs)
	indexRemove(s, []int64{id}, func(id int64) int64 { return id })
	return nil
}

// RemoveRules removes rules, their watermarks and missed-fire logs and records their tombstones, in one
// transaction; a rule not stored gets its tombstone all the same, and a tombstone
// replaces an earlier one of the same id. The rules' events already in the outbox stay:
// those fires happened. Nothing is written if any tombstone is invalid.
func (s *Store) RemoveRules(ts []Tombstone) error {
	for _, t := range ts {
		if t.ID <= 0 {
			return s.wrap("remove rules", fmt.Errorf("rule id %d: must be positive", t.ID))
		}
		if err := checkTime(t.ID, "tombstone Version", t.Version); err != nil {
			return s.wrap("remove rules", err)
		}
	}
	if len(ts) == 0 {
		return nil
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	var jrecs []journalRec
	for _, t := range ts {
		if s.journaled(t.ID) {
			jrecs = append(jrecs, journalRec{kind: recTomb, id: t.ID})
		}
	}
	var (
		jseq    uint64
		removed int64
	)
	err := s.update(func(tx *bolt.Tx) error {
		removed = 0
		rb, wb, tb := tx.Bucket(bucketRules), tx.Bucket(bucketWatermarks), tx.Bucket(bucketTombstones)
		for _, t := range ts {
			k := idKey(t.ID)
			if rb.Get(k) != nil {
				removed++
				if err := rb.Delete(k); err != nil {
					return fmt.Errorf("rule %d: %w", t.ID, err)
				}
			}
			if err := wb.Delete(k); err != nil {
				return fmt.Errorf("rule %d watermark: %w", t.ID, err)
			}
			if err := deleteMissed(tx, t.ID); err != nil {
				return err
			}
			if err := tb.Put(k, encodeTombstone(t.Version)); err != nil {
				return fmt.Errorf("rule %d tombstone: %w", t.ID, err)
			}
		}
		var err error
		jseq, err = journalAppend(tx, jrecs)
		return err
	})
	if err != nil {
		return s.wrap("remove rules", err)
	}
	s.ruleCount.Add(-removed)
	s.indexJournal(jseq, jrecs)
	indexRemove(s, ts, func(t Tombstone) int64 { return t.ID })
	return nil
}

// Tombstone returns the tombstone of rule id; ok is false if it has none.
func (s *Store) Tombstone(id int64) (t Tombstone, ok bool, err error) {
	err = s.view(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketTombstones).Get(idKey(id))
		if v == nil {
			return nil
		}
		t, err = decodeTombstone(id, v)
		ok = err == nil
		return err
	})
	if err != nil {
		return Tombstone{}, false, s.wrap("get tombstone", err)
	}
	return t, ok, nil
}

// ForEachTombstone calls fn for every tombstone, in id order, from one snapshot. An
// error from fn stops the walk and is returned. fn must not write to the store.
func (s *Store) ForEachTombstone(fn func(Tombstone) error) error {
	inFn := false
	err := s.viewCallback(&inFn, func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketTombstones).Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			id, err := keyID(k)
			if err != nil {
				return err
			}
			t, err := decodeTombstone(id, v)
			if err != nil {
				return err
			}
			inFn = true
			err = fn(t)
			inFn = false
			if err != nil {
				return &callbackError{err}
			}
		}
		return nil
	})
	if ce := (*callbackError)(nil); errors.As(err, &ce) {
		return ce.err
	}
	return s.wrap("scan tombstones", err)
}

// PurgeTombstones deletes the tombstones whose version is before before, and returns
// how many it deleted. A tombstone that does not decode is deleted too: it can hold
// nothing back.
func (s *Store) PurgeTombstones(before time.Time) (int, error) {
	purged := 0
	err := s.update(func(tx *bolt.Tx) error {
		tb := tx.Bucket(bucketTombstones)
		var old [][]byte
		c := tb.Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			id, _ := keyID(k)
			if t, err := decodeTombstone(id, v); err != nil || t.Version.Before(before) {
				old = append(old, bytes.Clone(k))
			}
		}
		for _, k := range old {
			if err := tb.Delete(k); err != nil {
				return err
			}
		}
		purged = len(old)
		return nil
	})
	if err != nil {
		return 0, s.wrap("purge tombstones", err)
	}
	return purged, nil
}

// Rule returns the rule with id and its watermark (zero if none); ok is false if absent.
func (s *Store) Rule(id int64) (r Rule, wm Watermark, ok bool, err error) {
	err = s.view(func(tx *bolt.Tx) error {
		k := idKey(id)
		v := tx.Bucket(bucketRules).Get(k)
		if v == nil {
			return nil
		}
		if r, err = decodeRule(id, v); err != nil {
			return err
		}
		ok = true
		wm, _, _, err = s.snapshotWatermark(tx, id)
		return err
	})
	if err != nil {
		return Rule{}, Watermark{}, false, s.wrap("get rule", err)
	}
	return r, wm, ok, nil
}

// RulesOf calls fn for each rule of ids the store holds, with its watermark
// (zero if none), from one read transaction, in id order; ids it lacks are
// skipped. A reconcile reads a chunk of its listing so, not one transaction
// a rule. fn must not write to the store.
func (s *Store) RulesOf(ids []int64, fn func(Rule, Watermark)) error {
	sorted := slices.Clone(ids)
	slices.Sort(sorted)
	err := s.view(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketRules)
		for i, id := range sorted {
			if i > 0 && id == sorted[i-1] {
				continue
			}
			v := b.Get(idKey(id))
			if v == nil {
				continue
			}
			r, err := decodeRule(id, v)
			if err != nil {
				return err
			}
			wm, _, _, err := s.snapshotWatermark(tx, id)
			if err != nil {
				return err
			}
			fn(r, wm)
		}
		return nil
	})
	return s.wrap("get rules", err)
}

// RuleIDs is the id of every rule stored, in order, read from the keys
// alone.
func (s *Store) RuleIDs() ([]int64, error) {
	ids := make([]int64, 0, s.ruleCount.Load())
	err := s.view(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketRules).Cursor()
		for k, _ := c.First(); k != nil; k, _ = c.Next() {
			id, err := keyID(k)
			if err != nil {
				return err
			}
			ids = append(ids, id)
		}
		return nil
	})
	if err != nil {
		return nil, s.wrap("list rule ids", err)
	}
	return ids, nil
}

// ForEachRule calls fn for every rule, in id order, with its watermark (zero if none),
// from one consistent snapshot. An error from fn stops the walk and is returned.
// fn must not write to the store: the read transaction is held while it runs.
func (s *Store) ForEachRule(fn func(Rule, Watermark) error) error {
	return s.forEachRule(nil, fn)
}

// ForEachTimer is ForEachRule for loading an engine: a rule whose Timer is set comes
// with its ID and Timer only (no Ref, TriggerRef or Params, which are not copied out
// of the file); one without comes whole, for the caller to parse and report. The
// Timer is one scratch value, overwritten for the next rule: fn copies what it keeps
// of it (scheduler.Engine.LoadFrom does), so that a scan allocates no Timer per rule.
func (s *Store) ForEachTimer(fn func(Rule, Watermark) error) error {
	return s.forEachRule(new(scheduler.Timer), fn)
}

// forEachRule scans the rules, their timers decoded into scratch when it is not nil
// (ForEachTimer).
// joinedWatermark is rule id's watermark in a merge-join of the rules with the
// watermarks bucket: the journal's record when it has one (a deletion: none), else
// the bucket's entry the watermark cursor is at (wk, wv) when it is the rule's key k.
func joinedWatermark(journal map[int64]journalRec, id int64, k, wk, wv []byte) (Watermark, error) {
	if jr, ok := journal[id]; ok {
		if jr.kind == recSet {
			return jr.wm, nil
		}
		return Watermark{}, nil
	}
	if wk == nil || !bytes.Equal(wk, k) {
		return Watermark{}, nil
	}
	wm, _, err := decodeWatermark(wv)
	if err != nil {
		return Watermark{}, fmt.Errorf("rule %d: %w", id, err)
	}
	return wm, nil
}

func (s *Store) forEachRule(scratch *scheduler.Timer, fn func(Rule, Watermark) error) error {
	inFn := false
	err := s.viewCallback(&inFn, func(tx *bolt.Tx) error {
		journal, err := snapshotJournal(tx)
		if err != nil {
			return err
		}
		// Merge-join of two cursors in key order: no lookup per rule; the snapshot's
		// journal overrides the bucket.
		rc := tx.Bucket(bucketRules).Cursor()
		wc := tx.Bucket(bucketWatermarks).Cursor()
		wk, wv := wc.First()
		for k, v := rc.First(); k != nil; k, v = rc.Next() {
			id, err := keyID(k)
			if err != nil {
				return err
			}
			r, err := decodeRuleOf(id, v, scratch)
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
			inFn = true
			err = fn(r, wm)
			inFn = false
			if err != nil {
				return &callbackError{err}
			}
		}
		return nil
	})
	if ce := (*callbackError)(nil); errors.As(err, &ce) {
		return ce.err // the caller's own error, unwrapped
	}
	return s.wrap("scan rules", err)
}

type callbackError struct{ err error }

func (e *callbackError) Error() string { return e.err.Error() }

// RuleCount is the number of rules stored.
func (s *Store) RuleCount() (int, error) {
	return int(s.ruleCount.Load()), nil
}
