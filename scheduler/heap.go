package scheduler

import (
	"math"
	"slices"
	"time"
)

// entry is one rule in the heap: its next slot as Unix nanoseconds (so a
// comparison is one integer compare) and its index in the engine's rule slab.
type entry struct {
	at  int64
	idx int32
}

// slotHeap is a typed 4-ary min-heap of entries ordered by at, with the
// position of every rule tracked so that a rule can be changed or removed in
// O(log n). It is hand-rolled because container/heap boxes through any and
// allocates on every Push/Pop.
//
// Keys and slab indexes are kept in two arrays (12 bytes an entry, not a
// padded 16), and the root sits at heapBase so that the four children of a
// node start at a multiple of four: their keys share one 64-byte cache line.
// Popping the root of a large heap that the caches have lost between two
// wake-ups so costs one cache line per level, over half the levels of a
// binary heap.
type slotHeap struct {
	at  []int64 // keys by position; positions below heapBase are unused
	idx []int32 // slab index by position
	pos []int32 // by slab index: position, or -1 when not in the heap
}

const heapBase = 3 // position of the root; the children of i are 4i-8 … 4i-5

func parentOf(i int) int { return (i + 8) >> 2 }

// grow makes room for slab indexes below n.
func (h *slotHeap) grow(n int) {
	for len(h.pos) < n {
		h.pos = append(h.pos, -1)
	}
}

// reserve makes room for n more entries.
func (h *slotHeap) reserve(n int) {
	h.at = slices.Grow(h.at, n+heapBase)
	h.idx = slices.Grow(h.idx, n+heapBase)
}

func (h *slotHeap) len() int { return max(0, len(h.at)-heapBase) }

func (h *slotHeap) contains(idx int32) bool { return h.pos[idx] >= 0 }

// peek returns the root.
func (h *slotHeap) peek() (entry, bool) {
	if len(h.at) <= heapBase {
		return entry{}, false
	}
	return entry{at: h.at[heapBase], idx: h.idx[heapBase]}, true
}

// add appends an entry at the bottom and returns its position.
func (h *slotHeap) add(idx int32, at int64) int {
	if len(h.at) == 0 {
		h.at = append(h.at, make([]int64, heapBase)...)
		h.idx = append(h.idx, make([]int32, heapBase)...)
	}
	h.at = append(h.at, at)
	h.idx = append(h.idx, idx)
	i := len(h.at) - 1
	h.pos[idx] = int32(i)
	return i
}

func (h *slotHeap) push(idx int32, at int64) { h.up(h.add(idx, at)) }

// appendUnordered adds an entry without restoring the heap order; call
// heapify after a run of them.
func (h *slotHeap) appendUnordered(idx int32, at int64) { h.add(idx, at) }

// heapify restores the heap order in O(n).
func (h *slotHeap) heapify() {
	if len(h.at) <= heapBase+1 {
		return
	}
	for i := parentOf(len(h.at) - 1); i >= heapBase; i-- {
		h.down(i)
	}
}

func (h *slotHeap) pop() entry {
	root, _ := h.peek()
	h.removeAt(heapBase)
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
	h.at[p] = at
	if !h.down(int(p)) {
		h.up(int(p))
	}
}

// setAt changes the key of idx without restoring the order (bulk load).
func (h *slotHeap) setAt(idx int32, at int64) {
	h.at[h.pos[idx]] = at
}

func (h *slotHeap) removeAt(i int) {
	last := len(h.at) - 1
	gone := h.idx[i]
	if i != last {
		h.at[i], h.idx[i] = h.at[last], h.idx[last]
		h.pos[h.idx[i]] = int32(i)
	}
	h.at, h.idx = h.at[:last], h.idx[:last]
	h.pos[gone] = -1
	if i != last {
		if !h.down(i) {
			h.up(i)
		}
	}
}

// up sifts the entry at i towards the root, moving a hole rather than swapping.
func (h *slotHeap) up(i int) {
	a, x := h.at[i], h.idx[i]
	for i > heapBase {
		p := parentOf(i)
		pa := h.at[p]
		if pa <= a {
			break
		}
		px := h.idx[p]
		h.at[i], h.idx[i] = pa, px
		h.pos[px] = int32(i)
		i = p
	}
	h.at[i], h.idx[i] = a, x
	h.pos[x] = int32(i)
}

// down sifts the entry at i towards the leaves and reports whether it moved.
func (h *slotHeap) down(i0 int) bool {
	n := len(h.at)
	i := i0
	a, x := h.at[i], h.idx[i]
	for {
		c := 4*i - 8
		if c >= n {
			break
		}
		m, ma := c, h.at[c]
		if c+3 < n { // a full group: one cache line
			g := h.at[c : c+4 : c+4]
			if g[1] < ma {
				m, ma = c+1, g[1]
			}
			if g[2] < ma {
				m, ma = c+2, g[2]
			}
			if g[3] < ma {
				m, ma = c+3, g[3]
			}
		} else {
			for j := c + 1; j < n; j++ {
				if v := h.at[j]; v < ma {
					m, ma = j, v
				}
			}
		}
		if a <= ma {
			break
		}
		mx := h.idx[m]
		h.at[i], h.idx[i] = ma, mx
		h.pos[mx] = int32(i)
		i = m
	}
	h.at[i], h.idx[i] = a, x
	h.pos[x] = int32(i)
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

// ruleIndex maps rule ids to slab indexes. It is an open-addressing table of
// slab index + 1 (0: empty), probed linearly from a hash of the id. The id
// is read from the slab, so an entry is 4 bytes: 5–11 bytes per rule at
// the load kept (≤ 3/4), where a map[int64]int32 costs 20–40. Lookups are
// for Upsert, Remove and Watermark only; firing never touches it.
type ruleIndex struct {
	slots []int32
	n     int
}

func slotHash(id int64) uint64 { return mix64(uint64(id)) }

// find returns the table position and slab index of id.
func (x *ruleIndex) find(rules []rule, id int64) (pos int, idx int32, ok bool) {
	if len(x.slots) == 0 {
		return 0, 0, false
	}
	mask := len(x.slots) - 1
	for i := int(slotHash(id)) & mask; ; i = (i + 1) & mask {
		v := x.slots[i]
		if v == 0 {
			return 0, 0, false
		}
		if rules[v-1].id == id {
			return i, v - 1, true
		}
	}
}

// insert adds slab index idx, whose rule id is not in the table yet.
func (x *ruleIndex) insert(rules []rule, idx int32) {
	x.reserve(rules, x.n+1)
	x.put(rules[idx].id, idx)
	x.n++
}

func (x *ruleIndex) put(id int64, idx int32) {
	mask := len(x.slots) - 1
	i := int(slotHash(id)) & mask
	for x.slots[i] != 0 {
		i = (i + 1) & mask
	}
	x.slots[i] = idx + 1
}

// reserve grows the table so that n entries keep the load at most 3/4.
func (x *ruleIndex) reserve(rules []rule, n int) {
	if 4*n <= 3*len(x.slots) {
		return
	}
	size := max(16, len(x.slots))
	for 4*n > 3*size {
		size *= 2
	}
	old := x.slots
	x.slots = make([]int32, size)
	for _, v := range old {
		if v != 0 {
			x.put(rules[v-1].id, v-1)
		}
	}
}

// deleteAt empties position pos and shifts back the entries of the probe run
// after it that may no longer be reachable (no tombstones).
func (x *ruleIndex) deleteAt(rules []rule, pos int) {
	mask := len(x.slots) - 1
	hole := pos
	for j := (pos + 1) & mask; x.slots[j] != 0; j = (j + 1) & mask {
		home := int(slotHash(rules[x.slots[j]-1].id)) & mask
		// The entry at j may move to the hole unless its home lies
		// cyclically in (hole, j].
		if (j-home)&mask >= (j-hole)&mask {
			x.slots[hole] = x.slots[j]
			hole = j
		}
	}
	x.slots[hole] = 0
	x.n--
}
