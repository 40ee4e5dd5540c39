package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/timerd/timerd/test/internal/benchkit"
	"github.com/timerd/timerd/test/internal/procstat"
)

// node is one agent of the run: its name, data directory and current process.
type node struct {
	name    string
	dir     string
	p       *proc
	url     string // HTTP of the current process
	gossip  string // gossip host:port of the current process
	started time.Time
	starts  int
}

// scluster is the run's processes: one timerd api and the agents.
type scluster struct {
	cfg       config
	dir       string
	bin       string
	api       *proc
	apiURL    string
	admin     string // token
	sensor    string // token
	gossipKey string
	mu        sync.Mutex
	nodes     map[string]*node
	peak      map[int]int64 // highest RSS seen of each pid (the sampler)
}

var (
	apiURLRe    = regexp.MustCompile(`"url":"(http://127\.0\.0\.1:\d+)"`)
	agentHTTPRe = regexp.MustCompile(`"http":"(http://127\.0\.0\.1:\d+)"`)
)

func newCluster(cfg config, dir, bin string) (*scluster, error) {
	key := filepath.Join(dir, "signing.key")
	if _, err := runOut(bin, "token", "keygen", "--out", key); err != nil {
		return nil, err
	}
	admin, err := runOut(bin, "token", "issue", "--key-file", key, "--scope", "admin", "--sub", "scale-admin", "--ttl", "24h")
	if err != nil {
		return nil, err
	}
	sensor, err := runOut(bin, "token", "issue", "--key-file", key, "--scope", "sensor", "--sub", "scale-node", "--login", "core.timer",
		"--trigger-types", "core.intervaltimer,core.crontimer,core.datetimetimer,core.timer", "--ttl", "24h")
	if err != nil {
		return nil, err
	}
	gk := make([]byte, 32)
	if _, err := rand.Read(gk); err != nil {
		return nil, err
	}
	return &scluster{cfg: cfg, dir: dir, bin: bin, admin: admin, sensor: sensor,
		gossipKey: base64.StdEncoding.EncodeToString(gk), nodes: map[string]*node{}, peak: map[int]int64{}}, nil
}

// startAPI starts timerd api loading rulesFile and waits until it listens.
func (c *scluster) startAPI(rulesFile string, within time.Duration) error {
	p, err := startProc("api", c.bin, filepath.Join(c.dir, "api.log"), benchkit.CleanEnv(), "api", "--addr", "127.0.0.1:0",
		"--data-dir", filepath.Join(c.dir, "api"), "--key-file", filepath.Join(c.dir, "signing.key"),
		"--load-rules", rulesFile, "--log-format", "json")
	if err != nil {
		return err
	}
	c.api = p
	m, err := p.waitLog(apiURLRe, within)
	if err != nil {
		return err
	}
	c.apiURL = m[1]
	return nil
}

// launch starts agent name (a new node, or a stopped one again on its data)
// joining join, and waits until it serves /v1/status with its gossip address.
func (c *scluster) launch(ctx context.Context, name string, join []string) (*node, error) {
	c.mu.Lock()
	n, ok := c.nodes[name]
	if !ok {
		n = &node{name: name, dir: filepath.Join(c.dir, name)}
		c.nodes[name] = n
	}
	c.mu.Unlock()
	env := append(benchkit.CleanEnv(),
		"ATTUNE_API_URL="+c.apiURL,
		"ATTUNE_API_TOKEN="+c.sensor,
		"TIMERD_DATA_DIR="+n.dir,
		"TIMERD_HTTP_ADDR=127.0.0.1:0",
		"TIMERD_BIND_ADDR=127.0.0.1:0",
		"TIMERD_NODE_NAME="+name,
		"TIMERD_GOSSIP_KEY="+c.gossipKey,
		"TIMERD_LOG_FORMAT=json",
		"TIMERD_PPROF=true", // the run profiles the joining node's start-up
		// No RabbitMQ: rules come from the rules API only, at the start-up
		// reconcile; the periodic one is pushed out of the run's way.
		"TIMERD_RECONCILE_INTERVAL="+c.cfg.ReconcileInterval.String(),
	)
	if len(join) > 0 {
		env = append(env, "TIMERD_JOIN="+strings.Join(join, ","))
	}
	if c.cfg.Replicas != "" {
		env = append(env, "TIMERD_REPLICAS="+c.cfg.Replicas)
	}
	n.starts++
	p, err := startProc(name, c.bin, filepath.Join(c.dir, fmt.Sprintf("%s.%d.log", name, n.starts)), env, "agent")
	if err != nil {
		return nil, err
	}
	n.p, n.started = p, time.Now()
	m, err := p.waitLog(agentHTTPRe, 2*time.Minute)
	if err != nil {
		return nil, err
	}
	n.url = m[1]
	deadline := time.Now().Add(2 * time.Minute)
	for {
		var st status
		if err := getJSON(ctx, n.url+"/v1/status", "", &st); err == nil {
			if me, ok := st.self(); ok && me.Addr != "" {
				n.gossip = me.Addr
				return n, nil
			}
		}
		if p.exited() || time.Now().After(deadline) {
			return nil, fmt.Errorf("%s: no gossip address in /v1/status (exited %v); see %s", name, p.exited(), p.logPath)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// running is the nodes with a live process, by name.
func (c *scluster) running() []*node {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*node
	for _, n := range c.nodes {
		if n.p != nil && !n.p.exited() {
			out = append(out, n)
		}
	}
	slices.SortFunc(out, func(a, b *node) int { return compareNames(a.name, b.name) })
	return out
}

// compareNames orders n2 before n10.
func compareNames(a, b string) int {
	ai, _ := strconv.Atoi(strings.TrimPrefix(a, "n"))
	bi, _ := strconv.Atoi(strings.TrimPrefix(b, "n"))
	return ai - bi
}

func (c *scluster) gossipAddrs(except string) []string {
	var out []string
	for _, n := range c.running() {
		if n.name != except {
			out = append(out, n.gossip)
		}
	}
	return out
}

// shutdown stops every process (agents first).
func (c *scluster) shutdown() {
	var wg sync.WaitGroup
	for _, n := range c.running() {
		wg.Go(func() { _ = n.p.stop(30 * time.Second) })
	}
	wg.Wait()
	if c.api != nil {
		_ = c.api.stop(30 * time.Second)
	}
}

// member is one entry of /v1/status members.
type member struct {
	Name       string `json:"name"`
	Addr       string `json:"addr"`
	State      string `json:"state"`
	Self       bool   `json:"self"`
	RulesOwned int    `json:"rules_owned"`
}

// status is the part of /v1/status the run reads.
type status struct {
	Node        string   `json:"node"`
	Ready       bool     `json:"ready"`
	RulesKnown  int      `json:"rules_known"`
	RulesOwned  int      `json:"rules_owned"`
	OutboxDepth int      `json:"outbox_depth"`
	Members     []member `json:"members"`
}

func (s status) self() (member, bool) {
	for _, m := range s.Members {
		if m.Self {
			return m, true
		}
	}
	return member{}, false
}

func (s status) alive() []string {
	var out []string
	for _, m := range s.Members {
		if m.State == "alive" {
			out = append(out, m.Name)
		}
	}
	slices.SortFunc(out, compareNames)
	return out
}

// waitStable waits until every running node is ready, sees exactly the running
// nodes alive, and (want not nil) runs want[name] rules; it returns the
// statuses by name.
func (c *scluster) waitStable(ctx context.Context, within time.Duration, want map[string]int) (map[string]status, error) {
	deadline := time.Now().Add(within)
	var why string
	for {
		nodes := c.running()
		var names []string
		for _, n := range nodes {
			names = append(names, n.name)
		}
		out := map[string]status{}
		why = ""
		for _, n := range nodes {
			var st status
			err := getJSON(ctx, n.url+"/v1/status", "", &st)
			me, _ := st.self()
			switch {
			case err != nil:
				why = fmt.Sprintf("%s: %v", n.name, err)
			case !st.Ready:
				why = n.name + " not ready"
			case !slices.Equal(st.alive(), names):
				why = fmt.Sprintf("%s sees alive %v, want %v", n.name, st.alive(), names)
			case want != nil && (me.RulesOwned != want[n.name] || st.RulesOwned != want[n.name]):
				why = fmt.Sprintf("%s owns %d rules in its view and runs %d, want %d", n.name, me.RulesOwned, st.RulesOwned, want[n.name])
			}
			if why != "" {
				break
			}
			out[n.name] = st
		}
		if why == "" {
			return out, nil
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("cluster not stable within %s: %s", within, why)
		}
		time.Sleep(time.Second)
	}
}

// sample reads every live process once and keeps the highest RSS of each.
func (c *scluster) sample() {
	pids := []int{}
	if c.api != nil && !c.api.exited() {
		pids = append(pids, c.api.pid())
	}
	for _, n := range c.running() {
		pids = append(pids, n.p.pid())
	}
	for _, pid := range pids {
		if s, err := procstat.Read(pid); err == nil {
			c.mu.Lock()
			c.peak[pid] = max(c.peak[pid], s.RSS)
			c.mu.Unlock()
		}
	}
}

func (c *scluster) peakRSS(p *proc) int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.peak[p.pid()]
}

// cpuOf is the CPU time p used so far (0 once it exited).
func cpuOf(p *proc) time.Duration {
	s, err := procstat.Read(p.pid())
	if err != nil {
		return 0
	}
	return s.CPU
}

// rssSummary is the current RSS of each live process, for a report.
func (c *scluster) rssSummary() string {
	var parts []string
	procs := []*proc{}
	if c.api != nil && !c.api.exited() {
		procs = append(procs, c.api)
	}
	for _, n := range c.running() {
		procs = append(procs, n.p)
	}
	for _, p := range procs {
		if st, err := procstat.Read(p.pid()); err == nil {
			parts = append(parts, fmt.Sprintf("%s %.0f MiB", p.name, procstat.MiB(st.RSS)))
		}
	}
	return "RSS " + strings.Join(parts, ", ")
}
