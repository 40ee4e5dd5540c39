package ingest

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/timerd/timerd/store"
)

// BenchmarkAttempt is one event POST as a delivery worker makes it, against a
// loopback server that answers 201 at once: the request path's CPU and allocations
// (issue 11 point 3). The server's share is in the figure too.
//
//	go test -run '^$' -bench Attempt -benchmem ./ingest
func BenchmarkAttempt(b *testing.B) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusCreated)
	}))
	defer srv.Close()
	st := openStore(b)
	d, err := NewDelivery(DeliveryConfig{Store: st, APIURL: srv.URL, Tokens: &staticTokens{tokens: []string{"tok"}},
		Registerer: prometheus.NewRegistry()})
	if err != nil {
		b.Fatal(err)
	}
	defer d.poster.closeAll()
	p := &pending{entry: store.OutboxEntry{Seq: 1, Event: store.Event{RuleID: 1, IdempotencyKey: "1:1769517295000000000",
		Body: benchBody}}}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if out := d.attempt(ctx, p); out.kind != outDelivered {
			b.Fatalf("attempt: %+v", out)
		}
	}
}

var benchBody = []byte(`{"trigger_ref":"core.intervaltimer","trigger_instance_id":"rule_123","payload":{` +
	`"type":"interval","interval_seconds":10,"fired_at":"2026-01-27T12:34:55.001234567Z",` +
	`"scheduled_at":"2026-01-27T12:34:55Z","execution_count":42,"sensor_ref":"core.timer"}}`)
