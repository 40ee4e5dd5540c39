package cluster

import "slices"

// View is one node's ring at one moment. Views are values: a membership change publishes a
// new one. Version 0 is the view before Join has decided; it owns nothing. A view without a
// quorum owns nothing either.
type View struct {
	Version uint64   // 1 for the first view after Join decided, +1 per change of Members
	Self    string   // this node's name
	Members []string // sorted names in the ring (alive and suspect members)
	// Expect is N, the number of members a quorum is counted of: Config.Expect, or, when that
	// is more (and Expect > 1), the most members this node has seen in one view, less those
	// that left gracefully since.
	Expect int
	// Quorum: Members hold at least QuorumSize; without it the node owns nothing.
	// Always true when Config.Expect is 1 (no quorum required), false before Join decided.
	Quorum bool

	ring *Ring
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

func (v View) clone() View {
	v.Members = slices.Clone(v.Members)
	return v
}
