package node

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/timerd/timerd/auth"
	"github.com/timerd/timerd/ingest/apiserver"
	"github.com/timerd/timerd/ingest/pubsub"
	"github.com/timerd/timerd/scheduler"
	"github.com/timerd/timerd/test/testkit"
)

var testKey = []byte("0123456789abcdef0123456789abcdef")

// lockedBuffer collects log output that goroutines write concurrently.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// authAPI is an API server with a signing key, behind a handler that
// records what the node sends: every token seen or handed out, refreshes,
// and each event POST made with a token already past its exp. It can answer
// 401 itself to the event POSTs reject picks.
type authAPI struct {
	t     *testing.T
	srv   *apiserver.Server
	url   string
	bus   *pubsub.Bus
	admin string

	mu           sync.Mutex
	tokens       map[string]bool
	refreshes    int
	eventPosts   int
	expiredPosts []string
	reject       func(token string) bool
	injected401  int
}

func startAuthAPI(t *testing.T, logger *slog.Logger) *authAPI {
	t.Helper()
	a := &authAPI{t: t, bus: pubsub.NewBus(), tokens: map[string]bool{}}
	srv, err := apiserver.New(apiserver.Config{DataDir: t.TempDir(), SigningKey: testKey, Publisher: a.bus,
		Logger: logger.With("component", "api")})
	if err != nil {
		t.Fatal(err)
	}
	a.srv = srv
	ts := httptest.NewServer(a)
	a.url = ts.URL
	t.Cleanup(func() {
		ts.Close()
		srv.Close()
		a.bus.Close()
	})
	a.admin = a.issue(auth.IssueRequest{Subject: "test-admin", Scope: auth.ScopeAdmin, TTL: time.Hour})
	return a
}

func (a *authAPI) issue(req auth.IssueRequest) string {
	a.t.Helper()
	tok, _, err := (&auth.Issuer{Key: testKey}).Issue(req)
	if err != nil {
		a.t.Fatal(err)
	}
	a.mu.Lock()
	a.tokens[tok] = true
	a.mu.Unlock()
	return tok
}

// sensorToken is what an operator hands a node: a sensor token for the
// timer triggers.
func (a *authAPI) sensorToken(ttl time.Duration) string {
	return a.issue(auth.IssueRequest{IdentityID: "node-test", Scope: auth.ScopeSensor, TriggerTypes: scheduler.TimerTriggers(),
		TTL: ttl, Login: "core.timer", TokenType: "sensor"})
}

func (a *authAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	tok, _ := auth.BearerToken(r)
	a.mu.Lock()
	if tok != "" {
		a.tokens[tok] = true
	}
	a.mu.Unlock()
	switch {
	case r.Method == http.MethodPost && r.URL.Path == "/api/v1/events":
		now := time.Now()
		c, err := auth.ParseUnverified(tok)
		a.mu.Lock()
		a.eventPosts++
		if err != nil || !now.Before(c.ExpiresAtTime()) {
			a.expiredPosts = append(a.expiredPosts, fmt.Sprintf("at %s with exp %s (%v)",
				now.Format(time.StampMilli), c.ExpiresAtTime().Format(time.StampMilli), err))
		}
		reject := a.reject != nil && a.reject(tok)
		if reject {
			a.injected401++
		}
		a.mu.Unlock()
		if reject {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = io.WriteString(w, `{"error":"token rejected by the test"}`)
			return
		}
	case strings.HasPrefix(r.URL.Path, "/auth/"):
		rec := httptest.NewRecorder()
		a.srv.Handler().ServeHTTP(rec, r)
		var body struct{ Token string }
		if json.Unmarshal(rec.Body.Bytes(), &body) == nil && body.Token != "" {
			a.mu.Lock()
			a.tokens[body.Token] = true
			a.refreshes++
			a.mu.Unlock()
		}
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.WriteHeader(rec.Code)
		w.Write(rec.Body.Bytes())
		return
	}
	a.srv.Handler().ServeHTTP(w, r)
}

func (a *authAPI) stats() (refreshes, posts, injected int, expired []string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.refreshes, a.eventPosts, a.injected401, append([]string(nil), a.expiredPosts...)
}

// call sends a request with the admin token and decodes the answer.
func (a *authAPI) call(method, path, body string, want int, out any) {
	a.t.Helper()
	req, _ := http.NewRequest(method, a.url+path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+a.admin)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		a.t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != want {
		a.t.Fatalf("%s %s = %d %s, want %d", method, path, resp.StatusCode, raw, want)
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			a.t.Fatalf("%s %s: decode %s: %v", method, path, raw, err)
		}
	}
}

func (a *authAPI) createIntervalRule(ref string) {
	a.t.Helper()
	a.call("POST", "/api/v1/rules", fmt.Sprintf(`{"ref":%q,"trigger_ref":"core.intervaltimer","trigger_params":{"interval":1}}`, ref),
		http.StatusCreated, nil)
}

// counts returns the execution_count of every event of ruleRef.
func (a *authAPI) counts(ruleRef string) []int {
	a.t.Helper()
	var out struct {
		Items []event `json:"items"`
	}
	a.call("GET", "/api/v1/events?page_size=1000&rule_ref="+ruleRef, "", http.StatusOK, &out)
	var cs []int
	for _, e := range out.Items {
		c, _ := e.Payload["execution_count"].(float64)
		cs = append(cs, int(c))
	}
	return cs
}

func (a *authAPI) startNode(mod func(*Config)) *runningNode {
	a.t.Helper()
	lifecycle, unsubscribe := a.bus.Subscribe()
	cfg := Config{DataDir: a.t.TempDir(), APIURL: a.url, HTTPAddr: "127.0.0.1:0", NodeName: "test",
		ReconcileInterval: -1, Lifecycle: lifecycle}
	mod(&cfg)
	n, err := New(cfg)
	if err != nil {
		unsubscribe()
		a.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	rn := &runningNode{Node: n, cancel: cancel, done: make(chan error, 1)}
	go func() {
		rn.done <- n.Run(ctx)
		unsubscribe()
	}()
	a.t.Cleanup(func() { rn.stop(a.t) })
	testkit.Eventually(a.t, 10*time.Second, "node ready", func() bool { return get(a.t, "http://"+n.HTTPAddr()+"/readyz") == 200 })
	return rn
}

// checkNoTokenInLogs fails if any token seen or handed out appears in logs.
func (a *authAPI) checkNoTokenInLogs(logs string, mustContain ...string) {
	a.t.Helper()
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.tokens) < 2 {
		a.t.Errorf("only %d tokens recorded; the log check would prove nothing", len(a.tokens))
	}
	for tok := range a.tokens {
		if strings.Contains(logs, tok) {
			a.t.Errorf("log output contains token %s", auth.Mask(tok))
		}
		// Nor its signature alone.
		if sig := tok[strings.LastIndexByte(tok, '.')+1:]; strings.Contains(logs, sig) {
			a.t.Errorf("log output contains the signature of token %s", auth.Mask(tok))
		}
	}
	for _, s := range mustContain {
		if !strings.Contains(logs, s) {
			a.t.Errorf("log output lacks %q; captured:\n%s", s, logs)
		}
	}
}

// A node delivers events for ~15 s with a 3 s token refreshed at 80 % of
// its lifetime: several refreshes, no event lost, none dead-lettered, none
// posted with an expired token, and no token in the logs.
func TestNodeRefreshesTokenWhileDelivering(t *testing.T) {
	logs := &lockedBuffer{}
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	a := startAuthAPI(t, logger)
	n := a.startNode(func(c *Config) {
		c.Token = a.sensorToken(3 * time.Second)
		c.TokenRetryMin, c.TokenRetryMax = 200*time.Millisecond, time.Second
		c.Logger = logger
	})
	const rules = 8
	for i := range rules {
		a.createIntervalRule(fmt.Sprintf("r%d", i))
	}
	start := time.Now()
	testkit.Eventually(t, 40*time.Second, "7 token refreshes", func() bool { r, _, _, _ := a.stats(); return r >= 7 })
	t.Logf("7 refreshes took %v", time.Since(start).Round(time.Millisecond))

	resp, err := http.Get("http://" + n.HTTPAddr() + "/v1/status")
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var st Status
	if err := json.Unmarshal(raw, &st); err != nil || st.TokenExpiresAt == nil || !st.TokenExpiresAt.After(time.Now()) || st.TokenMasked == "" {
		t.Errorf("/v1/status = %s (%v), want token_expires_at in the future and a masked token", raw, err)
	}
	if got := testCounter(t, n, "timerd_token_refreshes_total", `result="ok"`); got < 6 {
		t.Errorf("timerd_token_refreshes_total{result=ok} = %v, want >= 6", got)
	}
	if dl := n.Status().DeadLetters; dl != 0 {
		t.Errorf("dead letters = %d, want 0", dl)
	}
	n.stop(t) // flushes the outbox

	refreshes, posts, _, expired := a.stats()
	if len(expired) > 0 {
		t.Errorf("%d of %d event POSTs carried an expired token: %v", len(expired), posts, expired)
	}
	a.mu.Lock()
	for tok := range a.tokens {
		if strings.Contains(string(raw), tok) {
			t.Errorf("/v1/status shows token %s", auth.Mask(tok))
		}
	}
	a.mu.Unlock()
	for i := range rules {
		ref := fmt.Sprintf("r%d", i)
		cs := a.counts(ref)
		if len(cs) < 10 {
			t.Errorf("rule %s: %d events, want >= 10", ref, len(cs))
		}
		for j, c := range cs { // ordered by id; the outbox delivers a rule's fires in order
			if c != j+1 {
				t.Errorf("rule %s: execution counts %v, want 1..%d without a gap", ref, cs, len(cs))
				break
			}
		}
	}
	t.Logf("%d refreshes, %d event POSTs", refreshes, posts)
	a.checkNoTokenInLogs(logs.String(), "API token refreshed", "token refreshed")
}

// A 401 from the events API makes the node refresh its token exactly once,
// however many POSTs were refused, and nothing is dead-lettered.
func TestNode401RefreshesOnce(t *testing.T) {
	logs := &lockedBuffer{}
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	a := startAuthAPI(t, logger)
	first := a.sensorToken(time.Hour) // no refresh is due for 48 minutes
	a.mu.Lock()
	a.reject = func(tok string) bool { return tok == first }
	a.mu.Unlock()
	n := a.startNode(func(c *Config) {
		c.Token = first
		c.Logger = logger
	})
	const rules = 6 // fire together: several POSTs are refused at once
	for i := range rules {
		a.createIntervalRule(fmt.Sprintf("r%d", i))
	}
	testkit.Eventually(t, 15*time.Second, "3 events of every rule", func() bool {
		for i := range rules {
			if len(a.counts(fmt.Sprintf("r%d", i))) < 3 {
				return false
			}
		}
		return true
	})
	refreshes, _, injected, _ := a.stats()
	if refreshes != 1 || injected < 1 {
		t.Errorf("after %d injected 401s: %d refreshes, want exactly 1", injected, refreshes)
	}
	if n.tokens.Token() == first {
		t.Error("the node still uses the refused token")
	}
	if dl := n.Status().DeadLetters; dl != 0 {
		t.Errorf("dead letters = %d, want 0", dl)
	}
	for i := range rules {
		if cs := a.counts(fmt.Sprintf("r%d", i)); cs[0] != 1 {
			t.Errorf("rule r%d: first execution_count %d, want 1 (the refused POST retried)", i, cs[0])
		}
	}
	a.checkNoTokenInLogs(logs.String(), "events API refused the token", "API token refreshed")
}

func TestNodeTokenConfig(t *testing.T) {
	a := startAuthAPI(t, slog.New(slog.DiscardHandler))
	good := a.sensorToken(time.Hour)
	tests := []struct {
		name    string
		mod     func(*Config)
		wantErr string
	}{
		{"token and Tokens", func(c *Config) { c.Token = good; c.Tokens = staticSource(good) }, "not both"},
		{"token and file", func(c *Config) { c.Token = good; c.TokenFile = "/nonexistent" }, "TokenFile"},
		{"not a jwt", func(c *Config) { c.Token = "secret-but-not-a-jwt" }, "ATTUNE_API_TOKEN: "},
		{"missing file", func(c *Config) { c.TokenFile = t.TempDir() + "/none" }, "ATTUNE_API_TOKEN_FILE: "},
		{"refresh fraction", func(c *Config) { c.Token = good; c.TokenRefreshAt = 1.5 }, "RefreshAt"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := Config{DataDir: t.TempDir(), APIURL: a.url}
			tc.mod(&cfg)
			_, err := New(cfg)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("New(%s) = %v, want an error containing %q", tc.name, err, tc.wantErr)
			}
			if strings.Contains(err.Error(), good) || strings.Contains(err.Error(), "secret-but-not-a-jwt") {
				t.Errorf("New(%s) error shows the token: %v", tc.name, err)
			}
		})
	}
}

type staticSource string

func (s staticSource) Token() string     { return string(s) }
func (s staticSource) Invalidate(string) {}
