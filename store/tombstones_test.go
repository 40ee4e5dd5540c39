package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// A file of schema version 1 (rule records of codec v1, no tombstones bucket) opens:
// its rules read with an unknown (zero) source version, the file is raised to the
// current version, and tombstones work in it.
func TestOpenSchema1File(t *testing.T) {
	p := storeFile(t, 3)
	editStore(t, p, func(tx *bolt.Tx) error {
		// v1 rules: v2's layout, updated_at the store time; chainless watermarks.
		if err := rewriteUnsealed(tx, 1); err != nil {
			return err
		}
		if err := tx.DeleteBucket(bucketTombstones); err != nil {
			return err
		}
		return tx.Bucket(bucketMeta).Put(keySchemaVersion, []byte("1"))
	})
	s, err := Open(p, Options{NoSync: true})
	if err != nil {
		t.Fatalf("Open(schema 1 file) = %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	for id := int64(1); id <= 3; id++ {
		r, _, ok, err := s.Rule(id)
		want := testRule(id)
		want.UpdatedAt = time.Time{}
		if err != nil || !ok || !ruleEqual(r, want) {
			t.Errorf("Rule(%d) of a v1 record = %+v, %v, %v; want %+v (updated_at unknown)", id, r, ok, err, want)
		}
	}
	n := 0
	if err := s.ForEachRule(func(r Rule, _ Watermark) error {
		n++
		if !r.UpdatedAt.IsZero() {
			t.Errorf("ForEachRule: v1 rule %d has UpdatedAt %v, want zero", r.ID, r.UpdatedAt)
		}
		return nil
	}); err != nil || n != 3 {
		t.Errorf("ForEachRule over v1 records: %d rules, %v; want 3", n, err)
	}
	if err := s.RemoveRules([]Tombstone{{ID: 2, Version: t0}}); err != nil {
		t.Fatalf("RemoveRules in an upgraded file: %v", err)
	}
	s = reopen(t, s)
	if ts, ok, err := s.Tombstone(2); err != nil || !ok || !ts.Version.Equal(t0) {
		t.Errorf("Tombstone(2) after reopen = %+v, %v, %v; want version %v", ts, ok, err, t0)
	}
	db := s.db
	_ = db.View(func(tx *bolt.Tx) error {
		if v, want := string(tx.Bucket(bucketMeta).Get(keySchemaVersion)), strconv.Itoa(SchemaVersion); v != want {
			t.Errorf("schema_version after the upgrade = %q, want %s", v, want)
		}
		return nil
	})
}

func TestTombstones(t *testing.T) {
	s := openTest(t, Options{NoSync: true})
	if err := s.PutRules([]Rule{testRule(1), testRule(2), testRule(3)}, nil); err != nil {
		t.Fatal(err)
	}
	// Rule 2 has fired: its watermark is in the journal.
	if err := s.CommitFires([]FireRecord{testFire(2, t0, 1)}); err != nil {
		t.Fatal(err)
	}
	v1, v2 := t0.Add(time.Hour), t0.Add(2*time.Hour)
	if err := s.RemoveRules([]Tombstone{{ID: 2, Version: v1}, {ID: 9, Version: v1}, {ID: 2, Version: v2}}); err != nil {
		t.Fatalf("RemoveRules: %v", err)
	}
	check := func(s *Store, when string) {
		t.Helper()
		if n, _ := s.RuleCount(); n != 2 {
			t.Errorf("%s: RuleCount = %d, want 2", when, n)
		}
		if _, _, ok, err := s.Rule(2); ok || err != nil {
			t.Errorf("%s: Rule(2) found %v, err %v; want removed", when, ok, err)
		}
		var got []Tombstone
		if err := s.ForEachTombstone(func(ts Tombstone) error { got = append(got, ts); return nil }); err != nil {
			t.Fatalf("%s: ForEachTombstone: %v", when, err)
		}
		if len(got) != 2 || got[0].ID != 2 || !got[0].Version.Equal(v2) || got[1].ID != 9 || !got[1].Version.Equal(v1) {
			t.Errorf("%s: tombstones = %+v, want rule 2 at %v (the later of two in one call), rule 9 at %v", when, got, v2, v1)
		}
		n := 0
		_ = s.ForEachRule(func(r Rule, wm Watermark) error {
			n++
			if r.ID == 2 {
				t.Errorf("%s: ForEachRule yields removed rule 2 (watermark %+v)", when, wm)
			}
			return nil
		})
		if n != 2 {
			t.Errorf("%s: ForEachRule: %d rules, want 2", when, n)
		}
	}
	check(s, "after RemoveRules")
	s = reopen(t, s)
	check(s, "after reopen")

	// Put again: the tombstone goes, and the old watermark does not come back.
	if err := s.PutRule(testRule(2), nil); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := s.Tombstone(2); ok {
		t.Errorf("Tombstone(2) after PutRule: still there")
	}
	if _, wm, ok, _ := s.Rule(2); !ok || !wm.Slot.IsZero() {
		t.Errorf("Rule(2) put again: found %v watermark %+v, want found with none", ok, wm)
	}
	if _, ok, _ := s.Tombstone(9); !ok {
		t.Errorf("Tombstone(9): gone after an unrelated put")
	}
	// An error from fn stops the walk and is returned as is.
	stop := errors.New("stop")
	if err := s.ForEachTombstone(func(Tombstone) error { return stop }); err != stop { //nolint:errorlint // the fn's very error, unwrapped
		t.Errorf("ForEachTombstone with a failing fn = %v, want %v", err, stop)
	}
}

func TestRemoveRulesRefusesBadInput(t *testing.T) {
	s := openTest(t, Options{NoSync: true})
	if err := s.PutRule(testRule(1), nil); err != nil {
		t.Fatal(err)
	}
	for _, ts := range [][]Tombstone{
		{{ID: 1, Version: t0}, {ID: 0, Version: t0}},
		{{ID: 1, Version: t0}, {ID: 2, Version: time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC)}},
		{{ID: -5, Version: t0}},
	} {
		if err := s.RemoveRules(ts); err == nil {
			t.Errorf("RemoveRules(%+v) = nil, want an error", ts)
		}
	}
	if _, _, ok, _ := s.Rule(1); !ok {
		t.Errorf("a refused RemoveRules removed rule 1")
	}
	if err := s.RemoveRules(nil); err != nil {
		t.Errorf("RemoveRules(nil) = %v", err)
	}
}

func TestPurgeTombstones(t *testing.T) {
	s := openTest(t, Options{NoSync: true})
	var ts []Tombstone
	for id := int64(1); id <= 10; id++ {
		ts = append(ts, Tombstone{ID: id, Version: t0.Add(time.Duration(id) * time.Hour)})
	}
	if err := s.RemoveRules(ts); err != nil {
		t.Fatal(err)
	}
	// A tombstone that does not decode is purged whatever its age.
	editOpenStore(t, s, func(tx *bolt.Tx) error {
		return tx.Bucket(bucketTombstones).Put(binary.BigEndian.AppendUint64(nil, 99), []byte{7, 7})
	})
	if _, _, err := s.Tombstone(99); !errors.Is(err, ErrCorrupt) {
		t.Errorf("Tombstone(99) of a bad record: err %v, want ErrCorrupt", err)
	}
	n, err := s.PurgeTombstones(t0.Add(4 * time.Hour))
	if err != nil || n != 4 {
		t.Fatalf("PurgeTombstones(t0+4h) = %d, %v; want 4 (3 older, 1 unreadable)", n, err)
	}
	var left []int64
	_ = s.ForEachTombstone(func(ts Tombstone) error { left = append(left, ts.ID); return nil })
	if fmt.Sprint(left) != "[4 5 6 7 8 9 10]" {
		t.Errorf("tombstones after the purge = %v, want [4 … 10] (the one at the cut stays)", left)
	}
	if n, err := s.PurgeTombstones(t0); err != nil || n != 0 {
		t.Errorf("PurgeTombstones again = %d, %v; want 0", n, err)
	}
}

// editOpenStore changes an open store's file through its own handle.
func editOpenStore(t *testing.T, s *Store, fn func(tx *bolt.Tx) error) {
	t.Helper()
	if err := s.db.Update(fn); err != nil {
		t.Fatal(err)
	}
}
