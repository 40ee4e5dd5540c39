package ingest

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// WaitAPIHealthy retries a failing API with the jittered backoff: waits of
// at least firstWait each, and gives up after attempts tries.
func TestWaitAPIHealthyRetries(t *testing.T) {
	tests := []struct {
		name     string
		failures int // answered 503 before 200
		attempts int
		wantErr  string
		wantGets int
	}{
		{"healthy at once", 0, 3, "", 1},
		{"healthy on the third try", 2, 5, "", 3},
		{"never healthy", 100, 3, "status 503 (3 attempts)", 3},
	}
	const firstWait = 20 * time.Millisecond
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var gets atomic.Int32
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path != "/health" {
					t.Errorf("GET %s, want /health", r.URL.Path)
				}
				if int(gets.Add(1)) <= tc.failures {
					w.WriteHeader(http.StatusServiceUnavailable)
				}
			}))
			defer srv.Close()
			start := time.Now()
			err := WaitAPIHealthy(t.Context(), srv.URL, tc.attempts, firstWait, slog.New(slog.DiscardHandler))
			elapsed := time.Since(start)
			if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("WaitAPIHealthy(%d attempts) = %v, want error %q", tc.attempts, err, tc.wantErr)
			}
			if n := int(gets.Load()); n != tc.wantGets {
				t.Errorf("WaitAPIHealthy: %d GETs, want %d", n, tc.wantGets)
			}
			if floor := time.Duration(tc.wantGets-1) * firstWait; elapsed < floor {
				t.Errorf("WaitAPIHealthy returned after %v with %d GETs, want >= %v (firstWait between tries)", elapsed, tc.wantGets, floor)
			}
		})
	}
	ctx, cancel := context.WithCancel(t.Context())
	time.AfterFunc(50*time.Millisecond, cancel)
	if err := WaitAPIHealthy(ctx, "http://127.0.0.1:1", 5, time.Hour, slog.New(slog.DiscardHandler)); !errors.Is(err, context.Canceled) {
		t.Errorf("WaitAPIHealthy cancelled during its wait = %v, want context.Canceled", err)
	}
}

// The health check follows no redirect (the host it names sees nothing), a
// password in the API URL shows in no error, and fewer than one attempt is
// one.
func TestWaitAPIHealthyEdges(t *testing.T) {
	var elsewhere atomic.Int32
	other := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { elsewhere.Add(1) }))
	defer other.Close()
	var gets atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gets.Add(1)
		http.Redirect(w, r, other.URL+"/health?token=x", http.StatusFound)
	}))
	defer srv.Close()
	withPassword := strings.Replace(srv.URL, "http://", "http://user:hunter2@", 1)
	err := WaitAPIHealthy(t.Context(), withPassword, 0, time.Millisecond, slog.New(slog.DiscardHandler))
	want := "GET " + strings.Replace(srv.URL, "http://", "http://user:xxxxx@", 1) + "/health: 302 Found: redirect to " +
		other.URL + "/health not followed (1 attempts)"
	if err == nil || err.Error() != want {
		t.Errorf("WaitAPIHealthy(redirect) = %v, want %q", err, want)
	}
	if err != nil && strings.Contains(err.Error(), "hunter2") {
		t.Errorf("WaitAPIHealthy error %q shows the password", err)
	}
	if g, e := gets.Load(), elsewhere.Load(); g != 1 || e != 0 {
		t.Errorf("WaitAPIHealthy(0 attempts, redirect): %d GETs, %d at the redirect's host; want 1 and 0", g, e)
	}
}
