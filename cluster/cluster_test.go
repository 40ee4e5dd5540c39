package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime/pprof"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"

	"github.com/timerd/timerd/cluster/protocol"
	"github.com/timerd/timerd/test/testkit"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// logBuf captures a node's log for assertions.
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func testConfig(name string, join ...string) Config {
	return Config{
		NodeName:    name,
		BindAddr:    "127.0.0.1:0",
		Join:        join,
		JoinTimeout: 5 * time.Second,
		Memberlist:  testMemberlist,
	}
}

// testMemberlist is memberlist's local config with lenient failure detection: on a loaded
// 2-core machine under -race, a 200 ms probe timeout declares live nodes suspect.
func testMemberlist() *memberlist.Config {
	mc := memberlist.DefaultLocalConfig()
	mc.ProbeTimeout = time.Second
	mc.ProbeInterval = 2 * time.Second
	mc.SuspicionMult = 6
	return mc
}

// start creates and joins a node, shut down at the end of the test.
func start(t *testing.T, cfg Config) (*Cluster, *logBuf) {
	t.Helper()
	lb := &logBuf{}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(lb, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	c, err := New(cfg)
	if err != nil {
		t.Fatalf("New(%s): %v", cfg.NodeName, err)
	}
	t.Cleanup(func() {
		if err := c.Shutdown(); err != nil {
			t.Errorf("Shutdown(%s): %v", cfg.NodeName, err)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.Join(ctx); err != nil {
		t.Fatalf("Join(%s): %v", cfg.NodeName, err)
	}
	return c, lb
}

func viewHas(c *Cluster, n int, names ...string) bool {
	v := c.View()
	if len(v.Members) != n {
		return false
	}
	for _, name := range names {
		if !v.ring.Has(name) {
			return false
		}
	}
	return true
}

const ruleIDs = 10_000

// owners maps each rule id to its owner, checking that every node agrees and exactly one owns it.
func owners(t *testing.T, nodes ...*Cluster) map[int64]string {
	t.Helper()
	out := make(map[int64]string, ruleIDs)
	for id := int64(1); id <= ruleIDs; id++ {
		owner, owning := nodes[0].Owner(id), 0
		for _, n := range nodes {
			if got := n.Owner(id); got != owner {
				t.Fatalf("Owner(%d) on %s = %q, on %s = %q; want agreement", id, n.Name(), got, nodes[0].Name(), owner)
			}
			if n.Owns(id) {
				owning++
				if n.Name() != owner {
					t.Fatalf("%s Owns(%d) but Owner is %q", n.Name(), id, owner)
				}
			}
		}
		if owning != 1 {
			t.Fatalf("rule %d owned by %d nodes, want exactly 1", id, owning)
		}
		out[id] = owner
	}
	return out
}

func TestScaleOutAndLeave(t *testing.T) {
	a, _ := start(t, testConfig("a"))
	b, _ := start(t, testConfig("b", a.LocalAddr()))
	c, cl := start(t, testConfig("c", a.LocalAddr()))
	nodes := []*Cluster{a, b, c}
	for _, n := range nodes {
		testkit.Eventually(t, 20*time.Second, n.Name()+" sees 3 members", func() bool { return viewHas(n, 3, "a", "b", "c") })
	}
	own3 := owners(t, nodes...)
	share := map[string]int{}
	for _, o := range own3 {
		share[o]++
	}
	for name, n := range share {
		if third := float64(ruleIDs) / 3; float64(n) < third*0.85 || float64(n) > third*1.15 {
			t.Errorf("3 nodes: %s owns %d of %d rules, want 1/3 ± 15%%", name, n, ruleIDs)
		}
	}

	// Scale out: a 4th node takes about a quarter, all from the others, none between them.
	v3 := a.View()
	d, dl := start(t, testConfig("d", b.LocalAddr()))
	nodes = append(nodes, d)
	// From here on a failure (a view that does not converge) shows what each node sees and d's log.
	defer func() {
		if !t.Failed() {
			return
		}
		for _, n := range nodes {
			t.Logf("%s view %v members %+v", n.Name(), n.View().Members, n.Members())
		}
		t.Logf("c log:\n%s", cl)
		t.Logf("d log:\n%s", dl)
		// The goroutines say where each node waits.
		var stacks strings.Builder
		_ = pprof.Lookup("goroutine").WriteTo(&stacks, 1)
		t.Logf("goroutines:\n%s", stacks.String())
	}()
	// Within two push/pull intervals: gossip of d's join can be lost (UDP, a starved
	// receiver), and memberlist's first push/pull comes a random stagger of up to one
	// interval plus one interval (15 s each) after a node's start; under a busy loop c
	// was seen to hear of d only from that push/pull, after 20 s.
	for _, n := range nodes {
		testkit.Eventually(t, 40*time.Second, n.Name()+" sees 4 members", func() bool { return viewHas(n, 4, "a", "b", "c", "d") })
	}
	own4 := owners(t, nodes...)
	moved := 0
	for id, o := range own3 {
		if own4[id] != o {
			moved++
			if own4[id] != "d" {
				t.Fatalf("rule %d moved %s -> %s, want moves only to the new node d", id, o, own4[id])
			}
		}
	}
	if f := float64(moved) / ruleIDs; f < 0.15 || f > 0.35 {
		t.Errorf("3->4 nodes moved %d of %d rules (%.2f), want 0.25 ± 0.10", moved, ruleIDs, f)
	}
	if dv := d.View(); dv.Version != 1 {
		t.Errorf("d's first view: version %d, want 1", dv.Version)
	}
	if av := a.View(); av.Version <= v3.Version {
		t.Errorf("a's view version %d after d joined, want > %d", av.Version, v3.Version)
	}

	// Graceful leave: peers drop d at once and its rules go back to the others.
	leaveStart := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := d.Leave(ctx); err != nil {
		t.Fatalf("d.Leave: %v", err)
	}
	for _, n := range nodes[:3] {
		testkit.Eventually(t, 20*time.Second, n.Name()+" drops d", func() bool { return viewHas(n, 3, "a", "b", "c") })
	}
	t.Logf("peers saw the graceful leave within %v", time.Since(leaveStart))
	owners(t, nodes[:3]...)
	// The leave intent is a broadcast: under load it may reach a after
	// memberlist's own leave notice, so give it a moment.
	states := map[string]string{}
	testkit.Eventually(t, 20*time.Second, "a sees d left and itself alive", func() bool {
		clear(states)
		for _, m := range a.Members() {
			states[m.Name] = m.State
		}
		return states["d"] == StateLeft && states["a"] == StateAlive
	})
	if err := d.Shutdown(); err != nil {
		t.Errorf("Shutdown after Leave: %v", err)
	}
	if err := d.Leave(context.Background()); err != nil {
		t.Errorf("Leave after Shutdown: %v, want nil", err)
	}
}

func TestWrongGossipKeyCannotJoin(t *testing.T) {
	cfgA := testConfig("a")
	cfgA.GossipKey = "AAECAwQFBgcICQoLDA0ODw==" // 16 bytes
	a, _ := start(t, cfgA)
	cfgB := testConfig("b", a.LocalAddr())
	cfgB.GossipKey = "DwAOAQ0CDAMLBAoFCQYIBw==" // another 16 bytes
	cfgB.JoinTimeout = 500 * time.Millisecond
	cfgB.RejoinInterval = -1
	b, blog := start(t, cfgB)
	if got := len(a.Members()); got != 1 {
		t.Errorf("a has %d members after b with another key joined, want 1", got)
	}
	if v := b.View(); len(v.Members) != 1 || !b.Owns(1) {
		t.Errorf("b view members %v, Owns(1) %v; want alone owning everything", v.Members, b.Owns(1))
	}
	if !strings.Contains(blog.String(), "ALONE") {
		t.Errorf("b's log does not say it runs alone:\n%s", blog)
	}
	// The same key joins, here through a DNS name (every address it resolves to is tried).
	_, port, _ := net.SplitHostPort(a.LocalAddr())
	cfgC := testConfig("c", net.JoinHostPort("localhost", port))
	cfgC.GossipKey = cfgA.GossipKey
	start(t, cfgC)
	testkit.Eventually(t, 20*time.Second, "a sees c", func() bool { return viewHas(a, 2, "a", "c") })
}

func TestJoinUnreachableDecidesAloneAfterTimeout(t *testing.T) {
	cfg := testConfig("lonely", "127.0.0.1:1") // nothing listens on port 1
	cfg.JoinTimeout = 300 * time.Millisecond
	cfg.RejoinInterval = -1
	lb := &logBuf{}
	cfg.Logger = slog.New(slog.NewTextHandler(lb, nil))
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Shutdown() }()
	if c.Owns(1) || c.Owner(1) != "" || c.View().Version != 0 {
		t.Fatalf("before Join: Owns(1) %v Owner(1) %q version %d, want nothing owned", c.Owns(1), c.Owner(1), c.View().Version)
	}
	begin := time.Now()
	res, err := c.Join(context.Background())
	took := time.Since(begin)
	if err != nil || !res.Alone || !res.TimedOut || res.Contacted != 0 {
		t.Fatalf("Join to an unreachable peer = %+v, %v; want alone after timeout", res, err)
	}
	if took < cfg.JoinTimeout {
		t.Errorf("Join decided alone after %v, want >= JoinTimeout %v", took, cfg.JoinTimeout)
	}
	if v := c.View(); v.Version != 1 || !v.Quorum {
		t.Errorf("after Join alone: view version %d, quorum %v; want the first view, with a quorum of 1", v.Version, v.Quorum)
	}
	if !c.Owns(1) || !c.Owns(987654) {
		t.Errorf("alone node does not own every rule")
	}
	if log := lb.String(); !strings.Contains(log, "level=WARN") || !strings.Contains(log, "ALONE") {
		t.Errorf("log lacks a warning that the node runs alone:\n%s", log)
	}
	if _, err := c.Join(context.Background()); !errors.Is(err, ErrJoinCalled) {
		t.Errorf("second Join = %v, want ErrJoinCalled", err)
	}
}

// A join list that holds the node's own address (every node listed, or a headless service
// that resolves to this pod alone) is no join when no other node answers: memberlist counts
// the node itself as contacted, which must not skip the timeout and the background rejoin.
func TestJoinOnlySelfAnswersIsAlone(t *testing.T) {
	cfg := testConfig("self")
	cfg.JoinTimeout = 300 * time.Millisecond
	cfg.RejoinInterval = 100 * time.Millisecond
	cfg.Logger = slog.New(slog.DiscardHandler)
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Shutdown() }()
	c.cfg.Join = []string{c.LocalAddr(), "127.0.0.1:1"} // itself, and nobody
	begin := time.Now()
	res, err := c.Join(context.Background())
	if took := time.Since(begin); err != nil || !res.Alone || !res.TimedOut || took < cfg.JoinTimeout {
		t.Fatalf("Join listing only itself = %+v, %v after %v; want alone after the %v timeout", res, err, took, cfg.JoinTimeout)
	}
	if p := c.lastJoinErr.Load(); p == nil || !errors.Is(*p, errOnlySelf) {
		t.Errorf("last join error %v, want errOnlySelf", p)
	}
	// The background rejoin goes on: a peer that then joins it makes a cluster of two.
	b, _ := start(t, testConfig("b", c.LocalAddr()))
	testkit.Eventually(t, 20*time.Second, "self and b see each other", func() bool {
		return viewHas(c, 2, "b", "self") && viewHas(b, 2, "b", "self")
	})
}

func TestJoinCancelledDecidesNothing(t *testing.T) {
	cfg := testConfig("x", "127.0.0.1:1")
	cfg.Logger = slog.New(slog.DiscardHandler)
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Shutdown() }()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if _, err := c.Join(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Join with a cancelled ctx = %v, want DeadlineExceeded", err)
	}
	if v := c.View(); v.Version != 0 {
		t.Errorf("view version %d after a cancelled Join, want 0 (no decision)", v.Version)
	}
	if c.Owns(1) {
		t.Errorf("Owns(1) after a cancelled Join, want false")
	}
}

// TestRejoinAfterAlone: a node that decided it was alone joins its peer once it appears.
func TestRejoinAfterAlone(t *testing.T) {
	// A TCP listener that drops every connection: the join fails, and its port is ours.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			conn.Close()
		}
	}()
	addr := ln.Addr().String()
	cfgB := testConfig("b", addr)
	cfgB.JoinTimeout = 300 * time.Millisecond
	cfgB.RejoinInterval = 100 * time.Millisecond
	b, _ := start(t, cfgB)
	if v := b.View(); len(v.Members) != 1 {
		t.Fatalf("b members %v, want alone", v.Members)
	}
	ln.Close()
	wg.Wait()
	cfgA := testConfig("a")
	cfgA.BindAddr = addr
	a, err := New(cfgA)
	if err != nil { // Go listens with SO_REUSEADDR: the port of a closed listener is free
		t.Fatalf("New(a) on b's join address %s: %v", addr, err)
	}
	t.Cleanup(func() { _ = a.Shutdown() })
	if _, err := a.Join(context.Background()); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 20*time.Second, "b joins a in the background", func() bool { return viewHas(b, 2, "a", "b") })
	testkit.Eventually(t, 20*time.Second, "a sees b", func() bool { return viewHas(a, 2, "a", "b") })
}

// A packet that is no protocol message and no leave intent (an older build's watermark
// gossip among them) is dropped and counted, as is a leave intent without a name; an older
// build's push/pull state is ignored.
func TestOtherPacketsDropped(t *testing.T) {
	a, b, _, _ := pair(t, nil, nil)
	watermarks := func(kind byte) []byte { // [version 1][kind], then a record: rule, slot, count
		return append([]byte{1, kind}, make([]byte, 24)...)
	}
	tests := []struct {
		name   string
		msg    []byte
		reason string
	}{
		{"empty", nil, protocol.WireMalformed},
		{"one byte", []byte{1}, protocol.WireMalformed},
		{"watermark gossip", watermarks(1), protocol.WireUnknownVersion},
		{"watermark state", watermarks(2), protocol.WireUnknownVersion},
		{"unknown version", []byte{9, leaveKind, 'x'}, protocol.WireUnknownVersion},
		{"leave intent without a name", []byte{leaveVersion, leaveKind}, protocol.WireInvalid},
	}
	d := &delegate{b}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := dropsOf(b, dirIn, tt.reason)
			d.NotifyMsg(tt.msg)
			if got := dropsOf(b, dirIn, tt.reason) - before; got != 1 {
				t.Errorf("NotifyMsg(%x): dropped{in,%s} += %v, want 1", tt.msg, tt.reason, got)
			}
		})
	}
	d.MergeRemoteState(watermarks(2), false)
	if m := len(b.Messages()); m != 0 {
		t.Errorf("b holds %d messages after the packets that are none, want 0", m)
	}
	// Over the network: the old gossip's packet is counted, the leave intent that follows
	// it taken.
	node, _ := a.liveNode("b")
	version := dropsOf(b, dirIn, protocol.WireUnknownVersion)
	for _, p := range [][]byte{watermarks(1), append([]byte{leaveVersion, leaveKind}, "gone"...)} {
		if err := a.ml.SendReliable(&node, p); err != nil {
			t.Fatal(err)
		}
	}
	testkit.Eventually(t, 10*time.Second, "b counts the gossip packet and takes the leave intent", func() bool {
		b.mu.Lock()
		_, left := b.leaving["gone"]
		b.mu.Unlock()
		return left && dropsOf(b, dirIn, protocol.WireUnknownVersion) == version+1
	})
}

func TestMetricsPerNode(t *testing.T) {
	regA, regB := prometheus.NewPedanticRegistry(), prometheus.NewPedanticRegistry()
	cfgA := testConfig("a")
	cfgA.Registerer = regA
	a, _ := start(t, cfgA)
	cfgB := testConfig("b", a.LocalAddr())
	cfgB.Registerer = regB
	start(t, cfgB)
	testkit.Eventually(t, 20*time.Second, "a sees b", func() bool { return viewHas(a, 2, "b") })
	want := `
# HELP timerd_cluster_members Members of the cluster as this node sees them, by state.
# TYPE timerd_cluster_members gauge
timerd_cluster_members{state="alive"} 2
timerd_cluster_members{state="dead"} 0
timerd_cluster_members{state="left"} 0
timerd_cluster_members{state="suspect"} 0
# HELP timerd_ring_changes_total Changes of the member set of this node's hash ring.
# TYPE timerd_ring_changes_total counter
timerd_ring_changes_total 1
`
	if err := testutil.GatherAndCompare(regA, strings.NewReader(want), "timerd_cluster_members", "timerd_ring_changes_total"); err != nil {
		t.Errorf("a's metrics: %v", err)
	}
	if n, err := testutil.GatherAndCount(regB); err != nil || n == 0 {
		t.Errorf("b's registry: %d metrics, %v", n, err)
	}
	// A second cluster on the same registry is an error, not a panic.
	cfgC := testConfig("c")
	cfgC.Registerer = regA
	if _, err := New(cfgC); err == nil {
		t.Errorf("New with an already used registry: nil error, want a registration error")
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name  string
		cfg   Config
		field string
	}{
		{"bind without port", Config{NodeName: "n", BindAddr: "127.0.0.1"}, "BindAddr"},
		{"bind bad port", Config{NodeName: "n", BindAddr: "127.0.0.1:70000"}, "BindAddr"},
		{"advertise hostname", Config{NodeName: "n", AdvertiseAddr: "node.example:7946"}, "AdvertiseAddr"},
		{"join empty entry", Config{NodeName: "n", Join: []string{""}}, "Join"},
		{"join bad port", Config{NodeName: "n", Join: []string{"a:b:c"}}, "Join"},
		{"negative join timeout", Config{NodeName: "n", JoinTimeout: -1}, "JoinTimeout"},
		{"negative expect", Config{NodeName: "n", Expect: -1}, "Expect"},
		{"expect over 1000", Config{NodeName: "n", Expect: 1001}, "Expect"},
		{"key not base64", Config{NodeName: "n", GossipKey: "!!!"}, "GossipKey"},
		{"key of 10 bytes", Config{NodeName: "n", GossipKey: "AAECAwQFBgcICQ=="}, "GossipKey"},
		{"ring replication 1", Config{NodeName: "n", Ring: RingConfig{ReplicationFactor: 1}}, "Ring"},
		{"negative message buffer", Config{NodeName: "n", MessageBuffer: -1}, "MessageBuffer"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), tt.field+":") {
				t.Errorf("Validate(%+v) = %v, want ErrConfig naming %s", tt.cfg, err, tt.field)
			}
			if tt.cfg.GossipKey != "" && strings.Contains(fmt.Sprint(err), tt.cfg.GossipKey) {
				t.Errorf("Validate error quotes the gossip key: %v", err)
			}
		})
	}
	good := []Config{
		{NodeName: "n"},
		{NodeName: "n", Expect: 1000},
		{NodeName: "n", BindAddr: ":7946", AdvertiseAddr: "10.1.2.3", Join: []string{"timerd-headless", "10.0.0.1:7946", "[::1]:7946"},
			GossipKey: "AAECAwQFBgcICQoLDA0ODwABAgMEBQYHCAkKCwwNDg8="},
	}
	for _, cfg := range good {
		if err := cfg.Validate(); err != nil {
			t.Errorf("Validate(%+v) = %v, want nil", cfg, err)
		}
	}
}

func TestSlogWriterLevels(t *testing.T) {
	tests := []struct {
		line, level, msg string
	}{
		{"[DEBUG] memberlist: Stream connection from=1.2.3.4", "DEBUG", "Stream connection from=1.2.3.4"},
		{"[WARN] memberlist: Was able to connect", "WARN", "Was able to connect"},
		{"[ERR] memberlist: Failed to join", "ERROR", "Failed to join"},
		{"[INFO] memberlist: Suspect", "INFO", "Suspect"},
		{"no prefix", "INFO", "no prefix"},
	}
	for _, tt := range tests {
		var buf bytes.Buffer
		l := newStdLogger(slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})))
		l.Print(tt.line)
		if got := buf.String(); !strings.Contains(got, "level="+tt.level) || !strings.Contains(got, fmt.Sprintf("msg=%q", tt.msg)) && !strings.Contains(got, "msg="+tt.msg+"\n") {
			t.Errorf("log line %q -> %q, want level=%s msg=%q", tt.line, got, tt.level, tt.msg)
		}
	}
}

// noAdvertiseTransport is a transport with no address to advertise, as memberlist's own
// is when bound to 0.0.0.0 on a host without a private IP.
type noAdvertiseTransport struct{ memberlist.Transport }

func (noAdvertiseTransport) FinalAdvertiseAddr(string, int) (net.IP, int, error) {
	return nil, 0, errors.New("no private IP address found, and explicit IP not provided")
}

// New's failures to start gossip say which setting is at fault through errors.Is, not
// through memberlist's wording (which startFailure reads, for the memberlist in go.mod).
func TestNewErrorNamesTheSetting(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()

	bind := testConfig("bind")
	bind.BindAddr = taken.Addr().String()
	_, err = New(bind)
	if !errors.Is(err, ErrBind) || errors.Is(err, ErrAdvertise) || !strings.HasPrefix(fmt.Sprint(err), "start gossip on "+bind.BindAddr+": ") {
		t.Errorf("New on a port in use = %v, want ErrBind (only) starting %q", err, "start gossip on "+bind.BindAddr)
	}

	adv := testConfig("advertise")
	adv.Memberlist = func() *memberlist.Config {
		mc := testMemberlist()
		mc.Transport = noAdvertiseTransport{}
		return mc
	}
	_, err = New(adv)
	if !errors.Is(err, ErrAdvertise) || errors.Is(err, ErrBind) || !strings.Contains(fmt.Sprint(err), "no private IP address found") {
		t.Errorf("New with no address to advertise = %v, want ErrAdvertise (only) with memberlist's cause", err)
	}
}
