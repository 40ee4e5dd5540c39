package store

import (
	"compress/gzip"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	bolt "go.etcd.io/bbolt"

	"github.com/timerd/timerd/cluster/protocol"
)

func missedSlot(id int64, from time.Time, n int, reason string) MissedSlot {
	return MissedSlot{RuleID: id, From: from, To: from.Add(time.Duration(n-1) * time.Second), Count: uint64(n),
		Reason: reason, DetectedAt: t0.Add(time.Hour)}
}

func putTestRules(t *testing.T, s *Store, ids ...int64) {
	t.Helper()
	var rs []Rule
	for _, id := range ids {
		rs = append(rs, testRule(id))
	}
	if err := s.PutRules(rs, nil); err != nil {
		t.Fatal(err)
	}
}

func mustMissed(t *testing.T, s *Store, id int64) []MissedSlot {
	t.Helper()
	ms, err := s.MissedSlots(id)
	if err != nil {
		t.Fatalf("MissedSlots(%d): %v", id, err)
	}
	return ms
}

func missedEqual(a, b MissedSlot) bool {
	return a.RuleID == b.RuleID && a.From.Equal(b.From) && a.To.Equal(b.To) && a.Count == b.Count &&
		a.Estimated == b.Estimated && a.Reason == b.Reason && a.DetectedAt.Equal(b.DetectedAt) && a.Detail == b.Detail
}

// A batch's misses are written with its fires, in one transaction, and read
// back as written, oldest first; a run of a day of 1 s slots is one record.
func TestCommitBatchWritesMisses(t *testing.T) {
	s := openTest(t, Options{NoSync: true})
	putTestRules(t, s, 1, 2)
	day := missedSlot(1, t0, 86_400, "collapsed_by_fire_once")
	late := MissedSlot{RuleID: 1, From: t0.Add(24 * time.Hour), To: t0.Add(24 * time.Hour), Count: 1, Reason: "node_down",
		DetectedAt: t0.Add(25 * time.Hour)}
	est := MissedSlot{RuleID: 2, From: t0, To: t0.Add(time.Hour), Count: 3601, Estimated: true, Reason: "skipped_by_policy",
		DetectedAt: t0, Detail: strings.Repeat("é", 200)}
	refs, err := s.CommitBatch([]FireRecord{testFire(1, t0.Add(24*time.Hour), 7)}, []MissedSlot{day, late, est})
	if err != nil || len(refs) != 0 {
		t.Fatalf("CommitBatch = %v, %v", refs, err)
	}
	if n, _ := s.OutboxLen(); n != 1 {
		t.Errorf("outbox after the batch: %d, want the fire's 1", n)
	}
	got := mustMissed(t, s, 1)
	if len(got) != 2 || !missedEqual(got[0], day) || !missedEqual(got[1], late) || got[0].Seq >= got[1].Seq {
		t.Errorf("MissedSlots(1) = %+v, want the day's run, then the late fire", got)
	}
	got = mustMissed(t, s, 2)
	est.Detail = strings.Repeat("é", maxMissedDetail/2) // 2 bytes each: cut between characters
	if len(got) != 1 || !missedEqual(got[0], est) || !utf8.ValidString(got[0].Detail) {
		t.Errorf("MissedSlots(2) = %+v, want %+v (detail cut to %d bytes, valid UTF-8)", got, est, maxMissedDetail)
	}
	odd := MissedSlot{RuleID: 2, Reason: "invalid_schedule", Detail: "x" + strings.Repeat("é", 200)}
	if err := s.RecordMissed([]MissedSlot{odd}); err != nil {
		t.Fatal(err)
	}
	if got := mustMissed(t, s, 2); len(got) != 2 || !utf8.ValidString(got[1].Detail) || len(got[1].Detail) != maxMissedDetail-1 {
		t.Errorf("a detail cut inside a character: %q (%d bytes), want valid UTF-8 of %d bytes", got[1].Detail, len(got[1].Detail), maxMissedDetail-1)
	}
	// A batch of misses alone.
	if _, err := s.CommitBatch(nil, []MissedSlot{missedSlot(2, t0.Add(2*time.Hour), 5, "skipped_by_policy")}); err != nil {
		t.Fatal(err)
	}
	if got := mustMissed(t, s, 2); len(got) != 3 || got[2].Count != 5 {
		t.Errorf("after a batch of misses alone: %+v of rule 2, want 3 records, the last of 5 slots", got)
	}
	if got := mustMissed(t, s, 3); len(got) != 0 {
		t.Errorf("MissedSlots of a rule without any = %+v, want none", got)
	}
}

// Bad records are refused with an error naming the rule, and nothing of the
// batch is written, its fires neither.
func TestCommitBatchRefusesBadMisses(t *testing.T) {
	s := openTest(t, Options{NoSync: true})
	putTestRules(t, s, 1)
	far := time.Date(2300, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name string
		m    MissedSlot
		want string
	}{
		{"no reason", MissedSlot{RuleID: 1}, "reason"},
		{"long reason", MissedSlot{RuleID: 1, Reason: strings.Repeat("x", 65)}, "reason"},
		{"bad id", MissedSlot{RuleID: 0, Reason: "node_down"}, "rule id"},
		{"backwards", MissedSlot{RuleID: 1, Reason: "node_down", From: t0, To: t0.Add(-time.Second)}, "before"},
		{"out of range", MissedSlot{RuleID: 1, Reason: "node_down", From: t0, To: far}, "1678"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := s.CommitBatch([]FireRecord{testFire(1, t0, 1)}, []MissedSlot{missedSlot(1, t0, 1, "node_down"), tc.m})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("CommitBatch with %+v = %v, want an error about %s", tc.m, err, tc.want)
			}
			if err := s.RecordMissed([]MissedSlot{tc.m}); err == nil {
				t.Errorf("RecordMissed(%+v) = nil, want an error", tc.m)
			}
			if n, _ := s.OutboxLen(); n != 0 {
				t.Errorf("outbox after a refused batch: %d, want 0", n)
			}
			if got := mustMissed(t, s, 1); len(got) != 0 {
				t.Errorf("records after a refused batch: %+v", got)
			}
		})
	}
}

// Each rule keeps its last MissedPerRule records; a record that covers the
// rule's last one of the same reason replaces it; records of rules not stored
// are not written; a rule's records go with it, and its neighbours' stay.
func TestMissedBoundedMergedDeleted(t *testing.T) {
	s := openTest(t, Options{NoSync: true})
	putTestRules(t, s, 1, 2, 256, 3)
	var ms []MissedSlot
	for i := range MissedPerRule + 50 {
		ms = append(ms, missedSlot(2, t0.Add(time.Duration(i)*time.Minute), 10, "node_down"))
	}
	ms = append(ms, missedSlot(1, t0, 1, "node_down"), missedSlot(256, t0, 1, "node_down"), missedSlot(99, t0, 1, "node_down"))
	if err := s.RecordMissed(ms); err != nil {
		t.Fatal(err)
	}
	got := mustMissed(t, s, 2)
	if len(got) != MissedPerRule || !got[0].From.Equal(t0.Add(50*time.Minute)) || !got[MissedPerRule-1].From.Equal(t0.Add(149*time.Minute)) {
		t.Fatalf("rule 2 kept %d records from %v to %v; want the last %d, from +50m to +149m", len(got), got[0].From, got[len(got)-1].From, MissedPerRule)
	}
	if got := mustMissed(t, s, 99); len(got) != 0 {
		t.Errorf("a rule not stored has records %+v", got)
	}

	// A skip decided again after a restart covers the one before: replaced.
	skip := missedSlot(3, t0, 60, "skipped_by_policy")
	again := missedSlot(3, t0, 120, "skipped_by_policy")
	other := missedSlot(3, t0, 200, "node_down")
	for _, m := range []MissedSlot{skip, again, again, other} {
		if err := s.RecordMissed([]MissedSlot{m}); err != nil {
			t.Fatal(err)
		}
	}
	if got := mustMissed(t, s, 3); len(got) != 2 || !missedEqual(got[0], again) || !missedEqual(got[1], other) {
		t.Errorf("rule 3's records = %+v, want the covering skip once, then node_down", got)
	}
	later := missedSlot(3, t0.Add(time.Hour), 5, "node_down") // does not cover: appended
	if err := s.RecordMissed([]MissedSlot{later}); err != nil {
		t.Fatal(err)
	}
	if got := mustMissed(t, s, 3); len(got) != 3 {
		t.Errorf("rule 3 after a later run: %d records, want 3", len(got))
	}

	if err := s.DeleteRule(2); err != nil {
		t.Fatal(err)
	}
	if err := s.RemoveRules([]Tombstone{{ID: 3, Version: t0}}); err != nil {
		t.Fatal(err)
	}
	for _, id := range []int64{2, 3} {
		if got := mustMissed(t, s, id); len(got) != 0 {
			t.Errorf("rule %d deleted, %d records left", id, len(got))
		}
	}
	for _, id := range []int64{1, 256} {
		if got := mustMissed(t, s, id); len(got) != 1 {
			t.Errorf("rule %d (not deleted) has %d records, want 1", id, len(got))
		}
	}
	// A rule added again starts with an empty log.
	putTestRules(t, s, 2)
	if got := mustMissed(t, s, 2); len(got) != 0 {
		t.Errorf("rule 2 re-added: %d records, want none", len(got))
	}

	s = reopen(t, s)
	if got := mustMissed(t, s, 1); len(got) != 1 || !missedEqual(got[0], missedSlot(1, t0, 1, "node_down")) {
		t.Errorf("after reopen rule 1's records = %+v", got)
	}
}

// A flipped bit in a record is ErrCorrupt naming the rule, not a wrong record.
func TestMissedCorruptRecord(t *testing.T) {
	s := openTest(t, Options{NoSync: true})
	putTestRules(t, s, 7)
	if err := s.RecordMissed([]MissedSlot{missedSlot(7, t0, 3, "node_down")}); err != nil {
		t.Fatal(err)
	}
	path := s.Path()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	editStore(t, path, func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketMissed)
		k, v := b.Cursor().First()
		v = append([]byte(nil), v...)
		v[3] ^= 1
		return b.Put(append([]byte(nil), k...), v)
	})
	s2, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if _, err := s2.MissedSlots(7); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "rule 7") {
		t.Errorf("MissedSlots of a flipped record = %v, want ErrCorrupt naming rule 7", err)
	}
}

// A file written by the store of main before the log (testdata: revision
// 36ee3b6, three rules fired once, made by a program calling its store.Open,
// PutRules and CommitFires) opens with its data, gets the bucket, and takes
// records; the file's schema version is unchanged, so that build opens it again.
func TestOpenFileOfEarlierBuild(t *testing.T) {
	path := filepath.Join(t.TempDir(), "node.db")
	f, err := os.Open("testdata/store-36ee3b6.db.gz")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	// The file has no missed bucket.
	editStore(t, path, func(tx *bolt.Tx) error {
		if tx.Bucket(bucketMissed) != nil {
			t.Fatal("the fixture already has a missed bucket")
		}
		return nil
	})
	s, err := Open(path, Options{})
	if err != nil {
		t.Fatalf("Open a file of main: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	if n, _ := s.RuleCount(); n != 3 {
		t.Errorf("rules = %d, want 3", n)
	}
	if n, _ := s.OutboxLen(); n != 3 {
		t.Errorf("outbox = %d, want 3", n)
	}
	_, wm, ok, err := s.Rule(2)
	if err != nil || !ok || wm.Count != 2 {
		t.Errorf("rule 2's watermark = %+v %v %v, want count 2", wm, ok, err)
	}
	if got := mustMissed(t, s, 2); len(got) != 0 {
		t.Errorf("records in a file of main: %+v", got)
	}
	if _, err := s.CommitBatch([]FireRecord{testFire(2, wm.Slot.Add(time.Minute), 3)},
		[]MissedSlot{missedSlot(2, wm.Slot.Add(time.Second), 58, "collapsed_by_fire_once")}); err != nil {
		t.Fatal(err)
	}
	s = reopen(t, s)
	if got := mustMissed(t, s, 2); len(got) != 1 || got[0].Count != 58 {
		t.Errorf("after a batch and reopen: %+v, want the one run of 58", got)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	editStore(t, path, func(tx *bolt.Tx) error {
		if v := string(tx.Bucket(bucketMeta).Get(keySchemaVersion)); v != "5" {
			t.Errorf("schema_version = %q, want 5 as main wrote it", v)
		}
		return nil
	})
}

// LastFirers names who fired each rule's latest slot, from its fire chain; a rule
// without a chain (or without a watermark) is left out.
func TestLastFirers(t *testing.T) {
	s := openTest(t, Options{NoSync: true})
	putTestRules(t, s, 1, 2, 3)
	a, b := protocol.Incarnation{Node: "a", N: 1}, protocol.Incarnation{Node: "b", N: 7}
	slot := t0.UnixNano()
	if err := s.MergeWatermarks([]protocol.Watermark{
		{Rule: 1, Slot: slot, Count: 2, Chain: protocol.Chain{
			{From: slot - 2e9, Last: slot - 1e9, Firer: a, Epoch: protocol.Epoch{N: 1, Node: "a"}},
			{From: slot - 1e9, Last: slot, Firer: b, Epoch: protocol.Epoch{N: 2, Node: "b"}}}},
		{Rule: 2, Slot: slot, Count: 1},
	}); err != nil {
		t.Fatal(err)
	}
	got, err := s.LastFirers([]int64{1, 2, 3, 4})
	if err != nil || len(got) != 1 || got[1] != b {
		t.Errorf("LastFirers = %v, %v; want rule 1 by %s only", got, err, b)
	}
}
