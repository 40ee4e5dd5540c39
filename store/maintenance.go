package store

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// Housekeeping of a store file: a consistent copy of an open store
// (WriteBackup, for the node's GET /v1/backup), and backup and compaction of
// the file of a node that is not running (Backup, Compact; `timerd store`).
// Every file written is written next to its destination, synced and then
// renamed (or linked) into place, and the directory synced: a crash leaves
// the old file or the new one, never half of one. (Not auth.WriteFileAtomic:
// it takes the whole file in memory, and a backup must never replace a file.)

// compactTxMaxSize bounds the bytes copied in one transaction of Compact
// (bbolt's `bbolt compact` takes the same bound as -tx-max-size). The copy
// commits without fsync and is synced once at the end.
const compactTxMaxSize = 16 << 20

// WriteBackup writes a consistent snapshot of the store to w from one read
// transaction (bbolt's Tx.WriteTo): a store file that Open opens as it was
// when the transaction began, while commits go on. size is called first
// with the snapshot's length in bytes, for an HTTP Content-Length.
//
// While the snapshot is written the transaction is open, and a commit that
// needs to grow the file's mapping waits for it: write to a reader that
// keeps up (a local file, a client that reads), not to one that stalls.
func (s *Store) WriteBackup(w io.Writer, size func(int64)) (int64, error) {
	var n int64
	err := s.view(func(tx *bolt.Tx) error {
		if size != nil {
			size(tx.Size())
		}
		var err error
		n, err = tx.WriteTo(w)
		return err
	})
	if err != nil {
		return n, fmt.Errorf("back up store %q: %w", s.path, err)
	}
	return n, nil
}

// Summary is what a store file holds, as Verify found it.
type Summary struct {
	SchemaVersion int
	Rules         int
	Outbox        int // deliverable events not yet delivered
	Pending       int // events awaiting replication or a verdict
	DeadLetters   int
	Bytes         int64 // the file's size
}

func (s Summary) String() string {
	return fmt.Sprintf("schema %d, %d rules, %d outbox, %d pending, %d dead letters, %s",
		s.SchemaVersion, s.Rules, s.Outbox, s.Pending, s.DeadLetters, HumanSize(s.Bytes))
}

// HumanSize is n bytes in B, KiB, MiB or GiB, for the sizes maintenance reports.
func HumanSize(n int64) string {
	const unit = 1024
	if n < unit {
		return strconv.FormatInt(n, 10) + " B"
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 2; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMG"[exp])
}

// MaintenanceOptions configures Backup and Compact.
type MaintenanceOptions struct {
	// Timeout is how long to wait for the file lock; a running node holds
	// it, and then the error is ErrLocked. Default 1 s.
	Timeout time.Duration
}

func (o MaintenanceOptions) timeout() time.Duration {
	if o.Timeout <= 0 {
		return defaultTimeout
	}
	return o.Timeout
}

// Backup copies the store file at path, of a node that is not running, to
// out, which must not exist yet. The source is opened read-only, under a
// shared lock that keeps a node from opening it meanwhile, and is not
// changed. The copy is checked (Verify) before it takes the name out.
func Backup(path, out string, opts MaintenanceOptions) (Summary, error) {
	db, err := openOffline(path, true, opts.timeout())
	if err != nil {
		return Summary{}, err
	}
	defer db.Close()
	sum, err := writeVerified(out, func(f *os.File) error {
		return safely(func() error {
			return db.View(func(tx *bolt.Tx) error {
				_, err := tx.WriteTo(f)
				return err
			})
		})
	})
	if err != nil {
		return Summary{}, fmt.Errorf("back up store %q to %q: %w", path, out, err)
	}
	return sum, nil
}

// SaveBackup writes a backup read from r (GET /v1/backup's body, size bytes
// as its Content-Length said) to out, which must not exist yet: beside it,
// synced, checked (Verify), then linked into place. A stream cut short or
// not a sound store leaves nothing at out.
func SaveBackup(r io.Reader, size int64, out string) (Summary, error) {
	sum, err := writeVerified(out, func(f *os.File) error {
		n, err := io.Copy(f, io.LimitReader(r, size+1))
		switch {
		case err != nil:
			return fmt.Errorf("cut short after %d of %d bytes: %w", n, size, err)
		case n > size:
			return fmt.Errorf("got more than the %d bytes the length said", size)
		case n < size:
			return fmt.Errorf("got %d bytes, the length said %d bytes", n, size)
		}
		return nil
	})
	if err != nil {
		return Summary{}, fmt.Errorf("save backup to %q: %w", out, err)
	}
	return sum, nil
}

// writeVerified writes a store file to out, which must not exist: write
// fills a temporary file beside it, which is synced, checked (Verify) and
// only then linked to out.
func writeVerified(out string, write func(f *os.File) error) (Summary, error) {
	tmp, err := createTemp(out)
	if err != nil {
		return Summary{}, err
	}
	defer os.Remove(tmp.Name()) // after the link into place, a second name
	err = write(tmp)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return Summary{}, err
	}
	sum, err := Verify(tmp.Name())
	if err != nil {
		return Summary{}, fmt.Errorf("the copy does not verify: %w", err)
	}
	if err := linkNew(tmp.Name(), out); err != nil {
		return Summary{}, err
	}
	return sum, nil
}

// CompactResult is what Compact did.
type CompactResult struct {
	Before, After int64  // file sizes in bytes
	Out           string // the compacted file
	Backup        string // the original kept as path.bak, if asked
	Summary       Summary
}

// Compact rewrites the store file at path, of a node that is not running,
// with its pages full and without free pages (bbolt.Compact). With out
// empty the compacted file replaces path, atomically, and keepBackup keeps
// the original as path.bak (replacing an older one); otherwise it is
// written to out, which must not exist yet, and path is left as it was.
// The source is held under the exclusive lock throughout, so no node opens
// it meanwhile, and is never written. The copy is checked (Verify) before
// it takes its name.
func Compact(path, out string, keepBackup bool, opts MaintenanceOptions) (CompactResult, error) {
	res := CompactResult{Out: out}
	if out == "" {
		res.Out = path
	} else if keepBackup {
		return res, fmt.Errorf("compact store %q: a backup is kept only when compacting in place (no out)", path)
	}
	src, err := openOffline(path, false, opts.timeout())
	if err != nil {
		return res, err
	}
	defer src.Close()
	fi, err := os.Stat(path)
	if err != nil {
		return res, fmt.Errorf("compact store %q: %w", path, err)
	}
	res.Before = fi.Size()

	tmp, err := createTemp(res.Out)
	if err != nil {
		return res, fmt.Errorf("compact store %q: %w", path, err)
	}
	tmpPath := tmp.Name()
	tmp.Close()
	defer os.Remove(tmpPath) // a no-op once renamed; a second name once linked
	dst, err := bolt.Open(tmpPath, 0o600, &bolt.Options{Timeout: time.Second, NoSync: true, FreelistType: bolt.FreelistMapType})
	if err != nil {
		return res, fmt.Errorf("compact store %q: create %q: %w", path, tmpPath, err)
	}
	err = safely(func() error { return bolt.Compact(dst, src, compactTxMaxSize) })
	if err == nil {
		err = dst.Sync()
	}
	if cerr := dst.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return res, fmt.Errorf("compact store %q: %w", path, err)
	}
	if res.Summary, err = Verify(tmpPath); err != nil {
		return res, fmt.Errorf("compact store %q: the compacted copy does not verify: %w", path, err)
	}
	res.After = res.Summary.Bytes
	if out != "" {
		if err := linkNew(tmpPath, out); err != nil {
			return res, fmt.Errorf("compact store %q: %w", path, err)
		}
		return res, nil
	}
	if keepBackup {
		res.Backup = path + ".bak"
		if err := replaceWithLink(path, res.Backup); err != nil {
			return res, fmt.Errorf("compact store %q: keep the original as %q: %w", path, res.Backup, err)
		}
	}
	if err := os.Rename(tmpPath, path); err != nil {
		return res, fmt.Errorf("compact store %q: replace it: %w", path, err)
	}
	if err := syncDir(filepath.Dir(path)); err != nil {
		return res, fmt.Errorf("compact store %q: sync its directory: %w", path, err)
	}
	return res, nil
}

// Verify opens the store file at path read-only and checks it: a timerd
// store of a schema this build reads, whose pages bbolt's consistency check
// (Tx.Check) finds sound. It never writes the file (Open would upgrade an
// older schema). It reports what the file holds.
func Verify(path string) (Summary, error) {
	db, err := openOffline(path, true, defaultTimeout)
	if err != nil {
		return Summary{}, err
	}
	defer db.Close()
	var sum Summary
	err = safely(func() error { return db.View(func(tx *bolt.Tx) error { return verifyTx(tx, &sum) }) })
	if err != nil {
		return Summary{}, fmt.Errorf("verify store %q: %w", path, err)
	}
	if fi, err := os.Stat(path); err == nil {
		sum.Bytes = fi.Size()
	}
	return sum, nil
}

// verifyTx reads every page of tx's file through its buckets (here, where
// safely turns a damaged page's panic into an error), then runs bbolt's
// consistency check, whose goroutine would crash the process on such a page.
func verifyTx(tx *bolt.Tx, sum *Summary) error {
	if err := walkBuckets(tx.Cursor(), func(name []byte) *bolt.Bucket { return tx.Bucket(name) }); err != nil {
		return err
	}
	var problems []error
	for err := range tx.Check() {
		if len(problems) < 5 {
			problems = append(problems, err)
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("%w: %w", ErrCorrupt, errors.Join(problems...))
	}
	v, err := strconv.Atoi(string(tx.Bucket(bucketMeta).Get(keySchemaVersion)))
	if err != nil {
		return fmt.Errorf("%w: schema_version: %w", ErrCorrupt, err)
	}
	sum.SchemaVersion = v
	count := func(name []byte) int {
		if b := tx.Bucket(name); b != nil {
			return b.Stats().KeyN
		}
		return 0
	}
	sum.Rules, sum.Outbox, sum.Pending, sum.DeadLetters = count(bucketRules), count(bucketOutbox), count(bucketPending), count(bucketDeadLetters)
	sum.Bytes = tx.Size()
	return nil
}

// walkBuckets visits every key of every bucket under c, nested ones too.
func walkBuckets(c *bolt.Cursor, bucket func(name []byte) *bolt.Bucket) error {
	for k, v := c.First(); k != nil; k, v = c.Next() {
		if v != nil {
			continue
		}
		b := bucket(k)
		if b == nil {
			return fmt.Errorf("%w: bucket %q cannot be opened", ErrCorrupt, k)
		}
		if err := walkBuckets(b.Cursor(), b.Bucket); err != nil {
			return err
		}
	}
	return nil
}

// safely runs fn, turning a bbolt panic or memory fault on a damaged file
// into ErrCorrupt (bbolt rolls the transaction back first).
func safely(fn func() error) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: bbolt panic: %v", ErrCorrupt, r)
		}
	}()
	return fn()
}

// openOffline opens an existing store file for maintenance: read-only under
// a shared lock, or read-write under the exclusive one (then nothing is
// written by the opening: the freelist is not synced). A lock held by a
// running node is ErrLocked after timeout; a file that is not a timerd
// store is ErrForeign, ErrCorrupt or ErrSchemaVersion.
func openOffline(path string, readOnly bool, timeout time.Duration) (*bolt.DB, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("open store %q: %w", path, err)
	}
	if !fi.Mode().IsRegular() || fi.Size() == 0 {
		return nil, fmt.Errorf("open store %q: %w: not a regular file with content", path, ErrCorrupt)
	}
	if err := precheck(path); err != nil {
		return nil, fmt.Errorf("open store %q: %w", path, err)
	}
	// The freelist is loaded at open, where openBolt recovers from a damaged
	// page, rather than in Tx.Check's goroutine.
	db, err := openBolt(path, &bolt.Options{Timeout: timeout, ReadOnly: readOnly, NoFreelistSync: true, FreelistType: bolt.FreelistMapType,
		PreLoadFreelist: true})
	if err != nil {
		switch {
		case errors.Is(err, berrors.ErrTimeout):
			return nil, fmt.Errorf("open store %q: %w (waited %v)", path, ErrLocked, timeout)
		case errors.Is(err, berrors.ErrInvalid), errors.Is(err, berrors.ErrVersionMismatch), errors.Is(err, berrors.ErrChecksum):
			return nil, fmt.Errorf("open store %q: %w: %w", path, ErrCorrupt, err)
		}
		return nil, fmt.Errorf("open store %q: %w", path, err)
	}
	err = safely(func() error { return db.View(func(tx *bolt.Tx) error { return checkMarker(tx) }) })
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("open store %q: %w", path, err)
	}
	return db, nil
}

// checkMarker: the file is a timerd store of a schema this build reads.
func checkMarker(tx *bolt.Tx) error {
	meta := tx.Bucket(bucketMeta)
	if meta == nil || !bytes.Equal(meta.Get(keyFormat), []byte(formatMarker)) {
		return ErrForeign
	}
	v, err := strconv.ParseUint(string(meta.Get(keySchemaVersion)), 10, 32)
	if err != nil || v == 0 {
		return fmt.Errorf("%w: schema_version %q", ErrCorrupt, meta.Get(keySchemaVersion))
	}
	if v > SchemaVersion {
		return fmt.Errorf("%w: file has %d, this build reads up to %d", ErrSchemaVersion, v, SchemaVersion)
	}
	return nil
}

// createTemp creates an empty file (mode 0600) in the directory of dest, to
// be written and then renamed or linked to dest.
func createTemp(dest string) (*os.File, error) {
	return os.CreateTemp(filepath.Dir(dest), "."+filepath.Base(dest)+".tmp-*")
}

// linkNew gives the synced file tmp the name dest, which must not exist (a
// link, unlike a rename, never replaces a file), and syncs the directory.
// tmp keeps its name; the caller removes it.
func linkNew(tmp, dest string) error {
	if err := os.Link(tmp, dest); err != nil {
		if errors.Is(err, os.ErrExist) {
			return fmt.Errorf("%q exists; remove it or choose another name", dest)
		}
		return err
	}
	return syncDir(filepath.Dir(dest))
}

// replaceWithLink makes dest a second name of path, replacing any dest
// atomically (a link to a temporary name, then a rename).
func replaceWithLink(path, dest string) error {
	tmp, err := createTemp(dest)
	if err != nil {
		return err
	}
	name := tmp.Name()
	tmp.Close()
	if err := os.Remove(name); err != nil {
		return err
	}
	if err := os.Link(path, name); err != nil {
		return err
	}
	if err := os.Rename(name, dest); err != nil {
		os.Remove(name)
		return err
	}
	return nil
}

// syncDir makes a rename or link in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
