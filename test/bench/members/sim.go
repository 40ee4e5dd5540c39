package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/timerd/timerd/cluster"
	"github.com/timerd/timerd/test/internal/procstat"
)

// config of one simulation.
type config struct {
	N       int           // members at the start
	Rest    time.Duration // the window at rest, and after each event
	Timeout time.Duration // bound of each convergence
	Seeds   int           // the join list: the first Seeds members
	Batch   int           // members started at once while the cluster forms
	Profile string        // memberlist's base config: lan (what timerd runs), wan or local
	Encrypt bool          // a gossip key, as a cluster should have
	// VNodes is the virtual nodes per member of the members' own rings (their views):
	// a ring of the default 1,000 takes seconds to build at 100 members, and 100 members
	// in one process build one each at every change, on two cores. The moves and the
	// balance are computed with the default ring, whose build is timed on its own.
	VNodes int
	// Ring is the ring the moves and the balance are computed with and whose build is
	// timed; the zero value is timerd's default (tests take a smaller one: -race).
	Ring cluster.RingConfig
	// Log, when set, takes the members' warnings (memberlist's suspicions and deaths).
	Log io.Writer
	// Memberlist, when set, is memberlist's base config instead of Profile's (tests).
	Memberlist func() *memberlist.Config
	Progress   func(format string, args ...any)
}

// member is one cluster.Cluster of the simulation.
type member struct {
	name string
	c    *cluster.Cluster
}

// sim is the running members, by index; a crashed or departed member is nil.
type sim struct {
	cfg     config
	key     string
	members []*member
	seeds   []string
}

// window is what the live members did over a span: bytes per member per second and
// the process's CPU per member.
type window struct {
	What             string
	Span             time.Duration
	Members          int
	SentPerSec       stats // bytes/s per member
	ReceivedPerSec   stats
	CPUPerMemberPct  float64 // % of one core, the whole process's CPU over the members
	ConvergedIn      time.Duration
	MovedFraction    float64 // partitions whose owner changed
	IdealFraction    float64
	MovedBetweenOlds int // partitions moved from one member that stays to another
}

type stats struct{ Mean, Max float64 }

// addrOf is the loopback address of member i: 127.0.x.y from 127.0.0.2, so that each
// member has an IP of its own, as on a network.
func addrOf(i int) string {
	return fmt.Sprintf("127.0.%d.%d:0", i/250, 2+i%250)
}

func nameOf(i int) string { return fmt.Sprintf("m%03d", i) }

func (s *sim) memberlistConfig() *memberlist.Config {
	if s.cfg.Memberlist != nil {
		return s.cfg.Memberlist()
	}
	var mc *memberlist.Config
	switch s.cfg.Profile {
	case "local":
		mc = memberlist.DefaultLocalConfig()
	case "wan":
		mc = memberlist.DefaultWANConfig()
	default:
		return cluster.LANMemberlist() // timerd's
	}
	mc.EnableCompression = false // as timerd's (cluster.LANMemberlist)
	return mc
}

// start creates member i and joins it to the seeds (none for the first).
func (s *sim) start(ctx context.Context, i int) (*member, error) {
	m, err := s.startAt(ctx, nameOf(i), addrOf(i), s.seeds)
	if err != nil {
		return nil, fmt.Errorf("member %d: %w", i, err)
	}
	return m, nil
}

// startAt creates the member name on addr and joins it to join.
func (s *sim) startAt(ctx context.Context, name, addr string, join []string) (*member, error) {
	cfg := cluster.Config{
		NodeName:    name,
		BindAddr:    addr,
		Join:        slices.Clone(join),
		JoinTimeout: s.cfg.Timeout,
		Memberlist:  s.memberlistConfig,
		GossipKey:   s.key,
		Ring:        cluster.RingConfig{ReplicationFactor: s.cfg.VNodes},
	}
	if s.cfg.Log != nil {
		cfg.Logger = slog.New(slog.NewTextHandler(s.cfg.Log, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	c, err := cluster.New(cfg)
	if err != nil {
		return nil, err
	}
	if _, err := c.Join(ctx); err != nil {
		_ = c.Shutdown()
		return nil, fmt.Errorf("join: %w", err)
	}
	return &member{name: cfg.NodeName, c: c}, nil
}

func newSim(cfg config) (*sim, error) {
	s := &sim{cfg: cfg}
	if cfg.Encrypt {
		k := make([]byte, 32)
		_, _ = rand.Read(k)
		s.key = base64.StdEncoding.EncodeToString(k)
	}
	return s, nil
}

func (s *sim) progress(format string, args ...any) {
	if s.cfg.Progress != nil {
		s.cfg.Progress(format, args...)
	}
}

// live is the running members.
func (s *sim) live() []*member {
	var out []*member
	for _, m := range s.members {
		if m != nil {
			out = append(out, m)
		}
	}
	return out
}

// names is the sorted names of the running members.
func (s *sim) names() []string {
	var out []string
	for _, m := range s.live() {
		out = append(out, m.name)
	}
	slices.Sort(out)
	return out
}

// form starts cfg.N members: the first alone, the seeds after it, then the rest in
// batches of cfg.Batch started at once, each joining the seeds, a batch after the views
// agree on the one before (a rollout); it returns when every view holds all of them.
func (s *sim) form(ctx context.Context) (time.Duration, error) {
	start := time.Now()
	first, err := s.start(ctx, 0)
	if err != nil {
		return 0, err
	}
	s.members = append(s.members, first)
	s.seeds = []string{first.c.LocalAddr()}
	for i := 1; i < min(s.cfg.Seeds, s.cfg.N); i++ {
		m, err := s.start(ctx, i)
		if err != nil {
			return 0, err
		}
		s.members = append(s.members, m)
		s.seeds = append(s.seeds, m.c.LocalAddr())
	}
	for len(s.members) < s.cfg.N {
		batch := make([]*member, min(s.cfg.Batch, s.cfg.N-len(s.members)))
		errs := make([]error, len(batch))
		var wg sync.WaitGroup
		for j := range batch {
			wg.Go(func() { batch[j], errs[j] = s.start(ctx, len(s.members)+j) })
		}
		wg.Wait()
		for j, m := range batch {
			if errs[j] != nil {
				return 0, errs[j]
			}
			s.members = append(s.members, m)
		}
		if len(s.members) < s.cfg.N { // the last batch's wait is the one returned
			took, err := s.converge(ctx, time.Now())
			if err != nil {
				return 0, fmt.Errorf("at %d members: %w", len(s.members), err)
			}
			s.progress("%d members agree %s after their batch started", len(s.members), took.Round(time.Millisecond))
		}
	}
	return s.converge(ctx, start)
}

// converge waits until every running member's view holds exactly the running members
// (their rings are then the same: a ring is a function of its member set) and says how
// long that took from since.
func (s *sim) converge(ctx context.Context, since time.Time) (time.Duration, error) {
	want := s.names()
	deadline := since.Add(s.cfg.Timeout)
	told := time.Now()
	for {
		agree, least, most := 0, len(want), 0
		for _, m := range s.live() {
			v := m.c.View().Members
			if slices.Equal(v, want) {
				agree++
			}
			least, most = min(least, len(v)), max(most, len(v))
		}
		if agree == len(want) {
			return time.Since(since), nil
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("%d of %d members see the %d members after %s", agree, len(want), len(want), s.cfg.Timeout)
		}
		if time.Since(told) > 10*time.Second {
			s.progress("%d of %d members see them all (views of %d to %d members)", agree, len(want), least, most)
			told = time.Now()
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(20 * time.Millisecond): // 100 views a look: not so often that it takes the members' CPU
		}
	}
}

// snapshot is every member's byte counts and the process's CPU at one moment.
type snapshot struct {
	at    time.Time
	cpu   time.Duration
	bytes map[string]cluster.NetBytes
}

func (s *sim) snapshot() snapshot {
	sn := snapshot{at: time.Now(), bytes: map[string]cluster.NetBytes{}}
	if p, err := procstat.Read(osPid); err == nil {
		sn.cpu = p.CPU
	}
	for _, m := range s.live() {
		sn.bytes[m.name] = m.c.NetBytes()
	}
	return sn
}

// measure is the window from a to b, over the members present in both.
func measure(what string, a, b snapshot) window {
	w := window{What: what, Span: b.at.Sub(a.at)}
	secs := w.Span.Seconds()
	var sent, recv []float64
	for name, bb := range b.bytes {
		ab, ok := a.bytes[name]
		if !ok {
			continue
		}
		sent = append(sent, float64(bb.Sent()-ab.Sent())/secs)
		recv = append(recv, float64(bb.Received()-ab.Received())/secs)
	}
	w.Members = len(sent)
	w.SentPerSec, w.ReceivedPerSec = summarise(sent), summarise(recv)
	if w.Members > 0 {
		w.CPUPerMemberPct = 100 * (b.cpu - a.cpu).Seconds() / secs / float64(w.Members)
	}
	return w
}

func summarise(xs []float64) stats {
	if len(xs) == 0 {
		return stats{}
	}
	var st stats
	for _, x := range xs {
		st.Mean += x
		st.Max = max(st.Max, x)
	}
	st.Mean /= float64(len(xs))
	return st
}

// moves compares the rings of two member sets: the fraction of partitions whose owner
// changed, and how many moved from a member in both sets to another such member.
func moves(rc cluster.RingConfig, before, after []string) (float64, int, error) {
	rb, err := cluster.NewRing(rc, before)
	if err != nil {
		return 0, 0, err
	}
	ra, err := cluster.NewRing(rc, after)
	if err != nil {
		return 0, 0, err
	}
	moved, between := 0, 0
	for p := range partitions(rc) {
		ob, oa := rb.PartitionOwner(p), ra.PartitionOwner(p)
		if ob == oa {
			continue
		}
		moved++
		if ra.Has(ob) && rb.Has(oa) {
			between++
		}
	}
	return float64(moved) / float64(partitions(rc)), between, nil
}

// partitions is rc's partition count.
func partitions(rc cluster.RingConfig) int {
	if rc.Partitions == 0 {
		return cluster.DefaultPartitions
	}
	return rc.Partitions
}

// balance is the most and fewest partitions a member owns, over the mean.
func balance(rc cluster.RingConfig, members []string) (hi, lo float64, err error) {
	r, err := cluster.NewRing(rc, members)
	if err != nil {
		return 0, 0, err
	}
	count := map[string]int{}
	for p := range partitions(rc) {
		count[r.PartitionOwner(p)]++
	}
	mean := float64(partitions(rc)) / float64(len(members))
	lo = mean
	for _, n := range count {
		hi, lo = max(hi, float64(n)), min(lo, float64(n))
	}
	if len(count) < len(members) {
		lo = 0
	}
	return hi / mean, lo / mean, nil
}

// ringBuild is the time one default ring of n members takes to build, here.
func ringBuild(rc cluster.RingConfig, n int) (time.Duration, error) {
	names := make([]string, n)
	for i := range names {
		names[i] = nameOf(i)
	}
	start := time.Now()
	_, err := cluster.NewRing(rc, names)
	return time.Since(start), err
}

// result is the whole run.
type result struct {
	N             int
	Profile       string
	Encrypted     bool
	FormedIn      time.Duration
	BalanceHi     float64
	BalanceLo     float64
	Windows       []window
	HeapPerMember float64 // bytes of Go heap per member after the run's start
	VNodes        int
	RingBuild     map[int]time.Duration // the default ring's build, by members
}

// run forms the cluster, measures it at rest, then a join, a crash and a graceful leave,
// each followed by a window of cfg.Rest.
func run(ctx context.Context, cfg config) (res result, err error) {
	s, err := newSim(cfg)
	if err != nil {
		return res, err
	}
	defer func() {
		var wg sync.WaitGroup
		for _, m := range s.live() {
			wg.Go(func() { _ = m.c.Shutdown() })
		}
		wg.Wait()
	}()
	p := cfg.Progress
	res = result{N: cfg.N, Profile: cfg.Profile, Encrypted: cfg.Encrypt, VNodes: cfg.VNodes, RingBuild: map[int]time.Duration{}}
	for _, n := range []int{10, cfg.N} { // before the members start: the process is idle
		if res.RingBuild[n], err = ringBuild(cfg.Ring, n); err != nil {
			return res, err
		}
	}
	p("the ring (%+v, zero: the default) builds in %s at 10 members, %s at %d", cfg.Ring,
		res.RingBuild[10].Round(time.Millisecond), res.RingBuild[cfg.N].Round(time.Millisecond), cfg.N)
	p("forming %d members (%s config, seeds %d)", cfg.N, cfg.Profile, cfg.Seeds)
	if res.FormedIn, err = s.form(ctx); err != nil {
		return res, fmt.Errorf("form: %w", err)
	}
	p("formed in %s", res.FormedIn.Round(time.Millisecond))
	if res.BalanceHi, res.BalanceLo, err = balance(cfg.Ring, s.names()); err != nil {
		return res, err
	}
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	res.HeapPerMember = float64(ms.HeapAlloc) / float64(cfg.N)

	sleep := func(d time.Duration) error {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(d):
			return nil
		}
	}
	// Settle: the join's gossip and push/pull of forming die down before the window at rest.
	if err := sleep(cfg.Rest); err != nil {
		return res, err
	}
	a := s.snapshot()
	if err := sleep(cfg.Rest); err != nil {
		return res, err
	}
	rest := measure("at rest", a, s.snapshot())
	res.Windows = append(res.Windows, rest)
	p("at rest: %.0f B/s sent per member", rest.SentPerSec.Mean)

	// event changes the membership, waits for every view to agree, and measures the
	// window that starts with the event.
	event := func(what string, change func() error) error {
		before := s.names()
		a := s.snapshot()
		if err := change(); err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		took, err := s.converge(ctx, a.at)
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		if err := sleep(max(0, cfg.Rest-time.Since(a.at))); err != nil {
			return err
		}
		w := measure(what, a, s.snapshot())
		w.ConvergedIn = took
		after := s.names()
		if w.MovedFraction, w.MovedBetweenOlds, err = moves(cfg.Ring, before, after); err != nil {
			return err
		}
		w.IdealFraction = 1 / float64(max(len(before), len(after)))
		res.Windows = append(res.Windows, w)
		p("%s: every ring agrees after %s; %.2f%% of partitions moved (ideal %.2f%%)", what,
			took.Round(time.Millisecond), 100*w.MovedFraction, 100*w.IdealFraction)
		return nil
	}
	if err := event("join", func() error {
		m, err := s.start(ctx, len(s.members))
		if err != nil {
			return err
		}
		s.members = append(s.members, m)
		return nil
	}); err != nil {
		return res, err
	}
	crashed := len(s.members) / 2
	if err := event("crash", func() error {
		m := s.members[crashed]
		s.members[crashed] = nil
		return m.c.Shutdown() // no leave: the others find it dead
	}); err != nil {
		return res, err
	}
	left := len(s.members) / 3
	if err := event("leave", func() error {
		m := s.members[left]
		s.members[left] = nil
		lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		return m.c.Leave(lctx)
	}); err != nil {
		return res, err
	}
	return res, nil
}

var osPid = os.Getpid()
