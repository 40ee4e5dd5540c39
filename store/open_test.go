package store

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	bolt "go.etcd.io/bbolt"
)

func TestOpenNewWritesMeta(t *testing.T) {
	s := openTest(t, Options{NoSync: true})
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v, want nil", err)
	}
	db, err := bolt.Open(s.Path(), 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	_ = db.View(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		if meta == nil {
			t.Fatal("no meta bucket in a new store")
		}
		for k, want := range map[string]string{"format": formatMarker, "schema_version": strconv.Itoa(SchemaVersion)} {
			if got := string(meta.Get([]byte(k))); got != want {
				t.Errorf("meta %s = %q, want %q", k, got, want)
			}
		}
		if _, err := time.Parse(time.RFC3339Nano, string(meta.Get(keyCreatedAt))); err != nil {
			t.Errorf("meta created_at %q: %v", meta.Get(keyCreatedAt), err)
		}
		for _, b := range allBuckets {
			if tx.Bucket(b) == nil {
				t.Errorf("bucket %s missing in a new store", b)
			}
		}
		return nil
	})
}

func TestReopenKeepsEverything(t *testing.T) {
	s := openTest(t, Options{})
	if err := s.PutRules([]Rule{testRule(1), testRule(2)}, []*Watermark{{Slot: t0, Count: 1}, nil}); err != nil {
		t.Fatal(err)
	}
	if err := s.CommitFires([]FireRecord{testFire(1, t0.Add(time.Minute), 2), testFire(2, t0, 1), testFire(2, t0.Add(time.Minute), 2)}); err != nil {
		t.Fatal(err)
	}
	if err := s.DeadLetter(2, "bad", 400); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		s = reopen(t, s)
		n, _ := s.RuleCount()
		ol, _ := s.OutboxLen()
		dl, _ := s.DeadLetterCount()
		_, wm, _, _ := s.Rule(1)
		if n != 2 || ol != 2 || dl != 1 || wm.Count != 2 {
			t.Errorf("reopen %d: rules %d outbox %d dead %d rule-1 count %d; want 2 2 1 2", i, n, ol, dl, wm.Count)
		}
	}
}

// writeFile returns a path in a fresh temp dir holding data.
func writeFile(t *testing.T, data []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "node.db")
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// boltFile creates a bbolt file with fn's changes, outside the store.
func boltFile(t *testing.T, fn func(tx *bolt.Tx) error) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "node.db")
	db, err := bolt.Open(p, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(fn); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	return p
}

// storeFile creates a store with n rules and returns its path, closed.
func storeFile(t *testing.T, n int) string {
	t.Helper()
	s := openTest(t, Options{NoSync: true})
	rs := make([]Rule, n)
	for i := range rs {
		rs[i] = testRule(int64(i + 1))
	}
	if err := s.PutRules(rs, nil); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	return s.Path()
}

// editStore changes a store file behind its back.
func editStore(t *testing.T, path string, fn func(tx *bolt.Tx) error) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Update(fn); err != nil {
		t.Fatal(err)
	}
}

func TestOpenRefuses(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	random := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return b
	}
	// keep gets the size the data needs (bbolt's files have slack past it).
	truncated := func(keep func(need int64) int64) func(t *testing.T) string {
		return func(t *testing.T) string {
			p := storeFile(t, 3000)
			f, err := os.Open(p)
			if err != nil {
				t.Fatal(err)
			}
			m := latestMeta(f)
			f.Close()
			if m == nil {
				t.Fatalf("no valid meta in %s", p)
			}
			if err := os.Truncate(p, keep(int64(m.pgid)*int64(m.pageSize))); err != nil {
				t.Fatal(err)
			}
			return p
		}
	}
	tests := []struct {
		name  string
		file  func(t *testing.T) string
		want  error
		extra string // also in the message
	}{
		{"random bytes", func(t *testing.T) string { return writeFile(t, random(64<<10)) }, ErrCorrupt, "invalid database"},
		{"a few random bytes", func(t *testing.T) string { return writeFile(t, random(100)) }, ErrCorrupt, ""},
		{"text file", func(t *testing.T) string { return writeFile(t, []byte("hello, world\n")) }, ErrCorrupt, ""},
		{"truncated to half", truncated(func(n int64) int64 { return n / 2 }), ErrCorrupt, "truncated"},
		{"truncated to one page", truncated(func(int64) int64 { return 4096 }), ErrCorrupt, ""},
		{"truncated by a page", truncated(func(n int64) int64 { return n - 4096 }), ErrCorrupt, "truncated"},
		{"foreign bbolt file", func(t *testing.T) string {
			return boltFile(t, func(tx *bolt.Tx) error {
				for _, b := range []string{"users", "alerts"} {
					if _, err := tx.CreateBucket([]byte(b)); err != nil {
						return err
					}
				}
				return nil
			})
		}, ErrForeign, "buckets: alerts, users"},
		{"meta bucket of someone else", func(t *testing.T) string {
			return boltFile(t, func(tx *bolt.Tx) error {
				b, err := tx.CreateBucket([]byte("meta"))
				if err != nil {
					return err
				}
				return b.Put([]byte("format"), []byte("other-app"))
			})
		}, ErrForeign, "buckets: meta"},
		{"newer schema", func(t *testing.T) string {
			p := storeFile(t, 1)
			editStore(t, p, func(tx *bolt.Tx) error {
				return tx.Bucket(bucketMeta).Put(keySchemaVersion, []byte(strconv.Itoa(SchemaVersion+1)))
			})
			return p
		}, ErrSchemaVersion, fmt.Sprintf("file has %d", SchemaVersion+1)},
		{"garbage schema", func(t *testing.T) string {
			p := storeFile(t, 1)
			editStore(t, p, func(tx *bolt.Tx) error { return tx.Bucket(bucketMeta).Put(keySchemaVersion, []byte("x")) })
			return p
		}, ErrCorrupt, "schema_version"},
		{"bucket missing", func(t *testing.T) string {
			p := storeFile(t, 1)
			editStore(t, p, func(tx *bolt.Tx) error { return tx.DeleteBucket(bucketOutbox) })
			return p
		}, ErrCorrupt, "outbox"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := tc.file(t)
			before, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			s, err := Open(p, Options{})
			if err == nil {
				s.Close()
				t.Fatalf("Open(%s) succeeded, want %v", tc.name, tc.want)
			}
			if !errors.Is(err, tc.want) {
				t.Errorf("Open(%s) err = %v, want errors.Is %v", tc.name, err, tc.want)
			}
			if msg := err.Error(); !strings.Contains(msg, p) || !strings.Contains(msg, tc.extra) {
				t.Errorf("Open(%s) err = %q, want the path %q and %q in it", tc.name, msg, p, tc.extra)
			}
			after, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(before, after) {
				t.Errorf("Open(%s) changed the refused file (%d → %d bytes)", tc.name, len(before), len(after))
			}
		})
	}
}

func TestOpenEmptyBoltFileIsAdopted(t *testing.T) {
	for name, p := range map[string]string{
		"zero-length file":   writeFile(t, nil),
		"bbolt with nothing": boltFile(t, func(*bolt.Tx) error { return nil }),
	} {
		s, err := Open(p, Options{NoSync: true})
		if err != nil {
			t.Errorf("Open(%s): %v, want a new store", name, err)
			continue
		}
		if n, err := s.OutboxLen(); err != nil || n != 0 {
			t.Errorf("%s: OutboxLen() = %d, %v; want 0", name, n, err)
		}
		s.Close()
	}
}

func TestOpenLocked(t *testing.T) {
	s := openTest(t, Options{NoSync: true})
	s2, err := Open(s.Path(), Options{Timeout: 100 * time.Millisecond})
	if err == nil {
		s2.Close()
		t.Fatal("second Open of a held file succeeded, want ErrLocked")
	}
	if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), s.Path()) {
		t.Errorf("second Open err = %v, want ErrLocked naming %s", err, s.Path())
	}
	// Released on Close: the next Open works.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s3, err := Open(s.Path(), Options{Timeout: 100 * time.Millisecond})
	if err != nil {
		t.Fatalf("Open after Close: %v", err)
	}
	s3.Close()
}

func TestOptionsValidate(t *testing.T) {
	_, err := Open(filepath.Join(t.TempDir(), "x.db"), Options{Timeout: -time.Second})
	if err == nil || !strings.Contains(err.Error(), "Timeout") {
		t.Errorf("Open with Timeout -1s: err %v, want one naming Timeout", err)
	}
}

func TestCorruptRecordIsErrCorrupt(t *testing.T) {
	p := storeFile(t, 5)
	editStore(t, p, func(tx *bolt.Tx) error { return tx.Bucket(bucketRules).Put(idKey(3), []byte{9, 9}) })
	s, err := Open(p, Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	err = s.ForEachRule(func(Rule, Watermark) error { return nil })
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "rule 3") || !strings.Contains(err.Error(), p) {
		t.Errorf("ForEachRule over a damaged rule: err %v, want ErrCorrupt naming rule 3 and the path", err)
	}
	if _, _, _, err := s.Rule(3); !errors.Is(err, ErrCorrupt) {
		t.Errorf("Rule(3) of a damaged rule: err %v, want ErrCorrupt", err)
	}
}

func TestMetrics(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	path := filepath.Join(t.TempDir(), "node.db")
	for round := range 2 { // reopening with the same registry works: Close unregisters
		s, err := Open(path, Options{NoSync: true, Registerer: reg})
		if err != nil {
			t.Fatalf("round %d: Open: %v", round, err)
		}
		if err := s.CommitFires([]FireRecord{testFire(1, t0, 1), testFire(2, t0, 1)}); err != nil {
			t.Fatal(err)
		}
		if err := s.DeadLetter(uint64(2*round+1), "gone", 404); err != nil {
			t.Fatal(err)
		}
		wantOutbox, wantDead := float64(round+1), float64(round+1)
		for name, want := range map[string]float64{"timerd_outbox_entries": wantOutbox, "timerd_dead_letters": wantDead} {
			got, err := gatherValue(reg, name)
			if err != nil || got != want {
				t.Errorf("round %d: %s = %v (%v), want %v", round, name, got, err, want)
			}
		}
		if n := histCount(t, reg, "timerd_store_commit_seconds"); n < 2 {
			t.Errorf("round %d: timerd_store_commit_seconds count = %d, want ≥ 2 (two commits)", round, n)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if mfs, err := reg.Gather(); err != nil || len(mfs) != 0 {
		t.Errorf("metric families after Close = %d (%v), want 0", len(mfs), err)
	}
}

func histCount(t *testing.T, reg prometheus.Gatherer, name string) uint64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetHistogram().GetSampleCount()
		}
	}
	return 0
}

func gatherValue(reg prometheus.Gatherer, name string) (float64, error) {
	mfs, err := reg.Gather()
	if err != nil {
		return 0, err
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetGauge().GetValue(), nil
		}
	}
	return 0, errors.New("not gathered")
}

// Past the precheck, a page beyond the end of the file is a bbolt panic or a memory
// fault (SIGBUS) in its mmap; either must come back as ErrCorrupt, not kill the process.
func TestFaultIsErrCorrupt(t *testing.T) {
	t.Run("open", func(t *testing.T) {
		p := storeFile(t, 3000)
		truncateToHalf(t, p)
		db, err := openBolt(p, &bolt.Options{Timeout: time.Second})
		if err == nil {
			db.Close()
		}
		if !errors.Is(err, ErrCorrupt) {
			t.Errorf("openBolt of a truncated file: err %v, want ErrCorrupt", err)
		}
	})
	t.Run("scan", func(t *testing.T) {
		p := storeFile(t, 3000)
		s, err := Open(p, Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		truncateToHalf(t, p) // under the open store: the mapped pages are gone
		err = s.ForEachRule(func(Rule, Watermark) error { return nil })
		if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), p) {
			t.Errorf("ForEachRule over pages past the end of the file: err %v, want ErrCorrupt with the path", err)
		}
		if _, _, _, err := s.Rule(2999); !errors.Is(err, ErrCorrupt) {
			t.Errorf("Rule over pages past the end of the file: err %v, want ErrCorrupt", err)
		}
	})
}

func truncateToHalf(t *testing.T, p string) {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	m := latestMeta(f)
	f.Close()
	if m == nil {
		t.Fatalf("no valid meta in %s", p)
	}
	if err := os.Truncate(p, int64(m.pgid)*int64(m.pageSize)/2); err != nil {
		t.Fatal(err)
	}
}

// A flipped bit in a stored rule, watermark or journal value is an error naming
// the rule (or the journal entry), never a silently different schedule.
func TestFlippedBitIsAnErrorNamingTheRule(t *testing.T) {
	// file has rules 1..3 with watermarks in the bucket, and rule 1's fire in the journal.
	file := func(t *testing.T) string {
		s := openTest(t, Options{NoSync: true})
		wm := func(n int) *Watermark { return &Watermark{Slot: time.Unix(int64(n), 0), Count: uint64(n)} }
		if err := s.PutRules([]Rule{testRule(1), testRule(2), testRule(3)}, []*Watermark{wm(1), wm(2), wm(3)}); err != nil {
			t.Fatal(err)
		}
		if err := s.CommitFires([]FireRecord{testFire(1, time.Unix(10, 0), 10)}); err != nil {
			t.Fatal(err)
		}
		p := s.Path()
		// Close without folding: the journal keeps rule 1's record.
		if err := s.db.Close(); err != nil {
			t.Fatal(err)
		}
		return p
	}
	flip := func(t *testing.T, p string, bucket, key []byte, at int) {
		t.Helper()
		editStore(t, p, func(tx *bolt.Tx) error {
			b := tx.Bucket(bucket)
			if key == nil {
				key, _ = b.Cursor().First()
			}
			v := bytes.Clone(b.Get(key))
			if v == nil {
				return fmt.Errorf("no value %x in %s", key, bucket)
			}
			v[min(at, len(v)-1)] ^= 0x10
			return b.Put(key, v)
		})
	}
	read := func(p string, id int64) error {
		s, err := Open(p, Options{NoSync: true})
		if err != nil {
			return err
		}
		defer s.Close()
		if _, _, _, err := s.Rule(id); err != nil {
			return err
		}
		return s.ForEachRule(func(Rule, Watermark) error { return nil })
	}
	for _, tt := range []struct {
		name   string
		bucket []byte
		key    []byte
		at     int
		want   string
	}{
		{"rule params", bucketRules, idKey(2), 30, "rule 2"},
		{"rule updated_at", bucketRules, idKey(2), 3, "rule 2"},
		{"watermark slot", bucketWatermarks, idKey(3), 5, "rule 3"},
		{"watermark count", bucketWatermarks, idKey(3), 12, "rule 3"},
		{"journal record", bucketJournal, nil, 12, "watermark journal entry"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p := file(t)
			flip(t, p, tt.bucket, tt.key, tt.at)
			err := read(p, 3)
			if err == nil {
				err = read(p, 2)
			}
			if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), "checksum") {
				t.Errorf("a flipped bit in the %s: %v, want ErrCorrupt naming %s and the checksum", tt.name, err, tt.want)
			}
		})
	}
}
