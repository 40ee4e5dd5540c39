package node

import (
	"testing"
	"time"

	"github.com/timerd/timerd/scheduler"
)

// The fire path's cost of the lateness log (Commit calls record for every
// committed batch): batches of 50 fires over 50,000 rules that take turns, as
// 50,000 rules of 10 s fire, so nearly every fire is of a rule the log has
// forgotten.
//
//	go test -run '^$' -bench FiredLogRecord -benchmem ./cmd/timerd/node
func BenchmarkFiredLogRecord(b *testing.B) {
	var l firedLog
	timer := &scheduler.Timer{Kind: scheduler.KindInterval, Interval: 10 * time.Second}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	batch := make([]scheduler.Fire, 50)
	var id int64
	b.ReportAllocs()
	for b.Loop() {
		for i := range batch {
			id = id%50_000 + 1
			batch[i] = scheduler.Fire{RuleID: id, Slot: t0, FiredAt: t0.Add(time.Millisecond), Timer: timer}
		}
		l.record(batch)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(batch)), "ns/fire")
}
