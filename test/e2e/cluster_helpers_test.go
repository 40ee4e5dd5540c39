package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/timerd/timerd/cluster"
	"github.com/timerd/timerd/test/testkit"
)

// clusterInt reads a count from the environment (def when unset).
func clusterInt(t *testing.T, name string, def int) int {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		t.Fatalf("%s=%q: want a positive integer", name, v)
	}
	return n
}

// gossipMember is one entry of /v1/status "members".
type gossipMember struct {
	Name       string `json:"name"`
	Addr       string `json:"addr"`
	State      string `json:"state"`
	Self       bool   `json:"self"`
	RulesOwned int    `json:"rules_owned"`
}

// clusterStatus is the part of /v1/status the cluster tests read.
type clusterStatus struct {
	Node        string         `json:"node"`
	Ready       bool           `json:"ready"`
	RulesKnown  int            `json:"rules_known"`
	RulesOwned  int            `json:"rules_owned"`
	OutboxDepth int            `json:"outbox_depth"`
	RingVersion uint64         `json:"ring_version"`
	Members     []gossipMember `json:"members"`
}

// self is the member entry of the node itself.
func (s clusterStatus) self() (gossipMember, bool) {
	for _, m := range s.Members {
		if m.Self {
			return m, true
		}
	}
	return gossipMember{}, false
}

// alive is the sorted names of the members the node sees alive.
func (s clusterStatus) alive() []string {
	var out []string
	for _, m := range s.Members {
		if m.State == cluster.StateAlive {
			out = append(out, m.Name)
		}
	}
	slices.Sort(out)
	return out
}

func (s clusterStatus) member(name string) (gossipMember, bool) {
	for _, m := range s.Members {
		if m.Name == name {
			return m, true
		}
	}
	return gossipMember{}, false
}

var shortHTTP = &http.Client{Timeout: 3 * time.Second}

// getStatus reads a node's /v1/status; an error (not a failed test) when
// the node is down or answers badly, so that it can be polled.
func getStatus(nodeURL string) (clusterStatus, error) { return nodeStatus[clusterStatus](nodeURL) }

// nodeStatus reads a node's /v1/status into T, a struct of the fields a test reads.
func nodeStatus[T any](nodeURL string) (T, error) {
	var st T
	resp, err := shortHTTP.Get(nodeURL + "/v1/status")
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return st, fmt.Errorf("GET %s/v1/status: status %d", nodeURL, resp.StatusCode)
	}
	err = json.NewDecoder(resp.Body).Decode(&st)
	return st, err
}

// readyz is the status code of a node's /readyz (0 when it does not answer).
func readyz(nodeURL string) int {
	resp, err := shortHTTP.Get(nodeURL + "/readyz")
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// tcluster is a test's cluster: one broker, one `timerd api`, and nodes
// started, stopped and killed by short name ("n1", …).
type tcluster struct {
	t     *testing.T
	b     *broker
	api   *attune
	extra []string // environment of every node (gossip key, timeouts)
	mu    sync.Mutex
	nodes map[string]*cnode
	// posts: every node posts its events through a proxy of its own, which records who
	// posted what (the API keeps nothing about the sender); a failed test lists the keys
	// posted more than once.
	posts   *postRecorder
	proxies map[string]string // by short name
}

// cnode is one node of a tcluster: its name, data directory and current
// process (nil when stopped).
type cnode struct {
	short, name, dir string
	bin              string // the timerd binary its next start runs (default timerdBin)
	ag               *agent
	gossip           string // the gossip host:port of the current process
	started          time.Time
}

func newTCluster(t *testing.T, extra ...string) *tcluster {
	t.Helper()
	b := newBroker(t)
	// Every node of a test cluster shares a gossip key, as a cluster must
	// (TIMERD_GOSSIP_INSECURE aside); extra may name another (the last wins).
	extra = append([]string{"TIMERD_GOSSIP_KEY=" + testGossipKey()}, extra...)
	c := &tcluster{t: t, b: b, api: startAttune(t, b), extra: extra, nodes: map[string]*cnode{},
		posts: &postRecorder{}, proxies: map[string]string{}}
	t.Cleanup(func() {
		if t.Failed() {
			c.reportRepeatedPosts()
		}
	})
	return c
}

// testGossipKey is a fresh AES-256 gossip key, base64.
func testGossipKey() string {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return base64.StdEncoding.EncodeToString(b)
}

// proxy is the API's URL as node short posts to it: its recording proxy.
func (c *tcluster) proxy(short string) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.posts == nil { // a tcluster built by hand
		c.posts, c.proxies = &postRecorder{}, map[string]string{}
	}
	u, ok := c.proxies[short]
	if !ok {
		u = c.posts.proxy(c.t, c.api.apiURL, short)
		c.proxies[short] = u
	}
	return u
}

// reportRepeatedPosts logs the idempotency keys posted more than once: by which
// nodes, with which fired_at (one fire delivered twice, or two fires of one slot).
func (c *tcluster) reportRepeatedPosts() {
	byKey := map[string][]apiPost{}
	for _, p := range c.posts.all() {
		byKey[p.key] = append(byKey[p.key], p)
	}
	keys := slices.Sorted(maps.Keys(byKey))
	shown := 0
	for _, k := range keys {
		ps := byKey[k]
		if len(ps) < 2 {
			continue
		}
		if shown++; shown > 30 {
			continue
		}
		var b strings.Builder
		for _, p := range ps {
			fmt.Fprintf(&b, "\n      by %s at %s: fired_at %s, status %d", p.node, p.at.Format(time.StampMilli),
				p.firedAt.Format(time.StampMilli), p.status)
		}
		c.t.Logf("key %s posted %d times:%s", k, len(ps), b.String())
	}
	if shown > 0 {
		c.t.Logf("%d keys posted more than once", shown)
	}
}

// node returns the node named short, creating its entry (and the cleanup of
// its queue) the first time.
func (c *tcluster) node(short string) *cnode {
	c.mu.Lock()
	defer c.mu.Unlock()
	n, ok := c.nodes[short]
	if !ok {
		n = &cnode{short: short, name: c.b.node(short), dir: c.t.TempDir()}
		c.b.cleanupQueue(c.t, n.name)
		c.nodes[short] = n
	}
	return n
}

// running is the running nodes, by short name.
func (c *tcluster) running() []*cnode {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*cnode
	for _, n := range c.nodes {
		if n.ag != nil {
			out = append(out, n)
		}
	}
	slices.SortFunc(out, func(a, b *cnode) int { return strings.Compare(a.short, b.short) })
	return out
}

// peers is the gossip addresses of the running nodes but short.
func (c *tcluster) peers(short string) []string {
	var out []string
	for _, n := range c.running() {
		if n.short != short {
			out = append(out, n.gossip)
		}
	}
	return out
}

// names is the full node names of shorts, sorted.
func (c *tcluster) names(shorts ...string) []string {
	out := make([]string, len(shorts))
	for i, s := range shorts {
		out[i] = c.node(s).name
	}
	slices.Sort(out)
	return out
}

// start starts node short joining join (none: it starts alone) with the
// extra environment, binds its gossip to 127.0.0.1:0, reads back the bound
// address from /v1/status and, if wait, waits for /readyz.
func (c *tcluster) start(short string, join []string, wait bool, extra ...string) *cnode {
	c.t.Helper()
	n, p := c.launch(short, join, extra...)
	c.started(n, p, wait, readyWithin)
	return n
}

// startJoining starts the nodes shorts at once, each joining join, and waits
// until each is ready: a cluster forms in the time of its slowest node, not of
// all of them one after the other (they learn of one another through join).
func (c *tcluster) startJoining(join []string, shorts ...string) {
	c.t.Helper()
	procs := make([]*proc, len(shorts))
	for i, s := range shorts {
		_, procs[i] = c.launch(s, join)
	}
	for i, s := range shorts {
		// Started one after the other, each had its own minute to get ready; together
		// they share the CPU (each loads the whole rule book): the same budget in all.
		c.started(c.node(s), procs[i], true, time.Duration(len(shorts))*readyWithin)
	}
}

// launch starts the process of node short (see start) without waiting for it.
func (c *tcluster) launch(short string, join []string, extra ...string) (*cnode, *proc) {
	c.t.Helper()
	n := c.node(short)
	env := append(c.api.agentEnv(c.b, n.name, n.dir), "TIMERD_BIND_ADDR=127.0.0.1:0", "ATTUNE_API_URL="+c.proxy(short))
	if len(join) > 0 {
		env = append(env, "TIMERD_JOIN="+strings.Join(join, ","))
	}
	env = append(append(env, c.extra...), extra...)
	bin := n.bin
	if bin == "" {
		bin = timerdBin
	}
	cmd := exec.Command(bin, "agent")
	cmd.Env = env
	n.started = time.Now()
	return n, startCmd(c.t, cmd)
}

// readyWithin bounds how long a started node may take to be ready.
const readyWithin = 60 * time.Second

// started waits until the launched process p of n serves /v1/status, records its
// gossip address and, if wait, waits for /readyz (up to within).
func (c *tcluster) started(n *cnode, p *proc, wait bool, within time.Duration) {
	c.t.Helper()
	ag := &agent{proc: p}
	ag.nodeURL = p.waitOutput(agentHTTPRe, 30*time.Second)[1]
	testkit.Eventually(c.t, 30*time.Second, n.short+": gossip address in /v1/status", func() bool {
		st, err := getStatus(ag.nodeURL)
		if err != nil {
			return false
		}
		me, ok := st.self()
		if ok && me.Addr != "" {
			n.gossip = me.Addr
		}
		return ok && me.Addr != ""
	})
	c.mu.Lock()
	n.ag = ag
	c.mu.Unlock()
	if wait {
		waitReady(c.t, ag.nodeURL, within)
	}
}

// stop sends node short SIGTERM and waits for its exit status 0.
func (c *tcluster) stop(short string) time.Duration {
	c.t.Helper()
	n := c.node(short)
	begin := time.Now()
	if err := n.ag.stop(40 * time.Second); err != nil {
		c.t.Errorf("%s after SIGTERM: %v, want exit status 0", short, err)
	}
	c.mu.Lock()
	n.ag = nil
	c.mu.Unlock()
	return time.Since(begin)
}

// kill kills node short with SIGKILL.
func (c *tcluster) kill(short string) {
	c.t.Helper()
	n := c.node(short)
	n.ag.kill()
	c.mu.Lock()
	n.ag = nil
	c.mu.Unlock()
}

// ringCounts is how many of ids each member owns in the default ring of
// members.
func ringCounts(t *testing.T, members []string, ids []int64) map[string]int {
	t.Helper()
	r, err := cluster.NewRing(cluster.RingConfig{}, members)
	if err != nil {
		t.Fatalf("NewRing(%v): %v", members, err)
	}
	out := map[string]int{}
	for _, id := range ids {
		out[r.Owner(id)]++
	}
	return out
}

// ringOwners maps each of ids to its owner in the default ring of members.
func ringOwners(t *testing.T, members []string, ids []int64) map[int64]string {
	t.Helper()
	r, err := cluster.NewRing(cluster.RingConfig{}, members)
	if err != nil {
		t.Fatalf("NewRing(%v): %v", members, err)
	}
	out := make(map[int64]string, len(ids))
	for _, id := range ids {
		out[id] = r.Owner(id)
	}
	return out
}

// waitStable waits until every running node is ready and sees exactly the
// running nodes alive, and, when want is given, owns want[its name] rules
// in its view and runs that many (adopted, not pending: only for rules
// that stay in the engine, as interval rules do); it returns the statuses
// by short name and how long it took.
func (c *tcluster) waitStable(what string, within time.Duration, want map[string]int) (map[string]clusterStatus, time.Duration) {
	c.t.Helper()
	begin := time.Now()
	var out map[string]clusterStatus
	testkit.EventuallyWhy(c.t, within, what+": cluster stable", func() (string, bool) {
		nodes := c.running()
		var names []string
		for _, n := range nodes {
			names = append(names, n.name)
		}
		slices.Sort(names)
		var why string
		ok := true
		out = map[string]clusterStatus{}
		for _, n := range nodes {
			st, err := getStatus(n.ag.nodeURL)
			switch me, _ := st.self(); {
			case err != nil:
				why, ok = fmt.Sprintf("%s: %v", n.short, err), false
			case !st.Ready:
				why, ok = n.short+" not ready", false
			case !slices.Equal(st.alive(), names):
				why, ok = fmt.Sprintf("%s sees alive %v, want %v", n.short, st.alive(), names), false
			case want != nil && me.RulesOwned != want[n.name]:
				why, ok = fmt.Sprintf("%s owns %d rules in its view, want %d", n.short, me.RulesOwned, want[n.name]), false
			case want != nil && st.RulesOwned != want[n.name]:
				why, ok = fmt.Sprintf("%s runs %d rules, want %d", n.short, st.RulesOwned, want[n.name]), false
			}
			out[n.short] = st
			if !ok {
				break
			}
		}
		return why, ok
	})
	return out, time.Since(begin)
}

// waitKnown waits until every running node's store holds n enabled rules.
func (c *tcluster) waitKnown(n int) {
	c.t.Helper()
	testkit.Eventually(c.t, 30*time.Second, "every node knows every rule", func() bool {
		for _, node := range c.running() {
			if st, err := getStatus(node.ag.nodeURL); err != nil || st.RulesKnown != n {
				return false
			}
		}
		return true
	})
}

// waitHoldAll waits until the nodes named hold every partition between them.
func (c *tcluster) waitHoldAll(within time.Duration, shorts ...string) {
	c.t.Helper()
	testkit.Eventually(c.t, within, strings.Join(shorts, ", ")+" hold every partition", func() bool {
		sum := 0
		for _, s := range shorts {
			st, err := getFSStatus(c.node(s).ag.nodeURL)
			if err != nil {
				return false
			}
			sum += st.PartitionsHeld
		}
		return sum == cluster.DefaultPartitions
	})
}

// waitDrained waits until every running node has delivered what its outbox
// held at the call: each one's outbox was seen empty at least once since. Not
// all at the same instant: while rules fire, a node's outbox is empty only
// between a delivery's ack and the next fire, and acks ride on fires commits.
func (c *tcluster) waitDrained(within time.Duration) {
	c.t.Helper()
	empty := map[string]bool{}
	testkit.Eventually(c.t, within, "outboxes drained", func() bool {
		all := true
		for _, n := range c.running() {
			if empty[n.ag.nodeURL] {
				continue
			}
			if st, err := getStatus(n.ag.nodeURL); err == nil && st.OutboxDepth == 0 {
				empty[n.ag.nodeURL] = true
				continue
			}
			all = false
		}
		return all
	})
}

// nodeMetric is the sum of a metric's samples on node short.
func (c *tcluster) nodeMetric(short, name string, labels ...string) float64 {
	c.t.Helper()
	return metric(metrics(c.t, c.node(short).ag.nodeURL), name, labels...)
}

// apiDuplicates is how many events the API dropped as repeats of a stored
// Idempotency-Key.
func (c *tcluster) apiDuplicates() float64 {
	c.t.Helper()
	return metric(c.api.apiMetrics(c.t), "timerd_api_events_duplicate_total")
}

// createRules creates n rules through the API (a few requests at a time)
// named prefix.<i> with the params of i, and returns their ids by i.
func (c *tcluster) createRules(prefix, triggerRef string, n int, params func(i int) map[string]any) []int64 {
	c.t.Helper()
	ids := make([]int64, n)
	errs := make(chan error, n)
	work := make(chan int)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for i := range work {
				id, err := c.createRule(fmt.Sprintf("%s.%d", prefix, i), triggerRef, params(i))
				if err != nil {
					errs <- err
					continue
				}
				ids[i] = id
			}
		})
	}
	for i := range n {
		work <- i
	}
	close(work)
	wg.Wait()
	close(errs)
	for err := range errs {
		c.t.Fatal(err)
	}
	return ids
}

// createRule is dev.createRule safe to call from any goroutine.
func (c *tcluster) createRule(ref, triggerRef string, params map[string]any) (int64, error) {
	body, _ := json.Marshal(map[string]any{"ref": ref, "trigger_ref": triggerRef, "trigger_params": params, "enabled": true})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.api.apiURL+"/api/v1/rules", bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+c.api.token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, fmt.Errorf("create rule %s: %w", ref, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusCreated {
		return 0, fmt.Errorf("create rule %s: status %d: %s", ref, resp.StatusCode, raw)
	}
	var out struct {
		Data struct {
			ID int64 `json:"id"`
		} `json:"data"`
	}
	if err := json.Unmarshal(raw, &out); err != nil || out.Data.ID <= 0 {
		return 0, fmt.Errorf("create rule %s: answer %q: %w", ref, raw, err)
	}
	return out.Data.ID, nil
}

// fired is one event stored by the API.
type fired struct {
	rule          int64
	key           string
	slot, firedAt time.Time
}

// allEvents lists every event the API stored, by rule id.
func (c *tcluster) allEvents() map[int64][]fired {
	c.t.Helper()
	out := map[int64][]fired{}
	for page := 1; ; page++ {
		var body struct {
			Items      []event `json:"items"`
			Pagination struct {
				HasNext bool `json:"has_next"`
			} `json:"pagination"`
		}
		path := fmt.Sprintf("/api/v1/events?page=%d&page_size=1000", page)
		if code := c.api.apiDo(c.t, http.MethodGet, path, nil, &body); code != http.StatusOK {
			c.t.Fatalf("GET %s: status %d", path, code)
		}
		for _, e := range body.Items {
			id, err := strconv.ParseInt(strings.TrimPrefix(e.TriggerInstanceID, "rule_"), 10, 64)
			if err != nil {
				c.t.Fatalf("event %d: trigger_instance_id %q is not rule_<id>", e.ID, e.TriggerInstanceID)
			}
			out[id] = append(out[id], fired{rule: id, key: e.IdempotencyKey,
				slot: payloadTime(c.t, e, "scheduled_at"), firedAt: payloadTime(c.t, e, "fired_at")})
		}
		if !body.Pagination.HasNext {
			return out
		}
	}
}

// checkIntervalSlots checks that each of ids (interval rules of every)
// has exactly one stored event for every slot in (from, to]: its slots are
// phase + k·every (the phase read from its events), none missing, none
// stored twice. It returns the number of slots checked.
func checkIntervalSlots(t *testing.T, evs map[int64][]fired, ids []int64, every time.Duration, from, to time.Time) int {
	t.Helper()
	total, bad := 0, 0
	for _, id := range ids {
		fs := evs[id]
		if len(fs) == 0 {
			bad++
			if bad <= 10 {
				t.Errorf("interval rule %d: no event stored", id)
			}
			continue
		}
		phase := time.Duration(fs[0].slot.UnixNano() % int64(every))
		stored := map[int64][]string{} // by slot in Unix ns
		for _, f := range fs {
			if time.Duration(f.slot.UnixNano()%int64(every)) != phase {
				t.Errorf("interval rule %d: slot %s is off the rule's phase %s", id, f.slot.Format(time.StampMilli), phase)
			}
			stored[f.slot.UnixNano()] = append(stored[f.slot.UnixNano()], f.key)
		}
		first := time.Unix(0, from.UnixNano()-from.UnixNano()%int64(every)).Add(phase)
		for !first.After(from) {
			first = first.Add(every)
		}
		var missing, twice []string
		for s := first; !s.After(to); s = s.Add(every) {
			total++
			switch keys := stored[s.UnixNano()]; len(keys) {
			case 0:
				missing = append(missing, s.Format(time.StampMilli))
			case 1:
			default:
				twice = append(twice, fmt.Sprintf("%s %v", s.Format(time.StampMilli), keys))
			}
		}
		if len(missing)+len(twice) > 0 {
			bad++
			if bad <= 10 {
				t.Errorf("interval rule %d: slots missing %v, stored more than once %v", id, missing, twice)
			}
		}
	}
	if bad > 10 {
		t.Errorf("... %d of %d interval rules in all have missing or repeated slots", bad, len(ids))
	}
	return total
}

// closedAddr is a 127.0.0.1 port nothing listens on (bound, then closed).
func closedAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}
