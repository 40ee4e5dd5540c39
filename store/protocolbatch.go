package store

import (
	"errors"

	bolt "go.etcd.io/bbolt"

	"github.com/timerd/timerd/cluster/protocol"
)

// A ProtocolBatch collects what one batch of a member's steps writes — watermarks
// merged, partitions held and released, epochs promised, fences, events made
// deliverable or dropped — for CommitProtocol to write in one transaction: one commit
// and one fsync for the batch, not one for each effect. On a starved node the commits
// of an acquisition (its epochs, then its holdings, then its watermarks) each waited
// for the CPU while the peers' heartbeats waited behind them.
//
// Each method validates what it is given and refuses it whole, as the Store's method
// of the same name does. Later calls win over earlier ones where they disagree: a
// partition released after it was added is released; epochs and fences keep the
// highest; events are made ready or dropped in the order asked.
type ProtocolBatch struct {
	watermarks []protocol.Watermark
	held       map[int]protocol.Epoch
	released   map[int]bool
	epochs     map[int]protocol.Epoch
	fences     map[string]uint64
	events     []eventChange
}

// eventChange is a MarkReady (ready) or a DropPending of refs.
type eventChange struct {
	ready bool
	refs  []protocol.EventRef
}

// MergeWatermarks adds watermarks to merge (Store.MergeWatermarks).
func (b *ProtocolBatch) MergeWatermarks(wms []protocol.Watermark) error {
	for _, w := range wms {
		if err := validWatermark(w); err != nil {
			return err
		}
	}
	b.watermarks = append(b.watermarks, wms...)
	return nil
}

// SetHeld adds partitions held and released (Store.SetHeld).
func (b *ProtocolBatch) SetHeld(add map[int]protocol.Epoch, remove []int) error {
	for p, e := range add {
		if err := validEpoch(p, e); err != nil {
			return err
		}
	}
	for _, p := range remove {
		if err := validPartition(p); err != nil {
			return err
		}
	}
	if b.held == nil {
		b.held, b.released = map[int]protocol.Epoch{}, map[int]bool{}
	}
	for _, p := range remove {
		delete(b.held, p)
		b.released[p] = true
	}
	for p, e := range add {
		delete(b.released, p)
		b.held[p] = e
	}
	return nil
}

// SaveEpochs adds promised epochs (Store.SaveEpochs).
func (b *ProtocolBatch) SaveEpochs(epochs map[int]protocol.Epoch) error {
	for p, e := range epochs {
		if err := validEpoch(p, e); err != nil {
			return err
		}
	}
	if b.epochs == nil {
		b.epochs = map[int]protocol.Epoch{}
	}
	for p, e := range epochs {
		if cur, ok := b.epochs[p]; !ok || cur.Less(e) {
			b.epochs[p] = e
		}
	}
	return nil
}

// SaveFence adds a fence (Store.SaveFence).
func (b *ProtocolBatch) SaveFence(node string, upto uint64) error {
	if node == "" {
		return errors.New("fence without a node")
	}
	if b.fences == nil {
		b.fences = map[string]uint64{}
	}
	b.fences[node] = max(b.fences[node], upto)
	return nil
}

// MarkReady adds pending events to make deliverable (Store.MarkReady).
func (b *ProtocolBatch) MarkReady(refs []protocol.EventRef) {
	if len(refs) > 0 {
		b.events = append(b.events, eventChange{ready: true, refs: refs})
	}
}

// DropPending adds pending events to drop (Store.DropPending).
func (b *ProtocolBatch) DropPending(refs []protocol.EventRef) {
	if len(refs) > 0 {
		b.events = append(b.events, eventChange{refs: refs})
	}
}

// Empty reports whether the batch writes nothing.
func (b *ProtocolBatch) Empty() bool {
	return len(b.watermarks) == 0 && len(b.held) == 0 && len(b.released) == 0 &&
		len(b.epochs) == 0 && len(b.fences) == 0 && len(b.events) == 0
}

// Reset empties the batch for reuse.
func (b *ProtocolBatch) Reset() {
	clear(b.watermarks)
	b.watermarks = b.watermarks[:0]
	clear(b.held)
	clear(b.released)
	clear(b.epochs)
	clear(b.fences)
	clear(b.events)
	b.events = b.events[:0]
}

// CommitProtocol writes b in one transaction: all of it or, if any part fails (a ref
// that names no pending entry: ErrNotFound), none of it.
func (s *Store) CommitProtocol(b *ProtocolBatch) error {
	return s.commitProtocol("commit protocol batch", b)
}

func (s *Store) commitProtocol(op string, b *ProtocolBatch) error {
	if b.Empty() {
		return nil
	}
	// Lock order: wmu, then pmu (no writer takes them the other way round).
	s.wmu.Lock()
	defer s.wmu.Unlock()
	s.pmu.Lock()
	defer s.pmu.Unlock()
	var (
		jseq        uint64
		jrecs       []journalRec
		ready, gone int64 // pending entries made ready, and dropped
	)
	err := s.update(func(tx *bolt.Tx) error {
		ready, gone = 0, 0
		for _, c := range b.events {
			if c.ready {
				n, err := markReadyTx(tx, c.refs)
				if err != nil {
					return err
				}
				ready += n
				continue
			}
			n, err := dropPendingTx(tx, c.refs)
			if err != nil {
				return err
			}
			gone += n
		}
		if err := saveEpochsTx(tx, b.epochs); err != nil {
			return err
		}
		if err := saveFencesTx(tx, b.fences); err != nil {
			return err
		}
		if err := setHeldTx(tx, b.held, b.released); err != nil {
			return err
		}
		if len(b.watermarks) == 0 {
			return nil
		}
		var err error
		if jrecs, err = s.mergeWatermarksTx(tx, b.watermarks); err != nil {
			return err
		}
		jseq, err = journalAppend(tx, jrecs)
		return err
	})
	if err != nil {
		return s.wrap(op, err)
	}
	s.outboxLen.Add(ready)
	s.pendingLen.Add(-ready - gone)
	if len(b.watermarks) > 0 {
		s.indexJournal(jseq, jrecs)
		indexAdd(s, b.watermarks, func(w protocol.Watermark) int64 { return w.Rule })
		var fired []int64 // a merge is a join: fired if either was, and the stored one is indexed
		for _, w := range b.watermarks {
			if w.Fired() {
				fired = append(fired, w.Rule)
			}
		}
		indexFired(s, fired)
	}
	return nil
}
