package scheduler

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
	"time"
)

// heapErr checks the heap order and the position index.
func heapErr(h *slotHeap) error {
	for i := heapBase; i < len(h.at); i++ {
		if p := parentOf(i); i > heapBase && h.at[p] > h.at[i] {
			return fmt.Errorf("heap order broken at %d: parent %d > %d", i, h.at[p], h.at[i])
		}
		if h.pos[h.idx[i]] != int32(i) {
			return fmt.Errorf("pos[%d] = %d, want %d", h.idx[i], h.pos[h.idx[i]], i)
		}
	}
	return nil
}

// entries lists the heap's entries in position order.
func (h *slotHeap) entries() []entry {
	var es []entry
	for i := heapBase; i < len(h.at); i++ {
		es = append(es, entry{at: h.at[i], idx: h.idx[i]})
	}
	return es
}

func checkHeap(t *testing.T, h *slotHeap, model map[int32]int64) {
	t.Helper()
	if h.len() != len(model) {
		t.Fatalf("heap holds %d entries, model %d", h.len(), len(model))
	}
	if err := heapErr(h); err != nil {
		t.Fatal(err)
	}
	for _, e := range h.entries() {
		if model[e.idx] != e.at {
			t.Fatalf("entry %d at %d, model %d", e.idx, e.at, model[e.idx])
		}
	}
	for idx := range h.pos {
		if _, in := model[int32(idx)]; in != h.contains(int32(idx)) {
			t.Fatalf("contains(%d) = %v, model %v", idx, !in, in)
		}
	}
}

func TestSlotHeapRandomOps(t *testing.T) {
	const slots = 300
	rng := rand.New(rand.NewPCG(1, 2))
	var h slotHeap
	h.grow(slots)
	model := map[int32]int64{}
	for op := range 20000 {
		idx := int32(rng.IntN(slots))
		at := rng.Int64N(1000) // many ties on purpose
		switch rng.IntN(4) {
		case 0:
			if _, in := model[idx]; !in {
				h.push(idx, at)
				model[idx] = at
			}
		case 1:
			h.update(idx, at) // pushes when absent
			model[idx] = at
		case 2:
			h.remove(idx)
			delete(model, idx)
		case 3:
			if len(model) == 0 {
				if _, ok := h.peek(); ok {
					t.Fatalf("op %d: peek on an empty heap: ok", op)
				}
				continue
			}
			minAt := int64(math.MaxInt64)
			for _, a := range model {
				minAt = min(minAt, a)
			}
			e := h.pop()
			if e.at != minAt || model[e.idx] != e.at {
				t.Fatalf("op %d: pop = %+v, want at %d", op, e, minAt)
			}
			delete(model, e.idx)
		}
		checkHeap(t, &h, model)
	}
}

func TestSlotHeapHeapify(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	var h slotHeap
	h.grow(1000)
	model := map[int32]int64{}
	for idx := range int32(1000) {
		at := rng.Int64N(1 << 40)
		h.appendUnordered(idx, at)
		model[idx] = at
	}
	for idx := int32(0); idx < 1000; idx += 3 {
		at := rng.Int64N(1 << 40)
		h.setAt(idx, at)
		model[idx] = at
	}
	h.heapify()
	checkHeap(t, &h, model)
	prev := int64(math.MinInt64)
	for h.len() > 0 {
		e := h.pop()
		if e.at < prev {
			t.Fatalf("pop after heapify: %d after %d", e.at, prev)
		}
		prev = e.at
	}
}

func TestKey(t *testing.T) {
	tests := []struct {
		name string
		t    time.Time
		want int64
	}{
		{"epoch", time.Unix(0, 0), 0},
		{"2030", time.Date(2030, 1, 1, 0, 0, 0, 5, time.UTC), time.Date(2030, 1, 1, 0, 0, 0, 5, time.UTC).UnixNano()},
		{"year 1", time.Time{}, math.MinInt64},
		{"year 9999", time.Date(9999, 12, 31, 0, 0, 0, 0, time.UTC), math.MaxInt64},
	}
	for _, tc := range tests {
		if got := key(tc.t); got != tc.want {
			t.Errorf("key(%s %v) = %d, want %d", tc.name, tc.t, got, tc.want)
		}
	}
}

// TestRuleIndexRandomOps checks the id index against a map through inserts
// and deletes, with ids chosen to collide (few distinct low bits) and a
// table kept small, so probe runs wrap around and deletes shift entries.
func TestRuleIndexRandomOps(t *testing.T) {
	for _, idSpace := range []int64{40, 5000} {
		rng := rand.New(rand.NewPCG(5, uint64(idSpace)))
		var x ruleIndex
		var rules []rule
		var free []int32
		model := map[int64]int32{}
		for op := range 30000 {
			id := rng.Int64N(idSpace)*1024 - 7
			_, idx, ok := x.find(rules, id)
			want, in := model[id]
			if ok != in || (ok && idx != want) {
				t.Fatalf("op %d: find(%d) = %d %v, model %d %v", op, id, idx, ok, want, in)
			}
			if in && rng.IntN(2) == 0 {
				pos, _, _ := x.find(rules, id)
				x.deleteAt(rules, pos)
				rules[want] = rule{}
				free = append(free, want)
				delete(model, id)
			} else if !in {
				if n := len(free); n > 0 {
					idx, free = free[n-1], free[:n-1]
				} else {
					rules = append(rules, rule{})
					idx = int32(len(rules) - 1)
				}
				rules[idx] = rule{id: id}
				x.insert(rules, idx)
				model[id] = idx
			}
			if x.n != len(model) || 4*x.n > 3*len(x.slots) {
				t.Fatalf("op %d: n %d, model %d, table %d", op, x.n, len(model), len(x.slots))
			}
		}
		for id, idx := range model {
			if _, got, ok := x.find(rules, id); !ok || got != idx {
				t.Fatalf("find(%d) = %d %v, want %d", id, got, ok, idx)
			}
		}
	}
}
