package node

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/timerd/timerd/cluster/protocol"
	"github.com/timerd/timerd/ingest"
	"github.com/timerd/timerd/ingest/attune"
	"github.com/timerd/timerd/ingest/backoff"
	"github.com/timerd/timerd/scheduler"
	"github.com/timerd/timerd/store"
)

// Results of one lifecycle message, the result label of
// timerd_lifecycle_messages_total: the rule book's (applied, unchanged,
// stale, invalid, ignored), and error.
const (
	resApplied   = string(protocol.Applied)   // the store and the schedule changed
	resUnchanged = string(protocol.Unchanged) // a duplicate: nothing to change
	resStale     = string(protocol.Stale)     // older than the rule's version: nothing changed
	resIgnored   = string(protocol.Ignored)   // well formed, but not a timer rule of ours
	resInvalid   = string(protocol.Invalid)   // does not parse, or its timer does not
	resError     = "error"                    // the store failed; the message comes again
)

// batchReq is a batch of lifecycle messages the consumer hands to the
// intake goroutine; done receives nil once they are committed, or the
// store's error.
type batchReq struct {
	msgs []attune.Message
	done chan error
}

// intake applies the start-up rules, declares the lifecycle queue,
// reconciles, then applies lifecycle messages and periodic reconciles, all
// in this one goroutine so that a reconcile and a message never interleave
// their writes.
func (n *Node) intake(ctx context.Context) error {
	n.applyStartupRules(ctx)
	// The queue is declared and bound before the first reconcile: from then
	// on the broker keeps every message for us, so nothing slips between
	// the snapshot and the stream. (The in-process channel is subscribed
	// before Run for the same reason.)
	declared := n.consumer == nil || n.declare(ctx)
	if !declared || !n.reconcileFirst(ctx) {
		if n.consumer != nil {
			_ = n.consumer.Close()
		}
		return nil
	}
	if n.consumer != nil {
		consuming, wait := n.startConsumer(ctx)
		defer wait()
		// Ready means consuming: wait for it, serving the consumer's
		// batches meanwhile (a queue may already hold messages).
		if !n.serveUntilConsuming(ctx, consuming) {
			return nil
		}
	}
	n.becomeReady()
	n.follow(ctx)
	return nil
}

// applyStartupRules applies Config.StartupRules; a failure is logged, and
// the first reconcile repairs it.
func (n *Node) applyStartupRules(ctx context.Context) {
	if len(n.cfg.StartupRules) == 0 {
		return
	}
	if err := n.applyRemote(ctx, n.cfg.StartupRules, time.Time{}, "", "start-up set"); err != nil {
		n.log.Error("start-up rules not applied; reconcile retries", "err", err)
	}
}

// reconcileFirst reconciles until a reconcile succeeds, retrying with
// jittered backoff from 1s to 30s; it reports false when ctx ended first.
func (n *Node) reconcileFirst(ctx context.Context) bool {
	for attempt := 1; ; attempt++ {
		err := n.reconcile(ctx)
		if err == nil {
			return true
		}
		if ctx.Err() != nil {
			return false
		}
		wait := backoff.Delay(attempt, time.Second, 30*time.Second)
		n.log.Warn("first reconcile failed; retrying", "err", err, "retry_in", wait)
		if !backoff.Sleep(ctx, wait) {
			return false
		}
	}
}

// startConsumer runs the lifecycle consumer until ctx ends, its batches
// handed to the intake goroutine (submit). consuming is closed once it
// consumes; wait waits for it to stop.
func (n *Node) startConsumer(ctx context.Context) (consuming <-chan struct{}, wait func()) {
	on := make(chan struct{})
	closed := false // touched by the consumer goroutine only
	done := make(chan error, 1)
	go func() {
		done <- n.consumer.RunBatch(ctx, ingest.BatchHandler{
			Handle: func(msgs []attune.Message) error { return n.submit(ctx, msgs) },
			Max:    n.cfg.IntakeBatch,
			Consuming: func(consuming bool) {
				if consuming && !closed {
					closed = true
					close(on)
				}
			},
		})
	}()
	return on, func() {
		if err := <-done; err != nil {
			n.log.Error("lifecycle consumer stopped", "err", err)
		}
	}
}

// serveUntilConsuming applies the consumer's batches until it consumes; it
// reports false when ctx ended first.
func (n *Node) serveUntilConsuming(ctx context.Context, consuming <-chan struct{}) bool {
	for {
		select {
		case <-ctx.Done():
			return false
		case <-consuming:
			return true
		case req := <-n.batches:
			req.done <- n.applyMessages(req.msgs)
		}
	}
}

// becomeReady marks the node ready: its rule book is loaded and followed.
func (n *Node) becomeReady() {
	n.ready.Store(true)
	if n.drv != nil {
		n.drv.markReady() // the rule book is loaded: it may acquire partitions now
	}
	n.log.Info("node ready", "rules", n.engine.Len(), "lifecycle", n.lifecycleSource())
}

// follow applies lifecycle messages, from the consumer or the in-process
// bus, and reconciles every ReconcileInterval (at the node's own phase of
// it: reconcileRounds), until ctx ends.
func (n *Node) follow(ctx context.Context) {
	rounds := n.newReconcileRounds()
	defer rounds.stop()
	pending := make([]attune.Message, 0, n.cfg.IntakeBatch)
	for {
		select {
		case <-ctx.Done():
			return
		case req := <-n.batches:
			req.done <- n.applyMessages(req.msgs)
		case m, ok := <-n.cfg.Lifecycle:
			if !ok {
				n.cfg.Lifecycle = nil // closed: keep reconciling
				continue
			}
			pending = n.takeWaiting(append(pending[:0], m))
			// The in-process bus cannot redeliver: a store failure is
			// logged (and counted); the next reconcile repairs it.
			if err := n.applyMessages(pending); err != nil {
				n.log.Error("lifecycle messages not applied; the next reconcile repairs them",
					"messages", len(pending), "err", err)
			}
		case <-rounds.c:
			n.periodicReconcile(ctx)
			rounds.next()
		}
	}
}

// periodicReconcile reconciles, and tells the queue watch what it found:
// changes a queue that never delivers should have brought.
func (n *Node) periodicReconcile(ctx context.Context) {
	changes, err := n.reconcileChanges(ctx)
	if err != nil {
		if ctx.Err() == nil {
			n.log.Warn("reconcile failed; the next one retries", "err", err)
		}
		return
	}
	if n.consumer != nil {
		n.queueWatch.reconciled(changes, n.log, n.cfg.MQ.Exchange, n.cfg.MQ.Queue)
	}
}

// takeWaiting appends to batch the messages already waiting on the
// in-process bus, up to IntakeBatch: one commit for all of them.
func (n *Node) takeWaiting(batch []attune.Message) []attune.Message {
	for len(batch) < n.cfg.IntakeBatch {
		select {
		case m, ok := <-n.cfg.Lifecycle:
			if !ok {
				n.cfg.Lifecycle = nil // closed: keep reconciling
				return batch
			}
			batch = append(batch, m)
		default:
			return batch
		}
	}
	return batch
}

func (n *Node) lifecycleSource() string {
	switch {
	case n.consumer != nil:
		return "rabbitmq queue " + n.cfg.MQ.Queue
	case n.cfg.Lifecycle != nil:
		return "in-process bus"
	}
	return "none (reconcile only)"
}

// declare declares the lifecycle queue, retrying with jittered backoff from
// 500ms to 30s while the broker is unreachable. It reports false when ctx
// ended first.
func (n *Node) declare(ctx context.Context) bool {
	for attempt := 1; ; attempt++ {
		dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := n.consumer.Declare(dctx)
		cancel()
		if err == nil {
			n.log.Info("lifecycle queue declared", "queue", n.cfg.MQ.Queue, "exchange", n.cfg.MQ.Exchange)
			return true
		}
		if ctx.Err() != nil {
			return false
		}
		wait := backoff.Delay(attempt, 500*time.Millisecond, 30*time.Second)
		n.log.Warn("lifecycle queue not declared; retrying (not ready until it is)", "err", err, "retry_in", wait)
		if !backoff.Sleep(ctx, wait) {
			return false
		}
	}
}

// submit hands a batch from the consumer goroutine to the intake goroutine
// and waits until it is committed. An error leaves the batch unacked.
func (n *Node) submit(ctx context.Context, msgs []attune.Message) error {
	req := batchReq{msgs: msgs, done: make(chan error, 1)}
	select {
	case n.batches <- req:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-req.done:
		return err
	case <-ctx.Done():
		// The intake goroutine answers what it took; this wait only ends
		// early at shutdown, when the closing channel requeues the batch.
		return ctx.Err()
	}
}

// applyMessages applies lifecycle messages in order, in one store
// transaction for all of them. It returns an error only when the store
// failed; a message the node cannot use is counted and logged, not an
// error.
func (n *Node) applyMessages(msgs []attune.Message) error {
	n.queueWatch.messages(len(msgs))
	tx := n.newRuleTxn()
	type outcome struct {
		typ    string
		result string
		ruleID int64
	}
	outs := make([]outcome, len(msgs))
	for i, m := range msgs {
		l, err := attune.ParseLifecycle(m.Body, m.RoutingKey)
		if err != nil {
			outs[i] = outcome{typ: "unknown", result: resInvalid}
			n.log.Warn("lifecycle message dropped", "result", resInvalid, "routing_key", scheduler.Truncate(m.RoutingKey, 64),
				"bytes", len(m.Body), "err", err)
			continue
		}
		result, err := tx.apply(l)
		outs[i] = outcome{typ: string(l.Type), result: result, ruleID: l.RuleID}
		switch {
		case result == resError:
			// The read failed: the batch fails as a whole below.
			return n.failBatch(msgs, err)
		case result == resIgnored:
			n.log.Info("lifecycle message ignored", "result", result, "type", l.Type, "rule_id", l.RuleID,
				"trigger_ref", scheduler.Truncate(l.TriggerRef, 64), "reason", err)
		case err != nil:
			n.log.Warn("lifecycle message not applied", "result", result, "type", l.Type, "rule_id", l.RuleID,
				"trigger_ref", scheduler.Truncate(l.TriggerRef, 64), "err", err)
		case result == resStale:
			n.log.Info("lifecycle message older than the rule's version; nothing changed", "type", l.Type,
				"rule_id", l.RuleID, "timestamp", l.Timestamp)
		case result == resApplied:
			n.log.Debug("lifecycle message applied", "type", l.Type, "rule_id", l.RuleID, "rule_ref", l.RuleRef)
		}
	}
	if err := tx.commit(); err != nil {
		return n.failBatch(msgs, err)
	}
	for _, o := range outs {
		n.metrics.lifecycle.WithLabelValues(o.typ, o.result).Inc()
	}
	return nil
}

func (n *Node) failBatch(msgs []attune.Message, err error) error {
	n.metrics.lifecycle.WithLabelValues("unknown", resError).Add(float64(len(msgs)))
	return fmt.Errorf("apply %d lifecycle messages: %w", len(msgs), err)
}

// ruleTxn collects rule changes against the store, decided by the rule
// book, and applies them in one transaction, then to the engine. It tracks
// the record each change leaves so that later changes of the same batch see
// earlier ones.
type ruleTxn struct {
	n     *Node
	book  protocol.Book
	now   time.Time
	rules map[int64]*ruleState
	order []int64 // ids in the order first touched
}

type ruleState struct {
	stored bool            // a live rule in the store before this transaction
	rec    protocol.Record // as this transaction leaves it
	dirty  bool            // rec is written by this transaction
	// timer is the rule's parsed timer once a change applied to it: the
	// engine learns it at commit. A rule only given a newer version keeps
	// its schedule and has none.
	timer *scheduler.Timer
	setWM bool // write rec.Watermark: the schedule is new or changed
	// recreated: removed and added again in this transaction, so the
	// engine forgets the old schedule before it learns the new one.
	recreated bool
	// stopped: a change to an invalid timer stopped the rule; it is stored
	// with its watermark and leaves the engine.
	stopped bool
}

func (n *Node) newRuleTxn() *ruleTxn {
	return &ruleTxn{n: n, book: protocol.Book{AnchorBound: n.cfg.ReconcileInterval}, now: n.cfg.Now(),
		rules: make(map[int64]*ruleState)}
}

// state is the rule's state as this transaction left it, read from the
// store the first time: a live rule with the later of its stored and its
// running watermark, or a tombstone (or nothing) with what the cluster
// knows of the rule.
func (tx *ruleTxn) state(id int64) (*ruleState, error) {
	if st, ok := tx.rules[id]; ok {
		return st, nil
	}
	r, wm, found, err := tx.n.store.Rule(id)
	if err != nil {
		return nil, err
	}
	st := &ruleState{stored: found}
	if found {
		st = tx.liveState(r, wm)
	} else {
		ts, _, err := tx.n.store.Tombstone(id)
		if err != nil {
			return nil, err
		}
		st.rec.Version = ts.Version
		st.rec.Watermark = tx.n.clusterWatermark(id)
	}
	tx.rules[id] = st
	tx.order = append(tx.order, id)
	return st, nil
}

// liveState is the state of stored rule r, with the later of its stored
// watermark wm and its running one.
func (tx *ruleTxn) liveState(r store.Rule, wm store.Watermark) *ruleState {
	st := &ruleState{stored: true, rec: protocol.Record{Live: true, Version: r.UpdatedAt, Watermark: scheduler.Watermark(wm),
		Rule: protocol.Rule{ID: r.ID, Ref: r.Ref, TriggerRef: r.TriggerRef, Params: r.Params}}}
	// The engine's watermark may be ahead of the stored one (a fire
	// committing right now).
	if ewm, ok := tx.n.engine.Watermark(r.ID); ok {
		if ewm.Slot.After(st.rec.Watermark.Slot) {
			st.rec.Watermark.Slot = ewm.Slot
		}
		st.rec.Watermark.Count = max(st.rec.Watermark.Count, ewm.Count)
	}
	return st
}

// preload reads the stored rules of ids in one read transaction, as state
// would one transaction each; state reads the others (tombstones) itself.
func (tx *ruleTxn) preload(ids []int64) error {
	type stored struct {
		r  store.Rule
		wm store.Watermark
	}
	var found []stored
	if err := tx.n.store.RulesOf(ids, func(r store.Rule, wm store.Watermark) {
		found = append(found, stored{r, wm})
	}); err != nil {
		return err
	}
	// The engine is asked once the read transaction is over.
	for _, f := range found {
		if _, ok := tx.rules[f.r.ID]; !ok {
			tx.rules[f.r.ID] = tx.liveState(f.r, f.wm)
			tx.order = append(tx.order, f.r.ID)
		}
	}
	return nil
}

// apply makes one lifecycle message part of the transaction and returns its
// result label; err says why for invalid, ignored and error.
func (tx *ruleTxn) apply(l attune.Lifecycle) (string, error) {
	return tx.change(protocol.Change{
		Rule:    protocol.Rule{ID: l.RuleID, Ref: l.RuleRef, TriggerRef: l.TriggerRef, Params: l.Params},
		Enabled: l.Type != attune.RuleDisabled && l.Type != attune.RuleDeleted && l.Enabled,
		Version: l.Timestamp,
	})
}

// change decides c by the rule book and takes the decision into the
// transaction.
func (tx *ruleTxn) change(c protocol.Change) (string, error) {
	st, err := tx.state(c.Rule.ID)
	if err != nil {
		return resError, err
	}
	d := tx.book.Apply(st.rec, c, tx.now)
	tx.take(st, d)
	return string(d.Result), d.Reason
}

// take makes decision d the rule's state in this transaction.
func (tx *ruleTxn) take(st *ruleState, d protocol.Decision) {
	if !d.Write {
		return
	}
	if d.Record.Live && !st.rec.Live && st.stored {
		st.recreated = true
	}
	st.rec, st.dirty = d.Record, true
	st.stopped = d.Result == protocol.Invalid
	switch {
	case !d.Record.Live || st.stopped:
		st.timer, st.setWM = nil, false
	case d.Timer != nil:
		st.timer = d.Timer
		st.setWM = st.setWM || d.Reschedule
	}
}

// commit writes the transaction's changes to the store (one transaction
// for every put, one for every removal), then to the engine.
func (tx *ruleTxn) commit() error {
	var (
		puts []store.Rule
		wms  []*store.Watermark
		dels []store.Tombstone
	)
	for _, id := range tx.order {
		st := tx.rules[id]
		switch {
		case !st.dirty:
		case st.rec.Live:
			r := st.rec.Rule
			// st.timer is Parse's timer of r (or nil: the store parses r itself).
			puts = append(puts, store.Rule{ID: r.ID, Ref: r.Ref, TriggerRef: r.TriggerRef, Params: r.Params,
				UpdatedAt: st.rec.Version, Timer: st.timer})
			var wm *store.Watermark
			if st.setWM {
				w := store.Watermark(st.rec.Watermark)
				wm = &w
			}
			wms = append(wms, wm)
		default:
			dels = append(dels, store.Tombstone{ID: id, Version: st.rec.Version})
		}
	}
	start := time.Now()
	if len(puts) > 0 {
		if err := tx.n.store.PutRules(puts, wms); err != nil {
			return err
		}
		// The engine gets only the rules of the partitions this node fires
		// (ownMu: the protocol driver changes them under it too).
		tx.n.ownMu.Lock()
		for _, r := range puts {
			st := tx.rules[r.ID]
			if st.stopped {
				tx.n.engine.Remove(r.ID)
				tx.n.invalid.mark(r.ID, true)
				tx.n.log.Error("rule changed to a timer that does not parse: it stopped firing; its watermark is kept until a valid change",
					"rule_id", r.ID, "rule_ref", r.Ref, "trigger_ref", scheduler.Truncate(r.TriggerRef, 64), "version", st.rec.Version)
				continue
			}
			if st.timer == nil {
				continue // a newer version of the same rule: the schedule stays
			}
			tx.n.invalid.mark(r.ID, false)
			if st.recreated {
				tx.n.engine.Remove(r.ID)
			}
			if !tx.n.runnableLocked(r.ID) {
				tx.n.engine.Remove(r.ID)
				continue
			}
			ewm := st.rec.Watermark
			if _, running := tx.n.engine.Watermark(r.ID); !running {
				// Starts running here: the store may know a later fire (a peer's,
				// replicated here) than the rule's record says.
				if cw := tx.n.clusterWatermark(r.ID); cw.Slot.After(ewm.Slot) {
					ewm.Slot, ewm.Count = cw.Slot, max(ewm.Count, cw.Count)
				}
			}
			tx.n.engine.Upsert(r.ID, st.timer, ewm)
		}
		tx.n.ownMu.Unlock()
	}
	if len(dels) > 0 {
		if err := tx.n.store.RemoveRules(dels); err != nil {
			return fmt.Errorf("%w (%d puts done)", err, len(puts))
		}
		tx.n.ownMu.Lock()
		for _, t := range dels {
			tx.n.engine.Remove(t.ID)
			tx.n.invalid.mark(t.ID, false)
		}
		tx.n.ownMu.Unlock()
	}
	if len(puts)+len(dels) > 0 {
		tx.n.log.Debug("rule changes committed", "puts", len(puts), "removals", len(dels),
			"took", time.Since(start).Round(time.Microsecond).String())
	}
	return nil
}

// reconcile makes the store match the rules API: it adds missing rules,
// updates changed ones and removes those no longer enabled, each as the
// rule book decides by its version; then it purges tombstones past their
// TTL. It applies the listing as it reads it (remoteApply); a failed,
// malformed or incomplete listing removes nothing (docs/operations.md,
// "Reconcile").
func (n *Node) reconcile(ctx context.Context) error {
	_, err := n.reconcileChanges(ctx)
	return err
}

// reconcileChanges is reconcile, saying how many rules it changed (added,
// updated or removed).
func (n *Node) reconcileChanges(ctx context.Context) (int, error) {
	start := time.Now()
	a := n.newRemoteApply(ctx, n.cfg.Now(), "reconcile")
	var (
		incomplete string
		requests   int
		bytes      int64
		pageSize   int
	)
	fail := func(err error) (int, error) {
		n.metrics.reconciles.WithLabelValues("error").Inc()
		return 0, err
	}
	for _, ref := range scheduler.TimerTriggers() {
		l, err := n.rules.EachEnabledRule(ctx, ref, a.add)
		requests, bytes, pageSize = requests+l.Requests, bytes+l.Bytes, max(pageSize, l.PageSize)
		if l.FellBack != "" {
			n.log.Warn("the rules API serves smaller pages than asked; reconciles ask it for 100 rules a page from now on",
				"page_size", l.PageSize, "why", l.FellBack)
		}
		if err != nil {
			if errors.Is(err, ingest.ErrMalformedListing) {
				n.metrics.refused.WithLabelValues(refusedMalformed).Inc()
			}
			return fail(a.fail(err))
		}
		incomplete = cmp.Or(incomplete, l.Incomplete)
	}
	changes, err := a.finish(incomplete)
	if err != nil {
		return fail(err)
	}
	n.metrics.reconciles.WithLabelValues("ok").Inc()
	purged, err := n.store.PurgeTombstones(n.cfg.Now().Add(-protocol.TombstoneTTL))
	if err != nil {
		n.log.Warn("tombstones not purged; the next reconcile retries", "err", err)
	}
	n.log.Info("reconciled", "rules", a.rules, "changes", changes, "tombstones_purged", purged,
		"requests", requests, "bytes", bytes, "page_size", pageSize,
		"took", time.Since(start).Round(time.Millisecond).String())
	return changes, nil
}

// Why a reconcile removed nothing, or not a rule the listing lacked: the
// reason label of timerd_reconcile_refused_total. The listing's reasons
// (malformed and ingest.Incomplete*) count once per reconcile, the rule
// book's (protocol.Refused*) once per rule kept.
const (
	refusedMalformed    = "malformed"                  // a page had no items: nothing applied
	refusedChanged      = protocol.RefusedChanged      // the rule's version is newer than the listing
	refusedStillEnabled = protocol.RefusedStillEnabled // the re-check found the rule enabled: paging missed it
	refusedRecheck      = protocol.RefusedRecheck      // the re-check got no clear answer
	refusedDeferred     = protocol.RefusedDeferred     // past maxRechecks, or after a failed one: the next reconcile asks
)

// maxRechecks bounds the rules one reconcile asks the API for one by one
// (the rule book's default, which the node keeps).
const maxRechecks = protocol.DefaultMaxRechecks

var refusedReasons = []string{refusedMalformed, ingest.IncompleteNoTotals, ingest.IncompleteTotalsChanged,
	ingest.IncompleteCountMismatch, refusedChanged, refusedStillEnabled, refusedRecheck, refusedDeferred}

// applyRemote applies rules as listed by the API (listed is when the
// listing started) or, with listed zero, the start-up set: the rule book
// decides each change, and which stored rules a complete listing
// (incomplete "") prunes (protocol.Book.PruneUnlisted).
func (n *Node) applyRemote(ctx context.Context, rules []attune.RemoteRule, listed time.Time, incomplete, what string) error {
	a := n.newRemoteApply(ctx, listed, what)
	if err := a.add(rules); err != nil {
		return err
	}
	_, err := a.finish(incomplete)
	return err
}

func remoteRule(r attune.RemoteRule) protocol.Rule {
	return protocol.Rule{ID: r.ID, Ref: r.Ref, TriggerRef: r.TriggerRef, Params: r.Params}
}

// logPruning counts and logs what a snapshot refused to prune.
func (n *Node) logPruning(what string, p protocol.Pruning) {
	for reason, c := range p.Refused {
		n.metrics.refused.WithLabelValues(reason).Add(float64(c))
	}
	if p.Incomplete != "" {
		n.log.Warn(what+": the listing did not prove itself complete; no rule removed",
			"reason", p.Incomplete, "rules_not_listed", p.NotListed)
	}
	for _, k := range p.Kept {
		switch k.Reason {
		case refusedRecheck:
			n.log.Warn("reconcile: rule not listed, and its re-check failed; kept until a reconcile can tell",
				"rule_id", k.Rule.ID, "rule_ref", k.Rule.Ref, "err", k.Err)
		case refusedStillEnabled:
			n.log.Info("reconcile: rule missing from the listing is still enabled; kept", "rule_id", k.Rule.ID, "rule_ref", k.Rule.Ref)
		}
	}
}

// recheck asks the rules API for a rule a listing lacked before it is
// removed; the rule book decides what the answer means.
func (n *Node) recheck(ctx context.Context, r protocol.Rule) protocol.Answer {
	got, found, err := n.rules.Rule(ctx, r.Ref)
	return protocol.Answer{Found: found, Rule: remoteRule(got), Enabled: got.Enabled == nil || *got.Enabled, Err: err}
}
