package cluster

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"
)

// BenchmarkWatermarkSpread: 3 nodes on 127.0.0.1 (memberlist's LAN config) announce watermarks at a
// steady rate (split between them, each rule owned by one node) for 5 s;
// the peers time each one's arrival. It reports how late watermarks reach
// each peer and how many never did within a second of the end. One
// iteration is the whole run: use -benchtime=1x.
//
//	go test -run '^$' -bench WatermarkSpread -benchtime=1x ./cluster
func BenchmarkWatermarkSpread(b *testing.B) {
	for _, rate := range []int{100, 400, 2000, 10000, 50000} {
		b.Run(fmt.Sprintf("fires_per_s=%d", rate), func(b *testing.B) {
			for range b.N {
				measureSpread(b, rate, 5*time.Second)
			}
		})
	}
}

func measureSpread(b *testing.B, rate int, d time.Duration) {
	b.Helper()
	var nodes []*Cluster
	for i := range 3 {
		var join []string
		if i > 0 {
			join = []string{nodes[0].LocalAddr()}
		}
		cfg := testConfig(fmt.Sprintf("n%d", i), join...)
		cfg.Logger = slog.New(slog.DiscardHandler)
		cfg.Memberlist = nil // memberlist's LAN config, as in production
		c, err := New(cfg)
		if err != nil {
			b.Fatal(err)
		}
		defer c.Shutdown()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if _, err := c.Join(ctx); err != nil {
			b.Fatal(err)
		}
		cancel()
		nodes = append(nodes, c)
	}
	deadline := time.Now().Add(20 * time.Second)
	for !viewHas(nodes[0], 3) || !viewHas(nodes[1], 3) || !viewHas(nodes[2], 3) {
		if time.Now().After(deadline) {
			b.Fatal("3 nodes did not see each other")
		}
		time.Sleep(10 * time.Millisecond)
	}

	// Each peer times every watermark it learns: the slot is the time it was announced.
	type arrivals struct {
		mu   sync.Mutex
		lags []time.Duration
		seen map[int64]bool
	}
	got := make([]*arrivals, len(nodes))
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i, c := range nodes {
		a := &arrivals{seen: map[int64]bool{}}
		got[i] = a
		ch := c.Watermarks()
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				case w := <-ch:
					lag := time.Since(w.Slot)
					a.mu.Lock()
					a.lags = append(a.lags, lag)
					a.seen[w.RuleID] = true
					a.mu.Unlock()
				}
			}
		})
	}

	// One rule per announce, so every one must travel (no newer replaces it).
	tick := 10 * time.Millisecond
	perTick := max(1, rate*int(tick)/int(time.Second))
	start := time.Now()
	var id int64
	sent := make([][]int64, len(nodes)) // rule ids each node announced
	b.ResetTimer()
	for t := time.NewTicker(tick); time.Since(start) < d; <-t.C {
		for range perTick {
			id++
			owner := int(id % int64(len(nodes)))
			if err := nodes[owner].Announce(id, time.Now(), 1); err != nil {
				b.Fatal(err)
			}
			sent[owner] = append(sent[owner], id)
		}
	}
	time.Sleep(time.Second)
	b.StopTimer()
	close(stop)
	wg.Wait()

	var lags []time.Duration
	missing, want := 0, 0
	for i, a := range got {
		lags = append(lags, a.lags...)
		for j, ids := range sent {
			if j == i {
				continue
			}
			for _, id := range ids {
				want++
				if !a.seen[id] {
					missing++
				}
			}
		}
	}
	slices.Sort(lags)
	q := func(p float64) float64 {
		if len(lags) == 0 {
			return 0
		}
		return float64(lags[min(len(lags)-1, int(p*float64(len(lags))))]) / 1e6
	}
	b.ReportMetric(float64(id)/d.Seconds(), "announced/s")
	b.ReportMetric(q(0.5), "lag-p50-ms")
	b.ReportMetric(q(0.99), "lag-p99-ms")
	b.ReportMetric(q(1), "lag-max-ms")
	b.ReportMetric(100*float64(missing)/float64(max(1, want)), "%-unseen")
}
