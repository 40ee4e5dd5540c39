package store

import (
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

// BenchmarkCommitFiresFold commits batches of 500 fires with fsync on, each to rules
// not fired since the last pass over all 200k (as interval rules fire), so the journal
// folds about every 100 commits; it reports the slowest commit and the p99, the
// commits a fold holds the writer in.
//
//	go test -run '^$' -bench CommitFiresFold -benchtime 1200x ./store
func BenchmarkCommitFiresFold(b *testing.B) {
	const rules, batch = 200_000, 500
	s := openWithRules(b, rules)
	perm := rand.New(rand.NewPCG(1, 2)).Perm(rules)
	recs := make([]FireRecord, batch)
	var durs []time.Duration
	b.ReportAllocs()
	b.ResetTimer()
	for c := 0; b.Loop(); c++ {
		slot := t0.Add(time.Duration(c+1) * time.Second)
		for i := range recs {
			id := int64(perm[(c*batch+i)%rules] + 1)
			recs[i] = testFire(id, slot, uint64(c+1))
			recs[i].Event.Body = benchBody(id)
		}
		start := time.Now()
		if err := s.CommitFires(recs); err != nil {
			b.Fatal(err)
		}
		durs = append(durs, time.Since(start))
		if c%100 == 99 {
			b.StopTimer()
			ackAll(b, s)
			b.StartTimer()
		}
	}
	slices.Sort(durs)
	b.ReportMetric(float64(durs[len(durs)*99/100].Microseconds())/1e3, "p99-ms/commit")
	b.ReportMetric(float64(durs[len(durs)-1].Microseconds())/1e3, "max-ms/commit")
}
