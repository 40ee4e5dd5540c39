package ingest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"

	"github.com/timerd/timerd/ingest/attune"
	"github.com/timerd/timerd/scheduler"
	"github.com/timerd/timerd/store"
	"github.com/timerd/timerd/test/testkit"
)

// leakCheck registers a goroutine leak check that runs after every cleanup
// registered later (cleanups run last-in, first-out).
// ignoreFasthttp: fasthttp's goroutines that end by themselves, after the test
// that started them: HostClient's closer of idle connections (once none is
// left) and, behind a proxy, the proxy dialer's DNS cache (a minute after its
// last dial).
var ignoreFasthttp = []goleak.Option{
	goleak.IgnoreAnyFunction("github.com/valyala/fasthttp.(*HostClient).connsCleaner"),
	goleak.IgnoreAnyFunction("github.com/valyala/fasthttp.(*TCPDialer).tcpAddrsClean"),
}

func leakCheck(t *testing.T) {
	t.Helper()
	t.Cleanup(func() { goleak.VerifyNone(t, ignoreFasthttp...) })
}

func openStore(t testing.TB) *store.Store {
	t.Helper()
	st, err := store.Open(filepath.Join(t.TempDir(), "timerd.db"), store.Options{NoSync: true})
	if err != nil {
		t.Fatalf("store.Open: %v", err)
	}
	t.Cleanup(func() {
		if err := st.Close(); err != nil {
			t.Errorf("store.Close: %v", err)
		}
	})
	return st
}

var testTimer = &scheduler.Timer{TriggerRef: "core.intervaltimer", Kind: scheduler.KindInterval, Interval: 5 * time.Second}

// commitEvents commits n interval events of rule, slots 5 s apart from
// firstSlot, in batches, and returns them in commit order.
func commitEvents(t testing.TB, st *store.Store, rule int64, n int, firstSlot time.Time) []store.Event {
	t.Helper()
	events := make([]store.Event, 0, n)
	var recs []store.FireRecord
	for i := range n {
		slot := firstSlot.Add(time.Duration(i) * 5 * time.Second)
		ev, err := attune.BuildEvent(scheduler.Fire{RuleID: rule, Slot: slot, FiredAt: slot, Count: uint64(i + 1), Timer: testTimer}, "core.timer")
		if err != nil {
			t.Fatalf("BuildEvent: %v", err)
		}
		events = append(events, ev)
		recs = append(recs, store.FireRecord{Watermark: store.Watermark{Slot: slot, Count: uint64(i + 1)}, Event: ev})
		if len(recs) == 1000 || i == n-1 {
			if err := st.CommitFires(recs); err != nil {
				t.Fatalf("CommitFires: %v", err)
			}
			recs = recs[:0]
		}
	}
	return events
}

var slot0 = time.Date(2026, 1, 27, 12, 0, 0, 0, time.UTC)

type seenRequest struct {
	Method, Path string
	Header       http.Header
	Body         string
	At           time.Time
}

type response struct {
	status int
	header map[string]string
	body   string
	hangUp bool            // close the connection without an answer
	block  <-chan struct{} // answer only once closed (or the client gave up)
}

// fakeAPI is the events endpoint: it records requests, counts 2xx answers
// per Idempotency-Key and the POSTs in flight, and answers with respond,
// which a test may switch at any time.
type fakeAPI struct {
	srv *httptest.Server

	mu        sync.Mutex
	respond   func(r seenRequest, attempt int) response // attempt: 1 for the first POST of a key
	reqs      []seenRequest
	attempts  map[string]int
	successes map[string]int

	inFlight, peak atomic.Int64
}

func created(seenRequest, int) response { return response{status: 201, body: `{"data":{"id":1}}`} }

func newFakeAPI(t *testing.T, respond func(r seenRequest, attempt int) response) *fakeAPI {
	t.Helper()
	if respond == nil {
		respond = created
	}
	f := &fakeAPI{respond: respond, attempts: map[string]int{}, successes: map[string]int{}}
	f.srv = httptest.NewServer(f)
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n := f.inFlight.Add(1)
	defer f.inFlight.Add(-1)
	for p := f.peak.Load(); n > p && !f.peak.CompareAndSwap(p, n); p = f.peak.Load() {
	}
	body, _ := io.ReadAll(r.Body)
	req := seenRequest{Method: r.Method, Path: r.URL.Path, Header: r.Header.Clone(), Body: string(body), At: time.Now()}
	key := r.Header.Get("Idempotency-Key")
	f.mu.Lock()
	f.attempts[key]++
	attempt := f.attempts[key]
	f.reqs = append(f.reqs, req)
	respond := f.respond
	f.mu.Unlock()

	resp := respond(req, attempt)
	if resp.block != nil {
		select {
		case <-resp.block:
		case <-r.Context().Done():
			return
		}
	}
	if resp.hangUp {
		conn, _, err := w.(http.Hijacker).Hijack()
		if err == nil {
			_ = conn.Close()
		}
		return
	}
	if resp.status >= 200 && resp.status < 300 {
		f.mu.Lock()
		f.successes[key]++
		f.mu.Unlock()
	}
	for k, v := range resp.header {
		w.Header().Set(k, v)
	}
	w.WriteHeader(resp.status)
	_, _ = io.WriteString(w, resp.body)
}

func (f *fakeAPI) setRespond(fn func(r seenRequest, attempt int) response) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.respond = fn
}

func (f *fakeAPI) requests() []seenRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]seenRequest(nil), f.reqs...)
}

func (f *fakeAPI) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.reqs)
}

func (f *fakeAPI) successCount(key string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.successes[key]
}

func outboxLen(t *testing.T, st *store.Store) int {
	t.Helper()
	n, err := st.OutboxLen()
	if err != nil {
		t.Fatalf("OutboxLen: %v", err)
	}
	return n
}

func testConfig(st *store.Store, url string) DeliveryConfig {
	return DeliveryConfig{
		Store: st, APIURL: url, Workers: 4, Timeout: 5 * time.Second,
		BackoffMin: 5 * time.Millisecond, BackoffMax: 50 * time.Millisecond, PollInterval: 20 * time.Millisecond,
		// Many tests commit slots of slot0, long past: catch-up. They are
		// about other things, so catch-up may take the whole limit (but the
		// reserve) at no rate here; catchup_test.go tests the default share
		// and the auto rate.
		CatchUpShare: 1, CatchUpRate: NoCatchUpRate,
	}
}

// startDelivery runs d until the test ends or stop is called; stop waits for
// Run to return.
func startDelivery(t *testing.T, cfg DeliveryConfig) (d *Delivery, stop func()) {
	t.Helper()
	d, err := NewDelivery(cfg)
	if err != nil {
		t.Fatalf("NewDelivery: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run returned %v after cancel, want nil", err)
				}
			case <-time.After(5 * time.Second):
				t.Errorf("Run did not return within 5s of cancel")
			}
		})
	}
	t.Cleanup(stop)
	return d, stop
}

// staticTokens is a TokenSource that swaps to the next token on Invalidate.
type staticTokens struct {
	mu          sync.Mutex
	tokens      []string // tokens[0] is current
	invalidated []string
}

func (s *staticTokens) Token() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.tokens[0]
}

func (s *staticTokens) Invalidate(tok string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.invalidated = append(s.invalidated, tok)
	if tok == s.tokens[0] && len(s.tokens) > 1 {
		s.tokens = s.tokens[1:]
	}
}

func (s *staticTokens) calls() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.invalidated...)
}

func TestDeliveryPostsExactRequests(t *testing.T) {
	tests := []struct {
		name     string
		prefix   string
		tokens   TokenSource
		wantPath string
		wantAuth string
	}{
		{name: "with token", tokens: &staticTokens{tokens: []string{"tok-1"}}, wantPath: "/api/v1/events", wantAuth: "Bearer tok-1"},
		{name: "no token source", wantPath: "/api/v1/events"},
		{name: "empty token", tokens: &staticTokens{tokens: []string{""}}, wantPath: "/api/v1/events"},
		{name: "prefix with slash", prefix: "/attune/", wantPath: "/attune/api/v1/events"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			leakCheck(t)
			st := openStore(t)
			api := newFakeAPI(t, nil)
			events := commitEvents(t, st, 11, 3, slot0)
			cfg := testConfig(st, api.srv.URL+tc.prefix)
			cfg.Tokens = tc.tokens
			cfg.Workers = 1 // one at a time: the server sees them in order
			startDelivery(t, cfg)

			testkit.Eventually(t, 5*time.Second, "an empty outbox", func() bool { return outboxLen(t, st) == 0 })
			reqs := api.requests()
			if len(reqs) != len(events) {
				t.Fatalf("server saw %d requests, want %d", len(reqs), len(events))
			}
			for i, r := range reqs {
				ev := events[i]
				if r.Method != http.MethodPost || r.Path != tc.wantPath {
					t.Errorf("request %d: %s %s, want POST %s", i, r.Method, r.Path, tc.wantPath)
				}
				if r.Body != string(ev.Body) {
					t.Errorf("request %d body:\n got %s\nwant %s", i, r.Body, ev.Body)
				}
				for h, want := range map[string]string{
					"Content-Type":    "application/json",
					"Idempotency-Key": ev.IdempotencyKey,
					"Authorization":   tc.wantAuth,
				} {
					if got := r.Header.Get(h); got != want {
						t.Errorf("request %d header %s = %q, want %q", i, h, got, want)
					}
				}
			}
		})
	}
}

func TestDeliveryRetriesThenDeliversOnce(t *testing.T) {
	tests := []struct {
		name   string
		failed response
	}{
		{"500", response{status: 500, body: "boom"}},
		{"503", response{status: 503}},
		{"408", response{status: 408}},
		{"409 key in progress", response{status: 409}},
		{"429 without Retry-After", response{status: 429}},
		{"redirect not followed", response{status: 304}},
		{"connection closed without answer", response{hangUp: true}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			leakCheck(t)
			st := openStore(t)
			api := newFakeAPI(t, func(r seenRequest, attempt int) response {
				if attempt <= 2 {
					return tc.failed
				}
				return response{status: 201}
			})
			ev := commitEvents(t, st, 12, 1, slot0)[0]
			reg := prometheus.NewRegistry()
			cfg := testConfig(st, api.srv.URL)
			cfg.Registerer = reg
			d, _ := startDelivery(t, cfg)

			testkit.Eventually(t, 5*time.Second, "an empty outbox", func() bool { return outboxLen(t, st) == 0 })
			if got := api.count(); got != 3 {
				t.Errorf("server saw %d POSTs, want 3 (two failures, one success)", got)
			}
			if got := api.successCount(ev.IdempotencyKey); got != 1 {
				t.Errorf("key %s delivered %d times, want 1", ev.IdempotencyKey, got)
			}
			code := strconv.Itoa(tc.failed.status)
			if tc.failed.hangUp {
				code = "error"
			}
			if got := testutil.ToFloat64(d.metrics.deliveries.WithLabelValues(code)); got != 2 {
				t.Errorf("timerd_deliveries_total{code=%q} = %v, want 2", code, got)
			}
			if got := testutil.ToFloat64(d.metrics.deliveries.WithLabelValues("201")); got != 1 {
				t.Errorf("timerd_deliveries_total{code=\"201\"} = %v, want 1", got)
			}
			if n, err := st.DeadLetterCount(); err != nil || n != 0 {
				t.Errorf("DeadLetterCount() = %d, %v; want 0", n, err)
			}
		})
	}
}

func TestDeliveryHonoursRetryAfter(t *testing.T) {
	tests := []struct {
		name       string
		status     int
		retryAfter string
		backoffMax time.Duration
		minGap     time.Duration // between the refused POST and the retry
	}{
		{name: "429 seconds", status: 429, retryAfter: "1", backoffMax: 5 * time.Second, minGap: time.Second},
		{name: "503 seconds", status: 503, retryAfter: "1", backoffMax: 5 * time.Second, minGap: time.Second},
		{name: "429 HTTP date", status: 429, retryAfter: "date in 3s", backoffMax: 5 * time.Second, minGap: time.Second},
		// An hour is capped at BackoffMax: the event arrives within the wait below.
		{name: "429 capped at BackoffMax", status: 429, retryAfter: "3600", backoffMax: 300 * time.Millisecond},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			leakCheck(t)
			st := openStore(t)
			api := newFakeAPI(t, func(r seenRequest, attempt int) response {
				if attempt == 1 {
					ra := tc.retryAfter
					if ra == "date in 3s" {
						ra = time.Now().Add(3 * time.Second).UTC().Format(http.TimeFormat)
					}
					return response{status: tc.status, header: map[string]string{"Retry-After": ra}}
				}
				return response{status: 201}
			})
			commitEvents(t, st, 13, 1, slot0)
			cfg := testConfig(st, api.srv.URL)
			cfg.BackoffMin, cfg.BackoffMax = time.Millisecond, tc.backoffMax
			startDelivery(t, cfg)

			testkit.Eventually(t, 6*time.Second, "an empty outbox", func() bool { return outboxLen(t, st) == 0 })
			reqs := api.requests()
			if len(reqs) != 2 {
				t.Fatalf("server saw %d POSTs, want 2", len(reqs))
			}
			if gap := reqs[1].At.Sub(reqs[0].At); gap < tc.minGap {
				t.Errorf("retry after Retry-After %q came %v after the refusal, want >= %v", tc.retryAfter, gap, tc.minGap)
			}
		})
	}
}

func TestDeliveryDeadLetters(t *testing.T) {
	const token = "secret-token-value"
	long := strings.Repeat("x", 10_000)
	tests := []struct {
		name       string
		status     int
		body       string
		wantReason string
	}{
		{"400", 400, `{"error":"bad payload"}`, `400 Bad Request: {"error":"bad payload"}`},
		{"400 echoing the token", 400, "trigger not allowed for " + token, "400 Bad Request: trigger not allowed for [redacted]"},
		{"410 empty body", 410, "", "410 Gone"},
		{"422 with control characters", 422, "bad\r\n\tvalue\x00", "422 Unprocessable Entity: bad value"},
		{"413 long body is cut", 413, long, "413 Request Entity Too Large: " + long[:reasonExcerpt]},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			leakCheck(t)
			st := openStore(t)
			api := newFakeAPI(t, func(seenRequest, int) response { return response{status: tc.status, body: tc.body} })
			events := commitEvents(t, st, 14, 2, slot0)
			reg := prometheus.NewRegistry()
			cfg := testConfig(st, api.srv.URL)
			cfg.Tokens = &staticTokens{tokens: []string{token}}
			cfg.Registerer = reg
			d, _ := startDelivery(t, cfg)

			testkit.Eventually(t, 5*time.Second, "an empty outbox", func() bool { return outboxLen(t, st) == 0 })
			dls, err := st.DeadLetters(0, 10)
			if err != nil {
				t.Fatalf("DeadLetters: %v", err)
			}
			if len(dls) != len(events) {
				t.Fatalf("%d dead letters, want %d", len(dls), len(events))
			}
			for i, dl := range dls {
				if dl.Status != tc.status || dl.Reason != tc.wantReason {
					t.Errorf("dead letter %d = (%d, %q), want (%d, %q)", i, dl.Status, dl.Reason, tc.status, tc.wantReason)
				}
				if strings.Contains(dl.Reason, token) {
					t.Errorf("dead letter %d reason %q holds the token", i, dl.Reason)
				}
				if dl.Event.IdempotencyKey != events[i].IdempotencyKey {
					t.Errorf("dead letter %d key = %q, want %q", i, dl.Event.IdempotencyKey, events[i].IdempotencyKey)
				}
			}
			if got := api.count(); got != len(events) {
				t.Errorf("server saw %d POSTs, want %d (a permanent answer is not retried)", got, len(events))
			}
			code := strconv.Itoa(tc.status)
			if got := testutil.ToFloat64(d.metrics.deadLetters.WithLabelValues("rejected", code)); got != float64(len(events)) {
				t.Errorf("timerd_dead_letters_total{reason=\"rejected\",code=%q} = %v, want %d", code, got, len(events))
			}
		})
	}
}

func TestDeliveryRefreshesTokenOn401(t *testing.T) {
	leakCheck(t)
	st := openStore(t)
	api := newFakeAPI(t, func(r seenRequest, _ int) response {
		if r.Header.Get("Authorization") != "Bearer new" {
			return response{status: 401}
		}
		return response{status: 201}
	})
	events := commitEvents(t, st, 15, 40, slot0)
	tokens := &staticTokens{tokens: []string{"old", "new"}}
	cfg := testConfig(st, api.srv.URL)
	cfg.Tokens = tokens
	startDelivery(t, cfg)

	testkit.Eventually(t, 5*time.Second, "an empty outbox", func() bool { return outboxLen(t, st) == 0 })
	if got := tokens.calls(); len(got) != 1 || got[0] != "old" {
		t.Errorf("Invalidate calls = %q, want exactly [old]", got)
	}
	for _, ev := range events {
		if n := api.successCount(ev.IdempotencyKey); n != 1 {
			t.Errorf("key %s delivered %d times, want 1", ev.IdempotencyKey, n)
		}
	}
	if n, _ := st.DeadLetterCount(); n != 0 {
		t.Errorf("DeadLetterCount() = %d, want 0", n)
	}
}

func TestDelivery401NeverDeadLetters(t *testing.T) {
	leakCheck(t)
	st := openStore(t)
	api := newFakeAPI(t, func(seenRequest, int) response { return response{status: 401} })
	commitEvents(t, st, 16, 5, slot0)
	tokens := &staticTokens{tokens: []string{"a", "b", "c"}}
	cfg := testConfig(st, api.srv.URL)
	cfg.Tokens = tokens
	_, stop := startDelivery(t, cfg)

	testkit.Eventually(t, 5*time.Second, "30 refused POSTs", func() bool { return api.count() >= 30 })
	stop()
	if got := tokens.calls(); strings.Join(got, ",") != "a,b,c" {
		t.Errorf("Invalidate calls = %q, want [a b c] (once per token)", got)
	}
	if n := outboxLen(t, st); n != 5 {
		t.Errorf("outbox holds %d entries after repeated 401s, want 5", n)
	}
	if n, _ := st.DeadLetterCount(); n != 0 {
		t.Errorf("DeadLetterCount() = %d after 401s, want 0", n)
	}
}

func TestDeliveryNetworkErrors(t *testing.T) {
	t.Run("server hangs up, then recovers", func(t *testing.T) {
		leakCheck(t)
		st := openStore(t)
		api := newFakeAPI(t, func(seenRequest, int) response { return response{hangUp: true} })
		events := commitEvents(t, st, 17, 10, slot0)
		startDelivery(t, testConfig(st, api.srv.URL))

		testkit.Eventually(t, 5*time.Second, "30 failed POSTs", func() bool { return api.count() >= 30 })
		if n := outboxLen(t, st); n != len(events) {
			t.Fatalf("outbox holds %d entries while the API is down, want %d", n, len(events))
		}
		api.setRespond(created)
		testkit.Eventually(t, 5*time.Second, "an empty outbox", func() bool { return outboxLen(t, st) == 0 })
		for _, ev := range events {
			if n := api.successCount(ev.IdempotencyKey); n != 1 {
				t.Errorf("key %s delivered %d times, want 1", ev.IdempotencyKey, n)
			}
		}
	})
	t.Run("connection refused keeps the outbox", func(t *testing.T) {
		leakCheck(t)
		st := openStore(t)
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("listen: %v", err)
		}
		url := "http://" + ln.Addr().String()
		_ = ln.Close() // nothing listens there now
		commitEvents(t, st, 18, 3, slot0)
		d, err := NewDelivery(testConfig(st, url))
		if err != nil {
			t.Fatalf("NewDelivery: %v", err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		if err := d.Flush(ctx); !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Flush against a refused port = %v, want context.DeadlineExceeded", err)
		}
		if n := outboxLen(t, st); n != 3 {
			t.Errorf("outbox holds %d entries, want 3", n)
		}
	})
}

func TestDeliveryPoisonedEntryDoesNotBlockOthers(t *testing.T) {
	leakCheck(t)
	st := openStore(t)
	poisoned := commitEvents(t, st, 19, 1, slot0)[0]
	api := newFakeAPI(t, func(r seenRequest, _ int) response {
		if r.Header.Get("Idempotency-Key") == poisoned.IdempotencyKey {
			return response{status: 500}
		}
		return response{status: 201}
	})
	others := commitEvents(t, st, 20, 1000, slot0)
	cfg := testConfig(st, api.srv.URL)
	cfg.BackoffMin, cfg.BackoffMax = 20*time.Millisecond, 200*time.Millisecond
	_, stop := startDelivery(t, cfg)

	testkit.Eventually(t, 30*time.Second, "all other entries delivered", func() bool { return outboxLen(t, st) == 1 })
	start := time.Now()
	before := api.attemptsOf(poisoned.IdempotencyKey)
	testkit.Eventually(t, 5*time.Second, "two more attempts of the poisoned entry", func() bool {
		return api.attemptsOf(poisoned.IdempotencyKey) >= before+2
	})
	stop()
	// Backoff: far fewer attempts than a spinning worker would make.
	if n, elapsed := api.attemptsOf(poisoned.IdempotencyKey)-before, time.Since(start); n > int(elapsed/cfg.BackoffMin)+2 {
		t.Errorf("poisoned entry was tried %d times in %v with BackoffMin %v: not backing off", n, elapsed, cfg.BackoffMin)
	}
	for _, ev := range others {
		if n := api.successCount(ev.IdempotencyKey); n != 1 {
			t.Fatalf("key %s delivered %d times, want 1", ev.IdempotencyKey, n)
		}
	}
}

func (f *fakeAPI) attemptsOf(key string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.attempts[key]
}

func TestDeliveryConcurrencyBoundedByWorkers(t *testing.T) {
	const workers = 3
	leakCheck(t)
	st := openStore(t)
	release := make(chan struct{})
	var once sync.Once
	var api *fakeAPI
	api = newFakeAPI(t, func(seenRequest, int) response {
		// Hold the first POSTs until `workers` of them are in flight together.
		if api.inFlight.Load() >= workers {
			once.Do(func() { close(release) })
		}
		return response{status: 201, block: release}
	})
	events := commitEvents(t, st, 21, 60, slot0)
	cfg := testConfig(st, api.srv.URL)
	cfg.Workers = workers
	startDelivery(t, cfg)

	testkit.Eventually(t, 5*time.Second, "an empty outbox", func() bool { return outboxLen(t, st) == 0 })
	if got := api.peak.Load(); got != workers {
		t.Errorf("peak POSTs in flight = %d, want %d (Workers)", got, workers)
	}
	if got := api.count(); got != len(events) {
		t.Errorf("server saw %d POSTs, want %d", got, len(events))
	}
}

func TestDeliveryManyExactlyOnce(t *testing.T) {
	tests := []struct {
		name         string
		batches      int // of 1000 events
		failEvery    int // every n-th POST answers 503 (0: none)
		wantRequests bool
	}{
		{name: "no failures", batches: 3, wantRequests: true},
		{name: "every 7th POST fails", batches: 2, failEvery: 7},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			leakCheck(t)
			st := openStore(t)
			var n atomic.Int64
			api := newFakeAPI(t, func(seenRequest, int) response {
				if tc.failEvery > 0 && n.Add(1)%int64(tc.failEvery) == 0 {
					return response{status: 503}
				}
				return response{status: 201}
			})
			d, _ := startDelivery(t, testConfig(st, api.srv.URL))

			// Commit while delivery runs, as the scheduler does.
			var events []store.Event
			for batch := range tc.batches {
				events = append(events, commitEvents(t, st, int64(100+batch), 1000, slot0)...)
				d.Notify()
			}
			testkit.Eventually(t, 60*time.Second, "an empty outbox", func() bool { return outboxLen(t, st) == 0 })
			for _, ev := range events {
				if got := api.successCount(ev.IdempotencyKey); got != 1 {
					t.Fatalf("key %s delivered %d times, want 1", ev.IdempotencyKey, got)
				}
			}
			if got := api.count(); tc.wantRequests && got != len(events) {
				t.Errorf("server saw %d POSTs for %d events, want one each", got, len(events))
			}
		})
	}
}

func TestDeliveryFlush(t *testing.T) {
	t.Run("without Run", func(t *testing.T) {
		leakCheck(t)
		st := openStore(t)
		api := newFakeAPI(t, nil)
		events := commitEvents(t, st, 22, 500, slot0)
		d, err := NewDelivery(testConfig(st, api.srv.URL))
		if err != nil {
			t.Fatalf("NewDelivery: %v", err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := d.Flush(ctx); err != nil {
			t.Fatalf("Flush = %v, want nil", err)
		}
		if n := outboxLen(t, st); n != 0 {
			t.Errorf("outbox holds %d entries after Flush, want 0", n)
		}
		if got := api.count(); got != len(events) {
			t.Errorf("server saw %d POSTs, want %d", got, len(events))
		}
		if err := d.Flush(ctx); err != nil {
			t.Errorf("Flush of an empty outbox = %v, want nil", err)
		}
	})
	t.Run("after Run returned", func(t *testing.T) {
		leakCheck(t)
		st := openStore(t)
		api := newFakeAPI(t, nil)
		d, stop := startDelivery(t, testConfig(st, api.srv.URL))
		stop()
		commitEvents(t, st, 23, 50, slot0)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := d.Flush(ctx); err != nil {
			t.Fatalf("Flush = %v, want nil", err)
		}
		if n := outboxLen(t, st); n != 0 {
			t.Errorf("outbox holds %d entries after Flush, want 0", n)
		}
	})
	t.Run("while Run is active", func(t *testing.T) {
		leakCheck(t)
		st := openStore(t)
		api := newFakeAPI(t, nil)
		cfg := testConfig(st, api.srv.URL)
		cfg.PollInterval = time.Hour // only Flush's Notify wakes Run
		d, _ := startDelivery(t, cfg)
		commitEvents(t, st, 24, 50, slot0)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := d.Flush(ctx); err != nil {
			t.Fatalf("Flush = %v, want nil", err)
		}
		if n := outboxLen(t, st); n != 0 {
			t.Errorf("outbox holds %d entries after Flush, want 0", n)
		}
	})
	t.Run("gives up at the deadline", func(t *testing.T) {
		leakCheck(t)
		st := openStore(t)
		api := newFakeAPI(t, func(seenRequest, int) response { return response{status: 500} })
		commitEvents(t, st, 25, 5, slot0)
		d, err := NewDelivery(testConfig(st, api.srv.URL))
		if err != nil {
			t.Fatalf("NewDelivery: %v", err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		if err := d.Flush(ctx); !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Flush against a failing API = %v, want context.DeadlineExceeded", err)
		}
		if n := outboxLen(t, st); n != 5 {
			t.Errorf("outbox holds %d entries, want 5", n)
		}
	})
}

func TestDeliveryRunStopsPromptlyWithPOSTsInFlight(t *testing.T) {
	leakCheck(t)
	st := openStore(t)
	hold := make(chan struct{})
	defer close(hold)
	api := newFakeAPI(t, func(seenRequest, int) response { return response{status: 201, block: hold} })
	commitEvents(t, st, 26, 10, slot0)
	cfg := testConfig(st, api.srv.URL)
	cfg.Timeout = time.Minute
	_, stop := startDelivery(t, cfg)

	testkit.Eventually(t, 5*time.Second, "POSTs in flight", func() bool { return api.inFlight.Load() == int64(cfg.Workers) })
	stop() // fails the test if Run takes more than 5 s
	if n := outboxLen(t, st); n != 10 {
		t.Errorf("outbox holds %d entries after a cancelled Run, want 10", n)
	}
}

func TestDeliveryMetricsRegistered(t *testing.T) {
	leakCheck(t)
	st := openStore(t)
	hold := make(chan struct{})
	api := newFakeAPI(t, func(seenRequest, int) response { return response{status: 201, block: hold} })
	commitEvents(t, st, 27, 7, slot0)
	reg := prometheus.NewRegistry()
	cfg := testConfig(st, api.srv.URL)
	cfg.Registerer = reg
	startDelivery(t, cfg)

	testkit.Eventually(t, 5*time.Second, "POSTs in flight", func() bool { return api.inFlight.Load() == int64(cfg.Workers) })
	close(hold)
	testkit.Eventually(t, 5*time.Second, "outbox empty", func() bool { n, _ := st.OutboxLen(); return n == 0 })
	families, err := reg.Gather()
	if err != nil {
		t.Fatalf("Gather: %v", err)
	}
	names := map[string]bool{}
	for _, f := range families {
		names[f.GetName()] = true
	}
	for _, want := range []string{"timerd_deliveries_total", "timerd_delivery_seconds"} {
		if !names[want] {
			t.Errorf("registry lacks %s; has %v", want, names)
		}
	}
	// A second Delivery on the same registry is an error naming a metric,
	// not a panic and not series shared in silence.
	if _, err := NewDelivery(cfg); err == nil || !strings.Contains(err.Error(), "timerd_deliveries_total") {
		t.Errorf("second NewDelivery on one registry = %v, want an error naming timerd_deliveries_total", err)
	}
	// Two Deliveries wrapped with labels that tell them apart share one.
	shared := prometheus.NewRegistry()
	for _, name := range []string{"a", "b"} {
		cfg.Registerer = prometheus.WrapRegistererWith(prometheus.Labels{"delivery": name}, shared)
		if _, err := NewDelivery(cfg); err != nil {
			t.Errorf("NewDelivery on a shared registry with the label delivery=%q: %v", name, err)
		}
	}
}

func TestDeliveryConfigValidate(t *testing.T) {
	st := openStore(t)
	ok := DeliveryConfig{Store: st, APIURL: "http://127.0.0.1:1"}
	tests := []struct {
		name      string
		edit      func(*DeliveryConfig)
		wantField string // "" for valid
	}{
		{"defaults", func(*DeliveryConfig) {}, ""},
		{"https with prefix", func(c *DeliveryConfig) { c.APIURL = "https://attune.example/api-gw" }, ""},
		{"no store", func(c *DeliveryConfig) { c.Store = nil }, "Store"},
		{"no URL", func(c *DeliveryConfig) { c.APIURL = "" }, "APIURL"},
		{"ftp URL", func(c *DeliveryConfig) { c.APIURL = "ftp://host" }, "APIURL"},
		{"no host", func(c *DeliveryConfig) { c.APIURL = "http://" }, "APIURL"},
		{"query", func(c *DeliveryConfig) { c.APIURL = "http://h/?a=b" }, "APIURL"},
		{"unparsable", func(c *DeliveryConfig) { c.APIURL = "http://h:port:x" }, "APIURL"},
		{"negative workers", func(c *DeliveryConfig) { c.Workers = -1 }, "Workers"},
		{"too many workers", func(c *DeliveryConfig) { c.Workers = 100_000 }, "Workers"},
		{"negative timeout", func(c *DeliveryConfig) { c.Timeout = -time.Second }, "Timeout"},
		{"negative backoff", func(c *DeliveryConfig) { c.BackoffMin = -1 }, "BackoffMin"},
		{"max below min", func(c *DeliveryConfig) { c.BackoffMin, c.BackoffMax = time.Second, time.Millisecond }, "BackoffMax"},
		{"negative poll", func(c *DeliveryConfig) { c.PollInterval = -1 }, "PollInterval"},
		{"negative reject window", func(c *DeliveryConfig) { c.RejectRetryWindow = -time.Second }, "RejectRetryWindow"},
		{"negative breaker threshold", func(c *DeliveryConfig) { c.BreakerThreshold = -1 }, "BreakerThreshold"},
		{"negative probe", func(c *DeliveryConfig) { c.ProbeMin = -1 }, "ProbeMin"},
		{"probe max below min", func(c *DeliveryConfig) { c.ProbeMin, c.ProbeMax = time.Hour, time.Minute }, "ProbeMax"},
		{"catch-up rate", func(c *DeliveryConfig) { c.CatchUpRate = 0.5 }, ""},
		{"catch-up share 1", func(c *DeliveryConfig) { c.CatchUpShare = 1 }, ""},
		{"negative catch-up rate", func(c *DeliveryConfig) { c.CatchUpRate = -2 }, "CatchUpRate"},
		{"NaN catch-up rate", func(c *DeliveryConfig) { c.CatchUpRate = math.NaN() }, "CatchUpRate"},
		{"infinite catch-up rate", func(c *DeliveryConfig) { c.CatchUpRate = math.Inf(1) }, "CatchUpRate"},
		{"catch-up share above 1", func(c *DeliveryConfig) { c.CatchUpShare = 1.5 }, "CatchUpShare"},
		{"negative catch-up share", func(c *DeliveryConfig) { c.CatchUpShare = -0.1 }, "CatchUpShare"},
		{"NaN catch-up share", func(c *DeliveryConfig) { c.CatchUpShare = math.NaN() }, "CatchUpShare"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := ok
			tc.edit(&cfg)
			err := cfg.Validate()
			if tc.wantField == "" {
				if err != nil {
					t.Errorf("Validate(%s) = %v, want nil", tc.name, err)
				}
				return
			}
			if !errors.Is(err, ErrDeliveryConfig) || !strings.Contains(err.Error(), tc.wantField+":") {
				t.Errorf("Validate(%s) = %v, want ErrDeliveryConfig naming %s", tc.name, err, tc.wantField)
			}
			if _, nerr := NewDelivery(cfg); nerr == nil {
				t.Errorf("NewDelivery(%s) accepted a bad config", tc.name)
			}
		})
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		in   string
		want time.Duration
	}{
		{"", 0},
		{"0", 0},
		{"-3", 0},
		{"2", 2 * time.Second},
		{" 7 ", 7 * time.Second},
		{"99999999999", 24 * time.Hour},
		{now.Add(90 * time.Second).Format(http.TimeFormat), 90 * time.Second},
		{now.Add(-time.Minute).Format(http.TimeFormat), 0},
		{"soon", 0},
	}
	for _, tc := range tests {
		if got := parseRetryAfter(tc.in, now); got != tc.want {
			t.Errorf("parseRetryAfter(%q) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

func TestIsPermanent(t *testing.T) {
	for code := 100; code < 600; code++ {
		want := code >= 400 && code < 500
		switch code {
		case 401, 408, 409, 425, 429:
			want = false
		}
		if got := isPermanent(code); got != want {
			t.Errorf("isPermanent(%d) = %v, want %v", code, got, want)
		}
	}
}

// BenchmarkDelivery posts b.N committed events to a local server with
// Flush and reports events/s.
func BenchmarkDelivery(b *testing.B) {
	for _, workers := range []int{1, 8, 32} {
		b.Run(fmt.Sprintf("workers=%d", workers), func(b *testing.B) {
			st := openStore(b)
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				_, _ = io.Copy(io.Discard, r.Body)
				w.WriteHeader(http.StatusCreated)
				_, _ = io.WriteString(w, `{"data":{"id":1}}`)
			}))
			defer srv.Close()
			commitEvents(b, st, 1, b.N, slot0)
			d, err := NewDelivery(DeliveryConfig{Store: st, APIURL: srv.URL, Workers: workers})
			if err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			start := time.Now()
			if err := d.Flush(context.Background()); err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "events/s")
			if n, _ := st.OutboxLen(); n != 0 {
				b.Fatalf("outbox holds %d entries after Flush", n)
			}
		})
	}
}

// TestDeliveredEventIsNotPostedAgainWhenItsAckFails: the receiver answered 2xx,
// then the commit that removes the event from the outbox failed (a full disk).
// The event is acked again later, never posted again, also across a restart of
// the engine (Run, then Flush). tmpfs_test in test/e2e does it on a real full disk.
func TestDeliveredEventIsNotPostedAgainWhenItsAckFails(t *testing.T) {
	leakCheck(t)
	st := openStore(t)
	api := newFakeAPI(t, created)
	events := commitEvents(t, st, 7, 5, time.Unix(1_700_000_000, 0))

	cfg := testConfig(st, api.srv.URL)
	var told atomic.Int64 // AckFailed calls
	cfg.AckFailed = func(error) { told.Add(1) }
	d, err := NewDelivery(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var failing atomic.Bool
	var failed atomic.Int64
	failing.Store(true)
	d.ack = func(seqs ...uint64) error {
		if failing.Load() {
			failed.Add(1)
			return errors.New("write: no space left on device")
		}
		return st.AckOutbox(seqs...)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = d.Run(ctx); close(done) }()
	testkit.Eventually(t, 5*time.Second, "every event delivered and an ack failed twice", func() bool {
		return api.count() >= len(events) && failed.Load() >= 2
	})
	time.Sleep(100 * time.Millisecond) // several poll intervals and ack retries
	cancel()
	<-done
	if n := outboxLen(t, st); n != len(events) {
		t.Fatalf("outbox holds %d entries with every ack failing, want %d", n, len(events))
	}
	// The last failure may come back after the engine stopped: not told then.
	if got, want := told.Load(), failed.Load(); got < 1 || got > want {
		t.Errorf("AckFailed called %d times for %d failed ack commits, want 1..%d", got, want, want)
	}

	// A new engine acks what the last one could not, without posting it.
	failing.Store(false)
	fctx, fcancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer fcancel()
	if err := d.Flush(fctx); err != nil {
		t.Fatalf("Flush: %v", err)
	}
	if n := outboxLen(t, st); n != 0 {
		t.Errorf("outbox holds %d entries after the disk came back, want 0", n)
	}
	for _, ev := range events {
		if n := api.attemptsOf(ev.IdempotencyKey); n != 1 {
			t.Errorf("event %s posted %d times, want 1: a delivered event was posted again after its ack failed", ev.IdempotencyKey, n)
		}
	}
}
