package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/timerd/timerd/cluster"
	"github.com/timerd/timerd/cluster/protocol"
	"github.com/timerd/timerd/ingest/apiserver"
	"github.com/timerd/timerd/ingest/pubsub"
	"github.com/timerd/timerd/scheduler"
	"github.com/timerd/timerd/store"
	"github.com/timerd/timerd/test/testkit"
)

// clusterSystem is an API server whose metrics are on a registry of the
// test's, and nodes that join one another.
type clusterSystem struct {
	*system
	apiReg *prometheus.Registry
	logs   *lockedBuffer // the nodes' logs, shown when a test fails
}

// dump logs the lines about membership and placement.
func (l *lockedBuffer) dump(t *testing.T) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, line := range strings.Split(l.b.String(), "\n") {
		if strings.Contains(line, "ring view") || strings.Contains(line, "placed") || strings.Contains(line, "left") ||
			strings.Contains(line, "partitions held") || strings.Contains(line, "partitions released") ||
			strings.Contains(line, "leav") || strings.Contains(line, "level=WARN") || strings.Contains(line, "level=ERROR") {
			t.Log(line)
		}
	}
}

func startClusterAPI(t *testing.T) *clusterSystem {
	t.Helper()
	bus := pubsub.NewBus()
	reg := prometheus.NewRegistry()
	url := serveAPI(t, apiserver.Config{DataDir: t.TempDir(), Publisher: bus, Registerer: reg})
	cs := &clusterSystem{system: &system{t: t, bus: bus, apiURL: url}, apiReg: reg, logs: &lockedBuffer{}}
	t.Cleanup(func() {
		if t.Failed() {
			cs.logs.dump(t)
		}
	})
	return cs
}

func localMemberlist() *memberlist.Config {
	mc := memberlist.DefaultLocalConfig()
	mc.LogOutput = nil
	return mc
}

func clusterConfig(join ...string) *cluster.Config {
	return &cluster.Config{
		BindAddr:    "127.0.0.1:0",
		Join:        join,
		JoinTimeout: 3 * time.Second,
		Memberlist:  localMemberlist,
	}
}

// startClusterNode starts a node named name with its own store, subscribed
// to the API's bus, in a cluster joining join; waitReady waits for /readyz.
func (s *clusterSystem) startClusterNode(name string, cc *cluster.Config, waitReady bool, opts ...func(*Config)) *runningNode {
	t := s.t
	t.Helper()
	lifecycle, unsubscribe := s.bus.Subscribe()
	cfg := Config{DataDir: t.TempDir(), APIURL: s.apiURL, HTTPAddr: "127.0.0.1:0", NodeName: name,
		ReconcileInterval: -1, Lifecycle: lifecycle, Cluster: cc,
		Logger: slog.New(slog.NewTextHandler(s.logs, nil)).With("node", name)}
	for _, o := range opts {
		o(&cfg)
	}
	n, err := New(cfg)
	if err != nil {
		unsubscribe()
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	rn := &runningNode{Node: n, cancel: cancel, done: make(chan error, 1)}
	go func() {
		rn.done <- n.Run(ctx)
		unsubscribe()
	}()
	t.Cleanup(func() { rn.stop(t) })
	if waitReady {
		testkit.Eventually(t, 15*time.Second, name+" ready", func() bool { return get(t, "http://"+n.HTTPAddr()+"/readyz") == 200 })
	}
	return rn
}

// runners reports, for each rule id, how many of nodes run it.
func runners(nodes []*runningNode, ids []int64) map[int64]int {
	out := make(map[int64]int, len(ids))
	for _, id := range ids {
		out[id] = 0
		for _, n := range nodes {
			if _, ok := n.engine.Watermark(id); ok {
				out[id]++
			}
		}
	}
	return out
}

// ownedOnce reports whether every rule runs on exactly one of nodes, and
// each node runs exactly the rules its view says it owns.
func ownedOnce(nodes []*runningNode, ids []int64) bool {
	for id, c := range runners(nodes, ids) {
		if c != 1 {
			return false
		}
		for _, n := range nodes {
			_, ok := n.engine.Watermark(id)
			if n.cl.Owns(id) != ok {
				return false
			}
		}
	}
	return true
}

func viewSize(n *runningNode) int { return len(n.cl.View().Members) }

// allEvents lists every event the API stored.
func (s *clusterSystem) allEvents() []event {
	s.t.Helper()
	var all []event
	for page := 1; ; page++ {
		resp, err := http.Get(fmt.Sprintf("%s/api/v1/events?page=%d&page_size=1000", s.apiURL, page))
		if err != nil {
			s.t.Fatal(err)
		}
		var out struct {
			Items      []event `json:"items"`
			Pagination struct {
				HasNext bool `json:"has_next"`
			} `json:"pagination"`
		}
		err = json.NewDecoder(resp.Body).Decode(&out)
		resp.Body.Close()
		if err != nil {
			s.t.Fatal(err)
		}
		all = append(all, out.Items...)
		if !out.Pagination.HasNext || len(out.Items) == 0 {
			return all
		}
	}
}

// slotsByRule parses the events' idempotency keys, rule_id:slot_unix_nanos.
func slotsByRule(t *testing.T, evs []event) map[int64][]int64 {
	t.Helper()
	out := map[int64][]int64{}
	for _, e := range evs {
		rule, slot, ok := strings.Cut(e.IdempotencyKey, ":")
		id, err1 := strconv.ParseInt(rule, 10, 64)
		ns, err2 := strconv.ParseInt(slot, 10, 64)
		if !ok || err1 != nil || err2 != nil {
			t.Fatalf("event idempotency key %q: want rule_id:slot_nanos", e.IdempotencyKey)
		}
		out[id] = append(out[id], ns)
	}
	return out
}

// TestClusterHandOff runs three nodes on one API: 300 interval rules of
// 1 s are split between them, each owned by exactly one; a node joining
// and a node leaving move rules with no slot missing and none fired twice.
func TestClusterHandOff(t *testing.T) {
	const rules = 300
	sys := startClusterAPI(t)
	a := sys.startClusterNode("a", clusterConfig(), true)
	b := sys.startClusterNode("b", clusterConfig(a.cl.LocalAddr()), true)
	nodes := []*runningNode{a, b}
	testkit.Eventually(t, 30*time.Second, "a and b see each other", func() bool { return viewSize(a) == 2 && viewSize(b) == 2 })

	ids := make([]int64, 0, rules)
	for i := range rules {
		ids = append(ids, sys.createRule(fmt.Sprintf("h%03d", i), "core.intervaltimer", `{"interval":1}`))
	}
	// Each node stores the whole catalogue; each rule runs on one.
	testkit.Eventually(t, 30*time.Second, "a and b store every rule", func() bool {
		ca, _ := a.store.RuleCount()
		cb, _ := b.store.RuleCount()
		return ca == rules && cb == rules
	})
	testkit.Eventually(t, 30*time.Second, "every rule run by exactly one of a, b", func() bool { return ownedOnce(nodes, ids) })
	time.Sleep(2 * time.Second) // let them fire a couple of slots

	// Scale out: c joins with an empty store; it learns the catalogue by
	// reconcile and acquires its share from the holders.
	joinStart := time.Now()
	c := sys.startClusterNode("c", clusterConfig(a.cl.LocalAddr()), false)
	nodes = append(nodes, c)
	testkit.Eventually(t, 30*time.Second, "three members everywhere", func() bool {
		return viewSize(a) == 3 && viewSize(b) == 3 && viewSize(c) == 3
	})
	testkit.Eventually(t, 60*time.Second, "rules placed on three nodes", func() bool { return ownedOnce(nodes, ids) })
	joinTook := time.Since(joinStart)
	if got := c.engine.Len(); got < rules/6 || got > rules/2 {
		t.Errorf("c runs %d of %d rules after joining, want about a third", got, rules)
	}
	// The counters follow the engines' changes (a node counts once its engine changed).
	var moved, released float64
	counted := func() bool {
		moved = testCounter(t, c, "timerd_rules_adopted_total", "")
		released = testCounter(t, a, "timerd_rules_released_total", "") + testCounter(t, b, "timerd_rules_released_total", "")
		return moved == float64(c.engine.Len()) && released == moved
	}
	for deadline := time.Now().Add(5 * time.Second); !counted() && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
	}
	if !counted() {
		t.Errorf("scale out: c adopted %v, a and b released %v, c runs %d: want all equal", moved, released, c.engine.Len())
	}

	// Status lists the members and their share.
	st := a.Status()
	if len(st.Members) != 3 || st.Incarnation == "" || st.PartitionsHeld == 0 {
		t.Errorf("a's status: %d members, incarnation %q, %d partitions held; want 3 members, an incarnation, some partitions",
			len(st.Members), st.Incarnation, st.PartitionsHeld)
	}
	sum := 0
	for _, m := range st.Members {
		sum += m.RulesOwned
		var n *runningNode
		for _, x := range nodes {
			if x.cfg.NodeName == m.Name {
				n = x
			}
		}
		if n == nil || m.State != cluster.StateAlive || m.Self != (m.Name == "a") || m.RulesOwned != n.engine.Len() {
			t.Errorf("a's status member %+v: want alive, self only for a, rules_owned = its engine's", m)
		}
	}
	if sum != rules {
		t.Errorf("a's status: rules owned sum to %d, want %d", sum, rules)
	}
	time.Sleep(2 * time.Second)

	// Graceful leave: the peers adopt b's rules at once.
	t.Logf("API duplicates after the join: %v", counterValue(t, sys.apiReg, "timerd_api_events_duplicate_total"))
	bRules := b.engine.Len()
	leaveStart := time.Now()
	b.stop(t)
	nodes = []*runningNode{a, c}
	testkit.Eventually(t, 30*time.Second, "b's rules adopted by a and c", func() bool { return ownedOnce(nodes, ids) })
	leaveTook := time.Since(leaveStart)
	t.Logf("API duplicates after b left: %v", counterValue(t, sys.apiReg, "timerd_api_events_duplicate_total"))
	time.Sleep(2 * time.Second)
	a.stop(t) // c takes everything
	t.Logf("API duplicates after a left: %v", counterValue(t, sys.apiReg, "timerd_api_events_duplicate_total"))
	testkit.Eventually(t, 30*time.Second, "c runs every rule", func() bool { return c.engine.Len() == rules })
	time.Sleep(1500 * time.Millisecond)
	c.stop(t)

	var dupsAtNodes float64
	for _, n := range []*runningNode{a, b, c} {
		dupsAtNodes += testCounter(t, n, "timerd_fires_fenced_total", "")
	}
	dupsAtAPI := counterValue(t, sys.apiReg, "timerd_api_events_duplicate_total")
	if dupsAtAPI != 0 {
		t.Errorf("API dropped %v duplicate events: a graceful hand-off must repeat no slot", dupsAtAPI)
	}
	// Every rule's slots are consecutive: none missing across the changes.
	slots := slotsByRule(t, sys.allEvents())
	var events, gaps int
	for _, id := range ids {
		s := slots[id]
		events += len(s)
		slices.Sort(s)
		if len(s) < 5 {
			t.Errorf("rule %d: %d events, want at least 5", id, len(s))
			continue
		}
		for i := 1; i < len(s); i++ {
			if d := time.Duration(s[i] - s[i-1]); d != time.Second {
				gaps++
				if gaps <= 5 {
					t.Errorf("rule %d: slots %s then %s: %v apart, want 1s (owner %s)", id,
						time.Unix(0, s[i-1]).UTC().Format("15:04:05.000"), time.Unix(0, s[i]).UTC().Format("15:04:05.000"), d,
						a.cl.View().Owner(id))
				}
			}
		}
	}
	t.Logf("%d events of %d rules; join: rules placed %v after c started (c adopted %v); leave: b's %d rules adopted %v after its stop began; "+
		"duplicates dropped by the nodes %v, at the API %v; slot gaps %d",
		events, rules, joinTook.Round(time.Millisecond), moved, bRules, leaveTook.Round(time.Millisecond), dupsAtNodes, dupsAtAPI, gaps)
}

// counterValue is the value of the counter name (no labels) in reg.
func counterValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatalf("metric %s not found", name)
	return 0
}

// A node whose peers are unreachable is not ready and fires nothing until
// the join timeout has passed; then it runs alone.
func TestClusterJoinTimeoutGatesFiring(t *testing.T) {
	sys := startClusterAPI(t)
	sys.createRule("early", "core.intervaltimer", `{"interval":1}`)
	cc := clusterConfig("127.0.0.1:1") // nothing listens there
	cc.JoinTimeout = 1500 * time.Millisecond
	cc.RejoinInterval = -1
	start := time.Now()
	n := sys.startClusterNode("lonely", cc, false)
	for time.Since(start) < time.Second {
		if code := get(t, "http://"+n.HTTPAddr()+"/readyz"); code == 200 {
			t.Fatalf("/readyz 200 %v after start, before the join timeout", time.Since(start))
		}
		if n.engine.Len() != 0 || len(sys.events("early")) != 0 {
			t.Fatalf("rules run or fired %v after start, before the join timeout", time.Since(start))
		}
		time.Sleep(50 * time.Millisecond)
	}
	testkit.Eventually(t, 10*time.Second, "ready after the join timeout", func() bool { return get(t, "http://"+n.HTTPAddr()+"/readyz") == 200 })
	if took := time.Since(start); took < cc.JoinTimeout {
		t.Errorf("ready %v after start, before the join timeout %v", took, cc.JoinTimeout)
	}
	testkit.Eventually(t, 5*time.Second, "the alone node fires", func() bool { return len(sys.events("early")) >= 1 })
}

// The commit path of a clustered node (docs/protocol.md §6): a fire of a partition
// not held, or with the lease lapsed, is refused before the store (the engine tries
// again); a fire under the lease is committed pending, as its firer's at its epoch,
// and handed to the protocol for replication.
func TestCommitChecksLeaseAndHolding(t *testing.T) {
	n, err := New(Config{DataDir: t.TempDir(), APIURL: "http://127.0.0.1:1", ReconcileInterval: -1,
		Registry: prometheus.NewRegistry(), NodeName: "solo", Cluster: clusterConfig()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = n.cl.Shutdown()
		n.store.Close()
	})
	timer, err := scheduler.Parse("core.intervaltimer", json.RawMessage(`{"interval":1}`), 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := n.store.PutRule(store.Rule{ID: 1, Ref: "r1", TriggerRef: "core.intervaltimer",
		Params: json.RawMessage(`{"interval":1}`), UpdatedAt: time.Now()}, nil); err != nil {
		t.Fatal(err)
	}
	p := n.drv.partitionOf(1)
	self := protocol.Incarnation{Node: "solo", N: 9}
	epoch := protocol.Epoch{N: 3, Node: "solo"}
	slot := time.Now().Truncate(time.Second).UTC()
	fire := []scheduler.Fire{{RuleID: 1, Slot: slot, Count: 1, FiredAt: time.Now(), Timer: timer}}
	tests := []struct {
		name    string
		snap    memberSnap
		wantErr error
		pending int
	}{
		{"partition not held", memberSnap{self: self, held: map[int]protocol.Epoch{p + 1: epoch}, leaseUntil: bootNow() + time.Hour},
			errNotFireable, 0},
		{"lease lapsed", memberSnap{self: self, held: map[int]protocol.Epoch{p: epoch}, leaseUntil: bootNow() - time.Millisecond},
			errNotFireable, 0},
		{"held under a lease", memberSnap{self: self, held: map[int]protocol.Epoch{p: epoch}, leaseUntil: bootNow() + time.Hour},
			nil, 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			n.drv.snap.Store(&tc.snap)
			if err := n.commit(fire, nil); !errors.Is(err, tc.wantErr) {
				t.Fatalf("commit: %v, want %v", err, tc.wantErr)
			}
			pend, err := n.store.Pending()
			if err != nil || len(pend) != tc.pending {
				t.Fatalf("pending entries: %d (%v), want %d", len(pend), err, tc.pending)
			}
			if out, _ := n.store.OutboxLen(); out != 0 {
				t.Errorf("ready outbox entries: %d, want 0 (nothing is deliverable before it is replicated)", out)
			}
			if tc.pending == 0 {
				return
			}
			if ref := pend[0].Ref(); ref.Firer != self || ref.Rule != 1 || ref.Slot != slot.UnixNano() {
				t.Errorf("pending fire %+v, want rule 1 slot %v fired by %s", ref, slot, self)
			}
			select {
			case refs := <-n.drv.committed:
				if len(refs) != 1 || refs[0].Firer != self {
					t.Errorf("handed to the protocol: %+v, want the one fire by %s", refs, self)
				}
			default:
				t.Error("the committed fire was not handed to the protocol")
			}
		})
	}
}

// gaugeValue is the value of the gauge name (no labels) on node n.
func gaugeValue(t *testing.T, n *Node, name string) float64 {
	t.Helper()
	mfs, err := n.cfg.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatalf("gauge %s not found", name)
	return 0
}

// With Expect 3, one node of three fires nothing and is not ready; two of
// three fire every rule, each slot once; and when the second one stops, the
// first releases everything and fires nothing again.
func TestClusterQuorum(t *testing.T) {
	const rules = 30
	sys := startClusterAPI(t)
	expect3 := func(join ...string) *cluster.Config {
		cc := clusterConfig(join...)
		cc.Expect = 3
		return cc
	}
	a := sys.startClusterNode("a", expect3(), false)
	ids := make([]int64, 0, rules)
	for i := range rules {
		ids = append(ids, sys.createRule(fmt.Sprintf("q%02d", i), "core.intervaltimer", `{"interval":1}`))
	}
	testkit.Eventually(t, 15*time.Second, "a decided and stores every rule", func() bool {
		c, _ := a.store.RuleCount()
		return c == rules && a.cl.View().Version >= 1
	})
	// 1 of 3: nothing runs, nothing fires, never ready.
	readyURL := "http://" + a.HTTPAddr() + "/readyz"
	for end := time.Now().Add(2500 * time.Millisecond); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		if code := get(t, readyURL); code != http.StatusServiceUnavailable {
			t.Fatalf("a alone with Expect 3: /readyz %d, want 503", code)
		}
		if got := a.engine.Len(); got != 0 {
			t.Fatalf("a alone with Expect 3 runs %d rules, want 0", got)
		}
	}
	if evs := sys.allEvents(); len(evs) != 0 {
		t.Fatalf("a alone with Expect 3 delivered %d events, want none", len(evs))
	}
	st := a.Status()
	if st.Ready || st.Quorum || st.ExpectedMembers != 3 || st.SeenMembers != 1 || st.QuorumSize != 2 || st.RulesOwned != 0 {
		t.Errorf("a alone: status ready %v quorum %v expected %d seen %d quorum size %d rules owned %d; want not ready, no quorum, 3, 1, 2, 0",
			st.Ready, st.Quorum, st.ExpectedMembers, st.SeenMembers, st.QuorumSize, st.RulesOwned)
	}
	if q, e := gaugeValue(t, a.Node, "timerd_cluster_quorum"), gaugeValue(t, a.Node, "timerd_cluster_expected_members"); q != 0 || e != 3 {
		t.Errorf("a alone: timerd_cluster_quorum %v, timerd_cluster_expected_members %v; want 0 and 3", q, e)
	}

	// 2 of 3: a quorum; every rule runs on one of them and fires.
	b := sys.startClusterNode("b", expect3(a.cl.LocalAddr()), true)
	nodes := []*runningNode{a, b}
	testkit.Eventually(t, 15*time.Second, "a ready with b", func() bool { return get(t, readyURL) == http.StatusOK })
	testkit.Eventually(t, 15*time.Second, "every rule run by exactly one of a, b", func() bool { return ownedOnce(nodes, ids) })
	if a.engine.Len() == 0 || b.engine.Len() == 0 {
		t.Errorf("2 of 3: a runs %d rules, b %d; want both a share", a.engine.Len(), b.engine.Len())
	}
	testkit.Eventually(t, 15*time.Second, "every rule fired twice", func() bool {
		slots := slotsByRule(t, sys.allEvents())
		for _, id := range ids {
			if len(slots[id]) < 2 {
				return false
			}
		}
		return true
	})
	if st := a.Status(); !st.Quorum || st.SeenMembers != 2 || gaugeValue(t, a.Node, "timerd_cluster_quorum") != 1 {
		t.Errorf("a with b: status quorum %v seen %d, gauge %v; want a quorum of 2 seen", st.Quorum, st.SeenMembers,
			gaugeValue(t, a.Node, "timerd_cluster_quorum"))
	}

	// b stops: a is 1 of 3 again; its lease lapses and it fires nothing (it
	// keeps its partitions: nobody else may fire them either).
	b.stop(t)
	testkit.Eventually(t, 15*time.Second, "a's lease lapses", func() bool {
		out, _ := a.store.OutboxLen()
		return gaugeValue(t, a.Node, "timerd_lease") == 0 && !a.Status().Quorum && out == 0 &&
			get(t, readyURL) == http.StatusServiceUnavailable
	})
	before := len(sys.allEvents())
	for end := time.Now().Add(2500 * time.Millisecond); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		if gaugeValue(t, a.Node, "timerd_lease") != 0 {
			t.Fatal("a alone again holds a lease")
		}
	}
	if after := len(sys.allEvents()); after != before {
		t.Errorf("a alone again delivered %d events, want none", after-before)
	}
	if d := counterValue(t, sys.apiReg, "timerd_api_events_duplicate_total"); d != 0 {
		t.Errorf("API dropped %v repeated slots, want 0", d)
	}
	for id, s := range slotsByRule(t, sys.allEvents()) {
		if len(s) != len(slices.Compact(slices.Sorted(slices.Values(s)))) {
			t.Errorf("rule %d: a slot stored twice: %v", id, s)
		}
	}
}
