package node

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/timerd/timerd/ingest"
	"github.com/timerd/timerd/scheduler"
	"github.com/timerd/timerd/store"
)

// timerTriggers are the trigger refs reconcile asks the rules API for.
var timerTriggers = []string{"core.intervaltimer", "core.crontimer", "core.datetimetimer", "core.timer"}

// intake applies lifecycle messages and reconciles, all in one goroutine so
// that a reconcile and a message never interleave their writes.
func (n *Node) intake(ctx context.Context) error {
	// The lifecycle channel is already subscribed, so nothing published
	// during the first reconcile is lost: it waits in the channel.
	for attempt := 0; ; attempt++ {
		err := n.reconcile(ctx)
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return nil
		}
		wait := min(time.Second<<min(attempt, 5), 30*time.Second)
		n.log.Warn("first reconcile failed; retrying", "err", err, "retry_in", wait)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
	}
	n.ready.Store(true)
	n.log.Info("node ready", "rules", n.engine.Len())

	var tick <-chan time.Time
	if n.cfg.ReconcileInterval > 0 {
		t := time.NewTicker(n.cfg.ReconcileInterval)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case m, ok := <-n.cfg.Lifecycle:
			if !ok {
				n.cfg.Lifecycle = nil // closed: keep reconciling
				continue
			}
			n.handleMessage(m)
		case <-tick:
			if err := n.reconcile(ctx); err != nil && ctx.Err() == nil {
				n.log.Warn("reconcile failed; the next one retries", "err", err)
			}
		}
	}
}

func (n *Node) handleMessage(m ingest.Message) {
	l, err := ingest.ParseLifecycle(m.Body, m.RoutingKey)
	if err != nil {
		n.metrics.lifecycle.WithLabelValues("unknown", "invalid").Inc()
		n.log.Warn("lifecycle message dropped", "routing_key", m.RoutingKey, "err", err)
		return
	}
	result, err := n.applyLifecycle(l)
	if err != nil {
		n.log.Warn("lifecycle message dropped", "type", l.Type, "rule_id", l.RuleID, "err", err)
	}
	n.metrics.lifecycle.WithLabelValues(string(l.Type), result).Inc()
}

// applyLifecycle makes the store and the engine follow one message. It
// returns the result label: applied, unchanged, ignored or invalid.
func (n *Node) applyLifecycle(l ingest.Lifecycle) (string, error) {
	switch l.Type {
	case ingest.RuleDisabled, ingest.RuleDeleted:
		return n.removeRule(l.RuleID)
	}
	if !l.Enabled {
		return n.removeRule(l.RuleID)
	}
	if !scheduler.IsTimerTrigger(l.TriggerRef) {
		return "ignored", nil
	}
	return n.upsertRule(store.Rule{ID: l.RuleID, Ref: l.RuleRef, TriggerRef: l.TriggerRef, Params: l.Params})
}

// upsertRule stores and schedules an enabled timer rule. A rule whose timer
// is unchanged keeps its schedule and fire count: Attune publishes enable
// messages unconditionally.
func (n *Node) upsertRule(r store.Rule) (string, error) {
	t, err := scheduler.Parse(r.TriggerRef, r.Params, r.ID)
	if err != nil {
		return "invalid", err
	}
	now := n.cfg.Now()
	wm := store.Watermark{Slot: now}
	old, oldWM, found, err := n.store.Rule(r.ID)
	if err != nil {
		return "error", err
	}
	if found {
		if old.Ref == r.Ref && old.TriggerRef == r.TriggerRef && sameJSON(old.Params, r.Params) {
			return "unchanged", nil
		}
		if oldT, err := scheduler.Parse(old.TriggerRef, old.Params, old.ID); err == nil && oldT.Equal(t) {
			// Same schedule, other spelling or ref: keep the watermark.
			wm = oldWM
		} else {
			// A new schedule starts now and keeps counting.
			wm = store.Watermark{Slot: later(oldWM.Slot, now), Count: oldWM.Count}
		}
	}
	r.UpdatedAt = now
	if err := n.store.PutRule(r, &wm); err != nil {
		return "error", err
	}
	n.engine.Upsert(r.ID, t, scheduler.Watermark(wm))
	return "applied", nil
}

func (n *Node) removeRule(id int64) (string, error) {
	_, _, found, err := n.store.Rule(id)
	if err != nil {
		return "error", err
	}
	if !found {
		return "unchanged", nil
	}
	if err := n.store.DeleteRule(id); err != nil {
		return "error", err
	}
	n.engine.Remove(id)
	return "applied", nil
}

// reconcile makes the store match the rules API: it adds missing rules,
// updates changed ones and removes those no longer enabled. A partial
// listing changes nothing.
func (n *Node) reconcile(ctx context.Context) error {
	start := time.Now()
	want := make(map[int64]ingest.RemoteRule)
	for _, ref := range timerTriggers {
		rules, err := n.rules.EnabledRules(ctx, ref)
		if err != nil {
			n.metrics.reconciles.WithLabelValues("error").Inc()
			return err
		}
		for _, r := range rules {
			want[r.ID] = r
		}
	}
	var stale []int64
	err := n.store.ForEachRule(func(r store.Rule, _ store.Watermark) error {
		if _, ok := want[r.ID]; !ok {
			stale = append(stale, r.ID)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("reconcile: %w", err)
	}
	var added, invalid int
	for _, r := range want {
		res, err := n.upsertRule(store.Rule{ID: r.ID, Ref: r.Ref, TriggerRef: r.TriggerRef, Params: r.Params})
		switch {
		case res == "invalid":
			invalid++
			n.log.Warn("rule from the rules API not scheduled", "rule_id", r.ID, "rule_ref", r.Ref, "err", err)
		case err != nil:
			return fmt.Errorf("reconcile rule %d: %w", r.ID, err)
		case res == "applied":
			added++
		}
	}
	for _, id := range stale {
		if _, err := n.removeRule(id); err != nil {
			return fmt.Errorf("reconcile rule %d: %w", id, err)
		}
	}
	n.metrics.reconciles.WithLabelValues("ok").Inc()
	n.log.Info("reconciled", "rules", len(want), "applied", added, "removed", len(stale), "invalid", invalid,
		"took", time.Since(start).Round(time.Millisecond))
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
