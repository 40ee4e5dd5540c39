package node

import (
	"cmp"
	"fmt"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/timerd/timerd/cluster/protocol"
	"github.com/timerd/timerd/scheduler"
	"github.com/timerd/timerd/scheduler/metricset"
	"github.com/timerd/timerd/store"
)

// The missed-fire log (docs/timers.md, "Missed fires"): the engine reports the
// runs of slots it did not fire on time with each batch it commits, and the node
// reports its own (verdicts, invalid rules) through the engine, so that they all
// ride in the batch's store transaction. On-time fires record nothing.

// missedMetrics counts the slots recorded, by reason: timerd_missed_slots_total.
type missedMetrics struct {
	vec      *prometheus.CounterVec
	byReason map[string]prometheus.Counter
}

func newMissedMetrics(reg prometheus.Registerer) (*missedMetrics, error) {
	m := &missedMetrics{
		vec: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "timerd_missed_slots_total",
			Help: "Slots of rules that did not fire on time, by reason (node_down, skipped_by_policy, collapsed_by_fire_once, " +
				"owner_changing, duplicate_guard; invalid_schedule counts one per rule found invalid).",
		}, []string{"reason"}),
		byReason: map[string]prometheus.Counter{},
	}
	for _, r := range scheduler.MissReasons {
		m.byReason[string(r)] = m.vec.WithLabelValues(string(r))
	}
	if _, err := metricset.Register(reg, m.vec); err != nil {
		return nil, fmt.Errorf("missed-fire log: %w", err)
	}
	return m, nil
}

// count adds the slots of records committed.
func (m *missedMetrics) count(ms []store.MissedSlot) {
	for _, r := range ms {
		n := float64(r.Count)
		if r.Count == 0 {
			n = 1 // a rule whose slots are unknown (invalid_schedule)
		}
		c, ok := m.byReason[r.Reason]
		if !ok {
			c = m.vec.WithLabelValues(r.Reason)
		}
		c.Add(n)
	}
}

// missedRecords is the engine's misses as store records; nil for none.
func missedRecords(missed []scheduler.Miss) []store.MissedSlot {
	if len(missed) == 0 {
		return nil
	}
	out := make([]store.MissedSlot, len(missed))
	for i, m := range missed {
		out[i] = store.MissedSlot{RuleID: m.RuleID, From: m.From, To: m.To, Count: m.Count, Estimated: m.Estimated,
			Reason: string(m.Reason), DetectedAt: m.At, Detail: scheduler.Truncate(m.Detail, 200)}
	}
	return out
}

// MissedSlots is this node's missed-fire log of rule id, oldest first (at most
// store.MissedPerRule): the runs of its slots that this node did not fire on time,
// and why. A rule's log is kept by the node that decided it (its owner then); it is
// not replicated, and goes when the rule is deleted or disabled.
func (n *Node) MissedSlots(id int64) ([]store.MissedSlot, error) {
	return n.store.MissedSlots(id)
}

// reportInvalid records that rule id's timer does not parse: none of its slots fire.
func (n *Node) reportInvalid(id int64) {
	n.engine.ReportMissed(scheduler.Miss{RuleID: id, Reason: scheduler.MissInvalidSchedule, At: n.cfg.Now()})
}

// refineOwnerChanging tells, among records of fires late by catch-up (node_down),
// those where ownership moved: the rule's fire chain, as the store holds it, says
// another node fired it last, so the slots in between were missed while the rule
// changed hands. It reads the store in one transaction, only when there are such
// records; stepMu is not held (a watermark merged in the driver's current batch and
// not yet written is not seen: the record keeps node_down).
func (d *driver) refineOwnerChanging(ms []store.MissedSlot) {
	var ids []int64
	for _, m := range ms {
		if m.Reason == string(scheduler.MissNodeDown) {
			ids = append(ids, m.RuleID)
		}
	}
	if len(ids) == 0 {
		return
	}
	last, err := d.n.store.LastFirers(ids)
	if err != nil {
		return // kept as node_down: the record is not worth failing the commit for
	}
	self := d.memberCfg.Self.Node
	for i := range ms {
		if ms[i].Reason != string(scheduler.MissNodeDown) {
			continue
		}
		if by, ok := last[ms[i].RuleID]; ok && by.Node != self {
			ms[i].Reason = string(scheduler.MissOwnerChanging)
			ms[i].Detail = "last fired by " + scheduler.Truncate(by.Node, 64)
		}
	}
}

// reportDropped records this node's fires that a verdict dropped (protocol.Drop): the
// slots were fired by another incarnation, or nobody can tell who did. One run per
// rule.
func (n *Node) reportDropped(events []protocol.EventRef, verdict protocol.Verdict) {
	n.engine.ReportMissed(duplicateRuns(events, verdict.String(), n.cfg.Now())...)
}

// reportRefused records fires the store left out of a commit because the rule's
// watermark had passed their slot (a peer's fire stored meanwhile): committed are the
// fires it took.
func (n *Node) reportRefused(recs []store.FireRecord, committed []protocol.EventRef) {
	took := make(map[[2]int64]bool, len(committed))
	for _, r := range committed {
		took[[2]int64{r.Rule, r.Slot}] = true
	}
	var refused []protocol.EventRef
	for _, r := range recs {
		if slot := r.Event.Slot.UnixNano(); !took[[2]int64{r.Event.RuleID, slot}] {
			refused = append(refused, protocol.EventRef{Rule: r.Event.RuleID, Slot: slot})
		}
	}
	n.engine.ReportMissed(duplicateRuns(refused, "watermark_passed", n.cfg.Now())...)
}

// duplicateRuns groups events by rule into duplicate_guard runs.
func duplicateRuns(events []protocol.EventRef, detail string, now time.Time) []scheduler.Miss {
	if len(events) == 0 {
		return nil
	}
	evs := slices.Clone(events)
	slices.SortFunc(evs, func(a, b protocol.EventRef) int {
		return cmp.Or(cmp.Compare(a.Rule, b.Rule), cmp.Compare(a.Slot, b.Slot))
	})
	var out []scheduler.Miss
	for _, e := range evs {
		slot := time.Unix(0, e.Slot).UTC()
		if k := len(out) - 1; k >= 0 && out[k].RuleID == e.Rule {
			out[k].To = slot
			out[k].Count++
			continue
		}
		out = append(out, scheduler.Miss{RuleID: e.Rule, From: slot, To: slot, Count: 1,
			Reason: scheduler.MissDuplicateGuard, At: now, Detail: detail})
	}
	return out
}
