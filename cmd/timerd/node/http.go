package node

import (
	"crypto/subtle"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/pprof"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	versioncollector "github.com/prometheus/client_golang/prometheus/collectors/version"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/timerd/timerd/auth"
	"github.com/timerd/timerd/cluster/protocol"
	"github.com/timerd/timerd/ingest"
	"github.com/timerd/timerd/scheduler/metricset"
)

// Status is the JSON of /v1/status.
type Status struct {
	Node        string     `json:"node"`
	Version     string     `json:"version"`
	Ready       bool       `json:"ready"`
	RulesKnown  int        `json:"rules_known"`
	RulesOwned  int        `json:"rules_owned"`
	OutboxDepth int        `json:"outbox_depth"`
	DeadLetters int        `json:"dead_letters"`
	NextFire    *time.Time `json:"next_fire,omitempty"`
	APIURL      string     `json:"api_url"`
	SensorRef   string     `json:"sensor_ref"`
	StorePath   string     `json:"store_path"`
	GeneratedAt time.Time  `json:"generated_at"`

	// The API token's expiry and a masked form of it; never the token.
	TokenExpiresAt *time.Time `json:"token_expires_at,omitempty"`
	TokenMasked    string     `json:"token_masked,omitempty"`

	// Whether this node's view holds a quorum (it fires nothing without):
	// QuorumSize of ExpectedMembers, SeenMembers in its view (itself
	// included; 0 before it joined). A single node is its own quorum.
	Quorum          bool `json:"quorum"`
	ExpectedMembers int  `json:"expected_members"`
	SeenMembers     int  `json:"seen_members"`
	QuorumSize      int  `json:"quorum_size"`

	// The fire-once protocol (absent on a single node): this node's
	// incarnation and the ring partitions it holds (docs/protocol.md).
	Incarnation    string `json:"incarnation,omitempty"`
	PartitionsHeld int    `json:"partitions_held"`
	// The cluster as this node sees it (absent on a single node): the
	// members with the rules each owns in this node's view.
	Members []MemberStatus `json:"members,omitempty"`
}

// MinHTTPTokenLen is the shortest bearer token TIMERD_HTTP_TOKEN_FILE may hold.
const MinHTTPTokenLen = 16

// ReadHTTPToken reads the bearer token of the node's operator endpoints from
// path: the file's content without surrounding white space. The error never
// quotes the content.
func ReadHTTPToken(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	tok := strings.TrimSpace(string(b))
	switch {
	case len(tok) < MinHTTPTokenLen:
		return "", fmt.Errorf("%s: the token is shorter than %d bytes", path, MinHTTPTokenLen)
	case strings.ContainsFunc(tok, func(r rune) bool { return r <= ' ' || r == 0x7f }):
		return "", fmt.Errorf("%s: the token holds white space or control characters", path)
	}
	return tok, nil
}

// operator guards the operator endpoints (/v1/…) with the bearer token of
// Config.HTTPTokenFile, read at each request so that it can be rotated by
// rewriting the file; without the setting they are open. /metrics, /healthz
// and /readyz never are guarded: probes and scrapes need no secret.
func (n *Node) operator(h http.HandlerFunc) http.HandlerFunc {
	if n.cfg.HTTPTokenFile == "" {
		return h
	}
	return func(w http.ResponseWriter, r *http.Request) {
		want, err := ReadHTTPToken(n.cfg.HTTPTokenFile)
		if err != nil {
			n.log.Error("operator endpoint refused: TIMERD_HTTP_TOKEN_FILE cannot be read", "err", err)
			http.Error(w, "the node cannot read its TIMERD_HTTP_TOKEN_FILE", http.StatusServiceUnavailable)
			return
		}
		got, err := auth.BearerToken(r)
		if err != nil || subtle.ConstantTimeCompare([]byte(got), []byte(want)) != 1 {
			n.metrics.unauthorized.Inc()
			w.Header().Set("WWW-Authenticate", `Bearer realm="timerd node"`)
			http.Error(w, "this endpoint needs the bearer token of TIMERD_HTTP_TOKEN_FILE", http.StatusUnauthorized)
			return
		}
		h(w, r)
	}
}

func (n *Node) handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(n.cfg.Registry, promhttp.HandlerOpts{Registry: n.cfg.Registry}))
	// Liveness: 503 when the scheduler engine's loop is stuck (a commit or a lock
	// that does not return), which a restart cures. Not a full disk or a lost
	// quorum: a restart makes no room and finds no peer, and /readyz says what is
	// wrong (docs/operations.md).
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		if behind, stuck := n.engineBehind(); stuck {
			http.Error(w, fmt.Sprintf("unhealthy: the scheduler engine's loop has been stuck for %s (limit %s): a commit or lock that does not return",
				behind.Round(time.Millisecond), n.stallLimit), http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !n.isReady() {
			http.Error(w, "not ready: "+n.notReadyReason(), http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ready\n"))
	})
	mux.HandleFunc("GET /v1/status", n.operator(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(n.Status())
	}))
	if n.cfg.Pprof {
		mux.HandleFunc("GET /debug/pprof/", n.operator(pprof.Index))
		mux.HandleFunc("GET /debug/pprof/profile", n.operator(pprof.Profile))
		mux.HandleFunc("GET /debug/pprof/trace", n.operator(pprof.Trace))
	}
	mux.HandleFunc("GET /v1/dead-letters", n.operator(n.handleDeadLetters))
	mux.HandleFunc("POST /v1/dead-letters/redrive", n.operator(n.handleRedrive))
	mux.HandleFunc("GET /v1/backup", n.operator(n.backupHandler()))
	mux.HandleFunc("GET /v1/rules/{id}", n.operator(n.handleDescribe))
	mux.HandleFunc("POST /v1/rules/{id}/backfill", n.operator(n.handleBackfill))
	mux.HandleFunc("POST /v1/rules/{id}/fire", n.operator(n.handleFire))
	return mux
}

// Status reports the node's view of itself.
func (n *Node) Status() Status {
	s := Status{
		Node:        n.cfg.NodeName,
		Version:     Version(),
		Ready:       n.isReady(),
		RulesOwned:  n.engine.Len(),
		APIURL:      ingest.RedactURL(n.cfg.APIURL),
		SensorRef:   n.cfg.SensorRef,
		StorePath:   n.store.Path(),
		GeneratedAt: n.cfg.Now().UTC(),
	}
	s.RulesKnown, _ = n.store.RuleCount()
	s.OutboxDepth, _ = n.store.OutboxLen()
	s.DeadLetters, _ = n.store.DeadLetterCount()
	if n.tokens != nil {
		exp := n.tokens.Expiry().UTC()
		s.TokenExpiresAt = &exp
		s.TokenMasked = auth.Mask(n.tokens.Token())
	}
	if t, ok := n.engine.NextFire(); ok {
		t = t.UTC()
		s.NextFire = &t
	}
	n.quorumStatus(&s)
	if n.drv != nil {
		s.Members = n.memberStatuses()
	}
	return s
}

// isReady: the node has reconciled and, with RabbitMQ, is consuming, and its
// store takes commits; in a cluster it also holds a lease and every partition its
// view gives it.
func (n *Node) isReady() bool {
	if !n.ready.Load() {
		return false
	}
	if _, _, failing := n.health.failing(); failing {
		return false
	}
	if n.cl == nil {
		return true
	}
	d := n.drv
	if d == nil {
		return false
	}
	snap := d.snap.Load()
	return snap.status.Settled && snap.leased(bootNow())
}

// notReadyReason says why the node is not ready (when isReady is false).
func (n *Node) notReadyReason() string {
	if _, err, failing := n.health.failing(); failing {
		return "the store cannot commit: " + err.Error()
	}
	if n.cl != nil && n.cl.View().Version > 0 && !n.cl.View().Quorum {
		return "waiting for a quorum of the cluster's members (see /v1/status)"
	}
	if !n.ready.Load() {
		return *n.phase.Load() // starting, joining, loading, reconciling, stopping
	}
	return "acquiring a lease and the partitions of the cluster's view (see /v1/status)"
}

type metrics struct {
	lifecycle  *prometheus.CounterVec
	reconciles *prometheus.CounterVec
	// unauthorized counts requests to the operator endpoints without the token.
	unauthorized prometheus.Counter
	refused      *prometheus.CounterVec
	adopted      prometheus.Counter
	released     prometheus.Counter
	// The fire-once protocol (member.go).
	fenced         *prometheus.CounterVec
	reincarnations prometheus.Counter
	notFireable    prometheus.Counter
	// Dead letters deleted past DeadLetterRetention.
	deadLettersExpired prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, n *Node) (*metrics, error) {
	m := &metrics{
		lifecycle: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "timerd_lifecycle_messages_total",
			Help: "Rule lifecycle messages by type and result: applied, unchanged, stale (an older change than the one held: not applied), ignored, invalid, error.",
		}, []string{"type", "result"}),
		reconciles: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "timerd_reconciles_total",
			Help: "Reconciles of the rule catalogue with the rules API, by result.",
		}, []string{"result"}),
		unauthorized: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "timerd_http_unauthorized_total",
			Help: "Requests to the node's operator endpoints (/v1/...) refused for want of the TIMERD_HTTP_TOKEN_FILE token.",
		}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "timerd_reconcile_refused_total",
			Help: "Removals a reconcile refused, by reason: per listing for malformed (a page without items: nothing applied), no_totals, totals_changed and count_mismatch (not proved complete: nothing removed); per rule kept for changed_since_listing, still_enabled (the re-check found it), recheck_failed and recheck_deferred (past 1,000 re-checks, or after a failed one: the next reconcile asks).",
		}, []string{"reason"}),
		adopted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "timerd_rules_adopted_total",
			Help: "Rules this node started firing after a ring change (gained from a peer).",
		}),
		released: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "timerd_rules_released_total",
			Help: "Rules this node stopped firing after a ring change (lost to a peer).",
		}),
		fenced: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "timerd_fires_fenced_total",
			Help: "Events of an earlier incarnation not delivered, by the holder's verdict: fired_by_another (fired again after this node lapsed), dropped_unknown (no record says who fired the slot).",
		}, []string{"outcome"}),
		reincarnations: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "timerd_incarnations_fenced_total",
			Help: "Times this node learned its incarnation was fenced (a pause or partition outlived its lease) and started a new one.",
		}),
		notFireable: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "timerd_commits_not_fireable_total",
			Help: "Commits of fires refused before the store because the lease had lapsed or the partition was released; the engine tries again.",
		}),
		deadLettersExpired: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "timerd_dead_letters_expired_total",
			Help: "Dead letters deleted because they were older than the retention (TIMERD_DEAD_LETTER_RETENTION).",
		}),
	}
	for _, r := range refusedReasons {
		m.refused.WithLabelValues(r)
	}
	for _, v := range []protocol.Verdict{protocol.FiredByAnother, protocol.Unknown} {
		m.fenced.WithLabelValues(v.String())
	}
	snap := func() *memberSnap {
		if n.drv == nil {
			return nil
		}
		return n.drv.snap.Load()
	}
	_, err := metricset.Register(reg, m.lifecycle, m.reconciles, m.refused, m.unauthorized, m.adopted, m.released, m.fenced, m.reincarnations, m.notFireable, m.deadLettersExpired,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "timerd_lease",
			Help: "1 while this node holds a lease (a quorum answered its heartbeats within the lease), else 0; a single node always does.",
		}, func() float64 {
			if s := snap(); s == nil && n.cl == nil || s != nil && s.leased(bootNow()) {
				return 1
			}
			return 0
		}),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "timerd_cluster_future_watermarks_refused_total",
			Help: "Fire records and watermarks from peers refused because their slot is later than now plus the skew allowance (a broken clock or a forged packet); never applied.",
		}, func() float64 {
			if s := snap(); s != nil {
				return float64(s.stats.FutureRecords)
			}
			return 0
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "timerd_partitions_held",
			Help: "Ring partitions this node holds (fires the rules of).",
		}, func() float64 {
			if s := snap(); s != nil {
				return float64(len(s.held))
			}
			return 0
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "timerd_cluster_clock_skew_seconds",
			Help: "The largest difference between this node's wall clock and a peer's, measured on heartbeats (half the round trip is the error).",
		}, func() float64 {
			var worst time.Duration
			if s := snap(); s != nil {
				for _, d := range s.status.Skew {
					worst = max(worst, d, -d)
				}
			}
			return worst.Seconds()
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "timerd_outbox_pending_events",
			Help: "Events committed and not yet deliverable: awaiting replication to a quorum, or a holder's verdict.",
		}, func() float64 { c, _ := n.store.PendingLen(); return float64(c) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "timerd_outbox_oldest_age_seconds",
			Help: "Age of the oldest deliverable event not yet delivered (since it was committed); 0 when the outbox is empty.",
		}, func() float64 {
			at, ok, err := n.store.OutboxOldest()
			if err != nil || !ok {
				return 0
			}
			return max(0, time.Since(at).Seconds())
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "timerd_rules_known",
			Help: "Enabled timer rules in this node's store.",
		}, func() float64 { c, _ := n.store.RuleCount(); return float64(c) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "timerd_rules_invalid",
			Help: "Stored rules whose timer does not parse, so not firing: a change made them invalid (the old schedule stopped, the watermark kept), or the node loaded them so. A valid change starts them again.",
		}, func() float64 { return float64(n.invalid.count()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "timerd_engine_heartbeat_age_seconds",
			Help: "How long the scheduler engine's loop has been at its current piece of work (taking due slots, one commit); 0 while it waits. Past 20 s it counts as stuck: /healthz answers 503 and systemd's watchdog is no longer fed.",
		}, func() float64 { behind, _ := n.engineBehind(); return behind.Seconds() }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "timerd_ready",
			Help: "1 when the node has joined, loaded its share of the rules and reconciled, else 0.",
		}, func() float64 {
			if n.isReady() {
				return 1
			}
			return 0
		}),
		versioncollector.NewCollector("timerd"), // timerd_build_info{version,revision,goversion,...}
	)
	if err != nil {
		return nil, err
	}
	return m, nil
}
