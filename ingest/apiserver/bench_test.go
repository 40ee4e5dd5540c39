package apiserver

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/timerd/timerd/auth"
)

// BenchmarkPostEvents posts events the way nodes do (unique Idempotency-Key,
// keep-alive, N concurrent senders) to a real server with fsync'd bbolt.
// Reports events/s and the mean events per commit. auth=true verifies a
// sensor token on every request.
func BenchmarkPostEvents(b *testing.B) {
	tok, _, err := (&auth.Issuer{Key: testKey}).Issue(auth.IssueRequest{IdentityID: "1", Scope: auth.ScopeSensor,
		TriggerTypes: []string{"core.intervaltimer"}, TTL: time.Hour})
	if err != nil {
		b.Fatal(err)
	}
	for _, conc := range []int{8, 64} {
		for _, withAuth := range []bool{false, true} {
			b.Run(fmt.Sprintf("conc=%d/auth=%v", conc, withAuth), func(b *testing.B) {
				benchPostEvents(b, conc, withAuth, tok)
			})
		}
	}
}

func benchPostEvents(b *testing.B, conc int, withAuth bool, tok string) {
	reg := prometheus.NewRegistry()
	cfg := Config{DataDir: b.TempDir(), Registerer: reg}
	if withAuth {
		cfg.SigningKey = testKey
	}
	srv, err := New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	ts := httptest.NewServer(srv.Handler())
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: conc, MaxConnsPerHost: conc}}
	var next atomic.Int64
	var wg sync.WaitGroup
	var failed atomic.Int64
	b.ResetTimer()
	start := time.Now()
	for range conc {
		wg.Go(func() {
			for {
				i := next.Add(1)
				if i > int64(b.N) {
					return
				}
				body := fmt.Sprintf(`{"trigger_ref":"core.intervaltimer","trigger_instance_id":"rule_%d",`+
					`"payload":{"type":"interval","interval_seconds":5,"fired_at":"2026-01-27T12:34:56.789Z",`+
					`"scheduled_at":"2026-01-27T12:34:56Z","execution_count":%d,"sensor_ref":"core.timer"}}`, i%1000+1, i)
				req, _ := http.NewRequest(http.MethodPost, ts.URL+"/api/v1/events", strings.NewReader(body))
				req.Header.Set("Idempotency-Key", fmt.Sprintf("%d:%d", i%1000+1, i))
				if withAuth {
					req.Header.Set("Authorization", "Bearer "+tok)
				}
				resp, err := client.Do(req)
				if err != nil {
					failed.Add(1)
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusCreated {
					failed.Add(1)
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	if n := failed.Load(); n > 0 {
		b.Errorf("%d of %d posts failed", n, b.N)
	}
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "events/s")
	if mfs, err := reg.Gather(); err == nil {
		for _, mf := range mfs {
			h := mf.GetMetric()[0].GetHistogram()
			switch mf.GetName() {
			case "timerd_api_event_commit_batch_size":
				b.ReportMetric(h.GetSampleSum()/float64(h.GetSampleCount()), "events/commit")
			case "timerd_api_event_commit_seconds":
				b.ReportMetric(1e6*h.GetSampleSum()/float64(h.GetSampleCount()), "µs/commit")
			}
		}
	}
	client.CloseIdleConnections()
	ts.Close()
	if err := srv.Close(); err != nil {
		b.Fatal(err)
	}
}
