package scheduler

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/bits"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// CommitFunc durably records fires (one bbolt transaction), and with them the
// misses the engine decided or was told of since the last commit (missed:
// usually empty; a batch may hold misses and no fires, such as slots a skip
// policy dropped). It is called only from the engine goroutine. The slices, and
// the Timers the fires point to, are reused once it returns: copy what you
// keep. An error makes the engine retry the same fires and misses after a
// backoff.
type CommitFunc func(fires []Fire, missed []Miss) error

// Config configures an Engine.
type Config struct {
	Commit              CommitFunc       // required
	Now                 func() time.Time // default time.Now
	DefaultMisfireGrace time.Duration    // default 1m; UnlimitedGrace allowed: a slot up to this late fires normally
	MaxCatchUp          int              // fire_all cap per rule per catch-up, default 100
	MaxBatch            int              // fires per commit, default 10000
	RetryMin, RetryMax  time.Duration    // commit-failure backoff, default 100ms..10s
	// Coalesce groups fires that come due close together into one wake-up
	// and one commit: after a wake that fired, a root due less than
	// Coalesce later is taken Coalesce after that wake, with everything
	// else due by then, rather than with a wake-up of its own. That holds
	// for slots that came due during a commit too: batches start at least
	// Coalesce apart (monotonic clock), so a steady stream commits about once
	// per Coalesce however short the commits, except that a catch-up cut
	// by MaxBatch goes on at once. A slot never fires before it is due and
	// at most Coalesce late on this account; a slot after a quiet spell
	// fires on time. Default 2ms (0 means the default, as for every field);
	// NoCoalesce (any negative value) turns it off.
	Coalesce   time.Duration
	Logger     *slog.Logger          // default: discard
	Registerer prometheus.Registerer // nil: no metrics registered
}

// Defaults of Config.
const (
	DefaultMisfireGrace = time.Minute
	DefaultMaxCatchUp   = 100
	DefaultMaxBatch     = 10000
	DefaultRetryMin     = 100 * time.Millisecond
	DefaultRetryMax     = 10 * time.Second
	DefaultCoalesce     = 2 * time.Millisecond
	NoCoalesce          = time.Duration(-1) // Config.Coalesce: a wake-up per distinct due time

	maxCatchUpLimit = 1_000_000 // the catch-up search keeps this many slots in memory
	maxCoalesce     = time.Second

	// maxSleep caps every sleep of Run. The timer runs on the monotonic
	// clock, but slots are due by the wall clock (Config.Now): a wait
	// computed before a wall-clock step (NTP, a resumed VM) would leave
	// the slots the step made due late by as much as the step. Capped,
	// the step is noticed within a second and those slots fire then. A
	// dense schedule wakes more often than this anyway; a sparse one pays
	// at most one wake-up a second (a clock read and a heap peek).
	maxSleep = time.Second
)

func (c Config) withDefaults() Config {
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.DefaultMisfireGrace == 0 {
		c.DefaultMisfireGrace = DefaultMisfireGrace
	}
	if c.MaxCatchUp == 0 {
		c.MaxCatchUp = DefaultMaxCatchUp
	}
	if c.MaxBatch == 0 {
		c.MaxBatch = DefaultMaxBatch
	}
	if c.RetryMin == 0 {
		c.RetryMin = DefaultRetryMin
	}
	if c.RetryMax == 0 {
		c.RetryMax = DefaultRetryMax
	}
	if c.Coalesce == 0 {
		c.Coalesce = DefaultCoalesce
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Validate reports the first bad field. Zero values mean the default.
func (c Config) Validate() error {
	switch {
	case c.Commit == nil:
		return errors.New("scheduler config: Commit is required")
	case c.DefaultMisfireGrace < 0 && c.DefaultMisfireGrace != UnlimitedGrace:
		return fmt.Errorf("scheduler config: DefaultMisfireGrace %v: must be >= 0 or UnlimitedGrace", c.DefaultMisfireGrace)
	case c.MaxCatchUp < 0 || c.MaxCatchUp > maxCatchUpLimit:
		return fmt.Errorf("scheduler config: MaxCatchUp %d: must be in [0, %d]", c.MaxCatchUp, maxCatchUpLimit)
	case c.MaxBatch < 0:
		return fmt.Errorf("scheduler config: MaxBatch %d: must be >= 0", c.MaxBatch)
	case c.RetryMin < 0:
		return fmt.Errorf("scheduler config: RetryMin %v: must be >= 0", c.RetryMin)
	case c.RetryMax < 0:
		return fmt.Errorf("scheduler config: RetryMax %v: must be >= 0", c.RetryMax)
	case c.Coalesce > maxCoalesce:
		return fmt.Errorf("scheduler config: Coalesce %v: must be at most %v (it delays fires)", c.Coalesce, maxCoalesce)
	}
	if d := c.withDefaults(); d.RetryMin > d.RetryMax {
		return fmt.Errorf("scheduler config: RetryMin %v exceeds RetryMax %v", d.RetryMin, d.RetryMax)
	}
	return nil
}

// Item is one rule of a bulk Load.
type Item struct {
	ID        int64
	Timer     *Timer
	Watermark Watermark
}

type ruleState uint8

const (
	idle   ruleState = iota // known, no next slot (a datetime that fired)
	queued                  // in the heap
	busy                    // popped: its fires are being committed
)

// rule is one slot of the engine's slab. Rules live by value in one slice,
// addressed by index, so a million rules are one allocation, not a million.
// It is kept small (56 bytes): the watermark slot is Unix nanoseconds, and
// the next slot lives only in the rule's heap entry.
//
// Timers are kept compact: what is the rule's own (an interval's period and
// anchor, a datetime's instant) here, and timer points to a template shared
// by every rule with the same other fields (trigger ref, kind, policies, a
// cron's expression and zone). A parsed Timer is about 200 bytes, and the
// rules of a node share a few templates; the Timer the rule was given is
// garbage once loaded. A cron timer has nothing of its own: the template is
// its timer. A timer with a time that has no exact Unix-ns form is kept as
// given.
type rule struct {
	id       int64
	timer    *Timer // the rule's timer, or its template when compact
	wm       int64  // watermark slot, Unix ns (see setWM)
	count    uint64 // watermark count
	period   int64  // compact: Interval
	at       int64  // compact: Anchor, or FireAt if atFireAt, in Unix ns; noTime for the zero time
	state    ruleState
	farWM    bool // the watermark slot has no Unix-ns form: it is in Engine.far
	removed  bool // Remove came while busy: free the slot after the commit
	changed  bool // Upsert replaced the timer while busy: reschedule after the commit
	compact  bool // timer is a template completed by period and at
	atFireAt bool
}

// noTime in rule.at stands for the zero time.
const noTime = math.MinInt64

// timerInto is the rule's timer: its own, or for a compact rule the template
// completed with its own fields in *buf.
func (r *rule) timerInto(buf *Timer) *Timer {
	if !r.compact {
		return r.timer
	}
	*buf = *r.timer
	buf.Interval = time.Duration(r.period)
	if r.at != noTime {
		if at := time.Unix(0, r.at).UTC(); r.atFireAt {
			buf.FireAt = at
		} else {
			buf.Anchor = at
		}
	}
	return buf
}

// setTimer makes t the rule's timer, compact when its own time has an exact
// Unix-ns form and a template can be shared. A borrowed t (LoadFrom) is the
// caller's to reuse: a rule kept whole gets a copy of it.
func (e *Engine) setTimer(r *rule, t *Timer, borrowed bool) {
	e.setTimerOf(r, t)
	if borrowed && r.timer == t {
		own := new(Timer)
		*own = *t
		r.timer = own
	}
}

func (e *Engine) setTimerOf(r *rule, t *Timer) {
	r.timer, r.compact, r.period, r.at, r.atFireAt = t, false, 0, noTime, false
	at, atFireAt := t.Anchor, false
	switch {
	case !t.FireAt.IsZero() && !t.Anchor.IsZero():
		return // built by hand with both: kept as given
	case !t.FireAt.IsZero():
		at, atFireAt = t.FireAt, true
	}
	if !at.IsZero() && (at.Location() != time.UTC || !at.After(minKeyTime) || at.After(maxKeyTime)) {
		return
	}
	tmpl := *t
	tmpl.Interval, tmpl.Anchor, tmpl.FireAt = 0, time.Time{}, time.Time{}
	// Rules come in runs and mixes of a few templates (a load): comparing the
	// few found last is cheaper than hashing the struct for the map.
	shared, ok := e.recentTemplate(&tmpl)
	if !ok {
		shared, ok = e.templates[tmpl]
		if !ok {
			if len(e.templates) >= maxTemplates {
				return // the rare node with this many distinct templates keeps whole timers
			}
			if e.templates == nil {
				e.templates = make(map[Timer]*Timer)
			}
			shared = new(Timer) // not &tmpl: that would allocate on every call
			*shared = tmpl
			e.templates[tmpl] = shared
		}
		e.recentTemplates[e.recentNext] = shared
		e.recentNext = (e.recentNext + 1) % len(e.recentTemplates)
	}
	e.lastTemplate = shared
	if tmpl == *t {
		r.timer = shared // nothing of its own (cron): the template is the timer
		return
	}
	r.timer, r.compact, r.period, r.atFireAt = shared, true, int64(t.Interval), atFireAt
	if !at.IsZero() {
		r.at = at.UnixNano()
	}
}

// recentTemplate is the template equal to *tmpl among the last ones found.
func (e *Engine) recentTemplate(tmpl *Timer) (*Timer, bool) {
	if p := e.lastTemplate; p != nil && *p == *tmpl {
		return p, true
	}
	for _, p := range e.recentTemplates {
		if p != nil && *p == *tmpl {
			return p, true
		}
	}
	return nil, false
}

// maxTemplates bounds Engine.templates: each distinct trigger ref, kind,
// policies (misfire_grace is free text), cron expression and zone, and
// datetime time zone (free text too) is one. Templates are kept while the
// engine lives.
const maxTemplates = 4096

// flight is a busy rule of the batch being committed.
type flight struct {
	idx int32
	p   planned
}

// Engine fires the slots of a set of rules: one goroutine (Run), a typed
// min-heap of next slots and one time.Timer set to the root. Upsert, Remove
// and Load may be called from any goroutine, before or during Run.
//
// Locking: mu guards the rules and the heap, and is held only for heap
// operations and slot arithmetic, never across Commit. While a batch is
// committed its rules are "busy" (out of the heap); an Upsert or Remove of a
// busy rule is recorded on it and applied when the commit is done.
type Engine struct {
	cfg  Config
	log  *slog.Logger
	m    *metrics
	wake chan struct{}
	ran  atomic.Bool
	// born is New's time, the origin of busySince on the monotonic clock.
	born time.Time
	// busySince is when Run began the work it is at (taking due slots, one
	// commit), as time since born plus 1; 0 while it waits, or is not running.
	busySince atomic.Int64

	mu    sync.Mutex
	ids   ruleIndex // rule id -> slab index
	rules []rule
	free  []int32 // released slab indexes
	heap  slotHeap
	far   map[int32]time.Time // watermark slots outside Unix-ns range (the zero time aside), by slab index
	// templates are the shared parts of compact rules' timers (rule.setTimer).
	templates map[Timer]*Timer
	// lastTemplate is the one setTimer found last, recentTemplates the last
	// ones it looked up in the map, replaced in turn from recentNext.
	lastTemplate    *Timer
	recentTemplates [8]*Timer
	recentNext      int
	calls           uint64 // Next and Last calls made by the engine; tests check catch-up stays cheap
	lastPop         int64  // Unix ns of the last wake that fired, for Coalesce

	// reported are the host's misses (ReportMissed) not yet in a batch. Its
	// own lock, taken after mu where both are: a host may report while the
	// engine calls it under mu (LoadFrom's callback).
	reportMu sync.Mutex
	reported []Miss

	// Owned by the Run goroutine (and written under mu while planning).
	fires   []Fire
	missed  []Miss // the batch's misses: plan's and those reported
	flights []flight
	ring    []time.Time // catch-up scratch, MaxCatchUp long
	// timers hold the whole timers of the batch's compact rules, which its
	// fires point to: chunks that never move, reused batch after batch.
	timers    [][]Timer
	timersLen int
}

// New returns an engine; call Run to start firing.
func New(cfg Config) (*Engine, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	e := &Engine{
		cfg:     cfg,
		log:     cfg.Logger,
		wake:    make(chan struct{}, 1),
		lastPop: math.MinInt64,
		born:    time.Now(),
	}
	m, err := newMetrics(cfg.Registerer, func() float64 { return float64(e.Len()) })
	if err != nil {
		return nil, err
	}
	e.m = m
	return e, nil
}

// Upsert adds a rule or changes its timer. An Upsert whose timer Equals the
// current one changes nothing: the in-memory watermark and count are kept
// (repeated "enable" messages are normal). A different timer replaces the
// schedule, continuing after the later of wm and the current watermark, with
// the higher count. For a new rule, wm.Slot is its creation time: the first
// slot fired is the first one after it.
func (e *Engine) Upsert(id int64, t *Timer, wm Watermark) {
	if t == nil {
		e.log.Error("upsert of a rule without a timer; ignored", "rule_id", id)
		return
	}
	e.mu.Lock()
	before := e.rootLocked()
	e.upsertLocked(id, t, wm, true, false)
	changed := e.rootLocked() != before
	e.mu.Unlock()
	if changed {
		e.signal()
	}
}

// Advance moves a rule's watermark on to wm when wm is later (a peer fired the rule, or
// a verdict recorded a slot as fired): its next slot is then the first after wm. An
// unknown rule, or an earlier wm, changes nothing.
func (e *Engine) Advance(id int64, wm Watermark) {
	e.mu.Lock()
	_, idx, ok := e.ids.find(e.rules, id)
	if !ok || !wm.Slot.After(e.wmSlot(idx)) {
		e.mu.Unlock()
		return
	}
	before := e.rootLocked()
	r := &e.rules[idx]
	e.setWM(idx, wm.Slot)
	r.count = max(r.count, wm.Count)
	if r.state == busy {
		r.changed = true // rescheduled from the new watermark after the commit
	} else {
		e.schedule(idx, true)
	}
	changed := e.rootLocked() != before
	e.mu.Unlock()
	if changed {
		e.signal()
	}
}

// Remove forgets a rule. A fire of it already being committed completes; no
// later slot fires.
func (e *Engine) Remove(id int64) {
	e.mu.Lock()
	pos, idx, ok := e.ids.find(e.rules, id)
	if !ok {
		e.mu.Unlock()
		return
	}
	before := e.rootLocked()
	e.ids.deleteAt(e.rules, pos)
	r := &e.rules[idx]
	if r.state == busy {
		r.removed = true
	} else {
		e.heap.remove(idx)
		e.release(idx)
	}
	changed := e.rootLocked() != before
	e.mu.Unlock()
	if changed {
		e.signal()
	}
}

// Load adds or changes many rules at once, as Upsert does for each. A large
// load is appended and heapified in O(n) rather than pushed one by one.
func (e *Engine) Load(items []Item) {
	if len(items) == 0 {
		return
	}
	_ = e.load(len(items), false, func(add func(Item)) error {
		for _, it := range items {
			add(it)
		}
		return nil
	})
}

// LoadFrom is Load of rules read one at a time, such as a store's scan: each
// calls add once per rule; n is how many it expects (a size hint). add keeps
// nothing of the Timer it is given, so that each may reuse one Timer for every
// rule (a million rules loaded without a million allocations). The engine is
// locked while each runs; its error is LoadFrom's, the rules added before it
// are kept.
func (e *Engine) LoadFrom(n int, each func(add func(Item)) error) error {
	return e.load(n, true, each)
}

func (e *Engine) load(n int, borrowed bool, each func(add func(Item)) error) error {
	e.mu.Lock()
	before := e.rootLocked()
	// Heapify costs O(heap); pushing costs O(items·log heap).
	bulk := n*bits.Len(uint(e.heap.len()+n)) >= e.heap.len()
	e.ids.reserve(e.rules, e.ids.n+n)
	e.rules = slices.Grow(e.rules, n)
	e.heap.pos = slices.Grow(e.heap.pos, n)
	if bulk {
		e.heap.reserve(n)
	}
	// Into an empty engine, items in increasing id order (a store's) cannot be
	// known yet: they are added without a lookup, which costs a cache miss in
	// the slab per probe at a million rules. The first id out of order ends it.
	// Those are indexed at the end of the run, in table order (indexAll).
	fresh, prev := e.ids.n == 0, int64(math.MinInt64)
	var unindexed []int32
	if fresh {
		unindexed = make([]int32, 0, n)
	}
	err := each(func(it Item) {
		if it.Timer == nil {
			e.log.Error("load of a rule without a timer; ignored", "rule_id", it.ID)
			return
		}
		if fresh = fresh && it.ID > prev; fresh {
			prev = it.ID
			unindexed = append(unindexed, e.addRule(it.ID, it.Timer, it.Watermark, !bulk, borrowed))
			return
		}
		if unindexed != nil {
			e.indexAll(unindexed)
			unindexed = nil
		}
		e.upsertLocked(it.ID, it.Timer, it.Watermark, !bulk, borrowed)
	})
	e.indexAll(unindexed)
	if bulk {
		e.heap.heapify()
	}
	changed := e.rootLocked() != before
	e.mu.Unlock()
	if changed {
		e.signal()
	}
	return err
}

// Len is the number of rules the engine knows, including one-shot timers
// that have fired and have no next slot (they stay known so that a repeated
// Upsert of the same timer does not fire them again).
func (e *Engine) Len() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.ids.n
}

// NextFire is the earliest pending slot, if any.
func (e *Engine) NextFire() (time.Time, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	root, ok := e.heap.peek()
	if !ok {
		return time.Time{}, false
	}
	return e.nextOf(root), true
}

// Watermark is the rule's last committed slot and fire count as the engine
// holds them (it includes slots skipped by the misfire policy). The slot is
// in UTC.
func (e *Engine) Watermark(id int64) (Watermark, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	_, idx, ok := e.ids.find(e.rules, id)
	if !ok {
		return Watermark{}, false
	}
	return e.watermark(idx), true
}

// Run fires due slots until ctx is done, then returns nil. A commit in
// progress is waited for; a batch still failing is abandoned uncommitted (its
// slots fire again on the next start). Run may be called once.
func (e *Engine) Run(ctx context.Context) error {
	if !e.ran.CompareAndSwap(false, true) {
		return errors.New("scheduler: Run called more than once")
	}
	tm := time.NewTimer(time.Hour)
	tm.Stop()
	defer tm.Stop()
	defer e.waiting()
	for ctx.Err() == nil {
		e.working()
		taken := time.Now() // monotonic, whatever Config.Now says
		wait, armed := e.prepare()
		if len(e.flights) > 0 || len(e.missed) > 0 {
			full := len(e.fires) >= e.cfg.MaxBatch
			if !e.commit(ctx, tm) {
				return nil
			}
			if !full && !e.space(ctx, tm, taken) {
				return nil
			}
			continue // more may have come due during the commit: group them
		}
		if armed {
			tm.Reset(wait)
		} else {
			tm.Stop()
		}
		e.waiting()
		select {
		case <-ctx.Done():
		case <-tm.C:
		case <-e.wake:
		}
	}
	return nil
}

// Heartbeat is when Run's loop was last seen alive: now while it waits (for
// the next slot, a wake, a commit's retry, all waits it comes back from), and
// before Run starts or after it returns; else when it began the piece of work
// it is at (taking the due slots, one attempt to commit them). Work takes
// milliseconds, a second on a slow disk; a heartbeat further behind than that
// is a Commit or a lock that does not return: the engine is stuck. A failing
// commit is not: the loop waits between attempts.
func (e *Engine) Heartbeat() time.Time {
	since := e.busySince.Load()
	if since == 0 {
		return time.Now()
	}
	return e.born.Add(time.Duration(since - 1))
}

// working notes that Run starts a piece of work now; waiting that it waits.
func (e *Engine) working() { e.busySince.Store(int64(time.Since(e.born)) + 1) }
func (e *Engine) waiting() { e.busySince.Store(0) }

// space waits until Coalesce after taken, when the last batch was taken, so
// that batches start at least Coalesce apart: slots that came due during a
// commit are taken with those that come due in the rest of the window, rather
// than commits running back to back with a few fires each (each costs about
// the same whatever its size). It is not called after a batch cut by
// MaxBatch: the rest of a catch-up follows at once. The wait is on the
// monotonic clock, so a frozen or stepped Config.Now costs at most Coalesce.
// It returns false if ctx ended first.
func (e *Engine) space(ctx context.Context, tm *time.Timer, taken time.Time) bool {
	if e.cfg.Coalesce <= 0 {
		return true
	}
	hold := e.cfg.Coalesce - time.Since(taken)
	if hold <= 0 {
		return true
	}
	tm.Reset(hold)
	e.waiting()
	defer e.working()
	select {
	case <-ctx.Done():
		tm.Stop()
		return false
	case <-tm.C:
		return true
	}
}

// signal wakes Run to look at a new heap root; it never blocks.
func (e *Engine) signal() {
	select {
	case e.wake <- struct{}{}:
	default:
	}
}

// rootLocked identifies the heap root, to tell whether a change moved it.
func (e *Engine) rootLocked() entry {
	if root, ok := e.heap.peek(); ok {
		return root
	}
	return entry{at: math.MaxInt64, idx: -1}
}

// upsertLocked is Upsert without the lock and the wake-up; sift false leaves
// the heap for a heapify (bulk load); borrowed keeps a copy of *t, not t.
func (e *Engine) upsertLocked(id int64, t *Timer, wm Watermark, sift, borrowed bool) {
	_, idx, ok := e.ids.find(e.rules, id)
	if !ok {
		e.addLocked(id, t, wm, sift, borrowed)
		return
	}
	r := &e.rules[idx]
	var buf Timer
	if cur := r.timerInto(&buf); cur == t || cur.Equal(t) {
		return
	}
	e.setTimer(r, t, borrowed)
	if wm.Slot.After(e.wmSlot(idx)) {
		e.setWM(idx, wm.Slot)
	}
	r.count = max(r.count, wm.Count)
	if r.state == busy {
		r.changed = true
		return
	}
	e.schedule(idx, sift)
}

// addLocked adds rule id, which the engine does not know.
func (e *Engine) addLocked(id int64, t *Timer, wm Watermark, sift, borrowed bool) {
	e.ids.insert(e.rules, e.addRule(id, t, wm, sift, borrowed))
}

// addRule is addLocked without the index entry, which the caller owes: it
// returns the rule's slab index.
func (e *Engine) addRule(id int64, t *Timer, wm Watermark, sift, borrowed bool) int32 {
	idx := e.alloc()
	e.rules[idx] = rule{id: id, count: wm.Count}
	e.setTimer(&e.rules[idx], t, borrowed)
	e.setWM(idx, wm.Slot)
	e.schedule(idx, sift)
	return idx
}

// indexAll adds the slab indexes idxs, whose rule ids are new and distinct, to
// the id index in the order of their table positions (a counting sort on the
// top bits): the writes sweep the table once, where in load order each would
// land at random, a cache miss at a million rules.
func (e *Engine) indexAll(idxs []int32) {
	x := &e.ids
	x.reserve(e.rules, x.n+len(idxs))
	if len(idxs) < 1<<12 {
		for _, idx := range idxs {
			x.put(e.rules[idx].id, idx)
		}
		x.n += len(idxs)
		return
	}
	const bucketBits = 10
	mask := len(x.slots) - 1
	shift := bits.Len(uint(mask)) - bucketBits // the table has at least 4/3·4096 slots
	bucket := func(idx int32) int { return int(slotHash(e.rules[idx].id)) & mask >> shift }
	var starts [1<<bucketBits + 1]int
	for _, idx := range idxs {
		starts[bucket(idx)+1]++
	}
	for b := 1; b < len(starts); b++ {
		starts[b] += starts[b-1]
	}
	sorted := make([]int32, len(idxs))
	for _, idx := range idxs {
		b := bucket(idx)
		sorted[starts[b]] = idx
		starts[b]++
	}
	for _, idx := range sorted {
		x.put(e.rules[idx].id, idx)
	}
	x.n += len(idxs)
}

// schedule computes the next slot of an idle or queued rule from its
// watermark and places it in the heap (or out of it when there is none).
func (e *Engine) schedule(idx int32, sift bool) {
	r := &e.rules[idx]
	var buf Timer
	t := r.timerInto(&buf)
	next, ok := e.nextSlot(t, e.wmSlot(idx))
	if !ok {
		e.heap.remove(idx)
		r.state = idle
		return
	}
	at := key(t.FireTime(r.id, next))
	switch {
	case r.state == queued && sift:
		e.heap.update(idx, at)
	case r.state == queued:
		e.heap.setAt(idx, at)
	case sift:
		e.heap.push(idx, at)
	default:
		e.heap.appendUnordered(idx, at)
	}
	r.state = queued
}

// place puts a rule whose next slot is known back in the heap.
func (e *Engine) place(idx int32, next time.Time, ok bool) {
	r := &e.rules[idx]
	if !ok {
		r.state = idle
		return
	}
	r.state = queued
	at := next
	if r.timer.Jitter > 0 { // a compact rule's template holds it too
		var buf Timer
		at = r.timerInto(&buf).FireTime(r.id, next)
	}
	e.heap.push(idx, key(at))
}

// nextOf is a queued rule's next slot. The heap key is the slot's fire time in
// Unix ns: the slot itself unless the timer has a jitter, or the key saturated
// (before 1678 or after 2262); then the slot is computed again from the
// watermark, which gives the same slot (a queued rule's key is always that of
// the first slot after its watermark).
func (e *Engine) nextOf(en entry) time.Time {
	if en.at != math.MinInt64 && en.at != math.MaxInt64 && e.rules[en.idx].timer.Jitter <= 0 {
		return time.Unix(0, en.at).UTC()
	}
	var buf Timer
	next, _ := e.nextSlot(e.rules[en.idx].timerInto(&buf), e.wmSlot(en.idx))
	return next
}

// wmZero stands for the zero time ("never fired") in rule.wm.
const wmZero = math.MinInt64

// setWM sets a rule's watermark slot. A slot that has no Unix-ns form
// other than wmZero (before 1678 or after 2262) is kept exactly in e.far.
func (e *Engine) setWM(idx int32, slot time.Time) {
	r := &e.rules[idx]
	if r.farWM {
		delete(e.far, idx)
		r.farWM = false
	}
	switch {
	case slot.IsZero():
		r.wm = wmZero
	case slot.After(minKeyTime) && !slot.After(maxKeyTime):
		r.wm = slot.UnixNano()
	default:
		if e.far == nil {
			e.far = make(map[int32]time.Time)
		}
		e.far[idx] = slot
		r.farWM = true
	}
}

// wmSlot is a rule's watermark slot.
func (e *Engine) wmSlot(idx int32) time.Time {
	r := &e.rules[idx]
	switch {
	case r.farWM:
		return e.far[idx]
	case r.wm == wmZero:
		return time.Time{}
	}
	return time.Unix(0, r.wm).UTC()
}

func (e *Engine) watermark(idx int32) Watermark {
	return Watermark{Slot: e.wmSlot(idx), Count: e.rules[idx].count}
}

func (e *Engine) alloc() int32 {
	if n := len(e.free); n > 0 {
		idx := e.free[n-1]
		e.free = e.free[:n-1]
		return idx
	}
	e.rules = append(e.rules, rule{})
	e.heap.grow(len(e.rules))
	return int32(len(e.rules) - 1)
}

func (e *Engine) release(idx int32) {
	if e.rules[idx].farWM {
		delete(e.far, idx)
	}
	e.rules[idx] = rule{} // drop the *Timer
	e.free = append(e.free, idx)
}

// prepare pops every due rule (up to MaxBatch fires) and plans its fires into
// e.fires, marking the rules busy. With nothing due it returns how long to
// wait for the root (at most maxSleep), or armed false when the heap is empty.
func (e *Engine) prepare() (wait time.Duration, armed bool) {
	e.fires, e.flights = e.fires[:0], e.flights[:0]
	e.mu.Lock()
	defer e.mu.Unlock()
	e.reportMu.Lock()
	if len(e.reported) > 0 {
		e.missed = append(e.missed, e.reported...)
		clear(e.reported)
		e.reported = e.reported[:0]
	}
	e.reportMu.Unlock()
	now := e.cfg.Now().Round(0) // FiredAt is a wall-clock time
	nowKey := key(now)
	for popped := 1; ; popped++ {
		room := e.cfg.MaxBatch - len(e.fires)
		root, ok := e.heap.peek()
		if room <= 0 || !ok {
			return 0, false
		}
		if root.at > nowKey {
			if len(e.flights) > 0 || len(e.missed) > 0 {
				return 0, false
			}
			return e.waitFor(root.at, nowKey), true
		}
		e.heap.pop()
		e.lastPop = nowKey
		r := &e.rules[root.idx]
		t := r.timer
		if r.compact {
			t = r.timerInto(e.batchTimer())
		}
		p := e.plan(r.id, t, e.watermark(root.idx), e.nextOf(root), now, room)
		if p.n == 0 && r.compact {
			e.timersLen-- // no fire points to it
		}
		if p.n == 0 {
			// Everything due was skipped by the misfire policy: decided
			// here, in memory; nothing to commit.
			e.setWM(root.idx, p.last)
			e.place(root.idx, p.next, p.hasNext)
			continue
		}
		r.state = busy
		e.flights = append(e.flights, flight{idx: root.idx, p: p})
		if popped%256 == 0 {
			// Let Upsert and Remove in during a large batch.
			e.mu.Unlock()
			e.mu.Lock()
		}
	}
}

// batchTimer is room for one whole timer the batch's fires may point to,
// valid until the batch is applied.
func (e *Engine) batchTimer() *Timer {
	const chunk = 64
	c, i := e.timersLen/chunk, e.timersLen%chunk
	if c == len(e.timers) {
		e.timers = append(e.timers, make([]Timer, chunk))
	}
	e.timersLen++
	return &e.timers[c][i]
}

// waitFor is how long to sleep from now for a root due at at, at most
// maxSleep. A root due within Coalesce of the last wake that fired waits
// until Coalesce after that wake, so that a dense run of slots is taken in
// groups rather than with a timer, a futex and a commit each; never earlier
// than at. A last wake later than now means the wall clock went back: it is
// not waited for (that could hold the root back by as much as the step).
func (e *Engine) waitFor(at, now int64) time.Duration {
	if c := int64(e.cfg.Coalesce); c > 0 && e.lastPop <= now && e.lastPop <= math.MaxInt64-c && at < e.lastPop+c {
		at = e.lastPop + c
	}
	if now < 0 && at > math.MaxInt64+now {
		return maxSleep
	}
	return min(time.Duration(at-now), maxSleep)
}

func bySlot(a, b Fire) int { return a.Slot.Compare(b.Slot) }

// commit hands the batch to Commit until it succeeds, backing off from
// RetryMin to RetryMax between attempts, then advances the watermarks. It
// returns false if ctx ended first (the batch is then left uncommitted).
func (e *Engine) commit(ctx context.Context, tm *time.Timer) bool {
	// A catch-up run of one rule can precede an earlier slot of another.
	if !slices.IsSortedFunc(e.fires, bySlot) {
		slices.SortStableFunc(e.fires, bySlot)
	}
	delay := e.cfg.RetryMin
	for len(e.fires) > 0 || len(e.missed) > 0 {
		start := time.Now()
		err := e.cfg.Commit(e.fires, e.missed)
		e.working() // a commit that returned, failed or not, is progress
		e.m.commit.Observe(time.Since(start).Seconds())
		if err == nil {
			e.observe()
			break
		}
		e.m.commitErrors.Inc()
		e.log.Warn("commit of fires failed; retrying", "fires", len(e.fires), "missed", len(e.missed), "retry_in", delay, "err", err)
		tm.Reset(delay)
		e.waiting()
		select {
		case <-ctx.Done():
			tm.Stop()
			return false
		case <-tm.C:
		}
		e.working()
		// No jitter: the commit goes to this node's own store, with no
		// shared server whose load to spread (TestCommitErrorRetried pins it).
		delay = min(2*delay, e.cfg.RetryMax)
		e.refresh()
	}
	e.apply()
	return true
}

// refresh readies a failed batch for another attempt: fires of rules removed
// meanwhile are dropped (their new owner fires them), FiredAt is now.
func (e *Engine) refresh() {
	e.mu.Lock()
	defer e.mu.Unlock()
	var gone map[int64]bool
	for _, fl := range e.flights {
		if r := &e.rules[fl.idx]; r.removed {
			if gone == nil {
				gone = make(map[int64]bool)
			}
			gone[r.id] = true
		}
	}
	if gone != nil {
		e.fires = slices.DeleteFunc(e.fires, func(f Fire) bool { return gone[f.RuleID] })
		e.missed = slices.DeleteFunc(e.missed, func(m Miss) bool { return gone[m.RuleID] })
	}
	now := e.cfg.Now().Round(0)
	for i := range e.fires {
		e.fires[i].FiredAt = now
	}
}

// apply advances the watermarks of a committed batch and puts its rules back
// in the heap.
func (e *Engine) apply() {
	e.mu.Lock()
	for _, fl := range e.flights {
		r := &e.rules[fl.idx]
		if r.removed {
			e.release(fl.idx)
			continue
		}
		if fl.p.last.After(e.wmSlot(fl.idx)) {
			e.setWM(fl.idx, fl.p.last)
		}
		r.count = max(r.count, fl.p.count)
		r.state = idle
		if r.changed {
			r.changed = false
			e.schedule(fl.idx, true)
		} else {
			e.place(fl.idx, fl.p.next, fl.p.hasNext)
		}
	}
	e.mu.Unlock()
	if len(e.missed) > 0 {
		clear(e.missed) // drop their Detail strings
		e.missed = e.missed[:0]
	}
	if c := cap(e.fires); c > minScratch && len(e.fires) < c/8 {
		// A batch far smaller than the scratch (which grew for a catch-up
		// at start, say): let the scratch go rather than keep its peak.
		e.fires, e.flights, e.timers, e.timersLen = nil, nil, nil, 0
		return
	}
	clear(e.fires) // drop *Timer references
	e.fires, e.flights = e.fires[:0], e.flights[:0]
	for _, c := range e.timers[:min(len(e.timers), (e.timersLen+63)/64)] {
		clear(c) // drop their *Location and *cronSchedule references
	}
	e.timersLen = 0
}

// minScratch is the batch scratch (in fires) kept whatever the batch sizes.
const minScratch = 256

// observe records the metrics of a committed batch.
func (e *Engine) observe() {
	if len(e.fires) == 0 {
		return // a batch of misses only
	}
	var byKind [len(kinds)]int // counted here, added once per batch
	for i := range e.fires {
		f := &e.fires[i]
		if k := kindIndex(f.Timer.Kind); k >= 0 {
			byKind[k]++
		} else {
			e.m.fires.WithLabelValues(string(f.Timer.Kind)).Inc()
		}
		e.m.lateness.Observe(f.FiredAt.Sub(f.Timer.FireTime(f.RuleID, f.Slot)).Seconds())
		if f.CatchUp {
			e.m.misfire(policyOf(f.Timer), "fired").Inc()
		}
	}
	for k, n := range byKind {
		if n > 0 {
			e.m.firesByKind[k].Add(float64(n))
		}
	}
	e.m.batch.Observe(float64(len(e.fires)))
}
