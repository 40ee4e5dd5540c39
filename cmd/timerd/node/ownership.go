package node

import (
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/timerd/timerd/cluster"
	"github.com/timerd/timerd/cluster/protocol"
	"github.com/timerd/timerd/scheduler"
	"github.com/timerd/timerd/store"
)

// What a node of a cluster fires and knows of the cluster's: its cluster
// config, the rules the engine may run here, and the cluster's watermarks.

// clusterConfig is Config.Cluster with the node's name, logger and registry
// where it leaves them unset.
func (c *Config) clusterConfig() cluster.Config {
	cc := *c.Cluster
	if cc.NodeName == "" {
		cc.NodeName = c.NodeName
	}
	if cc.Logger == nil {
		cc.Logger = c.Logger
	}
	if cc.Registerer == nil && c.Registry != nil {
		cc.Registerer = c.Registry
	}
	return cc
}

// runnableLocked reports whether the engine may run rule id: always on a single
// node; in a cluster when its partition is fired here (member.go). ownMu is held.
func (n *Node) runnableLocked(id int64) bool {
	return n.drv == nil || n.drv.runnableLocked(id)
}

// clusterWatermark is what the cluster last fired of a rule this node does not
// store yet, as its store knows it (the watermarks of fires replicated to this
// node and of the grants it received): zero if none.
func (n *Node) clusterWatermark(id int64) scheduler.Watermark {
	if n.cl == nil {
		return scheduler.Watermark{}
	}
	wm, ok, err := n.store.LoadWatermark(id)
	if err != nil || !ok || wm.Slot == protocol.NoSlot {
		return scheduler.Watermark{}
	}
	return scheduler.Watermark{Slot: time.Unix(0, wm.Slot).UTC(), Count: wm.Count}
}

// Adoption: the engine holds exactly the rules of the partitions this node holds
// (docs/protocol.md §5). An acquisition loads the rules of the partitions acquired, a
// release removes them; both read the store's partition index (store/partindex.go), so
// a change of owner costs the rules that moved, not a walk of every rule stored. Both
// run under stepMu (the protocol step) and ownMu (intake's engine changes wait).

// indexPartitions builds the store's partition index, which the store's writers keep
// from then on: once per process, before the first acquisition.
func (d *driver) indexPartitions() error {
	start := time.Now()
	if err := d.n.store.IndexPartitions(d.partitionOf); err != nil {
		return fmt.Errorf("index the store by partition: %w", err)
	}
	d.log.Info("store indexed by partition", "ids", d.n.store.IndexedIDs(),
		"took", time.Since(start).Round(time.Millisecond).String())
	return nil
}

// mergeIntoOverlay merges wms into the watermarks this batch merged and has not
// written yet (the overlay), each with what the overlay or else the store holds of its
// rule (the store's read in one transaction), and returns them merged. The batch's end
// writes the overlay (flush); meanwhile the member's reads see it (memberStore).
func (d *driver) mergeIntoOverlay(wms []protocol.Watermark) ([]protocol.Watermark, error) {
	var unread []int64
	for _, w := range wms {
		if _, ok := d.overlay[w.Rule]; !ok {
			unread = append(unread, w.Rule)
		}
	}
	stored, err := d.n.store.LoadWatermarks(unread)
	if err != nil {
		return nil, err
	}
	merged := make([]protocol.Watermark, 0, len(wms))
	for _, w := range wms {
		cur, ok := d.overlay[w.Rule]
		if !ok {
			cur, ok = stored[w.Rule]
		}
		if ok {
			w = protocol.Merge(cur, w)
		}
		d.overlay[w.Rule] = w
		merged = append(merged, w)
	}
	return merged, nil
}

// startFiring loads the rules of newly held partitions into the engine, from the
// store's watermarks (the batch's end wrote the grants' there just before). Rules already running (a renewed
// epoch) keep their schedule; a later watermark moves them on.
//
// The store is read under ownMu: intake stores a rule, then (under ownMu) puts it into
// the engine if its partition is fired here, so a rule stored before this read is
// loaded here and one stored after it is put in by intake, which sees the partition
// fired; a read outside ownMu could load a version that intake replaced or removed
// meanwhile.
func (d *driver) startFiring(parts map[int]protocol.Epoch) error {
	n := d.n
	ps := slices.Sorted(maps.Keys(parts))
	n.ownMu.Lock()
	defer n.ownMu.Unlock()
	start := time.Now()
	var items []scheduler.Item
	err := n.store.ForEachPartitionRule(ps, func(r store.Rule, wm store.Watermark) error {
		if cur, running := n.engine.Watermark(r.ID); running {
			if wm.Slot.After(cur.Slot) {
				n.engine.Advance(r.ID, scheduler.Watermark(wm))
			}
			return nil
		}
		if t := n.parseStored(r); t != nil {
			items = append(items, scheduler.Item{ID: r.ID, Timer: t, Watermark: scheduler.Watermark(wm)})
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("read the rules of the partitions acquired: %w", err)
	}
	n.engine.Load(items)
	for _, p := range ps {
		d.firing[p] = true
	}
	n.metrics.adopted.Add(float64(len(items)))
	d.log.Info("partitions held: firing their rules", "partitions", len(parts), "rules", len(items),
		"running", n.engine.Len(), "took", time.Since(start).Round(time.Microsecond).String())
	return nil
}

// stopFiring removes the rules of released partitions from the engine; a commit in
// flight completes, and its fires are offered to the new holder (the commit path's
// second check fails). The ids are read under ownMu, after the partitions stop being
// fired: a rule intake put into the engine before is indexed by then, and one it
// stores after finds the partition not fired.
func (d *driver) stopFiring(parts []int) {
	n := d.n
	n.ownMu.Lock()
	defer n.ownMu.Unlock()
	start := time.Now()
	for _, p := range parts {
		delete(d.firing, p)
	}
	released := 0
	stop := func(id int64) {
		if _, running := n.engine.Watermark(id); running {
			n.engine.Remove(id)
			released++
		}
	}
	if ids, err := n.store.PartitionIDs(parts); err == nil {
		for _, id := range ids {
			stop(id)
		}
	} else {
		// No index (newDriver builds it, so never): every rule is walked.
		set := make(map[int]bool, len(parts))
		for _, p := range parts {
			set[p] = true
		}
		_ = n.store.ForEachRule(func(r store.Rule, _ store.Watermark) error {
			if set[d.partitionOf(r.ID)] {
				stop(r.ID)
			}
			return nil
		})
	}
	n.metrics.released.Add(float64(released))
	d.log.Info("partitions released: their rules stopped", "partitions", len(parts), "rules", released,
		"running", n.engine.Len(), "took", time.Since(start).Round(time.Microsecond).String())
}
