package sim

import (
	"container/heap"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/timerd/timerd/cluster/protocol"
)

// Fixes the simulation's host can leave out, to show that the simulation catches the
// defect each one closes (TestSimCatchesRevertedFixes).
const (
	fixLeaseCheck      = "lease-check"      // the commit path fires every held partition, lease or not
	fixReplicationGate = "replication-gate" // events are delivered at once, replicated or not
	fixGrantWatermarks = "grant-watermarks" // an acquisition ignores the watermarks of the grants
	fixSourceVersions  = "source-versions"  // lifecycle messages apply in arrival order (versioned by arrival)
	fixAnchors         = "anchors"          // a new schedule starts when its message arrives, not when it was made
	fixLeaveWait       = "leave-wait"       // a leaver retires at its budget, fires not yet replicated or not
)

// quietPeriod follows the faulty part: everything heals, and every kept slot must fire.
const quietPeriod = 10 * time.Second

// Run runs one simulated cluster and checks the invariants.
func Run(cfg Config) Result {
	if cfg.Nodes == 0 {
		cfg.Nodes = 3
	}
	if cfg.Expect == 0 {
		cfg.Expect = cfg.Nodes
	}
	if cfg.Rules == 0 {
		cfg.Rules = 20
	}
	if cfg.Partitions == 0 {
		cfg.Partitions = 32
	}
	if cfg.Duration == 0 {
		cfg.Duration = 20 * time.Second
	}
	w := &world{
		cfg:       cfg,
		rng:       rand.New(rand.NewPCG(cfg.Seed, cfg.Seed^0x9e3779b97f4a7c15)),
		parts:     cfg.Partitions,
		cut:       map[[2]int]int{},
		byID:      map[int64]rule{},
		delivered: map[fireID]map[protocol.Incarnation]bool{},
		stats:     map[string]uint64{},
		faulty:    true,
	}
	w.end = int64(cfg.Duration + quietPeriod + cfg.Faults.ExtraQuiet)
	for i := range cfg.Rules {
		r := rule{id: int64(i + 1), created: epoch0 - int64(time.Second)}
		if cfg.Faults.Lifecycle && w.rng.IntN(3) == 0 {
			r.created = epoch0 + int64(time.Second) + w.rng.Int64N(int64(cfg.Duration-5*time.Second))
		}
		if w.rng.IntN(5) == 0 {
			r.phase = max(r.created, epoch0) + w.rng.Int64N(int64(cfg.Duration+quietPeriod/2))
		} else {
			r.period = int64(time.Duration(1+w.rng.IntN(4)) * time.Second)
			r.phase = epoch0 + w.rng.Int64N(r.period) + 1
		}
		if cfg.Faults.Lifecycle && w.rng.IntN(4) == 0 {
			// Disabled while it runs: after every node heard of its creation (a node that
			// hears of the disable first takes the creation as stale and never fires the
			// rule: no slot is owed then), and early enough that every node hears of it.
			lo := max(r.created, epoch0) + int64(maxLifecycleDelay+time.Second)
			if hi := epoch0 + w.end - int64(quietPeriod) - int64(maxLifecycleDelay); hi > lo {
				r.disabled = lo + w.rng.Int64N(hi-lo)
			}
		}
		w.rules = append(w.rules, r)
		w.byID[r.id] = r
	}
	for i := range cfg.Nodes {
		n := &node{w: w, idx: i, name: fmt.Sprintf("n%d", i+1)}
		if cfg.Faults.ClockSkew > 0 {
			n.skew = w.rng.Int64N(2*int64(cfg.Faults.ClockSkew)) - int64(cfg.Faults.ClockSkew)
		}
		n.st = &store{w: w, held: map[int]protocol.Epoch{}, fences: map[string]uint64{}, epochs: map[int]protocol.Epoch{}, wms: map[int64]protocol.Watermark{},
			outbox: map[fireID]protocol.EventRef{}}
		n.st.catalog = map[int64]protocol.Record{}
		for _, r := range w.rules {
			if r.created >= epoch0 {
				continue // it comes by its lifecycle message
			}
			// Every node's catalogue has the rules made before the start, anchored then.
			n.st.wms[r.id] = protocol.Watermark{Rule: r.id, Slot: epoch0}
			trig, params := r.params()
			n.st.catalog[r.id] = protocol.Record{Live: true, Version: time.Unix(0, r.created).UTC(),
				Rule: protocol.Rule{ID: r.id, TriggerRef: trig, Params: params}}
		}
		w.nodes = append(w.nodes, n)
	}
	// Nodes start within the first second, in any order.
	for _, n := range w.nodes {
		w.after(time.Duration(w.rng.Int64N(int64(time.Second))), func() { n.start(); w.scheduleTick(n) })
	}
	w.scheduleFaults()
	if cfg.Faults.Lifecycle {
		w.scheduleLifecycle()
	}
	w.after(cfg.Duration, w.heal)

	for w.q.Len() > 0 {
		e := heap.Pop(&w.q).(*event)
		if e.at > w.end {
			break
		}
		w.now = e.at
		switch e.kind {
		case evTick:
			n := w.nodes[e.node]
			n.tick()
			w.scheduleTick(n)
		case evMessage:
			n := w.nodes[e.node]
			switch {
			case !n.up:
			case n.paused():
				n.inbox = append(n.inbox, e)
			default:
				n.receive(e.msg)
			}
		case evFault:
			e.do()
		}
	}
	w.checkEveryKeptSlotFired()
	w.checkBooks()
	return w.result()
}

func (w *world) scheduleTick(n *node) {
	d := 15*time.Millisecond + time.Duration(w.rng.Int64N(int64(10*time.Millisecond)))
	w.schedule(w.now+int64(d), &event{kind: evTick, node: n.idx})
}

// scheduleFaults draws the run's faults, all within the faulty part.
func (w *world) scheduleFaults() {
	f := w.cfg.Faults
	span := int64(w.cfg.Duration)
	at := func() time.Duration { return time.Duration(w.rng.Int64N(span)) }
	for range f.Partitions {
		start := at()
		length := time.Second + time.Duration(w.rng.Int64N(int64(8*time.Second)))
		w.after(start, func() { w.partition(length) })
	}
	for range f.Pauses {
		n := w.nodes[w.rng.IntN(len(w.nodes))]
		maxLen := f.PauseMaxLen
		if maxLen == 0 {
			maxLen = 6 * time.Second
		}
		length := 300*time.Millisecond + time.Duration(w.rng.Int64N(int64(maxLen)))
		midCommit := w.rng.IntN(2) == 0
		w.after(at(), func() { w.pause(n, length, midCommit) })
	}
	for range f.Crashes {
		n := w.nodes[w.rng.IntN(len(w.nodes))]
		down := 200*time.Millisecond + time.Duration(w.rng.Int64N(int64(5*time.Second)))
		w.after(at(), func() {
			if !n.up {
				return
			}
			n.crash()
			w.after(down, func() {
				if !n.up && !n.departed {
					n.start()
				}
			})
		})
	}
	for range f.Leaves {
		n := w.nodes[w.rng.IntN(len(w.nodes))]
		away := time.Second + time.Duration(w.rng.Int64N(int64(4*time.Second)))
		w.after(at(), func() {
			w.leave(n, func() {
				w.after(away, func() {
					if !n.up && !n.departed {
						n.start()
					}
				})
			})
		})
	}
	for range f.Departures {
		n := w.nodes[w.rng.IntN(len(w.nodes))]
		when := at()
		late := f.AckDelay/2 + time.Duration(w.rng.Int64N(int64(f.AckDelay/2)+1))
		// Its peers answer its fires late from a while before it leaves (a busy
		// machine): fires it committed last are still unacknowledged when the leave's
		// budget is over.
		w.after(max(0, when-slowAcksBefore), func() {
			if n.up && !n.departed {
				n.ackDelay = late
			}
		})
		w.after(when, func() {
			if !n.up || n.paused() || n.leaving || n.departed {
				n.ackDelay = 0 // it does not leave now: its acks come on time again
				return
			}
			n.departed = true // for good: it is never started again
			w.leave(n, nil)
		})
	}
	for range f.APIDown {
		length := time.Second + time.Duration(w.rng.Int64N(int64(4*time.Second)))
		w.after(at(), func() {
			w.apiDown = true
			w.tracef("events API down")
			w.after(length, func() { w.apiDown = false; w.tracef("events API up") })
		})
	}
}

// The leave's bounds, as the node's shutdown has them (cmd/timerd/node: driver.leave
// and settle, with TIMERD_SHUTDOWN_TIMEOUT of 8 s): the hand-over's budget is a quarter
// of it; a node that has handed every partition over but has fires not yet
// acknowledged by a quorum waits on for them, unretired, up to three quarters of it;
// then it flushes its ready events and hands what it could not deliver to the
// partitions' holders.
const (
	leaveBudget    = 2 * time.Second
	leaveWaitUntil = 6 * time.Second // since the leave began
	leaveFlush     = time.Second
	// slowAcksBefore: the acks of a departing node's fires are late from this long
	// before its leave.
	slowAcksBefore = 1500 * time.Millisecond
)

// leave is SIGTERM: the engine stops, the member hands its partitions over and
// retires (forced once the budget is over, unless fires still wait for a quorum),
// then the node delivers what it can, hands the rest over, and exits; then runs after
// the exit, unless the node crashed meanwhile.
func (w *world) leave(n *node, then func()) {
	if !n.up || n.paused() || n.leaving {
		return
	}
	w.tracef("%s leaves", n.name)
	n.leaving, n.waited = true, false
	n.leaves++
	gen, began := n.leaves, w.now
	still := func() bool { return n.up && n.leaving && n.leaves == gen }
	n.apply(n.m.Step(n.time(), protocol.Leave{}))
	exit := func() {
		w.after(leaveFlush, func() {
			if !still() {
				return
			}
			n.handOver()
			w.tracef("%s exits (%d fires not replicated stay in its store)", n.name, n.pendingFires())
			n.up, n.m, n.deliverable, n.leaving = false, nil, nil, false
			if n.departed {
				// It left memberlist: gossip lists it no more.
				for _, o := range w.nodes {
					switch {
					case o.up && o.paused():
						o.knownStale = true
					case o.up:
						o.apply(o.m.Step(o.time(), protocol.Known{Names: w.known(o)}))
					}
				}
			}
			if then != nil {
				then()
			}
		})
	}
	var check func()
	check = func() {
		if !still() {
			return
		}
		if n.m.Retired() {
			exit()
			return
		}
		waited := time.Duration(w.now - began)
		if waited < leaveBudget {
			w.after(20*time.Millisecond, check)
			return
		}
		// Fires still on their way: a forced retirement would strand them in this store,
		// which a node gone for good never offers again. Wait for them, partitions handed
		// over or not (the takeover of those still held waits as long).
		if w.cfg.Faults.DisableFix != fixLeaveWait && n.pendingFires() > 0 && waited < leaveWaitUntil {
			if !n.waited {
				n.waited = true
				w.stats["leaves_waiting_for_fires"]++
			}
			w.after(20*time.Millisecond, check)
			return
		}
		if n.pendingFires() > 0 {
			w.stats["leaves_forced_with_pending_fires"]++
		}
		n.apply(n.m.Step(n.time(), protocol.Leave{Force: true}))
		exit()
	}
	w.after(20*time.Millisecond, check)
}

// partition cuts the nodes into two groups for a while.
func (w *world) partition(length time.Duration) {
	var a, b []int
	for i := range w.nodes {
		if w.rng.IntN(2) == 0 {
			a = append(a, i)
		} else {
			b = append(b, i)
		}
	}
	for _, i := range a {
		for _, j := range b {
			w.cut[[2]int{i, j}]++
			w.cut[[2]int{j, i}]++
		}
	}
	w.tracef("PARTITION %v | %v for %v", names(w, a), names(w, b), length)
	w.after(length, func() {
		for _, i := range a {
			for _, j := range b {
				w.cut[[2]int{i, j}]--
				w.cut[[2]int{j, i}]--
			}
		}
		w.tracef("partition %v | %v healed", names(w, a), names(w, b))
	})
}

func names(w *world, idx []int) []string {
	out := make([]string, len(idx))
	for k, i := range idx {
		out[k] = w.nodes[i].name
	}
	return out
}

// pause stops a node (SIGSTOP); midCommit pauses it between the lease check of its next
// due fires and their commit, which lands when it wakes.
func (w *world) pause(n *node, length time.Duration, midCommit bool) {
	if !n.up || n.paused() {
		return
	}
	if midCommit {
		n.pending = n.due()
	}
	n.pausedUntil = w.now + int64(length)
	w.tracef("%s PAUSED for %v (mid-commit: %d fires)", n.name, length, len(n.pending))
}

// heal ends the faulty part: the network heals, the API comes back, every node runs.
func (w *world) heal() {
	w.faulty = false
	clear(w.cut)
	w.apiDown = false
	w.tracef("quiet period: everything heals")
	for _, n := range w.nodes {
		if !n.up && !n.departed {
			n.start()
		}
	}
}

// delivered records that an event reached the API, and that no other fire of its slot did.
func (w *world) recordDelivery(n *node, ev protocol.EventRef) {
	k := fireID{ev.Rule, ev.Slot}
	by := w.delivered[k]
	if by == nil {
		by = map[protocol.Incarnation]bool{}
		w.delivered[k] = by
	}
	if !by[ev.Firer] && len(by) > 0 {
		w.violate("I1: rule %d slot %s delivered by %s (fired by %s) and before by a fire of %v",
			ev.Rule, slotString(ev.Slot), n.m.Self(), ev.Firer, keysOf(by))
	}
	by[ev.Firer] = true
}

// checkExclusive: when n commits a fire of partition p, no other node may fire p now.
func (w *world) checkExclusive(n *node, p int, ev protocol.EventRef) {
	t := n.time()
	for _, o := range w.nodes {
		if o == n || !o.up || o.m == nil {
			continue
		}
		if _, ok := o.m.MayFire(protocol.Time{Boot: t.Boot, Wall: w.wall(o)}, p); ok {
			w.violate("I3: %s commits rule %d slot %s of partition %d while %s may fire it too",
				n.m.Self(), ev.Rule, slotString(ev.Slot), p, o.m.Self())
		}
	}
}

// checkEveryKeptSlotFired: every slot of a rule, from its creation until the end less a
// margin (or until a second before it was disabled), reached the API; and no slot a
// good while after its rule was disabled (every node had heard) did.
func (w *world) checkEveryKeptSlotFired() {
	missing := 0
	for _, r := range w.rules {
		from, to := r.keptWindow(w)
		for s, ok := r.slotAfter(from); ok && s <= to; s, ok = r.slotAfter(s) {
			if len(w.delivered[fireID{r.id, s}]) == 0 {
				missing++
				if missing <= 5 {
					w.violate("I2: rule %d slot %s never delivered", r.id, slotString(s))
				}
			}
		}
		if r.disabled == 0 {
			continue
		}
		after := r.disabled + int64(maxLifecycleDelay) + int64(time.Second)
		for s, ok := r.slotAfter(after); ok && s <= epoch0+w.end; s, ok = r.slotAfter(s) {
			if len(w.delivered[fireID{r.id, s}]) > 0 {
				w.violate("I4: rule %d disabled at %s: slot %s delivered", r.id, slotString(r.disabled), slotString(s))
			}
		}
	}
	if missing > 5 {
		w.violate("I2: %d slots never delivered in all", missing)
	}
}

// keptWindow is the slots of r that must fire: after its creation (or the start), up
// to 4 s before the end; for a rule disabled at d, up to d less the longest time the
// faults can leave no node with a lease (a slot due in an outage fires late, and a rule
// disabled meanwhile fires no catch-up).
func (r rule) keptWindow(w *world) (from, to int64) {
	from = max(epoch0, r.created)
	to = epoch0 + w.end - int64(4*time.Second)
	if r.disabled != 0 {
		to = min(to, r.disabled-int64(outageBound))
	}
	return from, to
}

// outageBound bounds how long the faults of a run can leave no node able to fire a
// partition: a 9 s partition, a 6 s pause or 5 s crash, then a fence and an acquisition.
const outageBound = 15 * time.Second

func (w *world) result() Result {
	r := Result{Seed: w.cfg.Seed, Violations: w.violations, Trace: w.trace, Fires: w.committed,
		Delivered: len(w.delivered), Stats: w.stats}
	for _, ru := range w.rules {
		from, to := ru.keptWindow(w)
		for s, ok := ru.slotAfter(from); ok && s <= to; s, ok = ru.slotAfter(s) {
			r.Expected++
		}
	}
	for _, n := range w.nodes {
		if n.m != nil {
			st := n.m.Stats()
			r.Stats["fenced"] += st.Fenced
			r.Stats["reincarnations"] += st.Reincarnations
			r.Stats["acquired"] += st.Acquired
			r.Stats["released"] += st.Released
			for v, c := range st.Verdicts {
				r.Stats["verdict_"+v.String()] += c
			}
		}
	}
	return r
}

func slotString(ns int64) string {
	return fmt.Sprintf("+%.3fs", float64(ns-epoch0)/1e9)
}

func keysOf(m map[protocol.Incarnation]bool) []string {
	var out []string
	for k := range m {
		out = append(out, k.String())
	}
	return out
}
