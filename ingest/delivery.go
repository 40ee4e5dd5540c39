package ingest

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/timerd/timerd/ingest/backoff"
	"github.com/timerd/timerd/store"
)

// TokenSource hands out the bearer token for the events API.
type TokenSource interface {
	// Token returns the current token ("" for none).
	Token() string
	// Invalidate reports that the API answered 401 to token: refresh it.
	// Delivery calls it once per token.
	Invalidate(token string)
}

// DeliveryConfig configures a Delivery. Zero durations and counts take the
// defaults named on each field.
type DeliveryConfig struct {
	Store  *store.Store // required
	APIURL string       // required, http(s)://host[:port][/prefix]
	Tokens TokenSource  // optional; nil: no Authorization header
	// Budget is the cluster's delivery budget: the most event POSTs in flight
	// to the events API from all the nodes that share it together. A node's
	// ceiling is Budget divided by the live members (Members), at least 1;
	// below it the POSTs in flight adapt to the backlog and to the receiver's
	// latency (see limiter). Default 512.
	Budget int
	// Members, if set, returns the cluster's live members, this node
	// included; it is read about once a PollInterval and must be cheap.
	// nil, or an answer below 1: the node is alone and has the whole Budget.
	Members func() int
	// Workers, if set, also caps this node's POSTs in flight, whatever its
	// share of Budget (TIMERD_WORKERS, deprecated). 0: no cap of its own.
	Workers int
	// CatchUpAfter: an event whose slot is older than this when it becomes
	// ready to post is catch-up (an outage's backlog), and so is one whose
	// slot was due before NewDelivery (missed while the node was down): it is
	// posted only with the slots the on-time events leave, less a reserve
	// kept for them, and paced (CatchUpShare, CatchUpRate). Default 30s.
	CatchUpAfter time.Duration
	// CatchUpRate paces catch-up: the most catch-up events per second from
	// the whole cluster, divided among the live members (Members) as Budget
	// is. 0 (the default): auto, each node at the rate it posted on-time
	// events over the last minute, at least MinAutoCatchUpRate.
	// NoCatchUpRate: no rate, catch-up is bounded by CatchUpShare alone.
	CatchUpRate float64
	// CatchUpShare is the fraction of the node's POSTs in flight (its
	// adaptive limit, itself at most its ceiling) that catch-up may take, in
	// (0, 1]; at least one POST. Default 0.5: half stays free for on-time
	// events whatever the backlog.
	CatchUpShare float64
	Timeout      time.Duration // per request, default 10s
	// StopGrace is how long POSTs in flight get to be answered when delivery
	// stops (Run's ctx ends, a Flush runs out of time) before their
	// connections are closed: an answer cut off leaves the event to be posted
	// again (at the next start, or by the member it is handed to), a
	// duplicate if the receiver had stored it. No new POST starts meanwhile.
	// Default 2s; at most Timeout.
	StopGrace    time.Duration
	BackoffMin   time.Duration // first retry delay, default 200ms
	BackoffMax   time.Duration // cap of the retry delay and of Retry-After, default 30s
	PollInterval time.Duration // re-scan of the outbox without Notify, default 1s
	// RejectRetryWindow is how long a 403 or 404 is retried (with the backoff
	// above), counted from the event's first such answer, before the event is
	// a dead letter: an ingress answers 404 for seconds during a rollout.
	// Default 10m.
	RejectRetryWindow time.Duration
	// BreakerThreshold is the number of consecutive dead letters of one rule
	// that pause the rule's delivery (its breaker opens): its events stay in
	// the outbox and one of them is probed with backoff from ProbeMin to
	// ProbeMax; one success closes the breaker. Defaults 5, 10s and 5m.
	BreakerThreshold int
	ProbeMin         time.Duration
	ProbeMax         time.Duration
	// AckFailed, if set, is told of every ack commit that failed (the node's
	// readiness follows its store's commits). It must not block.
	AckFailed  func(error)
	Logger     *slog.Logger          // nil: discard
	Registerer prometheus.Registerer // nil: metrics are not registered; see NewDelivery
}

// Defaults of DeliveryConfig.
const (
	DefaultDeliveryBudget   = 512
	DefaultCatchUpAfter     = 30 * time.Second
	DefaultCatchUpShare     = 0.5
	DefaultDeliveryTimeout  = 10 * time.Second
	DefaultStopGrace        = 2 * time.Second
	DefaultBackoffMin       = 200 * time.Millisecond
	DefaultBackoffMax       = 30 * time.Second
	DefaultOutboxPoll       = time.Second
	DefaultRejectWindow     = 10 * time.Minute
	DefaultBreakerThreshold = 5
	DefaultProbeMin         = 10 * time.Second
	DefaultProbeMax         = 5 * time.Minute
)

const (
	maxDeliveryBudget  = 65536
	maxDeliveryWorkers = 4096
	// catchUpReserve: 1/catchUpReserve of the limit is kept for on-time
	// events; catch-up never takes it.
	catchUpReserve     = 8
	deliveryPage       = 256      // outbox entries read per store transaction
	reasonExcerpt      = 200      // bytes of a response body kept in a dead letter's reason
	maxDrainedResponse = 64 << 10 // response bytes read to keep the connection alive
	flushWaitPoll      = 20 * time.Millisecond
	eventsPath         = "api/v1/events"
	redactedToken      = "[redacted]"
	codeError          = "error"
)

// ErrDeliveryConfig is wrapped by every DeliveryConfig.Validate error.
var ErrDeliveryConfig = errors.New("invalid delivery config")

// Validate reports the first bad field; zero values stand for the defaults.
func (c DeliveryConfig) Validate() error {
	bad := func(field, format string, args ...any) error {
		return fmt.Errorf("%w: %s: %s", ErrDeliveryConfig, field, fmt.Sprintf(format, args...))
	}
	if c.Store == nil {
		return bad("Store", "required")
	}
	if _, err := eventsURL(c.APIURL); err != nil {
		return bad("APIURL", "%v", err)
	}
	switch {
	case c.Workers < 0 || c.Workers > maxDeliveryWorkers:
		return bad("Workers", "%d not in [1, %d]", c.Workers, maxDeliveryWorkers)
	case c.Budget < 0 || c.Budget > maxDeliveryBudget:
		return bad("Budget", "%d not in [1, %d]", c.Budget, maxDeliveryBudget)
	case c.CatchUpAfter < 0:
		return bad("CatchUpAfter", "negative %v", c.CatchUpAfter)
	case !(c.CatchUpRate >= 0 || c.CatchUpRate == NoCatchUpRate) || math.IsInf(c.CatchUpRate, 1): // NaN fails both
		return bad("CatchUpRate", "%v is not a finite rate ≥ 0 (events/s; 0: auto) or NoCatchUpRate", c.CatchUpRate)
	case !(c.CatchUpShare >= 0 && c.CatchUpShare <= 1):
		return bad("CatchUpShare", "%v not in (0, 1]", c.CatchUpShare)
	case c.Timeout < 0:
		return bad("Timeout", "negative %v", c.Timeout)
	case c.StopGrace < 0:
		return bad("StopGrace", "negative %v", c.StopGrace)
	case c.BackoffMin < 0:
		return bad("BackoffMin", "negative %v", c.BackoffMin)
	case c.BackoffMax < 0:
		return bad("BackoffMax", "negative %v", c.BackoffMax)
	case c.PollInterval < 0:
		return bad("PollInterval", "negative %v", c.PollInterval)
	case c.RejectRetryWindow < 0:
		return bad("RejectRetryWindow", "negative %v", c.RejectRetryWindow)
	case c.BreakerThreshold < 0:
		return bad("BreakerThreshold", "negative %d", c.BreakerThreshold)
	case c.ProbeMin < 0:
		return bad("ProbeMin", "negative %v", c.ProbeMin)
	case c.ProbeMax < 0:
		return bad("ProbeMax", "negative %v", c.ProbeMax)
	}
	d := c.withDefaults()
	if d.BackoffMax < d.BackoffMin {
		return bad("BackoffMax", "%v is below BackoffMin %v", d.BackoffMax, d.BackoffMin)
	}
	if d.ProbeMax < d.ProbeMin {
		return bad("ProbeMax", "%v is below ProbeMin %v", d.ProbeMax, d.ProbeMin)
	}
	return nil
}

func (c DeliveryConfig) withDefaults() DeliveryConfig {
	if c.Budget == 0 {
		c.Budget = DefaultDeliveryBudget
	}
	if c.CatchUpAfter == 0 {
		c.CatchUpAfter = DefaultCatchUpAfter
	}
	if c.CatchUpShare == 0 {
		c.CatchUpShare = DefaultCatchUpShare
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultDeliveryTimeout
	}
	if c.StopGrace == 0 {
		c.StopGrace = DefaultStopGrace
	}
	c.StopGrace = min(c.StopGrace, c.Timeout)
	if c.BackoffMin == 0 {
		c.BackoffMin = DefaultBackoffMin
	}
	if c.BackoffMax == 0 {
		c.BackoffMax = max(DefaultBackoffMax, c.BackoffMin)
	}
	if c.PollInterval == 0 {
		c.PollInterval = DefaultOutboxPoll
	}
	if c.RejectRetryWindow == 0 {
		c.RejectRetryWindow = DefaultRejectWindow
	}
	if c.BreakerThreshold == 0 {
		c.BreakerThreshold = DefaultBreakerThreshold
	}
	if c.ProbeMin == 0 {
		c.ProbeMin = DefaultProbeMin
	}
	if c.ProbeMax == 0 {
		c.ProbeMax = max(DefaultProbeMax, c.ProbeMin)
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// eventsURL checks the API base URL and appends the events path.
func eventsURL(base string) (string, error) {
	if base == "" {
		return "", errors.New("required")
	}
	u, err := url.Parse(base)
	if err != nil {
		return "", fmt.Errorf("parse %q: %w", base, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return "", fmt.Errorf("%q: scheme must be http or https", u.Redacted())
	}
	if u.Host == "" {
		return "", fmt.Errorf("%q: no host", u.Redacted())
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return "", fmt.Errorf("%q: a query or fragment is not allowed", u.Redacted())
	}
	return u.JoinPath(eventsPath).String(), nil
}

// Delivery posts the store's outbox to POST {APIURL}/api/v1/events.
//
// Classes of answer:
//   - 2xx: delivered; the entry is deleted (acks are batched).
//   - 401: the token is invalidated (once per token) and the entry retried,
//     at once if the token changed, else with backoff; never a dead letter.
//   - 408, 409 (a request with the same Idempotency-Key still in progress),
//     425, 429, 5xx, 1xx, 3xx (never followed: logged once per Location),
//     network errors and timeouts:
//     retried with capped exponential backoff and jitter, honouring
//     Retry-After on 429 and 503.
//   - 403 and 404: retried with backoff for RejectRetryWindow from the
//     entry's first such answer (an ingress in a rollout), then permanent.
//   - any other 4xx (400, 410, 422, …): permanent; the entry becomes a
//     dead letter whose reason is the status and a short excerpt of the body.
//
// A rule whose events become BreakerThreshold dead letters in a row is
// paused (see breaker): its events stay in the outbox, one is probed with
// backoff, and the first success resumes the rule.
//
// At most a window of outbox entries is held in memory; an entry that keeps
// failing holds one slot of it and never blocks the others.
type Delivery struct {
	cfg      DeliveryConfig
	endpoint string
	// started is when the Delivery was made, about when the node started:
	// slots due before it were missed while the node was down, catch-up
	// however recent.
	started time.Time
	// poster keeps a connection alive for every POST that may be in flight,
	// so that every one reuses a connection (net/http's default of 2 idle
	// connections cost 40 % of throughput); closed when an engine stops.
	poster  *poster
	log     *slog.Logger
	metrics *deliveryMetrics
	window  int
	// lim is the adaptive concurrency; it outlives an engine, so that a Flush
	// after Run starts from what Run learnt. Touched only by the engine that
	// holds d.engine.
	lim *limiter
	// pace paces catch-up (CatchUpShare, CatchUpRate); like lim it outlives
	// an engine and is touched only by the engine that holds d.engine.
	pace *pacer
	// bearer is the Authorization value of the last token, kept per Delivery
	// (a process may run several, with their own tokens).
	bearer bearerCache

	notify chan struct{}
	engine chan struct{} // a one-slot semaphore: one engine (Run or Flush) at a time

	tokMu       sync.Mutex
	invalidated [4]string // the last tokens passed to Invalidate, newest first

	redirMu   sync.Mutex
	redirects map[string]bool // the redirects logged (at most maxRedirectsLogged)

	// ack deletes delivered entries from the outbox (Store.AckOutbox; a test
	// swaps it to make the commit fail).
	ack func(seqs ...uint64) error
	// unacked holds the entries answered 2xx whose ack could not be committed
	// yet (a full disk): they are never posted again, only acked again, also by
	// the next Run or Flush. Touched only by the engine that holds d.engine.
	unacked map[uint64]struct{}
	// breakers holds the rules with dead letters since their last delivery,
	// and the paused ones. Touched only by the engine that holds d.engine.
	breakers map[int64]*breaker
}

// maxRedirectsLogged bounds the distinct redirects logged at warn level.
const maxRedirectsLogged = 16

// noteRedirect logs a redirect the first time it is seen: an ingress that redirects
// every POST (http to https) would otherwise log one line per event.
func (d *Delivery) noteRedirect(note string) {
	d.redirMu.Lock()
	defer d.redirMu.Unlock()
	if d.redirects[note] || len(d.redirects) >= maxRedirectsLogged {
		return
	}
	if d.redirects == nil {
		d.redirects = map[string]bool{}
	}
	d.redirects[note] = true
	d.log.Warn("the events API redirected a POST; redirects are never followed, the event is retried: fix ATTUNE_API_URL",
		"endpoint", RedactURL(d.endpoint), "answer", note)
}

// maxInFlight is the most POSTs that may ever be in flight: the whole budget
// (a node alone), or Workers when that is lower.
func (c DeliveryConfig) maxInFlight() int {
	if c.Workers > 0 {
		return min(c.Budget, c.Workers)
	}
	return c.Budget
}

// members is the cluster's live members now, this node included: at least 1.
func (c DeliveryConfig) members() int {
	if c.Members == nil {
		return 1
	}
	return max(1, c.Members())
}

// ceiling is this node's share of the budget now: Budget over the live
// members, at least 1, and at most Workers when set.
func (c DeliveryConfig) ceiling() int {
	return c.ceilingOf(c.members())
}

// ceilingOf is ceiling with members live members.
func (c DeliveryConfig) ceilingOf(members int) int {
	share := max(1, c.Budget/members)
	if c.Workers > 0 {
		share = min(share, c.Workers)
	}
	return share
}

// NewDelivery checks cfg and returns a stopped Delivery. Its metrics are
// registered on cfg.Registerer: a second Delivery on the same registry is an
// error naming the metric. Deliveries that share a registry each take it
// wrapped with prometheus.WrapRegistererWith labels that tell them apart.
func NewDelivery(cfg DeliveryConfig) (*Delivery, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	endpoint, _ := eventsURL(cfg.APIURL)
	d := &Delivery{
		cfg:      cfg,
		endpoint: endpoint,
		started:  time.Now(),
		log:      cfg.Logger.With("component", "delivery"),
		metrics:  newDeliveryMetrics(),
		// Enough entries to keep the most POSTs in flight busy while the
		// delivered ones wait for their ack commit (an fsync: tens of ms on a
		// busy disk, at 10,000 events/s), and the reads batched.
		window:   min(max(1024, 16*cfg.maxInFlight()), 32768),
		lim:      newLimiter(cfg.ceiling()),
		pace:     newPacer(cfg.CatchUpShare, cfg.CatchUpRate, cfg.members(), time.Now()),
		notify:   make(chan struct{}, 1),
		engine:   make(chan struct{}, 1),
		ack:      cfg.Store.AckOutbox,
		unacked:  make(map[uint64]struct{}),
		breakers: make(map[int64]*breaker),
	}
	var err error
	if d.poster, err = newPoster(endpoint, cfg.maxInFlight()); err != nil {
		return nil, fmt.Errorf("%w: APIURL: %w", ErrDeliveryConfig, err)
	}
	if err := d.metrics.register(cfg.Registerer); err != nil { // last: nothing to undo after it
		return nil, err
	}
	return d, nil
}

// Notify says that new entries were committed. It never blocks.
func (d *Delivery) Notify() {
	select {
	case d.notify <- struct{}{}:
	default:
	}
}

// Run delivers the outbox until ctx is done, then returns nil promptly: POSTs
// in flight are cancelled and their entries stay in the outbox. Store errors
// are logged and retried at the next poll.
func (d *Delivery) Run(ctx context.Context) error {
	select {
	case d.engine <- struct{}{}:
	case <-ctx.Done():
		return nil
	}
	defer func() { <-d.engine }()
	_ = d.runEngine(ctx, false)
	return nil
}

// Flush delivers every entry now in the outbox (or dead-letters it) and
// returns nil, or returns ctx.Err() when ctx ends first. It may be called
// after Run returned; while Run is active it waits for Run to empty the
// outbox. The events of a paused rule (see breaker) keep it waiting until
// ctx ends.
func (d *Delivery) Flush(ctx context.Context) error {
	for {
		select {
		case d.engine <- struct{}{}:
			err := d.runEngine(ctx, true)
			<-d.engine
			return err
		default:
		}
		// Run is active and delivers; wait for the outbox to empty.
		d.Notify()
		left, err := d.cfg.Store.Outbox(0, 1)
		if err != nil {
			return fmt.Errorf("flush outbox: %w", err)
		}
		if len(left) == 0 {
			return nil
		}
		if !backoff.Sleep(ctx, flushWaitPoll) {
			return ctx.Err()
		}
	}
}

// pending is an outbox entry held by the engine.
type pending struct {
	entry   store.OutboxEntry
	attempt int       // failed attempts so far
	unauth  int       // consecutive 401s
	due     time.Time // while waiting: not before
	// firstRejected is the first 403 or 404 of the entry (in memory: a
	// restart starts its window again).
	firstRejected time.Time
	catchUp       bool // posted as catch-up (counted in engine.catchUpInFlight)
	paced         bool // waited for the catch-up rate (counted once)
}

type outcomeKind int

const (
	outDelivered outcomeKind = iota
	outRetry
	outUnauthorized
	outDeadLetter
	outRejected // 403 or 404: retried within RejectRetryWindow, then a dead letter
	outCancelled
)

type outcome struct {
	p          *pending
	kind       outcomeKind
	status     int           // 0: no response
	retryAfter time.Duration // from a Retry-After header, 0 if none
	token      string        // the token the attempt carried
	reason     string        // dead letter reason, or the error for logs
	start      time.Time     // when the worker began the attempt
	rtt        time.Duration // how long the attempt took
}

// engine is the state of one Run or Flush; only its loop goroutine touches it.
type engine struct {
	d       *Delivery
	flush   bool
	window  map[uint64]*pending // every entry held: ready, in flight, waiting or being acked
	ready   readyHeap           // on-time entries by seq: rough FIFO
	catchUp readyHeap           // catch-up entries (slot older than CatchUpAfter) by seq
	waiting dueHeap             // by due time
	// The outbox is read by two cursors, so that an outage's backlog cannot
	// fill the window and hold back the events fired since: every entry up
	// to tail that was there when the engine started is the backlog, read
	// from cursor in the room the newer ones leave; entries after tail are
	// new and read first.
	cursor  uint64 // the backlog's read position: entries ≤ cursor were loaded or are gone
	tail    uint64 // highest seq loaded by the new-entries read
	more    bool   // the outbox may hold entries after tail
	failing bool   // the last attempt failed (one log line per outage)
	jobs    chan *pending
	results chan outcome
	wctx    context.Context // the workers' requests; cancelled when the engine stops
	wg      sync.WaitGroup  // the workers

	workers         int // started; never fewer than the POSTs in flight
	onTimeInFlight  int
	catchUpInFlight int
	// paceWake: catch-up waits for the rate until then (zero: it does not).
	paceWake time.Time

	// Acks run beside the loop so that workers get new entries during a commit.
	toAck    []uint64
	acking   bool
	ackFails int       // consecutive failed ack commits
	ackAfter time.Time // after a failed ack commit: the next one not before
	ackReq   chan []uint64
	ackDone  chan ackResult
}

type ackResult struct {
	seqs []uint64
	err  error
}

func (d *Delivery) runEngine(ctx context.Context, flush bool) error {
	e := &engine{
		d:      d,
		flush:  flush,
		window: make(map[uint64]*pending),
		more:   true,
		// Unbuffered: a job is handed to an idle worker, and there is always
		// one, as workers are started up to the POSTs in flight (dispatch).
		jobs:    make(chan *pending),
		results: make(chan outcome, 256),
		ackReq:  make(chan []uint64),
		ackDone: make(chan ackResult, 1),
	}
	// Workers stop on close(jobs); their requests on cancel, when the poster
	// closes its connections.
	d.poster.open()
	wctx, cancel := context.WithCancel(ctx)
	e.wctx = wctx
	var ackWG sync.WaitGroup
	ackWG.Go(func() {
		for seqs := range e.ackReq {
			e.ackDone <- ackResult{seqs, d.ack(seqs...)}
		}
	})
	// Deliveries an earlier engine could not ack: ack them, never post them.
	for seq := range d.unacked {
		e.toAck = append(e.toAck, seq)
	}
	for _, b := range d.breakers {
		b.probe = nil // an earlier engine's entry
	}
	defer func() {
		e.awaitInFlight(d.cfg.StopGrace)
		cancel()
		// POSTs still in flight return at once, as with a cancelled request.
		d.poster.closeAll()
		close(e.jobs)
		close(e.ackReq)
		ackWG.Wait()
		if e.acking {
			e.acked(<-e.ackDone)
		}
		go func() { e.wg.Wait(); close(e.results) }()
		var rest []outcome
		for r := range e.results {
			rest = append(rest, r)
		}
		// Record what finished before the cancel, so it is not posted twice.
		e.handle(rest)
		if len(e.toAck) > 0 {
			seqs := e.toAck
			e.toAck = nil
			e.acked(ackResult{seqs, d.ack(seqs...)})
		}
		d.metrics.onTimeInFlight.Set(0)
		d.metrics.catchUpInFlight.Set(0)
	}()

	e.setCeiling()
	ticker := time.NewTicker(d.cfg.PollInterval)
	defer ticker.Stop()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	// Everything in the outbox now is the backlog, read from the start; what
	// is committed from here on is read after tail, first.
	last, err := e.lastSeq()
	if err != nil {
		if flush {
			return err
		}
		// Read as one backlog from the start, as before the two cursors.
		d.log.Error("read outbox", "err", err)
	}
	e.tail = last
	if err := e.fill(); err != nil && flush {
		return err
	}
	for {
		now := time.Now()
		for e.waiting.Len() > 0 && !e.waiting[0].due.After(now) {
			e.push(heap.Pop(&e.waiting).(*pending), now)
		}
		if flush && len(e.window) == 0 && len(e.toAck) == 0 && !e.more && e.cursor >= e.tail {
			return nil
		}
		e.dispatch(now)
		var wake time.Time // the earliest of: a retry due, an ack retry, the end of a Retry-After pause
		if e.waiting.Len() > 0 {
			wake = e.waiting[0].due
		}
		if p := d.lim.pausedUntil(); p.After(now) && e.ready.Len()+e.catchUp.Len() > 0 && (wake.IsZero() || p.Before(wake)) {
			wake = p
		}
		if p := e.paceWake; !p.IsZero() && (wake.IsZero() || p.Before(wake)) {
			wake = p
		}
		var ackReq chan []uint64
		if len(e.toAck) > 0 && !e.acking {
			if e.ackAfter.After(now) {
				if wake.IsZero() || e.ackAfter.Before(wake) {
					wake = e.ackAfter
				}
			} else {
				ackReq = e.ackReq
			}
		}
		var timerC <-chan time.Time
		if !wake.IsZero() {
			timer.Reset(wake.Sub(now))
			timerC = timer.C
		}
		var err error
		select {
		case <-ctx.Done():
			return ctx.Err()
		case r := <-e.results:
			batch := []outcome{r}
		drain:
			for len(batch) < cap(e.results) {
				select {
				case r := <-e.results:
					batch = append(batch, r)
				default:
					break drain
				}
			}
			e.handle(batch)
		case ackReq <- e.toAck:
			e.toAck, e.acking = nil, true
		case res := <-e.ackDone:
			e.acking = false
			e.acked(res)
			err = e.fill()
		case <-d.notify:
			if !flush { // a flush delivers what was there when it started
				e.more = true
			}
			err = e.fill()
		case <-ticker.C:
			if !flush {
				if len(e.window) == 0 {
					e.cursor = 0 // a safety net: pick up anything ever skipped
				}
				e.more = true
			}
			e.setCeiling()
			err = e.fill()
		case <-timerC:
		}
		if err != nil {
			if flush {
				return err
			}
			d.log.Error("read outbox", "err", err)
		}
	}
}

// awaitInFlight handles the answers of the POSTs in flight as they come, for
// at most grace: the engine is stopping and starts no POST, but one answered
// is one not posted again.
func (e *engine) awaitInFlight(grace time.Duration) {
	if grace <= 0 || e.onTimeInFlight+e.catchUpInFlight == 0 {
		return
	}
	t := time.NewTimer(grace)
	defer t.Stop()
	for e.onTimeInFlight+e.catchUpInFlight > 0 {
		select {
		case r := <-e.results:
			e.handle([]outcome{r})
		case <-t.C:
			return
		}
	}
}

// setCeiling gives the limiter this node's share of the budget now, and the
// pacer its part of the catch-up rate.
func (e *engine) setCeiling() {
	d := e.d
	members := d.cfg.members()
	c := d.cfg.ceilingOf(members)
	d.lim.setCeiling(c)
	d.pace.setMembers(members, time.Now())
	d.metrics.ceiling.Set(float64(c))
	d.metrics.limit.Set(float64(d.lim.value()))
	d.metrics.catchUpRate.Set(d.pace.rate())
}

// push makes p ready: on time, or catch-up (isCatchUp).
func (e *engine) push(p *pending, now time.Time) {
	if e.isCatchUp(p.entry.Event.Slot, now) {
		heap.Push(&e.catchUp, p)
		return
	}
	heap.Push(&e.ready, p)
}

// dispatch hands ready entries to the workers while the limiter allows:
// on-time entries first; catch-up ones only in what the on-time ones leave,
// within their share of the limit, less a reserve kept free for on-time
// events to come, and at the catch-up rate (pacer).
func (e *engine) dispatch(now time.Time) {
	d := e.d
	limit := d.lim.current(now)
	e.paceWake = time.Time{}
	for e.onTimeInFlight+e.catchUpInFlight < limit {
		var p *pending
		switch {
		case e.ready.Len() > 0:
			p = heap.Pop(&e.ready).(*pending)
			p.catchUp = false
			e.onTimeInFlight++
			d.pace.sentOnTime(now)
		case e.catchUp.Len() > 0 && d.pace.mayStart(limit, e.onTimeInFlight, e.catchUpInFlight):
			if !d.pace.take(now) {
				e.paceWake = d.pace.next(now)
				if head := e.catchUp[0]; !head.paced {
					head.paced = true
					d.metrics.catchUpRateLimited.Inc()
				}
				break // p stays nil: the loop ends
			}
			p = heap.Pop(&e.catchUp).(*pending)
			p.catchUp = true
			e.catchUpInFlight++
			d.metrics.catchUpPosts.Inc()
		}
		if p == nil {
			break
		}
		if e.workers < e.onTimeInFlight+e.catchUpInFlight {
			e.startWorker()
		}
		e.jobs <- p
	}
	// Work waits for a slot: the limit binds. Catch-up that waits for the
	// rate does not say so: more POSTs in flight would not post it sooner.
	if e.ready.Len() > 0 || (e.catchUp.Len() > 0 && e.paceWake.IsZero()) {
		d.lim.binds()
	}
	d.metrics.onTimeInFlight.Set(float64(e.onTimeInFlight))
	d.metrics.catchUpInFlight.Set(float64(e.catchUpInFlight))
}

// startWorker starts one more worker: they are never fewer than the POSTs in
// flight, so a job sent on the unbuffered jobs channel finds one idle.
func (e *engine) startWorker() {
	e.workers++
	e.wg.Go(func() {
		for p := range e.jobs {
			start := time.Now()
			out := e.d.attempt(e.wctx, p)
			out.start, out.rtt = start, time.Since(start)
			e.results <- out
		}
	})
}

// finished takes an answered POST off the in-flight counts and tells the
// limiter what it says of the receiver.
func (e *engine) finished(r outcome) {
	d := e.d
	if r.p.catchUp {
		e.catchUpInFlight--
	} else {
		e.onTimeInFlight--
	}
	now := time.Now()
	change := limitSame
	switch {
	case r.kind == outDelivered:
		change = d.lim.success(r.start, r.rtt, now)
	case r.kind == outRetry && r.retryAfter > 0:
		change = d.lim.retryAfter(r.start, now, min(r.retryAfter, d.cfg.BackoffMax))
	case r.kind == outRetry && isOverload(r.status):
		change = d.lim.overload(r.start, now)
	}
	switch change {
	case limitSame:
		return
	case limitLatency:
		d.metrics.limitDecreases.WithLabelValues("latency").Inc()
	case limitOverload:
		d.metrics.limitDecreases.WithLabelValues("overload").Inc()
	case limitRetryAfter:
		d.metrics.limitDecreases.WithLabelValues("retry_after").Inc()
	}
	d.metrics.limit.Set(float64(d.lim.value()))
}

// isOverload reports whether a retried answer says the receiver is
// overloaded: no answer (a transport error or a timeout), 408, 429 or 5xx.
// A redirect, 409 or 425 say nothing of its load.
func isOverload(status int) bool {
	return status == 0 || status == http.StatusRequestTimeout || status == http.StatusTooManyRequests || status >= 500
}

// lastSeq is the seq of the outbox's last entry (0 if empty), found with a
// few one-entry reads: a gallop, then a binary search.
func (e *engine) lastSeq() (uint64, error) {
	st := e.d.cfg.Store
	// found reports the first entry after seq, if any.
	found := func(seq uint64) (uint64, bool, error) {
		ents, err := st.Outbox(seq, 1)
		if err != nil || len(ents) == 0 {
			return 0, false, err
		}
		return ents[0].Seq, true, nil
	}
	last, ok, err := found(0)
	if err != nil || !ok {
		return 0, err
	}
	// Invariant: an entry has seq last, and none is after hi.
	var hi uint64
	for step := uint64(1); ; step *= 2 {
		if last+step < last {
			return last, nil // seqs never get near 2^64
		}
		s, ok, err := found(last + step)
		if err != nil {
			return 0, err
		}
		if !ok {
			hi = last + step
			break
		}
		last = s
	}
	for last < hi {
		mid := last + (hi-last)/2
		s, ok, err := found(mid)
		if err != nil {
			return 0, err
		}
		if !ok {
			hi = mid // none after mid; mid == last ends the search
			continue
		}
		last = s
	}
	return last, nil
}

// fill loads outbox entries into the window while there is room: those
// committed since the engine started first (they are on time), then the
// backlog in the room they leave, keeping a quarter of the window for them.
// Reads are batched: with work queued it waits for a quarter of the window
// to be free.
//
// Catch-up waits for its pace, so it could fill the window and keep the
// events fired since out of it: at most maxHeldCatchUp of it wait in the
// window. One read after that is left in the outbox, and the backlog read
// goes back to it (a node back from an outage commits its missed slots after
// the engine started, among the new entries).
func (e *engine) fill() error {
	quarter := e.d.window / 4
	room := func() int { return e.d.window - len(e.window) }
	queued := func() bool { return e.ready.Len()+e.catchUp.Len() >= e.d.lim.value() }
	for pages := 0; e.more; pages++ {
		if room() <= 0 || (queued() && room() < quarter) {
			break
		}
		if pages == maxFillPages {
			e.d.Notify() // read on after a dispatch
			break
		}
		n := min(room(), deliveryPage)
		entries, err := e.d.cfg.Store.Outbox(e.tail, n)
		if err != nil {
			e.more = false // retried at the next Notify or poll
			return fmt.Errorf("read outbox after %d: %w", e.tail, err)
		}
		for _, ent := range entries {
			e.tail = max(e.tail, ent.Seq)
			if !e.load(ent) {
				e.cursor = min(e.cursor, ent.Seq-1) // the backlog read takes it later
			}
		}
		if len(entries) < n {
			e.more = false
		}
	}
	for e.cursor < e.tail {
		// Refilled in pages once half of the catch-up held was posted.
		if room() <= quarter || (queued() && room() < 2*quarter) || e.catchUp.Len() >= e.maxHeldCatchUp()/2 {
			return nil
		}
		n := min(room()-quarter, deliveryPage)
		entries, err := e.d.cfg.Store.Outbox(e.cursor, n)
		if err != nil {
			return fmt.Errorf("read outbox after %d: %w", e.cursor, err)
		}
		for _, ent := range entries {
			if ent.Seq > e.tail {
				e.cursor = e.tail // the new entries' read has it
				break
			}
			if !e.load(ent) {
				return nil // catch-up is full: read from here later
			}
			e.cursor = ent.Seq
		}
		if len(entries) < n {
			e.cursor = e.tail
		}
	}
	return nil
}

// maxFillPages bounds the pages one fill reads after tail, so that a burst
// of catch-up committed since the start, left in the outbox, does not hold
// the engine's loop for long.
const maxFillPages = 16

// maxHeldCatchUp is the most catch-up entries waiting in the window: the
// rest waits in the outbox. Several dispatches' worth at any rate, and a
// quarter of the window at most.
func (e *engine) maxHeldCatchUp() int { return max(deliveryPage, e.d.window/4) }

// catchUpFull reports whether no more catch-up may wait in the window.
func (e *engine) catchUpFull() bool { return e.catchUp.Len() >= e.maxHeldCatchUp() }

// isCatchUp reports whether an event of slot that becomes ready at now is
// catch-up: its slot is older than CatchUpAfter, or was due before the node
// started. A node back from two minutes down fires the slots it missed at
// once; the last 30 s of them are as much the outage's backlog as the rest.
func (e *engine) isCatchUp(slot, now time.Time) bool {
	return now.Sub(slot) > e.d.cfg.CatchUpAfter || slot.Before(e.d.started)
}

// load adds an outbox entry to the window, unless it is there already. It
// reports false for a catch-up entry left in the outbox because catch-up is
// full (catchUpFull).
func (e *engine) load(ent store.OutboxEntry) bool {
	if _, ok := e.window[ent.Seq]; ok {
		return true
	}
	if _, ok := e.d.unacked[ent.Seq]; ok {
		return true // delivered; its ack is queued
	}
	p := &pending{entry: ent}
	if b := e.d.breakers[ent.Event.RuleID]; b.paused() {
		if b.probe != nil {
			return true // stays in the outbox; reloaded when the breaker closes
		}
		e.window[ent.Seq] = p
		e.scheduleProbe(p, b)
		return true
	}
	now := time.Now()
	if e.catchUpFull() && e.isCatchUp(ent.Event.Slot, now) {
		return false
	}
	e.window[ent.Seq] = p
	e.push(p, now)
	return true
}

// handle applies a batch of outcomes. Deliveries are queued for the acker.
func (e *engine) handle(batch []outcome) {
	d := e.d
	for _, r := range batch {
		e.finished(r)
		seq := r.p.entry.Seq
		rule := r.p.entry.Event.RuleID
		if r.kind == outRejected {
			r.kind = e.rejected(r.p)
		}
		if b := d.breakers[rule]; b.paused() && isFailure(r.kind) {
			e.pausedFailure(r.p, b)
			continue
		}
		switch r.kind {
		case outCancelled:
			// The engine is stopping; the entry stays in the outbox.
		case outDelivered:
			e.toAck = append(e.toAck, seq)
			e.resetBreaker(rule)
			if e.failing {
				e.failing = false
				d.log.Info("event delivery recovered")
			}
		case outDeadLetter:
			err := d.cfg.Store.DeadLetter(seq, r.reason, r.status)
			if err != nil && !errors.Is(err, store.ErrNotFound) { // not found: gone already
				d.log.Error("write dead letter", "seq", seq, "rule", r.p.entry.Event.RuleID, "err", err)
				e.retry(r.p, 0)
				continue
			}
			d.metrics.deadLetter(r.status).Inc()
			d.log.Warn("event rejected, moved to dead letters", "seq", seq, "rule", r.p.entry.Event.RuleID,
				"idempotency_key", r.p.entry.Event.IdempotencyKey, "status", r.status, "reason", r.reason)
			delete(e.window, seq)
			e.countDeadLetter(rule)
		case outUnauthorized:
			d.invalidate(r.token)
			r.p.unauth++
			if r.p.unauth == 1 && d.token() != r.token {
				e.push(r.p, time.Now()) // a fresh token: retry at once
				continue
			}
			e.retry(r.p, 0)
		case outRetry:
			if !e.failing {
				e.failing = true
				d.log.Warn("event delivery failing, retrying with backoff", "status", r.status, "err", r.reason)
			}
			d.log.Debug("event delivery failed", "seq", seq, "status", r.status, "err", r.reason, "attempt", r.p.attempt+1)
			r.p.unauth = 0
			e.retry(r.p, r.retryAfter)
		}
	}
}

// acked removes committed acks from the window. A failed commit (a full disk)
// is retried with backoff, and the entries are never posted again: the
// receiver took them, and the fact stays in d.unacked until it is written.
func (e *engine) acked(res ackResult) {
	d := e.d
	if res.err != nil {
		e.ackFails++
		if e.ackFails == 1 {
			d.log.Error("ack outbox: delivered events stay in the outbox until the commit succeeds; they are not posted again",
				"entries", len(res.seqs), "err", res.err)
		}
		d.metrics.ackFailures.Inc()
		if d.cfg.AckFailed != nil {
			d.cfg.AckFailed(res.err)
		}
		for _, seq := range res.seqs {
			d.unacked[seq] = struct{}{}
		}
		e.toAck = append(e.toAck, res.seqs...)
		e.ackAfter = time.Now().Add(backoff.Delay(e.ackFails, d.cfg.BackoffMin, d.cfg.BackoffMax))
		return
	}
	if e.ackFails > 0 {
		d.log.Info("ack outbox recovered", "failed_commits", e.ackFails)
		e.ackFails, e.ackAfter = 0, time.Time{}
	}
	for _, seq := range res.seqs {
		delete(e.window, seq)
		delete(d.unacked, seq)
	}
}

// retry schedules p after a backoff, or after retryAfter when the server
// asked for it (capped at BackoffMax).
func (e *engine) retry(p *pending, retryAfter time.Duration) {
	p.attempt++
	cfg := e.d.cfg
	var wait time.Duration
	if retryAfter > 0 {
		wait = backoff.RetryAfter(retryAfter, cfg.BackoffMin, cfg.BackoffMax)
	} else {
		wait = backoff.Delay(p.attempt, cfg.BackoffMin, cfg.BackoffMax)
	}
	p.due = time.Now().Add(wait)
	heap.Push(&e.waiting, p)
}

// attempt posts one entry once.
func (d *Delivery) attempt(ctx context.Context, p *pending) outcome {
	out := outcome{p: p}
	ev := p.entry.Event
	out.token = d.token()
	start := time.Now()
	deadline := start.Add(d.cfg.Timeout)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	resp, err := d.poster.post(deadline, ev.IdempotencyKey, d.bearer.header(out.token), ev.Body)
	if err != nil {
		if ctx.Err() != nil {
			out.kind = outCancelled
			return out
		}
		d.metrics.seconds.Observe(time.Since(start).Seconds())
		d.metrics.deliveries.WithLabelValues(codeError).Inc()
		out.kind, out.reason = outRetry, redact(postError(d.endpoint, err), out.token)
		return out
	}
	code := resp.status
	out.status = code
	d.metrics.seconds.Observe(time.Since(start).Seconds())
	d.metrics.delivery(code).Inc()

	switch {
	case code >= 200 && code < 300:
		out.kind = outDelivered
	case code == http.StatusUnauthorized:
		out.kind = outUnauthorized
	case isPermanent(code):
		out.kind = outDeadLetter
		if isRejectRetried(code) {
			out.kind = outRejected
		}
		out.reason = deadLetterReason(code, resp.excerpt, out.token)
	case code >= 300 && code < 400:
		out.kind, out.reason = outRetry, d.poster.redirectNote(resp)
		d.noteRedirect(out.reason)
	default:
		out.kind = outRetry
		out.reason = resp.statusLine
		if resp.retryAfter != "" {
			out.retryAfter = parseRetryAfter(resp.retryAfter, time.Now())
		}
	}
	return out
}

// isPermanent reports whether a status rejects the event for good: every 4xx
// but 401 (refresh the token), 408 (timeout), 409 (the same Idempotency-Key
// is still being processed), 425 (too early) and 429 (rate limited).
// postError reads as net/http's error for a failed POST: Post "URL": cause.
func postError(endpoint string, err error) string {
	return (&url.Error{Op: "Post", URL: RedactURL(endpoint), Err: err}).Error()
}

func isPermanent(code int) bool {
	switch code {
	case http.StatusUnauthorized, http.StatusRequestTimeout, http.StatusConflict,
		http.StatusTooEarly, http.StatusTooManyRequests:
		return false
	}
	return code >= 400 && code < 500
}

// isRejectRetried reports whether a permanent status is retried for a while
// first: an ingress or gateway answers 403 or 404 while a route is being
// rolled out; 400 and 422 judge the event itself.
func isRejectRetried(code int) bool {
	return code == http.StatusForbidden || code == http.StatusNotFound
}

// deadLetterReason is "<status> <text>: <body excerpt>", printable, bounded,
// and without the token even if the server echoed it.
func deadLetterReason(code int, body []byte, token string) string {
	reason := strconv.Itoa(code)
	if t := http.StatusText(code); t != "" {
		reason += " " + t
	}
	s := strings.Map(func(r rune) rune {
		if unicode.IsControl(r) || r == unicode.ReplacementChar {
			return ' '
		}
		return r
	}, strings.ToValidUTF8(string(body), ""))
	s = strings.Join(strings.Fields(redact(s, token)), " ")
	if s != "" {
		reason += ": " + s
	}
	return reason
}

func redact(s, token string) string {
	if token == "" {
		return s
	}
	return strings.ReplaceAll(s, token, redactedToken)
}

// parseRetryAfter reads delay-seconds or an HTTP date; 0 when absent or bad.
func parseRetryAfter(v string, now time.Time) time.Duration {
	if v == "" {
		return 0
	}
	if secs, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64); err == nil {
		if secs <= 0 {
			return 0
		}
		if secs > int64(24*time.Hour/time.Second) {
			secs = int64(24 * time.Hour / time.Second)
		}
		return time.Duration(secs) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}

func (d *Delivery) token() string {
	if d.cfg.Tokens == nil {
		return ""
	}
	return d.cfg.Tokens.Token()
}

// invalidate passes a rejected token on once: the workers that were refused
// together share one refresh, and a late 401 for an old token does not
// refresh again.
func (d *Delivery) invalidate(tok string) {
	if d.cfg.Tokens == nil || tok == "" {
		return
	}
	d.tokMu.Lock()
	seen := slices.Contains(d.invalidated[:], tok)
	if !seen {
		copy(d.invalidated[1:], d.invalidated[:])
		d.invalidated[0] = tok
	}
	d.tokMu.Unlock()
	if !seen {
		d.log.Info("events API refused the token, refreshing")
		d.cfg.Tokens.Invalidate(tok)
	}
}

// readyHeap orders entries by seq.
type readyHeap []*pending

func (h readyHeap) Len() int           { return len(h) }
func (h readyHeap) Less(i, j int) bool { return h[i].entry.Seq < h[j].entry.Seq }
func (h readyHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *readyHeap) Push(x any)        { *h = append(*h, x.(*pending)) }
func (h *readyHeap) Pop() any {
	old := *h
	p := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	return p
}

// dueHeap orders entries by due time.
type dueHeap []*pending

func (h dueHeap) Len() int           { return len(h) }
func (h dueHeap) Less(i, j int) bool { return h[i].due.Before(h[j].due) }
func (h dueHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *dueHeap) Push(x any)        { *h = append(*h, x.(*pending)) }
func (h *dueHeap) Pop() any {
	old := *h
	p := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	return p
}
