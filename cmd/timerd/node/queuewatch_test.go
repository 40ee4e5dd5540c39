package node

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/timerd/timerd/ingest"
	"github.com/timerd/timerd/ingest/attune"
)

// newWatchedNode is an idle node with a lifecycle queue (never connected)
// and a rules API of the test, logging JSON to log.
func newWatchedNode(t *testing.T, log *bytes.Buffer) (*Node, *rulesAPI) {
	t.Helper()
	api := newRulesAPI(t)
	n, err := New(Config{DataDir: t.TempDir(), APIURL: api.srv.URL, ReconcileInterval: -1, Registry: prometheus.NewRegistry(),
		Logger: slog.New(slog.NewJSONHandler(log, nil)),
		MQ:     &ingest.ConsumerConfig{URL: "amqp://127.0.0.1:1/", Exchange: "attune", Queue: "sensor.core.timer.n1"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.store.Close() })
	return n, api
}

// silentWarnings are the queue-silent warnings in a JSON log.
func silentWarnings(t *testing.T, log *bytes.Buffer) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(log.String()), "\n") {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		if m, _ := rec["msg"].(string); strings.HasPrefix(m, "LIFECYCLE QUEUE SILENT") {
			out = append(out, rec)
		}
	}
	return out
}

// Periodic reconciles that keep finding rule changes while the queue has
// delivered nothing since start: one warning naming the exchange and the
// queue, after the second, and timerd_lifecycle_queue_silent 1. A queue
// that delivered any message is never suspected; a reconcile that changed
// nothing does not count.
func TestQueueSilentWhileReconcilesFindChanges(t *testing.T) {
	tests := []struct {
		name     string
		messages bool      // a lifecycle message is delivered first
		listings [][]int64 // the listing of each periodic reconcile
		warn     bool
	}{
		{"changes twice, no message", false, [][]int64{{1}, {1, 2}}, true},
		{"changes three times: warned once", false, [][]int64{{1}, {1, 2}, {1, 2, 3}}, true},
		{"changes once", false, [][]int64{{1}, {1}, {1}}, false},
		{"changes twice after a message", true, [][]int64{{1}, {1, 2}, {1, 2, 3}}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var log bytes.Buffer
			n, api := newWatchedNode(t, &log)
			if tt.messages {
				if err := n.applyMessages([]attune.Message{envelope(attune.RuleCreated, 99, "core.intervaltimer", `{"interval":60}`)}); err != nil {
					t.Fatal(err)
				}
			}
			for _, ids := range tt.listings {
				api.mu.Lock()
				api.pages = []string{listed(len(ids), false, ids...)}
				api.mu.Unlock()
				n.periodicReconcile(context.Background())
			}
			warnings := silentWarnings(t, &log)
			gauge := testutil.ToFloat64(n.queueWatch.silent)
			switch {
			case tt.warn && len(warnings) != 1:
				t.Fatalf("%d queue-silent warnings, want 1; log:\n%s", len(warnings), log.String())
			case !tt.warn && len(warnings) != 0:
				t.Fatalf("queue-silent warning(s) %v, want none", warnings)
			case tt.warn && (warnings[0]["exchange"] != "attune" || warnings[0]["queue"] != "sensor.core.timer.n1" || warnings[0]["level"] != "WARN"):
				t.Errorf("warning %v does not name exchange attune and queue sensor.core.timer.n1 at WARN", warnings[0])
			case tt.warn != (gauge == 1):
				t.Errorf("timerd_lifecycle_queue_silent = %v, want %v", gauge, map[bool]int{true: 1, false: 0}[tt.warn])
			}
			// A message at last clears the gauge.
			if err := n.applyMessages([]attune.Message{envelope(attune.RuleDeleted, 1, "core.intervaltimer", "")}); err != nil {
				t.Fatal(err)
			}
			if g := testutil.ToFloat64(n.queueWatch.silent); g != 0 {
				t.Errorf("timerd_lifecycle_queue_silent after a message = %v, want 0", g)
			}
		})
	}
}

// A node without a queue (reconcile only, or the in-process bus) has
// nothing to suspect.
func TestQueueWatchNeedsAQueue(t *testing.T) {
	n := newIdleNode(t)
	var log bytes.Buffer
	n.log = slog.New(slog.NewJSONHandler(&log, nil))
	api := newRulesAPI(t)
	n.rules = &ingest.RulesClient{APIURL: api.srv.URL}
	for _, ids := range [][]int64{{1}, {1, 2}, {1, 2, 3}} {
		api.mu.Lock()
		api.pages = []string{listed(len(ids), false, ids...)}
		api.mu.Unlock()
		n.periodicReconcile(context.Background())
	}
	if w := silentWarnings(t, &log); len(w) != 0 || testutil.ToFloat64(n.queueWatch.silent) != 0 {
		t.Errorf("a node without a queue warned %v (gauge %v)", w, testutil.ToFloat64(n.queueWatch.silent))
	}
}
