package e2e

import (
	"fmt"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/timerd/timerd/test/testkit"
)

// storedAt is an event as the API stored it, with the time it did.
type storedAt struct {
	event
	Created time.Time `json:"created"`
}

// allEvents lists every event the API stored, all pages.
func allEvents(t *testing.T, a *attune) []storedAt {
	t.Helper()
	var all []storedAt
	for page := 1; ; page++ {
		var body struct {
			Items      []storedAt `json:"items"`
			Pagination struct {
				HasNext bool `json:"has_next"`
			} `json:"pagination"`
		}
		path := fmt.Sprintf("/api/v1/events?page=%d&page_size=1000", page)
		if code := a.apiDo(t, http.MethodGet, path, nil, &body); code != http.StatusOK {
			t.Fatalf("GET %s: status %d", path, code)
		}
		all = append(all, body.Items...)
		if !body.Pagination.HasNext {
			return all
		}
	}
}

// Paced catch-up (docs/operations.md, "Paced catch-up") with a real agent:
// 20 rules of 1 s with fire_all; the agent is stopped for 8 s and started
// again with TIMERD_CATCHUP_RATE=20. The ~160 slots it missed arrive no
// faster than 20 a second, every one once, while the slots due after its
// restart keep arriving on time.
func TestAgentPacesCatchUpAfterRestart(t *testing.T) {
	t.Parallel() // one agent, mostly waiting (Makefile: -parallel)
	const (
		rules = 20
		rate  = 20.0 // catch-up events/s
		down  = 8 * time.Second
	)
	b := newBroker(t)
	node := b.node("n1")
	b.cleanupQueue(t, node)
	api := startAttune(t, b)
	env := api.agentEnv(b, node, t.TempDir())
	ag := startAgent(t, env)
	for i := range rules {
		api.createRule(t, fmt.Sprintf("paced.%d", i), "core.intervaltimer", map[string]any{"interval": 1, "misfire": "fire_all"})
	}
	testkit.Eventually(t, 20*time.Second, "every rule firing", func() bool {
		return metric(metrics(t, ag.nodeURL), "timerd_fires_total") >= 2*rules
	})
	if err := ag.stop(30 * time.Second); err != nil {
		t.Fatalf("timerd agent after SIGTERM: %v, want exit status 0", err)
	}
	stopped := time.Now()
	time.Sleep(down)

	restarted := time.Now()
	ag = startAgent(t, append(env, fmt.Sprintf("TIMERD_CATCHUP_RATE=%g", rate)))
	ready := time.Now()
	// Missed: the slots due from the stop to the restart (those of the
	// stop's last second may have been posted before it).
	missed := func(evs []storedAt) []storedAt {
		return slices.DeleteFunc(slices.Clone(evs), func(e storedAt) bool {
			slot := payloadTime(t, e.event, "scheduled_at")
			return !slot.After(stopped.Add(time.Second)) || !slot.Before(restarted)
		})
	}
	minMissed := int(down/time.Second-1) * rules
	var evs []storedAt
	testkit.Eventually(t, 40*time.Second, "the backlog drained", func() bool {
		evs = allEvents(t, api)
		return len(missed(evs)) >= minMissed && metric(metrics(t, ag.nodeURL), "timerd_outbox_entries") == 0
	})
	m := metrics(t, ag.nodeURL)
	if got := metric(m, "timerd_delivery_catchup_rate"); got != rate {
		t.Errorf("timerd_delivery_catchup_rate = %v, want %v (a node alone has the whole rate)", got, rate)
	}

	backlog := missed(evs)
	var at []time.Time
	seen := map[string]int{}
	for _, e := range evs {
		seen[e.IdempotencyKey]++
	}
	for _, e := range backlog {
		at = append(at, e.Created)
	}
	slices.SortFunc(at, time.Time.Compare)
	for k, n := range seen {
		if n > 1 {
			t.Errorf("key %s stored %d times", k, n)
		}
	}
	// No faster than the rate: at most rate + the bucket's burst (1) in any
	// second, with 100 ms of slack for the API's commits, which store
	// events posted apart together.
	most := 0
	for i, j := 0, 0; j < len(at); j++ {
		for at[j].Sub(at[i]) >= 900*time.Millisecond {
			i++
		}
		most = max(most, j-i+1)
	}
	if most > int(rate)+1 {
		t.Errorf("%d backlog events stored within 0.9 s, want ≤ %d (TIMERD_CATCHUP_RATE=%g)", most, int(rate)+1, rate)
	}
	drain := at[len(at)-1].Sub(at[0])
	if least := time.Duration(float64(len(at)-2) / rate * float64(time.Second)); drain < least {
		t.Errorf("%d backlog events stored over %s, want ≥ %s at %g/s", len(at), drain.Round(time.Millisecond), least, rate)
	}

	// On time meanwhile: the slots due a second after the agent was ready,
	// stored while the backlog drained: 95 % within half a second of their
	// slot, every one within two (the agent and the API are race-enabled
	// builds on a shared machine; the API commits with an fsync).
	var late []time.Duration
	for _, e := range evs {
		slot := payloadTime(t, e.event, "scheduled_at")
		if slot.Before(ready.Add(time.Second)) || e.Created.After(at[len(at)-1]) {
			continue
		}
		late = append(late, e.Created.Sub(slot))
	}
	if len(late) < rules {
		t.Fatalf("%d on-time events stored while the backlog drained, want ≥ %d", len(late), rules)
	}
	slices.Sort(late)
	p95, worst := late[len(late)*95/100], late[len(late)-1]
	if p95 > 500*time.Millisecond || worst > 2*time.Second {
		t.Errorf("on-time events stored while the backlog drained: p95 %s, max %s after their slot, want ≤ 500ms and ≤ 2s",
			p95.Round(time.Millisecond), worst.Round(time.Millisecond))
	}
	t.Logf("%d missed slots drained over %s (%.1f/s, at most %d in 0.9 s; rate %g/s); %d on-time events meanwhile, p95 %s, max %s after their slot",
		len(at), drain.Round(time.Millisecond), float64(len(at)-1)/drain.Seconds(), most, rate, len(late),
		p95.Round(time.Millisecond), worst.Round(time.Millisecond))
}
