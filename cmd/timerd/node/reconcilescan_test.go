package node

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/timerd/timerd/ingest"
	"github.com/timerd/timerd/store"
)

// page is a complete listing page of interval rules given as id → params
// and version (extra repeats a rule), in the order given.
func page(t *testing.T, rules []listedAt) string {
	t.Helper()
	var items []map[string]any
	ids := map[int64]bool{}
	for _, r := range rules {
		ids[r.id] = true
		items = append(items, map[string]any{"id": r.id, "ref": fmt.Sprintf("r%d", r.id), "trigger_ref": "core.intervaltimer",
			"trigger_params": json.RawMessage(r.params), "enabled": true, "updated": r.version.Format(time.RFC3339Nano)})
	}
	b, err := json.Marshal(map[string]any{"items": items, "pagination": map[string]any{"total_items": len(ids), "has_next": false}})
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

type listedAt struct {
	id      int64
	params  string
	version time.Time
}

// A reconcile that finds most rules as it holds them (decided from one scan
// of the store, not a read each) still applies every difference: changed
// params, a newer version of the same rule, a rule listed twice (the second
// sees the first), a new rule, and prunes an old one it no longer lists.
func TestReconcileAppliesEveryDifferenceAmongUnchangedRules(t *testing.T) {
	n := newIdleNode(t)
	api := newRulesAPI(t)
	n.rules = &ingest.RulesClient{APIURL: api.srv.URL}
	v1 := time.Now().Add(-time.Hour).UTC().Truncate(time.Millisecond)
	v2 := v1.Add(30 * time.Minute)
	var first []listedAt
	for id := int64(1); id <= 6; id++ {
		first = append(first, listedAt{id, `{"interval":60}`, v1})
	}
	api.pages = []string{page(t, first)}
	if changes, err := n.reconcileChanges(context.Background()); err != nil || changes != 6 {
		t.Fatalf("first reconcile = %d changes, %v; want 6", changes, err)
	}
	if changes, err := n.reconcileChanges(context.Background()); err != nil || changes != 0 {
		t.Fatalf("the same listing again = %d changes, %v; want 0", changes, err)
	}
	api.pages = []string{page(t, []listedAt{
		{1, `{"interval":60}`, v1},     // as held
		{2, `{"interval":90}`, v2},     // params changed
		{3, `{"interval":60}`, v2},     // a newer version, same rule: the version is kept
		{4, `{"interval":60}`, v1},     // as held, then listed again changed
		{4, `{"interval":120}`, v2},    //
		{5, `{ "interval" : 60 }`, v1}, // as held, spelled otherwise
		{7, `{"interval":30}`, v2},     // new
	})} // 6: not listed, older than the listing: pruned once the API says it is gone
	changes, err := n.reconcileChanges(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if changes != 4 { // 2, 4, 7 applied; 6 removed; 3 unchanged, its version kept
		t.Errorf("reconcile = %d changes, want 4 (2, 4 and 7 applied, 6 removed)", changes)
	}
	got := map[int64]store.Rule{}
	if err := n.store.ForEachRule(func(r store.Rule, _ store.Watermark) error { got[r.ID] = r; return nil }); err != nil {
		t.Fatal(err)
	}
	want := map[int64]struct {
		params  string
		version time.Time
	}{1: {`{"interval":60}`, v1}, 2: {`{"interval":90}`, v2}, 3: {`{"interval":60}`, v2}, 4: {`{"interval":120}`, v2},
		5: {`{"interval":60}`, v1}, 7: {`{"interval":30}`, v2}}
	if len(got) != len(want) {
		t.Errorf("stored rules %v, want ids 1, 2, 3, 4, 5, 7", got)
	}
	for id, w := range want {
		r, ok := got[id]
		if !ok || string(r.Params) != w.params || !r.UpdatedAt.Equal(w.version) {
			t.Errorf("rule %d stored = %v, params %s, version %v; want params %s, version %v", id, ok, r.Params, r.UpdatedAt, w.params, w.version)
		}
	}
	for id := range want {
		if _, ok := n.engine.Watermark(id); !ok {
			t.Errorf("rule %d is not scheduled", id)
		}
	}
	if _, ok := n.engine.Watermark(6); ok || n.engine.Len() != len(want) {
		t.Errorf("engine holds %d rules, rule 6 among them: %v; want %d, not 6", n.engine.Len(), ok, len(want))
	}
}
