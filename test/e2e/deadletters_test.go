package e2e

import (
	"encoding/json"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/timerd/timerd/cmd/timerd/node"
	"github.com/timerd/timerd/test/testkit"
)

// rejectingIngress stands between the agent and the API: while reject is
// set it answers every event POST with that status, as an ingress in a
// rollout does (404) or an API that refuses the event (400); otherwise it
// passes everything on. It records the answer to each event POST.
type rejectingIngress struct {
	reject atomic.Int32
	mu     sync.Mutex
	posts  []ingressPost
}

type ingressPost struct {
	key    string
	status int
}

func (g *rejectingIngress) start(t *testing.T, apiURL string) string {
	t.Helper()
	u, err := url.Parse(apiURL)
	if err != nil {
		t.Fatal(err)
	}
	rp := httputil.NewSingleHostReverseProxy(u)
	rp.ErrorLog = log.New(io.Discard, "", 0)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/api/v1/events" {
			rp.ServeHTTP(w, r)
			return
		}
		sw := &statusWriter{ResponseWriter: w, code: http.StatusOK}
		if code := int(g.reject.Load()); code != 0 {
			http.Error(sw, "rejected by the test's ingress", code)
		} else {
			rp.ServeHTTP(sw, r)
		}
		g.mu.Lock()
		g.posts = append(g.posts, ingressPost{key: r.Header.Get("Idempotency-Key"), status: sw.code})
		g.mu.Unlock()
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

// answers counts, per key, the POSTs answered with status class (2 for 2xx)
// or exact status.
func (g *rejectingIngress) answers(match func(status int) bool) map[string]int {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := map[string]int{}
	for _, p := range g.posts {
		if match(p.status) {
			out[p.key]++
		}
	}
	return out
}

func is2xx(s int) bool { return s >= 200 && s < 300 }

func deadLetterPage(t *testing.T, nodeURL string) node.DeadLetterPage {
	t.Helper()
	resp, err := http.Get(nodeURL + "/v1/dead-letters?limit=1000")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var page node.DeadLetterPage
	if err := json.NewDecoder(resp.Body).Decode(&page); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /v1/dead-letters: %d, %v", resp.StatusCode, err)
	}
	return page
}

// A real agent behind an ingress that answers 404 to every POST for 8 s
// loses no slot of a 1 s rule and writes no dead letter (issue 9, point 4:
// before, 8 of 8 slots were dead letters for good). Then the ingress answers
// 400 for a few seconds: those events are dead letters, listed by `timerd
// dead-letters list`, and `timerd dead-letters redrive --all` delivers each
// once with its key.
func TestAgentRejectionWindowAndRedrive(t *testing.T) {
	t.Parallel() // single agent, mostly waiting: run beside the others (Makefile: -parallel)
	b := newBroker(t)
	nodeName := b.node("dl")
	b.cleanupQueue(t, nodeName)
	api := startAttune(t, b)
	ingress := &rejectingIngress{}
	env := append(api.agentEnv(b, nodeName, t.TempDir()), "ATTUNE_API_URL="+ingress.start(t, api.apiURL))
	ag := startAgent(t, env)
	api.createRule(t, "e2e.dl", "core.intervaltimer", map[string]any{"interval": 1})
	testkit.Eventually(t, 10*time.Second, "the first event", func() bool { return len(api.events(t, "e2e.dl")) > 0 })

	// Phase 1: 404 for 8 s.
	ingress.reject.Store(http.StatusNotFound)
	rejectFrom := time.Now()
	time.Sleep(8 * time.Second) // the misbehaviour lasts this long
	ingress.reject.Store(0)
	rejectTo := time.Now()
	refused := ingress.answers(func(s int) bool { return s == http.StatusNotFound })
	if len(refused) < 7 {
		t.Fatalf("%d events answered 404 in 8 s, want at least 7 (a 1 s rule)", len(refused))
	}
	testkit.Eventually(t, 30*time.Second, "every event refused with 404 delivered", func() bool {
		ok := ingress.answers(is2xx)
		for key := range refused {
			if ok[key] == 0 {
				return false
			}
		}
		return true
	})
	caughtUp := time.Since(rejectTo)
	var slots []time.Time
	for _, e := range api.events(t, "e2e.dl") {
		slots = append(slots, payloadTime(t, e, "scheduled_at"))
	}
	slices.SortFunc(slots, func(a, b time.Time) int { return a.Compare(b) })
	for i := 1; i < len(slots); i++ {
		if d := slots[i].Sub(slots[i-1]); d != time.Second {
			t.Errorf("slots %s and %s are %v apart, want 1s (a slot lost or repeated)", slots[i-1].Format(time.RFC3339Nano), slots[i].Format(time.RFC3339Nano), d)
		}
	}
	if len(slots) == 0 || slots[0].After(rejectFrom) || slots[len(slots)-1].Before(rejectTo) {
		t.Errorf("delivered slots do not span the 404 phase %s..%s", rejectFrom.Format(time.RFC3339), rejectTo.Format(time.RFC3339))
	}
	for key, n := range ingress.answers(is2xx) {
		if n != 1 {
			t.Errorf("key %s answered 2xx %d times, want once", key, n)
		}
	}
	if page := deadLetterPage(t, ag.nodeURL); page.Total != 0 {
		t.Errorf("%d dead letters after a 404 for 8 s, want 0: %+v", page.Total, page.DeadLetters)
	}
	t.Logf("404 for %s: %d events refused, %d slots delivered, caught up %s after the ingress recovered",
		rejectTo.Sub(rejectFrom).Round(time.Millisecond), len(refused), len(slots), caughtUp.Round(time.Millisecond))

	// Phase 2: 400 (permanent) for 2.5 s, fewer dead letters than the breaker's 5.
	ingress.reject.Store(http.StatusBadRequest)
	time.Sleep(2500 * time.Millisecond)
	ingress.reject.Store(0)
	var page node.DeadLetterPage
	testkit.Eventually(t, 10*time.Second, "dead letters of the 400s", func() bool {
		page = deadLetterPage(t, ag.nodeURL)
		return page.Total > 0 && page.Total == len(ingress.answers(func(s int) bool { return s == http.StatusBadRequest }))
	})
	if got := metric(metrics(t, ag.nodeURL), "timerd_dead_letters"); got != float64(page.Total) {
		t.Errorf("timerd_dead_letters = %v, want %d", got, page.Total)
	}
	listed := timerdOut(t, "dead-letters", "list", "--addr", ag.nodeURL)
	for _, dl := range page.DeadLetters {
		if dl.Status != http.StatusBadRequest || !strings.Contains(listed, dl.Reason) {
			t.Errorf("dead letter %+v: want status 400 and its reason in `timerd dead-letters list`:\n%s", dl, listed)
		}
	}
	out, err := exec.Command(timerdBin, "dead-letters", "redrive", "--addr", ag.nodeURL).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "--all") {
		t.Errorf("redrive without --id or --all = %v %q, want a refusal naming --all", err, out)
	}
	redrive := timerdOut(t, "dead-letters", "redrive", "--all", "--addr", ag.nodeURL)
	t.Logf("%d dead letters; timerd dead-letters redrive --all: %s", page.Total, redrive)
	testkit.Eventually(t, 20*time.Second, "the redriven events delivered", func() bool {
		ok := ingress.answers(is2xx)
		for _, dl := range page.DeadLetters {
			if ok[dl.IdempotencyKey] == 0 {
				return false
			}
		}
		return true
	})
	ok := ingress.answers(is2xx)
	stored := map[string]bool{}
	for _, e := range api.events(t, "e2e.dl") {
		stored[e.IdempotencyKey] = true
	}
	for _, dl := range page.DeadLetters {
		if ok[dl.IdempotencyKey] != 1 || !stored[dl.IdempotencyKey] {
			t.Errorf("redriven key %s: answered 2xx %d times, stored %v; want once, stored", dl.IdempotencyKey, ok[dl.IdempotencyKey], stored[dl.IdempotencyKey])
		}
	}
	if left := deadLetterPage(t, ag.nodeURL); left.Total != 0 {
		t.Errorf("%d dead letters after redrive --all, want 0", left.Total)
	}
	if got := metric(metrics(t, ag.nodeURL), "timerd_dead_letters"); got != 0 {
		t.Errorf("timerd_dead_letters = %v after redrive, want 0", got)
	}

	if err := ag.stop(20 * time.Second); err != nil {
		t.Errorf("timerd agent after SIGTERM: %v, want exit status 0", err)
	}
	if strings.Contains(ag.output(), api.sensorToken) {
		t.Error("the sensor token appears in the agent's output")
	}
}
