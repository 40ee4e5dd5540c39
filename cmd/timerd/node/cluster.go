package node

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/timerd/timerd/cluster"
	"github.com/timerd/timerd/scheduler"
	"github.com/timerd/timerd/store"
)

// clusterConfig is Config.Cluster with the node's name, logger, registry
// and clock where it leaves them unset.
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
	if cc.Now == nil {
		// Views are compared with the node's clock (AdoptAt, SettleAt).
		cc.Now = c.Now
	}
	return cc
}

// own is the ownership loop: on each new view it releases the engine's
// rules this node no longer owns at once and adopts the rules it gained at
// their View.AdoptAt, re-checking the latest view then. Without a cluster
// there is nothing to do.
func (n *Node) own(ctx context.Context) error {
	if n.cl == nil {
		return nil
	}
	n.ownMu.Lock()
	cur := n.view // placed by load
	first := n.pendingAtLocked()
	if cur.SettleAt.After(n.cfg.Now()) && (first.IsZero() || cur.SettleAt.Before(first)) {
		first = cur.SettleAt
	}
	n.ownMu.Unlock()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	arm := func(at time.Time) {
		timer.Stop() // since Go 1.23 a stopped timer delivers no stale tick
		if !at.IsZero() {
			timer.Reset(max(at.Sub(n.cfg.Now()), 0))
		}
	}
	arm(first)
	for {
		select {
		case <-ctx.Done():
			return nil
		case v := <-n.cl.Changes():
			if v.Version <= cur.Version {
				continue // the view load placed, or one a tick already took
			}
			cur = v
		case <-timer.C:
			cur = n.cl.View() // the latest: it may have changed since
		}
		next, err := n.place(cur, false)
		if err != nil {
			n.log.Error("rules not placed for the ring view; retrying", "version", cur.Version, "err", err)
			next = n.cfg.Now().Add(time.Second)
		}
		arm(next)
	}
}

// pendingAtLocked is when the next adoption left for later comes due, zero
// if none. ownMu is held.
func (n *Node) pendingAtLocked() time.Time {
	var next time.Time
	for _, at := range n.pending {
		if next.IsZero() || at.Before(next) {
			next = at
		}
	}
	return next
}

// place makes the engine hold exactly the rules of the store this node owns
// in v and may run now (none in a view without a quorum: View.Owns; the node
// is then not ready): it removes the others, and loads the owned ones it
// does not run yet whose adoption time has come, each from the later of its
// stored and its cluster watermark. A rule's adoption time is v.AdoptAt,
// or the time an earlier view set for it if later: a view that comes
// during a settle delay must not cut it short (in the new view the node
// was the rule's "previous owner" only on paper). It returns when the
// adoptions it left for later come due (zero if none). The whole pass
// holds ownMu, so intake places the rules it changes by the same view
// (runnableLocked); it is O(rules). Before it adopts anything it syncs
// watermarks with the live peers (at most syncTimeout): a previous owner
// released the rules when it saw the view, and its last watermark packets
// are best effort.
func (n *Node) place(v cluster.View, initial bool) (next time.Time, err error) {
	start := time.Now()
	n.ownMu.Lock()
	defer n.ownMu.Unlock()
	now := n.cfg.Now()
	var (
		items    []scheduler.Item
		stored   []store.Watermark // of items, until the sync
		released int
		pending  = map[int64]time.Time{}
	)
	err = n.store.ForEachRule(func(r store.Rule, wm store.Watermark) error {
		_, running := n.engine.Watermark(r.ID)
		switch {
		case !v.Owns(r.ID):
			if running {
				n.engine.Remove(r.ID) // a fire being committed completes
				released++
			}
			return nil
		case running:
			return nil
		}
		at := v.AdoptAt(r.ID)
		if prev, ok := n.pending[r.ID]; ok && prev.After(at) {
			at = prev
		}
		if at.After(now) {
			pending[r.ID] = at
			return nil
		}
		if t := n.parseStored(r); t != nil {
			items = append(items, scheduler.Item{ID: r.ID, Timer: t})
			stored = append(stored, wm)
		}
		return nil
	})
	if released > 0 {
		n.metrics.released.Add(float64(released))
	}
	if err != nil {
		return time.Time{}, fmt.Errorf("place rules: %w", err)
	}
	if len(items) > 0 {
		n.syncWatermarks()
	}
	for i := range items {
		items[i].Watermark = n.adoptWatermark(items[i].ID, stored[i])
	}
	n.view, n.pending = v, pending
	n.engine.Load(items)
	if !initial {
		n.metrics.adopted.Add(float64(len(items)))
	}
	next = n.pendingAtLocked()
	if v.SettleAt.After(now) && (next.IsZero() || v.SettleAt.Before(next)) {
		// A rule intake stores meanwhile may be due then.
		next = v.SettleAt
	}
	switch {
	case !v.Quorum:
		n.placed.Store(false)
	case len(pending) == 0:
		n.placed.Store(true)
	}
	n.log.Info("rules placed for the ring view", "version", v.Version, "members", len(v.Members), "quorum", v.Quorum,
		"running", n.engine.Len(), "adopted", len(items), "released", released, "pending", len(pending),
		"adopt_at", next, "took", time.Since(start).Round(time.Microsecond).String())
	return next, nil
}

// syncTimeout bounds the watermark sync before an adoption. A peer that
// does not answer in time costs, at worst, a repeat of the slots it fired
// last (recognisable: same Idempotency-Key).
const syncTimeout = 2 * time.Second

// syncWatermarks pulls the live peers' recent watermarks into the
// cluster's table (and gives them this node's).
func (n *Node) syncWatermarks() {
	ctx, cancel := context.WithTimeout(context.Background(), syncTimeout)
	defer cancel()
	start := time.Now()
	peers, reached, err := n.cl.Sync(ctx)
	if reached < peers {
		n.log.Warn("watermarks not synced with every peer before adopting rules; their last fires may repeat",
			"peers", peers, "reached", reached, "err", err)
		return
	}
	if peers > 0 {
		n.log.Info("watermarks synced before adopting rules", "peers", peers, "took", time.Since(start).Round(time.Microsecond).String())
	}
}

// adoptWatermark is where a rule this node starts running continues from:
// the later of its stored watermark and the one the cluster knows (a peer
// may have fired it since this node last did).
func (n *Node) adoptWatermark(id int64, wm store.Watermark) scheduler.Watermark {
	if n.cl != nil {
		if slot, count, ok := n.cl.Watermark(id); ok {
			if slot.After(wm.Slot) {
				wm.Slot = slot
			}
			wm.Count = max(wm.Count, count)
		}
	}
	return scheduler.Watermark(wm)
}

// runnableLocked reports whether the engine may run rule id now: always on
// a single node; in a cluster when the placed view owns it (which a view
// without a quorum never does) and its AdoptAt has come (the ownership loop
// adopts it then otherwise). ownMu is held.
func (n *Node) runnableLocked(id int64, now time.Time) bool {
	if n.cl == nil {
		return true
	}
	if !n.view.Owns(id) || n.view.AdoptAt(id).After(now) {
		return false
	}
	at, ok := n.pending[id]
	return !ok || !at.After(now)
}

// clusterWatermark is what the cluster knows of a rule this node does not
// store (new to it, or removed and added again): where a peer last fired
// it, zero if none did (or without a cluster). The rule book starts such a
// rule after the later of it and the rule's anchor (docs/protocol.md §1),
// so a node that joins with an empty store neither skips the slots between
// the old owner's last fire and now, nor fires again what a peer fired.
func (n *Node) clusterWatermark(id int64) scheduler.Watermark {
	if n.cl == nil {
		return scheduler.Watermark{}
	}
	if slot, count, ok := n.cl.Watermark(id); ok {
		return scheduler.Watermark{Slot: slot, Count: count}
	}
	return scheduler.Watermark{}
}

// MemberStatus is one member of the cluster in /v1/status.
type MemberStatus struct {
	Name       string `json:"name"`
	Addr       string `json:"addr"`
	State      string `json:"state"`
	Self       bool   `json:"self"`
	RulesOwned int    `json:"rules_owned"`
}

// membersCache keeps the rules per member of one view: counting them is a
// scan of the catalogue.
type membersCache struct {
	mu      sync.Mutex
	version uint64
	rules   int
	at      time.Time
	counts  map[string]int
}

// membersRecount bounds how often a changing catalogue is counted again
// within one view.
const membersRecount = 5 * time.Second

// memberStatuses lists the members this node knows with the rules each owns
// in its current view (computed from the store's catalogue).
func (n *Node) memberStatuses() ([]MemberStatus, uint64) {
	v := n.cl.View()
	counts := n.ownerCounts(v)
	var out []MemberStatus
	self := false
	for _, m := range n.cl.Members() {
		self = self || m.Self
		out = append(out, MemberStatus{Name: m.Name, Addr: m.Addr, State: m.State, Self: m.Self, RulesOwned: counts[m.Name]})
	}
	if !self {
		out = append(out, MemberStatus{Name: n.cl.Name(), Addr: n.cl.LocalAddr(), State: cluster.StateAlive, Self: true,
			RulesOwned: counts[n.cl.Name()]})
	}
	return out, v.Version
}

func (n *Node) ownerCounts(v cluster.View) map[string]int {
	c := &n.members
	c.mu.Lock()
	defer c.mu.Unlock()
	rules, _ := n.store.RuleCount()
	if c.counts != nil && c.version == v.Version && (c.rules == rules || time.Since(c.at) < membersRecount) {
		return c.counts
	}
	counts := map[string]int{}
	if v.Ring() != nil {
		err := n.store.ForEachRule(func(r store.Rule, _ store.Watermark) error {
			counts[v.Owner(r.ID)]++
			return nil
		})
		if err != nil {
			n.log.Warn("rules per member not counted", "err", err)
			return c.counts
		}
	}
	c.version, c.rules, c.at, c.counts = v.Version, rules, time.Now(), counts
	return counts
}

// quorumStatus fills the quorum fields of s: a node without a cluster is its
// own quorum.
func (n *Node) quorumStatus(s *Status) {
	s.Quorum, s.ExpectedMembers, s.SeenMembers, s.QuorumSize = true, 1, 1, 1
	if n.cl == nil {
		return
	}
	v := n.cl.View()
	s.Quorum, s.ExpectedMembers, s.SeenMembers, s.QuorumSize = v.Quorum, v.Expect, len(v.Members), v.QuorumSize()
}

// GossipAddr is the host:port peers reach this node's gossip at, "" without
// a cluster.
func (n *Node) GossipAddr() string {
	if n.cl == nil {
		return ""
	}
	return n.cl.LocalAddr()
}
