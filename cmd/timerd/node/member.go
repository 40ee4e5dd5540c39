package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/timerd/timerd/cluster"
	"github.com/timerd/timerd/cluster/protocol"
	"github.com/timerd/timerd/scheduler"
	"github.com/timerd/timerd/store"
)

// memberTick is how often the driver steps the member when nothing else comes:
// heartbeats (every 200 ms), fences, acquisitions and re-sends fall due on ticks.
const memberTick = 50 * time.Millisecond

// errNotFireable fails a commit whose rules this node may not fire now (no lease, or a
// partition released meanwhile): the engine tries again after a backoff, by which time
// the lease is back or the released rules are gone from the engine.
var errNotFireable = errors.New("not fireable: no lease, or the partition is not held")

// driver runs the node's side of the fire-once protocol (docs/protocol.md): one
// goroutine owns the protocol.Member, steps it and carries out its effects in order.
// The commit path reads what the node may fire from a snapshot published after every
// step, before the step's effects are carried out, so a release is seen by the commit
// path before the grant that hands the partition over is sent.
type driver struct {
	n           *Node
	m           *protocol.Member
	log         *slog.Logger
	partitionOf func(int64) int
	ringOf      func(members []string) protocol.Ring
	committed   chan []protocol.EventRef
	leaveReq    chan leaveReq
	// retireOwed: leave returned with fires still on their way and its member not
	// retired; settle retires it. Only the shutdown's goroutine uses it.
	retireOwed bool
	retired    chan struct{} // closed once the member retired
	readyCh    chan struct{} // closed by the node once its rule book is loaded (markReady)

	memberCfg protocol.MemberConfig // the member's, Self.N aside (set by each new incarnation)
	readyOnce sync.Once
	// offline: a store write failed, and the member is set aside until a probe commit
	// succeeds (offline.go). The commit path refuses while it is set.
	offline      atomic.Bool
	leaving      bool // leave was asked while offline: no new incarnation (driver goroutine only)
	handoverMu   sync.Mutex
	handoverSeq  uint64
	handoverAcks map[uint64]chan struct{} // by Handover ID: closed when acknowledged
	snap         atomic.Pointer[memberSnap]
	// firing: the partitions whose rules are in the engine. Guarded by the node's ownMu,
	// which intake holds too: a rule intake stores joins the engine only once its
	// partition's watermarks (the grants') are in the store.
	firing map[int]bool
	// readErr is a read of the store the member made in the current step that failed.
	readErr error
	// A batch of steps (run): what its effects write, the partitions whose firing
	// starts and the messages to send are held until the batch ends, when the writes go
	// in one transaction (the watermarks merged, the overlay, with them), then the
	// partitions start firing and then the messages go: an ack or a grant never leaves
	// before what it rests on is stored, and a rule never fires before its grant's
	// watermarks are. Only an incarnation is written at once (Reincarnate): the commit
	// path stamps fires with it as soon as the step is published.
	overlay  map[int64]protocol.Watermark
	writes   store.ProtocolBatch
	starting map[int]protocol.Epoch
	drops    []protocol.Drop
	notify   bool // events were made deliverable: delivery is woken after the writes
	sends    []protocol.Send
	// stepMu orders the member's steps (and the overlay's writes) with the commit path:
	// a step reads watermarks and acts on them (a grant carries them, a verdict says a
	// slot is another's to deliver, a release stops the engine), and a fire committed
	// between its read and its effects would be in neither. Held by the driver for each
	// step and flush, by the commit path from its lease check to its store commit.
	stepMu sync.Mutex
}

// memberSnap is what the commit path and the status page read of the member.
type memberSnap struct {
	self        protocol.Incarnation
	held        map[int]protocol.Epoch // shared between snapshots while heldVersion stays
	heldVersion uint64
	leaseUntil  time.Duration
	always      bool            // a quorum of one: always leased
	status      protocol.Status // refreshed when held changes and every statusEvery
	stats       protocol.Stats  // refreshed with status
	statusAt    time.Time
}

// statusEvery bounds how stale the status part of a snapshot (view, settled, skew) gets:
// computing it walks every partition, too much for every step.
const statusEvery = 250 * time.Millisecond

func (s *memberSnap) mayFire(p int, now time.Duration) (protocol.Epoch, bool) {
	e, ok := s.held[p]
	if !ok || !s.always && now >= s.leaseUntil {
		return protocol.Epoch{}, false
	}
	return e, true
}

// leased reports whether the lease covers now.
func (s *memberSnap) leased(now time.Duration) bool { return s.always || now < s.leaseUntil }

// memberStore is the node's store as the member reads it. The member's Store has no
// errors: a failed read is kept, and the step that made it fails (a grant without
// its watermarks would let the acquirer fire again what this node knows was fired).
type memberStore struct{ d *driver }

// Watermark reads the store through the watermarks merged in this batch, not yet
// written (driver.overlay).
func (s memberStore) Watermark(rule int64) (protocol.Watermark, bool) {
	if wm, ok := s.d.overlay[rule]; ok {
		return wm, true
	}
	wm, ok, err := s.d.n.store.LoadWatermark(rule)
	if err != nil {
		s.d.readErr = err
	}
	return wm, ok
}

func (s memberStore) FiredWatermarks(parts []int) []protocol.Watermark {
	// By the partition index of fired watermarks: a grant of a few partitions reads
	// their rules that fired, not the store's every watermark (this runs under stepMu,
	// which the commit path waits on).
	wms, err := s.d.n.store.IndexedFiredWatermarks(parts)
	if err != nil {
		s.d.readErr = err
	}
	if len(s.d.overlay) == 0 {
		return wms
	}
	want := make(map[int]bool, len(parts))
	for _, p := range parts {
		want[p] = true
	}
	seen := make(map[int64]bool, len(wms))
	for i, w := range wms {
		seen[w.Rule] = true
		if o, ok := s.d.overlay[w.Rule]; ok {
			wms[i] = o
		}
	}
	for rule, o := range s.d.overlay {
		if !seen[rule] && want[s.d.partitionOf(rule)] && o.Fired() {
			wms = append(wms, o)
		}
	}
	return wms
}

// newMember starts a new incarnation on the node's store: the next incarnation number,
// the durable protocol state (fences, promised epochs) and nothing held.
func (d *driver) newMember() (*protocol.Member, error) {
	n := d.n
	inc, err := n.store.NextIncarnation()
	if err != nil {
		return nil, fmt.Errorf("start an incarnation: %w", err)
	}
	durable, err := n.store.Durable()
	if err != nil {
		return nil, fmt.Errorf("read the protocol state: %w", err)
	}
	cfg := d.memberCfg
	cfg.Self.N = inc
	m, err := protocol.NewMember(cfg, durable)
	if err != nil {
		return nil, err
	}
	// The new incarnation holds nothing: it acquires what its view gives it.
	if len(durable.Held) > 0 {
		if err := n.store.SetHeld(nil, slices.Sorted(maps.Keys(durable.Held))); err != nil {
			return nil, fmt.Errorf("clear the partitions held before: %w", err)
		}
	}
	return m, nil
}

// newDriver starts a new incarnation on the node's store.
func newDriver(n *Node) (*driver, error) {
	cc := n.cfg.clusterConfig()
	ring := cc.Ring
	if ring.Partitions == 0 {
		ring.Partitions = cluster.DefaultPartitions
	}
	partitionOf := func(id int64) int { return cluster.PartitionOf(ring, id) }
	ringOf, err := cluster.RingOf(ring)
	if err != nil {
		return nil, err
	}
	d := &driver{
		n:            n,
		log:          n.cfg.Logger.With("component", "protocol"),
		partitionOf:  partitionOf,
		ringOf:       ringOf,
		committed:    make(chan []protocol.EventRef, 64),
		leaveReq:     make(chan leaveReq),
		retired:      make(chan struct{}),
		readyCh:      make(chan struct{}),
		handoverAcks: map[uint64]chan struct{}{},
		firing:       map[int]bool{},
		overlay:      map[int64]protocol.Watermark{},
		starting:     map[int]protocol.Epoch{},
		memberCfg: protocol.MemberConfig{
			Self:        protocol.Incarnation{Node: n.cl.Name()},
			Expect:      max(cc.Expect, 1),
			Replicas:    cc.Replicas,
			Partitions:  ring.Partitions,
			PartitionOf: partitionOf,
			Ring:        ringOf,
			// A Fired message within one UDP packet: the TCP queue to a peer is for the
			// large, rare messages (grants, offers, hand-overs).
			MaxRecords: protocol.MaxFiredRecordsPerPacket,
		},
	}
	d.memberCfg.Store = memberStore{d: d}
	// The partition index: what an acquisition, a release and a grant read of the store
	// is the rules and watermarks of their partitions only (ownership.go).
	if err := d.indexPartitions(); err != nil {
		return nil, err
	}
	d.m, err = d.newMember()
	switch {
	case err == nil:
		d.publish()
		d.log.Info("incarnation started", "incarnation", d.m.Self().String(), "expect", d.memberCfg.Expect)
	case errors.Is(err, store.ErrCorrupt):
		return nil, err
	default:
		// The store cannot commit (a full disk): the node starts out of the protocol,
		// not ready, and starts its incarnation once a probe succeeds (offline.go). An
		// exit would have it restarted into the same disk.
		n.health.record(err)
		d.offline.Store(true)
		d.snap.Store(&memberSnap{self: d.memberCfg.Self, held: map[int]protocol.Epoch{}})
		d.log.Error("the store cannot commit: no incarnation started; it starts once a probe commit succeeds", "err", err)
	}
	return d, nil
}

func (d *driver) now() protocol.Time {
	return protocol.Time{Boot: bootNow(), Wall: d.n.cfg.Now().UnixNano()}
}

func (d *driver) publish() {
	prev := d.snap.Load()
	s := &memberSnap{self: d.m.Self(), heldVersion: d.m.HeldVersion(), leaseUntil: d.m.LeaseUntil(),
		always: d.m.Quorum() == 1}
	if prev != nil && prev.heldVersion == s.heldVersion && d.n.cfg.Now().Sub(prev.statusAt) < statusEvery {
		s.held, s.status, s.stats, s.statusAt = prev.held, prev.status, prev.stats, prev.statusAt
	} else {
		s.status, s.stats, s.statusAt = d.m.Status(), d.m.Stats(), d.n.cfg.Now()
		s.held = s.status.Held
	}
	d.snap.Store(s)
}

// run steps the member until ctx ends: on every message, membership change, commit and
// tick. Its effects are carried out before the next step.
func (d *driver) run(ctx context.Context) error {
	// A node started on a full disk is out of the protocol: awaitStore begins its first incarnation.
	if !d.offline.Load() {
		if err := d.begin(); err != nil && !d.setAside(err) {
			return err
		}
	}
	tick := time.NewTicker(memberTick)
	defer tick.Stop()
	readyC := d.readyCh
	for {
		if d.offline.Load() {
			if err := d.awaitStore(ctx); err != nil && !d.setAside(err) {
				return err
			}
			if ctx.Err() != nil {
				return nil
			}
			if d.isReadied() {
				readyC = nil // a new incarnation was told so by rejoin
			}
			continue
		}
		var in protocol.Input
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
			in = protocol.Tick{}
		case msg := <-d.n.cl.Messages():
			in = d.input(msg)
		case <-d.n.cl.KnownChanges():
			in = protocol.Known{Names: d.n.cl.Known()}
		case refs := <-d.committed:
			in = protocol.Committed{Events: refs}
		case req := <-d.leaveReq:
			in = protocol.Leave{Force: req.force}
			close(req.taken)
		case <-readyC:
			in, readyC = protocol.Ready{}, nil
		}
		err := d.batch(in)
		if err == nil {
			err = d.commitsFailedTooLong()
		}
		if err != nil && !d.setAside(err) {
			return err
		}
		if d.m.Retired() {
			d.closeRetired()
		}
	}
}

// begin starts an incarnation's steps: the events of earlier incarnations still
// pending are offered to their partitions' holders, and the member learns who gossip lists.
func (d *driver) begin() error {
	pending, err := d.n.store.Pending()
	if err != nil {
		return fmt.Errorf("read the events not yet deliverable: %w", err)
	}
	if len(pending) > 0 {
		refs := make([]protocol.EventRef, len(pending))
		for i, e := range pending {
			refs[i] = e.Ref()
		}
		d.log.Info("events of an earlier incarnation offered to their partitions' holders", "events", len(refs))
		if err := d.batch(protocol.Unsettled{Events: refs}); err != nil {
			return err
		}
	}
	return d.batch(protocol.Known{Names: d.n.cl.Known()})
}

func (d *driver) closeRetired() {
	select {
	case <-d.retired:
	default:
		close(d.retired)
	}
}

// maxBatch and maxBatchTime bound the inputs stepped before their writes and messages
// go out: on a starved node (two busy cores, a race build) 256 steps took up to 9 s,
// and its peers, whose heartbeats it acked only at the end, fenced it.
const (
	maxBatch     = 256
	maxBatchTime = 100 * time.Millisecond
)

// batch steps in and then every message and commit already waiting (up to maxBatch),
// then writes the watermarks they merged in one transaction and sends their messages:
// one fsync for a burst of fire records, not one each, so that a busy node still
// answers heartbeats within its peers' leases.
func (d *driver) batch(in protocol.Input) error {
	start := time.Now()
	var steps int
	var slowest time.Duration
	var slowestIn protocol.Input
	step := func(in protocol.Input) error {
		t := time.Now()
		err := d.step(in)
		if took := time.Since(t); took > slowest {
			slowest, slowestIn = took, in
		}
		steps++
		return err
	}
	// A tick goes last: the heartbeats waiting are heard before silence is judged.
	_, tick := in.(protocol.Tick)
	if in != nil && !tick {
		if err := step(in); err != nil {
			return err
		}
	}
more:
	for range maxBatch {
		if time.Since(start) > maxBatchTime {
			break // what was stepped goes out now: heartbeat acks must not wait for the queue
		}
		select {
		case msg := <-d.n.cl.Messages():
			in = d.input(msg)
		case refs := <-d.committed:
			in = protocol.Committed{Events: refs}
		default:
			break more
		}
		if in == nil {
			continue
		}
		if err := step(in); err != nil {
			return err
		}
	}
	if tick {
		// Messages left waiting may hold a heartbeat: silence is judged once they are read.
		backlog := len(d.n.cl.Messages()) > 0
		if err := step(protocol.Tick{Backlog: backlog}); err != nil {
			return err
		}
	}
	stepped := time.Since(start)
	err := d.endBatch()
	if took := time.Since(start); took > slowBatch {
		// Heartbeats wait while a batch runs: a batch near the fence time (L + M) gets
		// this node fenced by its peers. A slow disk or a starved process shows here.
		what := fmt.Sprintf("%T", slowestIn)
		if r, ok := slowestIn.(protocol.Receive); ok {
			what = fmt.Sprintf("%T", r.Msg)
		}
		d.log.Warn("protocol batch slow: heartbeats waited", "took", took.Round(time.Millisecond).String(),
			"steps", steps, "slowest", what, "slowest_took", slowest.Round(time.Millisecond).String(),
			"write_and_send_took", (took - stepped).Round(time.Millisecond).String())
	}
	return err
}

// slowBatch is the batch time that is logged: two heartbeat intervals.
const slowBatch = 2 * protocol.DefaultHeartbeat

// input is a message as the member's input; nil for those the driver answers itself
// (a leaving node's hand-over).
func (d *driver) input(msg protocol.Message) protocol.Input {
	switch m := msg.(type) {
	case protocol.Handover:
		d.takeHandover(m)
		return nil
	case protocol.HandoverAck:
		d.handoverAcked(m)
		return nil
	}
	return protocol.Receive{Msg: msg}
}

// endBatch writes what the batch's effects wrote (flush), then sends its messages.
func (d *driver) endBatch() error {
	d.stepMu.Lock()
	err := d.flush()
	d.stepMu.Unlock()
	if err != nil {
		return err
	}
	for _, e := range d.sends {
		if err := d.n.cl.Send(e.To, e.Msg); err != nil {
			d.log.Debug("protocol message not sent", "to", e.To, "type", fmt.Sprintf("%T", e.Msg), "err", err)
		}
	}
	clear(d.sends)
	d.sends = d.sends[:0]
	return nil
}

// flush commits the batch's writes, the overlay's watermarks with them, in one
// transaction; then the partitions acquired start firing, delivery is woken for the
// events made deliverable and the events dropped are reported. stepMu is held.
func (d *driver) flush() error {
	if len(d.overlay) > 0 {
		wms := make([]protocol.Watermark, 0, len(d.overlay))
		for _, w := range d.overlay {
			wms = append(wms, w)
		}
		if err := d.writes.MergeWatermarks(wms); err != nil {
			return err
		}
	}
	if err := d.n.store.CommitProtocol(&d.writes); err != nil {
		return err
	}
	d.writes.Reset()
	clear(d.overlay)
	if d.notify {
		d.notify = false
		d.n.delivery.Notify()
	}
	for _, e := range d.drops {
		d.n.metrics.fenced.WithLabelValues(e.Verdict.String()).Add(float64(len(e.Events)))
		d.n.reportDropped(e.Events, e.Verdict)
	}
	clear(d.drops)
	d.drops = d.drops[:0]
	if len(d.starting) == 0 {
		return nil
	}
	err := d.startFiring(d.starting)
	clear(d.starting)
	return err
}

// discardBatch forgets what the batch had not written (a member set aside: the next
// incarnation starts from the store).
func (d *driver) discardBatch() {
	d.writes.Reset()
	clear(d.overlay)
	clear(d.starting)
	clear(d.drops)
	d.drops = d.drops[:0]
	d.notify = false
	clear(d.sends)
	d.sends = d.sends[:0]
}

// decidedMeanwhile reports whether a fire of rule at slot is at or below what this
// batch merged for the rule and has not written yet (a verdict, a transfer, a peer's
// fire). stepMu is held.
func (d *driver) decidedMeanwhile(rule int64, slot int64) bool {
	w, ok := d.overlay[rule]
	return ok && slot <= w.Slot
}

// markReady tells the member the node's rule book is loaded: it may acquire now.
func (d *driver) markReady() {
	d.readyOnce.Do(func() { close(d.readyCh) })
}

type leaveReq struct {
	force bool
	taken chan struct{}
}

// settle waits, at most within, until no fire of this node waits to be replicated: the
// engine is stopped, and the fires it committed last become deliverable. A leave that
// ended with every partition handed over but fires still on their way left its member
// unretired (leave): it takes their acks meanwhile, and is retired here, once they are
// in or within is over. (Retired, a member takes no ack: waiting then was for nothing.)
func (d *driver) settle(within time.Duration) {
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		if n, err := d.n.store.PendingLen(); err != nil || n == 0 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if n, _ := d.n.store.PendingLen(); n > 0 {
		d.log.Warn("leaving with fires not yet replicated; offered again at the next start", "events", n)
	}
	if d.retireOwed {
		d.retireOwed = false
		ctx, cancel := context.WithTimeout(context.Background(), retireWait)
		defer cancel()
		d.forceRetire(ctx)
	}
}

// retireWait bounds how long a forced retirement waits at least for the run loop to
// take it (a batch of a starved node takes seconds).
const retireWait = 3 * time.Second

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// leave hands this node's partitions over and retires its incarnation: it tells the
// members it is leaving, answers their acquisitions with its watermarks and the fires
// still on their way, and retires once it holds nothing; after within it retires anyway
// (its partitions are then taken over). The engine is stopped before. A member that has
// handed every partition over but still waits for acks of its last fires when ctx ends
// is left unretired for settle, which waits on for them: a node that leaves for good
// would strand them (nobody delivers them, and the new holders know their slots as fired).
func (d *driver) leave(ctx context.Context, within time.Duration) {
	start := time.Now()
	if !d.askLeave(ctx, false) {
		return
	}
	retired := func() {
		if d.offline.Load() {
			d.log.Warn("left out of the protocol (the store cannot commit): nothing handed over; the members take the partitions over")
			return
		}
		d.log.Info("partitions handed over; incarnation retired", "took", time.Since(start).Round(time.Millisecond).String())
	}
	t := time.NewTimer(within)
	defer t.Stop()
	select {
	case <-d.retired:
		retired()
		return
	case <-t.C:
	case <-ctx.Done():
	}
	// Fires still on their way to their replicas: a forced retirement would strand them
	// in this store (a node that leaves for good never offers them again). Wait while
	// there are any, within ctx, partitions handed over or not: a member that cannot
	// take its partitions (another one paused) holds up the hand-over, not the acks.
	if d.pendingFires() {
		d.log.Info("waiting for the last fires to reach their replicas", "held", len(d.snap.Load().held))
		until := deadlineOr(ctx, time.Now().Add(within))
		for d.pendingFires() && time.Now().Before(until) && ctx.Err() == nil {
			select {
			case <-d.retired:
				retired()
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
		if d.pendingFires() && len(d.snap.Load().held) == 0 && !d.offline.Load() {
			d.retireOwed = true // settle waits on, then retires it
			return
		}
		if d.pendingFires() {
			d.log.Warn("fires still not replicated at the end of the leave: they stay in this store, and are offered "+
				"to their partitions' holders when this node starts again", "held", len(d.snap.Load().held))
		}
	}
	d.log.Warn("partitions not all handed over in time: retiring anyway; the members take them over",
		"held", len(d.snap.Load().held), "waited", within)
	// Not only within ctx, which may be over by now: a Leave asked then might never be
	// taken, and the members would not hear that this incarnation is gone.
	rctx, cancel := context.WithDeadline(context.Background(), later(deadlineOr(ctx, time.Time{}), time.Now().Add(retireWait)))
	defer cancel()
	d.forceRetire(rctx)
}

// askLeave hands the run loop a Leave (forced or not); false if ctx ended first.
func (d *driver) askLeave(ctx context.Context, force bool) bool {
	req := leaveReq{force: force, taken: make(chan struct{})}
	select {
	case d.leaveReq <- req:
		<-req.taken
		return true
	case <-ctx.Done():
		return false
	}
}

// forceRetire retires the member, handed over or not, and waits for it within ctx.
func (d *driver) forceRetire(ctx context.Context) {
	if !d.askLeave(ctx, true) {
		return
	}
	select {
	case <-d.retired:
	case <-ctx.Done():
	}
}

// pendingFires reports whether this node's store holds fires not yet replicated.
func (d *driver) pendingFires() bool {
	n, err := d.n.store.PendingLen()
	return err == nil && n > 0
}

// deadlineOr is ctx's deadline, or def when it has none.
func deadlineOr(ctx context.Context, def time.Time) time.Time {
	if dl, ok := ctx.Deadline(); ok {
		return dl
	}
	return def
}

func (d *driver) step(in protocol.Input) error {
	d.stepMu.Lock()
	defer d.stepMu.Unlock()
	d.readErr = nil
	effects := d.m.Step(d.now(), in)
	if d.readErr != nil {
		// What the member decided may rest on a read that failed (a grant without
		// watermarks): none of it is carried out. Stop; a restart is a new incarnation.
		return fmt.Errorf("protocol step: read the store: %w", d.readErr)
	}
	d.publish()
	for _, e := range effects {
		if err := d.apply(e); err != nil {
			// The store failed under the protocol's feet: what it holds no longer
			// matches what the member decided. Stop; a restart is a new incarnation.
			return fmt.Errorf("protocol effect %T: %w", e, err)
		}
	}
	return nil
}

func (d *driver) apply(e protocol.Effect) error {
	n := d.n
	switch e := e.(type) {
	case protocol.Send:
		d.sends = append(d.sends, e) // at the end of the batch, after its writes
	case protocol.StartFiring:
		// The rules are loaded at the end of the batch, from the store, once the
		// grants' watermarks are written (a merge is a join: the order of the two
		// does not matter). Until then the member's reads see them in the overlay.
		if _, err := d.mergeIntoOverlay(e.Watermarks); err != nil {
			return err
		}
		if err := d.writes.SetHeld(e.Parts, nil); err != nil {
			return err
		}
		maps.Copy(d.starting, e.Parts)
	case protocol.StopFiring:
		for _, p := range e.Parts {
			delete(d.starting, p)
		}
		d.stopFiring(e.Parts)
		return d.writes.SetHeld(nil, e.Parts)
	case protocol.SaveWatermarks:
		merged, err := d.mergeIntoOverlay(e.Watermarks)
		if err != nil {
			return err
		}
		for _, w := range merged {
			n.engine.Advance(w.Rule, scheduler.Watermark{Slot: time.Unix(0, w.Slot).UTC(), Count: w.Count})
		}
	case protocol.Deliverable:
		d.writes.MarkReady(e.Events)
		d.notify = true
	case protocol.Drop:
		d.writes.DropPending(e.Events)
		d.drops = append(d.drops, e)
	case protocol.Reincarnate:
		n.metrics.reincarnations.Inc()
		return n.store.SetIncarnation(e.Self.N)
	case protocol.Fence:
		return d.writes.SaveFence(e.Node, e.Upto)
	case protocol.SaveEpochs:
		return d.writes.SaveEpochs(e.Epochs)
	case protocol.Log:
		if e.Warn {
			d.log.Warn(e.Msg, e.Attrs...)
		} else {
			d.log.Info(e.Msg, e.Attrs...)
		}
	}
	return nil
}

// runnableLocked reports whether the engine may run rule id: its partition's rules are
// being fired here. The node's ownMu is held.
func (d *driver) runnableLocked(id int64) bool { return d.firing[d.partitionOf(id)] }

// handoverBatch bounds the events of one Handover message (sent over TCP).
const handoverBatch = 500

// handOver gives the ready events this node could not deliver before leaving (the API
// was down) to the members that now hold their partitions, and deletes each batch
// once its taker acknowledged it: nothing is stranded in the store of a node that is
// gone for good. It returns how many were handed over; the rest stays for the next
// start. Delivery is stopped before, so that no event is both posted and handed over.
func (d *driver) handOver(ctx context.Context) (int, error) {
	n := d.n
	peers := n.cl.Known()
	if len(peers) == 0 {
		return 0, nil
	}
	ring := d.ringOf(peers)
	entries, err := n.store.Outbox(0, 1<<20)
	if err != nil {
		return 0, err
	}
	type batch struct {
		to   string
		msg  protocol.Handover
		seqs []uint64
	}
	var batches []*batch
	open := map[string]*batch{}
	for _, e := range entries {
		to := ring.Owner(d.partitionOf(e.Event.RuleID))
		if to == "" {
			continue
		}
		b := open[to]
		if b == nil || len(b.msg.Events) == handoverBatch {
			d.handoverMu.Lock()
			d.handoverSeq++
			id := d.handoverSeq
			d.handoverMu.Unlock()
			b = &batch{to: to, msg: protocol.Handover{From: d.snap.Load().self, ID: id}}
			open[to] = b
			batches = append(batches, b)
		}
		b.msg.Events = append(b.msg.Events, protocol.HandedEvent{Key: e.Event.IdempotencyKey, Rule: e.Event.RuleID,
			Slot: e.Event.Slot.UnixNano(), Body: e.Event.Body})
		b.seqs = append(b.seqs, e.Seq)
	}
	handed := 0
	for _, b := range batches {
		acked := make(chan struct{})
		d.handoverMu.Lock()
		d.handoverAcks[b.msg.ID] = acked
		d.handoverMu.Unlock()
		if err := n.cl.Send(b.to, b.msg); err != nil {
			d.log.Warn("events not handed over", "to", b.to, "events", len(b.seqs), "err", err)
			continue
		}
		select {
		case <-acked:
			if err := n.store.AckOutbox(b.seqs...); err != nil {
				return handed, err
			}
			handed += len(b.seqs)
		case <-ctx.Done():
			return handed, ctx.Err()
		}
	}
	return handed, nil
}

// takeHandover adds a leaving node's ready events to this node's outbox and
// acknowledges them.
func (d *driver) takeHandover(m protocol.Handover) {
	n := d.n
	evs := make([]store.Event, 0, len(m.Events))
	for _, e := range m.Events {
		evs = append(evs, store.Event{RuleID: e.Rule, Slot: time.Unix(0, e.Slot).UTC(), IdempotencyKey: e.Key, Body: e.Body})
	}
	if err := n.store.AppendReady(evs); err != nil {
		d.log.Error("handed-over events not taken; they stay with the leaving node", "from", m.From.String(),
			"events", len(evs), "err", err)
		return
	}
	n.delivery.Notify()
	d.log.Info("took the undelivered events of a leaving node", "from", m.From.String(), "events", len(evs))
	if err := n.cl.Send(m.From.Node, protocol.HandoverAck{From: d.snap.Load().self, To: m.From, ID: m.ID}); err != nil {
		d.log.Warn("handover not acknowledged", "to", m.From.String(), "err", err)
	}
}

func (d *driver) handoverAcked(m protocol.HandoverAck) {
	d.handoverMu.Lock()
	defer d.handoverMu.Unlock()
	if ch, ok := d.handoverAcks[m.ID]; ok && m.To == d.snap.Load().self {
		close(ch)
		delete(d.handoverAcks, m.ID)
	}
}
