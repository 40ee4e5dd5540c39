package e2e

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/timerd/timerd/ingest/mqtest"
	"github.com/timerd/timerd/test/testkit"
)

// An agent whose queue is bound to an exchange nobody publishes to learns
// rule changes only from its reconciles: after two of them found changes,
// with no lifecycle message since start, it says so once at warn, naming
// the exchange and the queue, and timerd_lifecycle_queue_silent is 1. An
// agent beside it on Attune's exchange, seeing the same changes, does not.
func TestAgentWarnsOfASilentQueue(t *testing.T) {
	t.Parallel() // two agents, mostly waiting: run beside the others (Makefile: -parallel)
	b := newBroker(t)
	api := startAttune(t, b)
	wrong := b.exchange + ".nobody" // the agent declares it; nothing publishes to it
	mqtest.Cleanup(t, b.url, wrong)
	silentNode, rightNode := b.node("silent"), b.node("right")
	b.cleanupQueue(t, silentNode)
	b.cleanupQueue(t, rightNode)
	env := func(node, exchange string) []string {
		// The later of a duplicate variable wins.
		return append(api.agentEnv(b, node, t.TempDir()), "ATTUNE_MQ_EXCHANGE="+exchange, "TIMERD_RECONCILE_INTERVAL=1s")
	}
	silent := startAgent(t, env(silentNode, wrong))
	right := startAgent(t, env(rightNode, b.exchange))

	// Two changes after the agents are ready: each found by one of the
	// silent agent's reconciles, brought to the other by its queue.
	for i := 1; i <= 2; i++ {
		api.createRule(t, fmt.Sprintf("e2e.silent.%d", i), "core.intervaltimer", map[string]any{"interval": 3600})
		for _, ag := range []*agent{silent, right} {
			testkit.Eventually(t, 10*time.Second, fmt.Sprintf("%d rules known", i), func() bool {
				return metric(metrics(t, ag.nodeURL), "timerd_rules_known") == float64(i)
			})
		}
	}
	line := silent.waitOutput(regexp.MustCompile(`\{[^\n]*"LIFECYCLE QUEUE SILENT[^\n]*\}`), 10*time.Second)[0]
	var rec map[string]any
	if err := json.Unmarshal([]byte(line), &rec); err != nil {
		t.Fatalf("warning %q: %v", line, err)
	}
	if rec["level"] != "warn" || rec["exchange"] != wrong || rec["queue"] != b.queue(silentNode) || rec["sensor"] != "core.timer" {
		t.Errorf("warning %v: want level warn naming exchange %s and queue %s", rec, wrong, b.queue(silentNode))
	}
	if g := metric(metrics(t, silent.nodeURL), "timerd_lifecycle_queue_silent"); g != 1 {
		t.Errorf("silent agent: timerd_lifecycle_queue_silent = %v, want 1", g)
	}

	m := metrics(t, right.nodeURL)
	if g := metric(m, "timerd_lifecycle_queue_silent"); g != 0 {
		t.Errorf("agent on Attune's exchange: timerd_lifecycle_queue_silent = %v, want 0", g)
	}
	if got := metric(m, "timerd_lifecycle_messages_total"); got < 2 {
		t.Errorf("agent on Attune's exchange: %v lifecycle messages, want 2 or more", got)
	}
	if strings.Contains(right.output(), "LIFECYCLE QUEUE SILENT") {
		t.Errorf("agent on Attune's exchange warned of a silent queue:\n%s", right.output())
	}
	if n := strings.Count(silent.output(), "LIFECYCLE QUEUE SILENT"); n != 1 {
		t.Errorf("silent agent warned %d times, want once", n)
	}
}
