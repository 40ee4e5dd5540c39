package scheduler

import (
	"math"
	"time"
)

// entry is one rule in the heap: its next slot as Unix nanoseconds (so a
// comparison is one integer compare) and its index in the engine's rule slab.
type entry struct {
	at  int64
	idx int32
}

// slotHeap is a typed binary min-heap of entries ordered by at, with the
// position of every rule tracked so that a rule can be changed or removed in
// O(log n). It is hand-rolled because container/heap boxes through any and
// allocates on every Push/Pop.
type slotHeap struct {
	es  []entry
	pos []int32 // by slab index: position in es, or -1 when not in the heap
}

// grow makes room for slab indexes below n.
func (h *slotHeap) grow(n int) {
	for len(h.pos) < n {
		h.pos = append(h.pos, -1)
	}
}

func (h *slotHeap) len() int { return len(h.es) }

func (h *slotHeap) contains(idx int32) bool { return h.pos[idx] >= 0 }

// peek returns the root.
func (h *slotHeap) peek() (entry, bool) {
	if len(h.es) == 0 {
		return entry{}, false
	}
	return h.es[0], true
}

func (h *slotHeap) push(idx int32, at int64) {
	h.es = append(h.es, entry{at: at, idx: idx})
	h.up(len(h.es) - 1)
}

// appendUnordered adds an entry without restoring the heap order; call
// heapify after a run of them.
func (h *slotHeap) appendUnordered(idx int32, at int64) {
	h.pos[idx] = int32(len(h.es))
	h.es = append(h.es, entry{at: at, idx: idx})
}

// heapify restores the heap order in O(n).
func (h *slotHeap) heapify() {
	for i := len(h.es)/2 - 1; i >= 0; i-- {
		h.down(i)
	}
}

func (h *slotHeap) pop() entry {
	root := h.es[0]
	h.removeAt(0)
	return root
}

// remove takes idx out of the heap if it is there.
func (h *slotHeap) remove(idx int32) {
	if p := h.pos[idx]; p >= 0 {
		h.removeAt(int(p))
	}
}

// update moves idx to at, adding it if it is not in the heap.
func (h *slotHeap) update(idx int32, at int64) {
	p := h.pos[idx]
	if p < 0 {
		h.push(idx, at)
		return
	}
	h.es[p].at = at
	if !h.down(int(p)) {
		h.up(int(p))
	}
}

// setAt changes the key of idx without restoring the order (bulk load).
func (h *slotHeap) setAt(idx int32, at int64) {
	h.es[h.pos[idx]].at = at
}

func (h *slotHeap) removeAt(i int) {
	last := len(h.es) - 1
	gone := h.es[i].idx
	if i != last {
		h.es[i] = h.es[last]
		h.pos[h.es[i].idx] = int32(i)
	}
	h.es = h.es[:last]
	h.pos[gone] = -1
	if i != last {
		if !h.down(i) {
			h.up(i)
		}
	}
}

// up sifts the entry at i towards the root, moving a hole rather than swapping.
func (h *slotHeap) up(i int) {
	e := h.es[i]
	for i > 0 {
		p := (i - 1) / 2
		pe := h.es[p]
		if pe.at <= e.at {
			break
		}
		h.es[i] = pe
		h.pos[pe.idx] = int32(i)
		i = p
	}
	h.es[i] = e
	h.pos[e.idx] = int32(i)
}

// down sifts the entry at i towards the leaves and reports whether it moved.
func (h *slotHeap) down(i0 int) bool {
	n := len(h.es)
	i := i0
	e := h.es[i]
	for {
		c := 2*i + 1
		if c >= n || c < 0 {
			break
		}
		if r := c + 1; r < n && h.es[r].at < h.es[c].at {
			c = r
		}
		ce := h.es[c]
		if e.at <= ce.at {
			break
		}
		h.es[i] = ce
		h.pos[ce.idx] = int32(i)
		i = c
	}
	h.es[i] = e
	h.pos[e.idx] = int32(i)
	return i > i0
}

var (
	minKeyTime = time.Unix(0, math.MinInt64)
	maxKeyTime = time.Unix(0, math.MaxInt64)
)

// key is the heap key of a slot: Unix nanoseconds, saturated outside the
// years 1678–2262 (such slots sort first or last, which is all that matters).
func key(t time.Time) int64 {
	switch {
	case t.Before(minKeyTime):
		return math.MinInt64
	case t.After(maxKeyTime):
		return math.MaxInt64
	}
	return t.UnixNano()
}
