package node

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"github.com/timerd/timerd/ingest"
	"github.com/timerd/timerd/scheduler"
	"github.com/timerd/timerd/store"
)

// maxParamsBytes bounds the trigger_params of one rule: Attune's timer
// parameters are a few keys; anything this large is not a timer.
const maxParamsBytes = 64 << 10

// Results of one lifecycle message, the result label of
// timerd_lifecycle_messages_total.
const (
	resApplied   = "applied"   // the store and the schedule changed
	resUnchanged = "unchanged" // a duplicate: nothing to change
	resIgnored   = "ignored"   // well formed, but not a timer rule of ours
	resInvalid   = "invalid"   // does not parse, or its timer does not
	resError     = "error"     // the store failed; the message comes again
)

// batchReq is a batch of lifecycle messages the consumer hands to the
// intake goroutine; done receives nil once they are committed, or the
// store's error.
type batchReq struct {
	msgs []ingest.Message
	done chan error
}

// intake applies the start-up rules, declares the lifecycle queue,
// reconciles, then applies lifecycle messages and periodic reconciles, all
// in this one goroutine so that a reconcile and a message never interleave
// their writes.
func (n *Node) intake(ctx context.Context) error {
	if len(n.cfg.StartupRules) > 0 {
		if err := n.applyRemote(n.cfg.StartupRules, false, "start-up set"); err != nil {
			n.log.Error("start-up rules not applied; reconcile retries", "err", err)
		}
	}

	// The queue is declared and bound before the first reconcile: from then
	// on the broker keeps every message for us, so nothing slips between
	// the snapshot and the stream. (The in-process channel is subscribed
	// before Run for the same reason.)
	if n.consumer != nil {
		if !n.declare(ctx) {
			_ = n.consumer.Close()
			return nil
		}
	}
	for attempt := 0; ; attempt++ {
		err := n.reconcile(ctx)
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			if n.consumer != nil {
				_ = n.consumer.Close()
			}
			return nil
		}
		wait := min(time.Second<<min(attempt, 5), 30*time.Second)
		n.log.Warn("first reconcile failed; retrying", "err", err, "retry_in", wait)
		if !sleepCtx(ctx, wait) {
			if n.consumer != nil {
				_ = n.consumer.Close()
			}
			return nil
		}
	}

	if n.consumer != nil {
		consuming := make(chan struct{})
		var once bool
		consumerDone := make(chan error, 1)
		go func() {
			consumerDone <- n.consumer.RunBatch(ctx, ingest.BatchHandler{
				Handle: func(msgs []ingest.Message) error { return n.submit(ctx, msgs) },
				Max:    n.cfg.IntakeBatch,
				Consuming: func(on bool) {
					// Called from the consumer goroutine only.
					if on && !once {
						once = true
						close(consuming)
					}
				},
			})
		}()
		defer func() {
			if err := <-consumerDone; err != nil {
				n.log.Error("lifecycle consumer stopped", "err", err)
			}
		}()
		// Ready means consuming: wait for it, serving the consumer's
		// batches meanwhile (a queue may already hold messages).
	wait:
		for {
			select {
			case <-ctx.Done():
				return nil
			case <-consuming:
				break wait
			case req := <-n.batches:
				req.done <- n.applyMessages(req.msgs)
			}
		}
	}
	n.ready.Store(true)
	n.log.Info("node ready", "rules", n.engine.Len(), "lifecycle", n.lifecycleSource())

	var tick <-chan time.Time
	if n.cfg.ReconcileInterval > 0 {
		t := time.NewTicker(n.cfg.ReconcileInterval)
		defer t.Stop()
		tick = t.C
	}
	pending := make([]ingest.Message, 0, n.cfg.IntakeBatch)
	for {
		select {
		case <-ctx.Done():
			return nil
		case req := <-n.batches:
			req.done <- n.applyMessages(req.msgs)
		case m, ok := <-n.cfg.Lifecycle:
			if !ok {
				n.cfg.Lifecycle = nil // closed: keep reconciling
				continue
			}
			pending = append(pending[:0], m)
			// Take what is already waiting: one commit for all of it.
		drain:
			for len(pending) < n.cfg.IntakeBatch {
				select {
				case m, ok := <-n.cfg.Lifecycle:
					if !ok {
						n.cfg.Lifecycle = nil
						break drain
					}
					pending = append(pending, m)
				default:
					break drain
				}
			}
			// The in-process bus cannot redeliver: a store failure is
			// logged (and counted); the next reconcile repairs it.
			if err := n.applyMessages(pending); err != nil {
				n.log.Error("lifecycle messages not applied; the next reconcile repairs them",
					"messages", len(pending), "err", err)
			}
		case <-tick:
			if err := n.reconcile(ctx); err != nil && ctx.Err() == nil {
				n.log.Warn("reconcile failed; the next one retries", "err", err)
			}
		}
	}
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

// declare declares the lifecycle queue, retrying with capped backoff while
// the broker is unreachable. It reports false when ctx ended first.
func (n *Node) declare(ctx context.Context) bool {
	for attempt := 0; ; attempt++ {
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
		wait := min(500*time.Millisecond<<min(attempt, 6), 30*time.Second)
		n.log.Warn("lifecycle queue not declared; retrying (not ready until it is)", "err", err, "retry_in", wait)
		if !sleepCtx(ctx, wait) {
			return false
		}
	}
}

// submit hands a batch from the consumer goroutine to the intake goroutine
// and waits until it is committed. An error leaves the batch unacked.
func (n *Node) submit(ctx context.Context, msgs []ingest.Message) error {
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
func (n *Node) applyMessages(msgs []ingest.Message) error {
	tx := n.newRuleTxn()
	type outcome struct {
		typ    string
		result string
		ruleID int64
	}
	outs := make([]outcome, len(msgs))
	for i, m := range msgs {
		l, err := ingest.ParseLifecycle(m.Body, m.RoutingKey)
		if err != nil {
			outs[i] = outcome{typ: "unknown", result: resInvalid}
			n.log.Warn("lifecycle message dropped", "result", resInvalid, "routing_key", truncate(m.RoutingKey, 64),
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
				"trigger_ref", truncate(l.TriggerRef, 64), "reason", err)
		case err != nil:
			n.log.Warn("lifecycle message dropped", "result", result, "type", l.Type, "rule_id", l.RuleID,
				"trigger_ref", truncate(l.TriggerRef, 64), "err", err)
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

func (n *Node) failBatch(msgs []ingest.Message, err error) error {
	n.metrics.lifecycle.WithLabelValues("unknown", resError).Add(float64(len(msgs)))
	return fmt.Errorf("apply %d lifecycle messages: %w", len(msgs), err)
}

// ruleTxn collects rule changes against the store and applies them in one
// transaction, then to the engine. It tracks the state each change leaves
// so that later messages of the same batch see earlier ones.
type ruleTxn struct {
	n     *Node
	now   time.Time
	rules map[int64]*ruleState
	order []int64 // ids in the order first touched
	// catalogue: the changes come from the catalogue (reconcile, start-up
	// set), not from lifecycle messages: a rule new to this node's store
	// may be an old rule, fired by a peer (catalogueWatermark).
	catalogue bool
}

type ruleState struct {
	stored  bool             // in the store before this transaction
	present bool             // in the store after it
	dirty   bool             // written by this transaction
	rule    store.Rule       // when present
	timer   *scheduler.Timer // when present
	wm      store.Watermark  // the stored watermark, or the new one when setWM
	setWM   bool             // write wm; else leave the stored one alone
	// recreated: removed and added again in this transaction, so the
	// engine forgets the old schedule before it learns the new one.
	recreated bool
}

func (n *Node) newRuleTxn() *ruleTxn {
	return &ruleTxn{n: n, now: n.cfg.Now(), rules: make(map[int64]*ruleState)}
}

// state is the rule's state as this transaction left it, read from the
// store the first time.
func (tx *ruleTxn) state(id int64) (*ruleState, error) {
	if st, ok := tx.rules[id]; ok {
		return st, nil
	}
	r, wm, found, err := tx.n.store.Rule(id)
	if err != nil {
		return nil, err
	}
	st := &ruleState{stored: found, present: found, rule: r, wm: wm}
	tx.rules[id] = st
	tx.order = append(tx.order, id)
	return st, nil
}

// apply makes one lifecycle message part of the transaction and returns its
// result label; err says why for invalid, ignored and error.
func (tx *ruleTxn) apply(l ingest.Lifecycle) (string, error) {
	timerTrigger := scheduler.IsTimerTrigger(l.TriggerRef)
	remove := l.Type == ingest.RuleDisabled || l.Type == ingest.RuleDeleted || !l.Enabled
	if !remove && timerTrigger {
		return tx.upsert(store.Rule{ID: l.RuleID, Ref: l.RuleRef, TriggerRef: l.TriggerRef, Params: l.Params})
	}
	st, err := tx.state(l.RuleID)
	if err != nil {
		return resError, err
	}
	if !st.present {
		// Not ours: a rule of another trigger, or one already gone.
		if l.TriggerRef != "" && !timerTrigger {
			return resIgnored, fmt.Errorf("trigger %q is not a timer trigger", truncate(l.TriggerRef, 64))
		}
		return resUnchanged, nil
	}
	// An enabled rule whose trigger is no longer a timer is no longer ours
	// either (Attune sends a disable first; this is for one that did not).
	tx.remove(st)
	return resApplied, nil
}

func (tx *ruleTxn) remove(st *ruleState) {
	st.present, st.dirty, st.setWM, st.timer = false, true, false, nil
}

// upsert stores and schedules an enabled timer rule. A rule whose timer is
// unchanged keeps its schedule and fire count: Attune publishes enable
// messages unconditionally.
func (tx *ruleTxn) upsert(r store.Rule) (string, error) {
	if len(r.Params) > maxParamsBytes {
		return resInvalid, fmt.Errorf("trigger_params: %d bytes, at most %d", len(r.Params), maxParamsBytes)
	}
	t, err := scheduler.Parse(r.TriggerRef, r.Params, r.ID)
	if err != nil {
		return resInvalid, err
	}
	st, err := tx.state(r.ID)
	if err != nil {
		return resError, err
	}
	r.UpdatedAt = tx.now
	switch {
	case !st.present:
		// New (or deleted and re-created): the first slot is the first one
		// after now.
		st.wm, st.setWM = store.Watermark{Slot: tx.now}, true
		st.recreated = st.stored
		if tx.catalogue && !st.stored {
			if wm, ok := tx.n.catalogueWatermark(r.ID); ok && wm.Slot.Before(tx.now) {
				st.wm = wm
			}
		}
	case st.rule.Ref == r.Ref && st.rule.TriggerRef == r.TriggerRef && sameJSON(st.rule.Params, r.Params):
		return resUnchanged, nil
	default:
		old := st.timer
		if old == nil {
			old, _ = scheduler.Parse(st.rule.TriggerRef, st.rule.Params, st.rule.ID)
		}
		if !old.Equal(t) {
			// A new schedule starts now and keeps counting. The engine's
			// watermark may be ahead of the stored one (a fire committing
			// right now): take the later of both.
			base := st.wm
			if ewm, ok := tx.n.engine.Watermark(r.ID); ok {
				if ewm.Slot.After(base.Slot) {
					base.Slot = ewm.Slot
				}
				base.Count = max(base.Count, ewm.Count)
			}
			st.wm, st.setWM = store.Watermark{Slot: later(base.Slot, tx.now), Count: base.Count}, true
		}
		// Same schedule, other spelling or ref: the watermark stays.
	}
	st.present, st.dirty, st.rule, st.timer = true, true, r, t
	return resApplied, nil
}

// commit writes the transaction's changes to the store (one transaction
// for every put; deletes follow), then to the engine.
func (tx *ruleTxn) commit() error {
	var (
		puts []store.Rule
		wms  []*store.Watermark
		dels []int64
	)
	for _, id := range tx.order {
		st := tx.rules[id]
		switch {
		case !st.dirty:
		case st.present:
			puts = append(puts, st.rule)
			var wm *store.Watermark
			if st.setWM {
				w := st.wm
				wm = &w
			}
			wms = append(wms, wm)
		case st.stored:
			dels = append(dels, id)
		}
	}
	start := time.Now()
	if len(puts) > 0 {
		if err := tx.n.store.PutRules(puts, wms); err != nil {
			return err
		}
		// The engine gets only the rules this node may run now, by the
		// view the ownership loop placed the others by (ownMu).
		tx.n.ownMu.Lock()
		now := tx.n.cfg.Now()
		for i, r := range puts {
			st := tx.rules[r.ID]
			wm := st.wm
			if wms[i] != nil {
				wm = *wms[i]
			}
			if st.recreated {
				tx.n.engine.Remove(r.ID)
			}
			if !tx.n.runnableLocked(r.ID, now) {
				tx.n.engine.Remove(r.ID)
				continue
			}
			ewm := scheduler.Watermark(wm)
			if _, running := tx.n.engine.Watermark(r.ID); !running {
				// Starts running here: a peer may have fired it since.
				ewm = tx.n.adoptWatermark(r.ID, wm)
			}
			tx.n.engine.Upsert(r.ID, st.timer, ewm)
		}
		tx.n.ownMu.Unlock()
	}
	for i, id := range dels {
		// TODO(store): a DeleteRules([]int64) would make this one commit.
		if err := tx.n.store.DeleteRule(id); err != nil {
			return fmt.Errorf("%w (%d of %d deletes done)", err, i, len(dels))
		}
		tx.n.ownMu.Lock()
		tx.n.engine.Remove(id)
		tx.n.ownMu.Unlock()
	}
	if len(puts)+len(dels) > 0 {
		tx.n.log.Debug("rule changes committed", "puts", len(puts), "deletes", len(dels),
			"took", time.Since(start).Round(time.Microsecond).String())
	}
	return nil
}

// reconcile makes the store match the rules API: it adds missing rules,
// updates changed ones and removes those no longer enabled. A partial
// listing changes nothing.
func (n *Node) reconcile(ctx context.Context) error {
	start := time.Now()
	var want []ingest.RemoteRule
	for _, ref := range scheduler.TimerTriggers() {
		rules, err := n.rules.EnabledRules(ctx, ref)
		if err != nil {
			n.metrics.reconciles.WithLabelValues("error").Inc()
			return err
		}
		want = append(want, rules...)
	}
	if err := n.applyRemote(want, true, "reconcile"); err != nil {
		n.metrics.reconciles.WithLabelValues("error").Inc()
		return err
	}
	n.metrics.reconciles.WithLabelValues("ok").Inc()
	n.log.Info("reconciled", "rules", len(want), "took", time.Since(start).Round(time.Millisecond).String())
	return nil
}

// applyRemote upserts rules as listed by the API (or the start-up set) in
// one transaction; with prune, stored rules absent from the list go.
func (n *Node) applyRemote(rules []ingest.RemoteRule, prune bool, what string) error {
	tx := n.newRuleTxn()
	tx.catalogue = true
	want := make(map[int64]bool, len(rules))
	var applied, invalid, ignored, removed int
	for _, r := range rules {
		want[r.ID] = true
		if !scheduler.IsTimerTrigger(r.TriggerRef) {
			ignored++
			n.log.Info(what+": rule is not a timer rule; not scheduled", "rule_id", r.ID, "rule_ref", r.Ref,
				"trigger_ref", truncate(r.TriggerRef, 64))
			continue
		}
		res, err := tx.upsert(store.Rule{ID: r.ID, Ref: r.Ref, TriggerRef: r.TriggerRef, Params: r.Params})
		switch res {
		case resError:
			return fmt.Errorf("%s: rule %d: %w", what, r.ID, err)
		case resInvalid:
			invalid++
			n.log.Warn(what+": rule not scheduled", "rule_id", r.ID, "rule_ref", r.Ref, "err", err)
		case resApplied:
			applied++
		}
	}
	if prune {
		var stale []int64
		err := n.store.ForEachRule(func(r store.Rule, _ store.Watermark) error {
			if !want[r.ID] {
				stale = append(stale, r.ID)
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		slices.Sort(stale)
		for _, id := range stale {
			st, err := tx.state(id)
			if err != nil {
				return fmt.Errorf("%s: rule %d: %w", what, id, err)
			}
			if st.present {
				tx.remove(st)
				removed++
			}
		}
	}
	if err := tx.commit(); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if applied+removed+invalid+ignored > 0 {
		n.log.Info(what+" applied", "rules", len(rules), "applied", applied, "removed", removed,
			"invalid", invalid, "ignored", ignored)
	}
	return nil
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// sameJSON compares two JSON values ignoring key order and spacing.
func sameJSON(a, b json.RawMessage) bool {
	if bytes.Equal(a, b) {
		return true
	}
	var va, vb any
	if json.Unmarshal(a, &va) != nil || json.Unmarshal(b, &vb) != nil {
		return false
	}
	ca, _ := json.Marshal(va)
	cb, _ := json.Marshal(vb)
	return bytes.Equal(ca, cb)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// sleepCtx waits d, or less when ctx is done; it reports whether ctx is
// still live.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
