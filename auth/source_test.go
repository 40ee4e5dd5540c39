package auth

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// issueTTL signs a sensor token valid from now for ttl (fake time inside a bubble).
func issueTTL(t *testing.T, ttl time.Duration) string {
	t.Helper()
	tok, _, err := (&Issuer{Key: testKey}).Issue(IssueRequest{IdentityID: "7", Scope: ScopeSensor,
		TriggerTypes: []string{"core.intervaltimer"}, TTL: ttl})
	if err != nil {
		t.Fatalf("Issue: %v", err)
	}
	return tok
}

// fakeRefresher records the time of each call and answers with a reissued
// token, or fail's error while fail returns one.
type fakeRefresher struct {
	mu     sync.Mutex
	calls  []time.Time
	seen   []string // tokens presented
	fail   func(n int, current string) error
	gate   chan struct{} // if set, each call waits for it
	issued []string
}

func (f *fakeRefresher) refresh(ctx context.Context, current string) (string, error) {
	f.mu.Lock()
	f.calls = append(f.calls, time.Now())
	f.seen = append(f.seen, current)
	n, fail, gate := len(f.calls), f.fail, f.gate
	f.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return "", ctx.Err()
		}
	}
	if fail != nil {
		if err := fail(n, current); err != nil {
			return "", err
		}
	}
	c, err := ParseUnverified(current)
	if err != nil {
		return "", err
	}
	tok, _, err := (&Issuer{Key: testKey}).Reissue(c)
	f.mu.Lock()
	f.issued = append(f.issued, tok)
	f.mu.Unlock()
	return tok, err
}

func (f *fakeRefresher) snapshot() []time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]time.Time(nil), f.calls...)
}

// runSource starts s.Run in the bubble and returns a stop function that
// cancels it and waits for it to return nil.
func runSource(t *testing.T, s *Source) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	return func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run returned %v, want nil on cancel", err)
		}
	}
}

func TestSourceRefreshesAt80Percent(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		start := time.Now()
		reg := prometheus.NewRegistry()
		f := &fakeRefresher{}
		tok0 := issueTTL(t, 100*time.Hour)
		s, err := NewSource(SourceConfig{Token: tok0, Refresh: f.refresh, Registerer: reg})
		if err != nil {
			t.Fatalf("NewSource: %v", err)
		}
		if got := testutil.ToFloat64(s.expiry); got != float64(start.Add(100*time.Hour).Unix()) {
			t.Errorf("expiry gauge = %v, want %v", got, start.Add(100*time.Hour).Unix())
		}
		stop := runSource(t, s)
		defer stop()

		time.Sleep(80*time.Hour - time.Second)
		synctest.Wait()
		if n := len(f.snapshot()); n != 0 || s.Token() != tok0 {
			t.Fatalf("1s before 80%% of TTL: %d refreshes, token changed %v; want 0, false", n, s.Token() != tok0)
		}
		time.Sleep(time.Second)
		synctest.Wait()
		calls := f.snapshot()
		if len(calls) != 1 || !calls[0].Equal(start.Add(80*time.Hour)) {
			t.Fatalf("refresh calls = %v, want one at start+80h (%v)", calls, start.Add(80*time.Hour))
		}
		if s.Token() == tok0 || !s.Expiry().Equal(start.Add(180*time.Hour)) {
			t.Errorf("after refresh: token swapped %v, expiry %v; want true, start+180h", s.Token() != tok0, s.Expiry())
		}
		// The new token (iat start+80h, 100h) is due at start+160h.
		time.Sleep(80 * time.Hour)
		synctest.Wait()
		calls = f.snapshot()
		if len(calls) != 2 || !calls[1].Equal(start.Add(160*time.Hour)) {
			t.Errorf("refresh calls = %v, want the second at start+160h", calls)
		}
		if got := testutil.ToFloat64(s.refreshOK); got != 2 {
			t.Errorf("timerd_token_refreshes_total{result=ok} = %v, want 2", got)
		}
		if got := testutil.ToFloat64(s.expiry); got != float64(start.Add(260*time.Hour).Unix()) {
			t.Errorf("expiry gauge = %v, want %v", got, start.Add(260*time.Hour).Unix())
		}
	})
}

func TestSourceBacksOff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		start := time.Now()
		const failures = 10
		f := &fakeRefresher{fail: func(n int, _ string) error {
			if n <= failures {
				return errors.New("status 503")
			}
			return nil
		}}
		s, err := NewSource(SourceConfig{Token: issueTTL(t, 100*time.Hour), Refresh: f.refresh})
		if err != nil {
			t.Fatal(err)
		}
		stop := runSource(t, s)
		defer stop()
		time.Sleep(90 * time.Hour)
		synctest.Wait()
		calls := f.snapshot()
		if len(calls) != failures+1 || !calls[0].Equal(start.Add(80*time.Hour)) {
			t.Fatalf("refresh calls = %d (first %v), want %d starting at start+80h", len(calls), calls, failures+1)
		}
		// The gap after the n-th failure is jittered in [1m, min(1h, 1m·2^(n−1))]
		// (ingest/backoff.Delay): exactly 1m after the first.
		ceilings := []time.Duration{time.Minute, 2 * time.Minute, 4 * time.Minute, 8 * time.Minute, 16 * time.Minute,
			32 * time.Minute, time.Hour, time.Hour, time.Hour, time.Hour}
		gaps := map[time.Duration]bool{}
		for i, ceil := range ceilings {
			got := calls[i+1].Sub(calls[i])
			if got < time.Minute || got > ceil {
				t.Errorf("gap before attempt %d = %v, want within [1m, %v]", i+2, got, ceil)
			}
			gaps[got] = true
		}
		// Jitter: ten gaps, six of them drawn from the same hour-wide range, are
		// not all alike (the chance they are is nil).
		if len(gaps) < 3 {
			t.Errorf("gaps %v: %d distinct, want the jitter to spread them", calls, len(gaps))
		}
		if ok, ko := testutil.ToFloat64(s.refreshOK), testutil.ToFloat64(s.refreshKO); ok != 1 || ko != failures {
			t.Errorf("refreshes ok=%v error=%v, want 1 and %d", ok, ko, failures)
		}
		// Success resets the backoff: the next refresh is at 80 % of the new
		// token, from its iat (the jittered retry came at no whole second; a
		// JWT's iat is one).
		due := calls[len(calls)-1].Truncate(time.Second).Add(80 * time.Hour)
		time.Sleep(time.Until(due))
		synctest.Wait()
		if calls = f.snapshot(); len(calls) != failures+2 || !calls[failures+1].Equal(due) {
			t.Errorf("after recovery: calls %d, last %v; want %d, at %v", len(calls), calls[len(calls)-1], failures+2, due)
		}
	})
}

func TestSourceInvalidateOncePerToken(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		gate := make(chan struct{})
		f := &fakeRefresher{gate: gate, fail: func(n int, _ string) error {
			if n == 1 {
				return errors.New("status 502")
			}
			return nil
		}}
		tok0 := issueTTL(t, 100*time.Hour)
		s, err := NewSource(SourceConfig{Token: tok0, Refresh: f.refresh})
		if err != nil {
			t.Fatal(err)
		}
		stop := runSource(t, s)
		defer stop()

		const callers = 64
		var wg sync.WaitGroup
		for range callers {
			wg.Go(func() { s.Invalidate(tok0) })
		}
		wg.Wait()
		synctest.Wait() // the refresh is in flight, held by the gate
		if n := len(f.snapshot()); n != 1 {
			t.Fatalf("%d concurrent Invalidate(tok0): %d refreshes in flight, want 1", callers, n)
		}
		close(gate) // the first attempt fails
		synctest.Wait()
		s.Invalidate(tok0)
		synctest.Wait()
		if n := len(f.snapshot()); n != 1 || s.Token() != tok0 {
			t.Fatalf("after a failed refresh and more Invalidate(tok0): %d refreshes, want 1 (the retry waits for the backoff)", n)
		}
		time.Sleep(time.Minute)
		synctest.Wait()
		if n := len(f.snapshot()); n != 2 || s.Token() == tok0 {
			t.Fatalf("a minute later: %d refreshes, swapped %v; want 2, true", n, s.Token() != tok0)
		}
		s.Invalidate(tok0) // stale: already replaced
		s.Invalidate("")
		s.Invalidate("someone-else")
		synctest.Wait()
		if n := len(f.snapshot()); n != 2 {
			t.Errorf("Invalidate of a stale token: %d refreshes, want still 2", n)
		}
		s.Invalidate(s.Token()) // the new token is rejected too: one more
		s.Invalidate(s.Token())
		synctest.Wait()
		if n := len(f.snapshot()); n != 3 {
			t.Errorf("Invalidate(new token) twice: %d refreshes in all, want 3", n)
		}
	})
}

func TestSourceTokenFileRotation(t *testing.T) {
	dir := t.TempDir()
	// Kubernetes secret layout: token -> ..data/token, ..data -> ..v1.
	writeVersion := func(t *testing.T, version, content string) {
		vdir := filepath.Join(dir, version)
		if err := os.Mkdir(vdir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(vdir, "token"), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(version, filepath.Join(dir, "..data_tmp")); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
	}
	synctest.Test(t, func(t *testing.T) {
		var logs bytes.Buffer
		tok1 := issueTTL(t, 100*time.Hour)
		writeVersion(t, "..v1", tok1+"\n")
		if err := os.Symlink(filepath.Join("..data", "token"), filepath.Join(dir, "token")); err != nil {
			t.Fatal(err)
		}
		s, err := NewSource(SourceConfig{TokenFile: filepath.Join(dir, "token"),
			Logger: slog.New(slog.NewJSONHandler(&logs, nil))})
		if err != nil {
			t.Fatalf("NewSource(TokenFile): %v", err)
		}
		if s.Token() != tok1 {
			t.Fatal("initial token not read from the file (or not trimmed)")
		}
		stop := runSource(t, s)
		defer stop()

		time.Sleep(time.Second) // a new iat
		tok2 := issueTTL(t, 200*time.Hour)
		writeVersion(t, "..v2", tok2)
		time.Sleep(10 * time.Second)
		synctest.Wait()
		if s.Token() != tok2 {
			t.Fatalf("10s after the secret's symlink swap: token is %s, want the new one %s", Mask(s.Token()), Mask(tok2))
		}
		if !s.Expiry().Equal(time.Now().Add(200*time.Hour - 10*time.Second)) {
			t.Errorf("Expiry() = %v, want the new token's", s.Expiry())
		}
		writeVersion(t, "..v3", "garbage")
		time.Sleep(10 * time.Second)
		synctest.Wait()
		if s.Token() != tok2 {
			t.Errorf("a token file with garbage replaced the token; want the last good one kept")
		}
		if !strings.Contains(logs.String(), "no usable token") {
			t.Errorf("no warning logged for a bad token file; logs: %s", logs.String())
		}
	})
}

// TestSourceNeverLogsToken runs refreshes, failures (whose errors quote the
// token, as a careless server might), invalidations and a file reload with
// a JSON logger, and checks no token appears in the output.
func TestSourceNeverLogsToken(t *testing.T) {
	var logs bytes.Buffer
	var tokens []string
	synctest.Test(t, func(t *testing.T) {
		logger := slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
		f := &fakeRefresher{fail: func(n int, current string) error {
			if n == 2 || n == 3 {
				return fmt.Errorf("POST /auth/refresh: 401 {\"error\":\"bad token %s\"}", current)
			}
			return nil
		}}
		tok0 := issueTTL(t, time.Hour)
		tokens = append(tokens, tok0)
		s, err := NewSource(SourceConfig{Token: tok0, Refresh: f.refresh, Logger: logger})
		if err != nil {
			t.Fatal(err)
		}
		stop := runSource(t, s)
		time.Sleep(50 * time.Minute) // refresh ok at 48m
		synctest.Wait()
		s.Invalidate(s.Token()) // fails (2), then backoff retries fail (3) and succeed (4)
		time.Sleep(5 * time.Minute)
		synctest.Wait()
		stop()
		f.mu.Lock()
		tokens = append(tokens, f.seen...)
		tokens = append(tokens, f.issued...)
		n := len(f.calls)
		f.mu.Unlock()
		if n != 4 {
			t.Errorf("refresh calls = %d, want 4 (ok, fail, fail, ok)", n)
		}
	})
	// A file source whose file holds an expired token, then a broken one.
	synctest.Test(t, func(t *testing.T) {
		p := filepath.Join(t.TempDir(), "token")
		old := issueTTL(t, time.Hour)
		tokens = append(tokens, old)
		time.Sleep(2 * time.Hour)
		if err := os.WriteFile(p, []byte(old), 0o600); err != nil {
			t.Fatal(err)
		}
		s, err := NewSource(SourceConfig{TokenFile: p, Logger: slog.New(slog.NewJSONHandler(&logs, nil))})
		if err != nil {
			t.Fatal(err)
		}
		stop := runSource(t, s)
		broken := old[:len(old)-10] + "!!!!!!!!!!"
		tokens = append(tokens, broken)
		if err := os.WriteFile(p, []byte(broken), 0o600); err != nil {
			t.Fatal(err)
		}
		time.Sleep(11 * time.Second)
		synctest.Wait()
		stop()
	})
	out := logs.String()
	for _, want := range []string{"API token refreshed", "API token refresh failed", "API token has expired"} {
		if !strings.Contains(out, want) {
			t.Errorf("logs lack %q; the scenario did not run as designed:\n%s", want, out)
		}
	}
	if len(tokens) < 5 {
		t.Fatalf("only %d tokens collected", len(tokens))
	}
	for _, tok := range tokens {
		// The signature part alone is unique to the token and must not leak either.
		sig := tok[strings.LastIndex(tok, ".")+1:]
		if strings.Contains(out, tok) || strings.Contains(out, sig) {
			t.Errorf("logs contain token %s:\n%s", Mask(tok), out)
		}
	}
}

func TestNewSourceRejects(t *testing.T) {
	c := sensorClaims(t0, t0.Add(time.Hour))
	c.IssuedAt = nil
	noIat := sign(t, jwt.SigningMethodHS256, c, testKey)
	c = sensorClaims(t0, t0.Add(time.Hour))
	c.ExpiresAt = nil
	noExp := sign(t, jwt.SigningMethodHS256, c, testKey)
	backwards := sign(t, jwt.SigningMethodHS256, sensorClaims(t0, t0.Add(-time.Hour)), testKey)
	dir := t.TempDir()
	tests := []struct {
		name    string
		cfg     SourceConfig
		wantSub string
	}{
		{"nothing", SourceConfig{}, "Token"},
		{"both", SourceConfig{Token: "a", TokenFile: "b"}, "TokenFile"},
		{"not a jwt", SourceConfig{Token: "opaque-api-key-1234567890"}, "malformed"},
		{"no iat", SourceConfig{Token: noIat}, "iat"},
		{"no exp", SourceConfig{Token: noExp}, "exp"},
		{"exp before iat", SourceConfig{Token: backwards}, "not before"},
		{"missing file", SourceConfig{TokenFile: filepath.Join(dir, "none")}, "TokenFile"},
		{"RefreshAt 1", SourceConfig{Token: noExp, RefreshAt: 1}, "RefreshAt"},
		{"RetryMax < RetryMin", SourceConfig{Token: noExp, RetryMin: time.Hour, RetryMax: time.Minute}, "RetryMax"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewSource(tt.cfg)
			if err == nil || !strings.Contains(err.Error(), tt.wantSub) {
				t.Fatalf("NewSource(%s) error = %v, want one mentioning %q", tt.name, err, tt.wantSub)
			}
			if tt.cfg.Token != "" && strings.Contains(err.Error(), tt.cfg.Token) {
				t.Errorf("NewSource(%s) error contains the token", tt.name)
			}
		})
	}
	// Registering twice fails cleanly instead of panicking.
	reg := prometheus.NewRegistry()
	good := sign(t, jwt.SigningMethodHS256, sensorClaims(t0, t0.Add(time.Hour)), testKey)
	if _, err := NewSource(SourceConfig{Token: good, Registerer: reg}); err != nil {
		t.Fatal(err)
	}
	if _, err := NewSource(SourceConfig{Token: good, Registerer: reg}); err == nil ||
		!strings.Contains(err.Error(), "timerd_token_expiry_timestamp_seconds") {
		t.Errorf("second NewSource on the same registry = %v, want a registration error naming the metric", err)
	}
}

func TestHTTPRefresher(t *testing.T) {
	const current, fresh = "current.tok.en", "fresh.tok.en"
	var gotAuth, gotBody string
	handler := func(status int, body string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			gotAuth = r.Header.Get("Authorization")
			b := new(bytes.Buffer)
			_, _ = b.ReadFrom(r.Body)
			gotBody = b.String()
			w.WriteHeader(status)
			fmt.Fprint(w, body)
		}
	}
	tests := []struct {
		name    string
		routes  map[string]http.HandlerFunc
		want    string
		wantErr string
	}{
		{"refresh", map[string]http.HandlerFunc{"POST /auth/refresh": handler(200, `{"token":"fresh.tok.en","expires_at":"2026-06-01T00:00:00Z"}`)}, fresh, ""},
		{"attune alias", map[string]http.HandlerFunc{"POST /auth/internal/sensor-token": handler(200,
			`{"data":{"token":"fresh.tok.en","expires_at":"2026-06-01T00:00:00Z","identity_id":7,"sensor_ref":"core.timer","trigger_types":[]}}`)}, fresh, ""},
		{"401 echoing the token", map[string]http.HandlerFunc{"POST /auth/refresh": handler(401, `{"error":"revoked current.tok.en"}`)}, "", "status 401"},
		{"no token", map[string]http.HandlerFunc{"POST /auth/refresh": handler(200, `{}`)}, "", "no token"},
		{"not json", map[string]http.HandlerFunc{"POST /auth/refresh": handler(200, `<html>`)}, "", "not JSON"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mux := http.NewServeMux()
			for pat, h := range tt.routes {
				mux.Handle(pat, h)
			}
			srv := httptest.NewServer(mux)
			defer srv.Close()
			got, err := HTTPRefresher(srv.URL+"/", srv.Client())(context.Background(), current)
			if got != tt.want || (tt.wantErr == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("HTTPRefresher = %q, %v; want %q, error containing %q", got, err, tt.want, tt.wantErr)
			}
			if err != nil && strings.Contains(err.Error(), current) {
				t.Errorf("error %q contains the token", err)
			}
			if gotAuth != "Bearer "+current || gotBody != "{}" {
				t.Errorf("request Authorization %q body %q, want bearer current token and {}", gotAuth, gotBody)
			}
		})
	}
}

// Source must satisfy ingest.TokenSource (matched structurally: auth does not
// import ingest).
var _ interface {
	Token() string
	Invalidate(token string)
} = (*Source)(nil)

// A refreshed token outlives a restart: the state file keeps it, and a new
// Source prefers it to the configured token it was refreshed from, but not
// to a configured token issued after it (an operator's new one).
func TestSourceStateFileSurvivesRestart(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		state := filepath.Join(t.TempDir(), "api.token")
		f := &fakeRefresher{}
		configured := issueTTL(t, 100*time.Hour)
		s, err := NewSource(SourceConfig{Token: configured, Refresh: f.refresh, StateFile: state})
		if err != nil {
			t.Fatal(err)
		}
		stop := runSource(t, s)
		time.Sleep(81 * time.Hour)
		synctest.Wait()
		stop()
		refreshed := s.Token()
		if refreshed == configured {
			t.Fatal("no refresh at 80 % of the TTL")
		}
		if fi, err := os.Stat(state); err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("state file: %v, mode %v; want it, 0600", err, fi.Mode().Perm())
		}

		// Restarted after the configured token expired: the refreshed one is used.
		time.Sleep(20 * time.Hour)
		s2, err := NewSource(SourceConfig{Token: configured, Refresh: f.refresh, StateFile: state})
		if err != nil {
			t.Fatal(err)
		}
		if s2.Token() != refreshed {
			t.Errorf("after a restart: the configured (expired) token is used, want the refreshed one from %s", state)
		}

		// An operator's newer token wins over the kept one.
		newer := issueTTL(t, 100*time.Hour)
		s3, err := NewSource(SourceConfig{Token: newer, Refresh: f.refresh, StateFile: state})
		if err != nil {
			t.Fatal(err)
		}
		if s3.Token() != newer {
			t.Error("a configured token issued after the kept one was not used")
		}

		// A garbage state file is ignored, not fatal.
		if err := os.WriteFile(state, []byte("garbage"), 0o600); err != nil {
			t.Fatal(err)
		}
		s4, err := NewSource(SourceConfig{Token: newer, Refresh: f.refresh, StateFile: state})
		if err != nil || s4.Token() != newer {
			t.Errorf("garbage state file: err %v, token kept %v; want nil, the configured token", err, s4 != nil && s4.Token() == newer)
		}
	})
}
