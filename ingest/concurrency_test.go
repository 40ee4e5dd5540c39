package ingest

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/timerd/timerd/test/testkit"
)

// after is a channel closed d from now: a fakeAPI answer delayed by d.
func after(d time.Duration) <-chan struct{} {
	c := make(chan struct{})
	time.AfterFunc(d, func() { close(c) })
	return c
}

var t0 = time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)

// runWindows feeds l windows of samples of round trip rtt, one window at a
// time, each made of POSTs that waited for a slot when binds, and returns the
// time after the last window.
func runWindows(l *limiter, now time.Time, windows int, rtt time.Duration, binds bool) time.Time {
	for range windows {
		for range minWindowSamples {
			if binds {
				l.binds()
			}
			now = now.Add(max(minWindow, 2*rtt) / minWindowSamples)
			l.success(now.Add(-rtt), rtt, now)
		}
		// The window ends with the first sample past its length.
		now = now.Add(max(minWindow, 2*rtt))
		if binds {
			l.binds()
		}
		l.success(now.Add(-rtt), rtt, now)
	}
	return now
}

func TestLimiterGrowsWhileLatencyHolds(t *testing.T) {
	l := newLimiter(1000)
	if got := l.current(t0); got != initialLimit {
		t.Fatalf("new limiter: current = %d, want %d", got, initialLimit)
	}
	now := t0
	prev := l.value()
	for i := range 20 {
		now = runWindows(l, now, 1, 20*time.Millisecond, true)
		if l.value() <= prev {
			t.Fatalf("window %d at 20 ms with a backlog: limit %d, want above %d", i, l.value(), prev)
		}
		prev = l.value()
	}
	// A 20 ms receiver needs 200 in flight for 10,000 events/s: reached in
	// 20 windows, about a second at that round trip.
	if l.value() < 200 {
		t.Errorf("after 20 windows of 20 ms (%v): limit %d, want ≥ 200", now.Sub(t0), l.value())
	}
}

func TestLimiterHoldsWithoutBacklog(t *testing.T) {
	l := newLimiter(1000)
	runWindows(l, t0, 50, 20*time.Millisecond, false)
	if got := l.value(); got != initialLimit {
		t.Errorf("50 windows with nothing waiting: limit %d, want %d (unchanged)", got, initialLimit)
	}
}

func TestLimiterShrinksWhenLatencyRises(t *testing.T) {
	l := newLimiter(1000)
	now := runWindows(l, t0, 10, 10*time.Millisecond, true)
	grown := l.value()
	now = runWindows(l, now, 1, 50*time.Millisecond, true) // 5× the base
	if got := l.value(); got >= grown || got < grown/2 {
		t.Errorf("a window at 5× the base round trip: limit %d, want in [%d, %d)", got, grown/2, grown)
	}
	// Within tolerance (1.5× the base) it grows again.
	before := l.value()
	now = runWindows(l, now, 1, 15*time.Millisecond, true)
	if got := l.value(); got <= before {
		t.Errorf("a window at 1.5× the base round trip: limit %d, want above %d", got, before)
	}
	// A receiver slower for good (or a busy machine's own delays) becomes the
	// new base: the limit does not stay cut.
	now = runWindows(l, now, 1, 60*time.Millisecond, true)
	cut := l.value()
	runWindows(l, now, 60, 60*time.Millisecond, true)
	if got := l.value(); got <= cut {
		t.Errorf("60 windows at a steady 60 ms after a cut to %d: limit %d, want above", cut, got)
	}
}

func TestLimiterHalvesOnOverloadOncePerRound(t *testing.T) {
	for _, status := range []int{0, 408, 429, 500, 502, 503, 504} {
		if !isOverload(status) {
			t.Errorf("isOverload(%d) = false, want true", status)
		}
	}
	for _, status := range []int{301, 307, 409, 425} {
		if isOverload(status) {
			t.Errorf("isOverload(%d) = true, want false", status)
		}
	}
	l := newLimiter(1000)
	now := runWindows(l, t0, 10, 20*time.Millisecond, true)
	grown := l.value()
	// 50 POSTs in flight together all answered 503: one halving.
	started := now.Add(-20 * time.Millisecond)
	for i := range 50 {
		l.overload(started, now.Add(time.Duration(i)*time.Millisecond))
	}
	if got := l.value(); got != grown/2 {
		t.Errorf("50 overloads of POSTs in flight together: limit %d, want %d (halved once)", got, grown/2)
	}
	// A POST started after the halving halves again.
	now = now.Add(100 * time.Millisecond)
	l.overload(now.Add(-time.Millisecond), now)
	if got := l.value(); got != grown/4 {
		t.Errorf("a later overload: limit %d, want %d", got, grown/4)
	}
	// Down to 1, never 0.
	for range 20 {
		now = now.Add(time.Second)
		l.overload(now.Add(-time.Millisecond), now)
	}
	if got := l.current(now); got != 1 {
		t.Errorf("after 20 more overloads: current %d, want 1", got)
	}
}

func TestLimiterHonoursRetryAfter(t *testing.T) {
	l := newLimiter(1000)
	now := t0
	l.retryAfter(now.Add(-time.Millisecond), now, 2*time.Second)
	if got := l.value(); got != initialLimit/2 {
		t.Errorf("after a Retry-After: limit %d, want %d (halved)", got, initialLimit/2)
	}
	for _, at := range []time.Duration{0, time.Second, 2*time.Second - time.Nanosecond} {
		if got := l.current(now.Add(at)); got != 0 {
			t.Errorf("%v into a 2s Retry-After: current %d, want 0", at, got)
		}
	}
	if got := l.current(now.Add(2 * time.Second)); got != initialLimit/2 {
		t.Errorf("at the end of a 2s Retry-After: current %d, want %d", got, initialLimit/2)
	}
	// A shorter Retry-After does not cut a longer pause short.
	l.retryAfter(now, now.Add(time.Millisecond), 10*time.Millisecond)
	if got := l.current(now.Add(time.Second)); got != 0 {
		t.Errorf("a shorter Retry-After during a pause: current %d at 1s, want 0", got)
	}
}

func TestLimiterNeverExceedsCeiling(t *testing.T) {
	l := newLimiter(50)
	now := runWindows(l, t0, 200, time.Millisecond, true)
	if got := l.value(); got != 50 {
		t.Errorf("200 good windows under a ceiling of 50: limit %d, want 50", got)
	}
	l.setCeiling(10) // the cluster grew
	if got := l.current(now); got != 10 {
		t.Errorf("ceiling lowered to 10: current %d, want 10", got)
	}
	runWindows(l, now, 50, time.Millisecond, true)
	if got := l.value(); got != 10 {
		t.Errorf("50 good windows under a ceiling of 10: limit %d, want 10", got)
	}
	if got := newLimiter(0).value(); got != 1 {
		t.Errorf("newLimiter(0): limit %d, want 1", got)
	}
}

func TestDeliveryCeilingSharesBudgetAmongMembers(t *testing.T) {
	members := func(n int) func() int { return func() int { return n } }
	tests := []struct {
		name    string
		cfg     DeliveryConfig
		ceiling int
	}{
		{"alone, no Members", DeliveryConfig{Budget: 512}, 512},
		{"alone", DeliveryConfig{Budget: 512, Members: members(1)}, 512},
		{"3 members", DeliveryConfig{Budget: 512, Members: members(3)}, 170},
		{"members unknown", DeliveryConfig{Budget: 512, Members: members(0)}, 512},
		{"more members than budget", DeliveryConfig{Budget: 4, Members: members(10)}, 1},
		{"Workers caps the share", DeliveryConfig{Budget: 512, Members: members(2), Workers: 32}, 32},
		{"share below Workers", DeliveryConfig{Budget: 512, Members: members(32), Workers: 32}, 16},
	}
	for _, tc := range tests {
		if got := tc.cfg.ceiling(); got != tc.ceiling {
			t.Errorf("%s: ceiling() = %d, want %d", tc.name, got, tc.ceiling)
		}
	}
}

// TestDeliveryScalesPastFixedPoolAgainstSlowReceiver: a receiver that takes
// 20 ms a request held the old fixed pool of 32 to 1,600 events/s; with a
// backlog the POSTs in flight grow past it.
func TestDeliveryScalesPastFixedPoolAgainstSlowReceiver(t *testing.T) {
	leakCheck(t)
	st := openStore(t)
	var inFlight, peak atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := inFlight.Add(1)
		defer inFlight.Add(-1)
		for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
		}
		_, _ = io.Copy(io.Discard, r.Body)
		time.Sleep(20 * time.Millisecond)
		w.WriteHeader(http.StatusCreated)
	}))
	t.Cleanup(srv.Close)
	const n = 6000
	commitEvents(t, st, 1, n, time.Now())
	reg := prometheus.NewRegistry()
	d, err := NewDelivery(DeliveryConfig{Store: st, APIURL: srv.URL, Registerer: reg})
	if err != nil {
		t.Fatalf("NewDelivery: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	start := time.Now()
	if err := d.Flush(ctx); err != nil {
		t.Fatalf("Flush: %v", err)
	}
	took := time.Since(start)
	t.Logf("%d events in %v (%.0f/s), peak %d POSTs in flight, limit %v", n, took.Round(time.Millisecond),
		n/took.Seconds(), peak.Load(), testutil.ToFloat64(d.metrics.limit))
	if got := peak.Load(); got <= 32 {
		t.Errorf("peak POSTs in flight against a 20 ms receiver with %d events waiting = %d, want > 32 (the old fixed pool)", n, got)
	}
	// Where the limit ends depends on how busy the machine is (a starved
	// client sees longer round trips); within the ceiling, whatever it is.
	if got := testutil.ToFloat64(d.metrics.limit); got < 1 || got > DefaultDeliveryBudget {
		t.Errorf("timerd_delivery_concurrency_limit = %v, want in [1, %d]", got, DefaultDeliveryBudget)
	}
	if got := testutil.ToFloat64(d.metrics.ceiling); got != DefaultDeliveryBudget {
		t.Errorf("timerd_delivery_concurrency_ceiling = %v, want %d", got, DefaultDeliveryBudget)
	}
}

// TestDeliveryReusesAConnectionPerWorker: every POST in flight keeps its
// connection alive for the next, so a run of thousands of POSTs opens about
// as many connections as it ever had in flight (net/http's default of 2 idle
// per host would open one for nearly every POST past the second).
func TestDeliveryReusesAConnectionPerWorker(t *testing.T) {
	leakCheck(t)
	st := openStore(t)
	var conns atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		time.Sleep(5 * time.Millisecond)
		w.WriteHeader(http.StatusCreated)
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	if host, _, _ := net.SplitHostPort(srv.Listener.Addr().String()); host != "127.0.0.1" {
		t.Fatalf("test server on %s, want 127.0.0.1", host)
	}
	const n, budget = 4000, 128
	commitEvents(t, st, 1, n, time.Now())
	d, err := NewDelivery(DeliveryConfig{Store: st, APIURL: srv.URL, Budget: budget})
	if err != nil {
		t.Fatalf("NewDelivery: %v", err)
	}
	if got := d.poster.hc.MaxConns; got < budget {
		t.Errorf("MaxConns = %d, want ≥ %d (the most POSTs in flight)", got, budget)
	}
	if err := d.Flush(context.Background()); err != nil {
		t.Fatalf("Flush: %v", err)
	}
	t.Logf("%d POSTs over %d connections, limit %v at the end", n, conns.Load(), testutil.ToFloat64(d.metrics.limit))
	// At most budget in flight; a dial that a connection freed meanwhile
	// overtook still ends in the idle pool and is reused: at most one more
	// per POST in flight.
	if got := conns.Load(); got > 2*budget || got > n/10 {
		t.Errorf("%d POSTs with at most %d in flight opened %d connections, want ≤ %d", n, budget, got, min(2*budget, n/10))
	}
}

// TestDeliveryOnTimeBeforeCatchUp: events fired now go before an outage's
// backlog, also when the backlog is larger than the engine's window.
func TestDeliveryOnTimeBeforeCatchUp(t *testing.T) {
	leakCheck(t)
	st := openStore(t)
	api := newFakeAPI(t, func(seenRequest, int) response {
		return response{status: 201, block: after(5 * time.Millisecond)}
	})
	old := commitEvents(t, st, 1, 3000, time.Now().Add(-24*time.Hour)) // the backlog: 3 windows' worth
	cfg := testConfig(st, api.srv.URL)
	cfg.Workers = 8
	cfg.CatchUpShare = 1 // the whole limit but the reserve (the default share is tested in catchup_test.go)
	reg := prometheus.NewRegistry()
	cfg.Registerer = reg
	_, stop := startDelivery(t, cfg)
	defer stop()
	testkit.Eventually(t, 10*time.Second, "the backlog's delivery", func() bool { return api.count() >= 50 })
	if got := api.peak.Load(); got > 7 {
		t.Errorf("catch-up alone, limit 8: peak %d POSTs in flight, want ≤ 7 (1/%d kept for on-time events)", got, catchUpReserve)
	}

	fresh := commitEvents(t, st, 2, 40, time.Now())
	testkit.Eventually(t, 20*time.Second, "the fresh events' delivery", func() bool {
		for _, ev := range fresh {
			if api.successCount(ev.IdempotencyKey) == 0 {
				return false
			}
		}
		return true
	})
	delivered := 0
	for _, ev := range old {
		delivered += api.successCount(ev.IdempotencyKey)
	}
	if delivered > len(old)/2 {
		t.Errorf("the fresh events were delivered after %d of the %d backlog's, want them well before", delivered, len(old))
	}
	t.Logf("40 fresh events delivered after %d of %d backlog events", delivered, len(old))
}

// TestDeliveryBudgetSharedByMembers: a node of four with a budget of 40 has
// at most 10 POSTs in flight.
func TestDeliveryBudgetSharedByMembers(t *testing.T) {
	leakCheck(t)
	st := openStore(t)
	release := make(chan struct{})
	api := newFakeAPI(t, func(seenRequest, int) response { return response{status: 201, block: release} })
	commitEvents(t, st, 1, 60, time.Now())
	cfg := testConfig(st, api.srv.URL)
	cfg.Workers, cfg.Budget = 0, 40
	cfg.Members = func() int { return 4 }
	startDelivery(t, cfg)
	testkit.Eventually(t, 5*time.Second, "10 POSTs in flight", func() bool { return api.inFlight.Load() == 10 })
	time.Sleep(100 * time.Millisecond) // room for a wrong 11th
	if got := api.peak.Load(); got != 10 {
		t.Errorf("budget 40 over 4 members: peak %d POSTs in flight, want 10", got)
	}
	close(release)
	testkit.Eventually(t, 5*time.Second, "an empty outbox", func() bool { return outboxLen(t, st) == 0 })
}

// TestDeliveryBacksOffOnOverload: 503s halve the POSTs in flight, and a
// Retry-After stops every POST until it has passed.
func TestDeliveryBacksOffOnOverload(t *testing.T) {
	leakCheck(t)
	st := openStore(t)
	var retryAfterAt atomic.Int64 // unix nanos of the Retry-After answer
	api := newFakeAPI(t, func(r seenRequest, attempt int) response {
		if retryAfterAt.CompareAndSwap(0, r.At.UnixNano()) {
			return response{status: 429, header: map[string]string{"Retry-After": "1"}}
		}
		return created(r, attempt)
	})
	commitEvents(t, st, 1, 20, time.Now())
	cfg := testConfig(st, api.srv.URL)
	cfg.Workers = 1 // one at a time: the 429 is answered before the next POST
	cfg.BackoffMax = 5 * time.Second
	reg := prometheus.NewRegistry()
	cfg.Registerer = reg
	d, _ := startDelivery(t, cfg)
	testkit.Eventually(t, 10*time.Second, "an empty outbox", func() bool { return outboxLen(t, st) == 0 })
	reqs := api.requests()
	if len(reqs) < 2 {
		t.Fatalf("%d requests, want ≥ 2", len(reqs))
	}
	if gap := reqs[1].At.Sub(reqs[0].At); gap < 900*time.Millisecond {
		t.Errorf("the POST after a 429 with Retry-After: 1 came %v later, want ≥ 1s", gap)
	}
	if got := testutil.ToFloat64(d.metrics.limitDecreases.WithLabelValues("retry_after")); got != 1 {
		t.Errorf("timerd_delivery_concurrency_decreases_total{reason=retry_after} = %v, want 1", got)
	}
}

func TestDeliveryOverloadHalvesInFlight(t *testing.T) {
	leakCheck(t)
	st := openStore(t)
	var failing atomic.Bool
	failing.Store(true)
	api := newFakeAPI(t, func(r seenRequest, attempt int) response {
		if failing.Load() {
			return response{status: 503, block: after(5 * time.Millisecond)}
		}
		return response{status: 201, block: after(20 * time.Millisecond)}
	})
	commitEvents(t, st, 1, 200, time.Now())
	cfg := testConfig(st, api.srv.URL)
	cfg.Workers = 0 // limit starts at 32
	reg := prometheus.NewRegistry()
	cfg.Registerer = reg
	d, stop := startDelivery(t, cfg)
	defer stop()
	testkit.Eventually(t, 10*time.Second, "the limit's halving to 1", func() bool {
		return testutil.ToFloat64(d.metrics.limit) == 1
	})
	if got := testutil.ToFloat64(d.metrics.limitDecreases.WithLabelValues("overload")); got != 5 {
		t.Errorf("timerd_delivery_concurrency_decreases_total{reason=overload} = %v, want 5 (32 → 1, once per round)", got)
	}
	failing.Store(false)
	testkit.Eventually(t, 20*time.Second, "an empty outbox", func() bool { return outboxLen(t, st) == 0 })
	t.Logf("limit %v after recovery", testutil.ToFloat64(d.metrics.limit))
}
