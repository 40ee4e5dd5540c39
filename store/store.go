package store

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/timerd/timerd/scheduler/metricset"
)

// Sentinel errors, always returned wrapped with the file path.
var (
	// ErrCorrupt: the file is not a readable bbolt database, or a record in it is malformed.
	ErrCorrupt = errors.New("corrupt store file")
	// ErrForeign: a valid bbolt file that timerd did not create.
	ErrForeign = errors.New("not a timerd store")
	// ErrSchemaVersion: the file was written by a newer timerd.
	ErrSchemaVersion = errors.New("unsupported store schema version")
	// ErrLocked: another process holds the file open.
	ErrLocked = errors.New("store file is locked by another process")
	// ErrNotFound: DeadLetter was asked to move an outbox entry that does not exist.
	ErrNotFound = errors.New("not found")
)

const (
	formatMarker = "timerd-node-store"
	// SchemaVersion is the layout this build reads and writes. Version 1 had no
	// tombstones bucket, version 2 no protocol and pending buckets (and no chains in
	// watermarks, no fires in outbox entries), version 3 no checksums in rule, watermark
	// and journal values, version 4 no binary timer in rule values (codec.go, ruleV4);
	// Open adds what is missing, rewrites what lacks a checksum or a binary timer and
	// raises the file's version.
	SchemaVersion = 5

	defaultTimeout           = time.Second
	defaultFreelistSyncPages = 4096
)

var (
	bucketMeta        = []byte("meta")
	bucketRules       = []byte("rules")
	bucketWatermarks  = []byte("watermarks")
	bucketOutbox      = []byte("outbox")
	bucketDeadLetters = []byte("deadletters")
	bucketJournal     = []byte("wmjournal")
	bucketTombstones  = []byte("tombstones") // since schema version 2
	bucketProtocol    = []byte("protocol")   // since schema version 3
	bucketPending     = []byte("pending")    // since schema version 3
	allBuckets        = [][]byte{bucketMeta, bucketRules, bucketWatermarks, bucketOutbox, bucketDeadLetters, bucketJournal, bucketTombstones, bucketProtocol, bucketPending}
	// bucketSince: the schema version that added a bucket (others: version 1).
	bucketSince = map[string]uint64{string(bucketTombstones): 2, string(bucketProtocol): 3, string(bucketPending): 3}

	keyFormat        = []byte("format")
	keySchemaVersion = []byte("schema_version")
	keyCreatedAt     = []byte("created_at")
	keyOutboxLen     = []byte("outbox_len")
	keyDeadLetterLen = []byte("deadletter_len")
	keyPendingLen    = []byte("pending_len") // since schema version 3
)

// Options configures Open. The zero value is usable.
type Options struct {
	Timeout      time.Duration // file-lock wait, default 1s (bbolt waits forever by default)
	NoSync       bool          // tests/benchmarks only: a crash may lose or corrupt data
	MmapPopulate bool          // MAP_POPULATE for fast cold start (Linux; ignored elsewhere)
	// FreelistSyncPages bounds the free pages for which a commit writes bbolt's list of
	// them (bbolt writes it at every commit, whatever its length): above, commits leave
	// it out and the next Open rebuilds it by walking the live pages. An outage's drained
	// outbox leaves hundreds of thousands of free pages, and writing (and sorting) their
	// list made every later commit 10 to 90 times slower; the walk costs an Open about 0.1 s
	// per million rules. docs/operations.md has the figures. 0: 4,096 (a 32 KiB list);
	// negative: never written.
	FreelistSyncPages int
	Registerer        prometheus.Registerer // nil: no metrics
	// PartitionOf maps a rule id to its partition, for PartitionWatermarks (the
	// cluster's xxhash64 of the 8-byte big-endian id mod the partition count). Nil: the
	// store cannot answer PartitionWatermarks (use PartitionWatermarksOf).
	PartitionOf func(rule int64) int
}

// Validate reports the first bad field.
func (o Options) Validate() error {
	if o.Timeout < 0 {
		return fmt.Errorf("store options: Timeout %v: must not be negative", o.Timeout)
	}
	return nil
}

// Store is an open timerd bbolt file. Its methods are safe for concurrent use.
type Store struct {
	db   *bolt.DB
	path string

	// Mirrors of the meta counters for the gauges; the meta bucket is the truth.
	outboxLen     atomic.Int64 // ready entries
	pendingLen    atomic.Int64
	deadLetterLen atomic.Int64
	incarnation   atomic.Uint64 // mirror of the protocol bucket's; writers hold pmu
	pmu           sync.Mutex    // serializes writers of the protocol bucket
	// ruleCount is counted once at Open and kept by the writers (under wmu):
	// status and metrics ask for it often, and a scan of a million rules is not free.
	ruleCount atomic.Int64

	acks         ackQueue     // acks waiting to ride on a fires commit (AckOutbox)
	wmu          sync.Mutex   // serializes writers of watermarks (and the journal index)
	imu          sync.RWMutex // guards j
	j            journalState
	foldAfter    int                   // journal records before a fold
	foldSlices   int                   // slices of a cycle of fold steps
	foldFault    func(slice int) error // tests: fails a fold step
	foldDeferred int                   // records more to wait for after a failed fold (guarded by wmu)

	partitionOf       func(int64) int
	parts             atomic.Pointer[partIndex] // nil until IndexPartitions (partindex.go)
	freelistSyncPages int                       // Options.FreelistSyncPages
	readErrs          atomic.Uint64
	readErr           atomic.Pointer[error] // the last error of a protocol.Store read

	reg        prometheus.Registerer
	metrics    prometheus.Collector // registered on reg; nil without one
	commitDur  prometheus.Histogram
	foldErrors prometheus.Counter

	closeOnce sync.Once
	closeErr  error
}

// Open opens or creates the store at path. A new (or empty) file gets the meta written;
// an existing file is checked and never reset: a foreign, corrupt or newer file is
// refused with ErrForeign, ErrCorrupt or ErrSchemaVersion, and a file held by another
// process with ErrLocked once opts.Timeout has passed.
func Open(path string, opts Options) (s *Store, err error) {
	if err := opts.Validate(); err != nil {
		return nil, fmt.Errorf("open store %q: %w", path, err)
	}
	if opts.Timeout == 0 {
		opts.Timeout = defaultTimeout
	}
	if opts.FreelistSyncPages == 0 {
		opts.FreelistSyncPages = defaultFreelistSyncPages
	}
	if err := precheck(path); err != nil {
		return nil, fmt.Errorf("open store %q: %w", path, err)
	}

	bopts := &bolt.Options{
		Timeout:      opts.Timeout,
		NoSync:       opts.NoSync,
		FreelistType: bolt.FreelistMapType, // O(1) page allocation on large files
		// Whether commits write the freelist is decided at each commit (update): none is
		// written at Open, and a file without one has it rebuilt.
		NoFreelistSync: true,
	}
	if opts.MmapPopulate {
		bopts.MmapFlags = mmapPopulate
	}

	db, err := openBolt(path, bopts)
	if err != nil {
		switch {
		case errors.Is(err, berrors.ErrTimeout):
			return nil, fmt.Errorf("open store %q: %w (waited %v)", path, ErrLocked, opts.Timeout)
		case errors.Is(err, berrors.ErrInvalid), errors.Is(err, berrors.ErrVersionMismatch),
			errors.Is(err, berrors.ErrChecksum):
			return nil, fmt.Errorf("open store %q: %w: %w", path, ErrCorrupt, err)
		}
		return nil, fmt.Errorf("open store %q: %w", path, err)
	}
	s = &Store{db: db, path: path, foldAfter: defaultFoldAfter, foldSlices: defaultFoldSlices, partitionOf: opts.PartitionOf,
		freelistSyncPages: opts.FreelistSyncPages}
	defer func() {
		if err != nil {
			_ = db.Close()
		}
	}()
	if err := s.init(); err != nil {
		return nil, fmt.Errorf("open store %q: %w", path, err)
	}
	if err := s.ensureMissedBucket(); err != nil {
		return nil, fmt.Errorf("open store %q: missed-fire log: %w", path, err)
	}
	if err := s.initJournal(); err != nil {
		return nil, fmt.Errorf("open store %q: watermark journal: %w", path, err)
	}
	if err := s.view(func(tx *bolt.Tx) error {
		s.ruleCount.Store(int64(tx.Bucket(bucketRules).Stats().KeyN))
		return nil
	}); err != nil {
		return nil, fmt.Errorf("open store %q: count rules: %w", path, err)
	}
	if err := s.registerMetrics(opts.Registerer); err != nil {
		return nil, fmt.Errorf("open store %q: %w", path, err)
	}
	return s, nil
}

// openBolt turns a bbolt panic or memory fault on a damaged file into ErrCorrupt.
// On such a panic bbolt's file handle is lost; its finalizer releases the lock.
func openBolt(path string, opts *bolt.Options) (db *bolt.DB, err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			db, err = nil, fmt.Errorf("%w: bbolt panic: %v", ErrCorrupt, r)
		}
	}()
	return bolt.Open(path, 0o600, opts)
}

// init writes the meta of a new file, or checks that an existing one is ours and
// loads the counters.
func (s *Store) init() error {
	fresh, upgrade := false, false
	err := s.view(func(tx *bolt.Tx) error {
		var names []string
		_ = tx.ForEach(func(name []byte, _ *bolt.Bucket) error {
			names = append(names, string(name))
			return nil
		})
		if len(names) == 0 {
			fresh = true
			return nil
		}
		meta := tx.Bucket(bucketMeta)
		if meta == nil || !bytes.Equal(meta.Get(keyFormat), []byte(formatMarker)) {
			return fmt.Errorf("%w (buckets: %s)", ErrForeign, listNames(names))
		}
		v := meta.Get(keySchemaVersion)
		ver, err := strconv.ParseUint(string(v), 10, 32)
		if err != nil || ver == 0 {
			return fmt.Errorf("%w: schema_version %q", ErrCorrupt, v)
		}
		if ver > SchemaVersion {
			return fmt.Errorf("%w: file has %d, this build reads up to %d", ErrSchemaVersion, ver, SchemaVersion)
		}
		for _, b := range allBuckets {
			if tx.Bucket(b) == nil && ver >= max(1, bucketSince[string(b)]) {
				return fmt.Errorf("%w: bucket %q missing", ErrCorrupt, b)
			}
		}
		upgrade = ver < SchemaVersion
		ol, err1 := getCounter(meta, keyOutboxLen)
		dl, err2 := getCounter(meta, keyDeadLetterLen)
		var pl uint64
		var err3 error
		if ver >= 3 {
			pl, err3 = getCounter(meta, keyPendingLen)
		}
		if err := errors.Join(err1, err2, err3); err != nil {
			return err
		}
		s.outboxLen.Store(int64(ol))
		s.deadLetterLen.Store(int64(dl))
		s.pendingLen.Store(int64(pl))
		if pb := tx.Bucket(bucketProtocol); pb != nil {
			inc, err := getIncarnation(pb)
			if err != nil {
				return err
			}
			s.incarnation.Store(inc)
		}
		return nil
	})
	if err != nil {
		return err
	}
	if upgrade {
		// 1 → 2: tombstones. Rule records of either codec version are read.
		// 2 → 3: protocol and pending buckets, the pending counter. Watermarks without
		// a chain, journal values of v1 and outbox entries of v1 are read (codec.go).
		// 3 → 4: rule and watermark values are rewritten with a checksum (sealAll);
		// journal values of earlier versions are read until folded.
		// 4 → 5: rule values are rewritten with the binary form of their timer, parsed
		// once here (sealAll), so that no later start parses JSON.
		err := s.update(func(tx *bolt.Tx) error {
			for _, b := range [][]byte{bucketTombstones, bucketProtocol, bucketPending} {
				if _, err := tx.CreateBucketIfNotExists(b); err != nil {
					return fmt.Errorf("create bucket %q: %w", b, err)
				}
			}
			meta := tx.Bucket(bucketMeta)
			if meta.Get(keyPendingLen) == nil {
				if err := putCounter(meta, keyPendingLen, 0); err != nil {
					return err
				}
			}
			return nil
		})
		if err == nil {
			err = s.sealAll() // 3 → 4 and 4 → 5
		}
		if err == nil {
			err = s.update(func(tx *bolt.Tx) error {
				return tx.Bucket(bucketMeta).Put(keySchemaVersion, []byte(strconv.Itoa(SchemaVersion)))
			})
		}
		return err
	}
	if !fresh {
		return nil
	}
	return s.update(func(tx *bolt.Tx) error {
		for _, b := range allBuckets {
			if _, err := tx.CreateBucket(b); err != nil {
				return fmt.Errorf("create bucket %q: %w", b, err)
			}
		}
		meta := tx.Bucket(bucketMeta)
		return errors.Join(
			meta.Put(keyFormat, []byte(formatMarker)),
			meta.Put(keySchemaVersion, []byte(strconv.Itoa(SchemaVersion))),
			meta.Put(keyCreatedAt, []byte(time.Now().UTC().Format(time.RFC3339Nano))),
			putCounter(meta, keyOutboxLen, 0),
			putCounter(meta, keyDeadLetterLen, 0),
			putCounter(meta, keyPendingLen, 0),
		)
	})
}

// sealBatch bounds the values one transaction of sealAll rewrites.
const sealBatch = 10_000

// sealAll rewrites every rule and watermark value written before checksums with one,
// and every rule value written before binary timers (ruleV4) with its timer, sealBatch
// values a transaction (a million rules is one pass at upgrade).
func (s *Store) sealAll() error {
	for _, b := range []struct {
		name   []byte
		sealed func(v []byte) bool
		decode func(id int64, v []byte) ([]byte, error)
	}{
		{bucketRules, func(v []byte) bool { return len(v) > 0 && v[0] == ruleV4 }, func(id int64, v []byte) ([]byte, error) {
			r, err := decodeRule(id, v)
			return encodeRule(r), err
		}},
		// A 16-byte watermark is one of before v2, whatever its first byte.
		{bucketWatermarks, func(v []byte) bool { return len(v) != watermarkLen && len(v) > 0 && v[0] == sealedV3 }, func(id int64, v []byte) ([]byte, error) {
			wm, chain, err := decodeWatermark(v)
			if err != nil {
				return nil, fmt.Errorf("rule %d: %w", id, err)
			}
			return encodeWatermark(wm, chain), nil
		}},
	} {
		var after []byte
		for done := false; !done; {
			err := s.update(func(tx *bolt.Tx) error {
				bk := tx.Bucket(b.name)
				c := bk.Cursor()
				k, v := c.First()
				if after != nil {
					k, v = c.Seek(after)
					if bytes.Equal(k, after) {
						k, v = c.Next()
					}
				}
				type kv struct{ k, v []byte }
				var todo []kv
				for n := 0; k != nil && n < sealBatch; k, v = c.Next() {
					after = bytes.Clone(k)
					if b.sealed(v) {
						continue
					}
					id, err := keyID(k)
					if err != nil {
						return err
					}
					nv, err := b.decode(id, v)
					if err != nil {
						return err
					}
					todo = append(todo, kv{after, nv})
					n++
				}
				done = k == nil
				for _, e := range todo {
					if err := bk.Put(e.k, e.v); err != nil {
						return err
					}
				}
				return nil
			})
			if err != nil {
				return fmt.Errorf("rewrite %s to the current codec: %w", b.name, err)
			}
		}
	}
	return nil
}

// initJournal folds what a previous run journaled, so the index starts empty.
func (s *Store) initJournal() error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	s.j.idx = map[int64]idxEntry{}
	var seq uint64
	pending := false
	readSeq := func() error {
		return s.view(func(tx *bolt.Tx) error {
			jb := tx.Bucket(bucketJournal)
			seq = jb.Sequence()
			k, _ := jb.Cursor().First()
			pending = k != nil
			return nil
		})
	}
	if err := readSeq(); err != nil {
		return err
	}
	if pending {
		if err := s.fold(); err != nil {
			return err
		}
		if err := readSeq(); err != nil {
			return err
		}
	}
	s.j.floor, s.j.applied = seq+1, seq
	return nil
}

func listNames(names []string) string {
	slices.Sort(names)
	const max = 10
	if len(names) > max {
		return strings.Join(names[:max], ", ") + fmt.Sprintf(", … %d more", len(names)-max)
	}
	return strings.Join(names, ", ")
}

func (s *Store) registerMetrics(reg prometheus.Registerer) error {
	s.commitDur = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "timerd_store_commit_seconds",
		Help:    "Duration of store read-write transactions, fsync included.",
		Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16), // 100µs … 3.3s
	})
	s.foldErrors = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "timerd_store_fold_errors_total",
		Help: "Failed folds of the watermark journal (the fires stay durable; the journal grows until one succeeds).",
	})
	metrics, err := metricset.Register(reg,
		s.commitDur,
		s.foldErrors,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "timerd_outbox_entries",
			Help: "Events committed and not yet delivered or dead-lettered.",
		}, func() float64 { return float64(s.outboxLen.Load()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "timerd_dead_letters",
			Help: "Events the API refused for good, kept for inspection.",
		}, func() float64 { return float64(s.deadLetterLen.Load()) }),
	)
	if err != nil {
		return err
	}
	s.reg, s.metrics = reg, metrics
	return nil
}

// Close unregisters the metrics and closes the file, waiting for open transactions.
// Calling it again returns nil.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		if s.metrics != nil {
			s.reg.Unregister(s.metrics)
		}
		if err := s.db.Close(); err != nil {
			s.closeErr = fmt.Errorf("close store %q: %w", s.path, err)
		}
	})
	return s.closeErr
}

// Path is the file's path as given to Open.
func (s *Store) Path() string { return s.path }

// update runs fn in a read-write transaction, times the commit and turns a bbolt
// panic (a damaged page) into ErrCorrupt.
func (s *Store) update(fn func(tx *bolt.Tx) error) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer s.recoverCorrupt(&err, nil)
	start := time.Now()
	err = s.db.Update(func(tx *bolt.Tx) error {
		if err := fn(tx); err != nil {
			return err
		}
		// bbolt reads the flag in this commit, under the writer lock we hold; the
		// count is the last commit's.
		s.db.NoFreelistSync = s.db.Stats().FreePageN > s.freelistSyncPages
		return nil
	})
	if err == nil && s.commitDur != nil {
		s.commitDur.Observe(time.Since(start).Seconds())
	}
	return err
}

func (s *Store) view(fn func(tx *bolt.Tx) error) error { return s.viewCallback(nil, fn) }

// viewCallback is view for a walk that calls the caller's function, setting
// *inCallback around the call so its panics are not mistaken for bbolt's.
func (s *Store) viewCallback(inCallback *bool, fn func(tx *bolt.Tx) error) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer s.recoverCorrupt(&err, inCallback)
	return s.db.View(fn)
}

// recoverCorrupt, deferred, turns a bbolt panic or memory fault (SetPanicOnFault) into
// ErrCorrupt; bbolt rolls the transaction back first. A panic raised while *inCallback
// is set belongs to the caller's function and is re-raised.
func (s *Store) recoverCorrupt(err *error, inCallback *bool) {
	r := recover()
	if r == nil {
		return
	}
	if inCallback != nil && *inCallback {
		panic(r)
	}
	*err = fmt.Errorf("%w: bbolt panic: %v", ErrCorrupt, r)
}

// wrap names the store and the operation in an error.
func (s *Store) wrap(op string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("store %q: %s: %w", s.path, op, err)
}

func getCounter(meta *bolt.Bucket, key []byte) (uint64, error) {
	v := meta.Get(key)
	if len(v) != 8 {
		return 0, fmt.Errorf("%w: meta %s: %d bytes, want 8", ErrCorrupt, key, len(v))
	}
	return binary.BigEndian.Uint64(v), nil
}

func putCounter(meta *bolt.Bucket, key []byte, n uint64) error {
	return meta.Put(key, binary.BigEndian.AppendUint64(nil, n))
}

// addCounter adds delta to a meta counter inside tx.
func addCounter(tx *bolt.Tx, key []byte, delta int64) error {
	if delta == 0 {
		return nil
	}
	meta := tx.Bucket(bucketMeta)
	n, err := getCounter(meta, key)
	if err != nil {
		return err
	}
	if delta < 0 && uint64(-delta) > n {
		return fmt.Errorf("%w: meta %s would go below zero (%d%+d)", ErrCorrupt, key, n, delta)
	}
	return putCounter(meta, key, uint64(int64(n)+delta))
}
