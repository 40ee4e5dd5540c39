package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/timerd/timerd/scheduler"
	"github.com/timerd/timerd/test/internal/procstat"
)

// config is one load run.
type config struct {
	Rules        int
	Interval     time.Duration // of every rule; whole seconds
	Duration     time.Duration // measured after the last create (the run starts at the first)
	Concurrency  int           // clients creating rules
	Binary       string        // timerd to run; "" builds it
	DataDir      string        // "" makes a temporary one
	Keep         bool          // keep the data dir
	P99Target    time.Duration // of the latency of the slots after the last create
	Settle       time.Duration // wait after the outbox drained, before fetching events
	DrainTimeout time.Duration
	Progress     io.Writer // progress lines; nil discards them
}

func defaultConfig() config {
	return config{
		Rules:        50000,
		Interval:     10 * time.Second,
		Duration:     60 * time.Second,
		Concurrency:  12,
		P99Target:    250 * time.Millisecond,
		Settle:       3 * time.Second,
		DrainTimeout: 60 * time.Second,
	}
}

func (c config) validate() error {
	switch {
	case c.Rules < 1:
		return fmt.Errorf("-rules: %d, want ≥ 1", c.Rules)
	case c.Interval < time.Second || c.Interval%time.Second != 0:
		return fmt.Errorf("-interval: %s, want whole seconds ≥ 1s", c.Interval)
	case c.Duration < c.Interval:
		return fmt.Errorf("-duration: %s, want ≥ -interval (%s)", c.Duration, c.Interval)
	case c.Concurrency < 1 || c.Concurrency > 256:
		return fmt.Errorf("-concurrency: %d, want 1..256", c.Concurrency)
	case c.P99Target <= 0:
		return fmt.Errorf("-p99: %s, want > 0", c.P99Target)
	case c.Settle < 0:
		return fmt.Errorf("-settle: %s, want ≥ 0", c.Settle)
	case c.DrainTimeout <= 0:
		return fmt.Errorf("-drain-timeout: %s, want > 0", c.DrainTimeout)
	}
	return nil
}

// report is the outcome of a run (the -json output). The run is measured
// from the first create to Duration after the last one.
type report struct {
	Rules         int     `json:"rules"`
	IntervalSec   float64 `json:"interval_seconds"`
	DurationSec   float64 `json:"duration_seconds"` // after the last create
	FiresPerSec   float64 `json:"fires_per_second"`
	Concurrency   int     `json:"concurrency"`
	CPUs          int     `json:"cpus"`
	DataDir       string  `json:"data_dir,omitempty"`
	SetupSec      float64 `json:"setup_seconds"` // creating the rules
	CreatePerSec  float64 `json:"creates_per_second"`
	CreateLatency dist    `json:"create_latency"`
	// OwnedAfterSec is the intake delay: from the last create answered
	// until the node runs every rule (rules_owned = rules).
	OwnedAfterSec   float64 `json:"owned_after_seconds"`
	IntakeLagMax    int     `json:"intake_lag_max"` // rules answered but not yet running, at most (sampled each second)
	BacklogAtOwned  int     `json:"outbox_backlog_at_owned"`
	RunStart        string  `json:"run_start"`   // the first create
	CreatedEnd      string  `json:"created_end"` // the last create answered
	RunEnd          string  `json:"run_end"`
	DrainSec        float64 `json:"drain_seconds"` // from the run's end until the outbox was empty
	Drained         bool    `json:"drained"`
	OutboxMax       int     `json:"outbox_depth_max"`      // sampled once a second in the run
	OutboxAtFetch   int     `json:"outbox_depth_at_fetch"` // fires not yet delivered when the events were read: counted missing
	DeadLetters     int     `json:"dead_letters"`
	EventsFetched   int     `json:"events_fetched"`
	EventsInRun     int     `json:"events_in_run"` // stored events whose slot is in the run
	FetchSec        float64 `json:"fetch_seconds"`
	APIDupRejected  *int    `json:"api_duplicates_rejected"` // timerd_api_events_duplicate_total delta; null when the API has no metric
	NodeDupAnswered *int    `json:"node_deliveries_200"`     // node deliveries answered 200 (the API's duplicate answer); null without metric
	NodeDelivered   *int    `json:"node_deliveries_2xx"`     // node deliveries answered 2xx in the same span
	NodeDelivErrors *int    `json:"node_deliveries_not_2xx"` // failed attempts (status ≥ 300 or no response)
	analysis
	Process     procstat.Stats  `json:"process"`
	Timeline    []timelineTick  `json:"timeline,omitempty"`
	NodeMetrics []metricSummary `json:"node_metrics,omitempty"`
	APIMetrics  []metricSummary `json:"api_metrics,omitempty"`
	ExactlyOnce bool            `json:"pass_exactly_once"`
	LatencyOK   bool            `json:"pass_latency"` // p99 of the slots after the last create
	P99TargetMs float64         `json:"p99_target_ms"`
	Pass        bool            `json:"pass"`
	Exit        string          `json:"timerd_exit"`
}

// metricSummary is one metric family's change over the window and drain.
type metricSummary struct {
	Name  string   `json:"name"`
	Count float64  `json:"count"` // observations, or the counter's increase
	Mean  float64  `json:"mean,omitempty"`
	P50   float64  `json:"p50,omitempty"`
	P99   float64  `json:"p99,omitempty"`
	Value *float64 `json:"value,omitempty"` // gauges: the last value
}

var (
	apiURLRe  = regexp.MustCompile(`API:\s+(http://[^\s]+)`)
	nodeURLRe = regexp.MustCompile(`node:\s+(http://[^\s]+)`)
)

func (c config) logf(format string, args ...any) {
	if c.Progress != nil {
		fmt.Fprintf(c.Progress, "%s  "+format+"\n", append([]any{time.Now().Format("15:04:05.000")}, args...)...)
	}
}

// run drives one `timerd dev` through a load and analyses what the API stored.
func run(ctx context.Context, cfg config) (*report, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	rep := &report{
		Rules: cfg.Rules, IntervalSec: cfg.Interval.Seconds(), DurationSec: cfg.Duration.Seconds(),
		FiresPerSec: float64(cfg.Rules) / cfg.Interval.Seconds(), Concurrency: cfg.Concurrency,
		CPUs: runtime.NumCPU(), P99TargetMs: ms(cfg.P99Target),
	}

	tmp, err := os.MkdirTemp("", "timerd-load-")
	if err != nil {
		return nil, fmt.Errorf("create temp dir: %w", err)
	}
	defer os.RemoveAll(tmp)
	bin := cfg.Binary
	if bin == "" {
		bin = filepath.Join(tmp, "timerd")
		cfg.logf("building timerd")
		if err := build(ctx, bin); err != nil {
			return nil, err
		}
	}
	dataDir := cfg.DataDir
	if dataDir == "" {
		if dataDir, err = os.MkdirTemp("", "timerd-load-data-"); err != nil {
			return nil, fmt.Errorf("create data dir: %w", err)
		}
	}
	if cfg.Keep {
		rep.DataDir = dataDir
	} else {
		defer os.RemoveAll(dataDir)
	}

	p, err := startDev(ctx, bin, dataDir)
	if err != nil {
		return nil, err
	}
	defer func() {
		if rep.Exit == "" {
			_ = p.stop(30 * time.Second)
		}
	}()
	cl := newClient(p.apiURL, p.nodeURL, cfg.Concurrency)
	defer cl.close()
	// With authentication on, dev keeps an admin token in its data dir.
	if b, err := os.ReadFile(filepath.Join(dataDir, "admin.token")); err == nil {
		cl.token = strings.TrimSpace(string(b))
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("read the dev admin token: %w", err)
	}
	cfg.logf("timerd dev pid %d: API %s, node %s, data %s", p.cmd.Process.Pid, p.apiURL, p.nodeURL, dataDir)

	if err := poll(ctx, 60*time.Second, 50*time.Millisecond, p, func() (bool, error) { return cl.ready(ctx), nil }); err != nil {
		return nil, fmt.Errorf("wait for %s/readyz: %w", p.nodeURL, err)
	}

	// The run is measured from the first create: rules fire while the rest
	// are being created, and their slots count as much as the later ones.
	node0, _ := cl.scrape(ctx, p.nodeURL)
	api0, _ := cl.scrape(ctx, p.apiURL)
	start := time.Now()
	var created atomic.Int64
	smp := startSampler(ctx, cfg, cl, p, start, node0, &created)
	stopSampler := sync.OnceValue(func() *sampled { return smp.stop() })
	defer stopSampler()

	rules, lat, err := createRules(ctx, cfg, cl, p, &created)
	if err != nil {
		return nil, err
	}
	createdEnd := time.Now()
	setup := createdEnd.Sub(start)
	rep.SetupSec = setup.Seconds()
	rep.CreatePerSec = float64(cfg.Rules) / setup.Seconds()
	rep.CreateLatency = newDist(lat)
	s := span{Start: start, CreatedEnd: createdEnd, End: createdEnd.Add(cfg.Duration)}
	rep.RunStart, rep.CreatedEnd, rep.RunEnd = stamp(s.Start), stamp(s.CreatedEnd), stamp(s.End)
	cfg.logf("created %d rules in %s (%.0f/s); waiting for the node to run them all", cfg.Rules, setup.Round(time.Millisecond), rep.CreatePerSec)

	// Intake: from the last create answered until the node's engine holds
	// every rule (rules_owned is the engine's count).
	lastLog := time.Now()
	err = poll(ctx, 5*time.Minute, 20*time.Millisecond, p, func() (bool, error) {
		st, err := cl.status(ctx)
		if err != nil {
			return false, nil // the node may be busy; keep asking
		}
		if time.Since(lastLog) > 5*time.Second {
			cfg.logf("node runs %d/%d rules (known %d)", st.RulesOwned, cfg.Rules, st.RulesKnown)
			lastLog = time.Now()
		}
		if st.RulesOwned >= cfg.Rules {
			rep.BacklogAtOwned = st.OutboxDepth
			return true, nil
		}
		return false, nil
	})
	if err != nil {
		return nil, fmt.Errorf("wait for rules_owned ≥ %d: %w", cfg.Rules, err)
	}
	rep.OwnedAfterSec = time.Since(createdEnd).Seconds()
	cfg.logf("all %d rules run %.2fs after the last create (outbox %d); measuring until %s after it",
		cfg.Rules, rep.OwnedAfterSec, rep.BacklogAtOwned, cfg.Duration)
	if err := sleepUntil(ctx, s.End, p); err != nil {
		return nil, err
	}
	sm := stopSampler()
	if sm.err != nil {
		return nil, sm.err
	}
	rep.Process, rep.Timeline, rep.OutboxMax, rep.IntakeLagMax = procstat.Summarise(sm.ps), sm.timeline, sm.outboxMax, sm.lagMax

	// Drain: the rules keep firing, and entries count in the outbox until
	// their delivery is acked, so under load it is rarely empty. Drained is
	// under 100 ms of fires; then a few seconds for the last POSTs. (The
	// status counts the rules with a walk of the bucket: poll gently.)
	drained := max(1, int(rep.FiresPerSec/10))
	err = poll(ctx, cfg.DrainTimeout, 100*time.Millisecond, p, func() (bool, error) {
		s, err := cl.status(ctx)
		if err == nil {
			rep.DeadLetters = s.DeadLetters
		}
		return err == nil && s.OutboxDepth <= drained, nil
	})
	rep.DrainSec = time.Since(s.End).Seconds()
	rep.Drained = err == nil
	if err != nil && !errors.Is(err, errTimeout) {
		return nil, err
	}
	if !rep.Drained {
		cfg.logf("outbox not empty %s after the run; analysing anyway", cfg.DrainTimeout)
	}
	if err := sleepUntil(ctx, time.Now().Add(cfg.Settle), p); err != nil {
		return nil, err
	}
	node1, _ := cl.scrape(ctx, p.nodeURL)
	api1, _ := cl.scrape(ctx, p.apiURL)
	rep.NodeMetrics = summariseMetrics(node0, node1)
	rep.APIMetrics = summariseMetrics(api0, api1)
	// The API's metrics are on its own /metrics, or on the node's registry
	// when the process shares one.
	rep.APIDupRejected = counterDelta(api0, api1, "timerd_api_events_duplicate_total", nil)
	if rep.APIDupRejected == nil {
		rep.APIDupRejected = counterDelta(node0, node1, "timerd_api_events_duplicate_total", nil)
	}
	rep.NodeDupAnswered = counterDelta(node0, node1, "timerd_deliveries_total", map[string]string{"code": "200"})
	rep.NodeDelivered, rep.NodeDelivErrors = deliveriesByClass(node0, node1)

	// Fetch and analyse.
	if st, err := cl.status(ctx); err == nil {
		rep.OutboxAtFetch = st.OutboxDepth
	}
	cfg.logf("fetching events")
	t0 := time.Now()
	evs, err := fetchEvents(ctx, cl, s.Start.Add(-2*time.Second))
	if err != nil {
		return nil, err
	}
	rep.FetchSec = time.Since(t0).Seconds()
	rep.EventsFetched = len(evs)
	for _, e := range evs {
		if !e.Payload.ScheduledAt.Before(s.Start) && e.Payload.ScheduledAt.Before(s.End) {
			rep.EventsInRun++
		}
	}
	rep.analysis = analyze(rules, evs, s)
	rep.ExactlyOnce = rep.Expected > 0 && rep.Missing == 0 && rep.Duplicates == 0 && rep.OffGrid == 0 && rep.Early == 0
	rep.LatencyOK = rep.LatencyAfter.N > 0 && rep.LatencyAfter.P99 <= ms(cfg.P99Target)
	rep.Pass = rep.ExactlyOnce && rep.LatencyOK

	if err := p.stop(30 * time.Second); err != nil {
		rep.Exit = err.Error()
	} else {
		rep.Exit = "exit status 0"
	}
	return rep, nil
}

func stamp(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }

// sampled is what the sampler saw from the first create to the end of the
// run.
type sampled struct {
	ps        []procstat.Sample
	timeline  []timelineTick
	outboxMax int
	lagMax    int // rules created but not yet running, at most
	err       error
}

type sampler struct {
	done chan struct{}
	quit chan struct{}
	out  sampled
}

// startSampler samples the process and the node's status once a second,
// and the node's metrics every ten, until stop.
func startSampler(ctx context.Context, cfg config, cl *client, p *proc, start time.Time, scrape0 samples, created *atomic.Int64) *sampler {
	sm := &sampler{done: make(chan struct{}), quit: make(chan struct{})}
	pid := p.cmd.Process.Pid
	if s, err := procstat.Read(pid); err == nil {
		sm.out.ps = append(sm.out.ps, s)
	}
	go func() {
		defer close(sm.done)
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		lastAt, lastScrape := time.Now(), scrape0
		for {
			select {
			case <-ctx.Done():
				sm.out.err = ctx.Err()
				return
			case <-p.done:
				sm.out.err = p.exitErr("during the run")
				return
			case <-sm.quit:
				if cur, _ := cl.scrape(ctx, p.nodeURL); cur != nil {
					sm.out.timeline = append(sm.out.timeline, newTimelineTick(time.Since(start), lastAt, lastScrape, cur))
				}
				return
			case <-tick.C:
			}
			if s, err := procstat.Read(pid); err == nil {
				sm.out.ps = append(sm.out.ps, s)
			}
			c := int(created.Load())
			if st, err := cl.status(ctx); err == nil {
				sm.out.outboxMax = max(sm.out.outboxMax, st.OutboxDepth)
				sm.out.lagMax = max(sm.out.lagMax, c-st.RulesOwned)
			}
			if time.Since(lastAt) >= 10*time.Second {
				cur, _ := cl.scrape(ctx, p.nodeURL)
				tl := newTimelineTick(time.Since(start), lastAt, lastScrape, cur)
				sm.out.timeline = append(sm.out.timeline, tl)
				cfg.logf("+%s: %s", tl.At, tl)
				lastAt, lastScrape = time.Now(), cur
			}
		}
	}()
	return sm
}

func (sm *sampler) stop() *sampled {
	close(sm.quit)
	<-sm.done
	return &sm.out
}

func build(ctx context.Context, out string) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "github.com/timerd/timerd/cmd/timerd")
	b, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("go build timerd: %w\n%s", err, b)
	}
	return nil
}

// createRules creates cfg.Rules rules with cfg.Concurrency clients and
// returns them, with each create's latency; created counts those answered.
func createRules(ctx context.Context, cfg config, cl *client, p *proc, created *atomic.Int64) ([]ruleSpec, []time.Duration, error) {
	rules := make([]ruleSpec, cfg.Rules)
	lat := make([]time.Duration, cfg.Rules)
	sec := int64(cfg.Interval / time.Second)
	params := fmt.Appendf(nil, `{"interval":%d,"unit":"seconds"}`, sec)
	var next atomic.Int64
	start := time.Now()
	g, gctx := errgroup.WithContext(ctx)
	for range cfg.Concurrency {
		g.Go(func() error {
			for {
				i := int(next.Add(1) - 1)
				if i >= cfg.Rules {
					return nil
				}
				t := time.Now()
				id, err := cl.createRule(gctx, fmt.Sprintf("load.r%06d", i), sec)
				if err != nil {
					return err
				}
				acked := time.Now()
				// The schedule the node derives from the rule: the load
				// knows every slot the rule owes.
				tm, err := scheduler.Parse("core.intervaltimer", params, id)
				if err != nil {
					return fmt.Errorf("rule %d: %w", id, err)
				}
				rules[i], lat[i] = ruleSpec{ID: id, Sent: t, Acked: acked, Timer: tm}, acked.Sub(t)
				created.Add(1)
			}
		})
	}
	stop := make(chan struct{})
	go func() {
		t := time.NewTicker(5 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				d := created.Load()
				cfg.logf("created %d/%d rules (%.0f/s)", d, cfg.Rules, float64(d)/time.Since(start).Seconds())
			}
		}
	}()
	err := g.Wait()
	close(stop)
	if err != nil {
		select {
		case <-p.done:
			return nil, nil, p.exitErr("while creating rules")
		default:
		}
		return nil, nil, err
	}
	return rules, lat, nil
}

// fetchEvents reads every stored event from the first page that may hold
// one created at or after from (pages are oldest first, so earlier ones are
// skipped by a binary search) up to the last page when the fetch began.
func fetchEvents(ctx context.Context, cl *client, from time.Time) ([]event, error) {
	const size = 1000
	first, err := cl.events(ctx, nil, 1, size)
	if err != nil {
		return nil, fmt.Errorf("list events: %w", err)
	}
	total := first.Pagination.TotalPages
	if total <= 1 {
		return first.Items, nil
	}
	// The first page whose last event was created at or after from.
	lo, hi := 1, total
	for lo < hi {
		mid := (lo + hi) / 2
		pg, err := cl.events(ctx, nil, mid, size)
		if err != nil {
			return nil, fmt.Errorf("list events page %d: %w", mid, err)
		}
		if n := len(pg.Items); n > 0 && pg.Items[n-1].Created.Before(from) {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	start := max(1, lo-1) // one page of margin for stores not in time order
	pages := make([][]event, total-start+1)
	var next atomic.Int64
	next.Store(int64(start))
	g, gctx := errgroup.WithContext(ctx)
	for range 4 {
		g.Go(func() error {
			for {
				n := int(next.Add(1) - 1)
				if n > total {
					return nil
				}
				pg, err := cl.events(gctx, nil, n, size)
				if err != nil {
					return fmt.Errorf("list events page %d: %w", n, err)
				}
				pages[n-start] = pg.Items
			}
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	return slices.Concat(pages...), nil
}

func counterDelta(a, b samples, name string, match map[string]string) *int {
	if b == nil {
		return nil
	}
	vb, ok := b.sum(name, match)
	if !ok {
		if _, family := b.sum(name, nil); !family {
			return nil // no such metric
		}
	}
	va, _ := a.sum(name, match)
	d := int(math.Round(vb - va))
	return &d
}

// deliveriesByClass counts the node's delivery attempts answered 2xx and
// the others, between two scrapes.
func deliveriesByClass(a, b samples) (ok2xx, failed *int) {
	if b == nil {
		return nil, nil
	}
	var good, bad float64
	found := false
	for series, v := range b {
		n, l := splitSeries(series)
		if n != "timerd_deliveries_total" {
			continue
		}
		found = true
		d := v - a[series]
		if strings.HasPrefix(l["code"], "2") {
			good += d
		} else {
			bad += d
		}
	}
	if !found {
		return nil, nil
	}
	g, f := int(math.Round(good)), int(math.Round(bad))
	return &g, &f
}

// summariseMetrics lists the timerd_ histograms (quantiles of what was
// observed between the scrapes), counters (their increase) and gauges (last
// value).
func summariseMetrics(a, b samples) []metricSummary {
	if b == nil {
		return nil
	}
	var out []metricSummary
	ha, hb := a.histograms(), b.histograms()
	for name, h := range hb {
		if !strings.HasPrefix(name, "timerd_") {
			continue
		}
		d := h.minus(ha[name])
		m := metricSummary{Name: name, Count: d.count}
		if d.count > 0 {
			m.Mean, m.P50, m.P99 = d.sum/d.count, finite(d.quantile(0.5)), finite(d.quantile(0.99))
		}
		out = append(out, m)
	}
	families := map[string]bool{}
	for series := range b {
		n, _ := splitSeries(series)
		families[n] = true
	}
	for name := range families {
		if !strings.HasPrefix(name, "timerd_") || hb[strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(name, "_bucket"), "_sum"), "_count")] != nil {
			continue
		}
		if strings.HasSuffix(name, "_total") {
			vb, _ := b.sum(name, nil)
			va, _ := a.sum(name, nil)
			out = append(out, metricSummary{Name: name, Count: vb - va})
			continue
		}
		v, _ := b.sum(name, nil)
		out = append(out, metricSummary{Name: name, Value: &v})
	}
	slices.SortFunc(out, func(x, y metricSummary) int { return strings.Compare(x.Name, y.Name) })
	return out
}

// proc is the running `timerd dev`.
type proc struct {
	cmd             *exec.Cmd
	apiURL, nodeURL string
	done            chan struct{}
	waitErr         error
	mu              sync.Mutex
	tail            []string // last lines of its output
}

func startDev(ctx context.Context, bin, dataDir string) (*proc, error) {
	p := &proc{
		cmd: exec.Command(bin, "dev", "--data-dir", dataDir,
			"--api-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--log-level", "warn"),
		done: make(chan struct{}),
	}
	stdout, err := p.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s dev: %w", bin, err)
	}
	urls := make(chan [2]string, 1)
	var readers sync.WaitGroup
	readers.Add(2)
	go func() {
		defer readers.Done()
		var api string
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			line := sc.Text()
			p.keep(line)
			if m := apiURLRe.FindStringSubmatch(line); m != nil {
				api = m[1]
			}
			if m := nodeURLRe.FindStringSubmatch(line); m != nil && api != "" {
				select {
				case urls <- [2]string{api, m[1]}:
				default:
				}
			}
		}
	}()
	go func() {
		defer readers.Done()
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			p.keep(sc.Text())
		}
	}()
	go func() {
		readers.Wait() // Wait closes the pipes: read them to the end first
		p.waitErr = p.cmd.Wait()
		close(p.done)
	}()
	select {
	case u := <-urls:
		p.apiURL, p.nodeURL = u[0], u[1]
		return p, nil
	case <-p.done:
		return nil, p.exitErr("before printing its banner")
	case <-time.After(60 * time.Second):
		_ = p.stop(5 * time.Second)
		return nil, fmt.Errorf("timerd dev printed no API and node URLs within 60s:\n%s", p.output())
	case <-ctx.Done():
		_ = p.stop(5 * time.Second)
		return nil, ctx.Err()
	}
}

func (p *proc) keep(line string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.tail = append(p.tail, line)
	if len(p.tail) > 200 {
		p.tail = slices.Delete(p.tail, 0, len(p.tail)-100)
	}
}

func (p *proc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.tail, "\n")
}

func (p *proc) exitErr(when string) error {
	<-p.done
	return fmt.Errorf("timerd dev exited %s: %w; last output:\n%s", when, p.waitErr, p.output())
}

// stop sends SIGTERM, waits up to timeout, then kills.
func (p *proc) stop(timeout time.Duration) error {
	select {
	case <-p.done:
		return p.waitErr
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return p.waitErr
	case <-time.After(timeout):
		_ = p.cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("timerd dev did not stop within %s of SIGTERM; killed", timeout)
	}
}

var errTimeout = errors.New("timed out")

// poll calls cond every interval until it says true, fails, the process
// exits or timeout passes.
func poll(ctx context.Context, timeout, interval time.Duration, p *proc, cond func() (bool, error)) error {
	deadline := time.Now().Add(timeout)
	for {
		ok, err := cond()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w after %s", errTimeout, timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-p.done:
			return p.exitErr("while waiting")
		case <-time.After(interval):
		}
	}
}

func sleepUntil(ctx context.Context, t time.Time, p *proc) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-p.done:
		return p.exitErr("while waiting")
	case <-time.After(time.Until(t)):
		return nil
	}
}

// timelineTick is the node's activity over a stretch of the window, from
// two scrapes of its metrics.
type timelineTick struct {
	At            string  `json:"at"` // since the window start
	FiresPerSec   float64 `json:"fires_per_second"`
	DeliverPerSec float64 `json:"deliveries_2xx_per_second"`
	OutboxDepth   float64 `json:"outbox_depth"`
	LatenessP99   float64 `json:"fire_lateness_p99_seconds"`
	DeliveryP99   float64 `json:"delivery_p99_seconds"`
	CommitP99     float64 `json:"scheduler_commit_p99_seconds"`
}

func newTimelineTick(at time.Duration, since time.Time, a, b samples) timelineTick {
	tl := timelineTick{At: at.Round(time.Second).String()}
	if b == nil {
		return tl
	}
	secs := time.Since(since).Seconds()
	rate := func(name string, match map[string]string) float64 {
		vb, _ := b.sum(name, match)
		va, _ := a.sum(name, match)
		return (vb - va) / secs
	}
	tl.FiresPerSec = rate("timerd_fires_total", nil)
	if good, _ := deliveriesByClass(a, b); good != nil {
		tl.DeliverPerSec = float64(*good) / secs
	}
	tl.OutboxDepth, _ = b.sum("timerd_outbox_entries", nil)
	ha, hb := a.histograms(), b.histograms()
	p99 := func(name string) float64 {
		if h := hb[name]; h != nil {
			return finite(h.minus(ha[name]).quantile(0.99))
		}
		return 0
	}
	tl.LatenessP99 = p99("timerd_fire_lateness_seconds")
	tl.DeliveryP99 = p99("timerd_delivery_seconds")
	tl.CommitP99 = p99("timerd_scheduler_commit_seconds")
	return tl
}

func (t timelineTick) String() string {
	return fmt.Sprintf("fires %.0f/s  delivered %.0f/s  outbox %.0f  p99: lateness %s  delivery %s  commit %s",
		t.FiresPerSec, t.DeliverPerSec, t.OutboxDepth, secs(t.LatenessP99), secs(t.DeliveryP99), secs(t.CommitP99))
}

// finite maps NaN (no observations) to 0: JSON has no NaN.
func finite(v float64) float64 {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return 0
	}
	return v
}
