package cluster

import (
	"slices"
	"sync"

	"github.com/timerd/timerd/cluster/protocol"
)

// PartitionRing is a Ring seen by partition: it implements protocol.Ring, whose Owner
// takes a partition where Ring.Owner takes a rule id.
type PartitionRing struct{ *Ring }

// Owner is the member owning partition p ("" on an empty or nil ring, and for a p out of
// range).
func (r PartitionRing) Owner(p int) string { return r.Ring.PartitionOwner(p) }

var _ protocol.Ring = PartitionRing{}

// ringCacheLen is how many member sets RingOf keeps the rings of: a member that flaps
// between two views finds both built (a ring of the default config takes 4-9 ms to build
// and 64 KiB to keep).
const ringCacheLen = 4

// RingOf validates cfg and returns what protocol.MemberConfig.Ring wants: the ring of a
// member set (names, self included). The last ringCacheLen rings built are kept, so a view
// seen again costs a lookup; the function is safe for concurrent use. A member set that no
// ring can be built for (more members than cfg's partitions and load can hold, an empty or
// doubled name) gets an empty ring, which names no owner: nothing is acquired or fired
// until the view changes.
func RingOf(cfg RingConfig) (func(members []string) protocol.Ring, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	type built struct {
		members []string // sorted
		ring    PartitionRing
	}
	var (
		mu    sync.Mutex
		cache []built // most recent last
	)
	return func(members []string) protocol.Ring {
		names := slices.Clone(members)
		slices.Sort(names)
		mu.Lock()
		defer mu.Unlock()
		for i, b := range cache {
			if slices.Equal(b.members, names) {
				cache = append(slices.Delete(cache, i, i+1), b)
				return b.ring
			}
		}
		r, err := NewRing(cfg, names)
		if err != nil {
			r = &Ring{}
		}
		if len(cache) == ringCacheLen {
			cache = slices.Delete(cache, 0, 1)
		}
		cache = append(cache, built{names, PartitionRing{r}})
		return PartitionRing{r}
	}, nil
}
