package store

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"testing"
	"time"
)

// BenchmarkPartitionIndexAdd measures the partition index alone: ns/op is one id added
// (what every rule put, watermark merge and fire commit pays per id, under the index's
// lock), heap-B/id what it keeps per id once size ids are in, over 16,381 partitions.
//
//	go test -run '^$' -bench PartitionIndexAdd -benchtime 1x ./store
func BenchmarkPartitionIndexAdd(b *testing.B) {
	const partitions = 16381
	of := func(id int64) int { return int(uint64(id) * 0x9E3779B97F4A7C15 >> 33 % partitions) }
	for _, size := range []int{10_000, 100_000, 1_000_000} {
		b.Run(fmt.Sprintf("ids=%d", size), func(b *testing.B) {
			ids := rand.New(rand.NewPCG(1, 2)).Perm(size)
			var perID, perAdd float64
			for range b.N {
				heap0 := heapNow()
				x := &partIndex{of: of, ids: map[int][]int64{}}
				start := time.Now()
				x.mu.Lock()
				for _, id := range ids {
					x.addLocked(int64(id + 1))
				}
				x.mu.Unlock()
				perAdd = float64(time.Since(start).Nanoseconds()) / float64(size)
				perID = float64(heapNow()-heap0) / float64(size)
				if x.n != size {
					b.Fatalf("indexed %d ids, want %d", x.n, size)
				}
				runtime.KeepAlive(x)
			}
			b.ReportMetric(perAdd, "ns/add")
			b.ReportMetric(perID, "heap-B/id")
		})
	}
}

func heapNow() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}
