package sim

import (
	"time"

	"github.com/timerd/timerd/cluster/protocol"
	"github.com/timerd/timerd/scheduler"
)

// maxLifecycleDelay bounds how late a lifecycle message reaches a running node.
const maxLifecycleDelay = 8 * time.Second

// change is a lifecycle message as Attune publishes it.
type change struct {
	rule    rule
	enabled bool
	version int64 // Unix ns
}

// scheduleLifecycle publishes the rules' creations and disables: each node gets each
// message once or twice, 0–3 s late (a tenth up to maxLifecycleDelay), so a node may
// see a disable before the creation it follows, or a creation again after it.
func (w *world) scheduleLifecycle() {
	for _, r := range w.rules {
		var cs []change
		if r.created >= epoch0 {
			cs = append(cs, change{rule: r, enabled: true, version: r.created})
		}
		if r.disabled != 0 {
			cs = append(cs, change{rule: r, enabled: false, version: r.disabled})
		}
		for _, c := range cs {
			for _, n := range w.nodes {
				copies := 1
				if w.rng.IntN(10) == 0 {
					copies = 2 // Attune publishes enables unconditionally
				}
				// A repeated enable that arrives after the rule's disable (an API
				// replica that published late): stale, it must change nothing.
				late := c.enabled && r.disabled != 0 && w.rng.IntN(3) == 0
				if late {
					copies = 2
				}
				for i := range copies {
					delay := time.Duration(w.rng.Int64N(int64(3 * time.Second)))
					if w.rng.IntN(10) == 0 {
						delay = time.Duration(w.rng.Int64N(int64(maxLifecycleDelay)))
					}
					if late && i == 1 {
						// After the disable, however late that came.
						delay = time.Duration(r.disabled-c.version) + maxLifecycleDelay + time.Duration(w.rng.Int64N(int64(time.Second)))
					}
					at := time.Duration(c.version-epoch0) + delay
					w.after(at-time.Duration(w.now), func() { n.queueChange(c) })
				}
			}
		}
	}
}

// queueChange puts a message on the node's durable queue; a running node applies it
// at once, a down or paused one when it runs again.
func (n *node) queueChange(c change) {
	n.st.queue = append(n.st.queue, c)
	n.applyQueue()
}

// applyQueue applies the queued messages through the rule book, as the node's intake
// does: by source version, anchors for new schedules.
func (n *node) applyQueue() {
	if !n.up || n.paused() {
		return
	}
	w := n.w
	for _, c := range n.st.queue {
		trig, params := c.rule.params()
		id := c.rule.id
		rec := n.st.catalog[id]
		if !rec.Live {
			// What the cluster fired of it, as this store knows: a rule new here continues after it.
			if wm, ok := n.st.wms[id]; ok && wm.Slot != protocol.NoSlot {
				rec.Watermark = scheduler.Watermark{Slot: time.Unix(0, wm.Slot).UTC(), Count: wm.Count}
			}
		}
		version := c.version
		if w.cfg.Faults.DisableFix == fixSourceVersions {
			version = w.wall(n) // the node's own time at arrival, as before the rule book
		}
		d := protocol.Book{}.Apply(rec, protocol.Change{Rule: protocol.Rule{ID: id, TriggerRef: trig, Params: params},
			Enabled: c.enabled, Version: time.Unix(0, version).UTC()}, time.Unix(0, w.wall(n)).UTC())
		if d.Result == protocol.Stale {
			w.stats["lifecycle_stale"]++
		}
		if !d.Write {
			continue
		}
		n.st.catalog[id] = d.Record
		if d.Reschedule && d.Record.Live {
			base := d.Record.Watermark.Slot.UnixNano()
			if w.cfg.Faults.DisableFix == fixAnchors {
				base = max(base, w.wall(n)) // from the moment of ingestion
			}
			wm, ok := n.st.wms[id]
			if !ok {
				wm = protocol.Watermark{Rule: id, Slot: protocol.NoSlot}
			}
			if wm.Slot < base {
				wm.Slot, wm.Count = base, max(wm.Count, d.Record.Watermark.Count)
			}
			n.st.wms[id] = wm
		}
		if id == w.cfg.traceRule {
			w.tracef("%s applies %s of rule %d (version %s): %s", n.name, map[bool]string{true: "enable", false: "disable"}[c.enabled],
				id, slotString(c.version), d.Result)
		}
	}
	n.st.queue = n.st.queue[:0]
}

// live reports whether the node's rule book holds rule id enabled.
func (n *node) live(id int64) bool { return n.st.catalog[id].Live }

// checkBooks: at the end every node's rule book holds each rule at its newest version
// (I4): enabled unless it was disabled.
func (w *world) checkBooks() {
	if !w.cfg.Faults.Lifecycle {
		return
	}
	for _, n := range w.nodes {
		if !n.up {
			continue
		}
		for _, r := range w.rules {
			rec := n.st.catalog[r.id]
			want := max(r.created, r.disabled)
			if !rec.Version.Equal(time.Unix(0, want).UTC()) || rec.Live != (r.disabled == 0) {
				w.violate("I4: %s holds rule %d at version %s live %v; want version %s live %v", n.name, r.id,
					slotString(rec.Version.UnixNano()), rec.Live, slotString(want), r.disabled == 0)
			}
		}
	}
}
