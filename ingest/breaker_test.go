package ingest

import (
	"bytes"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/timerd/timerd/store"
	"github.com/timerd/timerd/test/testkit"
)

// syncBuffer is a log sink safe for the delivery's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func deadLetters(t *testing.T, st *store.Store) []store.DeadLetter {
	t.Helper()
	dls, err := st.DeadLetters(0, 10_000)
	if err != nil {
		t.Fatalf("DeadLetters: %v", err)
	}
	return dls
}

// ruleOf is the rule id of an Idempotency-Key "<rule>:<slot>".
func ruleOf(key string) int64 {
	id, _ := strconv.ParseInt(strings.Split(key, ":")[0], 10, 64)
	return id
}

// An ingress that answers 403 or 404 for a while (a rollout) loses nothing:
// every event is delivered once the route is back, none is a dead letter.
func TestDeliveryRetriesRejectionWithinWindow(t *testing.T) {
	for _, status := range []int{403, 404} {
		t.Run(strconv.Itoa(status), func(t *testing.T) {
			leakCheck(t)
			st := openStore(t)
			until := time.Now().Add(300 * time.Millisecond)
			api := newFakeAPI(t, func(seenRequest, int) response {
				if time.Now().Before(until) {
					return response{status: status, body: "no route"}
				}
				return response{status: 201}
			})
			events := append(commitEvents(t, st, 31, 8, slot0), commitEvents(t, st, 32, 8, slot0)...)
			cfg := testConfig(st, api.srv.URL)
			cfg.RejectRetryWindow = 10 * time.Second
			startDelivery(t, cfg)

			testkit.Eventually(t, 10*time.Second, "an empty outbox", func() bool { return outboxLen(t, st) == 0 })
			if dls := deadLetters(t, st); len(dls) != 0 {
				t.Errorf("%d dead letters after a %d for 300ms, want 0 (first: %+v)", len(dls), status, dls[0])
			}
			for _, ev := range events {
				if n := api.successCount(ev.IdempotencyKey); n != 1 {
					t.Errorf("key %s answered 2xx %d times, want 1", ev.IdempotencyKey, n)
				}
				if n := api.attemptsOf(ev.IdempotencyKey); n < 2 {
					t.Errorf("key %s posted %d times, want a rejection and a retry", ev.IdempotencyKey, n)
				}
			}
		})
	}
}

// Past the window a 403 or 404 is a dead letter; 400 and 422 are at once.
func TestDeliveryRejectionPastWindowIsDeadLetter(t *testing.T) {
	const window = 150 * time.Millisecond
	tests := []struct {
		status      int
		minAttempts int // POSTs of each event before it is a dead letter
		maxAttempts int
		wantReason  string // of timerd_dead_letters_total
	}{
		{403, 2, 100, "retry_window_expired"},
		{404, 2, 100, "retry_window_expired"},
		{400, 1, 1, "rejected"},
		{422, 1, 1, "rejected"},
	}
	for _, tc := range tests {
		t.Run(strconv.Itoa(tc.status), func(t *testing.T) {
			leakCheck(t)
			st := openStore(t)
			api := newFakeAPI(t, func(seenRequest, int) response { return response{status: tc.status} })
			events := commitEvents(t, st, 33, 3, slot0)
			cfg := testConfig(st, api.srv.URL)
			cfg.RejectRetryWindow = window
			start := time.Now()
			d, _ := startDelivery(t, cfg)

			testkit.Eventually(t, 10*time.Second, "an empty outbox", func() bool { return outboxLen(t, st) == 0 })
			dls := deadLetters(t, st)
			if len(dls) != len(events) {
				t.Fatalf("%d dead letters, want %d", len(dls), len(events))
			}
			for _, dl := range dls {
				if dl.Status != tc.status {
					t.Errorf("dead letter %s status %d, want %d", dl.Event.IdempotencyKey, dl.Status, tc.status)
				}
				if tc.minAttempts > 1 && dl.At.Sub(start) < window {
					t.Errorf("dead letter %s written %v after start, before the %v window", dl.Event.IdempotencyKey, dl.At.Sub(start), window)
				}
			}
			for _, ev := range events {
				if n := api.attemptsOf(ev.IdempotencyKey); n < tc.minAttempts || n > tc.maxAttempts {
					t.Errorf("key %s posted %d times, want %d..%d", ev.IdempotencyKey, n, tc.minAttempts, tc.maxAttempts)
				}
			}
			code := strconv.Itoa(tc.status)
			// Counted just after the store commit that empties the outbox: wait for it.
			dead := d.metrics.deadLetters.WithLabelValues(tc.wantReason, code)
			testkit.Eventually(t, 5*time.Second, "every dead letter counted", func() bool {
				return testutil.ToFloat64(dead) >= float64(len(events))
			})
			if got := testutil.ToFloat64(dead); got != float64(len(events)) {
				t.Errorf("timerd_dead_letters_total{reason=%q,code=%q} = %v, want %d", tc.wantReason, code, got, len(events))
			}
			if n := testutil.CollectAndCount(d.metrics.deadLetters); n != 1 {
				t.Errorf("timerd_dead_letters_total has %d series, want 1 (reason %s, code %s)", n, tc.wantReason, code)
			}
		})
	}
}

// A rule whose events keep being refused (400 at once, or 404 past its
// window) opens its breaker after K dead letters: the rest of its events stay
// in the outbox, one of them is probed with backoff, other rules are
// delivered meanwhile, and the first success resumes the rule and delivers
// each held event once.
func TestDeliveryBreakerPausesRule(t *testing.T) {
	for _, status := range []int{400, 404} {
		t.Run(strconv.Itoa(status), func(t *testing.T) { testBreakerPausesRule(t, status) })
	}
}

func testBreakerPausesRule(t *testing.T, status int) {
	leakCheck(t)
	const (
		k        = 3
		probeMin = 100 * time.Millisecond
		probeMax = 400 * time.Millisecond
		token    = "breaker-secret-token"
		bad      = int64(41)
		good     = int64(42)
	)
	st := openStore(t)
	api := newFakeAPI(t, func(r seenRequest, _ int) response {
		if ruleOf(r.Header.Get("Idempotency-Key")) == bad {
			return response{status: status, body: "unknown trigger " + token}
		}
		return response{status: 201}
	})
	badEvents := commitEvents(t, st, bad, 20, slot0)
	goodEvents := commitEvents(t, st, good, 5, slot0)
	logs := &syncBuffer{}
	reg := prometheus.NewRegistry()
	cfg := testConfig(st, api.srv.URL)
	cfg.BreakerThreshold, cfg.ProbeMin, cfg.ProbeMax = k, probeMin, probeMax
	cfg.RejectRetryWindow = 30 * time.Millisecond
	cfg.Tokens = &staticTokens{tokens: []string{token}}
	cfg.Registerer = reg
	cfg.Logger = slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	d, _ := startDelivery(t, cfg)

	testkit.Eventually(t, 5*time.Second, "the breaker to open", func() bool { return testutil.ToFloat64(d.metrics.rulesPaused) == 1 })
	opened := time.Now()
	testkit.Eventually(t, 5*time.Second, "the other rule delivered", func() bool { return outboxLen(t, st) == len(badEvents)-k })
	for _, ev := range goodEvents {
		if n := api.successCount(ev.IdempotencyKey); n != 1 {
			t.Errorf("key %s of the healthy rule answered 2xx %d times, want 1", ev.IdempotencyKey, n)
		}
	}

	time.Sleep(1500 * time.Millisecond) // the probes are what is measured
	if dls := deadLetters(t, st); len(dls) != k {
		t.Fatalf("%d dead letters of a rule refused all along, want the threshold %d", len(dls), k)
	}
	var probes []seenRequest
	for _, r := range api.requests() {
		// Past the first probe, posted probeMin after the opening, the
		// entries held before the opening have all been tried once more and
		// left the window.
		if ruleOf(r.Header.Get("Idempotency-Key")) == bad && r.At.After(opened.Add(3*probeMin)) {
			probes = append(probes, r)
		}
	}
	if len(probes) < 2 || len(probes) > 13 {
		t.Errorf("%d probes in 1.2s with backoff %v..%v, want 2..13", len(probes), probeMin, probeMax)
	}
	for i, p := range probes {
		if key, first := p.Header.Get("Idempotency-Key"), probes[0].Header.Get("Idempotency-Key"); key != first {
			t.Errorf("probe %d posted %s, want the one held entry %s", i, key, first)
		}
		if i > 0 {
			if gap := p.At.Sub(probes[i-1].At); gap < probeMin-10*time.Millisecond || gap > probeMax+500*time.Millisecond {
				t.Errorf("probe %d came %v after the previous, want %v..%v", i, gap, probeMin, probeMax)
			}
		}
	}
	t.Logf("%d probes from 0.3s to 1.5s after the breaker opened", len(probes))

	api.setRespond(created)
	testkit.Eventually(t, 5*time.Second, "the paused rule drained", func() bool { return outboxLen(t, st) == 0 })
	if got := testutil.ToFloat64(d.metrics.rulesPaused); got != 0 {
		t.Errorf("timerd_delivery_rules_paused = %v after a success, want 0", got)
	}
	if got := testutil.ToFloat64(d.metrics.rulePauses); got != 1 {
		t.Errorf("timerd_delivery_rule_pauses_total = %v, want 1", got)
	}
	dlKeys := map[string]bool{}
	for _, dl := range deadLetters(t, st) {
		dlKeys[dl.Event.IdempotencyKey] = true
	}
	for _, ev := range badEvents {
		want := 1
		if dlKeys[ev.IdempotencyKey] {
			want = 0
		}
		if n := api.successCount(ev.IdempotencyKey); n != want {
			t.Errorf("key %s answered 2xx %d times, want %d", ev.IdempotencyKey, n, want)
		}
	}
	out := logs.String()
	if n := strings.Count(out, "rule paused"); n != 1 {
		t.Errorf("%q logged %d times, want once", "rule paused", n)
	}
	if n := strings.Count(out, "rule resumed"); n != 1 {
		t.Errorf("%q logged %d times, want once", "rule resumed", n)
	}
	if strings.Contains(out, token) {
		t.Error("the token appears in the delivery's log")
	}
}

// A delivery between dead letters resets the count: only K in a row pause.
func TestDeliveryBreakerCountsOnlyConsecutive(t *testing.T) {
	leakCheck(t)
	st := openStore(t)
	api := newFakeAPI(t, func(r seenRequest, _ int) response {
		key := r.Header.Get("Idempotency-Key")
		slot, _ := strconv.ParseInt(strings.Split(key, ":")[1], 10, 64)
		if (slot/int64(5*time.Second))%2 == 0 { // every other slot refused
			return response{status: 422}
		}
		return response{status: 201}
	})
	commitEvents(t, st, 43, 12, slot0)
	cfg := testConfig(st, api.srv.URL)
	cfg.Workers = 1 // in order: refused, delivered, refused, …
	cfg.BreakerThreshold = 2
	d, _ := startDelivery(t, cfg)
	testkit.Eventually(t, 5*time.Second, "an empty outbox", func() bool { return outboxLen(t, st) == 0 })
	if n := len(deadLetters(t, st)); n != 6 {
		t.Errorf("%d dead letters, want 6 (every other event)", n)
	}
	if got := testutil.ToFloat64(d.metrics.rulePauses); got != 0 {
		t.Errorf("timerd_delivery_rule_pauses_total = %v with no two refusals in a row, want 0", got)
	}
}
