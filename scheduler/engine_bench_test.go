package scheduler

import (
	"context"
	"fmt"
	"math/rand/v2"
	"runtime"
	"testing"
	"time"
)

var benchSizes = []int{100_000, 1_000_000}

func filledHeap(n int) (*slotHeap, *rand.Rand) {
	rng := rand.New(rand.NewPCG(1, 1))
	h := &slotHeap{}
	h.grow(n)
	for i := range n {
		h.appendUnordered(int32(i), rng.Int64N(1<<40))
	}
	h.heapify()
	return h, rng
}

// BenchmarkHeapPushPop pops the root and pushes it back later, as a fire does.
func BenchmarkHeapPushPop(b *testing.B) {
	for _, n := range benchSizes {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			h, rng := filledHeap(n)
			b.ReportAllocs()
			for b.Loop() {
				e := h.pop()
				h.push(e.idx, e.at+rng.Int64N(1<<30))
			}
		})
	}
}

// BenchmarkHeapUpdate moves a random rule to a new slot (a changed timer).
func BenchmarkHeapUpdate(b *testing.B) {
	for _, n := range benchSizes {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			h, rng := filledHeap(n)
			b.ReportAllocs()
			for b.Loop() {
				h.update(int32(rng.IntN(n)), rng.Int64N(1<<40))
			}
		})
	}
}

// BenchmarkHeapRemoveAdd removes a random rule and adds it back.
func BenchmarkHeapRemoveAdd(b *testing.B) {
	for _, n := range benchSizes {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			h, rng := filledHeap(n)
			b.ReportAllocs()
			for b.Loop() {
				idx := int32(rng.IntN(n))
				h.remove(idx)
				h.push(idx, rng.Int64N(1<<40))
			}
		})
	}
}

// benchEngine holds n one-second interval timers with phases spread over the
// second, and a clock the benchmark moves. The timers are parsed, as in
// production.
func benchEngine(b *testing.B, n int, clock *time.Time) *Engine {
	e, err := New(Config{Commit: func([]Fire, []Miss) error { return nil }, Now: func() time.Time { return *clock }})
	if err != nil {
		b.Fatal(err)
	}
	const phases = 1000
	timers := make([]*Timer, phases)
	for i := range timers {
		if timers[i], err = Parse("core.intervaltimer", []byte(`{"interval":1}`), int64(i)); err != nil {
			b.Fatal(err)
		}
	}
	items := make([]Item, n)
	for i := range items {
		items[i] = Item{ID: int64(i), Timer: timers[i%phases], Watermark: Watermark{Slot: *clock}}
	}
	e.Load(items)
	return e
}

// BenchmarkEngineFire is the whole cost of one fire in the engine: pop,
// plan, (no-op) commit, watermark, push. One op is one fire.
func BenchmarkEngineFire(b *testing.B) {
	for _, n := range benchSizes {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			clock := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
			e := benchEngine(b, n, &clock)
			tm := time.NewTimer(time.Hour)
			defer tm.Stop()
			ctx := context.Background()
			fired := 0
			b.ReportAllocs()
			b.ResetTimer()
			for fired < b.N {
				if _, armed := e.prepare(); len(e.flights) > 0 {
					fired += len(e.fires)
					e.commit(ctx, tm)
				} else if armed {
					clock = clock.Add(time.Millisecond)
				}
			}
		})
	}
}

// BenchmarkEngineUpsert changes the timer of a random rule among n.
func BenchmarkEngineUpsert(b *testing.B) {
	for _, n := range benchSizes {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			clock := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
			e := benchEngine(b, n, &clock)
			var alt [2]*Timer
			for i, p := range []string{`{"interval":7}`, `{"interval":11}`} {
				var err error
				if alt[i], err = Parse("core.intervaltimer", []byte(p), 1); err != nil {
					b.Fatal(err)
				}
			}
			rng := rand.New(rand.NewPCG(2, 2))
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				i++
				e.Upsert(int64(rng.IntN(n)), alt[i&1], Watermark{Slot: clock})
			}
		})
	}
}

func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// BenchmarkEngineMillionTimers reports the heap bytes per timer with
// 1,000,000 interval timers. Load and Upsert count the engine's own
// structures only (the Timers are shared and the Items built before the
// first reading). Parsed gives every rule its own Timer from Parse, as a node
// does, loads them and lets them go, as a node does, and counts what stays:
// the memory a rule costs.
func BenchmarkEngineMillionTimers(b *testing.B) {
	const n = 1_000_000
	for _, how := range []string{"Load", "Upsert", "Parsed"} {
		b.Run(how, func(b *testing.B) {
			clock := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
			timers := make([]*Timer, 1000)
			for i := range timers {
				timers[i] = every(time.Minute, clock.Add(-time.Minute+time.Duration(i+1)*time.Millisecond))
			}
			items := make([]Item, n)
			for i := range items {
				items[i] = Item{ID: int64(i)*7919 + 1, Timer: timers[i%len(timers)], Watermark: Watermark{Slot: clock}}
			}
			params := make([][]byte, 60)
			for i := range params {
				params[i] = fmt.Appendf(nil, `{"interval":%d}`, i+1)
			}
			var perTimer float64
			for b.Loop() {
				if how == "Parsed" {
					for i := range items {
						items[i].Timer = nil
					}
				}
				before := heapInUse()
				e, err := New(Config{Commit: func([]Fire, []Miss) error { return nil }})
				if err != nil {
					b.Fatal(err)
				}
				switch how {
				case "Load":
					e.Load(items)
				case "Upsert":
					for _, it := range items {
						e.Upsert(it.ID, it.Timer, it.Watermark)
					}
				case "Parsed":
					for i := range items {
						if items[i].Timer, err = Parse("core.intervaltimer", params[i%len(params)], items[i].ID); err != nil {
							b.Fatal(err)
						}
					}
					e.Load(items)
					for i := range items {
						items[i].Timer = nil // as a node drops what it loaded
					}
				}
				after := heapInUse()
				if e.Len() != n {
					b.Fatalf("Len = %d, want %d", e.Len(), n)
				}
				perTimer = float64(after-before) / n
				runtime.KeepAlive(e)
			}
			runtime.KeepAlive(items)
			b.ReportMetric(perTimer, "B/timer")
		})
	}
}
