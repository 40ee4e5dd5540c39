package apiserver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/timerd/timerd/auth"
	"github.com/timerd/timerd/ingest/attune"
	"github.com/timerd/timerd/scheduler/metricset"
)

// MaxBodyBytes bounds every request body; larger bodies get 413.
const MaxBodyBytes = 1 << 20

// ErrClosed is returned by operations on a closed Server.
var ErrClosed = errors.New("api server closed")

// Config configures a Server.
type Config struct {
	// DataDir holds the server's bbolt file, DataDir/api.db. Required.
	DataDir string
	// Publisher, if set, receives a lifecycle message (envelope shape) after
	// each committed rule write. Publishing is best-effort, as in Attune:
	// a failure is logged and counted, the write stands.
	Publisher attune.Publisher
	// SigningKey is the HS256 key tokens are signed and verified with (at
	// least auth.MinKeyLen bytes). With it every endpoint but /health needs
	// a bearer token of the right scope (contract §5) and the service-account
	// and refresh endpoints work. nil: no authentication at all (tests).
	SigningKey []byte
	// RevocationCleanupInterval is how often revocation records whose
	// tokens have expired are deleted. Default 1 h.
	RevocationCleanupInterval time.Duration
	Logger                    *slog.Logger          // nil: discard
	Registerer                prometheus.Registerer // nil: metrics are not registered
	// Metrics, if set, is served at GET /metrics without authentication,
	// as Prometheus scrapes it (timerd api serves its registry there).
	Metrics http.Handler
	Now     func() time.Time // nil: time.Now
	// PublishTimeout bounds one Publish call. Default 5 s.
	PublishTimeout time.Duration
	// EventRetention: events created longer ago are deleted, with their
	// index entries (retention.go). 0 keeps events for ever.
	EventRetention time.Duration
	// EventSweepInterval is how often the events past EventRetention are
	// deleted. Default 1 min.
	EventSweepInterval time.Duration
	// LoadRulesFile, if set, names a file of rules New adds to the store before
	// serving, one POST body a line, all or none (bulkload.go): a test and
	// operations path, publishing no lifecycle message.
	LoadRulesFile string

	// Tests: events a retention transaction deletes at most (default 1,000)
	// and the pause between two (default 20 ms).
	eventDeleteBatch int
	eventDeletePause time.Duration
}

// Validate reports the first bad field of c.
func (c *Config) Validate() error {
	if c.DataDir == "" {
		return errors.New("apiserver: DataDir: required")
	}
	if c.PublishTimeout < 0 {
		return fmt.Errorf("apiserver: PublishTimeout: %v is negative", c.PublishTimeout)
	}
	if c.SigningKey != nil && len(c.SigningKey) < auth.MinKeyLen {
		return fmt.Errorf("apiserver: SigningKey: %w: %d bytes, need at least %d", auth.ErrShortKey, len(c.SigningKey), auth.MinKeyLen)
	}
	if c.RevocationCleanupInterval < 0 {
		return fmt.Errorf("apiserver: RevocationCleanupInterval: %v is negative", c.RevocationCleanupInterval)
	}
	if c.EventRetention < 0 {
		return fmt.Errorf("apiserver: EventRetention: %v is negative", c.EventRetention)
	}
	if c.EventSweepInterval < 0 {
		return fmt.Errorf("apiserver: EventSweepInterval: %v is negative", c.EventSweepInterval)
	}
	return nil
}

func (c *Config) setDefaults() {
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.PublishTimeout == 0 {
		c.PublishTimeout = 5 * time.Second
	}
	if c.RevocationCleanupInterval == 0 {
		c.RevocationCleanupInterval = time.Hour
	}
	if c.EventSweepInterval == 0 {
		c.EventSweepInterval = defaultEventSweepInterval
	}
	if c.eventDeleteBatch <= 0 {
		c.eventDeleteBatch = defaultEventDeleteBatch
	}
	if c.eventDeletePause <= 0 {
		c.eventDeletePause = defaultEventDeletePause
	}
}

// Server is the Attune-compatible API: rules, events, service accounts,
// token refresh and health.
type Server struct {
	cfg     Config
	log     *slog.Logger
	db      *bolt.DB
	metrics metrics
	handler http.Handler

	cat     *catalogue  // rules, in memory; bbolt is the durable copy
	evIndex *eventIndex // events by instance and rule_ref, in memory

	// ruleWriteMu serialises rule writes from transaction to publish, so that
	// lifecycle messages leave in commit order.
	ruleWriteMu sync.Mutex

	// Token authentication; all nil when Config.SigningKey is nil.
	issuer   *auth.Issuer
	verifier *auth.Verifier
	revs     *revocations // in memory; bbolt is the durable copy
	tokMu    sync.Mutex
	tokCache map[string]auth.Claims // tokens verified once, by their text (see verify)
	// acctMu serialises service-account writes with refreshes, so that no
	// token is issued to an identity while it is being revoked.
	acctMu sync.Mutex

	evq       chan *eventReq // unbuffered: a send succeeds only while the committer runs
	evPending atomic.Int64   // event requests under way, not yet taken by the committer
	ruleq     chan *ruleReq  // rule creates for the committer; unbuffered, as evq
	rqPending atomic.Int64   // rule creates under way, not yet taken by the committer
	quit      chan struct{}
	committer sync.WaitGroup // the committer, the revocation cleanup and the event retention
	closeOnce sync.Once
	closeErr  error
}

type metrics struct {
	requests      *prometheus.CounterVec
	eventsStored  prometheus.Counter
	eventsDup     prometheus.Counter
	publishErrors prometheus.Counter
	eventBatch    prometheus.Histogram
	eventCommit   prometheus.Histogram
	eventsDeleted prometheus.Counter
}

// newMetrics makes the server's metrics; New registers them, with the
// revocations gauge, once the server is built.
func newMetrics() metrics {
	return metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "timerd_api_requests_total",
			Help: "API requests answered, by route pattern and status code.",
		}, []string{"route", "code"}),
		eventsStored: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "timerd_api_events_stored_total",
			Help: "Events stored by the API server.",
		}),
		eventsDup: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "timerd_api_events_duplicate_total",
			Help: "Events dropped because their Idempotency-Key was already stored.",
		}),
		publishErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "timerd_api_publish_errors_total",
			Help: "Lifecycle messages that could not be published after a rule write.",
		}),
		eventBatch: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "timerd_api_event_commit_batch_size",
			Help:    "Events per bbolt transaction of the event committer.",
			Buckets: prometheus.ExponentialBuckets(1, 4, 7),
		}),
		eventCommit: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "timerd_api_event_commit_seconds",
			Help:    "Duration of one bbolt transaction of the event committer, fsync included.",
			Buckets: prometheus.ExponentialBuckets(0.0002, 2, 10),
		}),
		eventsDeleted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "timerd_api_events_deleted_total",
			Help: "Events deleted because they were older than the event retention (timerd api --event-retention).",
		}),
	}
}

// registerMetrics registers the server's metrics on reg: m's, and the revocations
// gauge when the server authenticates.
func (s *Server) registerMetrics(reg prometheus.Registerer) error {
	m := s.metrics
	cs := []prometheus.Collector{m.requests, m.eventsStored, m.eventsDup, m.publishErrors, m.eventBatch, m.eventCommit, m.eventsDeleted}
	if revs := s.revs; revs != nil {
		cs = append(cs, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "timerd_api_revocations",
			Help: "Revocation records held: revoked tokens and identities whose tokens have not all expired.",
		}, func() float64 { return float64(revs.len()) }))
	}
	_, err := metricset.Register(reg, cs...)
	return err
}

var (
	bucketRules     = []byte("rules")         // id → rule JSON
	bucketRuleRefs  = []byte("rule_refs")     // ref → id
	bucketEvents    = []byte("events")        // id → event JSON; only the oldest are deleted (retention.go), so ids are first..Sequence()
	bucketEventIdem = []byte("event_idem_v2") // scopedIdemKey(Idempotency-Key, trigger_ref, instance) → id
	// bucketEventIdemV1 held keys unscoped (any token could take another
	// trigger's key); it is rebuilt as bucketEventIdem at open, then dropped.
	bucketEventIdemV1 = []byte("event_idem")
	bucketAccounts    = []byte("service_accounts") // idKey(identity id) → account JSON
	bucketRevoked     = []byte("revocations")      // revocationKey → auth.Revocation JSON
)

// New opens (or creates) DataDir/api.db, loads the rules and starts the
// event committer. Close releases both.
func New(cfg Config) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	if err := auth.PrivateDir(cfg.DataDir, cfg.Logger); err != nil {
		return nil, fmt.Errorf("apiserver: create data dir %q: %w", cfg.DataDir, err)
	}
	path := filepath.Join(cfg.DataDir, "api.db")
	db, err := bolt.Open(path, 0o600, &bolt.Options{
		Timeout: 5 * time.Second, // bbolt waits forever for the file lock by default
		// The freelist is rebuilt at open instead of written at every commit:
		// cheaper commits for the event path, as etcd does.
		NoFreelistSync: true,
		FreelistType:   bolt.FreelistMapType,
	})
	if errors.Is(err, berrors.ErrTimeout) {
		return nil, fmt.Errorf("apiserver: open store %q: it is locked by another process (another timerd api on this data dir?); waited 5s", path)
	}
	if err != nil {
		return nil, fmt.Errorf("apiserver: open store %q: %w", path, err)
	}
	s := &Server{
		cfg:     cfg,
		log:     cfg.Logger.With("component", "apiserver"),
		db:      db,
		metrics: newMetrics(),
		evq:     make(chan *eventReq),
		ruleq:   make(chan *ruleReq),
		quit:    make(chan struct{}),
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketRules, bucketRuleRefs, bucketEvents, bucketEventIdem, bucketAccounts, bucketRevoked} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return fmt.Errorf("create bucket %s: %w", b, err)
			}
		}
		return nil
	}); err != nil {
		db.Close()
		return nil, fmt.Errorf("apiserver: init store %q: %w", path, err)
	}
	if err := migrateIdemIndex(db); err != nil {
		db.Close()
		return nil, fmt.Errorf("apiserver: rebuild the idempotency index of %q: %w", path, err)
	}
	if s.cat, err = loadCatalogue(db); err != nil {
		db.Close()
		return nil, fmt.Errorf("apiserver: load rules from %q: %w", path, err)
	}
	if s.evIndex, err = loadEventIndex(db); err != nil {
		db.Close()
		return nil, fmt.Errorf("apiserver: index events of %q: %w", path, err)
	}
	if cfg.LoadRulesFile != "" {
		begin := time.Now()
		n, err := s.LoadRulesFile(cfg.LoadRulesFile)
		if err != nil {
			db.Close()
			return nil, fmt.Errorf("apiserver: %w", err)
		}
		s.log.Info("rules loaded in bulk", "rules", n, "file", cfg.LoadRulesFile, "took", time.Since(begin).Round(time.Millisecond).String())
	}
	if cfg.SigningKey != nil {
		if err := s.initAuth(); err != nil {
			db.Close()
			return nil, fmt.Errorf("apiserver: load revocations of %q: %w", path, err)
		}
	}
	if err := s.registerMetrics(cfg.Registerer); err != nil {
		db.Close()
		return nil, fmt.Errorf("apiserver: %w", err)
	}
	s.handler = s.routes()
	s.committer.Add(1)
	go s.runCommitter()
	if s.verifier != nil {
		s.committer.Add(1)
		go s.runRevocationCleanup()
	}
	if cfg.EventRetention > 0 {
		s.committer.Add(1)
		go s.runEventRetention()
	}
	return s, nil
}

// Handler returns the HTTP handler of the API.
func (s *Server) Handler() http.Handler { return s.handler }

// Close stops the committer (pending inserts and creates fail with 503) and closes
// the database. It is idempotent. Stop serving before closing.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		close(s.quit)
		s.committer.Wait()
		if err := s.db.Close(); err != nil {
			s.closeErr = fmt.Errorf("apiserver: close store: %w", err)
		}
	})
	return s.closeErr
}

// Serve serves the API on ln until ctx is done, then shuts down gracefully
// (in-flight requests get up to 10 s). It does not Close the Server.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("apiserver: serve %s: %w", ln.Addr(), err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := srv.Shutdown(sctx)
	if err != nil {
		err = errors.Join(fmt.Errorf("apiserver: shutdown: %w", err), srv.Close())
	}
	if serr := <-errc; serr != nil && !errors.Is(serr, http.ErrServerClosed) {
		err = errors.Join(err, serr)
	}
	return err
}

func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	type route struct {
		pattern string
		h       http.HandlerFunc
		allow   func(auth.Claims) error // the scopes that may call it (contract §5)
	}
	readEvents := func(c auth.Claims) error { return c.Require(auth.ScopeUser, auth.ScopeReadonly) }
	// Which trigger a sensor may post is checked once the body is parsed.
	createEvents := func(c auth.Claims) error { return c.Require(auth.ScopeWebhook, auth.ScopeSensor) }
	api := []route{
		{"GET /api/v1/rules", s.listRules, auth.Claims.CanReadRules},
		{"POST /api/v1/rules", s.createRule, auth.Claims.CanWriteRules},
		{"GET /api/v1/rules/{ref}", s.getRule, auth.Claims.CanReadRules},
		{"PUT /api/v1/rules/{ref}", s.updateRule, auth.Claims.CanWriteRules},
		{"DELETE /api/v1/rules/{ref}", s.deleteRule, auth.Claims.CanWriteRules},
		{"POST /api/v1/rules/{ref}/enable", s.enableRule, auth.Claims.CanWriteRules},
		{"POST /api/v1/rules/{ref}/disable", s.disableRule, auth.Claims.CanWriteRules},
		{"GET /api/v1/events", s.listEvents, readEvents},
		{"POST /api/v1/events", s.createEvent, createEvents},
		{"POST /events", s.createEvent, createEvents},
		{"POST /auth/refresh", s.refreshToken, auth.Claims.CanRefresh},
		{"POST /auth/internal/sensor-token", s.refreshSensorToken, auth.Claims.CanRefresh},
		{"POST /auth/revoke", s.revokeToken, func(auth.Claims) error { return nil }}, // itself, or admin: revokeToken
	}
	for _, prefix := range []string{"", "/api/v1"} {
		api = append(api,
			route{"POST " + prefix + "/service-accounts", s.createServiceAccount, auth.Claims.CanManageServiceAccounts},
			route{"GET " + prefix + "/service-accounts", s.listServiceAccounts, auth.Claims.CanManageServiceAccounts},
			route{"DELETE " + prefix + "/service-accounts/{identity_id}", s.deleteServiceAccount, auth.Claims.CanManageServiceAccounts},
		)
	}
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	allowed := map[string][]string{"/health": {"GET", "HEAD"}}
	if s.cfg.Metrics != nil {
		// Like every endpoint but /health: a token that may read (scrape with a
		// readonly service account's token).
		mux.Handle("GET /metrics", s.guard(func(c auth.Claims) error { return c.Require(auth.ScopeUser, auth.ScopeReadonly) }, s.cfg.Metrics.ServeHTTP))
		allowed["/metrics"] = []string{"GET", "HEAD"}
	}
	var paths []string
	for _, rt := range api {
		mux.Handle(rt.pattern, s.guard(rt.allow, rt.h))
		method, path, _ := strings.Cut(rt.pattern, " ")
		if _, ok := allowed[path]; !ok {
			paths = append(paths, path)
		}
		allowed[path] = append(allowed[path], method)
		if method == "GET" {
			allowed[path] = append(allowed[path], "HEAD")
		}
	}
	// Known paths with another method: 405 in JSON, with Allow.
	for _, path := range append(paths, "/health") {
		allow := allowed[path]
		mux.HandleFunc(path, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Allow", strings.Join(allow, ", "))
			writeError(w, http.StatusMethodNotAllowed, "method %s not allowed", r.Method)
		})
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "no route for %s %s", r.Method, r.URL.Path)
	})
	return s.instrument(mux)
}

// instrument counts requests by route pattern and code, and turns a panic
// in a handler into a 500 rather than a dropped connection.
func (s *Server) instrument(mux *http.ServeMux) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sw := &statusWriter{ResponseWriter: w}
		defer func() {
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler { //nolint:errorlint // sentinel compared as net/http does
					panic(v)
				}
				s.log.Error("handler panic", "method", r.Method, "path", r.URL.Path, "panic", fmt.Sprint(v))
				if sw.code == 0 {
					writeError(sw, http.StatusInternalServerError, "internal error")
				}
			}
			route := r.Pattern // set in place by ServeMux
			if route == "" || route == "/" {
				route = "other"
			}
			code := sw.code
			if code == 0 {
				code = http.StatusOK
			}
			s.metrics.requests.WithLabelValues(route, strconv.Itoa(code)).Inc()
		}()
		mux.ServeHTTP(sw, r)
	})
}

type statusWriter struct {
	http.ResponseWriter
	code int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func writeJSON(w http.ResponseWriter, code int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		code, b = http.StatusInternalServerError, []byte(`{"error":"encode response"}`)
	}
	writeRaw(w, code, b)
}

func writeRaw(w http.ResponseWriter, code int, b []byte) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(b)+1))
	w.WriteHeader(code)
	_, _ = w.Write(append(b, '\n'))
}

func writeError(w http.ResponseWriter, code int, format string, args ...any) {
	writeJSON(w, code, map[string]string{"error": fmt.Sprintf(format, args...)})
}

// httpError is an error with the status it answers.
type httpError struct {
	code int
	msg  string
}

func (e *httpError) Error() string { return e.msg }

func errorf(code int, format string, args ...any) *httpError {
	return &httpError{code: code, msg: fmt.Sprintf(format, args...)}
}

// fail answers err: its own status for an *httpError, 500 (logged) otherwise.
func (s *Server) fail(w http.ResponseWriter, r *http.Request, err error) {
	var he *httpError
	if errors.As(err, &he) {
		writeError(w, he.code, "%s", he.msg)
		return
	}
	if errors.Is(err, ErrClosed) {
		writeError(w, http.StatusServiceUnavailable, "server is shutting down")
		return
	}
	s.log.Error("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	writeError(w, http.StatusInternalServerError, "internal error")
}

// readBody reads at most MaxBodyBytes of r's body.
func readBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBodyBytes))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, errorf(http.StatusRequestEntityTooLarge, "request body exceeds %d bytes", MaxBodyBytes)
		}
		return nil, errorf(http.StatusBadRequest, "read request body: %v", err)
	}
	return b, nil
}
