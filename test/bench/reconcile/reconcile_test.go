package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/timerd/timerd/scheduler"
)

// The proxy forwards everything, counts only the rules listing (requests
// and the bytes of its answers), and runs onFirst once, on the first
// listing request after a reset.
func TestCountingProxy(t *testing.T) {
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s %s", r.URL.Path, strings.Repeat("x", 1000))
	}))
	defer api.Close()
	target, _ := url.Parse(api.URL)
	px := newCountingProxy(target)
	defer px.Close()
	get := func(path string) string {
		t.Helper()
		resp, err := http.Get(px.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	if b := get("/health"); !strings.HasPrefix(b, "/health ") {
		t.Fatalf("GET /health through the proxy = %.20q, want the API's answer", b)
	}
	firsts := 0
	px.reset(func() { firsts++ })
	get("/api/v1/rules?page=1")
	get("/api/v1/rules?page=2")
	get("/api/v1/events")
	requests, bytes := px.counts()
	want := int64(2*len("/api/v1/rules ") + 2000)
	if requests != 2 || bytes != want || firsts != 1 {
		t.Errorf("after 2 listing requests and 1 other: %d requests, %d bytes, onFirst ran %d times; want 2, %d, 1", requests, bytes, firsts, want)
	}
	px.reset(nil)
	if requests, bytes := px.counts(); requests != 0 || bytes != 0 {
		t.Errorf("after reset: %d requests, %d bytes; want 0, 0", requests, bytes)
	}
}

// The rounds are the agent's "reconciled" lines, and no others.
func TestWatchRounds(t *testing.T) {
	logs := strings.Join([]string{
		`{"timestamp":"2026-01-01T00:00:00Z","level":"info","message":"reconciled","rules":5}`,
		`{"timestamp":"2026-01-01T00:00:00Z","level":"info","message":"reconcile applied","rules":5}`,
		`{"timestamp":"2026-01-01T00:00:00Z","level":"info","message":"node ready","note":"\"message\":\"reconciled\" quoted"}`,
		`{"timestamp":"2026-01-01T00:00:01Z","level":"info","message":"reconciled","rules":5}`,
	}, "\n")
	rounds := make(chan time.Time, 4)
	tail := &lastLines{}
	watchRounds(strings.NewReader(logs), rounds, tail)
	if len(rounds) != 2 || !strings.Contains(tail.String(), "node ready") {
		t.Errorf("watchRounds found %d rounds (want 2); tail %q", len(rounds), tail)
	}
}

// The figure per minute scales a round to a million rules and a minute.
func TestPerMinute(t *testing.T) {
	for _, tc := range []struct {
		n, rules int
		interval time.Duration
		want     float64
	}{
		{2000, 200_000, 5 * time.Minute, 2000}, // 10,000 requests a round for 1M, every 5 min
		{201, 200_000, 5 * time.Minute, 201},
		{100, 1_000_000, time.Minute, 100},
		{10, 100_000, 30 * time.Second, 200},
	} {
		if got := perMinute(tc.n, tc.rules, tc.interval); got != tc.want {
			t.Errorf("perMinute(%d, %d, %v) = %v, want %v", tc.n, tc.rules, tc.interval, got, tc.want)
		}
	}
}

// Every rule the benchmark loads is one the API accepts: a timer that
// parses, with a time left.
func TestRulesParse(t *testing.T) {
	now := time.Now()
	for id := int64(1); id <= 2000; id++ {
		trigger, params := ruleOf(id)
		if !json.Valid([]byte(params)) {
			t.Fatalf("rule %d: params %s are not JSON", id, params)
		}
		tm, err := scheduler.Parse(trigger, json.RawMessage(params), id)
		if err != nil {
			t.Fatalf("rule %d (%s %s): %v", id, trigger, params, err)
		}
		if _, ok := tm.Next(now); !ok {
			t.Errorf("rule %d (%s %s): no time left", id, trigger, params)
		}
	}
}
