package node

import (
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/timerd/timerd/ingest/attune"
)

// processCPU is this process's user and system CPU time so far.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkApplyMessages: what a node's intake pays per lifecycle message
// (parse, read the rule's state, decide) and per commit (the store's
// transaction and fsync), by batch size: batch=1 is a message arriving
// alone, as they did while the API waited for each confirm; batch=16 is
// about what a node gets at 10 nodes with the API's confirms pipelined
// (docs/benchmarks.md, "Rule changes at scale"). Each message creates a
// new interval rule of an hour.
func BenchmarkApplyMessages(b *testing.B) {
	for _, batch := range []int{1, 16, 256} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			n, err := New(Config{DataDir: b.TempDir(), APIURL: "http://127.0.0.1:1", ReconcileInterval: -1,
				Registry: prometheus.NewRegistry()})
			if err != nil {
				b.Fatal(err)
			}
			defer n.store.Close()
			msgs := make([]attune.Message, batch)
			id := int64(0)
			at := time.Now()
			cpu0 := processCPU(b)
			b.ResetTimer()
			for range b.N {
				for i := range msgs {
					id++
					msgs[i] = envelopeAt(attune.RuleCreated, id, "core.intervaltimer", `{"interval":1,"unit":"hours"}`, at)
				}
				if err := n.applyMessages(msgs); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			cpu := processCPU(b) - cpu0
			if c, _ := n.store.RuleCount(); c != int(id) {
				b.Fatalf("%d rules stored, want %d", c, id)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(id)/1000, "µs/msg")
			b.ReportMetric(float64(cpu.Nanoseconds())/float64(id)/1000, "cpu-µs/msg")
		})
	}
}
