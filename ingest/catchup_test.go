package ingest

import (
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/timerd/timerd/store"
	"github.com/timerd/timerd/test/testkit"
)

// drive runs a pacer as the engine's loop does, with a made-up clock: at
// each wake it takes tokens while it may (never more than room at once, the
// free slots), then sleeps until the pacer's next or a random event (an
// answer, a fire) comes sooner. It returns the times of the POSTs started.
func drive(p *pacer, start time.Time, d time.Duration, room int, rng *rand.Rand) []time.Time {
	var posts []time.Time
	for now := start; now.Before(start.Add(d)); {
		n := 0
		for n < room && p.take(now) {
			posts = append(posts, now)
			n++
		}
		wake := now.Add(time.Duration(rng.IntN(8_000)) * time.Microsecond)
		if n < room {
			wake = minTime(wake, p.next(now))
			if !p.next(now).After(now) {
				panic("next is not after now")
			}
		}
		now = wake
	}
	return posts
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// maxIn is the most posts in any window of length w.
func maxIn(posts []time.Time, w time.Duration) int {
	most, i := 0, 0
	for j := range posts {
		for posts[j].Sub(posts[i]) >= w {
			i++
		}
		most = max(most, j-i+1)
	}
	return most
}

// Catch-up never exceeds the rate: over any second at most the node's part
// of the cluster's rate plus the burst (a twentieth of it), and it drains at
// that rate when nothing else holds it back; the rate follows the members.
func TestPacerNeverExceedsRate(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, tc := range []struct {
		clusterRate float64
		members     int
		room        int
	}{
		{1000, 2, 1 << 20}, // 500/s per node, room for everything
		{1000, 2, 3},       // a few free slots at a time
		{5, 1, 1 << 20},    // slow: a token every 200 ms, a burst of 1
		{30_000, 3, 64},    // fast: many tokens per wake
		{0.5, 1, 1 << 20},  // one every 2 s
	} {
		p := newPacer(0.5, tc.clusterRate, tc.members, t0)
		nodeRate := tc.clusterRate / float64(tc.members)
		if p.rate() != nodeRate {
			t.Errorf("rate %v over %d members: node rate %v, want %v", tc.clusterRate, tc.members, p.rate(), nodeRate)
		}
		const run = 10 * time.Second
		posts := drive(p, t0, run, tc.room, rng)
		burst := burstOf(nodeRate)
		if got, most := maxIn(posts, time.Second), int(nodeRate)+burst; got > most {
			t.Errorf("rate %v/s: %d catch-up POSTs in one second, want ≤ %d", nodeRate, got, most)
		}
		if got, most := len(posts), int(nodeRate*run.Seconds())+burst; got > most {
			t.Errorf("rate %v/s: %d catch-up POSTs in %s, want ≤ %d", nodeRate, got, run, most)
		}
		// It drains at the rate when slots are free, not far below it.
		if tc.room > 1<<10 {
			if got, least := len(posts), int(0.95*nodeRate*run.Seconds()); got < least {
				t.Errorf("rate %v/s with room: %d catch-up POSTs in %s, want ≥ %d", nodeRate, got, run, least)
			}
		}
	}

	// A member leaves, then two join: the node's part follows.
	p := newPacer(0.5, 900, 3, t0)
	for _, m := range []struct{ members, rate int }{{3, 300}, {2, 450}, {4, 225}, {0, 900}} {
		p.setMembers(m.members, t0)
		if p.rate() != float64(m.rate) {
			t.Errorf("900/s over %d members: %v/s, want %d", m.members, p.rate(), m.rate)
		}
		posts := drive(p, t0.Add(time.Hour), 5*time.Second, 1<<20, rng)
		if got, most := len(posts), 5*m.rate+burstOf(float64(m.rate)); got > most {
			t.Errorf("%d/s for 5s: %d posts, want ≤ %d", m.rate, got, most)
		}
	}
}

func TestPacerWithoutRate(t *testing.T) {
	p := newPacer(0.5, NoCatchUpRate, 3, t0)
	for i := range 100_000 {
		if !p.take(t0) {
			t.Fatalf("take %d without a rate = false", i)
		}
	}
	if p.rate() != 0 {
		t.Errorf("rate() without a rate = %v, want 0", p.rate())
	}
}

// The share holds: catch-up alone fills at most its share of the limit (at
// least one POST, never the last eighth), and on-time POSTs in flight take
// from what it may use, never the other way round.
func TestPacerShareHolds(t *testing.T) {
	for _, share := range []float64{0.1, 0.5, 0.75, 1} {
		p := newPacer(share, 0, 1, t0)
		for limit := 1; limit <= 600; limit++ {
			for _, onTime := range []int{0, limit / 3, limit} {
				catchUp := 0
				for p.mayStart(limit, onTime, catchUp) {
					catchUp++
				}
				want := max(0, min(max(1, int(share*float64(limit))), limit-onTime-limit/catchUpReserve))
				if catchUp != want {
					t.Fatalf("share %v, limit %d, %d on time in flight: %d catch-up may start, want %d", share, limit, onTime, catchUp, want)
				}
				if catchUp > 1 && float64(catchUp) > share*float64(limit) {
					t.Fatalf("share %v, limit %d: %d catch-up in flight, above the share", share, limit, catchUp)
				}
			}
		}
	}
}

// A backlog of old slots and on-time events together through a real
// Delivery: catch-up is posted at no more than the set rate, with at most
// its share of the POSTs in flight, and the on-time events committed
// meanwhile are posted at once.
func TestDeliveryPacesCatchUp(t *testing.T) {
	leakCheck(t)
	st := openStore(t)
	const rulebacklog, ruleOnTime = 1, 2
	var mu sync.Mutex
	var catchUpAt []time.Time
	var catchUpInFlight, peakCatchUp int
	api := newFakeAPI(t, func(r seenRequest, _ int) response {
		if strings.HasPrefix(r.Header.Get("Idempotency-Key"), "1:") {
			mu.Lock()
			catchUpAt = append(catchUpAt, r.At)
			catchUpInFlight++
			peakCatchUp = max(peakCatchUp, catchUpInFlight)
			mu.Unlock()
			done := make(chan struct{})
			time.AfterFunc(30*time.Millisecond, func() {
				mu.Lock()
				catchUpInFlight--
				mu.Unlock()
				close(done)
			})
			return response{status: 201, block: done}
		}
		return response{status: 201}
	})
	old := commitEvents(t, st, rulebacklog, 2000, time.Now().Add(-24*time.Hour))
	cfg := testConfig(st, api.srv.URL)
	cfg.Workers = 8
	cfg.CatchUpShare = 0.5
	const rate = 100.0 // a node of two: 50/s
	cfg.CatchUpRate = rate
	cfg.Members = func() int { return 2 }
	reg := prometheus.NewRegistry()
	cfg.Registerer = reg
	started := time.Now()
	d, stop := startDelivery(t, cfg)

	// On-time events, one every 50 ms, while the backlog drains.
	type fresh struct {
		key       string
		committed time.Time
	}
	var onTime []fresh
	for range 30 {
		time.Sleep(50 * time.Millisecond)
		ev := commitEvents(t, st, ruleOnTime, 1, time.Now())
		onTime = append(onTime, fresh{ev[0].IdempotencyKey, time.Now()})
		d.Notify()
	}
	testkit.Eventually(t, 5*time.Second, "every on-time event delivered", func() bool {
		for _, f := range onTime {
			if api.successCount(f.key) == 0 {
				return false
			}
		}
		return true
	})
	stop()
	elapsed := time.Since(started)

	// On time: each posted within 250 ms of its commit (the engine wakes on
	// Notify; a POST takes a millisecond here), behind no catch-up.
	var worst time.Duration
	for _, f := range onTime {
		for _, r := range api.requests() {
			if r.Header.Get("Idempotency-Key") == f.key {
				worst = max(worst, r.At.Sub(f.committed))
				break
			}
		}
	}
	if worst > 250*time.Millisecond {
		t.Errorf("an on-time event was posted %s after its commit while the backlog drained, want ≤ 250ms", worst)
	}

	mu.Lock()
	posts, peak := append([]time.Time(nil), catchUpAt...), peakCatchUp
	mu.Unlock()
	nodeRate := rate / 2
	// Tokens are taken at dispatch; a POST reaches the server a little later,
	// so two may arrive closer than they were sent: 50 ms of slack.
	if got, most := maxIn(posts, time.Second-50*time.Millisecond), int(nodeRate)+burstOf(nodeRate); got > most {
		t.Errorf("%d catch-up POSTs within a second, want ≤ %d (rate %v/s over 2 members)", got, most, rate)
	}
	if most := int(nodeRate*elapsed.Seconds()) + burstOf(nodeRate); len(posts) > most {
		t.Errorf("%d catch-up POSTs in %s, want ≤ %d", len(posts), elapsed.Round(time.Millisecond), most)
	}
	if least := int(0.5 * nodeRate * (elapsed.Seconds() - 0.5)); len(posts) < least {
		t.Errorf("%d catch-up POSTs in %s, want ≥ %d: the backlog must drain at about the rate", len(posts), elapsed.Round(time.Millisecond), least)
	}
	// 50/s of 30 ms POSTs need 1.5 in flight: within the share of 4 of 8.
	if peak > 4 {
		t.Errorf("peak %d catch-up POSTs in flight, want ≤ 4 (half of 8)", peak)
	}
	if got := testutil.ToFloat64(d.metrics.catchUpPosts); got != float64(len(posts)) {
		t.Errorf("timerd_delivery_catchup_posts_total = %v, want %d", got, len(posts))
	}
	if got := testutil.ToFloat64(d.metrics.catchUpRateLimited); got < 1 || got > float64(len(posts)+1) {
		t.Errorf("timerd_delivery_catchup_rate_limited_total = %v, want in [1, %d]", got, len(posts)+1)
	}
	if got := testutil.ToFloat64(d.metrics.catchUpRate); got != nodeRate {
		t.Errorf("timerd_delivery_catchup_rate = %v, want %v", got, nodeRate)
	}
	t.Logf("%d on-time events, the latest posted %s after its commit; %d of %d backlog events in %s (%.1f/s, rate %v/s), peak %d in flight",
		len(onTime), worst.Round(time.Millisecond), len(posts), len(old), elapsed.Round(time.Millisecond),
		float64(len(posts))/elapsed.Seconds(), nodeRate, peak)
}

// The default share: catch-up alone takes at most half the POSTs in flight.
func TestDeliveryCatchUpShareHolds(t *testing.T) {
	leakCheck(t)
	st := openStore(t)
	api := newFakeAPI(t, func(seenRequest, int) response {
		return response{status: 201, block: after(10 * time.Millisecond)}
	})
	commitEvents(t, st, 1, 400, time.Now().Add(-24*time.Hour))
	cfg := testConfig(st, api.srv.URL)
	cfg.Workers = 16
	cfg.CatchUpShare = 0 // the default
	cfg.CatchUpRate = NoCatchUpRate
	startDelivery(t, cfg)
	testkit.Eventually(t, 20*time.Second, "an empty outbox", func() bool { return outboxLen(t, st) == 0 })
	if got := api.peak.Load(); got > 8 || got < 2 {
		t.Errorf("catch-up alone, limit 16, share %v: peak %d POSTs in flight, want 2..8", DefaultCatchUpShare, got)
	}
}

// Slots due before the node started were missed while it was down: catch-up
// however recent (a node down for 2 minutes fires the last 30 s of its
// backlog too), paced; slots due after it are on time.
func TestDeliveryMissedWhileDownIsCatchUp(t *testing.T) {
	leakCheck(t)
	st := openStore(t)
	api := newFakeAPI(t, nil)
	var missed []store.Event // 10 rules' slots of 2 s ago: recent, but missed
	for rule := range int64(10) {
		missed = append(missed, commitEvents(t, st, 100+rule, 1, time.Now().Add(-2*time.Second))...)
	}
	cfg := testConfig(st, api.srv.URL)
	cfg.CatchUpRate = 2 // a token every 500 ms
	reg := prometheus.NewRegistry()
	cfg.Registerer = reg
	d, _ := startDelivery(t, cfg)
	time.Sleep(1200 * time.Millisecond)
	delivered := 0
	for _, ev := range missed {
		delivered += api.successCount(ev.IdempotencyKey)
	}
	if delivered > 3 {
		t.Errorf("%d of %d slots due before the node started delivered within 1.2 s at 2/s, want ≤ 3 (burst 1 + 2/s)", delivered, len(missed))
	}
	fresh := commitEvents(t, st, 2, 5, time.Now())
	d.Notify()
	testkit.Eventually(t, 2*time.Second, "fresh events delivered at once", func() bool {
		return api.successCount(fresh[0].IdempotencyKey) == 1
	})
	if got := testutil.ToFloat64(d.metrics.catchUpPosts); got < 1 || got > 4 {
		t.Errorf("timerd_delivery_catchup_posts_total = %v, want 1..4", got)
	}
}

// A node back from an outage commits the slots it missed after delivery
// started, more of them than the window holds, among the new entries: paced
// catch-up must not fill the window and keep the events fired since out.
func TestDeliveryPacedBacklogCommittedAfterStartLeavesRoomForOnTime(t *testing.T) {
	leakCheck(t)
	st := openStore(t)
	api := newFakeAPI(t, nil)
	cfg := testConfig(st, api.srv.URL)
	cfg.CatchUpRate = 50
	d, _ := startDelivery(t, cfg)
	if d.window >= 3000 {
		t.Fatalf("window %d: the backlog below must be larger", d.window)
	}
	for rule := range int64(30) { // 3,000 missed slots, committed as the engine fires them
		commitEvents(t, st, 100+rule, 100, time.Now().Add(-time.Hour))
	}
	d.Notify()
	time.Sleep(200 * time.Millisecond)
	for i := range 5 {
		committed := time.Now()
		fresh := commitEvents(t, st, int64(i+1), 1, committed)
		d.Notify()
		testkit.Eventually(t, 5*time.Second, "a fresh event delivered", func() bool { return api.successCount(fresh[0].IdempotencyKey) == 1 })
		for _, r := range api.requests() {
			if r.Header.Get("Idempotency-Key") == fresh[0].IdempotencyKey {
				if late := r.At.Sub(committed); late > 250*time.Millisecond {
					t.Errorf("a fresh event committed behind 3,000 paced catch-up events was posted %s later, want ≤ 250ms", late.Round(time.Millisecond))
				}
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	if got := testutil.ToFloat64(d.metrics.catchUpPosts); got > float64(50*2+burstOf(50)) {
		t.Errorf("%v catch-up POSTs within about 1.5 s at 50/s", got)
	}
	if n := outboxLen(t, st); n < 2500 {
		t.Errorf("outbox holds %d entries, want the paced backlog (≥ 2500) still there", n)
	}
}

// The auto rate (CatchUpRate 0, the default) follows the on-time posts of the
// last minute, at least MinAutoCatchUpRate, whatever the members.
func TestPacerAutoRate(t *testing.T) {
	p := newPacer(0.5, 0, 3, t0)
	if p.rate() != MinAutoCatchUpRate {
		t.Fatalf("auto rate before any on-time post = %v, want the floor %d", p.rate(), MinAutoCatchUpRate)
	}
	// 400 on-time posts a second for 10 s.
	now := t0
	for range 10 {
		for i := range 400 {
			p.sentOnTime(now.Add(time.Duration(i) * time.Second / 400))
		}
		now = now.Add(time.Second)
		p.setMembers(3, now)
	}
	if r := p.rate(); r < 390 || r > 410 {
		t.Errorf("auto rate after 10 s of 400 on-time posts a second = %v, want about 400", r)
	}
	// Posts at that rate pass; twice as many do not.
	rng := rand.New(rand.NewPCG(1, 2))
	if got := len(drive(p, now, 5*time.Second, 1<<20, rng)); got > 5*410+burstOf(410) {
		t.Errorf("auto rate of 400/s for 5 s: %d catch-up posts", got)
	}
	// A quiet minute: back to the floor.
	now = now.Add(10 * time.Second)
	p.setMembers(3, now.Add(2*time.Minute))
	if p.rate() != MinAutoCatchUpRate {
		t.Errorf("auto rate after a quiet minute = %v, want the floor %d", p.rate(), MinAutoCatchUpRate)
	}
	// A year idle costs no more than a minute, and 300 posts a second after it count.
	now = now.Add(365 * 24 * time.Hour)
	for range 3 {
		for i := range 300 {
			p.sentOnTime(now.Add(time.Duration(i) * time.Second / 300))
		}
		now = now.Add(time.Second)
		p.setMembers(3, now)
	}
	// The idle seconds count as seconds without on-time posts: 900 over 60 s.
	if r := p.onTimeRate(); r != 15 || p.rate() != MinAutoCatchUpRate {
		t.Errorf("3 s after a year idle: on-time rate %v, want 15/s; auto rate %v, want the floor %d", r, p.rate(), MinAutoCatchUpRate)
	}
}
