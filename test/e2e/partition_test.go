package e2e

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/timerd/timerd/cluster"
	"github.com/timerd/timerd/cluster/protocol"
	"github.com/timerd/timerd/test/testkit"
)

// The network partition test: a real cut on loopback with iptables (root only; `make test`
// installs iptables through test/net/ensure-iptables.sh).
//
// How the cut is made. Each node has its own loopback address (127.0.0.1, .2, .3) and the one
// gossip port P. The rules live in a chain of their own, partitionChain, filled before the cut;
// the cut is the one jump to it from OUTPUT on lo (one atomic insert), the heal is its removal.
// The rules match the gossip port only, so the API and the nodes' HTTP stay reachable:
//
//   - from 127.0.0.3:P to 127.0.0.1/.2 (node 3's UDP, and its side of connections it accepted);
//   - from 127.0.0.1/.2 to 127.0.0.3:P (the majority's UDP and TCP to node 3);
//   - from node 3's own user to 127.0.0.1/.2:P. Addresses cannot catch node 3's TCP dials:
//     memberlist dials without a local address, and Linux gives a connection to any 127/8
//     address the source 127.0.0.1 (`ip route get 127.0.0.3`: src 127.0.0.1), so node 3's
//     dial to node 1 looks exactly like node 2's. Node 3 therefore runs as a user of its own
//     (partitionUID) and an owner match (`-m owner --uid-owner`) drops what it sends to the
//     others' gossip port. Without it node 3's TCP fallback pings and push/pulls, and its
//     protocol messages too large for UDP, reach the majority through the cut.
const (
	partitionChain = "TIMERD_TEST"
	partitionUID   = 61379 // node 3's user (and group): a number no account uses
)

// A 30 s network partition of one node from the two others (issue: "partition one node from two
// for 30 s: no slot fired on both sides, the minority fires nothing after its lease").
//
// 3 agents (TIMERD_EXPECT=3) on 127.0.0.1/.2/.3 run 300 interval rules of 1 s; node 3 is cut from
// nodes 1 and 2 for TIMERD_PARTITION_CUT (30 s), then the cut heals. Each agent posts its events
// through a proxy of its own in front of the API, which records who posted what: the API keeps
// nothing about the sender. Checked:
//
//	(a) every slot stored once (no (rule, scheduled_at) twice) and the API's duplicate counter 0;
//	(b) node 3's lease (timerd_lease) goes 0 within L + R + 0.5 s of the cut (2.25 s); from then until the heal it
//	    commits no fire (timerd_fires_total does not move) and posts no event fired after it;
//	(c) the majority takes node 3's partitions and fires node 3's share of the rules during the
//	    cut: every slot stored, late by at most 3 s past the takeover;
//	(d) after the heal node 3 comes back as a new incarnation, the three see one another and run
//	    what the 3-node ring says, and every slot to the end is stored once.
func TestPartition(t *testing.T) {
	ipt := partitionPreflight(t)
	n := clusterInt(t, "TIMERD_PARTITION_RULES", 300)
	cut := soakSetting(t, "TIMERD_PARTITION_CUT", 30*time.Second)
	const every = time.Second
	hosts := []string{"127.0.0.1", "127.0.0.2", "127.0.0.3"}
	shorts := []string{"n1", "n2", "n3"}
	c := newTCluster(t)
	ids := c.createRules("part", "core.intervaltimer", n, func(int) map[string]any {
		return map[string]any{"interval": int(every / time.Second)}
	})

	// Node 3 runs as partitionUID: the binary and its data dir must be its to read and write.
	bin, n3dir := partitionUserFiles(t)
	c.node("n3").dir = n3dir

	rec := c.posts
	port, release := sharedPort(t, hosts...)
	env := make([][]string, len(hosts))
	for i, h := range hosts {
		c.node(shorts[i]).gossip = net.JoinHostPort(h, fmt.Sprint(port))
		env[i] = []string{
			"TIMERD_BIND_ADDR=" + c.node(shorts[i]).gossip,
			"TIMERD_JOIN=" + strings.Join(hosts, ","),
			"TIMERD_EXPECT=3",
			"ATTUNE_API_URL=" + c.proxy(shorts[i]), // the last value of a key wins
		}
	}
	env[2] = append(env[2], "HOME="+n3dir)
	release()
	c.startPartitionNodes(shorts, env, bin)

	names := c.names(shorts...)
	three := ringOwners(t, names, ids)
	n3name := c.node("n3").name
	share := 0
	for _, o := range three {
		if o == n3name {
			share++
		}
	}
	_, took := c.waitStable("3 nodes", 90*time.Second, ringCounts(t, names, ids))
	t.Logf("3 nodes (gossip port %d) run what the ring says %s after they were up; node 3 (uid %d) owns %d of %d rules",
		port, took.Round(time.Millisecond), partitionUID, share, n)
	from := time.Now() // every slot from here on is expected once
	time.Sleep(5 * every)
	if m := c.nodeMetric("n3", "timerd_fires_total"); m == 0 {
		t.Fatalf("node 3 fired nothing before the cut")
	}
	st3, err := getPartStatus(c.node("n3").ag.nodeURL)
	if err != nil {
		t.Fatal(err)
	}
	inc0, held0 := st3.Incarnation, st3.PartitionsHeld
	fenced0 := c.nodeMetric("n3", "timerd_incarnations_fenced_total") // a loaded start may have fenced it already
	dups0 := c.apiDuplicates()

	// The cut.
	for _, rule := range partitionRules(port, hosts[2], hosts[:2]) {
		ipt.must(t, append([]string{"-A", partitionChain}, rule...)...)
	}
	cutAt := time.Now()
	ipt.must(t, "-I", "OUTPUT", "1", "-o", "lo", "-j", partitionChain)
	cutCmd := time.Since(cutAt)
	healed := false
	heal := func() {
		if !healed {
			healed = true
			ipt.deleteJumps(t)
		}
	}
	t.Cleanup(heal) // before the chain's own cleanup, which runs later still
	t.Logf("cut: node 3 (%s) from nodes 1 and 2 on gossip port %d (iptables took %s); node 3 held %d partitions, incarnation %s",
		hosts[2], port, cutCmd.Round(time.Millisecond), held0, inc0)

	// (b) node 3's lease lapses: poll its gauge.
	var lapse time.Duration
	for {
		m, err := tryMetrics(c.node("n3").ag.nodeURL)
		if err == nil && metric(m, "timerd_lease") == 0 {
			lapse = time.Since(cutAt)
			break
		}
		if time.Since(cutAt) > 10*time.Second {
			t.Fatalf("node 3's timerd_lease still 1 (%v) %s after the cut", err, time.Since(cutAt).Round(time.Millisecond))
		}
		time.Sleep(10 * time.Millisecond)
	}
	lapseAt := cutAt.Add(lapse)
	// The gauge may read 0 before the lease has truly ended: the lease runs L
	// from the send of the last round a quorum answered, and on a starved node
	// an answer to a round sent just before the cut can be taken after the
	// gauge first read 0, renewing it (legitimately) until at most L after
	// the cut. So nothing may fire after the later of the two.
	if end := cutAt.Add(protocol.DefaultLease); end.After(lapseAt) {
		lapseAt = end
	}
	// The lease ends L after the last round a quorum answered, sent at most R
	// before the cut; and the gauge is read every 10 ms from a loaded machine.
	if want := protocol.DefaultLease + protocol.DefaultHeartbeat + 500*time.Millisecond; lapse > want {
		t.Errorf("node 3's lease lapsed %s after the cut, want within %s (L + R + 0.5 s)", lapse.Round(time.Millisecond), want)
	}
	// A commit already past its lease check when the lease lapsed may still end: give it a moment.
	time.Sleep(time.Until(lapseAt.Add(500 * time.Millisecond)))
	fires3 := c.nodeMetric("n3", "timerd_fires_total")
	deliv3 := c.nodeMetric("n3", "timerd_deliveries_total")

	// (c) the majority drops node 3 from its view and takes its partitions; node 3 sees itself alone.
	var dropped, holds, alone time.Duration
	var heldMajority int
	for time.Since(cutAt) < cut {
		s1, err1 := getPartStatus(c.node("n1").ag.nodeURL)
		s2, err2 := getPartStatus(c.node("n2").ag.nodeURL)
		s3, err3 := getPartStatus(c.node("n3").ag.nodeURL)
		if err1 == nil && err2 == nil {
			if dropped == 0 && !slices.Contains(s1.alive(), n3name) && !slices.Contains(s2.alive(), n3name) {
				dropped = time.Since(cutAt)
			}
			if heldMajority = s1.PartitionsHeld + s2.PartitionsHeld; holds == 0 && heldMajority == cluster.DefaultPartitions {
				holds = time.Since(cutAt)
			}
		}
		if err3 == nil && alone == 0 && slices.Equal(s3.alive(), []string{n3name}) {
			alone = time.Since(cutAt)
		}
		time.Sleep(100 * time.Millisecond)
	}
	fires3End := c.nodeMetric("n3", "timerd_fires_total")
	deliv3End := c.nodeMetric("n3", "timerd_deliveries_total")
	refused3 := c.nodeMetric("n3", "timerd_commits_not_fireable_total")
	dupsCut := c.apiDuplicates()
	healAt := time.Now()
	heal()
	after := func(d time.Duration) string {
		if d == 0 {
			return "never"
		}
		return "after " + d.Round(time.Millisecond).String()
	}
	t.Logf("during the cut (%s): node 3's lease lapsed %s after it; nodes 1 and 2 dropped node 3 from their views %s and held all %d partitions %s; node 3 saw itself alone %s",
		cut, lapse.Round(time.Millisecond), after(dropped), cluster.DefaultPartitions, after(holds), after(alone))
	t.Logf("node 3 from its lapse (+0.5 s) to the heal: timerd_fires_total %v -> %v, timerd_deliveries_total %v -> %v, commits refused (timerd_commits_not_fireable_total) %v",
		fires3, fires3End, deliv3, deliv3End, refused3)
	if dropped == 0 {
		t.Errorf("nodes 1 and 2 still listed node 3 alive at the end of the %s cut", cut)
	}
	if holds == 0 {
		t.Errorf("nodes 1 and 2 held %d of %d partitions at the end of the %s cut, want all", heldMajority, cluster.DefaultPartitions, cut)
	}
	if alone == 0 {
		t.Errorf("node 3 never saw itself alone during the %s cut: the cut leaks", cut)
	}
	if fires3End != fires3 {
		t.Errorf("node 3 committed %v fires after its lease lapsed for good (timerd_fires_total %v -> %v), want none", fires3End-fires3, fires3, fires3End)
	}
	if dupsCut != dups0 {
		t.Errorf("timerd_api_events_duplicate_total rose from %v to %v during the cut", dups0, dupsCut)
	}

	// (d) the heal: node 3 learns it was fenced, starts a new incarnation and rejoins.
	_, rejoined := c.waitStable("after the heal", 90*time.Second, ringCounts(t, names, ids))
	st3, err = getPartStatus(c.node("n3").ag.nodeURL)
	if err != nil {
		t.Fatal(err)
	}
	fenced := c.nodeMetric("n3", "timerd_incarnations_fenced_total")
	t.Logf("healed: the 3 nodes run what the 3-node ring says %s after the heal; node 3 is %s (was %s), timerd_incarnations_fenced_total %v -> %v",
		rejoined.Round(time.Millisecond), st3.Incarnation, inc0, fenced0, fenced)
	if st3.Incarnation == inc0 || fenced <= fenced0 {
		t.Errorf("node 3 after the heal: incarnation %s (before the cut %s), timerd_incarnations_fenced_total %v -> %v: want a new incarnation, learnt from a fence",
			st3.Incarnation, inc0, fenced0, fenced)
	}
	time.Sleep(5 * every) // the cluster works again: let it
	to := time.Now().Add(-time.Second)
	// On a loaded machine (a race build, make test's other packages) the last slots come a
	// few seconds late: wait until every rule has a slot stored at or after to.
	var evs map[int64][]fired
	var tail time.Duration
	testkit.Eventually(t, 60*time.Second, "every rule's slots up to the end of the window stored", func() bool {
		evs = c.allEvents()
		for _, id := range ids {
			if !slices.ContainsFunc(evs[id], func(f fired) bool { return !f.slot.Before(to) }) {
				time.Sleep(time.Second)
				return false
			}
		}
		tail = time.Since(to)
		return true
	})
	c.waitDrained(30 * time.Second)

	// (a) and (d): every slot from before the cut to after the heal stored once.
	evs = c.allEvents()
	slots := checkIntervalSlots(t, evs, ids, every, from, to)
	dups := c.apiDuplicates()
	if dups != 0 {
		t.Errorf("timerd_api_events_duplicate_total = %v, want 0", dups)
	}

	// (b) what node 3 posted: nothing fired after its lease lapsed, until the heal.
	posts := rec.all()
	byNode := map[string]int{}
	late3 := 0
	for _, p := range posts {
		byNode[p.node]++
		if p.node == "n3" && p.firedAt.After(lapseAt) && p.at.Before(healAt) {
			late3++
			if late3 <= 10 {
				t.Errorf("node 3 posted rule %d slot %s fired at %s, %s after its lease lapsed, during the cut",
					p.rule, p.slot.Format(time.StampMilli), p.firedAt.Format(time.StampMilli), p.firedAt.Sub(lapseAt).Round(time.Millisecond))
			}
		}
	}
	// Keys posted by more than one node (the API keeps the first; a repeat counts as a duplicate).
	posters := map[string]map[string]bool{}
	for _, p := range posts {
		if posters[p.key] == nil {
			posters[p.key] = map[string]bool{}
		}
		posters[p.key][p.node] = true
	}
	multi := 0
	for _, ns := range posters {
		if len(ns) > 1 {
			multi++
		}
	}

	// (c) node 3's share during the cut: each rule's first slot after the lapse, and how late.
	var takeover, worst, worstOthers time.Duration
	cutSlots := 0
	for _, id := range ids {
		var first *fired
		for i := range evs[id] {
			f := &evs[id][i]
			if !f.slot.After(cutAt) || f.slot.After(healAt) {
				continue
			}
			late := f.firedAt.Sub(f.slot)
			if three[id] != n3name {
				worstOthers = max(worstOthers, late)
				continue
			}
			cutSlots++
			worst = max(worst, late)
			if f.slot.After(lapseAt) && (first == nil || f.slot.Before(first.slot)) {
				first = f
			}
			// Bound: on time, or once the majority held node 3's partitions, plus 3 s.
			if bound := 3*time.Second + max(0, cutAt.Add(holds).Sub(f.slot)); holds > 0 && late > bound {
				t.Errorf("rule %d (node 3's) slot %s fired %s late during the cut, want at most %s",
					id, f.slot.Format(time.StampMilli), late.Round(time.Millisecond), bound.Round(time.Millisecond))
			}
		}
		if three[id] == n3name {
			if first == nil {
				t.Errorf("rule %d (node 3's): no slot after node 3's lapse stored during the cut", id)
				continue
			}
			takeover = max(takeover, first.firedAt.Sub(cutAt))
		}
	}
	t.Logf("node 3's %d rules: %d slots in the cut stored; the majority had fired each of them %s after the cut; latest %s late (the other rules: %s)",
		share, cutSlots, takeover.Round(time.Millisecond), worst.Round(time.Millisecond), worstOthers.Round(time.Millisecond))
	t.Logf("%d interval slots of %d rules stored once from %s to %s (the last stored %s after the end); API duplicates %v; POSTs by node %v, %d keys posted by two nodes; node 3 posted %d events fired after its lapse during the cut",
		slots, n, from.Format(time.TimeOnly), to.Format(time.TimeOnly), tail.Round(time.Millisecond), dups, byNode, multi, late3)
}

// partStatus is the part of /v1/status this test reads.
type partStatus struct {
	clusterStatus
	Incarnation    string `json:"incarnation"`
	PartitionsHeld int    `json:"partitions_held"`
}

func getPartStatus(nodeURL string) (partStatus, error) { return nodeStatus[partStatus](nodeURL) }

// tryMetrics is metrics with an error instead of a failed test, for polling.
func tryMetrics(nodeURL string) (map[string]float64, error) {
	resp, err := shortHTTP.Get(nodeURL + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	out := map[string]float64{}
	for line := range strings.SplitSeq(string(raw), "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if i := strings.LastIndexByte(line, ' '); i > 0 {
			if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
				out[line[:i]] = v
			}
		}
	}
	return out, nil
}

// partitionRules are the rules (for partitionChain) that cut minority from majority on the
// gossip port, both ways, UDP and TCP (see the top of this file).
func partitionRules(port int, minority string, majority []string) [][]string {
	p, others := strconv.Itoa(port), strings.Join(majority, ",")
	var rules [][]string
	for _, proto := range []string{"udp", "tcp"} {
		rules = append(rules,
			[]string{"-o", "lo", "-p", proto, "-s", minority, "-d", others, "--sport", p, "-j", "DROP"},
			[]string{"-o", "lo", "-p", proto, "-s", others, "-d", minority, "--dport", p, "-j", "DROP"},
			[]string{"-o", "lo", "-p", proto, "-d", others, "--dport", p, "-m", "owner", "--uid-owner", strconv.Itoa(partitionUID), "-j", "DROP"},
		)
	}
	return rules
}

// iptables runs iptables (waiting for the xtables lock).
type iptables string

func (ipt iptables) run(args ...string) error {
	out, err := exec.Command(string(ipt), append([]string{"-w", "10"}, args...)...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("iptables %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

func (ipt iptables) must(t *testing.T, args ...string) {
	t.Helper()
	if err := ipt.run(args...); err != nil {
		t.Fatal(err)
	}
}

// deleteJumps removes every jump from OUTPUT to partitionChain: the heal.
func (ipt iptables) deleteJumps(t *testing.T) {
	t.Helper()
	for range 10 {
		if ipt.run("-C", "OUTPUT", "-o", "lo", "-j", partitionChain) != nil {
			return
		}
		if err := ipt.run("-D", "OUTPUT", "-o", "lo", "-j", partitionChain); err != nil {
			t.Errorf("heal: %v", err)
			return
		}
	}
}

// partitionPreflight skips the test unless it runs as root with a working iptables; it takes
// the machine-wide lock of the partition test (two runs at once would flush each other's
// rules), and leaves partitionChain empty and not jumped to, now and when the test ends
// (whatever a crashed run left).
func partitionPreflight(t *testing.T) iptables {
	t.Helper()
	if uid := os.Geteuid(); uid != 0 {
		t.Skipf("the partition test cuts loopback traffic with iptables, which needs root (uid %d)", uid)
	}
	path, err := exec.LookPath("iptables")
	if err != nil {
		for _, p := range []string{"/usr/sbin/iptables", "/sbin/iptables"} {
			if _, err2 := os.Stat(p); err2 == nil {
				path, err = p, nil
				break
			}
		}
	}
	if err != nil {
		t.Skipf("iptables is not installed (make test installs it: test/net/ensure-iptables.sh)")
	}
	ipt := iptables(path)
	if err := ipt.run("-S", "OUTPUT"); err != nil {
		t.Skipf("iptables is unusable here (no netfilter, or no CAP_NET_ADMIN): %v", err)
	}
	partitionLock(t)
	if ipt.run("-S", partitionChain) != nil {
		ipt.must(t, "-N", partitionChain)
	}
	ipt.deleteJumps(t)
	ipt.must(t, "-F", partitionChain)
	t.Cleanup(func() {
		ipt.deleteJumps(t)
		if err := ipt.run("-F", partitionChain); err != nil {
			t.Errorf("cleanup: %v", err)
		}
		if err := ipt.run("-X", partitionChain); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	return ipt
}

// partitionLock holds a machine-wide lock until the test ends, waiting up to 5 minutes for
// another run of the test (another `go test` of this package) to end.
func partitionLock(t *testing.T) {
	t.Helper()
	f, err := os.OpenFile(filepath.Join(os.TempDir(), "timerd-partition-test.lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() }) // closing releases the lock, or gives up waiting for it
	logged := false
	testkit.Eventually(t, 5*time.Minute, "lock "+f.Name(), func() bool {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return true
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			t.Fatalf("lock %s: %v", f.Name(), err)
		}
		if !logged {
			t.Logf("waiting for another run of the partition test (%s)", f.Name())
			logged = true
		}
		return false
	})
}

// partitionUserFiles makes a copy of the binary that partitionUID may run and a data dir it
// owns (t.TempDir and the test binary's dir are root's, mode 0700).
func partitionUserFiles(t *testing.T) (bin, dataDir string) {
	t.Helper()
	dir, err := os.MkdirTemp("", "timerd-e2e-partition-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	bin, dataDir = filepath.Join(dir, "timerd"), filepath.Join(dir, "n3")
	src, err := os.ReadFile(timerdBin)
	if err != nil {
		t.Fatal(err)
	}
	for _, err := range []error{
		os.WriteFile(bin, src, 0o755),
		os.Chmod(dir, 0o755),
		os.Mkdir(dataDir, 0o700),
		os.Chown(dataDir, partitionUID, partitionUID),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	return bin, dataDir
}

// startPartitionNodes is startTogether with node n3 run as partitionUID from bin.
func (c *tcluster) startPartitionNodes(shorts []string, env [][]string, bin string) {
	c.t.Helper()
	procs := make([]*proc, len(shorts))
	for i, short := range shorts {
		n := c.node(short)
		cmd := exec.Command(timerdBin, "agent")
		if short == "n3" {
			cmd = exec.Command(bin, "agent")
			cmd.Dir = n.dir
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: partitionUID, Gid: partitionUID}}
		}
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

// apiPost is one event POST that went through a node's proxy.
type apiPost struct {
	node, key     string
	rule          int64
	slot, firedAt time.Time
	at            time.Time // when the API answered
	status        int
}

// postRecorder records the event POSTs of every node, each node posting through a proxy of
// its own.
type postRecorder struct {
	mu    sync.Mutex
	posts []apiPost
}

func (r *postRecorder) all() []apiPost {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.posts)
}

// proxy starts a reverse proxy to the API for node and returns its URL.
func (r *postRecorder) proxy(t *testing.T, apiURL, node string) string {
	t.Helper()
	u, err := url.Parse(apiURL)
	if err != nil {
		t.Fatal(err)
	}
	rp := httputil.NewSingleHostReverseProxy(u)
	rp.Transport = &http.Transport{MaxIdleConnsPerHost: 64, IdleConnTimeout: 30 * time.Second}
	rp.ErrorLog = log.New(io.Discard, "", 0) // requests of agents killed at the end; the agent counts its errors
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.Method != http.MethodPost || req.URL.Path != "/api/v1/events" {
			rp.ServeHTTP(w, req)
			return
		}
		body, _ := io.ReadAll(req.Body)
		req.Body = io.NopCloser(bytes.NewReader(body))
		sw := &statusWriter{ResponseWriter: w, code: http.StatusOK}
		rp.ServeHTTP(sw, req)
		var ev struct {
			TriggerInstanceID string `json:"trigger_instance_id"`
			Payload           struct {
				FiredAt     time.Time `json:"fired_at"`
				ScheduledAt time.Time `json:"scheduled_at"`
			} `json:"payload"`
		}
		_ = json.Unmarshal(body, &ev)
		id, _ := strconv.ParseInt(strings.TrimPrefix(ev.TriggerInstanceID, "rule_"), 10, 64)
		r.mu.Lock()
		r.posts = append(r.posts, apiPost{node: node, key: req.Header.Get("Idempotency-Key"), rule: id,
			slot: ev.Payload.ScheduledAt, firedAt: ev.Payload.FiredAt, at: time.Now(), status: sw.code})
		r.mu.Unlock()
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

type statusWriter struct {
	http.ResponseWriter
	code int
}

func (w *statusWriter) WriteHeader(code int) {
	w.code = code
	w.ResponseWriter.WriteHeader(code)
}
