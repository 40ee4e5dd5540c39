// Package sim runs whole timerd clusters in one goroutine on a simulated clock,
// network and disk, from a seed, and checks the fire-once invariants of
// docs/protocol.md over every run. The nodes run the real protocol state machine
// (cluster/protocol); what is simulated is everything around it: time, messages,
// the store, the engine and the events API. A failing seed replays exactly.
package sim

import (
	"container/heap"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"slices"
	"strings"
	"time"

	"github.com/timerd/timerd/cluster/protocol"
)

// Faults says how hostile a run is; the zero value is a quiet network.
type Faults struct {
	Drop       float64       // probability that a message is lost
	MaxDelay   time.Duration // messages take up to this long (uniform), and a tenth of them up to 10×
	Partitions int           // network partitions during the run (each splits the nodes in two, then heals)
	Pauses     int           // nodes paused (SIGSTOP), 0.3–6 s each, half of them mid-commit
	Crashes    int           // nodes killed and restarted 0.2–5 s later
	StoreFail  float64       // probability that a store commit fails
	APIDown    int           // outages of the events API, 1–5 s each
	ClockSkew  time.Duration // each node's wall clock is off by up to this much
	DisableFix string        // for tests: a fix to turn off (see run.go)
	// Lifecycle: a third of the rules are created during the run and some rules are
	// disabled; each node receives each change through its own durable queue, late (up
	// to maxLifecycleDelay), sometimes twice, in any order.
	Lifecycle  bool
	ExtraQuiet time.Duration // added to the quiet period at the end
	Leaves     int           // graceful leaves and returns
	// Departures: graceful leaves for good (the node never starts again), each with
	// the acks of its last fires late, by AckDelay/2 to AckDelay, from slowAcksBefore its
	// leave on.
	Departures  int
	AckDelay    time.Duration
	PauseMaxLen time.Duration
}

// Config of one run.
type Config struct {
	Seed       uint64
	Nodes      int
	Expect     int // default Nodes
	Replicas   int // protocol.MemberConfig.Replicas: 0, a quorum
	Rules      int
	Partitions int           // ring partitions, default 32
	Duration   time.Duration // of the faulty part; then a quiet period heals everything
	Faults     Faults
	Trace      bool // keep every step, not only the last ones
	traceRule  int64
}

// Result of one run.
type Result struct {
	Seed       uint64
	Violations []string
	Trace      []string // the last steps (all of them with Config.Trace)
	Fires      int      // fires committed
	Delivered  int      // distinct slots delivered
	Expected   int      // slots the rules had in the checked window
	Stats      map[string]uint64
}

// Failed reports whether an invariant broke.
func (r Result) Failed() bool { return len(r.Violations) > 0 }

func (r Result) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "seed %d: %d fires, %d slots delivered of %d expected", r.Seed, r.Fires, r.Delivered, r.Expected)
	for _, v := range r.Violations {
		fmt.Fprintf(&b, "\n  VIOLATION: %s", v)
	}
	return b.String()
}

// epoch0 is the simulated wall clock at the start of a run.
var epoch0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano()

type rule struct {
	id     int64
	period int64 // ns; 0 for a one-shot
	phase  int64 // the first slot (Unix ns)
	// Lifecycle (Faults.Lifecycle): created in Attune at created (Unix ns; before the
	// start for the rules every node has at start), disabled at disabled (0: never).
	created, disabled int64
}

// params is the rule's trigger_params for the rule book.
func (r rule) params() (string, []byte) {
	if r.period == 0 {
		return "core.datetimetimer", []byte(fmt.Sprintf(`{"fire_at":%q}`, time.Unix(0, r.phase).UTC().Format(time.RFC3339Nano)))
	}
	return "core.intervaltimer", []byte(fmt.Sprintf(`{"interval":%d,"unit":"seconds","start_at":%q}`,
		r.period/int64(time.Second), time.Unix(0, r.phase).UTC().Format(time.RFC3339Nano)))
}

// slotAfter is the rule's first slot after t, false if none.
func (r rule) slotAfter(t int64) (int64, bool) {
	if r.period == 0 {
		if r.phase > t {
			return r.phase, true
		}
		return 0, false
	}
	if t < r.phase {
		return r.phase, true
	}
	k := (t-r.phase)/r.period + 1
	return r.phase + k*r.period, true
}

type eventKind uint8

const (
	evTick eventKind = iota
	evMessage
	evFault
)

type event struct {
	at   int64 // simulated boot time, ns since the start
	seq  uint64
	kind eventKind
	node int
	msg  protocol.Message
	from int
	do   func()
}

type queue []*event

func (q queue) Len() int { return len(q) }
func (q queue) Less(i, j int) bool {
	if q[i].at != q[j].at {
		return q[i].at < q[j].at
	}
	return q[i].seq < q[j].seq
}
func (q queue) Swap(i, j int) { q[i], q[j] = q[j], q[i] }
func (q *queue) Push(x any)   { *q = append(*q, x.(*event)) }
func (q *queue) Pop() any {
	old := *q
	e := old[len(old)-1]
	*q = old[:len(old)-1]
	return e
}

// fireID is one fire: a slot of a rule as committed by one incarnation.
type fireID struct {
	rule, slot int64
}

type world struct {
	cfg   Config
	rng   *rand.Rand
	now   int64 // boot time, ns since the start
	q     queue
	seq   uint64
	nodes []*node
	rules []rule
	byID  map[int64]rule
	parts int

	cut       map[[2]int]int // links cut, by how many partitions
	apiDown   bool
	faulty    bool // in the faulty part of the run
	end       int64
	committed int
	// delivered: per slot, the firers whose fire of it reached the API.
	delivered  map[fireID]map[protocol.Incarnation]bool
	violations []string
	trace      []string
	stats      map[string]uint64
}

func (w *world) wall(n *node) int64 { return epoch0 + w.now + n.skew }

func (w *world) tracef(format string, args ...any) {
	line := fmt.Sprintf("%8.3fs ", float64(w.now)/1e9) + fmt.Sprintf(format, args...)
	w.trace = append(w.trace, line)
	if !w.cfg.Trace && len(w.trace) > 400 {
		w.trace = slices.Delete(w.trace, 0, 200)
	}
}

func (w *world) violate(format string, args ...any) {
	v := fmt.Sprintf("%.3fs: ", float64(w.now)/1e9) + fmt.Sprintf(format, args...)
	if len(w.violations) < 20 {
		w.violations = append(w.violations, v)
	}
	w.tracef("VIOLATION %s", v)
}

func (w *world) schedule(at int64, e *event) {
	w.seq++
	e.at, e.seq = at, w.seq
	heap.Push(&w.q, e)
}

func (w *world) after(d time.Duration, f func()) {
	w.schedule(w.now+int64(d), &event{kind: evFault, do: f})
}

func hash64(parts ...any) uint64 {
	h := fnv.New64a()
	for _, p := range parts {
		fmt.Fprint(h, p, "/")
	}
	return h.Sum64()
}

// rendezvous is the simulation's ring: each partition goes to the member with the
// highest hash of (partition, name). Deterministic, and only the partitions of a
// member that joins or leaves move.
type rendezvous struct {
	owner []string
}

func newRendezvous(members []string, parts int) rendezvous {
	r := rendezvous{owner: make([]string, parts)}
	for p := range parts {
		var best uint64
		for _, m := range members {
			if h := hash64(p, m); r.owner[p] == "" || h > best {
				r.owner[p], best = m, h
			}
		}
	}
	return r
}

func (r rendezvous) Owner(p int) string { return r.owner[p] }

func (w *world) partitionOf(rule int64) int { return int(hash64("rule", rule) % uint64(w.parts)) }

func (w *world) delay() int64 {
	d := int64(w.cfg.Faults.MaxDelay)
	if d <= 0 {
		d = int64(time.Millisecond)
	}
	x := w.rng.Int64N(d) + int64(50*time.Microsecond)
	if w.faulty && w.rng.IntN(10) == 0 {
		x *= 10
	}
	return x
}

// send puts a message on the simulated network.
func (w *world) send(from int, to string, msg protocol.Message) {
	j := slices.IndexFunc(w.nodes, func(n *node) bool { return n.name == to })
	if j < 0 {
		return
	}
	if w.faulty && (w.cut[[2]int{from, j}] > 0 || w.rng.Float64() < w.cfg.Faults.Drop) {
		w.stats["messages_lost"]++
		return
	}
	w.stats["messages"]++
	if w.cfg.Trace {
		switch m := msg.(type) {
		case protocol.Acquire:
			w.tracef("  %s -> %s acquire#%d %v", w.nodes[from].name, to, m.ID, m.Parts)
		case protocol.Grant:
			w.tracef("  %s -> %s grant#%d granted %v refused %v", m.From, to, m.ID, m.Granted, m.Refused)
		case protocol.Offer:
			for _, ev := range m.Events {
				if ev.Rule == w.cfg.traceRule {
					w.tracef("  %s -> %s offer rule %d slot %s", m.From, to, ev.Rule, slotString(ev.Slot))
				}
			}
		case protocol.OfferReply:
			for i, ev := range m.Events {
				if ev.Rule == w.cfg.traceRule {
					w.tracef("  %s -> %s verdict rule %d slot %s: %v", m.From, to, ev.Rule, slotString(ev.Slot), m.Verdicts[i])
				}
			}
		}
	}
	w.stats[fmt.Sprintf("msg_%T", msg)]++
	d := w.delay()
	if _, ack := msg.(protocol.FiredAck); ack {
		d += int64(w.nodes[j].ackDelay)
	}
	w.schedule(w.now+d, &event{kind: evMessage, node: j, from: from, msg: msg})
}
