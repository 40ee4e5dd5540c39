package ingest

import (
	"bytes"
	"container/heap"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/timerd/timerd/auth"
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
	Store      *store.Store  // required
	APIURL     string        // required, http(s)://host[:port][/prefix]
	Tokens     TokenSource   // optional; nil: no Authorization header
	Workers    int           // concurrent POSTs, default 8
	Timeout    time.Duration // per request, default 10s
	BackoffMin time.Duration // first retry delay, default 200ms
	BackoffMax time.Duration // cap of the retry delay and of Retry-After, default 30s
	// Client is optional; the default keeps MaxIdleConnsPerHost = Workers
	// connections alive (the default of 2 costs 40 % of throughput).
	Client       *http.Client
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
	Logger     *slog.Logger // nil: discard
	Registerer prometheus.Registerer
}

// Defaults of DeliveryConfig.
const (
	DefaultDeliveryWorkers  = 8
	DefaultDeliveryTimeout  = 10 * time.Second
	DefaultBackoffMin       = 200 * time.Millisecond
	DefaultBackoffMax       = 30 * time.Second
	DefaultOutboxPoll       = time.Second
	DefaultRejectWindow     = 10 * time.Minute
	DefaultBreakerThreshold = 5
	DefaultProbeMin         = 10 * time.Second
	DefaultProbeMax         = 5 * time.Minute
)

const (
	maxDeliveryWorkers = 1024
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
	case c.Timeout < 0:
		return bad("Timeout", "negative %v", c.Timeout)
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
	if c.Workers == 0 {
		c.Workers = DefaultDeliveryWorkers
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultDeliveryTimeout
	}
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
	client   *http.Client
	ownedTr  *http.Transport // the default transport, closed when an engine stops
	log      *slog.Logger
	metrics  *deliveryMetrics
	window   int

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

// NewDelivery checks cfg and returns a stopped Delivery.
func NewDelivery(cfg DeliveryConfig) (*Delivery, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	endpoint, _ := eventsURL(cfg.APIURL)
	d := &Delivery{
		cfg:      cfg,
		endpoint: endpoint,
		client:   cfg.Client,
		log:      cfg.Logger.With("component", "delivery"),
		metrics:  newDeliveryMetrics(cfg.Registerer),
		window:   max(256, 32*cfg.Workers),
		notify:   make(chan struct{}, 1),
		engine:   make(chan struct{}, 1),
		ack:      cfg.Store.AckOutbox,
		unacked:  make(map[uint64]struct{}),
		breakers: make(map[int64]*breaker),
	}
	if d.client == nil {
		d.ownedTr = &http.Transport{
			Proxy:                 http.ProxyFromEnvironment,
			DialContext:           (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			ForceAttemptHTTP2:     true,
			MaxIdleConns:          max(100, 2*cfg.Workers),
			MaxIdleConnsPerHost:   cfg.Workers,
			IdleConnTimeout:       90 * time.Second,
			TLSHandshakeTimeout:   10 * time.Second,
			ExpectContinueTimeout: time.Second,
		}
		d.client = &http.Client{Transport: d.ownedTr}
	}
	d.client = auth.NoRedirects(d.client)
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
		t := time.NewTimer(flushWaitPoll)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
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
}

// engine is the state of one Run or Flush; only its loop goroutine touches it.
type engine struct {
	d       *Delivery
	flush   bool
	window  map[uint64]*pending // every entry held: ready, in flight, waiting or being acked
	ready   readyHeap           // by seq: rough FIFO
	waiting dueHeap             // by due time
	cursor  uint64              // highest seq loaded
	more    bool                // the outbox may hold entries after cursor
	failing bool                // the last attempt failed (one log line per outage)
	jobs    chan *pending
	results chan outcome

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
		d:       d,
		flush:   flush,
		window:  make(map[uint64]*pending),
		more:    true,
		jobs:    make(chan *pending, d.cfg.Workers), // a job queued per worker: no wait for the loop between POSTs
		results: make(chan outcome, d.cfg.Workers),
		ackReq:  make(chan []uint64),
		ackDone: make(chan ackResult, 1),
	}
	// Workers stop on close(jobs); their requests on cancel.
	wctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for range d.cfg.Workers {
		wg.Go(func() {
			for p := range e.jobs {
				e.results <- d.attempt(wctx, p)
			}
		})
	}
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
		cancel()
		close(e.jobs)
		close(e.ackReq)
		ackWG.Wait()
		if e.acking {
			e.acked(<-e.ackDone)
		}
		go func() { wg.Wait(); close(e.results) }()
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
		if d.ownedTr != nil {
			d.ownedTr.CloseIdleConnections()
		}
	}()

	ticker := time.NewTicker(d.cfg.PollInterval)
	defer ticker.Stop()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	if err := e.fill(); err != nil && flush {
		return err
	}
	for {
		now := time.Now()
		for e.waiting.Len() > 0 && !e.waiting[0].due.After(now) {
			heap.Push(&e.ready, heap.Pop(&e.waiting))
		}
		if flush && len(e.window) == 0 && len(e.toAck) == 0 && !e.more {
			return nil
		}
		var timerC <-chan time.Time
		if e.waiting.Len() > 0 {
			timer.Reset(e.waiting[0].due.Sub(now))
			timerC = timer.C
		}
		var jobs chan *pending
		var next *pending
		if e.ready.Len() > 0 {
			jobs, next = e.jobs, e.ready[0]
		}
		var ackReq chan []uint64
		if len(e.toAck) > 0 && !e.acking {
			if wait := e.ackAfter.Sub(now); wait > 0 {
				if timerC == nil || e.waiting[0].due.After(e.ackAfter) {
					timer.Reset(wait)
					timerC = timer.C
				}
			} else {
				ackReq = e.ackReq
			}
		}
		var err error
		select {
		case <-ctx.Done():
			return ctx.Err()
		case jobs <- next:
			heap.Pop(&e.ready)
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

// fill loads outbox entries after the cursor into the window while there is
// room. Reads are batched: with work queued it waits for a quarter of the
// window to be free.
func (e *engine) fill() error {
	for e.more {
		room := e.d.window - len(e.window)
		if room <= 0 || (e.ready.Len() >= e.d.cfg.Workers && room < e.d.window/4) {
			return nil
		}
		n := min(room, deliveryPage)
		entries, err := e.d.cfg.Store.Outbox(e.cursor, n)
		if err != nil {
			e.more = false // retried at the next Notify or poll
			return fmt.Errorf("read outbox after %d: %w", e.cursor, err)
		}
		for _, ent := range entries {
			e.cursor = max(e.cursor, ent.Seq)
			if _, ok := e.window[ent.Seq]; ok {
				continue
			}
			if _, ok := e.d.unacked[ent.Seq]; ok {
				continue // delivered; its ack is queued
			}
			p := &pending{entry: ent}
			if b := e.d.breakers[ent.Event.RuleID]; b.paused() {
				if b.probe != nil {
					continue // stays in the outbox; reloaded when the breaker closes
				}
				e.window[ent.Seq] = p
				e.scheduleProbe(p, b)
				continue
			}
			e.window[ent.Seq] = p
			heap.Push(&e.ready, p)
		}
		if len(entries) < n {
			e.more = false
		}
	}
	return nil
}

// handle applies a batch of outcomes. Deliveries are queued for the acker.
func (e *engine) handle(batch []outcome) {
	d := e.d
	for _, r := range batch {
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
			d.metrics.deadLetters.WithLabelValues(strconv.Itoa(r.status)).Inc()
			d.log.Warn("event rejected, moved to dead letters", "seq", seq, "rule", r.p.entry.Event.RuleID,
				"idempotency_key", r.p.entry.Event.IdempotencyKey, "status", r.status, "reason", r.reason)
			delete(e.window, seq)
			e.countDeadLetter(rule)
		case outUnauthorized:
			d.invalidate(r.token)
			r.p.unauth++
			if r.p.unauth == 1 && d.token() != r.token {
				heap.Push(&e.ready, r.p) // a fresh token: retry at once
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
		e.ackAfter = time.Now().Add(backoffDelay(e.ackFails, d.cfg.BackoffMin, d.cfg.BackoffMax))
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
		wait = min(max(retryAfter, cfg.BackoffMin)+rand.N(cfg.BackoffMin+1), cfg.BackoffMax)
	} else {
		wait = backoffDelay(p.attempt, cfg.BackoffMin, cfg.BackoffMax)
	}
	p.due = time.Now().Add(wait)
	heap.Push(&e.waiting, p)
}

// backoffDelay is exponential backoff with full jitter above a floor: uniform
// in [lo, min(hi, lo·2^(attempt-1))]. The floor keeps a failing API from
// seeing a burst of near-zero retries.
func backoffDelay(attempt int, lo, hi time.Duration) time.Duration {
	ceil := hi
	if attempt < 1 {
		attempt = 1
	}
	if attempt-1 < 62 {
		if c := lo << (attempt - 1); c > 0 && c>>(attempt-1) == lo && c < hi {
			ceil = c
		}
	}
	if ceil <= lo {
		return lo
	}
	return lo + rand.N(ceil-lo+1)
}

// attempt posts one entry once.
func (d *Delivery) attempt(ctx context.Context, p *pending) outcome {
	out := outcome{p: p}
	ev := p.entry.Event
	rctx, cancel := context.WithTimeout(ctx, d.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, http.MethodPost, d.endpoint, bytes.NewReader(ev.Body))
	if err != nil {
		// The endpoint was validated; a request that cannot be built is a
		// bug, not a reason to lose the event.
		out.kind, out.reason = outRetry, err.Error()
		return out
	}
	// The header map built whole, its keys canonical already: Header.Set would
	// canonicalise each key and allocate each value's slice. Accept-Encoding set
	// here spares the transport a second map to add gzip to (the answer is drained
	// unread, or read for a dead letter's reason, better in plain text).
	out.token = d.token()
	h := make(http.Header, 4)
	h["Content-Type"] = jsonContentType
	h["Accept-Encoding"] = identityEncoding
	h["Idempotency-Key"] = []string{ev.IdempotencyKey}
	if out.token != "" {
		h["Authorization"] = bearer(out.token)
	}
	req.Header = h

	start := time.Now()
	var resp *http.Response
	if d.ownedTr != nil && req.URL.User == nil {
		// The default client adds nothing to its transport here (no cookie jar,
		// no timeout of its own, no URL credentials, redirects not followed):
		// the transport directly spares Client.Do's copy of the headers for
		// redirects. The error reads as Client.Do's.
		if resp, err = d.ownedTr.RoundTrip(req); err != nil {
			err = &url.Error{Op: "Post", URL: d.endpoint, Err: err}
		}
	} else {
		resp, err = d.client.Do(req)
	}
	if err != nil {
		if ctx.Err() != nil {
			out.kind = outCancelled
			return out
		}
		d.metrics.seconds.Observe(time.Since(start).Seconds())
		d.metrics.deliveries.WithLabelValues(codeError).Inc()
		out.kind, out.reason = outRetry, redact(err.Error(), out.token)
		return out
	}
	code := resp.StatusCode
	out.status = code
	var excerpt []byte
	if isPermanent(code) {
		excerpt, _ = io.ReadAll(io.LimitReader(resp.Body, reasonExcerpt))
	}
	if n := resp.ContentLength; n >= 0 && n <= maxDrainedResponse {
		_, _ = io.Copy(io.Discard, resp.Body) // bounded by its length already
	} else {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxDrainedResponse))
	}
	_ = resp.Body.Close()
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
		out.reason = deadLetterReason(code, excerpt, out.token)
	case auth.IsRedirect(resp):
		out.kind, out.reason = outRetry, auth.RedirectNote(resp)
		d.noteRedirect(out.reason)
	default:
		out.kind = outRetry
		out.reason = resp.Status
		if code == http.StatusTooManyRequests || code == http.StatusServiceUnavailable {
			out.retryAfter = parseRetryAfter(resp.Header.Get("Retry-After"), time.Now())
		}
	}
	return out
}

// isPermanent reports whether a status rejects the event for good: every 4xx
// but 401 (refresh the token), 408 (timeout), 409 (the same Idempotency-Key
// is still being processed), 425 (too early) and 429 (rate limited).
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
