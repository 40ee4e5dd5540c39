package ingest

import (
	"fmt"
	"strconv"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/timerd/timerd/scheduler/metricset"
)

type deliveryMetrics struct {
	deliveries  *prometheus.CounterVec // by HTTP status, or "error"
	seconds     prometheus.Histogram
	deadLetters *prometheus.CounterVec // by reason (deadLetterReasons) and HTTP status
	ackFailures prometheus.Counter
	rulesPaused prometheus.Gauge   // rules whose breaker is open
	rulePauses  prometheus.Counter // breaker openings
	// Adaptive concurrency (limiter).
	limit    prometheus.Gauge
	ceiling  prometheus.Gauge
	inFlight *prometheus.GaugeVec // by class: on_time, catch_up
	// The children of inFlight, set on every dispatch: a label lookup each
	// time would cost more than the rest of the dispatch.
	onTimeInFlight, catchUpInFlight prometheus.Gauge
	limitDecreases                  *prometheus.CounterVec // by reason: latency, overload, retry_after
	// Catch-up pacing (pacer).
	catchUpPosts       prometheus.Counter
	catchUpRateLimited prometheus.Counter
	catchUpRate        prometheus.Gauge

	byCode sync.Map // int HTTP status → its child of deliveries, resolved once
}

// delivery is the deliveries counter of an HTTP status: a map lookup per event
// rather than WithLabelValues' formatting and hashing of the label.
func (m *deliveryMetrics) delivery(code int) prometheus.Counter {
	if c, ok := m.byCode.Load(code); ok {
		return c.(prometheus.Counter)
	}
	c, _ := m.byCode.LoadOrStore(code, m.deliveries.WithLabelValues(strconv.Itoa(code)))
	return c.(prometheus.Counter)
}

// deadLetter is the dead letters counter of an event the API answered code
// for good.
func (m *deliveryMetrics) deadLetter(code int) prometheus.Counter {
	reason := deadLetterRejected
	if isRejectRetried(code) {
		reason = deadLetterWindowExpired
	}
	return m.deadLetters.WithLabelValues(reason, strconv.Itoa(code))
}

// The reasons of timerd_dead_letters_total, a fixed set: why the event
// became a dead letter, the HTTP status being the code label.
const (
	// deadLetterRejected: a permanent 4xx (400, 410, 413, 422, …) that judges
	// the event itself.
	deadLetterRejected = "rejected"
	// deadLetterWindowExpired: a 403 or 404 still answered after
	// RejectRetryWindow of retries.
	deadLetterWindowExpired = "retry_window_expired"
)

// The classes of events in flight.
const (
	classOnTime  = "on_time"
	classCatchUp = "catch_up"
)

// newDeliveryMetrics makes the delivery's metrics, unregistered.
func newDeliveryMetrics() *deliveryMetrics {
	m := &deliveryMetrics{
		deliveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "timerd_deliveries_total",
			Help: "Event POST attempts to the events API, by HTTP status code (\"error\" when no response).",
		}, []string{"code"}),
		seconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "timerd_delivery_seconds",
			Help:    "Duration of one event POST attempt.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}),
		deadLetters: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "timerd_dead_letters_total",
			Help: "Events moved to dead letters after a permanent rejection, by reason (rejected: a 4xx that judges the event; retry_window_expired: a 403 or 404 past the retry window) and HTTP status code.",
		}, []string{"reason", "code"}),
		ackFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "timerd_outbox_ack_failures_total",
			Help: "Failed commits of delivered events' removal from the outbox (a full disk); they are retried, never posted again.",
		}),
		rulesPaused: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "timerd_delivery_rules_paused",
			Help: "Rules whose delivery is paused after repeated dead letters: their events stay in the outbox and one is probed with backoff.",
		}),
		rulePauses: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "timerd_delivery_rule_pauses_total",
			Help: "Times a rule's delivery was paused after repeated dead letters.",
		}),
		limit: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "timerd_delivery_concurrency_limit",
			Help: "Event POSTs this node may have in flight now: the adaptive limit, at most the ceiling.",
		}),
		ceiling: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "timerd_delivery_concurrency_ceiling",
			Help: "This node's share of the cluster's delivery budget (TIMERD_DELIVERY_BUDGET over the live members, at most TIMERD_WORKERS when set).",
		}),
		inFlight: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "timerd_delivery_in_flight",
			Help: "Event POSTs in flight, by class: on_time, or catch_up (slot older than the catch-up age, posted only with the slots on-time events leave).",
		}, []string{"class"}),
		limitDecreases: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "timerd_delivery_concurrency_decreases_total",
			Help: "Decreases of the delivery concurrency limit, by reason: latency (round trips rose), overload (429, 5xx, 408, transport error: halved), retry_after (halved and paused).",
		}, []string{"reason"}),
		catchUpPosts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "timerd_delivery_catchup_posts_total",
			Help: "Event POSTs of catch-up events (slot older than the catch-up age when ready): its rate is the backlog's drain rate, at most timerd_delivery_catchup_rate when set.",
		}),
		catchUpRateLimited: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "timerd_delivery_catchup_rate_limited_total",
			Help: "Catch-up events that had a free slot but waited for the catch-up rate (TIMERD_CATCHUP_RATE), each counted once.",
		}),
		catchUpRate: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "timerd_delivery_catchup_rate",
			Help: "The most catch-up events per second this node posts: its on-time rate of the last minute (TIMERD_CATCHUP_RATE auto, at least 50), or its part of TIMERD_CATCHUP_RATE over the live members; 0: no rate (off), catch-up is bounded by TIMERD_CATCHUP_SHARE alone.",
		}),
	}
	m.onTimeInFlight = m.inFlight.WithLabelValues(classOnTime)
	m.catchUpInFlight = m.inFlight.WithLabelValues(classCatchUp)
	return m
}

// register registers m on reg (nil: nowhere).
func (m *deliveryMetrics) register(reg prometheus.Registerer) error {
	if _, err := metricset.Register(reg, m.deliveries, m.seconds, m.deadLetters, m.ackFailures, m.rulesPaused,
		m.rulePauses, m.limit, m.ceiling, m.inFlight, m.limitDecreases, m.catchUpPosts, m.catchUpRateLimited,
		m.catchUpRate); err != nil {
		return fmt.Errorf("delivery: %w", err)
	}
	return nil
}
