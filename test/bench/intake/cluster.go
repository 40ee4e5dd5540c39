package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/timerd/timerd/test/internal/benchkit"
	"github.com/timerd/timerd/test/internal/procstat"
)

// runSpec is one run: the timerd binary and what it runs against.
type runSpec struct {
	build, bin string
	agents     int
	bare       bool
	dir        string
}

// measure starts the API and the agents (or bare queues) of run, creates
// the rules and waits until every agent has applied them.
func measure(ctx context.Context, cfg config, run runSpec) (result, error) {
	res := result{Build: run.build, Agents: run.agents, Bare: run.bare, Rules: cfg.Rules}
	if err := os.MkdirAll(run.dir, 0o700); err != nil {
		return res, err
	}
	admin, sensor, keyFile, err := tokens(ctx, run.bin, run.dir)
	if err != nil {
		return res, err
	}
	suffix := randomHex(4)
	exchange := "timerd-bench-intake." + suffix
	mqURL := ""
	if run.agents > 0 {
		mqURL = cfg.MQ
		var queues []string
		for i := range run.agents {
			queues = append(queues, "sensor.core.timer."+agentName(suffix, i))
		}
		defer cleanupBroker(cfg.MQ, exchange, queues)
	}
	api, err := startAPI(ctx, run.bin, filepath.Join(run.dir, "api"), keyFile, mqURL, exchange)
	if err != nil {
		return res, err
	}
	defer api.stop()

	var agents []*proc
	switch {
	case run.agents > 0 && run.bare:
		stopBare, err := startBareQueues(cfg.MQ, exchange, run.agents)
		if err != nil {
			return res, err
		}
		defer stopBare()
	case run.agents > 0:
		agents, err = startAgents(ctx, run, api.base, sensor, cfg.MQ, exchange, suffix)
		for _, ag := range agents {
			defer ag.stop()
		}
		if err != nil {
			return res, err
		}
	}
	broker := brokerPID()
	// The agents' CPU at rest (gossip, timers), to tell it from the intake's.
	idleFrom := cpuOf(api, agents, broker)
	if len(agents) > 0 && !sleepCtx(ctx, idleWindow) {
		return res, ctx.Err()
	}
	before := cpuOf(api, agents, broker)
	res.AgentsIdle = before.agents - idleFrom.agents

	profiled := startProfiles(cfg.Profile, run, agents)
	start := time.Now()
	lat, errs := createRules(ctx, api.base, admin, cfg.Rules, cfg.Concurrency)
	res.ClientTook = time.Since(start)
	res.Errors, res.Latency = errs, newDist(lat)
	if res.Errors == res.Rules {
		return res, fmt.Errorf("every create failed:\n%s", api.logs.String())
	}
	if len(agents) > 0 {
		if err := waitApplied(ctx, agents, cfg.Rules-res.Errors, cfg.ApplyWithin); err != nil {
			return res, err
		}
		res.AppliedTook = time.Since(start)
	}
	after := cpuOf(api, agents, broker)
	res.Load = loadAverage()
	if err := profiled(); err != nil {
		return res, err
	}
	res.APICPU = after.api - before.api
	res.AgentsCPU = after.agents - before.agents
	if broker != 0 {
		res.BrokerCPU = after.broker - before.broker
	}
	if m, err := scrape(api.base+"/metrics", admin); err == nil {
		res.PublishErrors = m.sum("timerd_api_publish_errors_total")
	}
	for _, ag := range agents {
		m, err := scrape(ag.base+"/metrics", "")
		if err != nil {
			return res, err
		}
		res.IntakeMessages += m.sum("timerd_lifecycle_messages_total")
		res.IntakeCommits += m.sum("timerd_store_commit_seconds_count")
	}
	return res, ctx.Err()
}

// startProfiles starts a 5-second CPU profile of the first agent
// into dir (none when dir is ""); the func returned waits for them.
func startProfiles(dir string, run runSpec, agents []*proc) func() error {
	if dir == "" {
		return func() error { return nil }
	}
	name := strings.ReplaceAll(fmt.Sprintf("%s-%d-%v", run.build, run.agents, run.bare), " ", "-")
	targets := map[string]*proc{}
	if len(agents) > 0 {
		targets[name+"-agent.pprof"] = agents[0]
	}
	errs := make(chan error, len(targets))
	for file, p := range targets {
		go func() { errs <- save(p.base+"/debug/pprof/profile?seconds=5", filepath.Join(dir, file)) }()
	}
	return func() error {
		var first error
		for range targets {
			if err := <-errs; err != nil && first == nil {
				first = err
			}
		}
		return first
	}
}

// save writes what GET u answers to path.
func save(u, path string) error {
	resp, err := http.Get(u)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: status %d", u, resp.StatusCode)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.Copy(f, resp.Body)
	return err
}

// idleWindow is how long the agents' CPU at rest is measured before the creates.
const idleWindow = 3 * time.Second

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// tokens makes a signing key and an admin and a sensor token with bin.
func tokens(ctx context.Context, bin, dir string) (admin, sensor, keyFile string, err error) {
	keyFile = filepath.Join(dir, "signing.key")
	run := func(args ...string) (string, error) {
		out, err := exec.CommandContext(ctx, bin, args...).Output()
		if err != nil {
			return "", fmt.Errorf("timerd %s: %w", strings.Join(args[:2], " "), err)
		}
		return strings.TrimSpace(string(out)), nil
	}
	if _, err = run("token", "keygen", "--out", keyFile); err != nil {
		return
	}
	if admin, err = run("token", "issue", "--key-file", keyFile, "--scope", "admin", "--sub", "bench-admin", "--ttl", "2h"); err != nil {
		return
	}
	sensor, err = run("token", "issue", "--key-file", keyFile, "--scope", "sensor", "--sub", "bench-node", "--login", "core.timer",
		"--trigger-types", "core.intervaltimer,core.crontimer,core.datetimetimer,core.timer", "--ttl", "2h")
	return
}

// proc is a running timerd process.
type proc struct {
	cmd    *exec.Cmd
	base   string // http://host:port
	gossip string // host:port of an agent's gossip
	logs   *benchkit.TailBuffer
	exited chan error
}

func startProc(ctx context.Context, bin string, env []string, base string, args ...string) (*proc, error) {
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = env
	p := &proc{cmd: cmd, base: base, logs: &benchkit.TailBuffer{}, exited: make(chan error, 1)}
	cmd.Stdout, cmd.Stderr = p.logs, p.logs
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	go func() { p.exited <- cmd.Wait() }()
	return p, nil
}

// waitHTTP waits until GET base+path answers 200.
func (p *proc) waitHTTP(path string, within time.Duration) error {
	deadline := time.Now().Add(within)
	for {
		if resp, err := http.Get(p.base + path); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case err := <-p.exited:
			p.exited <- err
			return fmt.Errorf("exited (%w):\n%s", err, p.logs.String())
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s%s not 200 within %v:\n%s", p.base, path, within, p.logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop sends SIGTERM and waits for the exit. Stopping twice is a no-op.
func (p *proc) stop() {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	err := <-p.exited
	p.exited <- err
}

func startAPI(ctx context.Context, bin, dataDir, keyFile, mqURL, exchange string) (*proc, error) {
	addr, err := benchkit.FreePort()
	if err != nil {
		return nil, err
	}
	args := []string{"api", "--addr", addr, "--data-dir", dataDir, "--key-file", keyFile}
	if mqURL != "" {
		args = append(args, "--mq-url", mqURL, "--mq-exchange", exchange)
	}
	p, err := startProc(ctx, bin, benchkit.CleanEnv(), "http://"+addr, args...)
	if err != nil {
		return nil, err
	}
	if err := p.waitHTTP("/health", 30*time.Second); err != nil {
		p.stop()
		return nil, fmt.Errorf("timerd api: %w", err)
	}
	return p, nil
}

// startAgents starts n agents of one cluster (the first alone, the others
// joining it) and waits until every one is ready.
func startAgents(ctx context.Context, run runSpec, apiURL, token, mqURL, exchange, suffix string) ([]*proc, error) {
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	gossipKey := base64.StdEncoding.EncodeToString(key)
	var agents []*proc
	for i := range run.agents {
		httpAddr, err := benchkit.FreePort()
		if err != nil {
			return agents, err
		}
		bind, err := benchkit.FreePort()
		if err != nil {
			return agents, err
		}
		dir := filepath.Join(run.dir, fmt.Sprintf("agent-%d", i))
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return agents, err
		}
		env := append(benchkit.CleanEnv(),
			"ATTUNE_API_URL="+apiURL, "ATTUNE_API_TOKEN="+token,
			"ATTUNE_MQ_URL="+mqURL, "ATTUNE_MQ_EXCHANGE="+exchange,
			"TIMERD_DATA_DIR="+dir, "TIMERD_HTTP_ADDR="+httpAddr, "TIMERD_BIND_ADDR="+bind,
			"TIMERD_NODE_NAME="+agentName(suffix, i),
			"TIMERD_GOSSIP_KEY="+gossipKey,
			"TIMERD_QUEUE_EXPIRES=10m", // what an interrupted run leaves goes away
			"TIMERD_RECONCILE_INTERVAL=1h", "ATTUNE_LOG_LEVEL=warn", "TIMERD_PPROF=true")
		if i > 0 {
			env = append(env, "TIMERD_JOIN="+agents[0].gossip)
		}
		p, err := startProc(ctx, run.bin, env, "http://"+httpAddr, "agent")
		if err != nil {
			return agents, err
		}
		p.gossip = bind
		agents = append(agents, p)
	}
	for i, p := range agents {
		if err := p.waitHTTP("/readyz", 2*time.Minute); err != nil {
			return agents, fmt.Errorf("agent %d: %w", i, err)
		}
	}
	return agents, nil
}

func agentName(suffix string, i int) string { return fmt.Sprintf("bench-%s-%d", suffix, i) }

// startBareQueues declares n durable queues bound to the exchange as the
// agents' are and drains them with auto-ack: the broker's side of n nodes
// without their intake.
func startBareQueues(mqURL, exchange string, n int) (stop func(), err error) {
	conn, err := amqp.Dial(mqURL)
	if err != nil {
		return nil, fmt.Errorf("rabbitmq: %w", err)
	}
	stop = func() { _ = conn.Close() }
	ch, err := conn.Channel()
	if err == nil {
		err = ch.ExchangeDeclare(exchange, "topic", true, false, false, false, nil)
	}
	for i := 0; err == nil && i < n; i++ {
		var c *amqp.Channel
		if c, err = conn.Channel(); err != nil {
			break
		}
		q := fmt.Sprintf("sensor.core.timer.%s.bare-%d", exchange, i)
		if _, err = c.QueueDeclare(q, true, true, false, false, nil); err != nil {
			break
		}
		if err = c.QueueBind(q, "rule.*", exchange, false, nil); err != nil {
			break
		}
		var ds <-chan amqp.Delivery
		if ds, err = c.Consume(q, "", true, false, false, false, nil); err != nil {
			break
		}
		go func() {
			for range ds {
			}
		}()
	}
	if err != nil {
		stop()
		return nil, fmt.Errorf("bare queues: %w", err)
	}
	return stop, nil
}

// cleanupBroker deletes the run's exchange and the agents' queues bound to
// it (x-expires would, 10 minutes later).
func cleanupBroker(mqURL, exchange string, queues []string) {
	conn, err := amqp.Dial(mqURL)
	if err != nil {
		return
	}
	defer conn.Close()
	for _, q := range append(queues, "") {
		// A failed delete closes the channel: one channel each.
		ch, err := conn.Channel()
		if err != nil {
			return
		}
		if q == "" {
			_ = ch.ExchangeDelete(exchange, false, false)
		} else {
			_, _ = ch.QueueDelete(q, false, false, false)
		}
		_ = ch.Close()
	}
}

// createRules creates n interval rules of 1 h (nothing fires during the
// run), concurrency at a time, and returns each create's latency and the
// number that failed.
func createRules(ctx context.Context, base, token string, n, concurrency int) ([]time.Duration, int) {
	lat := make([]time.Duration, n)
	work := make(chan int)
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		failed int
		first  error
	)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: concurrency}, Timeout: time.Minute}
	prefix := randomHex(4)
	for range concurrency {
		wg.Go(func() {
			for i := range work {
				body := fmt.Sprintf(`{"ref":"bench.%s.%d","trigger_ref":"core.intervaltimer","trigger_params":{"interval":1,"unit":"hours"},"enabled":true}`, prefix, i)
				t0 := time.Now()
				err := post(ctx, client, base+"/api/v1/rules", token, body)
				lat[i] = time.Since(t0)
				if err != nil {
					mu.Lock()
					failed++
					if first == nil {
						first = err
					}
					mu.Unlock()
				}
			}
		})
	}
	for i := range n {
		select {
		case work <- i:
		case <-ctx.Done():
		}
	}
	close(work)
	wg.Wait()
	if first != nil {
		benchkit.Progress("%d creates failed; the first: %v", failed, first)
	}
	return lat, failed
}

func post(ctx context.Context, client *http.Client, url, token, body string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusCreated {
		return fmt.Errorf("status %d: %s", resp.StatusCode, strings.TrimSpace(string(raw)))
	}
	return nil
}

// waitApplied waits until every agent's store holds want rules.
func waitApplied(ctx context.Context, agents []*proc, want int, within time.Duration) error {
	deadline := time.Now().Add(within)
	for {
		done := true
		var known []int
		for _, ag := range agents {
			n, err := rulesKnown(ag.base)
			known = append(known, n)
			if err != nil || n < want {
				done = false
			}
		}
		if done {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("after %v the agents know %v of %d rules", within, known, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func rulesKnown(base string) (int, error) {
	resp, err := http.Get(base + "/v1/status")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var st struct {
		RulesKnown int `json:"rules_known"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return 0, err
	}
	return st.RulesKnown, nil
}

type cpuSnapshot struct{ api, agents, broker time.Duration }

func cpuOf(api *proc, agents []*proc, broker int) cpuSnapshot {
	var s cpuSnapshot
	if v, err := procstat.Read(api.cmd.Process.Pid); err == nil {
		s.api = v.CPU
	}
	for _, ag := range agents {
		if v, err := procstat.Read(ag.cmd.Process.Pid); err == nil {
			s.agents += v.CPU
		}
	}
	if broker != 0 {
		if v, err := procstat.Read(broker); err == nil {
			s.broker = v.CPU
		}
	}
	return s
}

// brokerPID is the pid of the local RabbitMQ (its Erlang VM, beam.smp), or 0.
func brokerPID() int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return 0
	}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		comm, err := os.ReadFile(filepath.Join("/proc", e.Name(), "comm"))
		if err == nil && strings.TrimSpace(string(comm)) == "beam.smp" {
			return pid
		}
	}
	return 0
}

// loadAverage is the 1-minute load average, or 0 when /proc does not say.
func loadAverage() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}

// metrics is a Prometheus text exposition: value by sample line name{labels}.
type metrics map[string]float64

func scrape(url, token string) (metrics, error) {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: status %d", url, resp.StatusCode)
	}
	m, err := benchkit.ParseMetrics(resp.Body)
	return metrics(m), err
}

// sum adds the samples of name, whatever their labels.
func (m metrics) sum(name string) float64 {
	var s float64
	for k, v := range m {
		if k == name || strings.HasPrefix(k, name+"{") {
			s += v
		}
	}
	return s
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// dist is a distribution of durations, in milliseconds.
type dist struct {
	N             int
	P50, P99, Max float64
}

func newDist(ds []time.Duration) dist {
	if len(ds) == 0 {
		return dist{}
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	q := func(p float64) float64 { return ms(s[min(len(s)-1, int(p*float64(len(s))))]) }
	return dist{N: len(s), P50: q(0.5), P99: q(0.99), Max: ms(s[len(s)-1])}
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
