package protocol

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"time"
)

// Defaults of MemberConfig (docs/protocol.md, "Parameters").
const (
	DefaultHeartbeat   = 250 * time.Millisecond
	DefaultLease       = 1500 * time.Millisecond
	DefaultFenceMargin = 500 * time.Millisecond
	DefaultRetry       = 500 * time.Millisecond
	DefaultMaxRecords  = 50
)

// Ring names the owner of each partition in one view.
type Ring interface {
	Owner(partition int) string
}

// Store is what a member reads of its node's store. The host applies the member's
// effects to it before the next Step.
type Store interface {
	// Watermark is a rule's watermark, if the store has one.
	Watermark(rule int64) (Watermark, bool)
	// FiredWatermarks are the watermarks of the rules of the partitions that tell of a
	// fire (a count or a chain); it may return others too, which the member ignores. A
	// rule never fired has its anchor for watermark, which every member derives from
	// the rule: a grant, a store copy and an acquisition's newest epoch need none.
	FiredWatermarks(parts []int) []Watermark
}

// MemberConfig configures a Member.
type MemberConfig struct {
	Self       Incarnation
	Expect     int // the expected cluster size N; 1 for a single node
	Partitions int
	// PartitionOf maps a rule to its partition.
	PartitionOf func(rule int64) int
	// Ring builds the ring of a member set (sorted names, self included).
	Ring  func(members []string) Ring
	Store Store

	Heartbeat   time.Duration // R
	Lease       time.Duration // L
	FenceMargin time.Duration // M
	Retry       time.Duration // re-send of unanswered acquisitions, fires and offers
	// SkewAllowance bounds how far ahead of this node's wall clock a fired slot may be.
	SkewAllowance time.Duration
	MaxRecords    int // fire records in one Fired message
	// Replicas is how many stores, the firer's included, hold a fire before it is
	// delivered, when that is fewer than a quorum: W = min(Q, Replicas); 0 means Q.
	// A fire is sent to W − 1 members (the acks needed; a spare while one of them is
	// quiet), and an acquisition reads N − W + 1 stores (docs/protocol.md §6). The
	// same on every member: heartbeats carry it, and a mismatch is logged.
	Replicas int
}

func (c *MemberConfig) setDefaults() {
	if c.Heartbeat == 0 {
		c.Heartbeat = DefaultHeartbeat
	}
	if c.Lease == 0 {
		c.Lease = DefaultLease
	}
	if c.FenceMargin == 0 {
		c.FenceMargin = DefaultFenceMargin
	}
	if c.Retry == 0 {
		c.Retry = DefaultRetry
	}
	if c.SkewAllowance == 0 {
		c.SkewAllowance = time.Minute
	}
	if c.MaxRecords == 0 {
		c.MaxRecords = DefaultMaxRecords
	}
}

// Validate names the first bad field.
func (c MemberConfig) Validate() error {
	c.setDefaults()
	switch {
	case c.Self.Node == "":
		return errors.New("protocol: Self.Node is required")
	case c.Expect < 1:
		return fmt.Errorf("protocol: Expect %d: must be at least 1", c.Expect)
	case c.Partitions < 1:
		return fmt.Errorf("protocol: Partitions %d: must be at least 1", c.Partitions)
	case c.PartitionOf == nil || c.Ring == nil || c.Store == nil:
		return errors.New("protocol: PartitionOf, Ring and Store are required")
	case c.Heartbeat <= 0 || c.Lease <= c.Heartbeat:
		return fmt.Errorf("protocol: Lease %v must exceed Heartbeat %v", c.Lease, c.Heartbeat)
	case c.FenceMargin < 0:
		return fmt.Errorf("protocol: FenceMargin %v: must not be negative", c.FenceMargin)
	case c.Replicas < 0 || c.Replicas == 1:
		return fmt.Errorf("protocol: Replicas %d: must be 0 (a quorum) or at least 2", c.Replicas)
	}
	return nil
}

// Time is the two clocks a member reads: Boot (CLOCK_BOOTTIME: never steps, counts
// suspend) for leases and fences, Wall for slots and clock skew.
type Time struct {
	Boot time.Duration
	Wall int64 // Unix ns
}

// Effects a Step returns; the host carries them out in order.
type (
	// Send is a message to a member by name.
	Send struct {
		To  string
		Msg Message
	}
	// StartFiring: store the watermarks (merged with the store's) and the holdings, then
	// fire the partitions' rules.
	StartFiring struct {
		Parts      map[int]Epoch
		Watermarks []Watermark
	}
	// StopFiring: stop firing the partitions' rules (a commit in flight completes) and
	// store that they are no longer held, before anything after this effect is sent.
	StopFiring struct{ Parts []int }
	// SaveWatermarks: merge into the store (and into the engine, for rules fired here).
	SaveWatermarks struct{ Watermarks []Watermark }
	// Deliverable: these outbox events may be delivered.
	Deliverable struct{ Events []EventRef }
	// Drop: remove these outbox events; the verdict says why.
	Drop struct {
		Events  []EventRef
		Verdict Verdict
	}
	// Reincarnate: the incarnation was fenced; store the new one before sending anything.
	Reincarnate struct{ Self Incarnation }
	// SaveEpochs: store these promised epochs (per partition, the highest) before
	// sending anything: an epoch granted must never be granted lower after a restart.
	SaveEpochs struct{ Epochs map[int]Epoch }
	// Fence: store that this member fenced every incarnation of Node up to Upto, before
	// sending anything: a fence is a promise never to ack them again, and must outlive
	// a restart.
	Fence struct {
		Node string
		Upto uint64
	}
	// Log is something an operator should read.
	Log struct {
		Warn  bool
		Msg   string
		Attrs []any
	}
)

// Member is one node's side of the fire-once protocol: its lease, the fences it keeps,
// the partitions it holds and acquires, the replication of its fires and the offers
// of its older events (docs/protocol.md). It is a deterministic state machine with no
// clock, network or disk of its own; not safe for concurrent use.
type Member struct {
	cfg  MemberConfig
	self Incarnation
	now  Time
	out  []Effect

	// Lease.
	seq        uint64
	rounds     []round
	leaseUntil time.Duration
	lastBeat   time.Duration
	beaten     bool

	ready    bool      // Ready came: the member acquires partitions
	leaving  bool      // Leave came: the member hands over and retires
	transfer *transfer // leaving: the copy of the store that retiring cleanly waits for
	// The copy of the store to the members that joined since N last grew (copyStore).
	copy      *transfer
	copyOwed  bool              // W grew in this incarnation
	grownFrom int               // W when last looked at
	copiedTo  map[string]uint64 // the incarnation of each member the store was copied to
	copyID    uint64
	merged    map[string]*merged // by sender node
	retired   bool               // Retired was sent

	peers        map[string]*peer
	known        map[string]bool // members the host lists
	seen         map[string]bool // members heard in this incarnation, less those that retired
	retiredPeers map[string]uint64
	cleanRetired map[string]uint64 // retired after handing everything over: not counted in N

	// Partitions.
	held        map[int]Epoch
	heldVersion uint64        // raised on every change of held
	promised    map[int]Epoch // the highest epoch granted, or asked for by this member
	heard       map[int]Epoch // the highest epoch heard of (refusals): the next ask goes above it
	// renew: held partitions whose fires a member refused for a newer epoch (promised to
	// an acquisition that did not complete): they are acquired again above it.
	renew map[int]bool
	view  []string
	ring  Ring
	// succ is the ring of the view without this member: who takes its partitions
	// over if it goes, the first replica of its fires (replicasOf).
	succ    Ring
	acq     *acquisition
	acqID   uint64
	nextAcq time.Duration

	// Fires on their way, and older events offered.
	fireSeq  uint64
	sent     map[uint64][]eventKey // per Fired seq, the records it carried (the last maxSentKept)
	repl     map[eventKey]*replicating
	offering map[eventKey]*offered
	offerID  uint64
	nextRepl time.Duration
	// Offers are looked at every quarter retry interval, or at once when events join.
	nextOfferScan time.Duration
	offersAdded   bool
	// claimed in this step: its grants' watermarks are not in the store until the host
	// carried out the step's effects, so no verdict is taken on it before the next step.
	justClaimed map[int]bool

	stats Stats
	// futureWarned: when refuseFuture last logged (boot time), so that a broken or
	// hostile peer costs one warning a minute, not one a record.
	futureWarned time.Duration
}

// Effect is one of the effect types above.
type Effect any

type round struct {
	seq  uint64
	sent time.Duration
	acks map[string]bool
}

type peer struct {
	inc              uint64        // latest incarnation heard
	heard            time.Duration // when inc was last heard (boot clock)
	acked            time.Duration // when inc was last acked
	everAcked        bool
	fenced           uint64            // every incarnation up to this one is fenced here
	fences           map[string]uint64 // the peer's own fences, from its last heartbeat
	mismatch         bool              // its expected size differs (logged once; the larger one counts)
	expect           int               // its expected size, from its heartbeats
	replicas         int               // its Replicas setting (0: a quorum), from its heartbeats
	replicasMismatch bool              // its Replicas differs from this member's (logged once)
	since            time.Duration     // when inc was first learned (a grant may name it before it is heard)
	leaving          bool              // its heartbeats say it is leaving: out of the view, still asked
	skew             time.Duration
}

// maxSentKept bounds the Fired messages whose acks are still read.
const maxSentKept = 4096

type eventKey struct {
	rule int64
	slot int64
}

type replicating struct {
	ref    EventRef
	epoch  Epoch
	ackers map[string]bool
	sent   time.Duration // when last sent
}

type offered struct {
	ref  EventRef
	sent time.Duration // when last offered; 0: not yet
}

// transfer is a copy of this member's store to members (docs/protocol.md §7), a leaving
// member's or one whose N grew: chunks of its watermarks and promised epochs, and which
// members acknowledged each.
type transfer struct {
	id         uint64
	chunks     []Transfer
	watermarks int                     // in all chunks
	need       int                     // leaving: members that must hold every chunk, Q of N − 1
	to         map[string]uint64       // the members sent to, at their incarnation then
	acked      map[string]map[int]bool // per member, the chunks it acknowledged
	sent       time.Duration
	every      time.Duration // the wait before chunks are sent again: doubles, to a bound
}

// merged is the last copy merged here from a member: the chunks already merged are
// acknowledged again, not merged again (a copy resent to a busy member arrives twice).
type merged struct {
	from   Incarnation
	id     uint64
	chunks map[int]bool
}

// done reports whether enough members hold every chunk.
func (t *transfer) done() bool {
	n := 0
	for _, a := range t.acked {
		if len(a) == len(t.chunks) {
			n++
		}
	}
	return n >= t.need
}

type acquisition struct {
	id      uint64
	parts   map[int]Epoch
	asked   map[string]bool
	askedAt map[string]uint64       // the incarnation asked
	grants  map[int]map[string]bool // per partition, the members that granted it
	replied map[string]bool
	failed  map[int]bool
	wms     map[int64]Watermark
	sent    time.Duration
}

// Stats counts what a member decided, for metrics.
type Stats struct {
	Fenced          uint64 // incarnations this member fenced
	Reincarnations  uint64
	Acquired        uint64 // partitions acquired
	Renewed         uint64 // held partitions acquired again at a newer epoch
	Released        uint64 // partitions released to another member
	RefusedRecords  uint64 // fire records refused (newer epoch, fenced sender)
	FutureRecords   uint64 // fire records and watermarks refused for a slot later than now plus SkewAllowance
	Verdicts        map[Verdict]uint64
	MaxSkew         time.Duration // largest wall-clock difference to a peer seen
	MismatchedPeers uint64
	// MismatchedReplicas: members whose Replicas differs from this member's.
	MismatchedReplicas uint64
}

// Durable is what a member's store keeps across restarts.
type Durable struct {
	// Held: the partitions an earlier incarnation held, with their epochs. The new
	// incarnation holds nothing, and asks above those epochs.
	Held map[int]Epoch
	// Fences: per node, the highest incarnation fenced (Fence effects).
	Fences map[string]uint64
	// Epochs: per partition, the highest epoch promised (SaveEpochs effects).
	Epochs map[int]Epoch
}

// NewMember starts a member from what its store kept.
func NewMember(cfg MemberConfig, d Durable) (*Member, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	m := &Member{
		cfg:          cfg,
		self:         cfg.Self,
		peers:        map[string]*peer{},
		known:        map[string]bool{},
		seen:         map[string]bool{},
		retiredPeers: map[string]uint64{},
		cleanRetired: map[string]uint64{},
		copiedTo:     map[string]uint64{},
		merged:       map[string]*merged{},
		held:         map[int]Epoch{},
		renew:        map[int]bool{},
		heard:        map[int]Epoch{},
		promised:     maps.Clone(d.Held),
		repl:         map[eventKey]*replicating{},
		sent:         map[uint64][]eventKey{},
		offering:     map[eventKey]*offered{},
		stats:        Stats{Verdicts: map[Verdict]uint64{}},
	}
	if m.promised == nil {
		m.promised = map[int]Epoch{}
	}
	for p, e := range d.Epochs {
		if m.promised[p].Less(e) {
			m.promised[p] = e
		}
	}
	for node, upto := range d.Fences {
		if node != m.self.Node && upto > 0 {
			m.peers[node] = &peer{inc: upto, fenced: upto}
		}
	}
	return m, nil
}

// Self is the member's current incarnation.
func (m *Member) Self() Incarnation { return m.self }

// Stats returns the member's counters.
func (m *Member) Stats() Stats {
	s := m.stats
	s.Verdicts = maps.Clone(m.stats.Verdicts)
	return s
}

// quorum is Q of N, the larger of the expected size and the members this member
// counts: those gossip lists and those heard in this life, less those that retired
// cleanly (a scale-in). A member cut off from the others still counts them (heard), so
// two sides of a partition never both hold a quorum unless Expect is too small.
func (m *Member) quorum() int {
	return m.clusterSize()/2 + 1
}

// clusterSize is N: the larger of the expected size (this member's, or a live peer's
// that expects more) and the members counted.
func (m *Member) clusterSize() int {
	n := max(m.cfg.Expect, m.memberCount())
	for _, p := range m.peers {
		if p.expect > n && m.live(p) {
			n = p.expect
		}
	}
	return n
}

func (m *Member) memberCount() int {
	n := 1
	counted := func(name string) bool {
		if r, ok := m.cleanRetired[name]; ok {
			if p := m.peers[name]; p == nil || p.inc <= r {
				return false
			}
		}
		return true
	}
	for name := range m.known {
		if counted(name) {
			n++
		}
	}
	for name := range m.seen {
		if !m.known[name] && counted(name) {
			n++
		}
	}
	return n
}

// writeQuorum is W, how many stores (the firer's included) hold a fire before it is
// delivered: Q, or fewer with Replicas, so that what a node receives of its peers'
// fires falls as nodes are added (W − 1 of N − 1 peers get each fire). Members set
// differently (their heartbeats say) write with the largest W of any live one.
func (m *Member) writeQuorum() int {
	w, _ := m.writeQuorums()
	return w
}

// readQuorum is how many members' stores (this one included) an acquisition reads:
// N − W + 1 for the smallest W of any live member, so that it meets every W stores a
// delivered fire was written to, whoever wrote it.
func (m *Member) readQuorum() int {
	_, least := m.writeQuorums()
	return m.clusterSize() - least + 1
}

// writeQuorums are the largest and the smallest W of this member's Replicas and its
// live peers'.
func (m *Member) writeQuorums() (most, least int) {
	q := m.quorum()
	w := func(r int) int {
		if r > 0 && r < q {
			return r
		}
		return q
	}
	most = w(m.cfg.Replicas)
	least = most
	for _, p := range m.peers {
		if p.replicasMismatch && m.live(p) {
			most, least = max(most, w(p.replicas)), min(least, w(p.replicas))
		}
	}
	return most, least
}

// replicasName is a Replicas setting as TIMERD_REPLICAS spells it.
func replicasName(r int) string {
	if r == 0 {
		return "majority"
	}
	return strconv.Itoa(r)
}

// HasLease reports whether the member's lease covers now.
func (m *Member) HasLease(now Time) bool {
	return m.quorum() == 1 || now.Boot < m.leaseUntil
}

// MayFire reports whether the member may fire a rule of partition p at now, and under
// which epoch: it holds p and its lease covers now. The commit path asks before the
// store commit and again after it.
func (m *Member) MayFire(now Time, p int) (Epoch, bool) {
	e, ok := m.held[p]
	if !ok || !m.HasLease(now) {
		return Epoch{}, false
	}
	return e, true
}

// Status is what a member shows an operator and the node's commit path.
type Status struct {
	Self       Incarnation
	Quorum     int           // Q
	LeaseUntil time.Duration // boot clock; meaningless when Quorum is 1 (always leased)
	View       []string      // the members of the ring, self included
	Held       map[int]Epoch
	// Settled: every partition the view gives this member is held and none is being
	// acquired: the member fires its whole share.
	Settled bool
	Fenced  map[string]uint64 // per node, the highest incarnation fenced here
	Skew    map[string]time.Duration
}

// Status returns the member's state.
func (m *Member) Status() Status {
	st := Status{Self: m.self, Quorum: m.quorum(), LeaseUntil: m.leaseUntil, View: slices.Clone(m.view),
		Held: maps.Clone(m.held), Fenced: map[string]uint64{}, Skew: map[string]time.Duration{}}
	st.Settled = m.acq == nil && len(m.renew) == 0 && m.ring != nil
	if st.Settled {
		for p := range m.cfg.Partitions {
			if _, ok := m.held[p]; !ok && m.ring.Owner(p) == m.self.Node {
				st.Settled = false
				break
			}
		}
	}
	for n, p := range m.peers {
		if p.fenced > 0 {
			st.Fenced[n] = p.fenced
		}
		if p.skew != 0 {
			st.Skew[n] = p.skew
		}
	}
	return st
}

// LeaseUntil is when the lease ends on the boot clock; meaningless when Quorum is 1.
func (m *Member) LeaseUntil() time.Duration { return m.leaseUntil }

// Quorum is Q: 1 means the member needs nobody (always leased).
func (m *Member) Quorum() int { return m.quorum() }

// HeldVersion changes whenever the partitions held do: a host that keeps a copy of
// Held takes a new one only then.
func (m *Member) HeldVersion() uint64 { return m.heldVersion }

// Held is a copy of the partitions held, with their epochs.
func (m *Member) Held() map[int]Epoch { return maps.Clone(m.held) }

// Inputs of Step.
type (
	// Tick is time passing: heartbeats, fences, acquisitions and re-sends are due.
	// Backlog: the host has messages waiting that it has not stepped yet (it cut a
	// batch short): silence is not judged until they are heard, as a heartbeat among
	// them would prove a member alive.
	Tick struct{ Backlog bool }
	// Receive is a message from a member.
	Receive struct{ Msg Message }
	// Known is the membership the host's gossip layer lists (names, self excluded).
	Known struct{ Names []string }
	// Committed is this incarnation's fires, just committed to the store; ask MayFire
	// before the commit. A fire whose partition or lease ended meanwhile is offered
	// rather than replicated.
	Committed struct{ Events []EventRef }
	// Unsettled is the outbox's events of earlier incarnations (or handed in): the
	// member offers them to their holders, and says Deliverable or Drop for each.
	Unsettled struct{ Events []EventRef }
	// Ready: the node's rule book is loaded (its first reconcile is done): it may
	// acquire partitions from now on. Until then it takes part in leases, fences and
	// grants, and the current holders keep firing what its view would give it; a node
	// busy starting holds nothing that a fence of it would have to take over.
	Ready struct{}
	// Leave: the node is shutting down (its engine is stopped). The member fires
	// nothing, says it is leaving, hands each partition it holds to the member that
	// asks for it, and retires once it holds nothing (Retired reports it). Force
	// retires at once, holding or not: its partitions are then taken over.
	Leave struct{ Force bool }
)

// Input is one of the input types above.
type Input any

// Step applies one input at now and returns the effects to carry out, in order.
func (m *Member) Step(now Time, in Input) []Effect {
	if now.Boot > m.now.Boot || m.now == (Time{}) {
		m.now = now
	}
	m.now.Wall = now.Wall
	m.out = nil
	clear(m.justClaimed)
	if m.retired {
		return nil
	}
	switch in := in.(type) {
	case Tick:
		m.tick(in.Backlog)
	case Receive:
		m.receive(in.Msg)
	case Known:
		m.known = map[string]bool{}
		for _, n := range in.Names {
			if n != m.self.Node {
				m.known[n] = true
			}
		}
		m.tick(false)
	case Committed:
		m.committed(in.Events)
	case Unsettled:
		for _, ev := range in.Events {
			m.offering[eventKey{ev.Rule, ev.Slot}] = &offered{ref: ev}
			m.offersAdded = true
		}
		m.sendOffers()
	case Ready:
		m.ready = true
		m.nextAcq = 0
		m.tick(false)
	case Leave:
		m.leave(in.Force)
	}
	out := m.out
	m.out = nil
	return out
}

func (m *Member) emit(e Effect) { m.out = append(m.out, e) }

func (m *Member) send(to string, msg Message) { m.emit(Send{To: to, Msg: msg}) }

// refuseFuture counts a fire record or watermark from peer whose slot is later than
// now plus the skew allowance, and warns at most once a minute.
func (m *Member) refuseFuture(peer string, rule, slot int64) {
	m.stats.FutureRecords++
	if m.futureWarned != 0 && m.now.Boot-m.futureWarned < time.Minute {
		return
	}
	m.futureWarned = m.now.Boot
	m.logf(true, "a peer sent a fire or watermark later than now plus the skew allowance; refused (a broken clock, or a forged packet)",
		"peer", peer, "rule", rule, "slot", time.Unix(0, slot).UTC(), "refused_so_far", m.stats.FutureRecords)
}

func (m *Member) logf(warn bool, msg string, attrs ...any) {
	m.emit(Log{Warn: warn, Msg: msg, Attrs: attrs})
}

// tick runs what is due: a heartbeat round, fences by silence, the view, acquisitions,
// and re-sends of fires and offers.
func (m *Member) tick(backlog bool) {
	if m.retired {
		return // gone: the members no longer count on anything it says
	}
	now := m.now.Boot
	if !m.beaten || now-m.lastBeat >= m.cfg.Heartbeat {
		m.beat()
	}
	if !backlog {
		m.fenceSilent()
	}
	m.updateView()
	m.acquire()
	if m.leaving && m.handedOver() {
		m.transferStore()
	} else if !m.leaving {
		m.copyStore()
	}
	if now >= m.nextRepl {
		m.resendFires()
	}
	m.sendOffers()
}

// recipients are the members a heartbeat, fire or acquisition goes to: those the host
// lists and those heard lately.
func (m *Member) recipients() []string {
	set := map[string]bool{}
	for n := range m.known {
		set[n] = true
	}
	for n, p := range m.peers {
		if m.live(p) {
			set[n] = true
		}
	}
	for n, inc := range m.retiredPeers {
		if p := m.peers[n]; p == nil || p.inc <= inc {
			delete(set, n)
		}
	}
	return slices.Sorted(maps.Keys(set))
}

func (m *Member) live(p *peer) bool {
	return p.inc > 0 && p.fenced < p.inc && m.now.Boot-p.heard < m.cfg.Lease+m.cfg.FenceMargin
}

func (m *Member) beat() {
	m.seq++
	m.lastBeat, m.beaten = m.now.Boot, true
	m.rounds = append(m.rounds, round{seq: m.seq, sent: m.now.Boot, acks: map[string]bool{}})
	if keep := int(m.cfg.Lease/m.cfg.Heartbeat) + 2; len(m.rounds) > keep {
		m.rounds = slices.Delete(m.rounds, 0, len(m.rounds)-keep)
	}
	fences := map[string]uint64{}
	for n, p := range m.peers {
		if p.fenced > 0 {
			fences[n] = p.fenced
		}
	}
	for _, to := range m.recipients() {
		m.send(to, Heartbeat{From: m.self, Seq: m.seq, Expect: m.cfg.Expect, Replicas: m.cfg.Replicas,
			Wall: m.now.Wall, Fences: fences, Leaving: m.leaving})
	}
}

// fenceSilent fences every incarnation this member has not acked for L + M, while
// this member holds a lease itself: a node that cannot renew its own (cut off, or
// starved of CPU so that the heartbeats it was sent wait unread) takes the others'
// silence for what it is, its own. Not fencing is always safe; it only delays a
// takeover until a member that hears the quorum fences.
func (m *Member) fenceSilent() {
	if !m.HasLease(m.now) {
		return
	}
	for n, p := range m.peers {
		if p.inc == 0 || p.fenced >= p.inc {
			continue
		}
		if !p.everAcked || m.now.Boot-p.acked >= m.cfg.Lease+m.cfg.FenceMargin {
			if !p.everAcked && m.now.Boot-max(p.heard, p.since) < m.cfg.Lease+m.cfg.FenceMargin {
				continue // learned of lately, not acked yet: give its heartbeats time
			}
			m.fence(n, p, p.inc)
			m.logf(true, "fenced a silent member", "member", Incarnation{n, p.inc}.String())
		}
	}
}

// fence records (and has the host store) that no incarnation of node up to upto is
// acked again.
func (m *Member) fence(node string, p *peer, upto uint64) {
	if upto <= p.fenced {
		return
	}
	p.fenced = upto
	m.stats.Fenced++
	m.emit(Fence{Node: node, Upto: upto})
}

// quorumFenced reports whether node#inc can hold no lease any more: a later incarnation
// of it is known, it retired, or a quorum (this member included) fenced it.
func (m *Member) quorumFenced(node string, inc uint64) bool {
	if inc == 0 {
		return false
	}
	if r, ok := m.retiredPeers[node]; ok && r >= inc {
		return true
	}
	p := m.peers[node]
	if p != nil && p.inc > inc {
		return true
	}
	n := 0
	if p != nil && p.fenced >= inc {
		n++
	}
	for name, q := range m.peers {
		if name != node && q.fences[node] >= inc {
			n++
		}
	}
	return n >= m.quorum()
}

// updateView recomputes the ring over this member and the peers it hears.
func (m *Member) updateView() {
	var names []string
	if !m.leaving {
		names = append(names, m.self.Node)
	}
	for n, p := range m.peers {
		if m.live(p) && !p.leaving {
			names = append(names, n)
		}
	}
	slices.Sort(names)
	if slices.Equal(names, m.view) && m.ring != nil {
		return
	}
	m.view, m.ring = names, m.cfg.Ring(names)
	m.succ = nil
	if others := slices.DeleteFunc(slices.Clone(names), func(n string) bool { return n == m.self.Node }); m.writeQuorum() < len(others) {
		m.succ = m.cfg.Ring(others) // only needed when fires go to fewer than every other member
	}
	m.nextAcq = 0 // look again at once
}

// acquire starts an acquisition of the partitions the view gives this member and it
// does not hold, when it has a lease and none is in flight; and re-asks the members of
// one in flight that have not answered.
func (m *Member) acquire() {
	now := m.now.Boot
	if a := m.acq; a != nil {
		m.finishAcquisition()
		if m.acq != nil && now-a.sent >= m.cfg.Retry {
			a.sent = now
			for n := range a.asked {
				if !a.replied[n] {
					m.send(n, m.acquireMsg(a))
				}
			}
		}
		return
	}
	if !m.ready || m.leaving || !m.HasLease(m.now) || now < m.nextAcq || m.ring == nil {
		return
	}
	parts := map[int]Epoch{}
	for p := range m.cfg.Partitions {
		_, held := m.held[p]
		if held && !m.renew[p] || !held && m.ring.Owner(p) != m.self.Node {
			continue
		}
		e := Epoch{N: max(m.promised[p].N, m.heard[p].N) + 1, Node: m.self.Node}
		m.promised[p] = e
		parts[p] = e
	}
	if len(parts) == 0 {
		m.nextAcq = now + m.cfg.Retry
		return
	}
	m.emit(SaveEpochs{Epochs: maps.Clone(parts)})
	m.acqID++
	a := &acquisition{id: m.acqID, parts: parts, asked: map[string]bool{}, askedAt: map[string]uint64{},
		grants: map[int]map[string]bool{}, replied: map[string]bool{}, failed: map[int]bool{}, wms: map[int64]Watermark{}, sent: now}
	m.acq = a
	for _, n := range m.recipients() {
		m.askAcquire(a, n)
	}
	m.finishAcquisition()
}

func (m *Member) acquireMsg(a *acquisition) Acquire {
	parts := make([]PartitionEpoch, 0, len(a.parts))
	for _, p := range slices.Sorted(maps.Keys(a.parts)) {
		parts = append(parts, PartitionEpoch{Partition: p, Epoch: a.parts[p]})
	}
	return Acquire{From: m.self, ID: a.id, Parts: parts}
}

func (m *Member) askAcquire(a *acquisition, name string) {
	if name == m.self.Node || a.asked[name] {
		return
	}
	if p := m.peers[name]; p != nil && m.quorumFenced(name, p.inc) {
		return
	}
	if r, ok := m.retiredPeers[name]; ok && (m.peers[name] == nil || m.peers[name].inc <= r) {
		return
	}
	a.asked[name] = true
	if p := m.peers[name]; p != nil {
		a.askedAt[name] = p.inc
	}
	m.send(name, m.acquireMsg(a))
}

// finishAcquisition claims the partitions of the acquisition in flight once every
// member asked has answered or can hold no lease any more.
func (m *Member) finishAcquisition() {
	a := m.acq
	if a == nil {
		return
	}
	// A member heard of at a later incarnation than it was asked at (or not asked,
	// because the incarnation known then was fenced) is asked now: it may have started
	// again on a store that holds fires nobody else has.
	for _, n := range m.recipients() {
		p := m.peers[n]
		if p == nil || p.inc == 0 || m.quorumFenced(n, p.inc) {
			continue
		}
		if !a.asked[n] || a.askedAt[n] < p.inc {
			delete(a.asked, n)
			delete(a.replied, n)
			m.askAcquire(a, n)
		}
	}
	for n := range a.asked {
		if a.replied[n] {
			continue
		}
		p := m.peers[n]
		if p == nil || !m.quorumFenced(n, p.inc) {
			return // still waiting for it
		}
	}
	m.acq = nil
	m.nextAcq = m.now.Boot + m.cfg.Retry // failed ones are asked again then
	// A fire known under an epoch not below ours (a member that forgot its promises:
	// its disk was replaced) makes ours too low: asked again above it.
	newest := map[int]Epoch{}
	note := func(w Watermark) {
		p := m.cfg.PartitionOf(w.Rule)
		for _, pt := range w.Chain {
			if newest[p].Less(pt.Epoch) {
				newest[p] = pt.Epoch
			}
		}
	}
	for _, w := range a.wms {
		note(w)
	}
	for _, w := range m.cfg.Store.FiredWatermarks(slices.Sorted(maps.Keys(a.parts))) {
		note(w)
	}
	claim := map[int]Epoch{}
	for p, e := range a.parts {
		if a.failed[p] || m.promised[p] != e {
			continue
		}
		if n, ok := newest[p]; ok && !n.Less(e) {
			if m.heard[p].Less(n) {
				m.heard[p] = n
			}
			continue
		}
		// The read quorum: every fire delivered was stored by Q members (its firer and
		// Q − 1 acks), so N − Q + 1 stores, this one included, hold it.
		if len(a.grants[p])+1 < m.readQuorum() {
			continue
		}
		claim[p] = e
	}
	if len(claim) == 0 {
		return
	}
	var wms []Watermark
	for _, w := range a.wms {
		if _, ok := claim[m.cfg.PartitionOf(w.Rule)]; ok {
			wms = append(wms, w)
		}
	}
	slices.SortFunc(wms, func(x, y Watermark) int { return cmp.Compare(x.Rule, y.Rule) })
	if m.justClaimed == nil {
		m.justClaimed = map[int]bool{}
	}
	renewed := map[int]Epoch{}
	for p, e := range claim {
		if _, held := m.held[p]; held {
			delete(m.renew, p)
			m.stats.Renewed++
			renewed[p] = e
		}
		m.held[p] = e
		m.justClaimed[p] = true
		m.heldVersion++
	}
	if len(renewed) > 0 {
		for _, r := range m.repl {
			if e, ok := renewed[m.cfg.PartitionOf(r.ref.Rule)]; ok {
				r.epoch, r.sent = e, -m.cfg.Retry // sent again, under the new epoch
			}
		}
	}
	m.stats.Acquired += uint64(len(claim))
	m.emit(StartFiring{Parts: claim, Watermarks: wms})
	// Events waiting for these partitions are decided on the next step (justClaimed).
	for _, o := range m.offering {
		if _, ok := claim[m.cfg.PartitionOf(o.ref.Rule)]; ok {
			o.sent = 0
			m.offersAdded = true
		}
	}
}

func (m *Member) receive(msg Message) {
	from := msg.Sender()
	if from.Node == m.self.Node || from.Node == "" {
		return
	}
	if hb, ok := msg.(Heartbeat); ok {
		m.heartbeat(hb)
		return
	}
	if a, ok := msg.(HeartbeatAck); ok && a.Fenced {
		// Heard even from an incarnation fenced here: two nodes that fenced each other
		// (both sides of a partition) must not ignore each other for good.
		if a.To == m.self {
			m.reincarnate(a.From)
		}
		return
	}
	p := m.peers[from.Node]
	if p != nil && p.fenced >= from.N {
		m.stats.RefusedRecords += uint64(firedLen(msg))
		return // a fenced incarnation is not heard
	}
	if p == nil || p.inc < from.N {
		// Heard first by something else than a heartbeat: its heartbeat follows.
		p = m.peer(from)
	}
	if m.transfer != nil {
		// Its store is being copied: it acks no fire and grants nothing more, so that
		// what it stored is what it copies. Those who asked go on without it.
		switch msg.(type) {
		case Fired, Acquire:
			return
		}
	}
	switch msg := msg.(type) {
	case HeartbeatAck:
		m.heartbeatAck(msg)
	case Acquire:
		m.grant(msg)
	case Grant:
		m.granted(msg)
	case Fired:
		m.fired(msg)
	case FiredAck:
		m.firedAck(msg)
	case Offer:
		m.offer(msg)
	case OfferReply:
		m.offerReply(msg)
	case Transfer:
		m.transferred(msg)
	case TransferAck:
		for _, t := range []*transfer{m.transfer, m.copy} {
			if t != nil && msg.To == m.self && msg.ID == t.id && t.to[from.Node] == from.N && msg.Chunk < len(t.chunks) {
				t.acked[from.Node][msg.Chunk] = true
			}
		}
	case Retired:
		if m.retiredPeers[from.Node] < from.N {
			m.retiredPeers[from.Node] = from.N
		}
		if msg.Clean && m.cleanRetired[from.Node] < from.N {
			// It handed everything over: a smaller cluster from now on (a scale-in).
			m.cleanRetired[from.Node] = from.N
		}
		m.fence(from.Node, p, from.N)
		m.logf(false, "member retired", "member", from.String(), "handed_over", msg.Clean)
		m.updateView()
	}
}

func firedLen(msg Message) int {
	if f, ok := msg.(Fired); ok {
		return len(f.Records)
	}
	return 0
}

// peer is the record of node, moved on to inc when it is newer (the older incarnations
// are fenced: a node starts a new incarnation only once the old one stopped).
func (m *Member) peer(from Incarnation) *peer {
	p := m.peers[from.Node]
	if p == nil {
		p = &peer{}
		m.peers[from.Node] = p
	}
	if from.N > p.inc {
		if p.inc > 0 {
			m.fence(from.Node, p, p.inc)
		}
		p.inc, p.everAcked, p.heard, p.since = from.N, false, m.now.Boot, m.now.Boot
	}
	return p
}

func (m *Member) heartbeat(hb Heartbeat) {
	p := m.peer(hb.From)
	ack := HeartbeatAck{From: m.self, To: hb.From, Seq: hb.Seq, Wall: m.now.Wall, Echo: hb.Wall}
	switch {
	case p.fenced >= hb.From.N:
		ack.Fenced = true
	default:
		if hb.Expect != m.cfg.Expect && !p.mismatch {
			// Both count the larger (quorum): quorums of N and N+1 members still
			// meet, so a rolling change of the setting stays safe.
			m.stats.MismatchedPeers++
			m.logf(true, "a member expects another cluster size; the larger counts: set the same on every node",
				"member", hb.From.String(), "its_expect", hb.Expect, "expect", m.cfg.Expect)
		}
		if hb.From.N == p.inc {
			p.heard, p.acked, p.everAcked = m.now.Boot, m.now.Boot, true
			p.mismatch, p.expect = hb.Expect != m.cfg.Expect, hb.Expect
			if hb.Replicas != m.cfg.Replicas && !p.replicasMismatch {
				m.stats.MismatchedReplicas++
				m.logf(true, "a member has another TIMERD_REPLICAS; fires are written to the most stores any member asks and acquisitions read for the fewest: set the same on every node",
					"member", hb.From.String(), "its_replicas", replicasName(hb.Replicas), "replicas", replicasName(m.cfg.Replicas))
			}
			p.replicas, p.replicasMismatch = hb.Replicas, hb.Replicas != m.cfg.Replicas
			p.fences, p.leaving = hb.Fences, hb.Leaving
			m.seen[hb.From.Node] = true
			if r, ok := m.retiredPeers[hb.From.Node]; ok && r < hb.From.N {
				delete(m.retiredPeers, hb.From.Node)
			}
		}
	}
	m.send(hb.From.Node, ack)
	if ack.Fenced {
		return
	}
	m.updateView()
}

func (m *Member) heartbeatAck(a HeartbeatAck) {
	if a.To != m.self {
		return // for an earlier incarnation of this node
	}
	if a.Fenced {
		m.reincarnate(a.From)
		return
	}
	if a.Mismatch {
		return
	}
	p := m.peers[a.From.Node]
	if p != nil && a.Echo != 0 {
		// The acker's clock less the midpoint of the round trip.
		skew := time.Duration(a.Wall - (a.Echo+m.now.Wall)/2)
		p.skew = skew
		if skew < 0 {
			skew = -skew
		}
		m.stats.MaxSkew = max(m.stats.MaxSkew, skew)
	}
	for i := range m.rounds {
		r := &m.rounds[i]
		if r.seq != a.Seq {
			continue
		}
		r.acks[a.From.Node] = true
		if len(r.acks)+1 >= m.quorum() {
			m.leaseUntil = max(m.leaseUntil, r.sent+m.cfg.Lease)
		}
	}
}

// reincarnate starts a new incarnation once a member said it fenced this one: it
// stops firing everything, holds nothing, and offers its fires on their way.
func (m *Member) reincarnate(by Incarnation) {
	old := m.self
	m.self.N++
	m.stats.Reincarnations++
	m.logf(true, "this incarnation was fenced: starting a new one", "fenced_by", by.String(),
		"old", old.String(), "new", m.self.String())
	m.emit(Reincarnate{Self: m.self})
	if len(m.held) > 0 {
		m.emit(StopFiring{Parts: slices.Sorted(maps.Keys(m.held))})
		clear(m.held)
		m.heldVersion++
	}
	clear(m.renew)
	m.acq = nil
	m.leaseUntil, m.rounds = 0, nil
	clear(m.seen)
	for k, r := range m.repl {
		m.offering[k] = &offered{ref: r.ref}
		m.offersAdded = true
		delete(m.repl, k)
	}
	m.beat()
}

// grant answers an acquisition (protocol step 2 and 3).
func (m *Member) grant(a Acquire) {
	g := Grant{From: m.self, To: a.From, ID: a.ID}
	var release []int
	for _, pe := range a.Parts {
		p, e := pe.Partition, pe.Epoch
		if p < 0 || p >= m.cfg.Partitions || e.Node != a.From.Node {
			g.Refused = append(g.Refused, PartitionEpoch{Partition: p})
			continue
		}
		// An epoch promised already (asked again, or promised by a leaving member whose
		// store was copied here) is granted again: released first if held here.
		if prom := m.promised[p]; e.Less(prom) {
			g.Refused = append(g.Refused, PartitionEpoch{Partition: p, Epoch: prom})
			continue
		}
		if _, held := m.held[p]; held {
			if m.ring == nil || m.ring.Owner(p) != a.From.Node {
				g.Refused = append(g.Refused, PartitionEpoch{Partition: p, Epoch: m.held[p]})
				continue
			}
			release = append(release, p)
			delete(m.held, p)
			m.heldVersion++
			delete(m.renew, p)
		}
		m.promised[p] = e
		g.Granted = append(g.Granted, p)
	}
	if len(release) > 0 {
		m.stats.Released += uint64(len(release))
		m.emit(StopFiring{Parts: release})

		// Fires of these partitions still on their way will be refused by the members
		// that granted the new epoch: they are offered to the new holder instead.
		released := make(map[int]bool, len(release))
		for _, p := range release {
			released[p] = true
		}
		for k, r := range m.repl {
			if released[m.cfg.PartitionOf(k.rule)] {
				m.offering[k] = &offered{ref: r.ref}
				m.offersAdded = true
				delete(m.repl, k)
			}
		}
	}
	if len(g.Granted) > 0 {
		saved := make(map[int]Epoch, len(g.Granted))
		for _, p := range g.Granted {
			saved[p] = m.promised[p]
		}
		m.emit(SaveEpochs{Epochs: saved})
		g.Watermarks = withFires(m.cfg.Store.FiredWatermarks(g.Granted))
	}
	for _, n := range m.recipients() {
		inc := uint64(0)
		if p := m.peers[n]; p != nil {
			inc = p.inc
		}
		g.Members = append(g.Members, Incarnation{Node: n, N: inc})
	}
	m.send(a.From.Node, g)
}

func (m *Member) granted(g Grant) {
	a := m.acq
	if a == nil || g.ID != a.id || g.To != m.self || !a.asked[g.From.Node] {
		return
	}
	if a.askedAt[g.From.Node] != g.From.N && a.askedAt[g.From.Node] != 0 {
		return // an answer of an incarnation asked before: the later one answers again
	}
	a.replied[g.From.Node] = true
	for _, p := range g.Granted {
		if _, ok := a.parts[p]; ok {
			if a.grants[p] == nil {
				a.grants[p] = map[string]bool{}
			}
			a.grants[p][g.From.Node] = true
		}
	}
	for _, r := range g.Refused {
		a.failed[r.Partition] = true
		if m.heard[r.Partition].Less(r.Epoch) {
			m.heard[r.Partition] = r.Epoch
		}
	}
	for _, w := range g.Watermarks {
		if _, ok := a.parts[m.cfg.PartitionOf(w.Rule)]; !ok {
			continue
		}
		if w.Slot > m.now.Wall+int64(m.cfg.SkewAllowance) {
			m.refuseFuture(g.From.Node, w.Rule, w.Slot) // a slot nobody could have fired yet: it would silence the rule
			continue
		}
		if cur, ok := a.wms[w.Rule]; ok {
			w = Merge(cur, w)
		}
		a.wms[w.Rule] = w
	}
	for _, in := range g.Members {
		if in.Node == m.self.Node || in.Node == "" {
			continue
		}
		if p := m.peers[in.Node]; in.N > 0 && (p == nil || p.inc < in.N) {
			// A later incarnation than this member heard of must be asked too: only
			// an incarnation known to be fenced may be passed over. It is not heard
			// for all that: it joins the view when its heartbeats come.
			if p == nil {
				p = &peer{}
				m.peers[in.Node] = p
			} else if p.inc > 0 {
				m.fence(in.Node, p, p.inc)
			}
			p.inc, p.everAcked, p.since = in.N, false, m.now.Boot
		}
		if !a.asked[in.Node] {
			m.askAcquire(a, in.Node)
		}
	}
	m.finishAcquisition()
}

// committed starts the replication of this incarnation's fires just committed.
func (m *Member) committed(evs []EventRef) {
	var recs []FireRecord
	for _, ev := range evs {
		k := eventKey{ev.Rule, ev.Slot}
		e, ok := m.MayFire(m.now, m.cfg.PartitionOf(ev.Rule))
		if !ok || ev.Firer != m.self {
			m.offering[k] = &offered{ref: ev}
			m.offersAdded = true
			continue
		}
		m.repl[k] = &replicating{ref: ev, epoch: e, ackers: map[string]bool{}}
		recs = append(recs, FireRecord{Rule: ev.Rule, Prev: ev.Prev, Slot: ev.Slot, Count: ev.Count, Firer: ev.Firer, Epoch: e})
	}
	m.replicate(recs)
	if len(m.offering) > 0 {
		m.sendOffers()
	}
}

// replicate sends fire records to W − 1 members each (replicasOf), and one more when
// one of those has been quiet for two heartbeat intervals, or marks them deliverable
// at once when this member needs nobody's ack. The one more is a spare: a replica that
// is down, or slow, does not hold a fire back until the resend (a retry interval)
// while the others learn it is gone. Sent to every fire, the spare was a third of a
// node's messages at 5 nodes and more (W 3: two acks needed, three sent).
func (m *Member) replicate(recs []FireRecord) { m.replicateTo(recs, false) }

// replicateTo sends recs to their replicas, or with all to every member (a resend:
// a replica that did not ack in a retry interval may be gone, and any W − 1 acks do).
func (m *Member) replicateTo(recs []FireRecord, all bool) {
	if len(recs) == 0 {
		return
	}
	need := m.writeQuorum() - 1
	if need <= 0 {
		var ready []EventRef
		for _, r := range recs {
			k := eventKey{r.Rule, r.Slot}
			if st, ok := m.repl[k]; ok {
				ready = append(ready, st.ref)
				delete(m.repl, k)
			}
		}
		if len(ready) > 0 {
			m.emit(Deliverable{Events: ready})
		}
		return
	}
	to := m.recipients()
	for _, r := range recs {
		if st, ok := m.repl[eventKey{r.Rule, r.Slot}]; ok {
			st.sent = m.now.Boot
		}
	}
	if all || len(to) <= need {
		m.sendFired(to, recs)
		return
	}
	// Each record to its partition's replicas: grouped by recipient, in record order.
	byPart := map[int][]string{}
	byDest := map[string][]FireRecord{}
	for _, r := range recs {
		p := m.cfg.PartitionOf(r.Rule)
		dests, ok := byPart[p]
		if !ok {
			dests = m.replicasOf(p, need, to)
			if m.anyQuiet(dests) {
				dests = m.replicasOf(p, need+1, to)
			}
			byPart[p] = dests
		}
		for _, d := range dests {
			byDest[d] = append(byDest[d], r)
		}
	}
	for _, d := range slices.Sorted(maps.Keys(byDest)) {
		m.sendFired([]string{d}, byDest[d])
	}
}

// sendFired sends recs to each of to, MaxRecords to a message.
func (m *Member) sendFired(to []string, recs []FireRecord) {
	for start := 0; start < len(recs); start += m.cfg.MaxRecords {
		chunk := recs[start:min(len(recs), start+m.cfg.MaxRecords)]
		m.fireSeq++
		keys := make([]eventKey, len(chunk))
		for i, r := range chunk {
			keys[i] = eventKey{r.Rule, r.Slot}
		}
		m.sent[m.fireSeq] = keys
		delete(m.sent, m.fireSeq-maxSentKept)
		for _, n := range to {
			m.send(n, Fired{From: m.self, Seq: m.fireSeq, Records: chunk})
		}
	}
}

// replicasOf is the n members partition p's fires go to first: the member that
// would take p over if this one went (the owner by the view without it), then the
// view's other members from p's place in it, each live and not quorum-fenced; then,
// if too few are, others of to. Any W stores keep a fire safe (§6): the choice only
// spreads the load, and puts the fire where a takeover would look first.
func (m *Member) replicasOf(p, n int, to []string) []string {
	out := make([]string, 0, n)
	add := func(name string, liveOnly bool) {
		if len(out) == n || name == m.self.Node || slices.Contains(out, name) {
			return
		}
		if liveOnly {
			pe := m.peers[name]
			if pe == nil || !m.live(pe) || m.quorumFenced(name, pe.inc) {
				return
			}
		}
		out = append(out, name)
	}
	if m.succ != nil {
		add(m.succ.Owner(p), true)
	}
	for i := range m.view {
		add(m.view[(p+i)%len(m.view)], true)
	}
	for _, name := range to {
		add(name, false)
	}
	return out
}

// quietFor is how long a replica goes unheard before fires get a spare: two heartbeat
// intervals, a heartbeat late.
func (m *Member) quietFor() time.Duration { return 2 * m.cfg.Heartbeat }

// anyQuiet reports whether one of names has not been heard for quietFor (or is not
// live at all: replicasOf took it for want of others).
func (m *Member) anyQuiet(names []string) bool {
	for _, name := range names {
		p := m.peers[name]
		if p == nil || !m.live(p) || m.now.Boot-p.heard > m.quietFor() {
			return true
		}
	}
	return false
}

// resendFires sends again the records sent a retry interval ago and not acked by
// enough members yet.
func (m *Member) resendFires() {
	m.nextRepl = m.now.Boot + m.cfg.Retry/4
	if len(m.repl) == 0 {
		return
	}
	var stale []eventKey
	for k, r := range m.repl {
		if m.now.Boot-r.sent >= m.cfg.Retry {
			stale = append(stale, k)
		}
	}
	keys := slices.SortedFunc(slices.Values(stale), func(a, b eventKey) int {
		if c := cmp.Compare(a.rule, b.rule); c != 0 {
			return c
		}
		return cmp.Compare(a.slot, b.slot)
	})
	recs := make([]FireRecord, 0, len(keys))
	for _, k := range keys {
		r := m.repl[k]
		recs = append(recs, FireRecord{Rule: r.ref.Rule, Prev: r.ref.Prev, Slot: r.ref.Slot, Count: r.ref.Count, Firer: r.ref.Firer, Epoch: r.epoch})
	}
	m.replicateTo(recs, true)
}

// fired merges a member's fire records and acknowledges those it accepts.
func (m *Member) fired(f Fired) {
	ack := FiredAck{From: m.self, To: f.From, Seq: f.Seq}
	var wms []Watermark
	for i, r := range f.Records {
		p := m.cfg.PartitionOf(r.Rule)
		switch {
		case r.Epoch.Less(m.promised[p]):
			ack.Refused = append(ack.Refused, i)
			m.stats.RefusedRecords++
		case r.Slot > m.now.Wall+int64(m.cfg.SkewAllowance):
			ack.Refused = append(ack.Refused, i)
			m.refuseFuture(f.From.Node, r.Rule, r.Slot)
		default:
			wms = append(wms, Watermark{Rule: r.Rule, Slot: r.Slot, Count: r.Count,
				Chain: Chain{{From: r.Prev, Last: r.Slot, Firer: r.Firer, Epoch: r.Epoch}}})
		}
	}
	if len(wms) > 0 {
		m.emit(SaveWatermarks{Watermarks: mergeByRule(m.cfg.Store, wms)})
	}
	m.send(f.From.Node, ack)
}

// mergeByRule merges each record into the store's watermark of its rule.
func mergeByRule(st Store, wms []Watermark) []Watermark {
	out := make([]Watermark, 0, len(wms))
	idx := map[int64]int{}
	for _, w := range wms {
		if i, ok := idx[w.Rule]; ok {
			out[i] = Merge(out[i], w)
			continue
		}
		if cur, ok := st.Watermark(w.Rule); ok {
			w = Merge(cur, w)
		}
		idx[w.Rule] = len(out)
		out = append(out, w)
	}
	return out
}

// firedAck counts a member's acks of fire records; a record acked by W − 1 members is
// deliverable. Acks count by record, so an ack of an earlier send of it counts too.
func (m *Member) firedAck(a FiredAck) {
	if a.To != m.self {
		return
	}
	recs, ok := m.sent[a.Seq]
	if !ok {
		return
	}
	refused := map[int]bool{}
	for _, i := range a.Refused {
		refused[i] = true
	}
	var ready []EventRef
	for i, k := range recs {
		r, ok := m.repl[k]
		if !ok {
			continue
		}
		if refused[i] {
			if _, held := m.held[m.cfg.PartitionOf(k.rule)]; held {
				// Still ours: a member promised a newer epoch to an acquisition that
				// could not complete. Raise ours above it; the record waits.
				m.renew[m.cfg.PartitionOf(k.rule)] = true
				continue
			}
			// The partition moved on: ask its holder.
			m.offering[k] = &offered{ref: r.ref}
			m.offersAdded = true
			delete(m.repl, k)
			continue
		}
		r.ackers[a.From.Node] = true
		if len(r.ackers) >= m.writeQuorum()-1 {
			ready = append(ready, r.ref)
			delete(m.repl, k)
		}
	}
	if len(ready) > 0 {
		m.emit(Deliverable{Events: ready})
	}
	if len(m.offering) > 0 {
		m.sendOffers()
	}
}

// sendOffers offers the events waiting for a verdict that were not offered in the last
// retry interval: those of partitions this member holds are decided here, the others go
// to their owner in this member's view. Called on every tick and when events join.
func (m *Member) sendOffers() {
	if len(m.offering) == 0 || m.now.Boot < m.nextOfferScan && !m.offersAdded {
		return
	}
	m.nextOfferScan, m.offersAdded = m.now.Boot+m.cfg.Retry/4, false
	var due []eventKey
	for k, o := range m.offering {
		if o.sent == 0 || m.now.Boot-o.sent >= m.cfg.Retry {
			due = append(due, k)
		}
	}
	keys := slices.SortedFunc(slices.Values(due), func(a, b eventKey) int {
		if c := cmp.Compare(a.rule, b.rule); c != 0 {
			return c
		}
		return cmp.Compare(a.slot, b.slot)
	})
	byOwner := map[string][]EventRef{}
	var local []EventRef
	for _, k := range keys {
		o := m.offering[k]
		o.sent = max(m.now.Boot, 1)
		ev := o.ref
		p := m.cfg.PartitionOf(ev.Rule)
		if _, ok := m.held[p]; ok {
			if m.justClaimed[p] {
				o.sent = 0 // decided on the next step
				m.offersAdded = true
				continue
			}
			local = append(local, ev)
			continue
		}
		if m.ring == nil {
			continue
		}
		if owner := m.ring.Owner(p); owner != m.self.Node {
			byOwner[owner] = append(byOwner[owner], ev)
		}
	}
	if len(local) > 0 {
		verdicts, epochs := m.decide(local)
		m.settle(local, verdicts, epochs)
	}
	for _, owner := range slices.Sorted(maps.Keys(byOwner)) {
		evs := byOwner[owner]
		for start := 0; start < len(evs); start += m.cfg.MaxRecords {
			m.offerID++
			m.send(owner, Offer{From: m.self, ID: m.offerID, Events: evs[start:min(len(evs), start+m.cfg.MaxRecords)]})
		}
	}
}

// decide gives the holder's verdicts on events (0 where this member does not hold the
// partition) and records the late ones in the rules' chains, so that the engine does
// not fire their slots and a repeated offer gets the same verdict.
func (m *Member) decide(evs []EventRef) ([]Verdict, []Epoch) {
	verdicts := make([]Verdict, len(evs))
	epochs := make([]Epoch, len(evs))
	var late []Watermark
	lateIdx := map[int64]int{}
	for i, ev := range evs {
		p := m.cfg.PartitionOf(ev.Rule)
		e, ok := m.held[p]
		if !ok || m.justClaimed[p] {
			continue
		}
		wm, found := m.cfg.Store.Watermark(ev.Rule)
		if j, ok := lateIdx[ev.Rule]; ok {
			wm, found = late[j], true
		}
		if !found {
			wm = Watermark{Rule: ev.Rule, Slot: NoSlot}
		}
		v := Decide(wm, ev.Slot, ev.Firer)
		verdicts[i], epochs[i] = v, e
		m.stats.Verdicts[v]++
		if v == Late {
			wm.Chain = wm.Chain.Extend(max(wm.Slot, ev.Prev), ev.Slot, ev.Firer, e)
			wm.Slot, wm.Count = ev.Slot, max(wm.Count, ev.Count)
			if j, ok := lateIdx[ev.Rule]; ok {
				late[j] = wm
			} else {
				lateIdx[ev.Rule] = len(late)
				late = append(late, wm)
			}
		}
	}
	if len(late) > 0 {
		m.emit(SaveWatermarks{Watermarks: late})
	}
	return verdicts, epochs
}

// settle applies verdicts to offered events: those to deliver are replicated under the
// holder's epoch, those fired by another or unknown are dropped, and those without a
// verdict wait for the next offer.
func (m *Member) settle(evs []EventRef, verdicts []Verdict, epochs []Epoch) {
	var recs []FireRecord
	drops := map[Verdict][]EventRef{}
	for i, ev := range evs {
		k := eventKey{ev.Rule, ev.Slot}
		if _, ok := m.offering[k]; !ok {
			continue // settled by an earlier reply
		}
		switch v := verdicts[i]; {
		case v == 0:
			continue
		case v.Deliver():
			delete(m.offering, k)
			m.repl[k] = &replicating{ref: ev, epoch: epochs[i], ackers: map[string]bool{}}
			recs = append(recs, FireRecord{Rule: ev.Rule, Prev: ev.Prev, Slot: ev.Slot, Count: ev.Count, Firer: ev.Firer, Epoch: epochs[i]})
		default:
			delete(m.offering, k)
			drops[v] = append(drops[v], ev)
		}
	}
	for _, v := range []Verdict{FiredByAnother, Unknown} {
		if len(drops[v]) > 0 {
			if v == Unknown {
				m.logf(true, "events dropped: no record says who fired their slots", "events", len(drops[v]),
					"first_rule", drops[v][0].Rule, "first_slot", drops[v][0].Slot)
			}
			m.emit(Drop{Events: drops[v], Verdict: v})
		}
	}
	m.replicate(recs)
}

// offer answers a member's offer of events.
func (m *Member) offer(o Offer) {
	if len(o.Events) > 4*m.cfg.MaxRecords {
		return // not from a member of ours
	}
	verdicts, epochs := m.decide(o.Events)
	m.send(o.From.Node, OfferReply{From: m.self, To: o.From, ID: o.ID, Events: o.Events, Verdicts: verdicts, Epochs: epochs})
}

func (m *Member) offerReply(r OfferReply) {
	if r.To != m.self || len(r.Verdicts) != len(r.Events) || len(r.Epochs) != len(r.Events) {
		return
	}
	for i, v := range r.Verdicts {
		if v > Unknown || v != 0 && r.Epochs[i].Node != r.From.Node {
			return // not a verdict of a holder
		}
	}
	m.settle(r.Events, r.Verdicts, r.Epochs)
}

// leave starts the hand-over of a node shutting down; force retires at once.
func (m *Member) leave(force bool) {
	if m.retired {
		return
	}
	if !m.leaving {
		m.leaving = true
		m.acq = nil
		m.updateView()
		m.beat() // the members learn it now, not at the next round
	}
	switch {
	case force:
		m.retire(m.transfer != nil && m.transfer.done())
	case m.handedOver():
		m.transferStore()
	}
}

// A Transfer chunk holds at most these: about 100 kB with full chains.
const (
	transferWatermarks = 500
	transferEpochs     = 4096
)

// transferStore copies this leaving member's store to the members, and retires once
// a quorum of the cluster without it holds all of it: every fire it stored, as firer
// or as acker, is then still stored by enough members that an acquisition's read
// quorum, counted without it, meets them (docs/protocol.md §7). A transfer that cannot
// complete (too few members answer) ends in a retirement that is not clean, on Force.
func (m *Member) transferStore() {
	if m.transfer == nil {
		m.transfer = m.newTransfer(func(string, uint64) bool { return true })
		if rest := m.clusterSize() - 1; rest > 0 {
			m.transfer.need = rest/2 + 1
		}
		m.logf(false, "copying the store to the members before retiring", "watermarks", m.transfer.watermarks,
			"chunks", len(m.transfer.chunks), "members", len(m.transfer.to), "needed", m.transfer.need)
	}
	if m.transfer.done() {
		m.retire(true)
		return
	}
	m.sendTransfer(m.transfer)
}

// copyStore copies this member's store to the members it has not copied it to (at their
// current incarnation), once W has grown in this incarnation: a fire stored by W of the
// smaller cluster is not stored by the W of the larger, and a read quorum of it could
// miss the fire (a node that ran alone and fired with nobody's ack, then others joined
// it). While W stays (N grows past 2·Replicas − 1, or from 4 to 5 with Q 3), any
// N − W + 1 stores of the larger cluster still meet the W that hold each fire, and
// nothing is copied. The copy gates nothing; it is sent again until each member
// acknowledged it or is gone. With TIMERD_EXPECT at the cluster's size W does not grow.
func (m *Member) copyStore() {
	w := m.writeQuorum()
	if m.grownFrom > 0 && w > m.grownFrom && !m.copyOwed {
		m.copyOwed = true
		m.logf(false, "the cluster grew: copying the store to its members", "write_quorum_from", m.grownFrom, "to", w)
	}
	m.grownFrom = w
	if m.copy == nil && m.copyOwed {
		want := func(name string, inc uint64) bool { return m.copiedTo[name] != inc }
		for _, name := range m.recipients() {
			if p := m.peers[name]; p != nil && p.inc > 0 && !m.quorumFenced(name, p.inc) && want(name, p.inc) {
				m.copy = m.newTransfer(want)
				break
			}
		}
	}
	t := m.copy
	if t == nil {
		return
	}
	pending := false
	for name, inc := range t.to {
		if len(t.acked[name]) == len(t.chunks) {
			m.copiedTo[name] = inc
			continue
		}
		if p := m.peers[name]; p != nil && p.inc == inc && !m.quorumFenced(name, inc) {
			pending = true
		}
	}
	if !pending {
		m.copy = nil
		return
	}
	m.sendTransfer(t)
}

// withFires is wms less those of rules never fired (no count, no chain): such a
// watermark is the rule's anchor, which every member derives from the rule itself
// (every node stores every rule), so it tells a grant's or a copy's receiver nothing of
// a fire. A million new rules made every acquisition carry a tenth of a million
// anchors, read, encoded, sent and merged.
func withFires(wms []Watermark) []Watermark {
	return slices.DeleteFunc(wms, NotFired)
}

// newTransfer snapshots the store's watermarks and the promised epochs in chunks, for
// the live members that want says yes to.
func (m *Member) newTransfer(want func(name string, inc uint64) bool) *transfer {
	wms := withFires(m.cfg.Store.FiredWatermarks(allPartitions(m.cfg.Partitions)))
	var epochs []PartitionEpoch
	for _, p := range slices.Sorted(maps.Keys(m.promised)) {
		epochs = append(epochs, PartitionEpoch{Partition: p, Epoch: m.promised[p]})
	}
	n := max(1, (len(wms)+transferWatermarks-1)/transferWatermarks, (len(epochs)+transferEpochs-1)/transferEpochs)
	m.copyID++
	t := &transfer{id: m.copyID, chunks: make([]Transfer, n), watermarks: len(wms), to: map[string]uint64{},
		acked: map[string]map[int]bool{}}
	for i := range t.chunks {
		t.chunks[i] = Transfer{From: m.self, ID: t.id, Chunk: i, Chunks: n,
			Epochs:     epochs[min(len(epochs), i*transferEpochs):min(len(epochs), (i+1)*transferEpochs)],
			Watermarks: wms[min(len(wms), i*transferWatermarks):min(len(wms), (i+1)*transferWatermarks)]}
	}
	for _, name := range m.recipients() {
		if p := m.peers[name]; p != nil && p.inc > 0 && !m.quorumFenced(name, p.inc) && want(name, p.inc) {
			t.to[name] = p.inc
			t.acked[name] = map[int]bool{}
		}
	}
	return t
}

// sendTransfer sends the chunks not acknowledged yet to the members still at the
// incarnation it was meant for, again and again with a growing wait.
func (m *Member) sendTransfer(t *transfer) {
	if t.sent != 0 && m.now.Boot-t.sent < t.every {
		return
	}
	// Sent over TCP, a copy is lost only with its connection; a member slow to merge it
	// must not get it again and again: resent after 4 retry intervals, then 8, up to 32.
	if t.sent == 0 {
		t.every = 4 * m.cfg.Retry
	} else {
		t.every = min(2*t.every, 32*m.cfg.Retry)
	}
	t.sent = m.now.Boot
	for _, name := range slices.Sorted(maps.Keys(t.to)) {
		inc := t.to[name]
		if p := m.peers[name]; p == nil || p.inc != inc || m.quorumFenced(name, inc) {
			continue
		}
		for i, c := range t.chunks {
			if !t.acked[name][i] {
				m.send(name, c)
			}
		}
	}
}

func allPartitions(n int) []int {
	out := make([]int, n)
	for i := range out {
		out[i] = i
	}
	return out
}

// transferred merges a chunk of a member's store copy and acknowledges it. A
// watermark from too far ahead is left out, as a fire record would be; an epoch raises
// this member's promise, as if it had granted it.
func (m *Member) transferred(t Transfer) {
	ack := TransferAck{From: m.self, To: t.From, ID: t.ID, Chunk: t.Chunk}
	mg := m.merged[t.From.Node]
	if mg == nil || mg.from != t.From || mg.id != t.ID {
		mg = &merged{from: t.From, id: t.ID, chunks: map[int]bool{}}
		m.merged[t.From.Node] = mg
	}
	if mg.chunks[t.Chunk] {
		m.send(t.From.Node, ack)
		return
	}
	mg.chunks[t.Chunk] = true
	var wms []Watermark
	for _, w := range t.Watermarks {
		if w.Slot > m.now.Wall+int64(m.cfg.SkewAllowance) {
			m.refuseFuture(t.From.Node, w.Rule, w.Slot)
			continue
		}
		wms = append(wms, w)
	}
	if len(wms) > 0 {
		m.emit(SaveWatermarks{Watermarks: mergeByRule(m.cfg.Store, wms)})
	}
	raised := map[int]Epoch{}
	for _, pe := range t.Epochs {
		if pe.Partition >= 0 && pe.Partition < m.cfg.Partitions && m.promised[pe.Partition].Less(pe.Epoch) {
			m.promised[pe.Partition] = pe.Epoch
			raised[pe.Partition] = pe.Epoch
		}
	}
	if len(raised) > 0 {
		m.emit(SaveEpochs{Epochs: raised})
	}
	m.send(t.From.Node, ack)
}

// handedOver: a leaving member holds nothing and has no fire on its way (replicated
// or offered): once it retires, the members no longer hear it.
func (m *Member) handedOver() bool {
	return len(m.held) == 0 && len(m.repl) == 0 && len(m.offering) == 0
}

// retire stops firing what is still held and tells every member this incarnation is
// gone. clean: it held nothing (each partition was handed over with its watermarks)
// and a quorum of the others holds a copy of its store, so the members may stop
// counting it in N.
func (m *Member) retire(clean bool) {
	if len(m.held) > 0 {
		m.emit(StopFiring{Parts: slices.Sorted(maps.Keys(m.held))})
		clear(m.held)
		m.heldVersion++
	}
	clear(m.renew)
	m.acq, m.retired = nil, true
	for _, n := range m.recipients() {
		m.send(n, Retired{From: m.self, Clean: clean})
	}
	m.logf(false, "retired", "incarnation", m.self.String(), "handed_over", clean)
}

// Retired reports whether the member has retired (after Leave).
func (m *Member) Retired() bool { return m.retired }
