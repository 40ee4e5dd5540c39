package e2e

import (
	"fmt"
	"net/http"
	"testing"
	"time"

	// Named so: this package calls its Attune API process "attune".
	contract "github.com/timerd/timerd/ingest/attune"
	"github.com/timerd/timerd/test/testkit"
)

// Rules that reach a node after their slot fire, late, once (docs/protocol.md
// §1, I5): with the only agent stopped (SIGTERM), 40 datetime rules are
// created due while it is down, and one existing datetime rule is moved by
// PUT to a time while it is down. Started again, the agent fires each of the
// 41 exactly once, and no event is posted twice.
func TestLateRulesFireOnceAfterRestart(t *testing.T) {
	const n = 40
	b := newBroker(t)
	node := b.node("n1")
	b.cleanupQueue(t, node)
	api := startAttune(t, b)
	env := api.agentEnv(b, node, t.TempDir())
	ag := startAgent(t, env)

	api.createRule(t, "late.moved", "core.datetimetimer", map[string]any{"fire_at": time.Now().Add(time.Hour).Format(time.RFC3339Nano)})
	testkit.Eventually(t, 10*time.Second, "late.moved followed", func() bool { return metric(metrics(t, ag.nodeURL), "timerd_rules_known") == 1 })
	if err := ag.stop(30 * time.Second); err != nil {
		t.Fatalf("timerd agent after SIGTERM: %v, want exit status 0", err)
	}

	// Due while the agent is down: created (and moved) before their slot.
	due := map[string]time.Time{}
	first := time.Now().Add(2 * time.Second).Truncate(time.Millisecond)
	for i := range n {
		ref := fmt.Sprintf("late.%d", i)
		due[ref] = first.Add(time.Duration(i) * 20 * time.Millisecond)
		api.createRule(t, ref, "core.datetimetimer", map[string]any{"fire_at": due[ref].Format(time.RFC3339Nano)})
	}
	due["late.moved"] = first.Add(time.Second)
	if code := api.apiDo(t, http.MethodPut, "/api/v1/rules/late.moved",
		map[string]any{"trigger_params": map[string]any{"fire_at": due["late.moved"].Format(time.RFC3339Nano)}}, nil); code != http.StatusOK {
		t.Fatalf("PUT late.moved: status %d", code)
	}
	last := first.Add(time.Second)
	for _, d := range due {
		if d.Before(time.Now()) {
			t.Fatalf("a rule was due (%s) before the agent was down long enough; the machine is too slow for this test", d.Format(time.StampMilli))
		}
		last = later(last, d)
	}
	testkit.Eventually(t, time.Until(last)+5*time.Second, "every rule due while the agent is down", func() bool {
		return time.Now().After(last.Add(500 * time.Millisecond))
	})

	restarted := time.Now()
	ag = startAgent(t, env)
	// Delivered: the outbox and the events awaiting their verdict (a node is
	// always a cluster, alone too) are empty.
	testkit.Eventually(t, 60*time.Second, "every late rule fired and delivered", func() bool {
		m := metrics(t, ag.nodeURL)
		return metric(m, "timerd_fires_total") >= float64(len(due)) && metric(m, "timerd_outbox_entries") == 0 &&
			metric(m, "timerd_outbox_pending_events") == 0
	})
	lateBy := time.Duration(0)
	for ref, d := range due {
		evs := api.events(t, ref)
		if len(evs) != 1 {
			t.Errorf("rule %s (due %s, before the restart at %s): %d events, want 1",
				ref, d.Format(time.StampMilli), restarted.Format(time.StampMilli), len(evs))
			continue
		}
		if slot := payloadTime(t, evs[0], "scheduled_at"); !slot.Equal(d) {
			t.Errorf("rule %s: scheduled_at %v, want its fire_at %v", ref, slot, d)
		}
		fired := payloadTime(t, evs[0], "fired_at")
		if fired.Before(restarted) {
			t.Errorf("rule %s fired at %v, before the agent was started again (%v)", ref, fired, restarted)
		}
		lateBy = max(lateBy, fired.Sub(d))
	}
	m := metrics(t, ag.nodeURL)
	if dups := metric(api.apiMetrics(t), "timerd_api_events_duplicate_total"); dups != 0 {
		t.Errorf("timerd_api_events_duplicate_total = %v, want 0", dups)
	}
	if fires := metric(m, "timerd_fires_total"); fires != float64(len(due)) {
		t.Errorf("timerd_fires_total after the restart = %v, want %d", fires, len(due))
	}
	t.Logf("%d rules due while the agent was down fired once each, the latest %s after its time; lifecycle messages after the restart: applied %v, unchanged %v, stale %v",
		len(due), lateBy.Round(time.Millisecond), metric(m, "timerd_lifecycle_messages_total", `result="applied"`),
		metric(m, "timerd_lifecycle_messages_total", `result="unchanged"`), metric(m, "timerd_lifecycle_messages_total", `result="stale"`))
}

// A stale enable, published after the disable it predates (Attune's API
// replicas publish in no order), changes nothing: the rule stays disabled.
func TestLateStaleEnableKeepsRuleDisabled(t *testing.T) {
	t.Parallel() // single agent, mostly waiting: run beside the others (Makefile: -parallel)
	b := newBroker(t)
	node := b.node("n1")
	b.cleanupQueue(t, node)
	api := startAttune(t, b)
	ag := startAgent(t, api.agentEnv(b, node, t.TempDir()))
	enabledAt := time.Now()
	id := api.createRule(t, "stale.order", "core.intervaltimer", map[string]any{"interval": 1})
	testkit.Eventually(t, 10*time.Second, "stale.order firing", func() bool { return len(api.events(t, "stale.order")) >= 1 })

	api.post(t, "/api/v1/rules/stale.order/disable", nil)
	testkit.Eventually(t, 10*time.Second, "disable applied", func() bool { return metric(metrics(t, ag.nodeURL), "timerd_rules_known") == 0 })

	// The enable that was published first by another replica, arriving now.
	stale := contract.EnvelopeJSON(contract.Lifecycle{Type: contract.RuleEnabled, RuleID: id, RuleRef: "stale.order",
		TriggerRef: "core.intervaltimer", Params: []byte(`{"interval":1}`), Enabled: true}, "", enabledAt)
	b.publish(t, b.channel(t), "rule.enabled", stale)
	testkit.Eventually(t, 10*time.Second, "stale enable counted", func() bool {
		return metric(metrics(t, ag.nodeURL), "timerd_lifecycle_messages_total", `type="RuleEnabled"`, `result="stale"`) == 1
	})
	m := metrics(t, ag.nodeURL)
	if known := metric(m, "timerd_rules_known"); known != 0 {
		t.Errorf("timerd_rules_known after a stale enable = %v, want 0 (the rule stays disabled)", known)
	}
	if applied := metric(m, "timerd_lifecycle_messages_total", `type="RuleEnabled"`, `result="applied"`); applied != 0 {
		t.Errorf("RuleEnabled applied %v times, want 0", applied)
	}
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
