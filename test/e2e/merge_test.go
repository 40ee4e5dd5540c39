package e2e

import (
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/timerd/timerd/test/testkit"
)

// quorumOf is the quorum part of a node's /v1/status.
type quorumOf struct {
	Quorum          bool `json:"quorum"`
	ExpectedMembers int  `json:"expected_members"`
	SeenMembers     int  `json:"seen_members"`
	QuorumSize      int  `json:"quorum_size"`
}

func getQuorum(nodeURL string) (quorumOf, error) { return nodeStatus[quorumOf](nodeURL) }

// sharedPort holds one port open on TCP and UDP on every one of hosts (loopback addresses), so
// that nothing else takes it until release. A static join list, like a StatefulSet's, needs
// every node's gossip address before any node starts: the nodes cannot bind port 0 and be read
// back, as the other cluster tests do. Each node gets its own loopback address (127.0.0.0/8 is
// all loopback on Linux) and the one port.
func sharedPort(t *testing.T, hosts ...string) (port int, release func()) {
	t.Helper()
	for range 20 {
		first, err := net.Listen("tcp", net.JoinHostPort(hosts[0], "0"))
		if err != nil {
			t.Fatalf("listen on %s: %v", hosts[0], err)
		}
		port = first.Addr().(*net.TCPAddr).Port
		closers := []func() error{first.Close}
		ok := true
		for i, h := range hosts {
			addr := net.JoinHostPort(h, fmt.Sprint(port))
			if i > 0 {
				l, err := net.Listen("tcp", addr)
				if err != nil {
					ok = false
					break
				}
				closers = append(closers, l.Close)
			}
			pc, err := net.ListenPacket("udp", addr)
			if err != nil {
				ok = false
				break
			}
			closers = append(closers, pc.Close)
		}
		release = func() {
			for _, c := range closers {
				_ = c()
			}
		}
		if ok {
			return port, release
		}
		release() // taken on one of the addresses: another port
	}
	t.Fatalf("no port free on TCP and UDP on all of %v in 20 tries", hosts)
	return 0, nil
}

// startTogether starts a node for each of shorts at once, node i with env[i] added to the
// cluster's, and waits until each serves HTTP. They are the cluster's running nodes then.
func (c *tcluster) startTogether(shorts []string, env [][]string) {
	c.t.Helper()
	procs := make([]*proc, len(shorts))
	for i, short := range shorts {
		n := c.node(short)
		cmd := exec.Command(timerdBin, "agent")
		cmd.Env = append(append(c.api.agentEnv(c.b, n.name, n.dir), c.extra...), env[i]...)
		n.started = time.Now()
		procs[i] = startCmd(c.t, cmd)
	}
	for i, short := range shorts {
		ag := &agent{proc: procs[i]}
		ag.nodeURL = procs[i].waitOutput(agentHTTPRe, 60*time.Second)[1]
		c.mu.Lock()
		c.nodes[short].ag = ag
		c.mu.Unlock()
	}
}

// Three nodes started at once, each with the same static join list of all three (itself
// included, as a StatefulSet's pods have) and TIMERD_EXPECT=3, form one cluster of three, and
// every interval slot is stored once.
func TestMergeStartedTogether(t *testing.T) {
	n := clusterInt(t, "TIMERD_CLUSTER_RULES", 300)
	const every = 2 * time.Second
	hosts := []string{"127.0.0.1", "127.0.0.2", "127.0.0.3"}
	shorts := []string{"n1", "n2", "n3"}
	c := newTCluster(t)
	ids := c.createRules("merge", "core.intervaltimer", n, func(int) map[string]any {
		return map[string]any{"interval": int(every / time.Second)}
	})

	port, release := sharedPort(t, hosts...)
	env := make([][]string, len(hosts))
	for i, h := range hosts {
		c.node(shorts[i]).gossip = net.JoinHostPort(h, fmt.Sprint(port))
		env[i] = []string{
			"TIMERD_BIND_ADDR=" + c.node(shorts[i]).gossip,
			"TIMERD_JOIN=" + strings.Join(hosts, ","), // no port: the bind port, the same on every node
			"TIMERD_EXPECT=3",
		}
	}
	release()
	begin := time.Now()
	c.startTogether(shorts, env)

	names := c.names(shorts...)
	var seen3 time.Duration
	testkit.Eventually(t, 60*time.Second, "every node sees the three members with a quorum", func() bool {
		for _, s := range shorts {
			st, err := getStatus(c.node(s).ag.nodeURL)
			if err != nil || !slices.Equal(st.alive(), names) {
				return false
			}
			q, err := getQuorum(c.node(s).ag.nodeURL)
			if err != nil || !q.Quorum || q.SeenMembers != 3 || q.ExpectedMembers != 3 || q.QuorumSize != 2 {
				return false
			}
		}
		seen3 = time.Since(begin)
		return true
	})
	_, stable := c.waitStable("3 nodes", 60*time.Second, ringCounts(t, names, ids))
	t.Logf("3 nodes started at once: all see 3 members %s after the start, run what the ring says %s later",
		seen3.Round(time.Millisecond), stable.Round(time.Millisecond))
	for _, s := range shorts {
		if out := c.node(s).ag.output(); strings.Contains(out, "NO PEER REACHABLE") || strings.Contains(out, "QUORUM LOST") {
			t.Errorf("%s logged a missing peer or a lost quorum while starting with its peers", s)
		}
	}

	// Every slot from here on is expected once, at the API.
	from := time.Now()
	time.Sleep(4 * every) // the cluster works: let it
	to := time.Now()
	for _, s := range shorts {
		c.stop(s)
	}
	total := checkIntervalSlots(t, c.allEvents(), ids, every, from, to)
	t.Logf("%d interval slots of %d rules checked: each stored once", total, n)
	if dups := c.apiDuplicates(); dups != 0 {
		t.Errorf("timerd_api_events_duplicate_total = %v, want 0", dups)
	}
}

// A node with TIMERD_EXPECT=3 whose peers are unreachable does not run alone after its join
// timeout: it is not ready, fires nothing and says it waits for a quorum.
func TestMergeAloneWaitsForQuorum(t *testing.T) {
	t.Parallel() // few nodes, no slot timing: beside the agent tests (Makefile: -parallel)
	const timeout = 2 * time.Second
	c := newTCluster(t)
	ids := c.createRules("quorum", "core.intervaltimer", 5, func(int) map[string]any { return map[string]any{"interval": 1} })
	n := c.start("n1", []string{closedAddr(t)}, false, "TIMERD_JOIN_TIMEOUT="+timeout.String(), "TIMERD_EXPECT=3")
	testkit.Eventually(t, 30*time.Second, "the node says it waits for a quorum", func() bool {
		return strings.Contains(n.ag.output(), "waits for a quorum")
	})
	for end := time.Now().Add(3 * time.Second); time.Now().Before(end); time.Sleep(200 * time.Millisecond) {
		if code := readyz(n.ag.nodeURL); code != http.StatusServiceUnavailable {
			t.Fatalf("/readyz %d %s after start with 1 of 3 nodes, want 503", code, time.Since(n.started).Round(time.Millisecond))
		}
	}
	q, err := getQuorum(n.ag.nodeURL)
	if err != nil || q.Quorum || q.ExpectedMembers != 3 || q.SeenMembers != 1 || q.QuorumSize != 2 {
		t.Errorf("status of 1 of 3: %+v (%v), want no quorum, 3 expected, 1 seen, quorum of 2", q, err)
	}
	st, err := getStatus(n.ag.nodeURL)
	if err != nil || st.RulesOwned != 0 {
		t.Errorf("1 of 3 runs %d rules (%v), want 0", st.RulesOwned, err)
	}
	if m := c.nodeMetric("n1", "timerd_cluster_quorum"); m != 0 {
		t.Errorf("timerd_cluster_quorum = %v, want 0", m)
	}
	evs := c.allEvents()
	for _, id := range ids {
		if len(evs[id]) != 0 {
			t.Errorf("rule %d: %d events from a node without a quorum, want none", id, len(evs[id]))
		}
	}
}
