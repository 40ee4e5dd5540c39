package ingest

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/timerd/timerd/test/testkit"
)

// elsewhere is the host a misconfigured ingress redirects to: it answers 200 to
// anything and records every request, with its Authorization header.
type elsewhere struct {
	srv  *httptest.Server
	mu   sync.Mutex
	seen []string // "METHOD path auth=..."
}

func newElsewhere(t *testing.T) *elsewhere {
	t.Helper()
	e := &elsewhere{}
	ln, err := net.Listen("tcp", "127.0.0.2:0") // another host than the API's 127.0.0.1
	if err != nil {
		t.Fatal(err)
	}
	e.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		e.mu.Lock()
		e.seen = append(e.seen, r.Method+" "+r.URL.Path+" auth="+r.Header.Get("Authorization"))
		e.mu.Unlock()
		w.Write([]byte(`{"data":[],"items":[],"token":"stolen"}`))
	}))
	e.srv.Listener.Close()
	e.srv.Listener = ln
	e.srv.Start()
	t.Cleanup(e.srv.Close)
	return e
}

func (e *elsewhere) requests() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.seen...)
}

// A 302 from the events API is a failure to retry, never a delivery: the redirected
// POST is not re-sent (as a GET, whose 200 would count as delivered: 6 of 6 events lost
// on 190e9eb), the token never reaches the other host, the redirect is logged once
// with its Location, and the event is delivered once the API answers.
func TestDeliveryNeverFollowsRedirects(t *testing.T) {
	for _, code := range []int{301, 302, 303, 307, 308} {
		t.Run(http.StatusText(code), func(t *testing.T) {
			leakCheck(t)
			other := newElsewhere(t)
			st := openStore(t)
			redirecting := true
			var mu sync.Mutex
			api := newFakeAPI(t, func(r seenRequest, attempt int) response {
				mu.Lock()
				defer mu.Unlock()
				if redirecting {
					return response{status: code, header: map[string]string{"Location": other.srv.URL + "/api/v1/events?k=v"}}
				}
				return response{status: 201}
			})
			evs := commitEvents(t, st, 12, 6, slot0)
			var logs bytes.Buffer
			var logMu sync.Mutex
			cfg := testConfig(st, api.srv.URL)
			cfg.Tokens = &staticTokens{tokens: []string{"s3cret-token"}}
			cfg.Logger = slog.New(slog.NewTextHandler(&lockedWriter{w: &logs, mu: &logMu}, nil))
			startDelivery(t, cfg)

			testkit.Eventually(t, 5*time.Second, "each event posted 3 times", func() bool { return api.count() >= 18 })
			if n := outboxLen(t, st); n != 6 {
				t.Fatalf("outbox holds %d events while every POST is redirected, want 6: a redirect counted as delivered", n)
			}
			mu.Lock()
			redirecting = false
			mu.Unlock()
			testkit.Eventually(t, 5*time.Second, "an empty outbox", func() bool { return outboxLen(t, st) == 0 })
			for _, ev := range evs {
				if got := api.successCount(ev.IdempotencyKey); got != 1 {
					t.Errorf("key %s delivered %d times, want 1", ev.IdempotencyKey, got)
				}
			}
			if got := other.requests(); len(got) != 0 {
				t.Errorf("the redirect's target got %d requests (%q), want none", len(got), got)
			}
			logMu.Lock()
			out := logs.String()
			logMu.Unlock()
			if n := strings.Count(out, "redirected a POST"); n != 1 {
				t.Errorf("redirect logged %d times, want once:\n%s", n, out)
			}
			if !strings.Contains(out, other.srv.URL+"/api/v1/events") || strings.Contains(out, "k=v") {
				t.Errorf("log does not name the Location (without its query):\n%s", out)
			}
			if strings.Contains(out, "s3cret-token") {
				t.Errorf("the token is in the log:\n%s", out)
			}
		})
	}
}

type lockedWriter struct {
	w  *bytes.Buffer
	mu *sync.Mutex
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// A redirected rules listing is an error (the reconcile prunes nothing), not the empty
// listing the other host answers, and the token does not go there.
func TestRulesListingNeverFollowsRedirects(t *testing.T) {
	other := newElsewhere(t)
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, other.srv.URL+r.URL.Path, http.StatusFound)
	}))
	defer api.Close()
	c := &RulesClient{APIURL: api.URL, Tokens: &staticTokens{tokens: []string{"s3cret-token"}}}
	l, err := c.EnabledRules(context.Background(), "core.intervaltimer")
	if err == nil || !strings.Contains(err.Error(), "302 Found: redirect to "+other.srv.URL) {
		t.Errorf("EnabledRules = %d rules, %v; want an error naming the redirect", len(l.Rules), err)
	}
	if err != nil && strings.Contains(err.Error(), "s3cret-token") {
		t.Errorf("the token is in the error: %v", err)
	}
	if got := other.requests(); len(got) != 0 {
		t.Errorf("the redirect's target got %q, want nothing", got)
	}
}
