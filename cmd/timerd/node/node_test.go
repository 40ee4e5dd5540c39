package node

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	"go.uber.org/goleak"

	"github.com/timerd/timerd/ingest/apiserver"
	"github.com/timerd/timerd/ingest/pubsub"
	"github.com/timerd/timerd/store"
	"github.com/timerd/timerd/test/testkit"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, ignoreFasthttp)
}

// ignoreFasthttp: delivery's HTTP client (fasthttp's HostClient) closes idle
// connections from a goroutine that ends by itself once none is left, up to
// its idle timeout after the node stopped.
var ignoreFasthttp = goleak.IgnoreAnyFunction("github.com/valyala/fasthttp.(*HostClient).connsCleaner")

// system is an API server with a bus, on a real listener.
type system struct {
	t      *testing.T
	bus    *pubsub.Bus
	apiURL string
}

func startAPI(t *testing.T, dir string) *system {
	t.Helper()
	bus := pubsub.NewBus()
	return &system{t: t, bus: bus, apiURL: serveAPI(t, apiserver.Config{DataDir: dir, Publisher: bus})}
}

// serveAPI runs an API server on 127.0.0.1:0 until the test ends and
// returns its URL.
func serveAPI(t testing.TB, cfg apiserver.Config) string {
	t.Helper()
	srv, err := apiserver.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ctx, ln) // its error shows in the tests' requests
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		srv.Close()
	})
	return "http://" + ln.Addr().String()
}

// runningNode is a node started on dir with its Run in a goroutine.
type runningNode struct {
	*Node
	cancel  context.CancelFunc
	done    chan error
	stopped sync.Once
}

func (s *system) startNode(dir string, subscribe bool) *runningNode {
	s.t.Helper()
	cfg := Config{DataDir: dir, APIURL: s.apiURL, HTTPAddr: "127.0.0.1:0", NodeName: "test", ReconcileInterval: -1}
	var unsubscribe func()
	if subscribe {
		cfg.Lifecycle, unsubscribe = s.bus.Subscribe()
	}
	n, err := New(cfg)
	if err != nil {
		s.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	rn := &runningNode{Node: n, cancel: cancel, done: make(chan error, 1)}
	go func() {
		rn.done <- n.Run(ctx)
		if unsubscribe != nil {
			unsubscribe()
		}
	}()
	s.t.Cleanup(func() { rn.stop(s.t) })
	testkit.Eventually(s.t, 10*time.Second, "node ready", func() bool { return get(s.t, "http://"+n.HTTPAddr()+"/readyz") == 200 })
	return rn
}

func (rn *runningNode) stop(t *testing.T) {
	t.Helper()
	rn.stopped.Do(func() {
		rn.cancel()
		select {
		case err := <-rn.done:
			if err != nil {
				t.Errorf("node Run: %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("node did not stop within 20s")
		}
	})
}

func (s *system) createRule(ref, trigger, params string) int64 {
	s.t.Helper()
	body := fmt.Sprintf(`{"ref":%q,"trigger_ref":%q,"trigger_params":%s}`, ref, trigger, params)
	resp, err := http.Post(s.apiURL+"/api/v1/rules", "application/json", strings.NewReader(body))
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	var out struct {
		Data struct{ ID int64 } `json:"data"`
	}
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusCreated || json.Unmarshal(raw, &out) != nil {
		s.t.Fatalf("create rule %s: %d %s", ref, resp.StatusCode, raw)
	}
	return out.Data.ID
}

func (s *system) post(path string) {
	s.t.Helper()
	req, _ := http.NewRequest(http.MethodPost, s.apiURL+path, bytes.NewReader(nil))
	if strings.HasPrefix(path, "DELETE ") {
		req, _ = http.NewRequest(http.MethodDelete, s.apiURL+strings.TrimPrefix(path, "DELETE "), nil)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		s.t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode >= 300 {
		s.t.Fatalf("%s: status %d", path, resp.StatusCode)
	}
}

type event struct {
	IdempotencyKey string         `json:"idempotency_key"`
	Payload        map[string]any `json:"payload"`
}

func (s *system) events(ruleRef string) []event {
	s.t.Helper()
	resp, err := http.Get(s.apiURL + "/api/v1/events?page_size=1000&rule_ref=" + ruleRef)
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	var out struct {
		Items []event `json:"items"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		s.t.Fatal(err)
	}
	return out.Items
}

func get(t *testing.T, url string) int {
	resp, err := http.Get(url)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

func TestNodeFiresDeliversAndFollowsLifecycle(t *testing.T) {
	sys := startAPI(t, t.TempDir())
	n := sys.startNode(t.TempDir(), true)

	id := sys.createRule("r1", "core.intervaltimer", `{"interval":1}`)
	testkit.Eventually(t, 5*time.Second, "two events of r1", func() bool { return len(sys.events("r1")) >= 2 })

	// A duplicate enable keeps the schedule and its count.
	wmBefore, _ := n.engine.Watermark(id)
	sys.post("/api/v1/rules/r1/enable")
	testkit.Eventually(t, 5*time.Second, "enable applied", func() bool {
		return testCounter(t, n, "timerd_lifecycle_messages_total", `type="RuleEnabled"`) >= 1
	})
	wmAfter, _ := n.engine.Watermark(id)
	if wmAfter.Count < wmBefore.Count {
		t.Errorf("duplicate enable reset the count: %d → %d", wmBefore.Count, wmAfter.Count)
	}

	sys.post("/api/v1/rules/r1/disable")
	testkit.Eventually(t, 5*time.Second, "disable applied", func() bool { return n.engine.Len() == 0 })
	stopped := len(sys.events("r1"))
	time.Sleep(1500 * time.Millisecond)                // nothing may fire in this window
	if got := len(sys.events("r1")); got > stopped+1 { // one fire may have been in flight
		t.Errorf("disabled rule kept firing: %d events, then %d", stopped, got)
	}

	st := n.Status()
	if st.RulesOwned != 0 || st.RulesKnown != 0 {
		t.Errorf("status after disable: owned %d known %d, want 0 0", st.RulesOwned, st.RulesKnown)
	}
	if get(t, "http://"+n.HTTPAddr()+"/metrics") != 200 {
		t.Error("/metrics not 200")
	}
}

func TestNodeRestartContinuesAndReconciles(t *testing.T) {
	sys := startAPI(t, t.TempDir())
	dir := t.TempDir()
	n := sys.startNode(dir, true)
	sys.createRule("keep", "core.intervaltimer", `{"interval":1}`)
	sys.createRule("gone", "core.intervaltimer", `{"interval":1}`)
	testkit.Eventually(t, 5*time.Second, "events of both rules", func() bool {
		return len(sys.events("keep")) >= 2 && len(sys.events("gone")) >= 1
	})
	n.stop(t)
	before := len(sys.events("keep"))
	// A reconcile removes a rule it does not list only if the rule's version
	// is older than the listing less the skew allowance (docs/protocol.md
	// §1): make "gone" two minutes old.
	ageRule(t, dir, "gone", 2*time.Minute)

	// While the node is down: one rule is deleted, one created. The node
	// hears neither message; its reconcile at start must catch both.
	sys.post("DELETE /api/v1/rules/gone")
	sys.createRule("new", "core.crontimer", `{"expression":"* * * * * *"}`)

	n2 := sys.startNode(dir, false)
	if got := n2.engine.Len(); got != 2 {
		t.Errorf("rules after restart and reconcile: %d, want 2 (keep, new)", got)
	}
	testkit.Eventually(t, 5*time.Second, "keep and new firing after restart", func() bool {
		return len(sys.events("keep")) > before+1 && len(sys.events("new")) >= 1
	})
	// execution_count continues from the watermark: no count repeats.
	seen := map[float64]bool{}
	for _, e := range sys.events("keep") {
		c := e.Payload["execution_count"].(float64)
		if seen[c] {
			t.Errorf("execution_count %v repeated after restart", c)
		}
		seen[c] = true
	}
}

// testCounter sums a counter's samples whose labels contain match.
func testCounter(t *testing.T, n *runningNode, name, match string) float64 {
	t.Helper()
	return testCounterOf(t, n.cfg.Registry, name, match)
}

// testCounterOf sums a counter's samples on reg whose labels contain match.
func testCounterOf(t *testing.T, reg *prometheus.Registry, name, match string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
			}
			if strings.Contains(strings.Join(labels, ","), match) {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}

// The node's metrics follow Prometheus naming conventions (the checks of
// `promtool check metrics`).
func TestMetricsPassPromlint(t *testing.T) {
	sys := startAPI(t, t.TempDir())
	n := sys.startNode(t.TempDir(), true)
	sys.createRule("lint", "core.intervaltimer", `{"interval":1}`)
	testkit.Eventually(t, 5*time.Second, "an event", func() bool { return len(sys.events("lint")) >= 1 })

	mfs, err := n.cfg.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	problems, err := promlint.NewWithMetricFamilies(mfs).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("metric %s: %s", p.Metric, p.Text)
	}
	names := map[string]bool{}
	for _, mf := range mfs {
		names[mf.GetName()] = true
	}
	for _, want := range []string{"timerd_fires_total", "timerd_fire_lateness_seconds", "timerd_outbox_entries",
		"timerd_deliveries_total", "timerd_store_commit_seconds", "timerd_rules_known", "timerd_build_info"} {
		if !names[want] {
			t.Errorf("metric %s missing", want)
		}
	}
}

// ageRule moves the source version of the stored rule ref back by d, in the
// store of a stopped node.
func ageRule(t *testing.T, dir, ref string, d time.Duration) {
	t.Helper()
	st, err := store.Open(filepath.Join(dir, "node.db"), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	var found *store.Rule
	if err := st.ForEachRule(func(r store.Rule, _ store.Watermark) error {
		if r.Ref == ref {
			found = &r
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if found == nil {
		t.Fatalf("rule %s not stored", ref)
	}
	found.UpdatedAt = found.UpdatedAt.Add(-d)
	if err := st.PutRule(*found, nil); err != nil {
		t.Fatal(err)
	}
}
