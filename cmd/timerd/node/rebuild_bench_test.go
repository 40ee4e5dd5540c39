//go:build unix

package node

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/timerd/timerd/scheduler"
	"github.com/timerd/timerd/store"
)

// BenchmarkRebuild1M measures what a restart costs a node with 1,000,000
// rules: open the store, decode every rule and watermark and every timer's
// binary form, and load the engine's heap (the node's load()): s/rebuild. Then
// the engine runs until it hands its first fires to the commit: s/first-fire,
// from the same start. Every rule of the fixture is overdue, so the first
// fires are due at once. The commit is not made (it would change the fixture
// for the next run); BenchmarkCommitFires in store/ measures one. Target: ≤ 1 s
// to the first fire. cpu-s/rebuild is the CPU time of the rebuild, which a
// busy machine changes less.
//
//	go test -run '^$' -bench Rebuild1M -benchtime 3x ./cmd/timerd/node
func BenchmarkRebuild1M(b *testing.B) {
	const n = 1_000_000
	dir := rebuildFixture(b, n)
	b.ResetTimer()
	for range b.N {
		heap0 := liveHeap()
		cpu0 := cpuTime()
		start := time.Now()
		nd, err := New(Config{DataDir: dir, APIURL: "http://127.0.0.1:1"})
		if err != nil {
			b.Fatal(err)
		}
		fired := make(chan time.Time, 1)
		nd.engine, err = scheduler.New(scheduler.Config{Commit: func([]scheduler.Fire, []scheduler.Miss) error {
			select {
			case fired <- time.Now():
			default:
			}
			return errors.New("benchmark: not committed")
		}, RetryMin: time.Hour, RetryMax: time.Hour})
		if err != nil {
			b.Fatal(err)
		}
		loaded, err := nd.load()
		if err != nil {
			b.Fatal(err)
		}
		took, cpu := time.Since(start), cpuTime()-cpu0
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- nd.engine.Run(ctx) }()
		first := <-fired
		cancel()
		if err := <-done; err != nil {
			b.Fatal(err)
		}
		// What the loaded node keeps per rule (engine, store, node), the
		// load's own garbage collected: the figure docs/benchmarks.md
		// compares with the engine's alone.
		perRule := float64(liveHeap()-heap0) / n
		runtime.KeepAlive(nd)
		nd.store.Close()
		if loaded != n {
			b.Fatalf("loaded %d rules, want %d", loaded, n)
		}
		b.ReportMetric(took.Seconds(), "s/rebuild")
		b.ReportMetric(cpu.Seconds(), "cpu-s/rebuild")
		b.ReportMetric(first.Sub(start).Seconds(), "s/first-fire")
		b.ReportMetric(perRule, "heap-B/rule")
	}
}

// liveHeap is the heap's live bytes, after a collection.
func liveHeap() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// cpuTime is the CPU time this process has used (user and system, every
// thread: the garbage collector's too). On a shared machine it varies less
// than the wall-clock time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// rebuildFixture builds (once, cached under the temp dir) a node data dir
// holding n rules: mostly interval timers, some cron and datetime ones.
func rebuildFixture(b *testing.B, n int) string {
	b.Helper()
	dir := filepath.Join(os.TempDir(), fmt.Sprintf("timerd-rebuild-bench-%d-v2", n))
	if _, err := os.Stat(filepath.Join(dir, "done")); err == nil {
		return dir
	}
	os.RemoveAll(dir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		b.Fatal(err)
	}
	st, err := store.Open(filepath.Join(dir, "node.db"), store.Options{NoSync: true})
	if err != nil {
		b.Fatal(err)
	}
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	const chunk = 50_000
	for lo := 1; lo <= n; lo += chunk {
		var rs []store.Rule
		var wms []*store.Watermark
		for id := lo; id < lo+chunk && id <= n; id++ {
			r := store.Rule{ID: int64(id), Ref: fmt.Sprintf("rule.%d", id), UpdatedAt: base}
			switch id % 10 {
			case 0:
				r.TriggerRef, r.Params = "core.crontimer", []byte(fmt.Sprintf(`{"expression":"%d */5 * * * *","timezone":"Europe/Berlin"}`, id%60))
			case 1:
				r.TriggerRef, r.Params = "core.datetimetimer", []byte(fmt.Sprintf(`{"fire_at":"2027-01-01T00:%02d:00Z"}`, id%60))
			default:
				r.TriggerRef, r.Params = "core.intervaltimer", []byte(fmt.Sprintf(`{"interval":%d,"unit":"seconds"}`, 1+id%3600))
			}
			rs = append(rs, r)
			wms = append(wms, &store.Watermark{Slot: base, Count: uint64(id % 100)})
		}
		if err := st.PutRules(rs, wms); err != nil {
			b.Fatal(err)
		}
	}
	if err := st.Close(); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "done"), nil, 0o600); err != nil {
		b.Fatal(err)
	}
	return dir
}
