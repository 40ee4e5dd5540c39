package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/timerd/timerd/cluster"
	"github.com/timerd/timerd/ingest"
	"github.com/timerd/timerd/scheduler"
	"github.com/timerd/timerd/test/internal/procstat"
)

// window is a phase's span, whose probe slots are checked on their own.
type window struct {
	name     string
	from, to time.Time
}

// runState is what the phases share.
type runState struct {
	cfg     config
	out     io.Writer
	c       *scluster
	f       *feed
	windows []window
	broken  []string // guarantees broken, for the verdict
	dupBase float64  // timerd_api_events_duplicate_total at the last phase end
	probes  []int64
	ids     []int64
}

func (s *runState) printf(format string, args ...any) {
	fmt.Fprintf(s.out, format+"\n", args...)
}

func (s *runState) breaks(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	s.broken = append(s.broken, msg)
	s.printf("  BROKEN: %s", msg)
}

func run(ctx context.Context, cfg config, out io.Writer) error {
	dir := cfg.Dir
	if dir == "" {
		d, err := os.MkdirTemp("", "timerd-scale-")
		if err != nil {
			return err
		}
		dir = d
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if !cfg.Keep && cfg.Dir == "" {
		defer os.RemoveAll(dir)
	}
	bin := cfg.Binary
	if bin == "" {
		bin = filepath.Join(dir, "timerd")
		cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/timerd")
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("go build ./cmd/timerd: %w", err)
		}
	}
	s := &runState{cfg: cfg, out: out}
	s.printf("timerd scale run: %d rules (%d probes of %s), %d nodes then %d, %d CPUs, load average %s, %.1f GiB available; logs in %s",
		cfg.Rules, cfg.Probes, cfg.ProbeEvery, cfg.Nodes, cfg.Nodes+1, runtime.NumCPU(), loadavg(), float64(memAvailable())/(1<<30), dir)
	c, err := newCluster(cfg, dir, bin)
	if err != nil {
		return err
	}
	s.c = c
	defer c.shutdown()
	// The sampler keeps each process's peak RSS and stops the run before the
	// machine runs out of memory (the kernel's OOM killer could pick another's
	// process on a shared machine).
	ctx, cancelRun := context.WithCancelCause(ctx)
	defer cancelRun(nil)
	sampleCtx, stopSampling := context.WithCancel(ctx)
	var sampler sync.WaitGroup
	var minAvail atomic.Int64
	minAvail.Store(memAvailable())
	sampler.Go(func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-sampleCtx.Done():
				return
			case <-t.C:
				c.sample()
				avail := memAvailable()
				minAvail.Store(min(minAvail.Load(), avail))
				if avail < cfg.MemFloor {
					cancelRun(fmt.Errorf("%w: memory available %.1f GiB, under -mem-floor %.1f GiB: stopped the run (%s)",
						errOutOfMemory, float64(avail)/(1<<30), float64(cfg.MemFloor)/(1<<30), c.rssSummary()))
					return
				}
			}
		}
	})
	defer func() { stopSampling(); sampler.Wait() }()

	for _, phase := range []func(context.Context) error{s.load, s.listing, s.startNodes, s.idle, s.scaleOut, s.rollingRestart, s.crash} {
		err := phase(ctx)
		if cause := context.Cause(ctx); cause != nil && ctx.Err() != nil {
			err = cause
		}
		if err != nil {
			if len(s.broken) > 0 {
				return fmt.Errorf("%w: %s (then: %w)", errGuarantee, strings.Join(s.broken, "; "), err)
			}
			return err
		}
	}
	if err := s.verify(ctx); err != nil {
		return err
	}
	s.printf("end: load average %s; least memory available in the run %.1f GiB", loadavg(), float64(minAvail.Load())/(1<<30))
	if len(s.broken) > 0 {
		return fmt.Errorf("%w: %s", errGuarantee, strings.Join(s.broken, "; "))
	}
	return nil
}

// load writes the rule file and starts timerd api loading it.
func (s *runState) load(ctx context.Context) error {
	m := mix{Rules: s.cfg.Rules, Probes: s.cfg.Probes, ProbeEvery: s.cfg.ProbeEvery, Seed: 1}
	path := filepath.Join(s.c.dir, "rules.jsonl")
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	begin := time.Now()
	counts, err := m.write(f, time.Now())
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	fi, _ := os.Stat(path)
	s.printf("rules file: %d probes, %d interval (1-24 h), %d cron (daily), %d datetime (1-30 days ahead); %.0f MiB, written in %s; %.0f fires/s expected over a day",
		counts.Probes, counts.Interval, counts.Cron, counts.Datetime, procstat.MiB(fi.Size()), time.Since(begin).Round(time.Millisecond), m.firesPerSec(counts))
	begin = time.Now()
	if err := s.c.startAPI(path, 30*time.Minute); err != nil {
		return err
	}
	took := "?"
	if l := logLines(s.c.api.logPath, "rules loaded in bulk"); len(l) > 0 {
		took, _ = l[0]["took"].(string)
	}
	st, _ := procstat.Read(s.c.api.pid())
	s.printf("api: %d rules loaded in %s (listening %s after its start); RSS %.0f MiB, CPU %s",
		s.cfg.Rules, took, time.Since(begin).Round(time.Millisecond), procstat.MiB(st.RSS), st.CPU.Round(time.Millisecond))
	s.f = &feed{apiURL: s.c.apiURL, token: s.c.admin}
	for i := 1; i <= s.cfg.Rules; i++ { // a fresh store numbers the rules in line order
		s.ids = append(s.ids, int64(i))
	}
	s.probes = s.ids[:s.cfg.Probes]
	_ = os.Remove(path) // the API has them; the file is large
	return nil
}

// staticToken is a fixed bearer token.
type staticToken string

func (t staticToken) Token() string   { return string(t) }
func (staticToken) Invalidate(string) {}

// listing times one listing of every enabled timer rule as a node's reconcile
// pages through it (ingest.RulesClient, 100 a page), alone on the API.
func (s *runState) listing(ctx context.Context) error {
	if s.cfg.SkipListing {
		return nil
	}
	rc := &ingest.RulesClient{APIURL: s.c.apiURL, Tokens: staticToken(s.c.sensor)}
	cpu0 := cpuOf(s.c.api)
	begin := time.Now()
	n := 0
	for _, ref := range scheduler.TimerTriggers() {
		l, err := rc.EnabledRules(ctx, ref)
		if err != nil {
			return fmt.Errorf("list %s: %w", ref, err)
		}
		n += len(l.Rules)
	}
	took := time.Since(begin)
	s.printf("listing alone: %d rules in %d pages of 100 in %s (%.1f ms a page); API CPU %s",
		n, (n+99)/100, took.Round(time.Millisecond), float64(took.Microseconds())/1000/float64(max(1, (n+99)/100)),
		(cpuOf(s.c.api) - cpu0).Round(time.Millisecond))
	return nil
}

func nodeName(i int) string { return fmt.Sprintf("n%d", i) }

// startNodes starts the first nodes at once (or, with -stagger, one at a time,
// each once the nodes before are ready) and waits until each is ready.
func (s *runState) startNodes(ctx context.Context) error {
	begin := time.Now()
	apiCPU0 := cpuOf(s.c.api)
	readyAt := map[string]time.Duration{}
	waitReady := func() error {
		at, err := s.waitReady(ctx, s.c.running(), begin)
		for name, d := range at {
			if _, ok := readyAt[name]; !ok {
				readyAt[name] = d
			}
		}
		return err
	}
	first, err := s.c.launch(ctx, nodeName(1), nil)
	if err != nil {
		return err
	}
	for i := 2; i <= s.cfg.Nodes; i++ {
		if s.cfg.Stagger {
			if err := waitReady(); err != nil {
				return err
			}
		}
		if _, err := s.c.launch(ctx, nodeName(i), []string{first.gossip}); err != nil {
			return err
		}
	}
	if err := waitReady(); err != nil {
		return err
	}
	allReady := time.Since(begin)
	var names []string
	for _, n := range s.c.running() {
		names = append(names, n.name)
	}
	want, err := ringCounts(names, s.ids)
	if err != nil {
		return err
	}
	if _, err := s.c.waitStable(ctx, 10*time.Minute, want); err != nil {
		s.breaks("%d nodes never stable: %v", s.cfg.Nodes, err)
		return err
	}
	stable := time.Since(begin)
	var lines []string
	var peak int64
	var agentCPU time.Duration
	for _, n := range s.c.running() {
		rec := reconcileTook(n.p.logPath)
		cpu := cpuOf(n.p)
		agentCPU += cpu
		peak = max(peak, s.c.peakRSS(n.p))
		lines = append(lines, fmt.Sprintf("%s ready %s (reconcile %s, CPU %s)", n.name, readyAt[n.name].Round(time.Second), rec, cpu.Round(time.Second)))
	}
	how := "at once"
	if s.cfg.Stagger {
		how = "one at a time"
	}
	s.printf("start %d nodes %s: all ready in %s, stable (each runs its ring share) in %s; API CPU %s, agents' CPU %s in all; agent RSS peak %.0f MiB",
		s.cfg.Nodes, how, allReady.Round(time.Millisecond), stable.Round(time.Millisecond), (cpuOf(s.c.api) - apiCPU0).Round(time.Second),
		agentCPU.Round(time.Second), procstat.MiB(peak))
	s.printf("  %s", strings.Join(lines, "; "))
	s.printf("ring balance (%d nodes): %s", s.cfg.Nodes, balanceOf(want))
	return nil
}

// waitReady waits until every node of ns answers /readyz 200 and returns how
// long after begin each did.
func (s *runState) waitReady(ctx context.Context, ns []*node, begin time.Time) (map[string]time.Duration, error) {
	readyAt := map[string]time.Duration{}
	deadline := time.Now().Add(s.cfg.ReadyWithin)
	for len(readyAt) < len(ns) {
		for _, n := range ns {
			if _, ok := readyAt[n.name]; ok {
				continue
			}
			if readyz(ctx, n.url) == 200 {
				readyAt[n.name] = time.Since(begin)
				continue
			}
			if n.p.exited() {
				s.breaks("%s exited before it was ready: %v (see %s)", n.name, n.p.err, n.p.logPath)
				return nil, errGuarantee
			}
		}
		if err := ctx.Err(); err != nil {
			s.whyNotReady(ns, readyAt)
			return nil, err
		}
		if time.Now().After(deadline) {
			s.whyNotReady(ns, readyAt)
			var late []string
			for _, n := range ns {
				if _, ok := readyAt[n.name]; !ok {
					late = append(late, n.name)
				}
			}
			s.breaks("%v not ready within %s", late, s.cfg.ReadyWithin)
			return nil, errGuarantee
		}
		time.Sleep(500 * time.Millisecond)
	}
	return readyAt, nil
}

// reconcileTook is what a node's log says its reconciles took (the first is
// the start-up one).
func reconcileTook(logPath string) string {
	var took []string
	for _, l := range logLines(logPath, "reconciled") {
		if t, ok := l["took"].(string); ok {
			took = append(took, t)
		}
	}
	if len(took) == 0 {
		return "not logged"
	}
	return strings.Join(took, ", ")
}

// ringCounts is how many of ids each of members owns in the default ring.
func ringCounts(members []string, ids []int64) (map[string]int, error) {
	owners, err := ringOwners(members, ids)
	if err != nil {
		return nil, err
	}
	out := map[string]int{}
	for _, m := range members {
		out[m] = 0
	}
	for _, o := range owners {
		out[o]++
	}
	return out, nil
}

func ringOwners(members []string, ids []int64) ([]string, error) {
	r, err := cluster.NewRing(cluster.RingConfig{}, members)
	if err != nil {
		return nil, fmt.Errorf("ring of %v: %w", members, err)
	}
	out := make([]string, len(ids))
	for i, id := range ids {
		out[i] = r.Owner(id)
	}
	return out, nil
}

// idle measures each process's CPU and RSS over a steady window.
func (s *runState) idle(ctx context.Context) error {
	// The probes' slots are checked from here on.
	s.windows = append(s.windows, window{name: "steady", from: time.Now()})
	if err := s.settleDups(ctx, "start"); err != nil {
		return err
	}
	type reading struct {
		name string
		a    procstat.Sample
		p    *proc
	}
	var rs []reading
	rs = append(rs, reading{name: "api", p: s.c.api})
	for _, n := range s.c.running() {
		rs = append(rs, reading{name: n.name, p: n.p})
	}
	for i := range rs {
		rs[i].a, _ = procstat.Read(rs[i].p.pid())
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(s.cfg.Idle):
	}
	var parts []string
	var cpus []float64
	var rss []float64
	for _, r := range rs {
		b, err := procstat.Read(r.p.pid())
		if err != nil {
			return fmt.Errorf("%s: %w", r.name, err)
		}
		pct := procstat.CPUPct(r.a, b)
		parts = append(parts, fmt.Sprintf("%s %.0f MiB %.1f%%", r.name, procstat.MiB(b.RSS), pct))
		if r.name != "api" {
			cpus = append(cpus, pct)
			rss = append(rss, procstat.MiB(b.RSS))
		}
	}
	s.printf("steady %s (probes firing %.0f/s): agent RSS min %.0f / max %.0f MiB, agent CPU min %.1f%% / max %.1f%% of a core (load average %s)",
		s.cfg.Idle, float64(s.cfg.Probes)/s.cfg.ProbeEvery.Seconds(), slices.Min(rss), slices.Max(rss), slices.Min(cpus), slices.Max(cpus), loadavg())
	s.printf("  %s", strings.Join(parts, "; "))
	s.endWindow()
	return nil
}

func (s *runState) endWindow() { s.windows[len(s.windows)-1].to = time.Now() }

// settleDups reads the API's duplicate counter and breaks the guarantee when
// it rose since the last phase.
func (s *runState) settleDups(ctx context.Context, phase string) error {
	text, err := getText(ctx, s.c.apiURL+"/metrics", s.c.admin)
	if err != nil {
		return err
	}
	d := metricSum(text, "timerd_api_events_duplicate_total")
	if d > s.dupBase {
		s.breaks("%s: the API dropped %.0f events that repeated a stored Idempotency-Key (a slot delivered twice)", phase, d-s.dupBase)
	}
	s.dupBase = d
	return nil
}

// firesOf is timerd_fires_total of n.
func firesOf(ctx context.Context, n *node) float64 {
	text, err := getText(ctx, n.url+"/metrics", "")
	if err != nil {
		return -1
	}
	return metricSum(text, "timerd_fires_total")
}

// scaleOut adds a node and measures what moved and how soon it fires.
func (s *runState) scaleOut(ctx context.Context) error {
	var before []string
	for _, n := range s.c.running() {
		before = append(before, n.name)
	}
	newName := nodeName(s.cfg.Nodes + 1)
	after := append(slices.Clone(before), newName)
	o1, err := ringOwners(before, s.ids)
	if err != nil {
		return err
	}
	o2, err := ringOwners(after, s.ids)
	if err != nil {
		return err
	}
	moved, between, newProbes := 0, 0, 0
	for i := range s.ids {
		if o1[i] != o2[i] {
			moved++
			if o2[i] != newName {
				between++
			}
		}
		if i < len(s.probes) && o2[i] == newName {
			newProbes++
		}
	}
	want, _ := ringCounts(after, s.ids)
	s.windows = append(s.windows, window{name: "scale-out", from: time.Now()})
	apiCPU0 := cpuOf(s.c.api)
	begin := time.Now()
	n, err := s.c.launch(ctx, newName, s.c.gossipAddrs(newName))
	if err != nil {
		return err
	}
	var profiled sync.WaitGroup
	profile := filepath.Join(s.c.dir, newName+"-start.cpu.pprof")
	if s.cfg.ProfileSeconds > 0 {
		profiled.Go(func() { s.saveProfile(ctx, n, profile) })
	}
	readyAt, err := s.waitReady(ctx, []*node{n}, begin)
	if err != nil {
		return err
	}
	nodeCPU, apiCPU := cpuOf(n.p), cpuOf(s.c.api)-apiCPU0
	profiled.Wait()
	st, err := s.c.waitStable(ctx, 10*time.Minute, want)
	if err != nil {
		s.breaks("%d → %d nodes: never stable: %v", len(before), len(after), err)
		return err
	}
	stable := time.Since(begin)
	// Its share fired: its fire counter reached the probes it owns (each fires
	// every probe interval; the bulk rarely within the run).
	var sharedAt time.Duration
	for deadline := time.Now().Add(3*s.cfg.ProbeEvery + time.Minute); ; {
		if f := firesOf(ctx, n); f >= float64(newProbes) {
			sharedAt = time.Since(begin)
			break
		}
		if time.Now().After(deadline) {
			s.breaks("%s fired fewer than the %d probes it owns within %s of its stability", newName, newProbes, 3*s.cfg.ProbeEvery+time.Minute)
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	owned := map[string]int{}
	for name, x := range st {
		if me, ok := x.self(); ok {
			owned[name] = me.RulesOwned
		}
	}
	s.printf("%d → %d nodes: %s owns %d rules (%.4f of them, ideal 1/%d = %.4f), %d moved between old nodes; ready in %s, runs its share in %s, fired its %d probes by %s; reconcile %s",
		len(before), len(after), newName, owned[newName], float64(moved)/float64(len(s.ids)), len(after), 1/float64(len(after)),
		between, readyAt[newName].Round(time.Millisecond), stable.Round(time.Millisecond), newProbes, sharedAt.Round(time.Millisecond),
		reconcileTook(n.p.logPath))
	s.printf("  %s's start-up: ready %s after its start, having used %s of CPU; the API used %s meanwhile (listing for it, and the probes' events)",
		newName, readyAt[newName].Round(time.Millisecond), nodeCPU.Round(time.Millisecond), apiCPU.Round(time.Millisecond))
	if s.cfg.ProfileSeconds > 0 {
		s.printf("  its CPU profile of the first %ds: %s (go tool pprof -top %s %s)", s.cfg.ProfileSeconds, profile, s.c.bin, profile)
	}
	s.printf("ring balance (%d nodes): %s", len(after), balanceOf(owned))
	s.endWindow()
	return s.settleDups(ctx, "scale-out")
}

// rollingRestart stops each node in turn (SIGTERM), starts it again on its
// data and waits until it is ready before the next.
func (s *runState) rollingRestart(ctx context.Context) error {
	s.windows = append(s.windows, window{name: "rolling restart", from: time.Now()})
	begin := time.Now()
	var stops, readies []time.Duration
	var worst string
	var worstReady time.Duration
	for _, n := range s.c.running() {
		t0 := time.Now()
		if err := n.p.stop(2 * time.Minute); err != nil {
			s.breaks("%s: stop: %v", n.name, err)
		}
		stops = append(stops, time.Since(t0))
		t1 := time.Now()
		if _, err := s.c.launch(ctx, n.name, s.c.gossipAddrs(n.name)); err != nil {
			return err
		}
		readyAt, err := s.waitReady(ctx, []*node{n}, t1)
		if err != nil {
			return err
		}
		readies = append(readies, readyAt[n.name])
		if readyAt[n.name] > worstReady {
			worstReady, worst = readyAt[n.name], fmt.Sprintf("%s (reconcile %s)", n.name, reconcileTook(n.p.logPath))
		}
	}
	if _, err := s.c.waitStable(ctx, 10*time.Minute, nil); err != nil {
		s.breaks("after the rolling restart: %v", err)
		return err
	}
	s.printf("rolling restart of %d: %s in all; exit after SIGTERM p50 %s max %s; ready after start p50 %s max %s, slowest %s",
		len(stops), time.Since(begin).Round(time.Second), quantile(stops, 0.5).Round(time.Millisecond), slices.Max(stops).Round(time.Millisecond),
		quantile(readies, 0.5).Round(time.Millisecond), worstReady.Round(time.Millisecond), worst)
	s.endWindow()
	return s.settleDups(ctx, "rolling restart")
}

// crash kills one node and measures how soon its probes fire elsewhere.
func (s *runState) crash(ctx context.Context) error {
	nodes := s.c.running()
	var names []string
	for _, n := range nodes {
		names = append(names, n.name)
	}
	victim := nodes[len(nodes)/2]
	owners, err := ringOwners(names, s.probes)
	if err != nil {
		return err
	}
	waiting := map[int64]bool{}
	for i, id := range s.probes {
		if owners[i] == victim.name {
			waiting[id] = true
		}
	}
	theirs := len(waiting)
	if _, err := s.f.poll(ctx); err != nil { // from here on, only new events
		return err
	}
	s.windows = append(s.windows, window{name: "crash", from: time.Now()})
	killed := time.Now()
	victim.p.kill()
	var lateness []time.Duration
	var lastStored time.Duration
	for deadline := killed.Add(3*s.cfg.ProbeEvery + 2*time.Minute); len(waiting) > 0; {
		evs, err := s.f.poll(ctx)
		if err != nil {
			return err
		}
		for _, e := range evs {
			if waiting[e.Rule] && e.Slot.After(killed) {
				delete(waiting, e.Rule)
				lateness = append(lateness, e.Fired.Sub(e.Slot))
				lastStored = max(lastStored, e.Created.Sub(killed))
			}
		}
		if time.Now().After(deadline) {
			s.breaks("crash of %s: %d of its %d probes never fired a slot after the kill within %s", victim.name, len(waiting), theirs, deadline.Sub(killed))
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	if _, err := s.c.waitStable(ctx, 5*time.Minute, nil); err != nil {
		s.breaks("after the crash of %s: %v", victim.name, err)
		return err
	}
	detected := time.Since(killed)
	s.printf("crash (SIGKILL) of %s: its %d probes fired again elsewhere, the last stored %s after the kill (lateness of their first slot p50 %s max %s); the others saw it gone and were stable %s after",
		victim.name, theirs, lastStored.Round(time.Millisecond), quantile(lateness, 0.5).Round(time.Millisecond),
		quantile(lateness, 1).Round(time.Millisecond), detected.Round(time.Millisecond))
	// Two probe intervals more, so that slots the takeover may have missed are due and checked.
	time.Sleep(2 * s.cfg.ProbeEvery)
	s.endWindow()
	return s.settleDups(ctx, "crash")
}

// verify reads every event the API stored and checks the probes' slots, phase
// by phase, and the Idempotency-Keys.
func (s *runState) verify(ctx context.Context) error {
	// What is due by the last window's end is fired, delivered and stored:
	// a few seconds for the fires, then the outboxes.
	time.Sleep(5 * time.Second)
	// Each outbox seen empty once is enough: while the probes fire, one is
	// empty only between a delivery and the next fire.
	deadline := time.Now().Add(2 * time.Minute)
	drained := map[string]bool{}
	for {
		all := true
		for _, n := range s.c.running() {
			var st status
			if drained[n.name] {
				continue
			}
			if err := getJSON(ctx, n.url+"/v1/status", "", &st); err == nil && st.OutboxDepth == 0 {
				drained[n.name] = true
				continue
			}
			all = false
		}
		if all || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	begin := time.Now()
	if _, err := s.f.poll(ctx); err != nil {
		return err
	}
	evs := s.f.all
	if s.cfg.Keep || s.cfg.Dir != "" {
		if err := writeEvents(filepath.Join(s.c.dir, "events.tsv"), evs); err != nil {
			return err
		}
	}
	byKey, bySlot := duplicates(evs)
	s.printf("events: %d stored, read in %s; %d repeat an Idempotency-Key, %d repeat a (rule, slot) under another key",
		len(evs), time.Since(begin).Round(time.Millisecond), byKey, bySlot)
	if byKey+bySlot > 0 {
		s.breaks("%d events stored twice", byKey+bySlot)
	}
	rules := byRule(evs)
	total := window{name: "whole run", from: s.windows[0].from, to: s.windows[len(s.windows)-1].to}
	for _, w := range append(slices.Clone(s.windows), total) {
		c := checkSlots(rules, s.probes, s.cfg.ProbeEvery, w.from, w.to)
		s.printf("slots %s (%s): %d probe slots due, %d missing, %d stored twice %s",
			w.name, w.to.Sub(w.from).Round(time.Second), c.Slots, c.Missing, c.Twice, strings.Join(c.Examples, "; "))
		if !c.ok() && w.name != "whole run" {
			s.breaks("%s: %d probe slots missing, %d stored twice", w.name, c.Missing, c.Twice)
		}
	}
	return s.settleDups(ctx, "end")
}

// writeEvents writes evs to path, one a line (id, rule, key, slot, fired,
// created), for a look after the run.
func writeEvents(path string, evs []event) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := bufio.NewWriter(f)
	for _, e := range evs {
		fmt.Fprintf(w, "%d\t%d\t%s\t%s\t%s\t%s\n", e.ID, e.Rule, e.Key, e.Slot.Format(time.RFC3339Nano),
			e.Fired.Format(time.RFC3339Nano), e.Created.Format(time.RFC3339Nano))
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// saveProfile saves a CPU profile of n's first ProfileSeconds.
func (s *runState) saveProfile(ctx context.Context, n *node, path string) {
	url := fmt.Sprintf("%s/debug/pprof/profile?seconds=%d", n.url, s.cfg.ProfileSeconds)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return
	}
	c := &http.Client{Timeout: time.Duration(s.cfg.ProfileSeconds)*time.Second + time.Minute}
	resp, err := c.Do(req)
	if err != nil {
		s.printf("  profile of %s: %v", n.name, err)
		return
	}
	defer resp.Body.Close()
	f, err := os.Create(path)
	if err != nil {
		return
	}
	_, _ = io.Copy(f, resp.Body)
	_ = f.Close()
}

// whyNotReady prints what the nodes of ns not in ready say of themselves.
func (s *runState) whyNotReady(ns []*node, ready map[string]time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, n := range ns {
		if _, ok := ready[n.name]; ok {
			continue
		}
		var st struct {
			Quorum      bool   `json:"quorum"`
			Seen        int    `json:"seen_members"`
			QuorumSize  int    `json:"quorum_size"`
			Incarnation string `json:"incarnation"`
			Partitions  int    `json:"partitions_held"`
			RulesKnown  int    `json:"rules_known"`
		}
		err := getJSON(ctx, n.url+"/v1/status", "", &st)
		s.printf("  %s not ready %s after its start: quorum %v (%d members seen, %d needed), incarnation %s, %d partitions held, %d rules known (%v)",
			n.name, time.Since(n.started).Round(time.Second), st.Quorum, st.Seen, st.QuorumSize, st.Incarnation, st.Partitions, st.RulesKnown, err)
	}
}
