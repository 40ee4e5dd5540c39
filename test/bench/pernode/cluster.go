package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/timerd/timerd/auth"
	"github.com/timerd/timerd/cluster"
	"github.com/timerd/timerd/scheduler"
	"github.com/timerd/timerd/test/internal/benchkit"
	"github.com/timerd/timerd/test/internal/procstat"
)

// node is one running `timerd agent` of a measured cluster.
type node struct {
	name, dir, base string // base: http://host:port of its HTTP endpoints
	cmd             *exec.Cmd
	logs            *benchkit.TailBuffer
	exited          chan error
}

// sensorToken is a token the stub takes (it checks none).
func sensorToken() (string, error) {
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	tok, _, err := (&auth.Issuer{Key: key}).Issue(auth.IssueRequest{Subject: "bench", IdentityID: "bench",
		Scope: auth.ScopeSensor, TriggerTypes: scheduler.TimerTriggers(), TTL: 24 * time.Hour, Login: "core.timer"})
	return tok, err
}

// agentEnv is node i's environment in a cluster of n joining seed.
func agentEnv(i, n int, dir, httpAddr, gossipAddr, seed, apiURL, tok, key string) []string {
	env := append(os.Environ(),
		"ATTUNE_API_URL="+apiURL, "ATTUNE_API_TOKEN="+tok, "TIMERD_DATA_DIR="+dir,
		"TIMERD_HTTP_ADDR="+httpAddr, "TIMERD_BIND_ADDR="+gossipAddr, fmt.Sprintf("TIMERD_NODE_NAME=node-%02d", i),
		fmt.Sprintf("TIMERD_EXPECT=%d", n), "TIMERD_GOSSIP_KEY="+key,
		"TIMERD_RECONCILE_INTERVAL=1h", "ATTUNE_LOG_LEVEL=warn")
	if seed != "" {
		env = append(env, "TIMERD_JOIN="+seed)
	}
	return env
}

// startCluster starts n agents of bin, node 0 the seed the others join.
func startCluster(ctx context.Context, bin, tmp string, n int, apiURL, tok string) ([]*node, error) {
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	gossipKey := base64.StdEncoding.EncodeToString(key)
	seed, err := benchkit.FreePort()
	if err != nil {
		return nil, err
	}
	var nodes []*node
	for i := range n {
		httpAddr, err := benchkit.FreePort()
		if err != nil {
			return nodes, err
		}
		gossip, join := "127.0.0.1:0", seed
		if i == 0 {
			gossip, join = seed, ""
		}
		nd := &node{name: fmt.Sprintf("node-%02d", i), dir: filepath.Join(tmp, fmt.Sprintf("n%d-%02d", n, i)),
			base: "http://" + httpAddr, logs: &benchkit.TailBuffer{}, exited: make(chan error, 1)}
		if err := os.MkdirAll(nd.dir, 0o700); err != nil {
			return nodes, err
		}
		nd.cmd = exec.CommandContext(ctx, bin, "agent")
		nd.cmd.Env = agentEnv(i, n, nd.dir, httpAddr, gossip, join, apiURL, tok, gossipKey)
		nd.cmd.Stdout, nd.cmd.Stderr = nd.logs, nd.logs
		if err := nd.cmd.Start(); err != nil {
			return nodes, err
		}
		go func() { nd.exited <- nd.cmd.Wait() }()
		nodes = append(nodes, nd)
	}
	return nodes, nil
}

// stopCluster kills the agents (their stores go with the run: nothing to hand over).
func stopCluster(nodes []*node) {
	for _, nd := range nodes {
		_ = nd.cmd.Process.Signal(syscall.SIGKILL)
	}
	for _, nd := range nodes {
		_ = nd.wait() // killed: its status tells nothing
	}
}

// wait waits for the agent to exit and returns its status.
func (nd *node) wait() error { return <-nd.exited }

// waitFormed waits until every node sees n live members and the partitions the nodes
// hold add up to the ring's, each held once: the cluster fires everything. A node
// need not be ready (/readyz also wants a lease renewed on time, which a machine
// loaded by other work may deny now and then); how many are is returned.
func waitFormed(ctx context.Context, nodes []*node, within time.Duration) (readyNodes int, err error) {
	deadline := time.Now().Add(within)
	for {
		alive, held := 0, 0.0
		readyNodes = 0
		for _, nd := range nodes {
			select {
			case err := <-nd.exited:
				nd.exited <- err
				return 0, fmt.Errorf("%s exited (%w):\n%s", nd.name, err, nd.logs.String())
			default:
			}
			m, err := scrape(nd.base)
			if err != nil {
				continue
			}
			if m.get(`timerd_cluster_members{state="alive"}`) == float64(len(nodes)) {
				alive++
			}
			held += m.get("timerd_partitions_held")
			if m.get("timerd_ready") == 1 {
				readyNodes++
			}
		}
		if alive == len(nodes) && held == cluster.DefaultPartitions {
			return readyNodes, nil
		}
		if time.Now().After(deadline) {
			return readyNodes, fmt.Errorf("after %s: %d of %d nodes see them all, %v of %d partitions held, %d ready; a node's log:\n%s",
				within, alive, len(nodes), held, cluster.DefaultPartitions, readyNodes, nodes[len(nodes)-1].logs.String())
		}
		if err := sleep(ctx, 500*time.Millisecond); err != nil {
			return readyNodes, err
		}
	}
}

// sample is one node's counters at one moment.
type sample struct {
	at       time.Time
	cpu      time.Duration
	rss      int64
	sent     float64 // timerd_cluster_network_bytes_total, -1 if the build has none
	received float64
	messages float64 // timerd_cluster_protocol_messages_sent_total
}

func sampleNode(nd *node) (sample, error) {
	st, err := procstat.Read(nd.cmd.Process.Pid)
	if err != nil {
		return sample{}, err
	}
	m, err := scrape(nd.base)
	if err != nil {
		return sample{}, err
	}
	s := sample{at: st.At, cpu: st.CPU, rss: st.RSS, sent: -1, received: -1,
		messages: m.sum("timerd_cluster_protocol_messages_sent_total")}
	if m.has("timerd_cluster_network_bytes_total") {
		s.sent = m.sum(`timerd_cluster_network_bytes_total{direction="sent"`)
		s.received = m.sum(`timerd_cluster_network_bytes_total{direction="received"`)
	}
	return s, nil
}

// metrics is a /metrics page: each sample line's series (name{labels}) and value.
type metrics map[string]float64

func scrape(base string) (metrics, error) {
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s/metrics: %s", base, resp.Status)
	}
	m, err := benchkit.ParseMetrics(resp.Body)
	return metrics(m), err
}

// get is the value of one series, written as in the page.
func (m metrics) get(series string) float64 { return m[series] }

// sum adds the series of a metric name, or those that start with a name and its first
// labels (`name{label="value"`).
func (m metrics) sum(prefix string) float64 {
	labelled := strings.Contains(prefix, "{")
	total := 0.0
	for k, v := range m {
		if labelled && strings.HasPrefix(k, prefix) || !labelled && (k == prefix || strings.HasPrefix(k, prefix+"{")) {
			total += v
		}
	}
	return total
}

func (m metrics) has(name string) bool {
	for k := range m {
		if k == name || strings.HasPrefix(k, name+"{") {
			return true
		}
	}
	return false
}

// dirBytes is the bytes of the files under dir.
func dirBytes(dir string) int64 {
	var n int64
	_ = filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			if info, err := d.Info(); err == nil {
				n += info.Size()
			}
		}
		return nil
	})
	return n
}
