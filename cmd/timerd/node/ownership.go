package node

import (
	"time"

	"github.com/timerd/timerd/cluster"
	"github.com/timerd/timerd/cluster/protocol"
	"github.com/timerd/timerd/scheduler"
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
