package cluster

import (
	"errors"
	"fmt"
	"math"
	"testing"
)

// namePattern formats member names in the ring figures; the sweep varies it.
var namePattern = "timerd-%d"

func names(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf(namePattern, i)
	}
	return out
}

// spread is max and min rules per member over ids 1..n.
func spread(r *Ring, n int) (maxC, minC int) {
	counts := map[string]int{}
	for id := int64(1); id <= int64(n); id++ {
		counts[r.Owner(id)]++
	}
	minC = math.MaxInt
	for _, m := range r.Members() {
		c := counts[m]
		maxC, minC = max(maxC, c), min(minC, c)
	}
	return maxC, minC
}

// moved is the share of ids 1..n whose owner differs between a and b, and the share that
// moved between members present in both rings (the moves consistent hashing should avoid).
func moved(a, b *Ring, n int) (all, between float64) {
	var m, bt int
	for id := int64(1); id <= int64(n); id++ {
		oa, ob := a.Owner(id), b.Owner(id)
		if oa == ob {
			continue
		}
		m++
		if a.Has(ob) && b.Has(oa) {
			bt++
		}
	}
	return float64(m) / float64(n), float64(bt) / float64(n)
}

type ringFigures struct {
	spread3, spread4, spread10 [2]int
	move34, between34          float64
	move43, between43          float64 // worst over which of the 4 leaves
}

func measureRing(t testing.TB, cfg RingConfig, ids int) ringFigures {
	t.Helper()
	build := func(m []string) *Ring {
		r, err := NewRing(cfg, m)
		if err != nil {
			t.Fatalf("NewRing(%+v, %d members): %v", cfg, len(m), err)
		}
		return r
	}
	var f ringFigures
	r3, r4, r10 := build(names(3)), build(names(4)), build(names(10))
	f.spread3[0], f.spread3[1] = spread(r3, ids)
	f.spread4[0], f.spread4[1] = spread(r4, ids)
	f.spread10[0], f.spread10[1] = spread(r10, ids)
	f.move34, f.between34 = moved(r3, r4, ids)
	for leave := range 4 {
		m := append(names(4)[:leave:leave], names(4)[leave+1:]...)
		a, b := moved(r4, build(m), ids)
		f.move43, f.between43 = max(f.move43, a), max(f.between43, b)
	}
	return f
}

func (f ringFigures) String() string {
	ratio := func(s [2]int) float64 { return float64(s[0]) / float64(s[1]) }
	return fmt.Sprintf("3 members max/min %d/%d (%.3f); 4: %d/%d (%.3f); 10: %d/%d (%.3f); "+
		"3->4 moves %.1f%% (%.2f%% between old members); 4->3 moves <= %.1f%% (%.2f%% between stayers)",
		f.spread3[0], f.spread3[1], ratio(f.spread3), f.spread4[0], f.spread4[1], ratio(f.spread4),
		f.spread10[0], f.spread10[1], ratio(f.spread10),
		100*f.move34, 100*f.between34, 100*f.move43, 100*f.between43)
}

// TestRingFigures checks the default ring against issue 5's targets and logs the figures
// that docs/architecture.md quotes (go test -run TestRingFigures -v ./cluster).
func TestRingFigures(t *testing.T) {
	const ids = 100_000
	f := measureRing(t, RingConfig{}, ids)
	t.Logf("defaults (partitions %d, replication %d, load %v), %d rule ids: %v",
		DefaultPartitions, DefaultReplicationFactor, DefaultLoad, ids, f)
	third := float64(ids) / 3
	if lo, hi := float64(f.spread3[1]), float64(f.spread3[0]); lo < third*0.85 || hi > third*1.15 {
		t.Errorf("3 members: min/max %v/%v rules, want each 1/3 ± 15%% of %d", lo, hi, ids)
	}
	if f.move34 < 0.15 || f.move34 > 0.35 {
		t.Errorf("3->4 moved %.3f of the rules, want 0.25 ± 0.10", f.move34)
	}
	if f.between34 > 0.02 {
		t.Errorf("3->4 moved %.3f between old members, want (almost) all to the new one", f.between34)
	}
	if f.move43 > 0.35 || f.between43 > 0.02 {
		t.Errorf("4->3 moved %.3f (%.3f between stayers), want <= 0.35 (<= 0.02)", f.move43, f.between43)
	}
}

// BenchmarkRingSweep prints the spread and moves of a grid of ring configs (what
// docs/architecture.md quotes); one iteration is the whole sweep:
//
//	go test -run '^$' -bench RingSweep -benchtime=1x -v ./cluster
func BenchmarkRingSweep(b *testing.B) {
	defer func(p string) { namePattern = p }(namePattern)
	for range b.N {
		for _, pat := range []string{"timerd-%d", "node%d.timerd.svc", "10.0.0.%d:7946"} {
			namePattern = pat
			for _, p := range []int{1021, 7919, 16381} {
				for _, rf := range []int{50, 100, 200, 500, 1000} {
					for _, load := range []float64{1.1, 1.25} {
						cfg := RingConfig{Partitions: p, ReplicationFactor: rf, Load: load}
						b.Logf("%s partitions %5d replication %4d load %.2f: %v", pat, p, rf, load, measureRing(b, cfg, 100_000))
					}
				}
			}
		}
	}
}

func TestRingOwnerStable(t *testing.T) {
	a, err := NewRing(RingConfig{}, []string{"c", "a", "b"})
	if err != nil {
		t.Fatal(err)
	}
	b, err := NewRing(RingConfig{}, []string{"b", "c", "a"})
	if err != nil {
		t.Fatal(err)
	}
	for id := int64(-5); id < 5000; id++ {
		if oa, ob := a.Owner(id), b.Owner(id); oa != ob || oa == "" {
			t.Fatalf("Owner(%d) = %q and %q for the same members in another order, want equal and non-empty", id, oa, ob)
		}
	}
	var empty *Ring
	if got := empty.Owner(1); got != "" {
		t.Errorf("nil Ring Owner(1) = %q, want \"\"", got)
	}
	e, err := NewRing(RingConfig{}, nil)
	if err != nil || e.Owner(1) != "" || e.Has("a") {
		t.Errorf("empty ring: err %v, Owner(1) %q, want nil error and no owner", err, e.Owner(1))
	}
}

func TestRingErrors(t *testing.T) {
	tests := []struct {
		name    string
		cfg     RingConfig
		members []string
	}{
		{"negative partitions", RingConfig{Partitions: -1}, names(1)},
		{"too many partitions", RingConfig{Partitions: maxPartitions + 1}, names(1)},
		// consistent panics with one virtual node and a single member.
		{"replication 1", RingConfig{ReplicationFactor: 1}, names(1)},
		{"load below 1", RingConfig{Load: 0.5}, names(3)},
		{"load NaN", RingConfig{Load: math.NaN()}, names(3)},
		// consistent would panic: 7 partitions over 3 members at load 1 leave one without room.
		{"no room at load 1", RingConfig{Partitions: 7, Load: 1}, names(3)},
		{"fewer partitions than members", RingConfig{Partitions: 2, Load: 1.5}, names(3)},
		{"duplicate member", RingConfig{}, []string{"a", "a"}},
		{"empty member", RingConfig{}, []string{"a", ""}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := NewRing(tt.cfg, tt.members)
			if !errors.Is(err, ErrRing) || r != nil {
				t.Fatalf("NewRing(%+v, %v) = %v, %v; want nil, ErrRing", tt.cfg, tt.members, r, err)
			}
		})
	}
}

func BenchmarkRingOwner(b *testing.B) {
	r, err := NewRing(RingConfig{}, names(4))
	if err != nil {
		b.Fatal(err)
	}
	var sink string
	id := int64(0)
	for b.Loop() {
		id++
		sink = r.Owner(id)
	}
	_ = sink
}

func BenchmarkNewRing(b *testing.B) {
	for _, n := range []int{3, 10} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			m := names(n)
			for b.Loop() {
				if _, err := NewRing(RingConfig{}, m); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
