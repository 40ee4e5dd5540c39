package node

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/timerd/timerd/cluster/protocol"
	"github.com/timerd/timerd/ingest"
	"github.com/timerd/timerd/ingest/attune"
	"github.com/timerd/timerd/scheduler"
	"github.com/timerd/timerd/store"
	"github.com/timerd/timerd/test/testkit"
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

func envelope(typ attune.LifecycleType, id int64, trigger, params string) attune.Message {
	return envelopeAt(typ, id, trigger, params, time.Now())
}

// envelopeAt is envelope with the timestamp at (Attune's version of the change).
func envelopeAt(typ attune.LifecycleType, id int64, trigger, params string, at time.Time) attune.Message {
	l := attune.Lifecycle{Type: typ, RuleID: id, RuleRef: fmt.Sprintf("r%d", id), TriggerRef: trigger, Enabled: true}
	if params != "" {
		l.Params = json.RawMessage(params)
	}
	if typ == attune.RuleDisabled || typ == attune.RuleDeleted {
		l.Enabled = false
	}
	return attune.Message{RoutingKey: attune.RoutingKey(typ), Body: attune.EnvelopeJSON(l, "", at)}
}

func raw(key, body string) attune.Message { return attune.Message{RoutingKey: key, Body: []byte(body)} }

func TestApplyMessages(t *testing.T) {
	const every5 = `{"interval":5}`
	t0 := time.Now().Add(-time.Minute)
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	created := envelopeAt(attune.RuleCreated, 1, "core.intervaltimer", every5, t0)
	tests := []struct {
		name    string
		before  []attune.Message // applied in a batch of their own first
		batch   []attune.Message
		want    []string // result label of each message of batch, in order
		rules   []int64  // rule ids in the store and the engine after
		wantErr bool
	}{
		{
			name:  "create, then the same enable twice",
			batch: []attune.Message{created, envelope(attune.RuleEnabled, 1, "core.intervaltimer", every5), envelope(attune.RuleEnabled, 1, "core.intervaltimer", `{ "interval" : 5 }`)},
			want:  []string{resApplied, resUnchanged, resUnchanged},
			rules: []int64{1},
		},
		{
			name:  "create and delete in one batch",
			batch: []attune.Message{created, envelope(attune.RuleDeleted, 1, "core.intervaltimer", "")},
			want:  []string{resApplied, resApplied},
		},
		{
			name:   "stored rule deleted and created again in one batch",
			before: []attune.Message{created},
			batch: []attune.Message{envelopeAt(attune.RuleDeleted, 1, "core.intervaltimer", "", at(1)),
				envelopeAt(attune.RuleCreated, 1, "core.intervaltimer", every5, at(2))},
			want:  []string{resApplied, resApplied},
			rules: []int64{1},
		},
		{
			name:   "a stale enable after a disable: the rule stays removed",
			before: []attune.Message{created},
			batch: []attune.Message{envelopeAt(attune.RuleDisabled, 1, "core.intervaltimer", "", at(3)),
				envelopeAt(attune.RuleEnabled, 1, "core.intervaltimer", every5, at(2))},
			want: []string{resApplied, resStale},
		},
		{
			name:   "a stale disable after an enable: the rule stays",
			before: []attune.Message{created},
			batch: []attune.Message{envelopeAt(attune.RuleEnabled, 1, "core.intervaltimer", `{"interval":7}`, at(3)),
				envelopeAt(attune.RuleDisabled, 1, "core.intervaltimer", "", at(2))},
			want:  []string{resApplied, resStale},
			rules: []int64{1},
		},
		{
			name:   "deleted, then its creation arrives",
			before: []attune.Message{envelopeAt(attune.RuleDeleted, 1, "core.intervaltimer", "", at(1))},
			batch:  []attune.Message{created, envelopeAt(attune.RuleEnabled, 1, "core.intervaltimer", every5, at(0))},
			want:   []string{resStale, resStale},
		},
		{
			name:   "an older message in another batch is stale",
			before: []attune.Message{envelopeAt(attune.RuleEnabled, 1, "core.intervaltimer", `{"interval":7}`, at(5))},
			batch:  []attune.Message{created},
			want:   []string{resStale},
			rules:  []int64{1},
		},
		{
			name:   "a disable without a timestamp is as new as its arrival",
			before: []attune.Message{created},
			batch:  []attune.Message{raw("rule.disabled", `{"event_type":"RuleDisabled","rule_id":1}`)},
			want:   []string{resApplied},
		},
		{
			name: "a timestamp from year 9999 does not lock the rule",
			before: []attune.Message{envelopeAt(attune.RuleCreated, 1, "core.intervaltimer", every5,
				time.Date(9999, 12, 31, 0, 0, 0, 0, time.UTC))},
			batch: []attune.Message{envelopeAt(attune.RuleDisabled, 1, "core.intervaltimer", "", time.Now().Add(2*time.Minute))},
			want:  []string{resApplied},
		},
		{
			name:   "parameter change of a stored rule",
			before: []attune.Message{created},
			batch:  []attune.Message{envelope(attune.RuleEnabled, 1, "core.intervaltimer", `{"interval":7}`)},
			want:   []string{resApplied},
			rules:  []int64{1},
		},
		{
			name:   "flat disable of a stored rule",
			before: []attune.Message{created},
			batch:  []attune.Message{raw("rule.disabled", `{"event_type":"RuleDisabled","rule_id":1,"trigger_type":"core.intervaltimer"}`)},
			want:   []string{resApplied},
		},
		{
			name:   "enabled as another trigger: no longer a timer rule",
			before: []attune.Message{created},
			batch:  []attune.Message{envelope(attune.RuleEnabled, 1, "core.webhook", `{}`)},
			want:   []string{resApplied},
		},
		{
			name:  "disable of a rule never seen",
			batch: []attune.Message{envelope(attune.RuleDisabled, 9, "core.intervaltimer", "")},
			want:  []string{resUnchanged},
		},
		{
			name: "hostile messages change nothing",
			batch: []attune.Message{
				raw("rule.created", `{"message_type":`),
				raw("rule.created", "\x00\xff\xfe"),
				raw("rule.created", `{"message_type":"RuleCreated","payload":{"rule_id":0,"trigger_ref":"core.intervaltimer","trigger_params":{"interval":5}}}`),
				raw("rule.created", `{"message_type":"RuleCreated","payload":{"rule_id":1.5,"trigger_ref":"core.intervaltimer","trigger_params":{"interval":5}}}`),
				raw("rule.created", `{"message_type":"RuleCreated","payload":{"rule_id":"x","trigger_ref":"core.intervaltimer"}}`),
				envelope(attune.RuleCreated, 2, "core.intervaltimer", `{"interval":-5}`),
				envelope(attune.RuleCreated, 3, "core.crontimer", `{"expression":"* * * * * * * * *"}`),
				envelope(attune.RuleCreated, 4, "core.intervaltimer", `{"interval":5,"pad":"`+strings.Repeat("x", 100<<10)+`"}`),
				envelope(attune.RuleCreated, 5, "core.webhook", `{"url":"x"}`),
				envelope(attune.RuleDeleted, 6, "core.webhook", ""),
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
				l, perr := attune.ParseLifecycle(tt.batch[i].Body, tt.batch[i].RoutingKey)
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
			if err := n.store.ForEachRule(func(r store.Rule, _ store.Watermark) error { stored = append(stored, r.ID); return nil }); err != nil {
				t.Fatal(err)
			}
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
	if err := n.applyMessages([]attune.Message{envelope(attune.RuleCreated, 1, "core.intervaltimer", `{"interval":5}`)}); err != nil {
		t.Fatal(err)
	}
	next1, _ := n.engine.NextFire()
	newTimer, err := scheduler.Parse("core.intervaltimer", []byte(`{"interval":3600}`), 1)
	if err != nil {
		t.Fatal(err)
	}
	before := time.Now()
	if err := n.applyMessages([]attune.Message{envelope(attune.RuleEnabled, 1, "core.intervaltimer", `{"interval":3600}`)}); err != nil {
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
		StartupRules: []attune.RemoteRule{
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
	testkit.Eventually(t, 5*time.Second, "start-up rule scheduled", func() bool { return n.engine.Len() == 1 })
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

// A datetime rule that reaches the node after its slot fires it (late): its
// schedule starts at the change's version, not at its arrival. So does one
// moved by PUT to a time before it arrived; one whose change is older than
// the anchor bound starts at its arrival and does not fire.
func TestLateArrivalsFire(t *testing.T) {
	now := time.Now()
	dt := func(at time.Time) string { return `{"fire_at":"` + at.UTC().Format(time.RFC3339Nano) + `"}` }
	tests := []struct {
		name   string
		before []attune.Message
		batch  []attune.Message
		next   time.Time // the engine's next fire; zero: none
	}{
		{name: "created before its slot, arrives after it",
			batch: []attune.Message{envelopeAt(attune.RuleCreated, 1, "core.datetimetimer", dt(now.Add(-time.Minute)), now.Add(-2*time.Minute))},
			next:  now.Add(-time.Minute)},
		{name: "moved to a time before it arrived",
			before: []attune.Message{envelopeAt(attune.RuleCreated, 1, "core.datetimetimer", dt(now.Add(time.Hour)), now.Add(-3*time.Minute))},
			batch:  []attune.Message{envelopeAt(attune.RuleEnabled, 1, "core.datetimetimer", dt(now.Add(-time.Minute)), now.Add(-2*time.Minute))},
			next:   now.Add(-time.Minute)},
		{name: "\"fire now\": due a little before its creation",
			batch: []attune.Message{envelopeAt(attune.RuleCreated, 1, "core.datetimetimer", dt(now.Add(-90*time.Second)), now.Add(-time.Minute))},
			next:  now.Add(-90 * time.Second)},
		{name: "created longer ago than the anchor bound: starts now",
			batch: []attune.Message{envelopeAt(attune.RuleCreated, 1, "core.datetimetimer", dt(now.Add(-5*time.Minute)), now.Add(-6*time.Minute))}},
		{name: "due before its creation by more than the skew: never",
			batch: []attune.Message{envelopeAt(attune.RuleCreated, 1, "core.datetimetimer", dt(now.Add(-3*time.Minute)), now.Add(-time.Minute))}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := newIdleNode(t)
			for _, b := range [][]attune.Message{tt.before, tt.batch} {
				if err := n.applyMessages(b); err != nil {
					t.Fatal(err)
				}
			}
			next, ok := n.engine.NextFire()
			if ok != !tt.next.IsZero() || (ok && !next.Equal(tt.next.UTC().Round(0))) {
				t.Errorf("next fire = %v (%v), want %v", next, ok, tt.next)
			}
		})
	}
}

// Reconcile applies the listing by its versions: a listed rule created
// before its slot fires late, a listing older than the rule's tombstone
// does not bring it back, and a rule missing from the listing goes only if
// its version is older than the listing less the skew allowance.
func TestReconcileVersions(t *testing.T) {
	now := time.Now()
	n := newIdleNode(t)
	dt := func(at time.Time) json.RawMessage {
		return json.RawMessage(`{"fire_at":"` + at.UTC().Format(time.RFC3339Nano) + `"}`)
	}
	// Stored: 2 (changed 2 min ago), 3 (changed 30 s ago), 4 removed 10 s ago.
	if err := n.applyMessages([]attune.Message{
		envelopeAt(attune.RuleCreated, 2, "core.intervaltimer", `{"interval":60}`, now.Add(-2*time.Minute)),
		envelopeAt(attune.RuleCreated, 3, "core.intervaltimer", `{"interval":60}`, now.Add(-30*time.Second)),
		envelopeAt(attune.RuleDeleted, 4, "core.intervaltimer", "", now.Add(-10*time.Second)),
	}); err != nil {
		t.Fatal(err)
	}
	listing := []attune.RemoteRule{
		{ID: 1, Ref: "late", TriggerRef: "core.datetimetimer", Params: dt(now.Add(-time.Minute)), Updated: now.Add(-2 * time.Minute)},
		{ID: 4, Ref: "gone", TriggerRef: "core.intervaltimer", Params: json.RawMessage(`{"interval":60}`), Updated: now.Add(-time.Minute)},
	}
	n.rules = &ingest.RulesClient{APIURL: newRulesAPI(t).srv.URL} // asked for rule 2: a 404
	if err := n.applyRemote(context.Background(), listing, now, "", "reconcile"); err != nil {
		t.Fatal(err)
	}
	var stored []int64
	if err := n.store.ForEachRule(func(r store.Rule, _ store.Watermark) error { stored = append(stored, r.ID); return nil }); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(stored) != "[1 3]" {
		t.Errorf("rules after reconcile = %v, want [1 3] (2 pruned, 3 too new to prune, 4's tombstone newer)", stored)
	}
	if wm, ok := n.engine.Watermark(1); !ok || !wm.Slot.Before(now.Add(-time.Minute)) {
		t.Errorf("rule 1 (due 1 min ago, listed as updated 2 min ago): watermark %v, %v; want before its slot", wm.Slot, ok)
	}
	if ts, ok, _ := n.store.Tombstone(2); !ok || !ts.Version.Equal(now.Add(-protocol.SkewAllowance).UTC()) {
		t.Errorf("tombstone of pruned rule 2 = %v, %v; want the listing's start less the skew", ts.Version, ok)
	}
	// The start-up set (no versions) never undoes what the node holds.
	if err := n.applyRemote(context.Background(), []attune.RemoteRule{{ID: 4, Ref: "gone", TriggerRef: "core.intervaltimer",
		Params: json.RawMessage(`{"interval":60}`)}}, time.Time{}, "", "start-up set"); err != nil {
		t.Fatal(err)
	}
	if _, _, ok, _ := n.store.Rule(4); ok {
		t.Errorf("start-up set brought back rule 4, removed after it")
	}
}

// Tombstones past their TTL are purged by reconcile.
func TestReconcilePurgesTombstones(t *testing.T) {
	n := newIdleNode(t)
	old := time.Now().Add(-protocol.TombstoneTTL - time.Hour)
	if err := n.store.RemoveRules([]store.Tombstone{{ID: 1, Version: old}, {ID: 2, Version: time.Now()}}); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Write([]byte(`{"items":[],"pagination":{"has_next":false}}`))
	}))
	defer srv.Close()
	n.rules = &ingest.RulesClient{APIURL: srv.URL}
	if err := n.reconcile(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := n.store.Tombstone(1); ok {
		t.Errorf("tombstone past its TTL not purged")
	}
	if _, ok, _ := n.store.Tombstone(2); !ok {
		t.Errorf("fresh tombstone purged")
	}
}

// A burst of rule creates on the in-process bus, published as fast as the
// bus takes them (the API creating rules at its full rate), is all running
// once the node has taken it in: every rule in the engine, none lost to the
// batching. How long it takes is logged, not asserted (the load tool
// reports it: go run ./test/load).
func TestIntakeBurstAllRun(t *testing.T) {
	n := 5000
	if testing.Short() {
		n = 500
	}
	dir := t.TempDir()
	s := startAPI(t, dir)
	rn := s.startNode(dir, true)
	start := time.Now()
	for id := int64(1); id <= int64(n); id++ {
		// An hour apart: none fires during the test.
		m := envelope(attune.RuleCreated, id, "core.intervaltimer", `{"interval":3600}`)
		if err := s.bus.Publish(context.Background(), m); err != nil {
			t.Fatal(err)
		}
	}
	published := time.Since(start)
	testkit.Eventually(t, 2*time.Minute, fmt.Sprintf("%d rules running", n), func() bool { return rn.engine.Len() >= n })
	t.Logf("%d creates published in %s, all running %s later", n, published.Round(time.Millisecond),
		(time.Since(start) - published).Round(time.Millisecond))
	for id := int64(1); id <= int64(n); id++ {
		if _, ok := rn.engine.Watermark(id); !ok {
			t.Fatalf("rule %d of the burst is not running", id)
		}
	}
	if c, err := rn.store.RuleCount(); err != nil || c != n {
		t.Errorf("store holds %d rules (err %v), want %d", c, err, n)
	}
	if got := lifecycleCounts(t, rn.cfg.Registry)["RuleCreated/applied"]; got != float64(n) {
		t.Errorf("lifecycle messages RuleCreated/applied = %v, want %d", got, n)
	}
}
