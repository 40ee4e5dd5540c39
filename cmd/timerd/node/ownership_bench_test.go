//go:build unix

package node

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/timerd/timerd/cluster"
	"github.com/timerd/timerd/cluster/protocol"
	"github.com/timerd/timerd/ingest/attune"
	"github.com/timerd/timerd/scheduler"
	"github.com/timerd/timerd/store"
)

// What a change of owner costs a node that stores R rules (issue 15), the walk of
// every rule that adoption did before the store's partition index (old) against the
// index (new), side by side on the same node and fixture:
//
//   - acquire: the engine loads the rules of k partitions (startFiring, under ownMu
//     and stepMu: the op's time is ownMu's hold);
//   - claim: the whole StartFiring effect under stepMu (the merged watermarks and the
//     holding stored, two fsyncs; then acquire);
//   - release: the engine drops them (stopFiring, under ownMu and stepMu);
//   - grant: the watermarks of k partitions a grant carries (FiredWatermarks,
//     under stepMu).
//
// k is 1 partition of 16,381, and 1/11 of them (what a node joining ten takes).
//
//	go test -run '^$' -bench 'Adoption' -benchtime 20x -timeout 30m ./cmd/timerd/node
func BenchmarkAdoption(b *testing.B) {
	for _, size := range []int{100_000, 1_000_000} {
		b.Run(fmt.Sprintf("rules=%d", size), func(b *testing.B) {
			n := benchClusterNode(b, size)
			d := n.drv
			one := []int{d.partitionOf(1)}
			share := make([]int, 0, cluster.DefaultPartitions/11+1)
			for p := 0; p < cluster.DefaultPartitions; p += 11 {
				share = append(share, p)
			}
			for _, parts := range []struct {
				name string
				ps   []int
			}{{"1-partition", one}, {"1/11-of-partitions", share}} {
				held := map[int]protocol.Epoch{}
				for _, p := range parts.ps {
					held[p] = protocol.Epoch{N: 1, Node: "bench"}
				}
				// A claim's watermarks: those the grants carried, here the store's own.
				claimed, err := n.store.IndexedPartitionWatermarks(parts.ps)
				if err != nil {
					b.Fatal(err)
				}
				for _, impl := range []struct {
					name  string
					start func() error
					stop  func() error
					grant func() ([]protocol.Watermark, error)
				}{
					{"old", func() error { return oldStartFiring(d, held) }, func() error { return oldStopFiring(d, parts.ps) },
						func() ([]protocol.Watermark, error) { return n.store.PartitionWatermarksOf(parts.ps, d.partitionOf) }},
					{"new", func() error { return d.startFiring(held) }, func() error { d.stopFiring(parts.ps); return nil },
						func() ([]protocol.Watermark, error) { return n.store.IndexedFiredWatermarks(parts.ps) }},
				} {
					b.Run(parts.name+"/acquire/"+impl.name, func(b *testing.B) {
						rules := 0
						var cpu time.Duration
						for b.Loop() {
							c0 := cpuTime()
							if err := impl.start(); err != nil {
								b.Fatal(err)
							}
							cpu += cpuTime() - c0
							b.StopTimer()
							rules = n.engine.Len()
							d.stopFiring(parts.ps)
							b.StartTimer()
						}
						b.ReportMetric(float64(rules), "rules-moved")
						reportCPU(b, cpu)
					})
					b.Run(parts.name+"/claim/"+impl.name, func(b *testing.B) {
						var cpu time.Duration
						for b.Loop() {
							c0 := cpuTime()
							d.stepMu.Lock()
							err := oldOrNewClaim(d, impl.name == "new", held, claimed)
							d.stepMu.Unlock()
							cpu += cpuTime() - c0
							if err != nil {
								b.Fatal(err)
							}
							b.StopTimer()
							d.stopFiring(parts.ps)
							b.StartTimer()
						}
						reportCPU(b, cpu)
					})
					b.Run(parts.name+"/release/"+impl.name, func(b *testing.B) {
						var cpu time.Duration
						for b.Loop() {
							b.StopTimer()
							if err := d.startFiring(held); err != nil {
								b.Fatal(err)
							}
							b.StartTimer()
							c0 := cpuTime()
							if err := impl.stop(); err != nil {
								b.Fatal(err)
							}
							cpu += cpuTime() - c0
						}
						reportCPU(b, cpu)
					})
					b.Run(parts.name+"/grant/"+impl.name, func(b *testing.B) {
						wms := 0
						var cpu time.Duration
						for b.Loop() {
							c0 := cpuTime()
							got, err := impl.grant()
							cpu += cpuTime() - c0
							if err != nil {
								b.Fatal(err)
							}
							wms = len(got)
						}
						b.ReportMetric(float64(wms), "watermarks")
						reportCPU(b, cpu)
					})
				}
			}
		})
	}
}

// reportCPU reports the process's CPU time per op (every thread: the collector's too),
// which a loaded machine changes less than the wall-clock time.
func reportCPU(b *testing.B, cpu time.Duration) {
	b.ReportMetric(float64(cpu.Microseconds())/1000/float64(b.N), "cpu-ms/op")
}

// oldOrNewClaim is the StartFiring effect of the protocol as it was (flush the
// overlay, merge the grants' watermarks, store the holding: three transactions, then
// walk every rule) or as it is (apply, then the batch's end: one transaction, then the
// partition index).
func oldOrNewClaim(d *driver, isNew bool, parts map[int]protocol.Epoch, wms []protocol.Watermark) error {
	if isNew {
		if err := d.apply(protocol.StartFiring{Parts: parts, Watermarks: wms}); err != nil {
			return err
		}
		return d.flush()
	}
	if err := d.flush(); err != nil {
		return err
	}
	if err := d.n.store.MergeWatermarks(wms); err != nil {
		return err
	}
	if err := d.n.store.SetHeld(parts, nil); err != nil {
		return err
	}
	return oldStartFiring(d, parts)
}

// oldStartFiring is startFiring before the partition index: a walk of every rule.
func oldStartFiring(d *driver, parts map[int]protocol.Epoch) error {
	n := d.n
	n.ownMu.Lock()
	defer n.ownMu.Unlock()
	var items []scheduler.Item
	err := n.store.ForEachRule(func(r store.Rule, wm store.Watermark) error {
		if _, ok := parts[d.partitionOf(r.ID)]; !ok {
			return nil
		}
		if cur, running := n.engine.Watermark(r.ID); running {
			if wm.Slot.After(cur.Slot) {
				n.engine.Advance(r.ID, scheduler.Watermark(wm))
			}
			return nil
		}
		if t := n.parseStored(r); t != nil {
			items = append(items, scheduler.Item{ID: r.ID, Timer: t, Watermark: scheduler.Watermark(wm)})
		}
		return nil
	})
	if err != nil {
		return err
	}
	n.engine.Load(items)
	for p := range parts {
		d.firing[p] = true
	}
	return nil
}

// oldStopFiring is stopFiring before the partition index: a walk of every rule.
func oldStopFiring(d *driver, parts []int) error {
	n := d.n
	set := make(map[int]bool, len(parts))
	for _, p := range parts {
		set[p] = true
	}
	n.ownMu.Lock()
	defer n.ownMu.Unlock()
	for _, p := range parts {
		delete(d.firing, p)
	}
	return n.store.ForEachRule(func(r store.Rule, _ store.Watermark) error {
		if set[d.partitionOf(r.ID)] {
			if _, running := n.engine.Watermark(r.ID); running {
				n.engine.Remove(r.ID)
			}
		}
		return nil
	})
}

// BenchmarkPartitionIndexBuild measures what the partition index costs a node storing
// R rules: the walk that builds it when the node starts (ns/op, cpu-ms/op) and the
// heap it keeps (heap-B/rule).
//
//	go test -run '^$' -bench 'PartitionIndexBuild' -benchtime 3x -timeout 30m ./cmd/timerd/node
func BenchmarkPartitionIndexBuild(b *testing.B) {
	for _, size := range []int{100_000, 1_000_000} {
		b.Run(fmt.Sprintf("rules=%d", size), func(b *testing.B) {
			dir := ownershipFixture(b, size)
			st, err := store.Open(filepath.Join(dir, "node.db"), store.Options{})
			if err != nil {
				b.Fatal(err)
			}
			defer st.Close()
			partitionOf := func(id int64) int { return cluster.PartitionOf(cluster.RingConfig{}, id) }
			var perRule float64
			var cpu time.Duration
			for b.Loop() {
				b.StopTimer()
				st.Close()
				st, err = store.Open(filepath.Join(dir, "node.db"), store.Options{})
				if err != nil {
					b.Fatal(err)
				}
				heap0 := liveHeap()
				b.StartTimer()
				c0 := cpuTime()
				if err := st.IndexPartitions(partitionOf); err != nil {
					b.Fatal(err)
				}
				cpu += cpuTime() - c0
				b.StopTimer()
				perRule = float64(liveHeap()-heap0) / float64(size)
				b.StartTimer()
			}
			if got := st.IndexedIDs(); got != size {
				b.Fatalf("indexed %d ids, want %d", got, size)
			}
			b.ReportMetric(perRule, "heap-B/rule")
			reportCPU(b, cpu)
		})
	}
}

// BenchmarkForeignRuleIntake measures what intake costs per rule this node does not
// fire (foreign: stored and indexed, not in the engine) against one it fires (owned:
// also in the engine): 10,000 lifecycle creates per op, applied in batches of 100 as
// the consumer hands them over, into a node storing none before. ns/rule and
// allocs/rule are the intake's CPU; heap-B/rule is what the node keeps per rule
// afterwards (engine, index), store-B/rule what its file grew by.
//
//	go test -run '^$' -bench 'ForeignRuleIntake' -benchtime 5x ./cmd/timerd/node
func BenchmarkForeignRuleIntake(b *testing.B) {
	const rules, batch = 10_000, 100
	for _, owned := range []bool{false, true} {
		name := "foreign"
		if owned {
			name = "owned"
		}
		b.Run(name, func(b *testing.B) {
			var heapPerRule, storePerRule float64
			var cpu time.Duration
			for b.Loop() {
				b.StopTimer()
				n := newIdleClusterNode(b)
				if owned {
					n.ownMu.Lock()
					for p := range cluster.DefaultPartitions {
						n.drv.firing[p] = true
					}
					n.ownMu.Unlock()
				}
				heap0 := liveHeap() // before the messages, which are garbage after
				msgs := make([][]attune.Message, 0, rules/batch)
				for lo := 1; lo <= rules; lo += batch {
					var m []attune.Message
					for id := lo; id < lo+batch; id++ {
						m = append(m, envelope(attune.RuleCreated, int64(id), "core.intervaltimer",
							fmt.Sprintf(`{"interval":%d,"unit":"seconds"}`, 60+id%3600)))
					}
					msgs = append(msgs, m)
				}
				size0 := storeSize(b, n)
				cpu0 := cpuTime()
				b.StartTimer()
				for _, m := range msgs {
					if err := n.applyMessages(m); err != nil {
						b.Fatal(err)
					}
				}
				b.StopTimer()
				cpu += cpuTime() - cpu0
				runtime.KeepAlive(msgs) // garbage from here: not counted in heapPerRule
				heapPerRule = float64(int64(liveHeap())-int64(heap0)) / rules
				storePerRule = float64(storeSize(b, n)-size0) / rules
				if want := map[bool]int{false: 0, true: rules}[owned]; n.engine.Len() != want {
					b.Fatalf("engine runs %d rules, want %d", n.engine.Len(), want)
				}
				runtime.KeepAlive(n)
				_ = n.Close()
				b.StartTimer()
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*rules), "ns/rule")
			b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N*rules), "cpu-ns/rule")
			b.ReportMetric(heapPerRule, "heap-B/rule")
			b.ReportMetric(storePerRule, "store-B/rule")
		})
	}
}

// storeSize is the bytes a backup of the node's store takes: the file's pages up to
// the highest in use, not the file's preallocated growth.
func storeSize(b *testing.B, n *Node) int64 {
	var size int64
	if _, err := n.store.WriteBackup(io.Discard, func(s int64) { size = s }); err != nil {
		b.Fatal(err)
	}
	return size
}

// benchClusterNode is a node of a cluster of one, not running, on a copy of the
// rebuild fixture of size rules (none fired here until a benchmark acquires).
func benchClusterNode(b *testing.B, size int) *Node {
	b.Helper()
	dir := ownershipFixture(b, size)
	n, err := New(Config{DataDir: dir, APIURL: "http://127.0.0.1:1", ReconcileInterval: -1,
		NodeName: "bench", Cluster: clusterConfig(), Registry: prometheus.NewRegistry(),
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = n.Close() })
	return n
}

// ownershipFixture is a data dir of its own holding a copy of the rebuild fixture's
// store (BenchmarkRebuild1M's, built once): the benchmarks here write to it.
func ownershipFixture(b *testing.B, size int) string {
	b.Helper()
	dir := filepath.Join(os.TempDir(), fmt.Sprintf("timerd-ownership-bench-%d", size))
	if _, err := os.Stat(filepath.Join(dir, "done")); err == nil {
		return dir
	}
	src := rebuildFixture(b, size)
	_ = os.RemoveAll(dir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		b.Fatal(err)
	}
	in, err := os.Open(filepath.Join(src, "node.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(filepath.Join(dir, "node.db"), os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o600)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		b.Fatal(err)
	}
	if err := out.Close(); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "done"), nil, 0o600); err != nil {
		b.Fatal(err)
	}
	return dir
}
