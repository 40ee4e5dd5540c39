package cluster

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"
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
		SettleDelay: 100 * time.Millisecond,
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

var dumpLogs func()

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			if dumpLogs != nil {
				dumpLogs()
			}
			t.Fatalf("not within %v: %s", within, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
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
	c, _ := start(t, testConfig("c", a.LocalAddr()))
	nodes := []*Cluster{a, b, c}
	for _, n := range nodes {
		eventually(t, 20*time.Second, n.Name()+" sees 3 members", func() bool { return viewHas(n, 3, "a", "b", "c") })
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
	dumpLogs = func() {
		for _, n := range nodes {
			t.Logf("%s view %v members %+v", n.Name(), n.View().Members, n.Members())
		}
		t.Logf("d log:\n%s", dl)
	}
	defer func() { dumpLogs = nil }()
	for _, n := range nodes {
		eventually(t, 20*time.Second, n.Name()+" sees 4 members", func() bool { return viewHas(n, 4, "a", "b", "c", "d") })
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
	// The new node's gained rules wait for the settle delay; the others gained nothing.
	dv := d.View()
	if !dv.SettleAt.Equal(dv.Changed.Add(100*time.Millisecond)) || dv.Version != 1 {
		t.Errorf("d's first view: version %d, settle %v after change, want 1 and the 100ms SettleDelay",
			dv.Version, dv.SettleAt.Sub(dv.Changed))
	}
	av := a.View()
	if av.Version <= v3.Version {
		t.Errorf("a's view version %d after d joined, want > %d", av.Version, v3.Version)
	}
	select {
	case got := <-a.Changes():
		if got.Version != av.Version {
			t.Errorf("a.Changes() gave version %d, want the latest %d (latest wins)", got.Version, av.Version)
		}
	default:
		t.Errorf("a.Changes() empty after d joined, want the new view")
	}

	// Graceful leave: peers drop d at once, its rules go back to the others, adoptable at once.
	leaveStart := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := d.Leave(ctx); err != nil {
		t.Fatalf("d.Leave: %v", err)
	}
	for _, n := range nodes[:3] {
		eventually(t, 20*time.Second, n.Name()+" drops d", func() bool { return viewHas(n, 3, "a", "b", "c") })
	}
	t.Logf("peers saw the graceful leave within %v", time.Since(leaveStart))
	own := owners(t, nodes[:3]...)
	for id, o := range own4 {
		if o != "d" {
			continue
		}
		n := map[string]*Cluster{"a": a, "b": b, "c": c}[own[id]]
		if v := n.View(); !v.AdoptAt(id).Equal(v.Changed) {
			t.Fatalf("%s AdoptAt(%d) of a rule of the leaver = %v after the change, want at once", n.Name(), id, v.AdoptAt(id).Sub(v.Changed))
		}
	}
	// The leave intent is a broadcast: under load it may reach a after
	// memberlist's own leave notice, so give it a moment.
	states := map[string]string{}
	eventually(t, 20*time.Second, "a sees d left and itself alive", func() bool {
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

func TestWatermarkGossipAndPushPull(t *testing.T) {
	a, _ := start(t, testConfig("a"))
	b, _ := start(t, testConfig("b", a.LocalAddr()))
	eventually(t, 20*time.Second, "a sees b", func() bool { return viewHas(a, 2, "b") })
	wms := b.Watermarks()

	slot := time.Date(2030, 1, 2, 3, 4, 5, 6, time.UTC)
	for id := int64(1); id <= 100; id++ {
		if err := a.Announce(id, slot.Add(time.Duration(id)*time.Second), uint64(id)); err != nil {
			t.Fatalf("Announce(%d): %v", id, err)
		}
	}
	eventually(t, 20*time.Second, "b learns a's 100 watermarks", func() bool {
		for id := int64(1); id <= 100; id++ {
			if _, _, ok := b.Watermark(id); !ok {
				return false
			}
		}
		return true
	})
	if s, n, _ := b.Watermark(42); !s.Equal(slot.Add(42*time.Second)) || n != 42 {
		t.Errorf("b.Watermark(42) = %v, %d; want %v, 42", s, n, slot.Add(42*time.Second))
	}
	select {
	case w := <-wms:
		if w.RuleID < 1 || w.RuleID > 100 {
			t.Errorf("b.Watermarks() gave rule %d, want 1..100", w.RuleID)
		}
	case <-time.After(2 * time.Second):
		t.Errorf("b.Watermarks() delivered nothing")
	}
	// An older watermark never replaces a newer one.
	if err := a.Announce(42, slot, 1); err != nil {
		t.Fatal(err)
	}
	if s, n, _ := a.Watermark(42); !s.Equal(slot.Add(42*time.Second)) || n != 42 {
		t.Errorf("after an older Announce, a.Watermark(42) = %v, %d; want the newer %v, 42", s, n, slot.Add(42*time.Second))
	}

	// A node joining later has the recent watermarks as soon as Join returns (push/pull).
	c, _ := start(t, testConfig("c", b.LocalAddr()))
	eventually(t, 20*time.Second, "a sees c", func() bool { return viewHas(a, 3, "c") })
	for _, id := range []int64{1, 50, 100} {
		if s, n, ok := c.Watermark(id); !ok || n != uint64(id) || !s.Equal(slot.Add(time.Duration(id)*time.Second)) {
			t.Errorf("late joiner c.Watermark(%d) = %v, %d, %v; want a's watermark", id, s, n, ok)
		}
	}
	if got := testutil.ToFloat64(a.met.broadcasts); got != 100 {
		t.Errorf("a timerd_watermark_broadcasts_total = %v, want 100", got)
	}
	// Leave sends what is unsent and pushes the state before leaving.
	for id := int64(1000); id < 1100; id++ {
		if err := a.Announce(id, slot, 1); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := a.Leave(ctx); err != nil {
		t.Fatalf("a.Leave: %v", err)
	}
	if q := len(a.unsent); q != 0 {
		t.Errorf("a left with %d watermarks unsent, want 0", q)
	}
	// Leave pushed a's state to its peers over TCP. A peer merges it just after it has
	// answered with its own, so it may lag Leave's return by moments, not by a gossip round.
	for _, n := range []*Cluster{b, c} {
		eventually(t, 5*time.Second, n.Name()+" has a's last watermarks", func() bool {
			for id := int64(1000); id < 1100; id++ {
				if _, _, ok := n.Watermark(id); !ok {
					return false
				}
			}
			return true
		})
	}
}

// Many watermarks announced at once go out in several packets, none larger than
// memberlist's UDP buffer with encryption, and all arrive; a node alone queues nothing.
func TestAnnouncedWatermarksArriveInPackets(t *testing.T) {
	key := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, 32))
	cfgA, cfgB := testConfig("a"), testConfig("b")
	cfgA.GossipKey, cfgB.GossipKey = key, key
	a, _ := start(t, cfgA)
	if err := a.Announce(1, time.Now(), 1); err != nil {
		t.Fatal(err)
	}
	if n := len(a.unsent); n != 0 {
		t.Errorf("a alone has %d watermarks unsent, want 0", n)
	}
	cfgB.Join = []string{a.LocalAddr()}
	b, _ := start(t, cfgB)
	eventually(t, 20*time.Second, "a sees b", func() bool { return viewHas(a, 2, "b") })
	if size, limit := headerLen+a.perPacket*recordLen, testMemberlist().UDPBufferSize-packetOverhead; size > limit || a.perPacket < 40 {
		t.Errorf("a packet of %d records is %d bytes, want at least 40 records and at most %d bytes", a.perPacket, size, limit)
	}
	const n = 2000 // ~37 packets
	slot := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	for id := int64(10); id < 10+n; id++ {
		if err := a.Announce(id, slot, uint64(id)); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, 10*time.Second, "b has all of a's watermarks", func() bool {
		for id := int64(10); id < 10+n; id++ {
			if _, c, ok := b.Watermark(id); !ok || c != uint64(id) {
				return false
			}
		}
		return true
	})
	if got := testutil.ToFloat64(a.met.dropped.WithLabelValues(dropSendFailed)); got != 0 {
		t.Errorf("dropped{reason=send_failed} = %v, want 0", got)
	}
}

// Sync brings a peer's watermarks that gossip did not (here: recorded without a broadcast)
// in one exchange, both ways, and counts the exchange.
func TestSyncPullsWhatGossipMissed(t *testing.T) {
	a, _ := start(t, testConfig("a"))
	b, _ := start(t, testConfig("b", a.LocalAddr()))
	c, _ := start(t, testConfig("c", a.LocalAddr()))
	eventually(t, 20*time.Second, "b sees a and c", func() bool { return viewHas(b, 3, "a", "c") })
	slot := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC).UnixNano()
	for id := int64(1); id <= 500; id++ {
		a.table.merge(id, slot, 1)     // a fired 1..500
		c.table.merge(id+500, slot, 2) // c fired 501..1000
	}
	b.table.merge(2000, slot, 3)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	peers, reached, err := b.Sync(ctx)
	if peers != 2 || reached != 2 || err != nil {
		t.Fatalf("b.Sync = %d peers, %d reached, %v; want 2, 2, nil", peers, reached, err)
	}
	for id := int64(1); id <= 1000; id++ {
		if _, _, ok := b.Watermark(id); !ok {
			t.Fatalf("after Sync b.Watermark(%d) unknown, want the peers' watermark", id)
		}
	}
	// The peers merge b's just after they answered (memberlist's order): moments later.
	for _, peer := range []*Cluster{a, c} {
		eventually(t, 5*time.Second, peer.Name()+" has b's watermark", func() bool {
			_, n, ok := peer.Watermark(2000)
			return ok && n == 3
		})
	}
	if got := testutil.ToFloat64(b.met.syncs); got != 1 {
		t.Errorf("timerd_watermark_syncs_total = %v, want 1", got)
	}
	if got := testutil.ToFloat64(b.met.syncFailures); got != 0 {
		t.Errorf("timerd_watermark_sync_failures_total = %v, want 0", got)
	}

	// A peer that is gone without memberlist knowing yet fails the sync; it is counted.
	if err := c.Shutdown(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel = context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if peers, reached, err := b.Sync(ctx); peers != 2 || reached != 1 || err == nil {
		t.Errorf("b.Sync with c shut down = %d peers, %d reached, %v; want 2, 1 and an error", peers, reached, err)
	}
	if got := testutil.ToFloat64(b.met.syncFailures); got != 1 {
		t.Errorf("timerd_watermark_sync_failures_total = %v, want 1", got)
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
	eventually(t, 20*time.Second, "a sees c", func() bool { return viewHas(a, 2, "a", "c") })
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
	defer c.Shutdown()
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
	select {
	case <-c.Decided():
	default:
		t.Errorf("Decided() not closed after Join")
	}
	if !c.Owns(1) || !c.Owns(987654) {
		t.Errorf("alone node does not own every rule")
	}
	if v := c.View(); !v.SettleAt.Equal(v.Changed) {
		t.Errorf("alone node's first view settles %v after the change, want at once", v.SettleAt.Sub(v.Changed))
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
	defer c.Shutdown()
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
	eventually(t, 20*time.Second, "self and b see each other", func() bool {
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
	defer c.Shutdown()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if _, err := c.Join(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Join with a cancelled ctx = %v, want DeadlineExceeded", err)
	}
	select {
	case <-c.Decided():
		t.Errorf("Decided() closed after a cancelled Join")
	default:
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
	t.Cleanup(func() { a.Shutdown() })
	if _, err := a.Join(context.Background()); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "b joins a in the background", func() bool { return viewHas(b, 2, "a", "b") })
	eventually(t, 20*time.Second, "a sees b", func() bool { return viewHas(a, 2, "a", "b") })
}

func TestMalformedMessagesDropped(t *testing.T) {
	a, _ := start(t, testConfig("a"))
	b, _ := start(t, testConfig("b", a.LocalAddr()))
	eventually(t, 20*time.Second, "a sees b", func() bool { return viewHas(a, 2, "b") })
	good := appendRecord([]byte{wireVersion, kindBroadcast}, 5, 1000, 1)
	tests := []struct {
		name   string
		msg    []byte
		reason string
	}{
		{"empty", nil, dropMalformed},
		{"one byte", []byte{wireVersion}, dropMalformed},
		{"future version", append([]byte{9}, good[1:]...), dropVersion},
		{"state kind in a broadcast", append([]byte{wireVersion, kindState}, good[2:]...), dropMalformed},
		{"partial record", good[:len(good)-1], dropMalformed},
		{"zero rule id", appendRecord([]byte{wireVersion, kindBroadcast}, 0, 1, 1), dropInvalid},
		{"negative rule id in second record", appendRecord(good, -3, 1, 1), dropInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := testutil.ToFloat64(b.met.dropped.WithLabelValues(tt.reason))
			(&delegate{b}).NotifyMsg(tt.msg)
			if got := testutil.ToFloat64(b.met.dropped.WithLabelValues(tt.reason)) - before; got != 1 {
				t.Errorf("NotifyMsg(%x): dropped{reason=%q} += %v, want 1", tt.msg, tt.reason, got)
			}
			if _, _, ok := b.Watermark(5); ok {
				t.Errorf("NotifyMsg(%x) stored a watermark from a bad message", tt.msg)
			}
		})
	}
	// The same over the network: a peer's garbage is counted, a good message is kept.
	var bNode *memberlist.Node
	for _, n := range a.ml.Members() {
		if n.Name == "b" {
			bNode = n
		}
	}
	before := testutil.ToFloat64(b.met.dropped.WithLabelValues(dropVersion))
	if err := a.ml.SendReliable(bNode, []byte{0xff, 0xff, 0xff}); err != nil {
		t.Fatal(err)
	}
	if err := a.ml.SendReliable(bNode, good); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "b counts the garbage and keeps the good message", func() bool {
		_, _, ok := b.Watermark(5)
		return ok && testutil.ToFloat64(b.met.dropped.WithLabelValues(dropVersion)) == before+1
	})
	// Bad push/pull state is counted and changes nothing either.
	malformed := testutil.ToFloat64(b.met.dropped.WithLabelValues(dropMalformed))
	(&delegate{b}).MergeRemoteState(appendRecord([]byte{wireVersion, kindState}, 6, 1000, 1)[:headerLen+recordLen-1], false)
	if got := testutil.ToFloat64(b.met.dropped.WithLabelValues(dropMalformed)) - malformed; got != 1 {
		t.Errorf("malformed push/pull state: dropped{reason=malformed} += %v, want 1", got)
	}
	if _, _, ok := b.Watermark(6); ok {
		t.Errorf("malformed push/pull state stored a watermark")
	}
}

func TestAnnounceRejectsBadInput(t *testing.T) {
	c, _ := start(t, testConfig("a"))
	tests := []struct {
		name string
		id   int64
		slot time.Time
	}{
		{"zero id", 0, time.Now()},
		{"negative id", -1, time.Now()},
		{"zero time", 1, time.Time{}},
		{"year 3000", 1, time.Date(3000, 1, 1, 0, 0, 0, 0, time.UTC)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := c.Announce(tt.id, tt.slot, 1); !errors.Is(err, ErrInvalidWatermark) {
				t.Errorf("Announce(%d, %v) = %v, want ErrInvalidWatermark", tt.id, tt.slot, err)
			}
		})
	}
}

func TestMetricsPerNode(t *testing.T) {
	regA, regB := prometheus.NewPedanticRegistry(), prometheus.NewPedanticRegistry()
	cfgA := testConfig("a")
	cfgA.Registerer = regA
	a, _ := start(t, cfgA)
	cfgB := testConfig("b", a.LocalAddr())
	cfgB.Registerer = regB
	start(t, cfgB)
	eventually(t, 20*time.Second, "a sees b", func() bool { return viewHas(a, 2, "b") })
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
		{"negative settle", Config{NodeName: "n", SettleDelay: -1}, "SettleDelay"},
		{"key not base64", Config{NodeName: "n", GossipKey: "!!!"}, "GossipKey"},
		{"key of 10 bytes", Config{NodeName: "n", GossipKey: "AAECAwQFBgcICQ=="}, "GossipKey"},
		{"ring replication 1", Config{NodeName: "n", Ring: RingConfig{ReplicationFactor: 1}}, "Ring"},
		{"negative capacity", Config{NodeName: "n", WatermarkCapacity: -1}, "WatermarkCapacity"},
		{"state too large", Config{NodeName: "n", StateMaxBytes: 64 << 20}, "StateMaxBytes"},
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
