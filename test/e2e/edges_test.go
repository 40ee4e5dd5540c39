package e2e

import (
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/timerd/timerd/test/testkit"
)

// misbehavingFront stands between a node and `timerd api` as an ingress or a
// broken API would: it redirects event POSTs, or answers the rules listing
// with `{}` or without totals, when told to; otherwise it passes requests on.
type misbehavingFront struct {
	srv *httptest.Server

	mu      sync.Mutex
	events  string // "redirect", or "" to pass on
	listing string // "empty" ({}), "no_totals", or "" to pass on
}

func newMisbehavingFront(t *testing.T, apiURL, redirectTo string) *misbehavingFront {
	t.Helper()
	target, err := url.Parse(apiURL)
	if err != nil {
		t.Fatal(err)
	}
	f := &misbehavingFront{}
	pass := httputil.NewSingleHostReverseProxy(target)
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		events, listing := f.events, f.listing
		f.mu.Unlock()
		switch {
		case r.Method == http.MethodPost && r.URL.Path == "/api/v1/events" && events == "redirect":
			// What an ingress redirecting http to https does.
			http.Redirect(w, r, redirectTo+r.URL.Path, http.StatusFound)
		case r.Method == http.MethodGet && r.URL.Path == "/api/v1/rules" && listing == "empty":
			w.Write([]byte(`{}`))
		case r.Method == http.MethodGet && r.URL.Path == "/api/v1/rules" && listing == "no_totals":
			w.Write([]byte(`{"items":[],"pagination":{"has_next":false}}`))
		default:
			pass.ServeHTTP(w, r)
		}
	}))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *misbehavingFront) set(events, listing string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.events, f.listing = events, listing
}

// elsewhere is another host (127.0.0.2) that answers 200 to anything and
// records what reached it: where a redirect would send the event and token.
type elsewhere struct {
	srv  *httptest.Server
	mu   sync.Mutex
	seen []string // method path, and whether a bearer token came along
}

func newElsewhere(t *testing.T) *elsewhere {
	t.Helper()
	e := &elsewhere{}
	e.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		e.mu.Lock()
		e.seen = append(e.seen, fmt.Sprintf("%s %s bearer=%v", r.Method, r.URL.Path, r.Header.Get("Authorization") != ""))
		e.mu.Unlock()
		w.Write([]byte(`{"data":{"id":1}}`))
	}))
	ln, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		t.Fatalf("listen on 127.0.0.2: %v", err)
	}
	e.srv.Listener = ln
	e.srv.Start()
	t.Cleanup(e.srv.Close)
	return e
}

// A node behind an API that misbehaves as real ingresses and APIs do loses
// no fire and keeps no schedule the user changed (issue 9, points 1 to 3):
//   - event POSTs redirected to another host for 4 s: nothing is sent there,
//     every slot is delivered once when the redirect ends, the redirect is
//     logged once with its Location;
//   - the rules listing answered `200 {}`, then without totals, for 3 s each
//     while the node reconciles every second: no rule is removed, the
//     refusals are counted, the rules keep firing;
//   - a lifecycle message changing a running rule to `{"interval":0}`: the
//     rule stops (it does not keep its old schedule), timerd_rules_invalid is
//     1 and an error is logged; a valid PUT starts it again.
func TestAgentAgainstAMisbehavingAPI(t *testing.T) {
	t.Parallel() // single agent, mostly waiting: run beside the others (Makefile: -parallel)
	b := newBroker(t)
	node := b.node("edges")
	b.cleanupQueue(t, node)
	api := startAttune(t, b)
	away := newElsewhere(t)
	front := newMisbehavingFront(t, api.apiURL, away.srv.URL)
	env := api.agentEnv(b, node, t.TempDir())
	env = append(slices.DeleteFunc(env, func(kv string) bool { return strings.HasPrefix(kv, "ATTUNE_API_URL=") }),
		"ATTUNE_API_URL="+front.srv.URL, "TIMERD_RECONCILE_INTERVAL=1s", "TIMERD_LOG_FORMAT=json")
	ag := startAgent(t, env)

	api.createRule(t, "edge.steady", "core.intervaltimer", map[string]any{"interval": 1})
	changedID := api.createRule(t, "edge.changed", "core.intervaltimer", map[string]any{"interval": 1})
	testkit.Eventually(t, 10*time.Second, "both rules fire", func() bool {
		return len(api.events(t, "edge.steady")) >= 2 && len(api.events(t, "edge.changed")) >= 2
	})

	// 1. Redirects.
	front.set("redirect", "")
	redirectedAt := time.Now()
	testkit.Eventually(t, 5*time.Second, "a redirect logged", func() bool {
		return strings.Contains(ag.output(), "redirected a POST")
	})
	time.Sleep(4*time.Second - time.Since(redirectedAt))
	during := len(api.events(t, "edge.steady"))
	front.set("", "")
	testkit.Eventually(t, 20*time.Second, "the slots of the redirect delivered", func() bool {
		return len(api.events(t, "edge.steady")) >= during+4
	})
	away.mu.Lock()
	if len(away.seen) > 0 {
		t.Errorf("the redirect was followed: the other host got %v", away.seen)
	}
	away.mu.Unlock()
	if n := strings.Count(ag.output(), "redirected a POST"); n != 1 {
		t.Errorf("the redirect was logged %d times, want once", n)
	}
	if !strings.Contains(ag.output(), away.srv.URL+"/api/v1/events") {
		t.Errorf("the redirect's log line does not name its Location %s", away.srv.URL+"/api/v1/events")
	}

	// 2. Odd listings.
	for _, odd := range []struct{ mode, reason string }{{"empty", "malformed"}, {"no_totals", "no_totals"}} {
		before := metric(metrics(t, ag.nodeURL), "timerd_reconcile_refused_total", `reason="`+odd.reason+`"`)
		front.set("", odd.mode)
		testkit.Eventually(t, 10*time.Second, "the "+odd.mode+" listing refused twice", func() bool {
			return metric(metrics(t, ag.nodeURL), "timerd_reconcile_refused_total", `reason="`+odd.reason+`"`) >= before+2
		})
		if known := metric(metrics(t, ag.nodeURL), "timerd_rules_known"); known != 2 {
			t.Errorf("%s listing: timerd_rules_known = %v, want 2: it removed rules", odd.mode, known)
		}
	}
	front.set("", "")
	if known := metric(metrics(t, ag.nodeURL), "timerd_rules_known"); known != 2 {
		t.Errorf("after the odd listings: timerd_rules_known = %v, want 2", known)
	}

	// 3. An invalid change of a running rule stops it.
	ch := b.channel(t)
	b.publish(t, ch, "rule.created", fmt.Appendf(nil, `{"message_type":"RuleCreated","timestamp":%q,
		"payload":{"rule_id":%d,"rule_ref":"edge.changed","trigger_ref":"core.intervaltimer","trigger_params":{"interval":0},"enabled":true}}`,
		time.Now().UTC().Format(time.RFC3339Nano), changedID))
	testkit.Eventually(t, 5*time.Second, "timerd_rules_invalid = 1", func() bool {
		return metric(metrics(t, ag.nodeURL), "timerd_rules_invalid") == 1
	})
	time.Sleep(1500 * time.Millisecond) // a fire committed before the stop is delivered
	stoppedAt := len(api.events(t, "edge.changed"))
	time.Sleep(3 * time.Second) // three slots of the old schedule, and three reconciles listing it
	if n := len(api.events(t, "edge.changed")); n != stoppedAt {
		t.Errorf("the rule changed to an invalid timer fired %d more times: its old schedule goes on", n-stoppedAt)
	}
	if !strings.Contains(ag.output(), `"level":"error"`) || !strings.Contains(ag.output(), "rule changed to a timer that does not parse") {
		t.Errorf("the stop was not logged at error level")
	}
	if code := api.apiDo(t, http.MethodPut, "/api/v1/rules/edge.changed",
		map[string]any{"trigger_params": map[string]any{"interval": 2}}, nil); code != http.StatusOK {
		t.Fatalf("PUT a valid interval: status %d", code)
	}
	testkit.Eventually(t, 10*time.Second, "the rule fires again after a valid change", func() bool {
		return len(api.events(t, "edge.changed")) > stoppedAt
	})
	if n := metric(metrics(t, ag.nodeURL), "timerd_rules_invalid"); n != 0 {
		t.Errorf("after the valid change: timerd_rules_invalid = %v, want 0", n)
	}

	// Every slot of the steady rule, through all of it, exactly once.
	if err := ag.stop(20 * time.Second); err != nil {
		t.Errorf("timerd agent after SIGTERM: %v", err)
	}
	evs := api.events(t, "edge.steady")
	keys := map[string]bool{}
	var slots []time.Time
	for _, e := range evs {
		if keys[e.IdempotencyKey] {
			t.Errorf("key %s delivered twice", e.IdempotencyKey)
		}
		keys[e.IdempotencyKey] = true
		slots = append(slots, payloadTime(t, e, "scheduled_at"))
	}
	slices.SortFunc(slots, time.Time.Compare)
	for i := 1; i < len(slots); i++ {
		if gap := slots[i].Sub(slots[i-1]); gap != time.Second {
			t.Errorf("edge.steady: slots %v and %v are %v apart: fires lost", slots[i-1], slots[i], gap)
		}
	}
	t.Logf("edge.steady: %d slots, %s to %s, none missing or repeated", len(slots), slots[0].Format(time.TimeOnly), slots[len(slots)-1].Format(time.TimeOnly))
	if strings.Contains(ag.output(), api.sensorToken) {
		t.Error("the sensor token appears in the agent's output")
	}
}
