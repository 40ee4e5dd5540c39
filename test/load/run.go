package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/url"
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

	"github.com/timerd/timerd/test/internal/procstat"
)

// config is one load run.
type config struct {
	Rules        int
	Interval     time.Duration // of every rule; whole seconds
	Duration     time.Duration // of the measuring window
	Concurrency  int           // clients creating rules
	Binary       string        // timerd to run; "" builds it
	DataDir      string        // "" makes a temporary one
	Keep         bool          // keep the data dir
	P99Target    time.Duration
	Settle       time.Duration // wait after the outbox drained, before fetching events
	DrainTimeout time.Duration
	// CatchUpTimeout bounds the wait, once every rule is owned, for the
	// outbox backlog of the setup to be delivered.
	CatchUpTimeout time.Duration
	Progress       io.Writer // progress lines; nil discards them
}

func defaultConfig() config {
	return config{
		Rules:          50000,
		Interval:       10 * time.Second,
		Duration:       60 * time.Second,
		Concurrency:    12,
		P99Target:      250 * time.Millisecond,
		Settle:         3 * time.Second,
		DrainTimeout:   60 * time.Second,
		CatchUpTimeout: 2 * time.Minute,
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
	case c.CatchUpTimeout < 0:
		return fmt.Errorf("-catchup-timeout: %s, want ≥ 0", c.CatchUpTimeout)
	case c.DrainTimeout <= 0:
		return fmt.Errorf("-drain-timeout: %s, want > 0", c.DrainTimeout)
	}
	return nil
}

// report is the outcome of a run (the -json output).
type report struct {
	Rules           int     `json:"rules"`
	IntervalSec     float64 `json:"interval_seconds"`
	DurationSec     float64 `json:"duration_seconds"`
	FiresPerSec     float64 `json:"fires_per_second"`
	Concurrency     int     `json:"concurrency"`
	CPUs            int     `json:"cpus"`
	DataDir         string  `json:"data_dir,omitempty"`
	SetupSec        float64 `json:"setup_seconds"` // creating the rules
	CreatePerSec    float64 `json:"creates_per_second"`
	CreateLatency   dist    `json:"create_latency"`
	OwnedAfterSec   float64 `json:"owned_after_seconds"` // from the last create until rules_owned = rules
	BacklogAtOwned  int     `json:"outbox_backlog_at_owned"`
	CatchUpSec      float64 `json:"catch_up_seconds"` // until the backlog was under one second of fires
	CaughtUp        bool    `json:"caught_up"`
	WindowStart     string  `json:"window_start"`
	WindowEnd       string  `json:"window_end"`
	DrainSec        float64 `json:"drain_seconds"` // from window end until the outbox was empty
	Drained         bool    `json:"drained"`
	OutboxMax       int     `json:"outbox_depth_max"` // sampled once a second in the window
	DeadLetters     int     `json:"dead_letters"`
	EventsFetched   int     `json:"events_fetched"`
	EventsInWindow  int     `json:"events_in_window"` // stored events whose slot is in the window
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
	LatencyOK   bool            `json:"pass_latency"`
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
			p.stop(30 * time.Second)
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

	// Setup: create the rules.
	ids, lat, setup, err := createRules(ctx, cfg, cl, p)
	if err != nil {
		return nil, err
	}
	rep.SetupSec = setup.Seconds()
	rep.CreatePerSec = float64(cfg.Rules) / setup.Seconds()
	rep.CreateLatency = newDist(lat)
	cfg.logf("created %d rules in %s (%.0f/s); waiting for the node to own them", cfg.Rules, setup.Round(time.Millisecond), rep.CreatePerSec)

	created := time.Now()
	lastLog := time.Now()
	err = poll(ctx, 5*time.Minute, 200*time.Millisecond, p, func() (bool, error) {
		s, err := cl.status(ctx)
		if err != nil {
			return false, nil // the node may be busy; keep asking
		}
		if time.Since(lastLog) > 5*time.Second {
			cfg.logf("node owns %d/%d rules (known %d)", s.RulesOwned, cfg.Rules, s.RulesKnown)
			lastLog = time.Now()
		}
		return s.RulesOwned >= cfg.Rules, nil
	})
	if err != nil {
		return nil, fmt.Errorf("wait for rules_owned ≥ %d: %w", cfg.Rules, err)
	}
	rep.OwnedAfterSec = time.Since(created).Seconds()

	// Rules fired while the rest were being created, and the outbox may
	// hold a backlog: let delivery catch up (to under one second of fires)
	// so that the window measures the steady state.
	if s, err := cl.status(ctx); err == nil {
		rep.BacklogAtOwned = s.OutboxDepth
	}
	caughtUp := time.Now()
	lastLog = time.Now()
	err = poll(ctx, cfg.CatchUpTimeout, time.Second, p, func() (bool, error) {
		s, err := cl.status(ctx)
		if err != nil {
			return false, nil
		}
		if time.Since(lastLog) > 10*time.Second {
			cfg.logf("catching up: outbox %d", s.OutboxDepth)
			lastLog = time.Now()
		}
		return float64(s.OutboxDepth) <= rep.FiresPerSec, nil
	})
	rep.CatchUpSec, rep.CaughtUp = time.Since(caughtUp).Seconds(), err == nil
	if err != nil && !errors.Is(err, errTimeout) {
		return nil, err
	}
	if !rep.CaughtUp {
		cfg.logf("outbox backlog not delivered within %s; measuring anyway", cfg.CatchUpTimeout)
	}

	// Warm-up of one interval: every rule has had its first slot.
	w := window{Start: time.Now().Add(cfg.Interval), Interval: cfg.Interval}
	w.End = w.Start.Add(cfg.Duration)
	rep.WindowStart, rep.WindowEnd = w.Start.UTC().Format(time.RFC3339Nano), w.End.UTC().Format(time.RFC3339Nano)
	cfg.logf("all %d rules owned, outbox %d → caught up %v in %.0fs; warm-up %s, then measuring %s",
		cfg.Rules, rep.BacklogAtOwned, rep.CaughtUp, rep.CatchUpSec, cfg.Interval, cfg.Duration)
	if err := sleepUntil(ctx, w.Start, p); err != nil {
		return nil, err
	}

	// The window: sample the process and the node once a second.
	node0, _ := cl.scrape(ctx, p.nodeURL)
	api0, _ := cl.scrape(ctx, p.apiURL)
	var ps []procstat.Sample
	pid := p.cmd.Process.Pid
	if s, err := procstat.Read(pid); err == nil {
		ps = append(ps, s)
	}
	lastAt, lastScrape := time.Now(), node0
	tick := time.NewTicker(time.Second)
	for now := time.Now(); now.Before(w.End); now = time.Now() {
		select {
		case <-ctx.Done():
			tick.Stop()
			return nil, ctx.Err()
		case <-p.done:
			tick.Stop()
			return nil, p.exitErr("during the window")
		case <-tick.C:
		case <-time.After(time.Until(w.End)):
		}
		if s, err := procstat.Read(pid); err == nil {
			ps = append(ps, s)
		}
		if s, err := cl.status(ctx); err == nil {
			rep.OutboxMax = max(rep.OutboxMax, s.OutboxDepth)
		}
		if time.Since(lastAt) >= 10*time.Second || !time.Now().Before(w.End) {
			cur, _ := cl.scrape(ctx, p.nodeURL)
			tl := newTimelineTick(time.Since(w.Start), lastAt, lastScrape, cur)
			rep.Timeline = append(rep.Timeline, tl)
			cfg.logf("window %s: %s", tl.At, tl)
			lastAt, lastScrape = time.Now(), cur
		}
	}
	tick.Stop()
	rep.Process = procstat.Summarise(ps)

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
	rep.DrainSec = time.Since(w.End).Seconds()
	rep.Drained = err == nil
	if err != nil && !errors.Is(err, errTimeout) {
		return nil, err
	}
	if !rep.Drained {
		cfg.logf("outbox not empty %s after the window; analysing anyway", cfg.DrainTimeout)
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
	cfg.logf("fetching events")
	t0 := time.Now()
	evs, err := fetchEvents(ctx, cl, w.Start.Add(-2*time.Second))
	if err != nil {
		return nil, err
	}
	rep.FetchSec = time.Since(t0).Seconds()
	rep.EventsFetched = len(evs)
	for _, e := range evs {
		if inWindow(e.Payload.ScheduledAt, w) {
			rep.EventsInWindow++
		}
	}
	phases, err := phasesOfSilentRules(ctx, cl, ids, evs, 500)
	if err != nil {
		return nil, err
	}
	rep.analysis = analyze(ids, evs, w, phases)
	rep.ExactlyOnce = rep.Expected > 0 && rep.Missing == 0 && rep.Duplicates == 0 && rep.OffGrid == 0
	rep.LatencyOK = rep.Latency.N > 0 && rep.Latency.P99 <= ms(cfg.P99Target)
	rep.Pass = rep.ExactlyOnce && rep.LatencyOK

	if err := p.stop(30 * time.Second); err != nil {
		rep.Exit = err.Error()
	} else {
		rep.Exit = "exit status 0"
	}
	return rep, nil
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
// returns their ids, each create's latency and the time it all took.
func createRules(ctx context.Context, cfg config, cl *client, p *proc) ([]int64, []time.Duration, time.Duration, error) {
	ids := make([]int64, cfg.Rules)
	lat := make([]time.Duration, cfg.Rules)
	var next, done atomic.Int64
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
				id, err := cl.createRule(gctx, fmt.Sprintf("load.r%06d", i), int64(cfg.Interval/time.Second))
				if err != nil {
					return err
				}
				ids[i], lat[i] = id, time.Since(t)
				done.Add(1)
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
				d := done.Load()
				cfg.logf("created %d/%d rules (%.0f/s)", d, cfg.Rules, float64(d)/time.Since(start).Seconds())
			}
		}
	}()
	err := g.Wait()
	close(stop)
	if err != nil {
		select {
		case <-p.done:
			return nil, nil, 0, p.exitErr("while creating rules")
		default:
		}
		return nil, nil, 0, err
	}
	return ids, lat, time.Since(start), nil
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

// phasesOfSilentRules asks the API for one event of each rule (up to limit)
// that has no event in evs, so that its slots in the window are known.
func phasesOfSilentRules(ctx context.Context, cl *client, ids []int64, evs []event, limit int) (map[int64]time.Time, error) {
	seen := make(map[int64]bool, len(ids))
	for _, e := range evs {
		if id, ok := e.ruleID(); ok {
			seen[id] = true
		}
	}
	phases := map[int64]time.Time{}
	for _, id := range ids {
		if seen[id] || len(phases) >= limit {
			continue
		}
		pg, err := cl.events(ctx, url.Values{"trigger_instance_id": {fmt.Sprintf("rule_%d", id)}}, 1, 1)
		if err != nil {
			return nil, fmt.Errorf("list events of rule %d: %w", id, err)
		}
		if len(pg.Items) > 0 {
			phases[id] = pg.Items[0].Payload.ScheduledAt
		}
	}
	return phases, nil
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
		p.stop(5 * time.Second)
		return nil, fmt.Errorf("timerd dev printed no API and node URLs within 60s:\n%s", p.output())
	case <-ctx.Done():
		p.stop(5 * time.Second)
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
	return fmt.Errorf("timerd dev exited %s: %v; last output:\n%s", when, p.waitErr, p.output())
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
