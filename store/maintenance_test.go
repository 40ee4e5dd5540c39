package store

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// fillStore gives s rules 1..n with a fire each, acks the fires of the odd
// rules and dead-letters the fire of rule 2.
func fillStore(t *testing.T, s *Store, n int) {
	t.Helper()
	var (
		rules []Rule
		recs  []FireRecord
	)
	for id := int64(1); id <= int64(n); id++ {
		rules = append(rules, testRule(id))
		recs = append(recs, testFire(id, t0.Add(time.Duration(id)*time.Second), 1))
	}
	if err := s.PutRules(rules, nil); err != nil {
		t.Fatalf("PutRules(1..%d) = %v", n, err)
	}
	if err := s.CommitFires(recs); err != nil {
		t.Fatalf("CommitFires = %v", err)
	}
	entries, err := s.Outbox(0, n)
	if err != nil {
		t.Fatal(err)
	}
	var acks []uint64
	for _, e := range entries {
		switch {
		case e.Event.RuleID == 2:
			if err := s.DeadLetter(e.Seq, "refused for good", 422); err != nil {
				t.Fatal(err)
			}
		case e.Event.RuleID%2 == 1:
			acks = append(acks, e.Seq)
		}
	}
	if err := s.AckOutbox(acks...); err != nil {
		t.Fatal(err)
	}
}

// contents is what a store holds, as text: rules with watermarks, the
// outbox and the dead letters.
func contents(t *testing.T, s *Store) string {
	t.Helper()
	var b strings.Builder
	err := s.ForEachRule(func(r Rule, wm Watermark) error {
		fmt.Fprintf(&b, "rule %d %s %s %s wm %d/%d\n", r.ID, r.Ref, r.TriggerRef, r.Params, wm.Slot.UnixNano(), wm.Count)
		return nil
	})
	if err != nil {
		t.Fatalf("ForEachRule(%s) = %v", s.Path(), err)
	}
	out, err := s.Outbox(0, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range out {
		fmt.Fprintf(&b, "outbox %d %s %s\n", e.Seq, e.Event.IdempotencyKey, e.Event.Body)
	}
	dls, err := s.DeadLetters(0, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range dls {
		fmt.Fprintf(&b, "dead %d %s %s %d\n", d.Seq, d.Event.IdempotencyKey, d.Reason, d.Status)
	}
	n, _ := s.RuleCount()
	ol, _ := s.OutboxLen()
	dl, _ := s.DeadLetterCount()
	fmt.Fprintf(&b, "counts %d %d %d\n", n, ol, dl)
	return b.String()
}

func openPath(t *testing.T, path string) *Store {
	t.Helper()
	s, err := Open(path, Options{})
	if err != nil {
		t.Fatalf("Open(%s) = %v", path, err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// A backup written while fires commit opens as a store holding what the
// store held when it began, and Verify finds it sound.
func TestWriteBackupWhileCommitting(t *testing.T) {
	t.Parallel()
	s := openTest(t, Options{})
	fillStore(t, s, 300)
	want := contents(t, s)

	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // commits during the backup: they are not in it
		defer wg.Done()
		for i := int64(0); ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if err := s.CommitFires([]FireRecord{testFire(1000+i%5, t0.Add(time.Hour+time.Duration(i)), uint64(i+1))}); err != nil {
				t.Errorf("CommitFires during backup = %v", err)
				return
			}
		}
	}()
	out := filepath.Join(t.TempDir(), "backup.db")
	f, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	var size int64 = -1
	n, err := s.WriteBackup(f, func(sz int64) { size = sz })
	close(stop)
	wg.Wait()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil || n != size || n == 0 {
		t.Fatalf("WriteBackup = %d bytes, %v; size reported %d, want them equal and no error", n, err, size)
	}
	sum, err := Verify(out)
	if err != nil || sum.Rules != 300 || sum.Outbox != 149 || sum.DeadLetters != 1 || sum.SchemaVersion != SchemaVersion || sum.Bytes != n {
		t.Errorf("Verify(backup) = %+v, %v; want 300 rules, 149 outbox, 1 dead letter, schema %d, %d bytes", sum, err, SchemaVersion, n)
	}
	if got := contents(t, openPath(t, out)); got != want {
		t.Errorf("backup holds\n%s\nwant\n%s", got, want)
	}
}

// Backup of a stopped node's file: a copy that opens with the same
// contents, the source unchanged; refused while the file is open, onto an
// existing file, and for what is not a timerd store.
func TestOfflineBackup(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "node.db")
	s := openPath(t, path)
	fillStore(t, s, 50)
	want := contents(t, s)

	out := filepath.Join(t.TempDir(), "copy.db")
	start := time.Now()
	_, err := Backup(path, out, MaintenanceOptions{Timeout: 100 * time.Millisecond})
	if !errors.Is(err, ErrLocked) || time.Since(start) > 5*time.Second {
		t.Errorf("Backup of an open store = %v after %v, want ErrLocked after the 100ms timeout", err, time.Since(start))
	}
	if _, serr := os.Stat(out); !errors.Is(serr, fs.ErrNotExist) {
		t.Errorf("a refused Backup left %s (stat: %v)", out, serr)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	before, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}

	sum, err := Backup(path, out, MaintenanceOptions{})
	if err != nil || sum.Rules != 50 || sum.DeadLetters != 1 {
		t.Fatalf("Backup = %+v, %v; want 50 rules, 1 dead letter", sum, err)
	}
	if after, _ := os.ReadFile(path); !bytes.Equal(before, after) {
		t.Error("Backup changed the source file")
	}
	if fi, err := os.Stat(out); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("backup file: %v, %v; want mode 0600", fi, err)
	}
	if got := contents(t, openPath(t, out)); got != want {
		t.Errorf("backup holds\n%s\nwant\n%s", got, want)
	}
	// Onto an existing file: refused, the file untouched.
	if _, err := Backup(path, out, MaintenanceOptions{}); err == nil || !strings.Contains(err.Error(), "exists") {
		t.Errorf("Backup onto an existing file = %v, want an error saying it exists", err)
	}
	if left, _ := filepath.Glob(filepath.Join(filepath.Dir(out), ".copy.db.tmp-*")); len(left) != 0 {
		t.Errorf("temporary files left: %v", left)
	}
	checkRefusesBadSources(t, func(src string) error {
		_, err := Backup(src, filepath.Join(t.TempDir(), "x.db"), MaintenanceOptions{})
		return err
	})
}

// checkRefusesBadSources: a missing file, an empty one, garbage and a bbolt
// file of another program are refused with the right error.
func checkRefusesBadSources(t *testing.T, op func(src string) error) {
	t.Helper()
	dir := t.TempDir()
	garbage := filepath.Join(dir, "garbage.db")
	if err := os.WriteFile(garbage, bytes.Repeat([]byte("not bbolt "), 2000), 0o600); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(dir, "empty.db")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	foreign := filepath.Join(dir, "api.db")
	db, err := bolt.Open(foreign, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bolt.Tx) error { _, err := tx.CreateBucket([]byte("events")); return err }); err != nil {
		t.Fatal(err)
	}
	db.Close()
	for _, tc := range []struct {
		name, path string
		want       error
	}{
		{"missing", filepath.Join(dir, "none.db"), fs.ErrNotExist},
		{"empty", empty, ErrCorrupt},
		{"garbage", garbage, ErrCorrupt},
		{"foreign", foreign, ErrForeign},
	} {
		if err := op(tc.path); !errors.Is(err, tc.want) {
			t.Errorf("%s source: %v, want %v", tc.name, err, tc.want)
		}
	}
	if b, _ := os.ReadFile(garbage); !bytes.HasPrefix(b, []byte("not bbolt ")) {
		t.Error("the garbage source was changed")
	}
}

// Compact after most rules went: a smaller file with the same contents whose
// sequences go on (a new fire gets a later outbox sequence), the original
// kept as .bak when asked; to another file, the source is left alone.
func TestCompact(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "node.db")
	s := openPath(t, path)
	fillStore(t, s, 3000)
	var gone []Tombstone
	for id := int64(1); id <= 3000; id++ {
		if id%10 != 0 {
			gone = append(gone, Tombstone{ID: id, Version: t0.Add(time.Hour)})
		}
	}
	if err := s.RemoveRules(gone); err != nil {
		t.Fatal(err)
	}
	want := contents(t, s)
	out, err := s.Outbox(0, 1<<20)
	if err != nil || len(out) == 0 {
		t.Fatalf("Outbox = %d entries, %v", len(out), err)
	}
	lastSeq := out[len(out)-1].Seq

	if _, err := Compact(path, "", false, MaintenanceOptions{Timeout: 100 * time.Millisecond}); !errors.Is(err, ErrLocked) {
		t.Errorf("Compact of an open store = %v, want ErrLocked", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	original, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}

	// To another file: the source unchanged.
	other := filepath.Join(t.TempDir(), "compact.db")
	res, err := Compact(path, other, false, MaintenanceOptions{})
	if err != nil || res.Out != other || res.After >= res.Before || res.Backup != "" {
		t.Fatalf("Compact(out) = %+v, %v; want a smaller %s and no backup", res, err, other)
	}
	if now, _ := os.ReadFile(path); !bytes.Equal(now, original) {
		t.Error("Compact to another file changed the source")
	}
	if got := contents(t, openPath(t, other)); got != want {
		t.Errorf("compacted copy holds\n%s\nwant\n%s", got, want)
	}
	if _, err := Compact(path, other, false, MaintenanceOptions{}); err == nil || !strings.Contains(err.Error(), "exists") {
		t.Errorf("Compact onto an existing file = %v, want an error saying it exists", err)
	}
	if _, err := Compact(path, other+"2", true, MaintenanceOptions{}); err == nil {
		t.Error("Compact(out, keepBackup) = nil, want an error: a backup is kept only in place")
	}

	// In place, keeping the original.
	res, err = Compact(path, "", true, MaintenanceOptions{})
	if err != nil || res.Out != path || res.Backup != path+".bak" || res.After >= res.Before || res.Before != int64(len(original)) {
		t.Fatalf("Compact in place = %+v, %v; want %s smaller than %d bytes, the original in .bak", res, err, path, len(original))
	}
	if bak, _ := os.ReadFile(path + ".bak"); !bytes.Equal(bak, original) {
		t.Error("node.db.bak is not the original file")
	}
	if fi, err := os.Stat(path); err != nil || fi.Size() != res.After || fi.Mode().Perm() != 0o600 {
		t.Errorf("compacted %s: %v, %v; want %d bytes, mode 0600", path, fi, err, res.After)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, ".node.db*")); len(left) != 0 {
		t.Errorf("temporary files left: %v", left)
	}
	s = openPath(t, path)
	if got := contents(t, s); got != want {
		t.Errorf("compacted store holds\n%s\nwant\n%s", got, want)
	}
	if err := s.CommitFires([]FireRecord{testFire(10, t0.Add(time.Hour), 2)}); err != nil {
		t.Fatal(err)
	}
	if out, err := s.Outbox(lastSeq, 10); err != nil || len(out) != 1 || out[0].Seq <= lastSeq {
		t.Errorf("outbox after a fire on the compacted store = %+v, %v; want one entry after seq %d", out, err, lastSeq)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// Again in place, keeping a backup: the older .bak is replaced.
	if res, err := Compact(path, "", true, MaintenanceOptions{}); err != nil || res.Backup == "" {
		t.Fatalf("second Compact = %+v, %v", res, err)
	}
	if bak, _ := os.ReadFile(path + ".bak"); bytes.Equal(bak, original) {
		t.Error("the second Compact kept the first .bak")
	}
	checkRefusesBadSources(t, func(src string) error {
		_, err := Compact(src, "", false, MaintenanceOptions{})
		return err
	})
}

func TestHumanBytes(t *testing.T) {
	for n, want := range map[int64]string{0: "0 B", 1023: "1023 B", 1024: "1.0 KiB", 1536: "1.5 KiB", 5 << 20: "5.0 MiB", 3 << 30: "3.0 GiB", 2048 << 30: "2048.0 GiB"} {
		if got := HumanSize(n); got != want {
			t.Errorf("HumanSize(%d) = %q, want %q", n, got, want)
		}
	}
}

// SaveBackup keeps a whole, sound stream and refuses a short, long or
// corrupt one, leaving nothing at out.
func TestSaveBackup(t *testing.T) {
	t.Parallel()
	s := openTest(t, Options{})
	fillStore(t, s, 20)
	var buf bytes.Buffer
	if _, err := s.WriteBackup(&buf, nil); err != nil {
		t.Fatal(err)
	}
	whole := buf.Bytes()
	dir := t.TempDir()
	corrupt := bytes.Clone(whole)
	for i := 4096 * 2; i < len(corrupt); i++ { // every page past the metas
		corrupt[i] ^= 0xff
	}
	for _, tc := range []struct {
		name string
		body []byte
		size int64
		want string
	}{
		{"cut short", whole[:len(whole)/2], int64(len(whole)), fmt.Sprintf("got %d bytes, the length said %d", len(whole)/2, len(whole))},
		{"longer than said", append(bytes.Clone(whole), 0), int64(len(whole)), "the length said"},
		{"corrupt pages", corrupt, int64(len(corrupt)), "does not verify"},
		{"not a store", bytes.Repeat([]byte("x"), 8192), 8192, "does not verify"},
	} {
		out := filepath.Join(dir, tc.name+".db")
		if _, err := SaveBackup(bytes.NewReader(tc.body), tc.size, out); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("SaveBackup(%s) = %v, want an error with %q", tc.name, err, tc.want)
		}
		if _, err := os.Stat(out); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("SaveBackup(%s) left %s", tc.name, out)
		}
	}
	out := filepath.Join(dir, "good.db")
	sum, err := SaveBackup(bytes.NewReader(whole), int64(len(whole)), out)
	if err != nil || sum.Rules != 20 || sum.Bytes != int64(len(whole)) {
		t.Fatalf("SaveBackup(whole) = %+v, %v; want 20 rules, %d bytes", sum, err, len(whole))
	}
	if got, want := contents(t, openPath(t, out)), contents(t, s); got != want {
		t.Errorf("saved backup holds\n%s\nwant\n%s", got, want)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, ".*")); len(left) != 0 {
		t.Errorf("temporary files left: %v", left)
	}
}
