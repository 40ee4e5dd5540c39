package sim

import (
	"cmp"
	"maps"
	"slices"
	"time"

	"github.com/timerd/timerd/cluster/protocol"
)

// store is a node's durable state: what survives a crash.
type store struct {
	w      *world
	inc    uint64
	held   map[int]protocol.Epoch
	fences map[string]uint64
	epochs map[int]protocol.Epoch
	// The rule book and the node's lifecycle queue (durable, like a RabbitMQ queue).
	catalog map[int64]protocol.Record
	queue   []change
	wms     map[int64]protocol.Watermark
	outbox  map[fireID]protocol.EventRef
}

func (s *store) Watermark(rule int64) (protocol.Watermark, bool) {
	wm, ok := s.wms[rule]
	return wm, ok
}

// FiredWatermarks are those of fired rules only, as the node's store reads them.
func (s *store) FiredWatermarks(parts []int) []protocol.Watermark {
	want := map[int]bool{}
	for _, p := range parts {
		want[p] = true
	}
	var out []protocol.Watermark
	for _, r := range s.w.rules {
		if want[s.w.partitionOf(r.id)] {
			if wm, ok := s.wms[r.id]; ok && wm.Fired() {
				out = append(out, wm)
			}
		}
	}
	return out
}

func (s *store) merge(wm protocol.Watermark) {
	if cur, ok := s.wms[wm.Rule]; ok {
		wm = protocol.Merge(cur, wm)
	}
	s.wms[wm.Rule] = wm
}

// pendingFire is a fire checked against the lease and not committed yet: a node paused
// between the check and the commit commits it when it wakes.
type pendingFire struct {
	ref   protocol.EventRef
	epoch protocol.Epoch
}

type node struct {
	w    *world
	idx  int
	name string
	skew int64 // wall clock offset, ns

	up          bool
	leaving     bool          // shutting down: fires nothing, hands over, delivers
	leaves      int           // leaves begun: a leave's timers act only on their own
	waited      bool          // this leave waited past its budget for fires to reach a quorum
	departed    bool          // left for good: never started again
	ackDelay    time.Duration // its peers' acks of its fires are this late (Faults.AckDelay)
	knownStale  bool          // gossip changed while it was paused: told when it runs again
	pausedUntil int64
	inbox       []*event // messages that arrived while paused
	pending     []pendingFire

	m           *protocol.Member
	st          *store
	deliverable map[fireID]protocol.EventRef
}

// bootOffset is the boot clock at the start of a run: a machine up for an hour, so
// that a time left at zero by mistake is an hour old, as on a real node.
const bootOffset = time.Hour

func (n *node) time() protocol.Time {
	return protocol.Time{Boot: bootOffset + time.Duration(n.w.now), Wall: n.w.wall(n)}
}

func (n *node) paused() bool { return n.pausedUntil > n.w.now }

// start begins a new incarnation on the node's store: it holds nothing, and offers
// every event its outbox still has.
func (n *node) start() {
	w := n.w
	n.st.inc++
	cfg := protocol.MemberConfig{
		Self:        protocol.Incarnation{Node: n.name, N: n.st.inc},
		Expect:      w.cfg.Expect,
		Replicas:    w.cfg.Replicas,
		Partitions:  w.parts,
		PartitionOf: w.partitionOf,
		Ring:        func(members []string) protocol.Ring { return newRendezvous(members, w.parts) },
		Store:       n.st,
	}
	m, err := protocol.NewMember(cfg, protocol.Durable{Held: n.st.held, Fences: n.st.fences, Epochs: n.st.epochs})
	if err != nil {
		panic(err) // a bug of the simulation's config
	}
	clear(n.st.held)
	n.m, n.up, n.pausedUntil, n.pending, n.inbox, n.leaving = m, true, 0, nil, nil, false
	n.deliverable = map[fireID]protocol.EventRef{}
	w.tracef("%s starts as %s", n.name, m.Self())
	n.apply(m.Step(n.time(), protocol.Known{Names: w.known(n)}))
	n.applyQueue()
	n.apply(m.Step(n.time(), protocol.Ready{}))
	if len(n.st.outbox) > 0 {
		evs := slices.SortedFunc(maps.Values(n.st.outbox), byRuleSlot)
		n.apply(m.Step(n.time(), protocol.Unsettled{Events: evs}))
	}
}

func byRuleSlot(a, b protocol.EventRef) int {
	if a.Rule != b.Rule {
		return cmp.Compare(a.Rule, b.Rule)
	}
	return cmp.Compare(a.Slot, b.Slot)
}

// crash loses everything not committed.
func (n *node) crash() {
	n.w.tracef("%s CRASHES (was %s)", n.name, n.m.Self())
	n.up, n.m, n.pending, n.inbox, n.deliverable = false, nil, nil, nil, nil
	n.pausedUntil, n.leaving = 0, false
}

func (n *node) tick() {
	if !n.up || n.paused() {
		return
	}
	n.resume()
	n.apply(n.m.Step(n.time(), protocol.Tick{}))
	if !n.leaving {
		n.fire()
	}
	n.deliver()
}

// resume carries out what a pause held back: the commit it interrupted, then the
// messages that waited.
func (n *node) resume() {
	if n.knownStale {
		n.knownStale = false
		n.apply(n.m.Step(n.time(), protocol.Known{Names: n.w.known(n)}))
	}
	if len(n.st.queue) > 0 {
		n.applyQueue()
	}
	if len(n.pending) > 0 {
		pend := n.pending
		n.pending = nil
		n.commit(pend)
	}
	for len(n.inbox) > 0 && n.up && !n.paused() {
		e := n.inbox[0]
		n.inbox = n.inbox[1:]
		n.receive(e.msg)
	}
}

func (n *node) receive(msg protocol.Message) {
	n.apply(n.m.Step(n.time(), protocol.Receive{Msg: msg}))
}

// due is the fires of the held partitions due now, each checked against the lease.
func (n *node) due() []pendingFire {
	w := n.w
	t := n.time()
	var out []pendingFire
	for _, r := range w.rules {
		if !n.live(r.id) {
			continue
		}
		p := w.partitionOf(r.id)
		e, ok := n.m.MayFire(t, p)
		if w.cfg.Faults.DisableFix == fixLeaseCheck && !ok && n.holds(p) {
			// The commit path without its lease check: it fires what it holds.
			e, ok = n.m.Held()[p], true
			for _, due := range n.dueOf(r) {
				w.violate("I3: %s begins a commit of rule %d slot %s without a lease", n.m.Self(), r.id, slotString(due))
			}
		}
		if !ok {
			continue
		}
		wm := n.st.wms[r.id]
		for range 100 { // fire_all, capped per tick like the engine's catch-up
			next, ok := r.slotAfter(wm.Slot)
			if !ok || next > t.Wall {
				break
			}
			out = append(out, pendingFire{ref: protocol.EventRef{Rule: r.id, Prev: wm.Slot, Slot: next,
				Count: wm.Count + 1, Firer: n.m.Self()}, epoch: e})
			wm.Slot, wm.Count = next, wm.Count+1
		}
	}
	return out
}

// dueOf is the rule's slots due now after its watermark.
func (n *node) dueOf(r rule) []int64 {
	var out []int64
	wm := n.st.wms[r.id]
	for next, ok := r.slotAfter(wm.Slot); ok && next <= n.w.wall(n) && len(out) < 100; next, ok = r.slotAfter(next) {
		out = append(out, next)
	}
	return out
}

func (n *node) holds(p int) bool {
	_, ok := n.m.Held()[p]
	return ok
}

func (n *node) fire() {
	if f := n.due(); len(f) > 0 {
		n.commit(f)
	}
}

// commit makes fires durable (one transaction, which may fail), checks that nobody else
// may fire their partitions now, and hands them to the member.
func (n *node) commit(fires []pendingFire) {
	w := n.w
	if w.faulty && w.rng.Float64() < w.cfg.Faults.StoreFail {
		w.stats["store_failures"]++
		return
	}
	refs := make([]protocol.EventRef, 0, len(fires))
	for _, f := range fires {
		ev := f.ref
		wm := n.st.wms[ev.Rule]
		if ev.Slot <= wm.Slot {
			continue // decided meanwhile (a late verdict, a merge)
		}
		ev.Prev = wm.Slot
		wm.Chain = wm.Chain.Extend(wm.Slot, ev.Slot, ev.Firer, f.epoch)
		wm.Slot, wm.Count = ev.Slot, max(wm.Count+1, ev.Count)
		ev.Count = wm.Count
		n.st.wms[ev.Rule] = wm
		n.st.outbox[fireID{ev.Rule, ev.Slot}] = ev
		refs = append(refs, ev)
		if ev.Rule == w.cfg.traceRule {
			w.tracef("%s commits rule %d slot %s (partition %d epoch %v) chain %v", n.m.Self(), ev.Rule, slotString(ev.Slot), w.partitionOf(ev.Rule), f.epoch, wm.Chain)
		}
		w.committed++
		if _, ok := n.m.MayFire(n.time(), w.partitionOf(ev.Rule)); ok {
			// A commit that ended after the lease lapsed (a pause between the check and
			// the commit) is not delivered by its node: only the others must be exclusive.
			w.checkExclusive(n, w.partitionOf(ev.Rule), ev)
		}
	}
	if len(refs) == 0 {
		return
	}
	if w.cfg.Faults.DisableFix == fixReplicationGate {
		for _, ev := range refs {
			n.deliverable[fireID{ev.Rule, ev.Slot}] = ev
		}
	}
	n.apply(n.m.Step(n.time(), protocol.Committed{Events: refs}))
}

// deliver posts the deliverable events while the API is up (each POST fails now and
// then), and records which fire reached the API.
func (n *node) deliver() {
	w := n.w
	if w.apiDown {
		return
	}
	keys := slices.SortedFunc(maps.Keys(n.deliverable), func(a, b fireID) int {
		if a.rule != b.rule {
			return cmp.Compare(a.rule, b.rule)
		}
		return cmp.Compare(a.slot, b.slot)
	})
	for _, k := range keys {
		ev := n.deliverable[k]
		if _, ok := n.st.outbox[k]; !ok {
			delete(n.deliverable, k)
			continue
		}
		if w.faulty && w.rng.IntN(20) == 0 {
			continue // a 503: tried again on the next tick
		}
		if ev.Rule == w.cfg.traceRule {
			w.tracef("%s delivers rule %d slot %s fired by %s", n.m.Self(), ev.Rule, slotString(ev.Slot), ev.Firer)
		}
		w.recordDelivery(n, ev)
		delete(n.deliverable, k)
		delete(n.st.outbox, k)
	}
}

// known is what gossip lists to n: every other node but those that left for good (a
// node that leaves memberlist is no longer listed; one down for a while is kept, as
// the simulation always has).
func (w *world) known(n *node) []string {
	var out []string
	for _, o := range w.nodes {
		if o != n && !o.departed {
			out = append(out, o.name)
		}
	}
	return out
}

// pendingFires is how many of the outbox's fires wait for a quorum's acks (not yet
// deliverable): the node's store.PendingLen.
func (n *node) pendingFires() int {
	c := 0
	for k := range n.st.outbox {
		if _, ok := n.deliverable[k]; !ok {
			c++
		}
	}
	return c
}

// handOver gives the deliverable events a leaving node could not deliver (the API
// down) to the members that now hold their partitions, as the node's Handover does.
func (n *node) handOver() {
	for k, ev := range n.deliverable {
		for _, o := range n.w.nodes {
			if o == n || !o.up || o.m == nil || !o.holds(n.w.partitionOf(k.rule)) {
				continue
			}
			o.st.outbox[k] = ev
			o.deliverable[k] = ev
			delete(n.st.outbox, k)
			delete(n.deliverable, k)
			n.w.stats["handed_over"]++
			break
		}
	}
}

// apply carries out a member's effects, in order.
func (n *node) apply(effects []protocol.Effect) {
	w := n.w
	for _, e := range effects {
		switch e := e.(type) {
		case protocol.Send:
			w.send(n.idx, e.To, e.Msg)
		case protocol.StartFiring:
			if w.cfg.Faults.DisableFix != fixGrantWatermarks {
				for _, wm := range e.Watermarks {
					n.st.merge(wm)
				}
			}
			for p, ep := range e.Parts {
				n.st.held[p] = ep
			}
			w.tracef("%s holds %v", n.m.Self(), slices.Sorted(maps.Keys(e.Parts)))
		case protocol.StopFiring:
			for _, p := range e.Parts {
				delete(n.st.held, p)
			}
			w.tracef("%s releases %v", n.m.Self(), e.Parts)
		case protocol.SaveWatermarks:
			for _, wm := range e.Watermarks {
				if wm.Rule == w.cfg.traceRule {
					w.tracef("%s saves watermark of rule %d: %s chain %v", n.name, wm.Rule, slotString(wm.Slot), wm.Chain)
				}
				n.st.merge(wm)
			}
		case protocol.Deliverable:
			for _, ev := range e.Events {
				if ev.Rule == w.cfg.traceRule {
					w.tracef("%s may deliver rule %d slot %s fired by %s", n.name, ev.Rule, slotString(ev.Slot), ev.Firer)
				}
				k := fireID{ev.Rule, ev.Slot}
				if _, ok := n.st.outbox[k]; ok {
					n.deliverable[k] = ev
				}
			}
		case protocol.Drop:
			for _, ev := range e.Events {
				if ev.Rule == w.cfg.traceRule {
					w.tracef("%s drops rule %d slot %s fired by %s: %s", n.name, ev.Rule, slotString(ev.Slot), ev.Firer, e.Verdict)
				}
				k := fireID{ev.Rule, ev.Slot}
				delete(n.st.outbox, k)
				delete(n.deliverable, k)
			}
			w.stats["dropped_"+e.Verdict.String()] += uint64(len(e.Events))
			w.tracef("%s drops %d events: %s", n.name, len(e.Events), e.Verdict)
		case protocol.Reincarnate:
			n.st.inc = e.Self.N
			w.tracef("%s is fenced: now %s", n.name, e.Self)
		case protocol.SaveEpochs:
			for p, e := range e.Epochs {
				if n.st.epochs[p].Less(e) {
					n.st.epochs[p] = e
				}
			}
		case protocol.Fence:
			n.st.fences[e.Node] = max(n.st.fences[e.Node], e.Upto)
		case protocol.Log:
			w.tracef("%s log: %s %v", n.name, e.Msg, e.Attrs)
		}
	}
}
