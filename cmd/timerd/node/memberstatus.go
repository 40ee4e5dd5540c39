package node

import (
	"strings"
	"sync"
	"time"

	"github.com/timerd/timerd/cluster"
	"github.com/timerd/timerd/store"
)

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
	mu     sync.Mutex
	view   string // the view's members, joined
	rules  int
	at     time.Time
	counts map[string]int
}

// membersRecount bounds how often a changing catalogue is counted again
// within one view.
const membersRecount = 5 * time.Second

// memberStatuses lists the members this node knows with the rules each owns
// in its current view (computed from the store's catalogue).
func (n *Node) memberStatuses() []MemberStatus {
	view := n.drv.snap.Load().status.View
	counts := n.ownerCounts(view)
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
	return out
}

func (n *Node) ownerCounts(view []string) map[string]int {
	c := &n.members
	c.mu.Lock()
	defer c.mu.Unlock()
	key := strings.Join(view, ",")
	rules, _ := n.store.RuleCount()
	if c.counts != nil && c.view == key && (c.rules == rules || n.cfg.Now().Sub(c.at) < membersRecount) {
		return c.counts
	}
	counts := map[string]int{}
	if len(view) > 0 {
		ring := n.drv.ringOf(view)
		err := n.store.ForEachRule(func(r store.Rule, _ store.Watermark) error {
			counts[ring.Owner(n.drv.partitionOf(r.ID))]++
			return nil
		})
		if err != nil {
			n.log.Warn("rules per member not counted", "err", err)
			return c.counts
		}
	}
	c.view, c.rules, c.at, c.counts = key, rules, n.cfg.Now(), counts
	return counts
}

// quorumStatus fills the quorum fields of s: a node without a cluster is its
// own quorum. In a cluster, the quorum is the lease (docs/protocol.md §3).
func (n *Node) quorumStatus(s *Status) {
	s.Quorum, s.ExpectedMembers, s.SeenMembers, s.QuorumSize = true, 1, 1, 1
	if n.drv == nil {
		return
	}
	snap := n.drv.snap.Load()
	s.Quorum = snap.leased(bootNow())
	s.ExpectedMembers = max(n.cfg.clusterConfig().Expect, 1)
	s.SeenMembers = len(snap.status.View)
	s.QuorumSize = snap.status.Quorum
	s.Incarnation = snap.self.String()
	s.PartitionsHeld = len(snap.held)
}

// GossipAddr is the host:port peers reach this node's gossip at, "" without
// a cluster.
func (n *Node) GossipAddr() string {
	if n.cl == nil {
		return ""
	}
	return n.cl.LocalAddr()
}
