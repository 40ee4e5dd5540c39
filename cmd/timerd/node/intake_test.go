package node

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/timerd/timerd/ingest"
	"github.com/timerd/timerd/scheduler"
	"github.com/timerd/timerd/store"
)

// newIdleNode is a node that is not running: its store and engine, for
// applying messages directly.
func newIdleNode(t *testing.T) *Node {
	t.Helper()
	n, err := New(Config{DataDir: t.TempDir(), APIURL: "http://127.0.0.1:1", ReconcileInterval: -1,
		Registry: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.store.Close() })
	return n
}

func envelope(typ ingest.LifecycleType, id int64, trigger, params string) ingest.Message {
	l := ingest.Lifecycle{Type: typ, RuleID: id, RuleRef: fmt.Sprintf("r%d", id), TriggerRef: trigger, Enabled: true}
	if params != "" {
		l.Params = json.RawMessage(params)
	}
	if typ == ingest.RuleDisabled || typ == ingest.RuleDeleted {
		l.Enabled = false
	}
	return ingest.Message{RoutingKey: ingest.RoutingKey(typ), Body: ingest.EnvelopeJSON(l, "", time.Now())}
}

func raw(key, body string) ingest.Message { return ingest.Message{RoutingKey: key, Body: []byte(body)} }

func TestApplyMessages(t *testing.T) {
	const every5 = `{"interval":5}`
	created := envelope(ingest.RuleCreated, 1, "core.intervaltimer", every5)
	tests := []struct {
		name    string
		before  []ingest.Message // applied in a batch of their own first
		batch   []ingest.Message
		want    []string // result label of each message of batch, in order
		rules   []int64  // rule ids in the store and the engine after
		wantErr bool
	}{
		{
			name:  "create, then the same enable twice",
			batch: []ingest.Message{created, envelope(ingest.RuleEnabled, 1, "core.intervaltimer", every5), envelope(ingest.RuleEnabled, 1, "core.intervaltimer", `{ "interval" : 5 }`)},
			want:  []string{resApplied, resUnchanged, resUnchanged},
			rules: []int64{1},
		},
		{
			name:  "create and delete in one batch",
			batch: []ingest.Message{created, envelope(ingest.RuleDeleted, 1, "core.intervaltimer", "")},
			want:  []string{resApplied, resApplied},
		},
		{
			name:   "stored rule deleted and created again in one batch",
			before: []ingest.Message{created},
			batch:  []ingest.Message{envelope(ingest.RuleDeleted, 1, "core.intervaltimer", ""), created},
			want:   []string{resApplied, resApplied},
			rules:  []int64{1},
		},
		{
			name:   "parameter change of a stored rule",
			before: []ingest.Message{created},
			batch:  []ingest.Message{envelope(ingest.RuleEnabled, 1, "core.intervaltimer", `{"interval":7}`)},
			want:   []string{resApplied},
			rules:  []int64{1},
		},
		{
			name:   "flat disable of a stored rule",
			before: []ingest.Message{created},
			batch:  []ingest.Message{raw("rule.disabled", `{"event_type":"RuleDisabled","rule_id":1,"trigger_type":"core.intervaltimer"}`)},
			want:   []string{resApplied},
		},
		{
			name:   "enabled as another trigger: no longer a timer rule",
			before: []ingest.Message{created},
			batch:  []ingest.Message{envelope(ingest.RuleEnabled, 1, "core.webhook", `{}`)},
			want:   []string{resApplied},
		},
		{
			name:  "disable of a rule never seen",
			batch: []ingest.Message{envelope(ingest.RuleDisabled, 9, "core.intervaltimer", "")},
			want:  []string{resUnchanged},
		},
		{
			name: "hostile messages change nothing",
			batch: []ingest.Message{
				raw("rule.created", `{"message_type":`),
				raw("rule.created", "\x00\xff\xfe"),
				raw("rule.created", `{"message_type":"RuleCreated","payload":{"rule_id":0,"trigger_ref":"core.intervaltimer","trigger_params":{"interval":5}}}`),
				raw("rule.created", `{"message_type":"RuleCreated","payload":{"rule_id":1.5,"trigger_ref":"core.intervaltimer","trigger_params":{"interval":5}}}`),
				raw("rule.created", `{"message_type":"RuleCreated","payload":{"rule_id":"x","trigger_ref":"core.intervaltimer"}}`),
				envelope(ingest.RuleCreated, 2, "core.intervaltimer", `{"interval":-5}`),
				envelope(ingest.RuleCreated, 3, "core.crontimer", `{"expression":"* * * * * * * * *"}`),
				envelope(ingest.RuleCreated, 4, "core.intervaltimer", `{"interval":5,"pad":"`+strings.Repeat("x", 100<<10)+`"}`),
				envelope(ingest.RuleCreated, 5, "core.webhook", `{"url":"x"}`),
				envelope(ingest.RuleDeleted, 6, "core.webhook", ""),
			},
			want: []string{resInvalid, resInvalid, resInvalid, resInvalid, resInvalid, resInvalid, resInvalid, resInvalid, resIgnored, resIgnored},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := newIdleNode(t)
			if err := n.applyMessages(tt.before); err != nil {
				t.Fatalf("applyMessages(before) = %v", err)
			}
			var wmBefore uint64
			if wm, ok := n.engine.Watermark(1); ok {
				wmBefore = wm.Count
			}
			n.metrics.lifecycle.Reset()
			err := n.applyMessages(tt.batch)
			if (err != nil) != tt.wantErr {
				t.Fatalf("applyMessages = %v, want error %v", err, tt.wantErr)
			}
			want := map[string]float64{}
			for i, res := range tt.want {
				l, perr := ingest.ParseLifecycle(tt.batch[i].Body, tt.batch[i].RoutingKey)
				typ := string(l.Type)
				if perr != nil {
					typ = "unknown"
				}
				want[typ+"/"+res]++
			}
			if got := lifecycleCounts(t, n.cfg.Registry); fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("timerd_lifecycle_messages_total = %v, want %v", got, want)
			}
			var stored []int64
			n.store.ForEachRule(func(r store.Rule, _ store.Watermark) error { stored = append(stored, r.ID); return nil })
			if fmt.Sprint(stored) != fmt.Sprint(tt.rules) {
				t.Errorf("rules stored = %v, want %v", stored, tt.rules)
			}
			if n.engine.Len() != len(tt.rules) {
				t.Errorf("engine holds %d rules, want %d", n.engine.Len(), len(tt.rules))
			}
			if wm, ok := n.engine.Watermark(1); ok && wm.Count < wmBefore {
				t.Errorf("fire count of rule 1 went back from %d to %d", wmBefore, wm.Count)
			}
		})
	}
}

// A parameter change reschedules: the engine's timer is the new one.
func TestApplyMessagesReschedules(t *testing.T) {
	n := newIdleNode(t)
	if err := n.applyMessages([]ingest.Message{envelope(ingest.RuleCreated, 1, "core.intervaltimer", `{"interval":5}`)}); err != nil {
		t.Fatal(err)
	}
	next1, _ := n.engine.NextFire()
	newTimer, err := scheduler.Parse("core.intervaltimer", []byte(`{"interval":3600}`), 1)
	if err != nil {
		t.Fatal(err)
	}
	before := time.Now()
	if err := n.applyMessages([]ingest.Message{envelope(ingest.RuleEnabled, 1, "core.intervaltimer", `{"interval":3600}`)}); err != nil {
		t.Fatal(err)
	}
	after := time.Now()
	next2, _ := n.engine.NextFire()
	// The next fire is the new timer's first slot after the change (its
	// phase may put it anywhere in the coming hour).
	wantLo, _ := newTimer.Next(before)
	wantHi, _ := newTimer.Next(after)
	if !next2.Equal(wantLo) && !next2.Equal(wantHi) {
		t.Errorf("next fire after the change to 1h = %v, want the new timer's slot %v (was %v)", next2, wantLo, next1)
	}
	r, _, _, _ := n.store.Rule(1)
	if string(r.Params) != `{"interval":3600}` {
		t.Errorf("stored params = %s, want the new ones", r.Params)
	}
}

// The start-up set is scheduled before the first reconcile: with the API
// unreachable the node fires them while it is not ready yet.
func TestStartupRulesBeforeReconcile(t *testing.T) {
	n, err := New(Config{DataDir: t.TempDir(), APIURL: "http://127.0.0.1:1", HTTPAddr: "127.0.0.1:0", ReconcileInterval: -1,
		StartupRules: []ingest.RemoteRule{
			{ID: 7, Ref: "boot", TriggerRef: "core.intervaltimer", Params: json.RawMessage(`{"interval":60}`)},
			{ID: 8, Ref: "hook", TriggerRef: "core.webhook", Params: json.RawMessage(`{}`)},
			{ID: 9, Ref: "bad", TriggerRef: "core.intervaltimer", Params: json.RawMessage(`{"interval":-1}`)},
		}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run = %v", err)
		}
	}()
	waitUntil(t, "start-up rule scheduled", 5*time.Second, func() bool { return n.engine.Len() == 1 })
	if _, ok := n.engine.Watermark(7); !ok {
		t.Errorf("rule 7 of the start-up set is not scheduled")
	}
	if get(t, "http://"+n.HTTPAddr()+"/readyz") != 503 {
		t.Errorf("/readyz with the API down is not 503")
	}
}

// lifecycleCounts is timerd_lifecycle_messages_total as "type/result" → value.
func lifecycleCounts(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != "timerd_lifecycle_messages_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			var typ, res string
			for _, l := range m.GetLabel() {
				switch l.GetName() {
				case "type":
					typ = l.GetValue()
				case "result":
					res = l.GetValue()
				}
			}
			if v := m.GetCounter().GetValue(); v != 0 {
				out[typ+"/"+res] += v
			}
		}
	}
	return out
}
