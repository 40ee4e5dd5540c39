package scheduler

import (
	"math"
	"math/rand/v2"
	"testing"
	"time"
)

func checkHeap(t *testing.T, h *slotHeap, model map[int32]int64) {
	t.Helper()
	if len(h.es) != len(model) {
		t.Fatalf("heap holds %d entries, model %d", len(h.es), len(model))
	}
	for i, e := range h.es {
		if i > 0 && h.es[(i-1)/2].at > e.at {
			t.Fatalf("heap order broken at %d: parent %d > %d", i, h.es[(i-1)/2].at, e.at)
		}
		if h.pos[e.idx] != int32(i) {
			t.Fatalf("pos[%d] = %d, want %d", e.idx, h.pos[e.idx], i)
		}
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
