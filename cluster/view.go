package cluster

import (
	"slices"
	"time"
)

// View is one node's ring at one moment. Views are values: a membership change publishes a
// new one. Version 0 is the view before Join has decided; it owns nothing. A view without a
// quorum owns nothing either.
//
// On each new view the node releases at once every rule it runs that !Owns, and adopts
// every rule it Owns and does not run at AdoptAt(rule) (re-checking the latest view then).
type View struct {
	Version  uint64    // 1 for the first view after Join decided, +1 per change of Members
	Self     string    // this node's name
	Members  []string  // sorted names in the ring (alive and suspect members)
	Changed  time.Time // when this node built the view (Config.Now)
	SettleAt time.Time // Changed + SettleDelay; Changed for the first view of a node alone
	// Expect is N, the number of members a quorum is counted of: Config.Expect, or, when that
	// is more (and Expect > 1), the most members this node has seen in one view, less those
	// that left gracefully since.
	Expect int
	// Quorum: Members hold at least QuorumSize; without it the node owns, and fires, nothing.
	// Always true when Config.Expect is 1 (no quorum required), false before Join decided.
	Quorum bool

	ring *Ring
	prev *Ring // the previous view's ring; nil for the first view
}

// Owner is the member that owns ruleID in this view, "" before Join decided.
func (v View) Owner(ruleID int64) string { return v.ring.Owner(ruleID) }

// Owns reports whether this node owns ruleID in this view: the ring gives it to this node
// and the view holds a quorum.
func (v View) Owns(ruleID int64) bool {
	return v.Quorum && v.ring != nil && v.ring.Owner(ruleID) == v.Self
}

// QuorumSize is ⌊Expect/2⌋+1, the members (this node included) the view needs to fire.
func (v View) QuorumSize() int { return v.Expect/2 + 1 }

// Ring is the view's ring (nil before Join decided).
func (v View) Ring() *Ring { return v.ring }

// AdoptAt is when this node may start firing ruleID (which it Owns) in this view: at once
// (Changed) when its previous owner is no longer in the ring (left gracefully, or was declared
// dead), or was this node; otherwise SettleAt, giving the live previous owner time to see the
// change, stop firing it and gossip its watermark. After a view without a quorum the previous
// owner is unknown (another side may have fired the rule meanwhile): SettleAt.
func (v View) AdoptAt(ruleID int64) time.Time {
	if v.prev == nil {
		return v.SettleAt
	}
	prev := v.prev.Owner(ruleID)
	if prev == "" || prev == v.Self || !v.ring.Has(prev) {
		return v.Changed
	}
	return v.SettleAt
}

func (v View) clone() View {
	v.Members = slices.Clone(v.Members)
	return v
}
