package apiserver

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/goleak"

	"github.com/timerd/timerd/auth"
	"github.com/timerd/timerd/ingest/attune"
	"github.com/timerd/timerd/ingest/pubsub"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

type testEnv struct {
	t   *testing.T
	dir string
	srv *Server
	ts  *httptest.Server
	reg *prometheus.Registry
	bus *pubsub.Bus
	msg <-chan attune.Message
	opt []envOpt // kept for restart
}

type envOpt func(*Config)

func newEnv(t *testing.T, opts ...envOpt) *testEnv {
	t.Helper()
	e := &testEnv{t: t, dir: t.TempDir(), opt: opts}
	e.start(opts...)
	t.Cleanup(e.stop)
	return e
}

func (e *testEnv) start(opts ...envOpt) {
	e.t.Helper()
	e.reg = prometheus.NewRegistry()
	e.bus = pubsub.NewBus()
	var cancel func()
	e.msg, cancel = e.bus.Subscribe()
	_ = cancel // Bus.Close closes it
	cfg := Config{DataDir: e.dir, Publisher: e.bus, Registerer: e.reg}
	for _, o := range opts {
		o(&cfg)
	}
	srv, err := New(cfg)
	if err != nil {
		e.t.Fatalf("New(%+v) = %v", cfg, err)
	}
	e.srv = srv
	e.ts = httptest.NewServer(srv.Handler())
}

func (e *testEnv) stop() {
	if e.ts == nil {
		return
	}
	e.ts.Close()
	if err := e.srv.Close(); err != nil {
		e.t.Errorf("Close() = %v", err)
	}
	e.bus.Close()
	e.ts = nil
}

func (e *testEnv) restart() {
	e.t.Helper()
	e.stop()
	e.start(e.opt...)
}

// do sends a request and returns the status and the body.
func (e *testEnv) do(method, path, body string, hdr ...string) (int, []byte) {
	e.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, e.ts.URL+path, rd)
	if err != nil {
		e.t.Fatalf("NewRequest(%s %s) = %v", method, path, err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := e.ts.Client().Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatalf("%s %s: read body: %v", method, path, err)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" && method != http.MethodHead && !(path == "/metrics" && resp.StatusCode == http.StatusOK) {
		e.t.Errorf("%s %s: Content-Type = %q, want application/json", method, path, ct)
	}
	return resp.StatusCode, b
}

// must sends a request, checks the status and decodes the body into out.
func (e *testEnv) must(want int, out any, method, path, body string, hdr ...string) {
	e.t.Helper()
	code, b := e.do(method, path, body, hdr...)
	if code != want {
		e.t.Fatalf("%s %s %s: status %d, want %d; body %s", method, path, body, code, want, b)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			e.t.Fatalf("%s %s: decode %s: %v", method, path, b, err)
		}
	}
}

// counter reads a counter (or the sum of a counter vector's series matching
// labels) from the registry.
func (e *testEnv) counter(name string, labels ...string) float64 {
	e.t.Helper()
	mfs, err := e.reg.Gather()
	if err != nil {
		e.t.Fatalf("Gather() = %v", err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metric:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
						found = true
					}
				}
				if !found {
					continue metric
				}
			}
			sum += m.GetCounter().GetValue()
		}
	}
	return sum
}

type apiError struct {
	Error string `json:"error"`
}

func TestHealth(t *testing.T) {
	e := newEnv(t)
	var got map[string]string
	e.must(http.StatusOK, &got, "GET", "/health", "")
	if got["status"] != "ok" {
		t.Errorf("GET /health = %v, want status ok", got)
	}
}

func TestRoutingErrorsAreJSON(t *testing.T) {
	e := newEnv(t)
	tests := []struct {
		method, path string
		want         int
		allow        string
	}{
		{"GET", "/nope", http.StatusNotFound, ""},
		{"POST", "/health", http.StatusMethodNotAllowed, "GET, HEAD"},
		{"PATCH", "/api/v1/rules", http.StatusMethodNotAllowed, "GET, HEAD, POST"},
		{"GET", "/api/v1/rules/x/enable", http.StatusMethodNotAllowed, "POST"},
		{"GET", "/events", http.StatusMethodNotAllowed, "POST"},
		{"DELETE", "/api/v1/events", http.StatusMethodNotAllowed, "GET, HEAD, POST"},
	}
	for _, tc := range tests {
		req, _ := http.NewRequest(tc.method, e.ts.URL+tc.path, nil)
		resp, err := e.ts.Client().Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", tc.method, tc.path, err)
		}
		var body apiError
		err = json.NewDecoder(resp.Body).Decode(&body)
		resp.Body.Close()
		if resp.StatusCode != tc.want || err != nil || body.Error == "" {
			t.Errorf("%s %s = %d %+v (decode err %v), want %d with a JSON error", tc.method, tc.path, resp.StatusCode, body, err, tc.want)
		}
		if got := resp.Header.Get("Allow"); got != tc.allow {
			t.Errorf("%s %s: Allow = %q, want %q", tc.method, tc.path, got, tc.allow)
		}
	}
	if got := e.counter("timerd_api_requests_total", "route", "other", "code", "404"); got != 1 {
		t.Errorf("timerd_api_requests_total{route=other,code=404} = %v, want 1", got)
	}
}

func TestConfigValidate(t *testing.T) {
	if _, err := New(Config{}); err == nil || !strings.Contains(err.Error(), "DataDir") {
		t.Errorf("New(Config{}) = %v, want an error naming DataDir", err)
	}
	if _, err := New(Config{DataDir: t.TempDir(), PublishTimeout: -1}); err == nil || !strings.Contains(err.Error(), "PublishTimeout") {
		t.Errorf("New(PublishTimeout -1) = %v, want an error naming PublishTimeout", err)
	}
	// A data dir that is a file cannot hold the database.
	f := t.TempDir() + "/file"
	if err := os.WriteFile(f, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := New(Config{DataDir: f}); err == nil {
		t.Errorf("New(DataDir=%q, a file) = nil error, want failure", f)
	}
}

func TestBodyTooLarge(t *testing.T) {
	e := newEnv(t)
	e.must(http.StatusCreated, nil, "POST", "/api/v1/rules", `{"ref":"a","trigger_ref":"core.crontimer","trigger_params":{"expression":"@hourly"}}`)
	big := `{"ref":"b","trigger_ref":"core.crontimer","trigger_params":{"pad":"` + strings.Repeat("x", MaxBodyBytes) + `"}}`
	for _, tc := range []struct{ method, path string }{
		{"POST", "/api/v1/rules"},
		{"PUT", "/api/v1/rules/a"},
		{"POST", "/api/v1/events"},
		{"POST", "/events"},
		{"POST", "/api/v1/rules/a/disable"},
	} {
		var got apiError
		e.must(http.StatusRequestEntityTooLarge, &got, tc.method, tc.path, big)
		if got.Error == "" {
			t.Errorf("%s %s with %d bytes: no error message", tc.method, tc.path, len(big))
		}
	}
	var list struct {
		Items []rule `json:"items"`
	}
	e.must(http.StatusOK, &list, "GET", "/api/v1/rules", "")
	if len(list.Items) != 1 || !list.Items[0].Enabled {
		t.Errorf("after oversized writes: rules = %+v, want only a, still enabled", list.Items)
	}
	// Just under the limit is accepted.
	pre, post := `{"ref":"c","trigger_ref":"t","trigger_params":{"pad":"`, `"}}`
	ok := pre + strings.Repeat("x", MaxBodyBytes-len(pre)-len(post)) + post
	e.must(http.StatusCreated, nil, "POST", "/api/v1/rules", ok)
}

func TestServe(t *testing.T) {
	srv, err := New(Config{DataDir: t.TempDir()})
	if err != nil {
		t.Fatalf("New = %v", err)
	}
	defer srv.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	client := &http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get("http://" + ln.Addr().String() + "/health")
	if err != nil {
		t.Fatalf("GET /health: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("GET /health = %d, want 200", resp.StatusCode)
	}
	client.CloseIdleConnections()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Serve after cancel = %v, want nil", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("Serve did not return after cancel")
	}
	if resp, err := client.Get("http://" + ln.Addr().String() + "/health"); err == nil {
		resp.Body.Close()
		t.Error("GET after shutdown succeeded, want connection error")
	}
}

func TestCloseIdempotentAndRejectsEvents(t *testing.T) {
	srv, err := New(Config{DataDir: t.TempDir()})
	if err != nil {
		t.Fatalf("New = %v", err)
	}
	h := srv.Handler()
	if err := srv.Close(); err != nil {
		t.Fatalf("Close = %v", err)
	}
	if err := srv.Close(); err != nil {
		t.Fatalf("second Close = %v", err)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/api/v1/events", strings.NewReader(`{"trigger_ref":"x"}`)))
	if rec.Code != http.StatusServiceUnavailable {
		t.Errorf("POST event after Close = %d %s, want 503", rec.Code, rec.Body)
	}
}

// Nothing a client sends may crash the server or make it answer 500.
func TestHostileInputs(t *testing.T) {
	e := newEnv(t)
	e.must(http.StatusCreated, nil, "POST", "/api/v1/rules", `{"ref":"a","trigger_ref":"t"}`)
	bodies := []string{
		``, `null`, `[]`, `"s"`, `1`, `{`, `{}`, `{"ref":null}`, `{"ref":{}}`, `{"ref":"a b","trigger_ref":"t"}`,
		`{"ref":"x/y","trigger_ref":"t"}`, `{"ref":"` + strings.Repeat("r", 300) + `","trigger_ref":"t"}`,
		`{"trigger_ref":"t","trigger_params":[]}`, `{"trigger_ref":"t","enabled":"yes"}`, `{"trigger_ref":1}`,
		`{"trigger_ref":"t","payload":"p"}`, `{"trigger_ref":"t","trigger_instance_id":5}`, `{"trigger_ref":"t","trigger_id":-1}`,
		`{"trigger_ref":"t","trigger_id":1.5}`, `{"trigger_ref":"t","action_ref":false}`, `{"a":1}{"b":2}`, "\x00\xff",
		`{"trigger_ref":"t","trigger_instance_id":"` + strings.Repeat("i", 2000) + `"}`, `{"trigger_ref":"t","config":[1]}`,
		`{"ref":"a","trigger_ref":""}`, `{"ref":"","trigger_ref":"t"}`,
	}
	paths := []struct{ method, path string }{
		{"POST", "/api/v1/rules"}, {"PUT", "/api/v1/rules/a"}, {"POST", "/api/v1/events"}, {"POST", "/events"},
		{"POST", "/api/v1/rules/a/enable"}, {"GET", "/api/v1/rules?page=%ff"}, {"GET", "/api/v1/events?page_size=1e3"},
		{"DELETE", "/api/v1/rules/%2F..%2F"}, {"GET", "/api/v1/rules/" + strings.Repeat("%ff", 100)},
	}
	for _, p := range paths {
		for _, b := range bodies {
			code, resp := e.do(p.method, p.path, b, "Idempotency-Key", "k")
			if code >= 500 {
				t.Errorf("%s %s %q = %d %s, want < 500", p.method, p.path, b, code, resp)
			}
		}
	}
	if code, b := e.do("POST", "/api/v1/events", `{"trigger_ref":"t"}`, "Idempotency-Key", strings.Repeat("k", 600)); code != http.StatusBadRequest {
		t.Errorf("POST event with a 600-byte Idempotency-Key = %d %s, want 400", code, b)
	}
}

// GET /metrics wants a token that may read, as every endpoint but /health
// does (the docs say so): a scraper uses a readonly service account's token.
func TestMetricsEndpointNeedsAReadToken(t *testing.T) {
	e := newEnv(t, func(c *Config) {
		c.SigningKey = testKey
		c.Metrics = promhttp.HandlerFor(c.Registerer.(*prometheus.Registry), promhttp.HandlerOpts{})
	})
	if code, _ := e.do(http.MethodGet, "/api/v1/rules", ""); code != http.StatusUnauthorized {
		t.Errorf("GET /api/v1/rules without a token = %d, want 401", code)
	}
	if code, _ := e.do(http.MethodGet, "/metrics", ""); code != http.StatusUnauthorized {
		t.Errorf("GET /metrics without a token = %d, want 401", code)
	}
	e.call(scopeToken(t, auth.ScopeSensor, "core.timer"), http.StatusForbidden, nil, http.MethodGet, "/metrics", "")
	code, body := e.do(http.MethodGet, "/metrics", "", bearer(scopeToken(t, auth.ScopeReadonly))...)
	if code != http.StatusOK || !strings.Contains(string(body), `timerd_api_requests_total{code="401"`) {
		t.Errorf("GET /metrics = %.200s, want the 401s counted", body)
	}
}

// A second server on the same data dir says the file is locked, naming it,
// instead of a bare "timeout".
func TestSecondServerOnTheDataDirSaysLocked(t *testing.T) {
	e := newEnv(t)
	_, err := New(Config{DataDir: e.dir})
	if err == nil || !strings.Contains(err.Error(), "api.db") || !strings.Contains(err.Error(), "locked by another process") {
		t.Errorf("New on a data dir in use = %v, want an error naming api.db and saying it is locked", err)
	}
}
