package store

import (
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"text/tabwriter"
	"time"

	bolt "go.etcd.io/bbolt"
)

var (
	outageEvents = flag.Int("outage.events", 5_000_000, "BenchmarkOutage: events the outbox fills with during the outage")
	outageRules  = flag.Int("outage.rules", 100_000, "BenchmarkOutage: rules in the store")
)

// BenchmarkOutage is issue 11 point 7: what a store that held an outage's outbox costs
// every later commit. For each way of keeping bbolt's freelist it measures, with fsync
// on: CommitFires of 20 fires (a batch at 5,000 fires/s) and the ack of 20 events on
// the fresh store; the time to fill the outbox with -outage.events events (commits of
// 10,000, as the scheduler piles them up while the API is down) and to drain it (reads
// and acks of 5,000); the same commits again after the drain; the file's size and the
// time to Open it. "compacted" is the synced freelist after bolt.Compact copied the
// drained file (an offline step: the node must be stopped).
//
//	go test -run '^$' -bench Outage -benchtime 1x -timeout 60m ./store -args -outage.events 5000000
func BenchmarkOutage(b *testing.B) {
	type row struct {
		name                     string
		fresh, after             commitCost
		fill, drain, compact     time.Duration
		openFresh, openAfter     time.Duration
		sizeFresh, sizeAfter     int64
		freeAfter                int
		compactedSize            int64
		compacted                commitCost
		openCompacted            time.Duration
		compactedFree, freshFree int
	}
	var rows []row
	for _, sync := range []bool{true, false} {
		r := row{name: "NoFreelistSync (default)"}
		if sync {
			r.name = "SyncFreelist"
		}
		b.Run(fmt.Sprintf("SyncFreelist=%v", sync), func(b *testing.B) {
			for b.Loop() {
				opts := Options{SyncFreelist: sync}
				path := filepath.Join(b.TempDir(), "node.db")
				s := openBench(b, path, opts)
				putBenchRules(b, s, *outageRules)
				r.fresh = measureCommits(b, s)
				s, r.openFresh, r.sizeFresh = reopenTimed(b, s, opts)
				r.freshFree = freePages(s)

				start := time.Now()
				fillOutbox(b, s, *outageEvents)
				r.fill = time.Since(start)
				start = time.Now()
				drainOutbox(b, s)
				r.drain = time.Since(start)
				r.after = measureCommits(b, s)
				s, r.openAfter, r.sizeAfter = reopenTimed(b, s, opts)
				r.freeAfter = freePages(s)
				if err := s.Close(); err != nil {
					b.Fatal(err)
				}
				if sync {
					dst := path + ".compacted"
					start = time.Now()
					compactFile(b, dst, path)
					r.compact = time.Since(start)
					s = openBench(b, dst, opts)
					r.compacted = measureCommits(b, s)
					s, r.openCompacted, r.compactedSize = reopenTimed(b, s, opts)
					r.compactedFree = freePages(s)
					if err := s.Close(); err != nil {
						b.Fatal(err)
					}
				}
			}
		})
		rows = append(rows, r)
	}
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(w, "outage of %d events, %d rules, fsync on\t", *outageEvents, *outageRules)
	for _, r := range rows {
		fmt.Fprintf(w, "%s\t", r.name)
	}
	fmt.Fprintln(w)
	line := func(label string, f func(r row) string) {
		fmt.Fprintf(w, "%s\t", label)
		for _, r := range rows {
			fmt.Fprintf(w, "%s\t", f(r))
		}
		fmt.Fprintln(w)
	}
	ms := func(d time.Duration) string { return fmt.Sprintf("%.2f", d.Seconds()*1e3) }
	line("fresh: CommitFires of 20 (ms, median)", func(r row) string { return ms(r.fresh.fires) })
	line("fresh: ack of 20 (ms, median)", func(r row) string { return ms(r.fresh.ack) })
	line("fresh: Open (ms)", func(r row) string { return ms(r.openFresh) })
	line("fresh: file (MiB) / free pages", func(r row) string { return fmt.Sprintf("%d / %d", r.sizeFresh>>20, r.freshFree) })
	line("fill (s)", func(r row) string { return fmt.Sprintf("%.1f", r.fill.Seconds()) })
	line("drain (s)", func(r row) string { return fmt.Sprintf("%.1f", r.drain.Seconds()) })
	line("after: CommitFires of 20 (ms, median)", func(r row) string { return ms(r.after.fires) })
	line("after: ack of 20 (ms, median)", func(r row) string { return ms(r.after.ack) })
	line("after: Open (ms)", func(r row) string { return ms(r.openAfter) })
	line("after: file (MiB) / free pages", func(r row) string { return fmt.Sprintf("%d / %d", r.sizeAfter>>20, r.freeAfter) })
	line("compact (s)", func(r row) string { return orDash(r.compact > 0, fmt.Sprintf("%.1f", r.compact.Seconds())) })
	line("compacted: CommitFires of 20 (ms, median)", func(r row) string { return orDash(r.compact > 0, ms(r.compacted.fires)) })
	line("compacted: Open (ms)", func(r row) string { return orDash(r.compact > 0, ms(r.openCompacted)) })
	line("compacted: file (MiB)", func(r row) string { return orDash(r.compact > 0, fmt.Sprint(r.compactedSize>>20)) })
	_ = w.Flush()
}

func orDash(ok bool, s string) string {
	if !ok {
		return "-"
	}
	return s
}

// commitCost is the median cost of one CommitFires of 20 fires, and of one ack of 20.
type commitCost struct{ fires, ack time.Duration }

func openBench(b *testing.B, path string, opts Options) *Store {
	b.Helper()
	s, err := Open(path, opts)
	if err != nil {
		b.Fatal(err)
	}
	s.acks.wait = time.Nanosecond // an ack commits on its own: measured apart from the fires
	return s
}

// reopenTimed closes s and returns it opened again, with the time Open took and the
// file's size.
func reopenTimed(b *testing.B, s *Store, opts Options) (*Store, time.Duration, int64) {
	b.Helper()
	path := s.Path()
	if err := s.Close(); err != nil {
		b.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	s = openBench(b, path, opts)
	return s, time.Since(start), fi.Size()
}

// freePages is the number of free pages bbolt knows of.
func freePages(s *Store) int { return s.db.Stats().FreePageN }

func putBenchRules(b *testing.B, s *Store, n int) {
	b.Helper()
	const chunk = 50_000
	for lo := 0; lo < n; lo += chunk {
		rs := make([]Rule, 0, chunk)
		wms := make([]*Watermark, 0, chunk)
		for id := int64(lo + 1); id <= int64(min(lo+chunk, n)); id++ {
			rs = append(rs, testRule(id))
			wms = append(wms, &Watermark{Slot: t0})
		}
		if err := s.PutRules(rs, wms); err != nil {
			b.Fatal(err)
		}
	}
}

// benchSlot makes each batch's slots later than the last: watermarks move forward.
var benchSlot = t0

func fireBatch(rng *rand.Rand, n, rules int) []FireRecord {
	benchSlot = benchSlot.Add(time.Second)
	recs := make([]FireRecord, n)
	for i := range recs {
		id := rng.Int64N(int64(rules)) + 1
		recs[i] = testFire(id, benchSlot, 1)
		recs[i].Event.Body = benchBody(id)
	}
	return recs
}

// measureCommits times 200 commits of 20 fires, each followed by the ack of the
// previous batch's 20 events, and returns the medians.
func measureCommits(b *testing.B, s *Store) commitCost {
	b.Helper()
	rng := rand.New(rand.NewPCG(7, 7))
	const n, batch = 200, 20
	fires, acks := make([]time.Duration, 0, n), make([]time.Duration, 0, n)
	for range n {
		recs := fireBatch(rng, batch, *outageRules)
		start := time.Now()
		if err := s.CommitFires(recs); err != nil {
			b.Fatal(err)
		}
		fires = append(fires, time.Since(start))
		page, err := s.Outbox(0, batch)
		if err != nil {
			b.Fatal(err)
		}
		seqs := make([]uint64, len(page))
		for i, e := range page {
			seqs[i] = e.Seq
		}
		start = time.Now()
		if err := s.AckOutbox(seqs...); err != nil {
			b.Fatal(err)
		}
		acks = append(acks, time.Since(start))
	}
	ackAll(b, s)
	slices.Sort(fires)
	slices.Sort(acks)
	return commitCost{fires: fires[n/2], ack: acks[n/2]}
}

func fillOutbox(b *testing.B, s *Store, events int) {
	b.Helper()
	rng := rand.New(rand.NewPCG(1, 1))
	for left := events; left > 0; left -= 10_000 {
		if err := s.CommitFires(fireBatch(rng, min(left, 10_000), *outageRules)); err != nil {
			b.Fatal(err)
		}
	}
	if n, _ := s.OutboxLen(); n < events {
		b.Fatalf("outbox holds %d events after the fill, want %d", n, events)
	}
}

// drainOutbox delivers the outbox as the delivery engine does after an outage: it
// reads the oldest entries and acks them, 5,000 at a time.
func drainOutbox(b *testing.B, s *Store) {
	b.Helper()
	for after := uint64(0); ; {
		page, err := s.Outbox(after, 5_000)
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
		after = seqs[len(seqs)-1]
		if err := s.AckOutbox(seqs...); err != nil {
			b.Fatal(err)
		}
	}
}

// compactFile copies src into a new file dst with bbolt's Compact.
func compactFile(b *testing.B, dst, src string) {
	b.Helper()
	sdb, err := bolt.Open(src, 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		b.Fatal(err)
	}
	defer sdb.Close()
	ddb, err := bolt.Open(dst, 0o600, &bolt.Options{FreelistType: bolt.FreelistMapType})
	if err != nil {
		b.Fatal(err)
	}
	if err := bolt.Compact(ddb, sdb, 64<<20); err != nil {
		b.Fatal(err)
	}
	if err := ddb.Close(); err != nil {
		b.Fatal(err)
	}
}

