package node

import (
	"encoding/json"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/timerd/timerd/auth"
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

	// The cluster as this node sees it (absent on a single node): its ring
	// view's version and the members with the rules each owns in it.
	RingVersion uint64         `json:"ring_version"`
	Members     []MemberStatus `json:"members,omitempty"`
}

func (n *Node) handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(n.cfg.Registry, promhttp.HandlerOpts{Registry: n.cfg.Registry}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !n.isReady() {
			msg := "not ready: joining the cluster, loading the store and reconciling rules"
			if n.cl != nil && n.cl.View().Version > 0 && !n.cl.View().Quorum {
				msg = "not ready: waiting for a quorum of the cluster's members (see /v1/status)"
			}
			http.Error(w, msg, http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ready\n"))
	})
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(n.Status())
	})
	return mux
}

// Status reports the node's view of itself.
func (n *Node) Status() Status {
	s := Status{
		Node:        n.cfg.NodeName,
		Version:     Version(),
		Ready:       n.isReady(),
		RulesOwned:  n.engine.Len(),
		APIURL:      n.cfg.APIURL,
		SensorRef:   n.cfg.SensorRef,
		StorePath:   n.store.Path(),
		GeneratedAt: time.Now().UTC(),
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
	if n.cl != nil {
		s.Members, s.RingVersion = n.memberStatuses()
	}
	return s
}

// isReady: the node has joined (or decided it is alone), put its share of
// the rules in the engine, reconciled and, with RabbitMQ, is consuming.
func (n *Node) isReady() bool { return n.ready.Load() && n.placed.Load() }

type metrics struct {
	lifecycle  *prometheus.CounterVec
	reconciles *prometheus.CounterVec
	adopted    prometheus.Counter
	released   prometheus.Counter
	dupSlots   prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, n *Node) *metrics {
	m := &metrics{
		lifecycle: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "timerd_lifecycle_messages_total",
			Help: "Rule lifecycle messages by type and result: applied, unchanged, stale (an older change than the one held: not applied), ignored, invalid, error.",
		}, []string{"type", "result"}),
		reconciles: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "timerd_reconciles_total",
			Help: "Reconciles of the rule catalogue with the rules API, by result.",
		}, []string{"result"}),
		adopted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "timerd_rules_adopted_total",
			Help: "Rules this node started firing after a ring change (gained from a peer).",
		}),
		released: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "timerd_rules_released_total",
			Help: "Rules this node stopped firing after a ring change (lost to a peer).",
		}),
		dupSlots: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "timerd_handoff_duplicate_slots_total",
			Help: "Slots not fired because a peer had already announced them (a hand-off).",
		}),
	}
	reg.MustRegister(m.lifecycle, m.reconciles, m.adopted, m.released, m.dupSlots,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "timerd_rules_known",
			Help: "Enabled timer rules in this node's store.",
		}, func() float64 { c, _ := n.store.RuleCount(); return float64(c) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "timerd_ready",
			Help: "1 when the node has joined, loaded its share of the rules and reconciled, else 0.",
		}, func() float64 {
			if n.isReady() {
				return 1
			}
			return 0
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        "timerd_build_info",
			Help:        "Build information; the value is always 1.",
			ConstLabels: prometheus.Labels{"version": Version()},
		}, func() float64 { return 1 }),
	)
	return m
}
