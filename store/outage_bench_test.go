package store

import (
	"flag"
	"fmt"
	"math"
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
// every later commit, with bbolt's freelist written at every commit (bbolt's default),
// never (rebuilt at each Open), and while it lists at most 4,096 pages (the node's
// default, Options.FreelistSyncPages). With fsync on it fills the
// outbox of a store of -outage.rules rules with -outage.events events (commits of 10,000,
// as the scheduler piles them up while the API is down) and drains it (reads and acks of
// 5,000 as delivery does), then compacts a copy with bolt.Compact (an offline step: the
// node must be stopped). On the fresh, the drained and the compacted file it measures,
// for each setting in turn (rounds alternate, so the machine's load weighs on all
// alike): the median CommitFires of 20 fires (a batch at 5,000 fires/s), the median ack
// of 20 events, the time Open takes (after a commit in that setting: a file written
// without a synced freelist has its list rebuilt by a walk of its pages), and bbolt's
// count of free pages.
//
//	go test -run '^$' -bench Outage -benchtime 1x -timeout 60m ./store -args -outage.events 5000000
func BenchmarkOutage(b *testing.B) {
	var stages []stage
	var fill, drain, compact time.Duration
	for b.Loop() {
		dir := b.TempDir()
		path := filepath.Join(dir, "node.db")
		s := openBench(b, path, Options{})
		putBenchRules(b, s, *outageRules)
		if err := s.Close(); err != nil {
			b.Fatal(err)
		}
		stages = append(stages, measureStage(b, "fresh", path))

		s = openBench(b, path, Options{})
		start := time.Now()
		fillOutbox(b, s, *outageEvents)
		fill = time.Since(start)
		start = time.Now()
		drainOutbox(b, s)
		drain = time.Since(start)
		if err := s.Close(); err != nil {
			b.Fatal(err)
		}
		stages = append(stages, measureStage(b, "drained", path))

		start = time.Now()
		compactFile(b, path+".compacted", path)
		compact = time.Since(start)
		stages = append(stages, measureStage(b, "compacted", path+".compacted"))
	}
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(w, "%d rules, outage of %d events: fill %.1f s, drain %.1f s (default), compaction %.1f s; fsync on\t", *outageRules, *outageEvents,
		fill.Seconds(), drain.Seconds(), compact.Seconds())
	for _, set := range freelistSettings {
		fmt.Fprintf(w, "%s\t", set.name)
	}
	fmt.Fprintln(w)
	ms := func(d time.Duration) string { return fmt.Sprintf("%.2f", d.Seconds()*1e3) }
	for _, st := range stages {
		line := func(label string, f func(c cost) string) {
			fmt.Fprintf(w, "%s: %s\t", st.name, label)
			for _, c := range st.cost {
				fmt.Fprintf(w, "%s\t", f(c))
			}
			fmt.Fprintln(w)
		}
		line(fmt.Sprintf("file %d MiB, free pages", st.size>>20), func(c cost) string { return fmt.Sprint(c.free) })
		line("CommitFires of 20 (ms, median)", func(c cost) string { return ms(c.fires) })
		line("ack of 20 (ms, median)", func(c cost) string { return ms(c.ack) })
		line("Open (ms, median)", func(c cost) string { return ms(c.open) })
	}
	_ = w.Flush()
}

// stage is one file's costs.
type stage struct {
	name string
	cost [3]cost // by freelistSettings
	size int64
}

// cost is what one setting of the freelist costs on one file: medians over the rounds.
type cost struct {
	fires, ack, open time.Duration
	free             int
}

// freelistSettings are the values of Options.FreelistSyncPages compared.
var freelistSettings = []struct {
	name  string
	pages int
}{{"always written", math.MaxInt}, {"never", -1}, {"up to 4,096 (default)", 0}}

// measureStage measures the file at path with each freelist setting in turn, over 3
// rounds each.
func measureStage(b *testing.B, name string, path string) (st stage) {
	b.Helper()
	st.name = name
	var fires, acks, opens [3][]time.Duration
	for round := range 9 {
		i := round % 3
		opts := Options{FreelistSyncPages: freelistSettings[i].pages}
		// A commit in this setting first: the file's meta then says whether a
		// freelist is synced, as it would on a node that always runs so.
		s := openBench(b, path, opts)
		if err := s.CommitFires(fireBatch(rand.New(rand.NewPCG(9, 9)), 1, *outageRules)); err != nil {
			b.Fatal(err)
		}
		ackAll(b, s)
		if err := s.Close(); err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		s = openBench(b, path, opts)
		opens[i] = append(opens[i], time.Since(start))
		f, a := measureCommits(b, s, 50)
		fires[i] = append(fires[i], f...)
		acks[i] = append(acks[i], a...)
		st.cost[i].free = s.db.Stats().FreePageN
		if err := s.Close(); err != nil {
			b.Fatal(err)
		}
	}
	for i := range st.cost {
		st.cost[i].fires, st.cost[i].ack, st.cost[i].open = median(fires[i]), median(acks[i]), median(opens[i])
	}
	fi, err := os.Stat(path)
	if err != nil {
		b.Fatal(err)
	}
	st.size = fi.Size()
	return st
}

func median(ds []time.Duration) time.Duration {
	slices.Sort(ds)
	return ds[len(ds)/2]
}

func openBench(b *testing.B, path string, opts Options) *Store {
	b.Helper()
	s, err := Open(path, opts)
	if err != nil {
		b.Fatal(err)
	}
	s.acks.wait = time.Nanosecond // an ack commits on its own: measured apart from the fires
	return s
}

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

// measureCommits times n commits of 20 fires, each followed by the ack of its 20
// events.
func measureCommits(b *testing.B, s *Store, n int) (fires, acks []time.Duration) {
	b.Helper()
	rng := rand.New(rand.NewPCG(7, 7))
	const batch = 20
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
	return fires, acks
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

// BenchmarkOpen1MFreelist is the price of not writing the freelist, paid at a
// restart: Open of a store of 1M rules with watermarks (the restart of issue 11 point 5)
// with the freelist written (read from its page) and not (a walk of every live page), in
// alternating rounds on one copy of the file, each after a commit in that setting.
//
//	go test -run '^$' -bench Open1MFreelist -benchtime 1x ./store
func BenchmarkOpen1MFreelist(b *testing.B) {
	src := benchStore1M(b, 1_000_000)
	var opens [2][]time.Duration
	var size int64
	for b.Loop() {
		path := filepath.Join(b.TempDir(), "1m.db")
		data, err := os.ReadFile(src)
		if err != nil {
			b.Fatal(err)
		}
		if err := os.WriteFile(path, data, 0o600); err != nil {
			b.Fatal(err)
		}
		size = int64(len(data))
		for round := range 10 {
			i := round % 2
			opts := Options{FreelistSyncPages: []int{math.MaxInt, -1}[i]}
			s := openBench(b, path, opts)
			if err := s.CommitFires(fireBatch(rand.New(rand.NewPCG(9, 9)), 1, 1_000_000)); err != nil {
				b.Fatal(err)
			}
			if err := s.Close(); err != nil {
				b.Fatal(err)
			}
			start := time.Now()
			s = openBench(b, path, opts)
			opens[i] = append(opens[i], time.Since(start))
			if err := s.Close(); err != nil {
				b.Fatal(err)
			}
		}
	}
	fmt.Printf("Open of 1M rules (%d MiB), warm, median of 5: freelist written %.1f ms, not written %.1f ms\n",
		size>>20, median(opens[0]).Seconds()*1e3, median(opens[1]).Seconds()*1e3)
}
