package store

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/timerd/timerd/cluster/protocol"
)

// BenchmarkCommitFires commits batches of fires with fsync on, into a store of 100k
// rules with watermarks; fires hit random rules. The outbox is acked (untimed) every
// 50k entries, as delivery would.
//
//	go test -run '^$' -bench CommitFires -benchtime 3s ./store
func BenchmarkCommitFires(b *testing.B) { benchCommitFires(b, false) }

// BenchmarkCommitFiresChained is BenchmarkCommitFires with fires of the protocol: each
// record has a firer and an epoch (so it extends its rule's fire chain and records its
// fire in the outbox entry), ready at once as on a single node. One firer and epoch
// throughout: the common case, each fire extends the chain's last point.
func BenchmarkCommitFiresChained(b *testing.B) { benchCommitFires(b, true) }

// openWithRules opens a fresh store holding rules 1..n, each with a watermark at t0.
func openWithRules(b *testing.B, n int) *Store {
	b.Helper()
	s, err := Open(filepath.Join(b.TempDir(), "node.db"), Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	rs := make([]Rule, n)
	wms := make([]*Watermark, n)
	for i := range rs {
		rs[i] = testRule(int64(i + 1))
		wms[i] = &Watermark{Slot: t0}
	}
	if err := s.PutRules(rs, wms); err != nil {
		b.Fatal(err)
	}
	return s
}

func benchCommitFires(b *testing.B, chained bool) {
	const rules = 100_000
	for _, batch := range []int{1, 100, 1000, 10000} {
		b.Run("batch="+strconv.Itoa(batch), func(b *testing.B) {
			s := openWithRules(b, rules)
			rng := rand.New(rand.NewPCG(1, uint64(batch)))
			recs := make([]FireRecord, batch)
			for i := range recs {
				id := rng.Int64N(rules) + 1
				recs[i] = testFire(id, t0, 1)
				recs[i].Event.Body = benchBody(id)
				if chained {
					recs[i].Firer = protocol.Incarnation{Node: "timerd-node-0000", N: 3}
					recs[i].Epoch = protocol.Epoch{N: 7, Node: "timerd-node-0000"}
					recs[i].Ready = true
				}
			}
			pending := 0
			iter := 0
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				iter++
				slot := t0.Add(time.Duration(iter) * time.Minute)
				for i := range recs {
					recs[i].Watermark = Watermark{Slot: slot, Count: uint64(iter)}
					recs[i].Event.Slot = slot
				}
				if err := s.CommitFires(recs); err != nil {
					b.Fatal(err)
				}
				if pending += batch; pending >= 50_000 {
					b.StopTimer()
					ackAll(b, s)
					pending = 0
					b.StartTimer()
				}
			}
			sec := b.Elapsed().Seconds()
			b.ReportMetric(float64(b.N*batch)/sec, "fires/s")
			b.ReportMetric(sec/float64(b.N)*1e3, "ms/commit")
		})
	}
}

// benchBody is an event of the size Attune's timer events have (~300 bytes).
func benchBody(id int64) []byte {
	return []byte(fmt.Sprintf(`{"trigger_type":"core.intervaltimer","trigger_instance_id":"%d",`+
		`"payload":{"executed_at":"2025-03-30T01:00:00.000000Z","scheduled_at":"2025-03-30T01:00:00Z",`+
		`"rule_id":%d,"rule_ref":"examples.timer_every_ten_seconds","fire_count":12345,`+
		`"trigger_params":{"unit":"seconds","delta":10}},"trace_tag":"timerd-node-0000"}`, id, id))
}

func ackAll(b *testing.B, s *Store) {
	for {
		page, err := s.Outbox(0, 10_000)
		if err != nil {
			b.Fatal(err)
		}
		if len(page) == 0 {
			return
		}
		seqs := make([]uint64, len(page))
		for i, e := range page {
			seqs[i] = e.Seq
		}
		if err := s.AckOutbox(seqs...); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkOpenAndScan1M opens a store of 1M rules with watermarks and decodes them all
// into the slice a caller would build its heap from. The file is built once and cached
// in os.TempDir(). "cold" evicts the file from the page cache first (fadvise; Linux).
//
//	go test -run '^$' -bench OpenAndScan1M -benchtime 5x ./store
func BenchmarkOpenAndScan1M(b *testing.B) {
	const n = 1_000_000
	path := benchStore1M(b, n)
	fi, err := os.Stat(path)
	if err != nil {
		b.Fatal(err)
	}
	type loaded struct {
		r  Rule
		wm Watermark
	}
	for _, tc := range []struct {
		name     string
		cold     bool
		populate bool
	}{
		{"warm", false, false},
		{"cold", true, false},
		{"cold+populate", true, true},
	} {
		b.Run(tc.name, func(b *testing.B) {
			if tc.cold && !canEvict {
				b.Skip("no page-cache eviction on this OS")
			}
			var secs float64
			for b.Loop() {
				if tc.cold {
					b.StopTimer()
					evict(b, path)
					b.StartTimer()
				}
				start := time.Now()
				s, err := Open(path, Options{MmapPopulate: tc.populate})
				if err != nil {
					b.Fatal(err)
				}
				out := make([]loaded, 0, n)
				if err := s.ForEachRule(func(r Rule, wm Watermark) error {
					out = append(out, loaded{r, wm})
					return nil
				}); err != nil {
					b.Fatal(err)
				}
				secs += time.Since(start).Seconds()
				if len(out) != n {
					b.Fatalf("scanned %d rules, want %d", len(out), n)
				}
				b.StopTimer()
				if err := s.Close(); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
			b.ReportMetric(secs/float64(b.N), "s/open+scan")
			b.ReportMetric(float64(fi.Size())/(1<<20), "MiB-file")
		})
	}
}

// benchStore1M returns the cached 1M-rule file, building it if needed. The name carries
// the codec version: a layout change gets a new file.
func benchStore1M(b *testing.B, n int) string {
	path := filepath.Join(os.TempDir(), fmt.Sprintf("timerd-store-bench-%d-v%d-c%d.db", n, SchemaVersion, codecV1))
	if s, err := Open(path, Options{}); err == nil {
		c, err := s.RuleCount()
		s.Close()
		if err == nil && c == n {
			return path
		}
	}
	_ = os.Remove(path)
	tmp := path + ".building"
	_ = os.Remove(tmp)
	start := time.Now()
	s, err := Open(tmp, Options{NoSync: true})
	if err != nil {
		b.Fatal(err)
	}
	const chunk = 100_000
	rs := make([]Rule, chunk)
	wms := make([]*Watermark, chunk)
	for lo := 0; lo < n; lo += chunk {
		for i := range rs {
			id := int64(lo + i + 1)
			rs[i] = testRule(id)
			rs[i].Params = json.RawMessage(fmt.Sprintf(`{"unit":"seconds","delta":%d}`, id%3600+1))
			wms[i] = &Watermark{Slot: t0.Add(time.Duration(id) * time.Millisecond), Count: uint64(id)}
		}
		if err := s.PutRules(rs, wms); err != nil {
			b.Fatal(err)
		}
	}
	if err := s.db.Sync(); err != nil {
		b.Fatal(err)
	}
	if err := s.Close(); err != nil {
		b.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		b.Fatal(err)
	}
	b.Logf("built %s in %v", path, time.Since(start).Round(time.Millisecond))
	return path
}

// BenchmarkDecodeRule compares the binary rule codec with JSON, the alternative.
func BenchmarkDecodeRule(b *testing.B) {
	r := testRule(123456)
	bin := encodeRule(r)
	js, _ := json.Marshal(r)
	b.Run("binary", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := decodeRule(r.ID, bin); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(len(bin)), "bytes")
	})
	b.Run("json", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			var got Rule
			if err := json.Unmarshal(js, &got); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(len(js)), "bytes")
	})
}
