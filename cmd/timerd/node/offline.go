package node

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/timerd/timerd/cluster/protocol"
	"github.com/timerd/timerd/store"
)

// A node whose store cannot commit (a full disk) steps out of the fire-once protocol
// and comes back as a new incarnation once it can (docs/operations.md, "When the disk
// fills"; docs/protocol.md, "A node whose store cannot commit"). Out, it is silent: it steps its member no more, answers
// no heartbeat and sends none, and commits no fire. To its peers that is a paused node:
// its lease lapses within L, they fence it after L + M and take its partitions over with
// the watermarks of their own stores. A member whose write failed cannot be stepped on:
// what it decided is no longer what its store holds (a promise, a fence, a release not
// written). So it is dropped, and the one that comes back is built from the store as at
// a start: a new incarnation, holding nothing, offering its pending fires to the holders.

// errFailingTooLong: the store has failed the engine's commits for longer than
// CommitFailureLeaveAfter (those failures are counted already).
var errFailingTooLong = errors.New("the store's commits have failed for too long")

// errStoreOffline refuses a commit while the node is out of the protocol: the engine
// tries again after a backoff.
var errStoreOffline = errors.New("not fireable: the store failed a commit; this node is out of the protocol until a probe commit succeeds")

// setAside takes the member out of the protocol after err, a failed step or a store
// that has failed commits for too long. It reports false for errors a probe cannot
// mend (a corrupt store): the node then stops, as before.
func (d *driver) setAside(err error) bool {
	if errors.Is(err, store.ErrCorrupt) {
		return false
	}
	if !errors.Is(err, errFailingTooLong) {
		d.n.health.record(err)
	}
	d.stepMu.Lock()
	d.offline.Store(true) // the commit path refuses from here on
	prev := d.snap.Load()
	// Status and metrics show it as it is: no lease, nothing held (statusAt zero: the
	// next incarnation's first snapshot computes its status afresh).
	d.snap.Store(&memberSnap{self: prev.self, held: map[int]protocol.Epoch{}, status: prev.status})
	d.stepMu.Unlock()
	d.log.Error("the store cannot commit: this node stops answering its peers, which fence it and take its partitions over; it comes back as a new incarnation once a probe commit succeeds",
		"incarnation", prev.self.String(), "partitions_held", len(prev.held), "err", err)
	return true
}

// commitsFailedTooLong sets the member aside when the store has failed the engine's
// commits for longer than CommitFailureLeaveAfter while others can take its partitions
// over: the member's own writes may still succeed (a small write fits where a batch of
// fires does not), and it would go on holding partitions it cannot fire. A node that is
// its own quorum keeps them: nobody else would fire them.
func (d *driver) commitsFailedTooLong() error {
	after := d.n.cfg.CommitFailureLeaveAfter
	if d.m.Quorum() == 1 || d.n.health.failingFor() <= after {
		return nil
	}
	_, err, _ := d.n.health.failing()
	return fmt.Errorf("%w (%s): %w", errFailingTooLong, after, err)
}

// awaitStore is the driver while the member is set aside: what comes in is dropped (a
// paused node hears nothing either; fires committed before are pending in the store and
// offered by the next incarnation), until the node's probe commit succeeds
// (storeHealth.run). Then a new incarnation rejoins. It returns when that is done or
// ctx ends.
func (d *driver) awaitStore(ctx context.Context) error {
	probe := time.NewTicker(probeEvery / 4)
	defer probe.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-d.n.cl.Messages():
		case <-d.n.cl.KnownChanges():
		case <-d.committed:
		case req := <-d.leaveReq:
			// Nothing can be handed over: the members take the partitions over.
			d.leaving = true
			close(req.taken)
			d.closeRetired()
		case <-probe.C:
			if _, _, failing := d.n.health.failing(); !failing && !d.leaving {
				return d.rejoin()
			}
		}
	}
}

// rejoin brings the node back as a new incarnation, built from the store as at a start:
// the old member's rules leave the engine (the new one acquires its share and loads them
// from the store's watermarks), and what the old member had not written is forgotten.
func (d *driver) rejoin() error {
	d.stepMu.Lock()
	old := d.snap.Load().self // N 0: none started yet (the node started on a full disk)
	d.stopFiring(slices.Collect(maps.Keys(d.firing)))
	m, err := d.newMember()
	if err != nil {
		d.stepMu.Unlock()
		return err
	}
	d.m = m
	d.discardBatch()
	d.publish()
	d.offline.Store(false)
	d.stepMu.Unlock()
	d.log.Info("the store takes commits again: back as a new incarnation", "old", old.String(), "incarnation", m.Self().String())
	if err := d.begin(); err != nil {
		return err
	}
	if d.isReadied() {
		return d.batch(protocol.Ready{})
	}
	return nil
}

// isReadied reports whether the node told the driver its rule book is loaded.
func (d *driver) isReadied() bool {
	select {
	case <-d.readyCh:
		return true
	default:
		return false
	}
}
