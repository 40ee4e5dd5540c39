package cluster

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/timerd/timerd/test/testkit"
)

// ownsAny reports whether c owns any of the first ruleIDs rule ids.
func ownsAny(c *Cluster) bool {
	for id := int64(1); id <= ruleIDs; id++ {
		if c.Owns(id) {
			return true
		}
	}
	return false
}

func hasQuorum(c *Cluster, members int) bool {
	v := c.View()
	return v.Quorum && len(v.Members) == members
}

// A node counts a quorum of Expect: alone it owns nothing, with one peer (2 of 3) it owns its
// share, and when the peer leaves it owns nothing again.
func TestQuorumFollowsMembers(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	cfgA := testConfig("a")
	cfgA.Expect = 3
	cfgA.Registerer = reg
	a, alog := start(t, cfgA)
	v := a.View()
	if v.Quorum || v.Expect != 3 || v.QuorumSize() != 2 || len(v.Members) != 1 || ownsAny(a) {
		t.Fatalf("a alone with Expect 3: view quorum %v expect %d quorum size %d members %v owns any %v; want no quorum of 2 of 3, nothing owned",
			v.Quorum, v.Expect, v.QuorumSize(), v.Members, ownsAny(a))
	}
	if !strings.Contains(alog.String(), "fires nothing until peers join it") {
		t.Errorf("a's log does not say it waits for peers:\n%s", alog)
	}
	gauges := func(quorum int) string {
		return `
# HELP timerd_cluster_expected_members N, the members a quorum (N/2+1) is counted of: TIMERD_EXPECT, or the most members this node has seen in one view when more.
# TYPE timerd_cluster_expected_members gauge
timerd_cluster_expected_members 3
# HELP timerd_cluster_quorum 1 when this node's view holds a quorum of the expected members (it fires its share), else 0.
# TYPE timerd_cluster_quorum gauge
timerd_cluster_quorum ` + strconv.Itoa(quorum) + "\n"
	}
	if err := testutil.GatherAndCompare(reg, strings.NewReader(gauges(0)), "timerd_cluster_quorum", "timerd_cluster_expected_members"); err != nil {
		t.Errorf("a alone: %v", err)
	}

	cfgB := testConfig("b", a.LocalAddr())
	cfgB.Expect = 3
	b, _ := start(t, cfgB)
	for _, n := range []*Cluster{a, b} {
		testkit.Eventually(t, 20*time.Second, n.Name()+" has a quorum with 2 of 3", func() bool { return hasQuorum(n, 2) })
	}
	owners(t, a, b) // every rule owned by exactly one of them
	if err := testutil.GatherAndCompare(reg, strings.NewReader(gauges(1)), "timerd_cluster_quorum", "timerd_cluster_expected_members"); err != nil {
		t.Errorf("a with b: %v", err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := b.Leave(ctx); err != nil {
		t.Fatalf("b.Leave: %v", err)
	}
	testkit.Eventually(t, 20*time.Second, "a loses its quorum when b leaves", func() bool {
		v := a.View()
		return !v.Quorum && len(v.Members) == 1
	})
	if ownsAny(a) {
		t.Errorf("a owns rules without a quorum")
	}
	// The view is published before its log line is written: wait for the line.
	testkit.Eventually(t, 5*time.Second, "a's log says it lost the quorum", func() bool {
		return strings.Contains(alog.String(), "QUORUM LOST")
	})
	if err := testutil.GatherAndCompare(reg, strings.NewReader(gauges(0)), "timerd_cluster_quorum", "timerd_cluster_expected_members"); err != nil {
		t.Errorf("a after b left: %v", err)
	}
}

// A node that sees more members than Expect counts a quorum of the most it has seen; members
// that leave gracefully (a scale-in) are taken off it again.
func TestQuorumOfMoreMembersThanExpected(t *testing.T) {
	var nodes []*Cluster
	var logs []*logBuf
	for i, name := range []string{"a", "b", "c", "d"} {
		cfg := testConfig(name)
		if i > 0 {
			cfg.Join = []string{nodes[0].LocalAddr()}
		}
		cfg.Expect = 2
		n, lb := start(t, cfg)
		nodes, logs = append(nodes, n), append(logs, lb)
	}
	for _, n := range nodes {
		testkit.Eventually(t, 20*time.Second, n.Name()+" sees 4 members", func() bool { return hasQuorum(n, 4) })
	}
	if v := nodes[0].View(); v.Expect != 4 || v.QuorumSize() != 3 {
		t.Errorf("a sees 4 with Expect 2: view Expect %d quorum size %d, want 4 and 3", v.Expect, v.QuorumSize())
	}
	if !strings.Contains(logs[0].String(), "sees more members than TIMERD_EXPECT") {
		t.Errorf("a's log does not warn that it sees more members than expected:\n%s", logs[0])
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, n := range nodes[2:] {
		if err := n.Leave(ctx); err != nil {
			t.Fatalf("%s.Leave: %v", n.Name(), err)
		}
	}
	for _, n := range nodes[:2] {
		testkit.Eventually(t, 20*time.Second, n.Name()+" counts a quorum of 2 once c and d left gracefully", func() bool {
			v := n.View()
			return len(v.Members) == 2 && v.Quorum && v.Expect == 2
		})
	}
}

// quorum, step by step: the views a node goes through, the members gone since the previous
// one (left gracefully or not), and the N and quorum it counts.
func TestQuorumCount(t *testing.T) {
	type step struct {
		members []string
		left    []string // gone since the previous view after a leave intent; the others gone are dead
		expect  int      // N
		quorum  bool
	}
	tests := []struct {
		name   string
		expect int
		steps  []step
	}{
		{"expect 1 needs no quorum", 1, []step{
			{members: []string{"a"}, expect: 1, quorum: true},
			{members: []string{"a", "b", "c"}, expect: 1, quorum: true},
			{members: []string{"a"}, expect: 1, quorum: true},
		}},
		{"2 of 3", 3, []step{
			{members: []string{"a"}, expect: 3, quorum: false},
			{members: []string{"a", "b"}, expect: 3, quorum: true},
			{members: []string{"a", "b", "c"}, expect: 3, quorum: true},
			{members: []string{"a"}, expect: 3, quorum: false}, // b and c dead
			{members: []string{"a", "c"}, left: []string{"b"}, expect: 3, quorum: true},
		}},
		{"halves of more members than expected", 2, []step{
			{members: []string{"a", "b", "c", "d"}, expect: 4, quorum: true},
			{members: []string{"a", "b"}, expect: 4, quorum: false}, // c and d cut off: dead to a
			{members: []string{"a", "b", "c", "d"}, expect: 4, quorum: true},
		}},
		{"graceful leaves lower N, deaths do not", 3, []step{
			{members: []string{"a", "b", "c", "d", "e"}, expect: 5, quorum: true},
			{members: []string{"a", "b", "c", "d"}, left: []string{"e"}, expect: 4, quorum: true},
			{members: []string{"a", "b"}, expect: 4, quorum: false}, // c and d dead: still counted
			{members: []string{"a", "b", "c", "d"}, expect: 4, quorum: true},
			{members: []string{"a", "b"}, left: []string{"d"}, expect: 3, quorum: true}, // c dead, d left
			{members: []string{"a", "b", "c", "d"}, expect: 4, quorum: true},            // d back
		}},
		{"never below expect", 3, []step{
			{members: []string{"a", "b", "c"}, expect: 3, quorum: true},
			{members: []string{"a"}, left: []string{"b", "c"}, expect: 3, quorum: false},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &Cluster{cfg: Config{NodeName: "a", Expect: tt.expect}.withDefaults(), members: map[string]*memberState{}}
			c.log = c.cfg.Logger
			cur := &View{Self: "a", Expect: tt.expect}
			for i, st := range tt.steps {
				for _, name := range cur.Members {
					if !slices.Contains(st.members, name) {
						state := StateDead
						if slices.Contains(st.left, name) {
							state = StateLeft
						}
						c.members[name] = &memberState{state: state}
					}
				}
				for _, name := range st.members {
					c.members[name] = &memberState{state: StateAlive}
				}
				v := &View{Self: "a", Members: st.members}
				c.quorum(v, cur)
				if v.Expect != st.expect || v.Quorum != st.quorum {
					t.Errorf("step %d, members %v (left %v): N %d quorum %v, want N %d quorum %v",
						i, st.members, st.left, v.Expect, v.Quorum, st.expect, st.quorum)
				}
				cur = v
			}
		})
	}
}

// fakeDNS answers Config.Resolve from a record set the test changes.
type fakeDNS struct {
	mu      sync.Mutex
	records map[string][]string
}

func (d *fakeDNS) set(host string, addrs ...string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.records[host] = slices.Clone(addrs)
}

func (d *fakeDNS) resolve(_ context.Context, host string) ([]string, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	addrs, ok := d.records[host]
	if !ok {
		return nil, errors.New("no such host")
	}
	return slices.Clone(addrs), nil
}

// newNodes creates (without joining) nodes named names with cfg's settings, shut down at the end.
func newNodes(t *testing.T, cfg func(name string) Config, names ...string) []*Cluster {
	t.Helper()
	var out []*Cluster
	for _, name := range names {
		c, err := New(cfg(name))
		if err != nil {
			t.Fatalf("New(%s): %v", name, err)
		}
		t.Cleanup(func() {
			if err := c.Shutdown(); err != nil {
				t.Errorf("Shutdown(%s): %v", name, err)
			}
		})
		out = append(out, c)
	}
	return out
}

// joinAll calls Join on every node at once (nodes started together) and waits for them all.
func joinAll(t *testing.T, nodes ...*Cluster) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	errs := make(chan error, len(nodes))
	for _, n := range nodes {
		go func() {
			_, err := n.Join(ctx)
			errs <- err
		}()
	}
	for range nodes {
		if err := <-errs; err != nil {
			t.Fatalf("Join: %v", err)
		}
	}
}

func addrs(nodes ...*Cluster) []string {
	var out []string
	for _, n := range nodes {
		out = append(out, n.LocalAddr())
	}
	return out
}

// Two islands of one cluster, {a,b} and {c,d}, formed while their DNS names listed only their
// own side, merge once the names list every node: the background join never stops while a node
// sees fewer members than it expects.
func TestIslandsMerge(t *testing.T) {
	west, east := &fakeDNS{records: map[string][]string{}}, &fakeDNS{records: map[string][]string{}}
	cfg := func(dns *fakeDNS) func(string) Config {
		return func(name string) Config {
			c := testConfig(name, "timerd.test") // no port: the bind port, unless the record has one
			c.Expect = 4
			c.RejoinInterval = 100 * time.Millisecond
			c.Resolve = dns.resolve
			return c
		}
	}
	ab := newNodes(t, cfg(west), "a", "b")
	cd := newNodes(t, cfg(east), "c", "d")
	west.set("timerd.test", addrs(ab...)...)
	east.set("timerd.test", addrs(cd...)...)
	joinAll(t, append(slices.Clone(ab), cd...)...)
	for _, n := range ab {
		testkit.Eventually(t, 20*time.Second, n.Name()+" sees its island {a,b}", func() bool { return viewHas(n, 2, "a", "b") })
	}
	for _, n := range cd {
		testkit.Eventually(t, 20*time.Second, n.Name()+" sees its island {c,d}", func() bool { return viewHas(n, 2, "c", "d") })
	}
	all := append(slices.Clone(ab), cd...)
	for _, n := range all {
		if v := n.View(); v.Quorum || ownsAny(n) {
			t.Fatalf("%s in an island of 2 of 4 has a quorum (%v) or owns rules (%v)", n.Name(), v.Quorum, ownsAny(n))
		}
	}

	begin := time.Now()
	west.set("timerd.test", addrs(all...)...)
	east.set("timerd.test", addrs(all...)...)
	for _, n := range all {
		testkit.Eventually(t, 20*time.Second, n.Name()+" sees the 4 nodes with a quorum", func() bool { return hasQuorum(n, 4) })
	}
	t.Logf("islands merged %v after the names listed every node (RejoinInterval %v)", time.Since(begin).Round(time.Millisecond), 100*time.Millisecond)
	owners(t, all...)
}

// Nodes whose join list is one DNS name that first resolves to the asking node alone (each pod
// of a headless service sees only itself while the others are not published yet) run alone
// after the join timeout (Expect 1), and merge once the name resolves to all of them: the join
// list's size, not only Expect, says how many members a node should see.
func TestJoinNameResolvingToSelfFirstMerges(t *testing.T) {
	dns := &fakeDNS{records: map[string][]string{}}
	var mu sync.Mutex
	self := map[string]string{} // node name -> its address, until the name lists every node
	nodes := newNodes(t, func(name string) Config {
		c := testConfig(name, "svc.test:7946") // the records' ports win
		c.JoinTimeout = 300 * time.Millisecond
		c.RejoinInterval = 100 * time.Millisecond
		c.Resolve = func(ctx context.Context, host string) ([]string, error) {
			mu.Lock()
			addr, ok := self[name]
			mu.Unlock()
			if ok {
				return []string{addr}, nil
			}
			return dns.resolve(ctx, host)
		}
		return c
	}, "a", "b", "c")
	mu.Lock()
	for _, n := range nodes {
		self[n.Name()] = n.LocalAddr()
	}
	mu.Unlock()
	joinAll(t, nodes...)
	for _, n := range nodes {
		if v := n.View(); len(v.Members) != 1 || !v.Quorum {
			t.Fatalf("%s with a name resolving to itself: members %v quorum %v, want alone (Expect 1: no quorum needed)", n.Name(), v.Members, v.Quorum)
		}
		if p := n.lastJoinErr.Load(); p == nil || !errors.Is(*p, errOnlySelf) {
			t.Errorf("%s: last join error %v, want errOnlySelf", n.Name(), p)
		}
	}
	begin := time.Now()
	dns.set("svc.test", addrs(nodes...)...)
	mu.Lock()
	clear(self)
	mu.Unlock()
	for _, n := range nodes {
		testkit.Eventually(t, 20*time.Second, n.Name()+" sees 3 members", func() bool { return viewHas(n, 3, "a", "b", "c") })
	}
	t.Logf("merged %v after the name resolved to every node", time.Since(begin).Round(time.Millisecond))
	owners(t, nodes...)
}

// resolveJoin turns the join list into the addresses memberlist names members by.
func TestResolveJoin(t *testing.T) {
	dns := &fakeDNS{records: map[string][]string{
		"svc":   {"10.0.0.2", "10.0.0.3", "::ffff:10.0.0.4"},
		"srv":   {"10.0.0.5:9000", "[fd00::1]:9001"},
		"empty": {},
		"bad":   {"not-an-ip"},
	}}
	tests := []struct {
		name    string
		join    []string
		want    []string
		wantErr string
	}{
		{"IPs with and without a port", []string{"10.0.0.1:7000", "10.0.0.1", "[::1]"}, []string{"10.0.0.1:7000", "10.0.0.1:7946", "[::1]:7946"}, ""},
		{"a name and its port", []string{"svc:7001"}, []string{"10.0.0.2:7001", "10.0.0.3:7001", "10.0.0.4:7001"}, ""},
		{"a name without a port takes the bind port", []string{"svc"}, []string{"10.0.0.2:7946", "10.0.0.3:7946", "10.0.0.4:7946"}, ""},
		{"records with ports keep them", []string{"srv:1"}, []string{"10.0.0.5:9000", "[fd00::1]:9001"}, ""},
		{"duplicates once", []string{"10.0.0.2:7946", "svc"}, []string{"10.0.0.2:7946", "10.0.0.3:7946", "10.0.0.4:7946"}, ""},
		{"a failing name keeps the others", []string{"nxdomain", "10.0.0.9"}, []string{"10.0.0.9:7946"}, "resolve nxdomain: no such host"},
		{"no address", []string{"empty"}, nil, "resolve empty: no address"},
		{"not an IP", []string{"bad"}, nil, `resolve bad: "not-an-ip" is not an IP address`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := Config{NodeName: "n", Join: tt.join, Resolve: dns.resolve}.withDefaults()
			c := &Cluster{cfg: cfg, bindPort: 7946, joinCtx: context.Background()}
			got, err := c.resolveJoin()
			if !slices.Equal(got, tt.want) {
				t.Errorf("resolveJoin(%q) = %q, want %q", tt.join, got, tt.want)
			}
			if (err == nil) != (tt.wantErr == "") || err != nil && !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("resolveJoin(%q) error %v, want %q", tt.join, err, tt.wantErr)
			}
		})
	}
}
