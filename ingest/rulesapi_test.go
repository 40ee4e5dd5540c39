package ingest

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// The listing's times reach EnabledRules' result.
func TestEnabledRulesVersions(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte(`{"data":[
			{"id":1,"ref":"a","trigger_ref":"core.intervaltimer","trigger_params":{"interval":5},"enabled":true,
			 "created":"2026-01-01T00:00:00Z","updated":"2026-01-02T00:00:00Z"},
			{"id":2,"ref":"b","trigger_ref":"core.intervaltimer","trigger_params":{"interval":5},"created_at":"2026-01-03T00:00:00Z"}
		],"pagination":{"has_next":false}}`))
	}))
	defer srv.Close()
	l, err := (&RulesClient{APIURL: srv.URL}).EnabledRules(context.Background(), "core.intervaltimer")
	if err != nil {
		t.Fatal(err)
	}
	rules := l.Rules
	want := map[int64]time.Time{1: time.Date(2026, 1, 2, 0, 0, 0, 0, time.UTC), 2: time.Date(2026, 1, 3, 0, 0, 0, 0, time.UTC)}
	if len(rules) != 2 {
		t.Fatalf("EnabledRules = %d rules, want 2", len(rules))
	}
	for _, r := range rules {
		if !r.Version().Equal(want[r.ID]) {
			t.Errorf("rule %d: Version() = %v, want %v", r.ID, r.Version(), want[r.ID])
		}
	}
}
