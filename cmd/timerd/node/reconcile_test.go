package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/timerd/timerd/ingest"
	"github.com/timerd/timerd/ingest/attune"
	"github.com/timerd/timerd/store"
)

// rulesAPI is a stand-in rules API: its listing answers what pages says (a
// page a call; the last one repeats), and GET /api/v1/rules/{ref} answers
// from rules, or a JSON 404, or whatever one says.
type rulesAPI struct {
	srv *httptest.Server

	mu    sync.Mutex
	pages []string                  // bodies of the listing, page by page
	rules map[string]string         // ref → the body of its 200
	one   func(http.ResponseWriter) // when set, answers every GET of a rule
	asked []string                  // refs GET asked for
}

func newRulesAPI(t *testing.T) *rulesAPI {
	a := &rulesAPI{rules: map[string]string{}}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/v1/rules", func(w http.ResponseWriter, r *http.Request) {
		a.mu.Lock()
		defer a.mu.Unlock()
		page, _ := strconv.Atoi(r.URL.Query().Get("page"))
		body := `{"items":[],"pagination":{"total_items":0,"has_next":false}}`
		if len(a.pages) > 0 {
			body = a.pages[min(max(page, 1), len(a.pages))-1]
		}
		if r.URL.Query().Get("trigger_ref") != "core.intervaltimer" {
			body = `{"items":[],"pagination":{"total_items":0,"has_next":false}}`
		}
		w.Write([]byte(body))
	})
	mux.HandleFunc("GET /api/v1/rules/{ref}", func(w http.ResponseWriter, r *http.Request) {
		a.mu.Lock()
		defer a.mu.Unlock()
		ref := r.PathValue("ref")
		a.asked = append(a.asked, ref)
		switch body, ok := a.rules[ref]; {
		case a.one != nil:
			a.one(w)
		case ok:
			w.Write([]byte(body))
		default:
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusNotFound)
			fmt.Fprintf(w, `{"error":"rule %s not found"}`, ref)
		}
	})
	a.srv = httptest.NewServer(mux)
	t.Cleanup(a.srv.Close)
	return a
}

// listed is a listing page of interval rules with ids, whose pagination
// says total and next.
func listed(total int, next bool, ids ...int64) string {
	items := []map[string]any{}
	for _, id := range ids {
		items = append(items, map[string]any{"id": id, "ref": fmt.Sprintf("r%d", id), "trigger_ref": "core.intervaltimer",
			"trigger_params": map[string]any{"interval": 60}, "enabled": true})
	}
	b, _ := json.Marshal(map[string]any{"items": items, "pagination": map[string]any{"total_items": total, "has_next": next}})
	return string(b)
}

func enabledRule(id int64) string {
	return fmt.Sprintf(`{"data":{"id":%d,"ref":"r%d","trigger_ref":"core.intervaltimer","trigger_params":{"interval":60},"enabled":true}}`, id, id)
}

// A reconcile removes a stored rule only on a listing that proves itself
// complete, and only when the API, asked for that rule alone, says it is
// gone: a `200 {}`, a listing without or with shifting totals, a rule that
// offset paging skipped, or an ingress's 404 page removes nothing.
func TestReconcilePrunesOnlyOnProof(t *testing.T) {
	tests := []struct {
		name    string
		pages   []string
		rules   map[string]string
		one     func(http.ResponseWriter)
		wantErr error
		kept    []int64 // of 1, 2, 3
		reason  string  // counted once in timerd_reconcile_refused_total
		also    string  // and this one once too
	}{
		{name: "200 {}: malformed, nothing applied", pages: []string{`{}`},
			wantErr: ingest.ErrMalformedListing, kept: []int64{1, 2, 3}, reason: refusedMalformed},
		{name: "data null and no items: malformed", pages: []string{`{"data":null,"pagination":{"total_items":0}}`},
			wantErr: ingest.ErrMalformedListing, kept: []int64{1, 2, 3}, reason: refusedMalformed},
		// The pages before a malformed one are applied (rule 4 added), as a whole
		// listing would; nothing is removed.
		{name: "200 {} after a page: that page applied, nothing removed", pages: []string{listed(2, true, 1, 4), `{}`},
			wantErr: ingest.ErrMalformedListing, kept: []int64{1, 2, 3, 4}, reason: refusedMalformed},
		{name: "no pagination totals", pages: []string{`{"items":[]}`},
			kept: []int64{1, 2, 3}, reason: ingest.IncompleteNoTotals},
		{name: "fewer rules than the totals say", pages: []string{listed(3, false, 1)},
			kept: []int64{1, 2, 3}, reason: ingest.IncompleteCountMismatch},
		{name: "totals change between pages (a rule deleted while paging)",
			pages: []string{listed(3, true, 1, 2), listed(2, false)},
			kept:  []int64{1, 2, 3}, reason: ingest.IncompleteTotalsChanged},
		{name: "has_next ends early", pages: []string{listed(3, false, 1, 2)},
			kept: []int64{1, 2, 3}, reason: ingest.IncompleteCountMismatch},
		// Rule 5 was inserted and rule 1 deleted while paging: the totals agree, but
		// offset paging skipped rule 3. Asked alone, 3 is enabled: kept.
		{name: "offset paging skips a rule that moved", pages: []string{listed(3, true, 1, 2), listed(3, false, 5)},
			rules: map[string]string{"r3": enabledRule(3)}, kept: []int64{1, 2, 3, 5}, reason: refusedStillEnabled},
		// The first failed re-check stops the others (deferred to the next reconcile).
		{name: "re-check answered by an ingress's 404 page",
			pages: []string{listed(1, false, 1)},
			one: func(w http.ResponseWriter) {
				w.Header().Set("Content-Type", "text/html")
				w.WriteHeader(http.StatusNotFound)
				w.Write([]byte("<html><body>404 Not Found</body></html>"))
			},
			kept: []int64{1, 2, 3}, reason: refusedRecheck, also: refusedDeferred},
		{name: "re-check answered 503", pages: []string{listed(1, false, 1)},
			one:  func(w http.ResponseWriter) { w.WriteHeader(http.StatusServiceUnavailable) },
			kept: []int64{1, 2, 3}, reason: refusedRecheck, also: refusedDeferred},
		{name: "complete listing, re-check 404 in JSON: removed", pages: []string{listed(1, false, 1)},
			kept: []int64{1}},
		{name: "complete listing, re-check says disabled: removed", pages: []string{listed(2, false, 1, 3)},
			rules: map[string]string{"r2": `{"data":{"id":2,"ref":"r2","trigger_ref":"core.intervaltimer","enabled":false}}`},
			kept:  []int64{1, 3}},
		{name: "complete listing, ref now names another rule: removed", pages: []string{listed(2, false, 1, 3)},
			rules: map[string]string{"r2": enabledRule(9)}, kept: []int64{1, 3}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := newIdleNode(t)
			past := time.Now().Add(-time.Hour)
			if err := n.applyMessages([]attune.Message{
				envelopeAt(attune.RuleCreated, 1, "core.intervaltimer", `{"interval":60}`, past),
				envelopeAt(attune.RuleCreated, 2, "core.intervaltimer", `{"interval":60}`, past),
				envelopeAt(attune.RuleCreated, 3, "core.intervaltimer", `{"interval":60}`, past),
			}); err != nil {
				t.Fatal(err)
			}
			api := newRulesAPI(t)
			api.pages, api.rules, api.one = tt.pages, tt.rules, tt.one
			if api.rules == nil {
				api.rules = map[string]string{}
			}
			n.rules = &ingest.RulesClient{APIURL: api.srv.URL}

			err := n.reconcile(context.Background())
			if !errors.Is(err, tt.wantErr) || (err != nil) != (tt.wantErr != nil) {
				t.Fatalf("reconcile = %v, want %v", err, tt.wantErr)
			}
			var stored []int64
			if err := n.store.ForEachRule(func(r store.Rule, _ store.Watermark) error { stored = append(stored, r.ID); return nil }); err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(stored) != fmt.Sprint(tt.kept) {
				t.Errorf("rules after reconcile = %v, want %v", stored, tt.kept)
			}
			for _, r := range refusedReasons {
				want := 0.0
				if r == tt.reason || r == tt.also {
					want = 1
				}
				if got := testutil.ToFloat64(n.metrics.refused.WithLabelValues(r)); got != want {
					t.Errorf("timerd_reconcile_refused_total{reason=%q} = %v, want %v", r, got, want)
				}
			}
		})
	}
}

// A listing is applied in store transactions of Node.applyChunk rules as it
// is read, and pruned once it is whole: across chunks and pages, a rule
// listed twice, and a chunk that ends mid-page, it leaves the store as one
// transaction would. A listing that fails after some chunks leaves them
// applied and prunes nothing.
func TestReconcileAppliesInChunks(t *testing.T) {
	for _, chunk := range []int{1, 2, 3, 100} {
		t.Run(fmt.Sprintf("chunk=%d", chunk), func(t *testing.T) {
			n := newIdleNode(t)
			n.applyChunk = chunk
			past := time.Now().Add(-time.Hour)
			if err := n.applyMessages([]attune.Message{
				envelopeAt(attune.RuleCreated, 1, "core.intervaltimer", `{"interval":60}`, past),
				envelopeAt(attune.RuleCreated, 2, "core.intervaltimer", `{"interval":60}`, past),
				envelopeAt(attune.RuleCreated, 9, "core.intervaltimer", `{"interval":60}`, past),
			}); err != nil {
				t.Fatal(err)
			}
			api := newRulesAPI(t)
			n.rules = &ingest.RulesClient{APIURL: api.srv.URL}
			stored := func() string {
				var ids []int64
				if err := n.store.ForEachRule(func(r store.Rule, _ store.Watermark) error { ids = append(ids, r.ID); return nil }); err != nil {
					t.Fatal(err)
				}
				return fmt.Sprint(ids)
			}

			// Fails on its third page: rules 3 to 5 applied, 9 (not listed) kept.
			api.pages = []string{listed(7, true, 1, 3, 4), listed(7, true, 5, 2), `{}`}
			if err := n.reconcile(context.Background()); !errors.Is(err, ingest.ErrMalformedListing) {
				t.Fatalf("reconcile = %v, want %v", err, ingest.ErrMalformedListing)
			}
			if got := stored(); got != "[1 2 3 4 5 9]" {
				t.Errorf("after a listing that failed on page 3: rules %s, want [1 2 3 4 5 9]", got)
			}

			// Whole, rule 4 twice (it moved between pages): 6 added, 9 pruned.
			api.pages = []string{listed(6, true, 1, 3, 4), listed(6, true, 4, 5, 2), listed(6, false, 6)}
			changes, err := n.reconcileChanges(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if got := stored(); got != "[1 2 3 4 5 6]" || changes != 2 {
				t.Errorf("after a whole listing: rules %s, %d changes; want [1 2 3 4 5 6], 2", got, changes)
			}
			if n.engine.Len() != 6 {
				t.Errorf("engine runs %d rules, want 6", n.engine.Len())
			}
		})
	}
}

// A rule changed after the listing began is not pruned by it, and is not
// even re-checked.
func TestReconcileDoesNotPruneARuleChangedSinceTheListing(t *testing.T) {
	n := newIdleNode(t)
	api := newRulesAPI(t)
	api.pages = []string{listed(0, false)}
	n.rules = &ingest.RulesClient{APIURL: api.srv.URL}
	listedAt := time.Now()
	// Created by a lifecycle message after the listing started.
	if err := n.applyMessages([]attune.Message{
		envelopeAt(attune.RuleCreated, 7, "core.intervaltimer", `{"interval":60}`, listedAt.Add(time.Second)),
	}); err != nil {
		t.Fatal(err)
	}
	l, err := n.rules.EnabledRules(context.Background(), "core.intervaltimer")
	if err != nil || l.Incomplete != "" {
		t.Fatalf("listing = %+v, %v; want complete", l, err)
	}
	if err := n.applyRemote(context.Background(), l.Rules, listedAt, l.Incomplete, "reconcile"); err != nil {
		t.Fatal(err)
	}
	if _, _, ok, _ := n.store.Rule(7); !ok {
		t.Errorf("rule 7, created after the listing began, was pruned by it")
	}
	if len(api.asked) != 0 {
		t.Errorf("re-checked %v; a rule newer than the listing needs no re-check", api.asked)
	}
	if got := testutil.ToFloat64(n.metrics.refused.WithLabelValues(refusedChanged)); got != 1 {
		t.Errorf("timerd_reconcile_refused_total{reason=%q} = %v, want 1", refusedChanged, got)
	}
}

// An update that makes a running rule's timer invalid stops the rule (its old
// schedule must not go on firing), keeps its watermark, counts it in
// timerd_rules_invalid, and a valid update starts it again after that watermark.
func TestInvalidUpdateStopsTheRuleAndKeepsItsWatermark(t *testing.T) {
	n := newIdleNode(t)
	t0 := time.Now().Add(-time.Hour)
	if err := n.applyMessages([]attune.Message{envelopeAt(attune.RuleCreated, 1, "core.intervaltimer", `{"interval":5}`, t0)}); err != nil {
		t.Fatal(err)
	}
	fired := time.Now().Add(20 * time.Second).Truncate(time.Second) // after the watermark creation gave it
	if err := n.store.CommitFires([]store.FireRecord{{Watermark: store.Watermark{Slot: fired, Count: 9},
		Event: store.Event{RuleID: 1, IdempotencyKey: "1:x", Body: []byte(`{}`)}}}); err != nil {
		t.Fatal(err)
	}
	for i, params := range []string{`{"interval":0}`, `{"unit":"fortnights","interval":3}`, `{"interval":-1}`} {
		at := t0.Add(time.Duration(i+1) * time.Minute)
		if err := n.applyMessages([]attune.Message{envelopeAt(attune.RuleEnabled, 1, "core.intervaltimer", params, at)}); err != nil {
			t.Fatal(err)
		}
		if _, running := n.engine.Watermark(1); running {
			t.Fatalf("update to %s: the rule still runs its old schedule", params)
		}
		r, wm, ok, err := n.store.Rule(1)
		if err != nil || !ok || !wm.Slot.Equal(fired) || wm.Count != 9 {
			t.Fatalf("update to %s: stored rule %v, watermark %v/%d (%v, %v); want held with %v/9", params, ok, wm.Slot, wm.Count, err, r.ID, fired)
		}
		if got := n.invalid.count(); got != 1 {
			t.Errorf("update to %s: timerd_rules_invalid = %d, want 1", params, got)
		}
	}
	if got := testutil.ToFloat64(n.metrics.lifecycle.WithLabelValues(string(attune.RuleEnabled), resInvalid)); got != 3 {
		t.Errorf("lifecycle invalid updates counted %v, want 3", got)
	}
	// A restart finds it stored, not parsing: counted, not scheduled.
	n2 := n
	n2.invalid = invalidRules{}
	if _, err := n2.load(); err != nil {
		t.Fatal(err)
	}
	if _, running := n2.engine.Watermark(1); running || n2.invalid.count() != 1 {
		t.Errorf("after load: running %v, invalid %d; want stopped and counted", running, n2.invalid.count())
	}

	if err := n.applyMessages([]attune.Message{envelopeAt(attune.RuleEnabled, 1, "core.intervaltimer", `{"interval":10}`, t0.Add(10*time.Minute))}); err != nil {
		t.Fatal(err)
	}
	wm, running := n.engine.Watermark(1)
	if !running || wm.Slot.Before(fired) || wm.Count < 9 {
		t.Errorf("after a valid update: running %v from %v/%d; want running after %v/9", running, wm.Slot, wm.Count, fired)
	}
	if got := n.invalid.count(); got != 0 {
		t.Errorf("after a valid update: timerd_rules_invalid = %d, want 0", got)
	}
}

// A mass deletion is pruned maxRechecks rules a reconcile: the rest wait for
// the next one, counted as deferred, so intake is not held for minutes.
func TestReconcileBoundsItsRechecks(t *testing.T) {
	n := newIdleNode(t)
	past := time.Now().Add(-time.Hour)
	var msgs []attune.Message
	for id := int64(1); id <= maxRechecks+5; id++ {
		msgs = append(msgs, envelopeAt(attune.RuleCreated, id, "core.intervaltimer", `{"interval":60}`, past))
	}
	if err := n.applyMessages(msgs); err != nil {
		t.Fatal(err)
	}
	api := newRulesAPI(t)
	api.pages = []string{listed(0, false)}
	n.rules = &ingest.RulesClient{APIURL: api.srv.URL}
	for round, want := range []int{5, 0} {
		if err := n.reconcile(context.Background()); err != nil {
			t.Fatal(err)
		}
		left, _ := n.store.RuleCount()
		if left != want {
			t.Errorf("after reconcile %d: %d rules left, want %d", round+1, left, want)
		}
	}
	if got := testutil.ToFloat64(n.metrics.refused.WithLabelValues(refusedDeferred)); got != 5 {
		t.Errorf("recheck_deferred = %v, want 5", got)
	}
}
