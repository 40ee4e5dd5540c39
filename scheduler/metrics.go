package scheduler

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/timerd/timerd/scheduler/metricset"
)

// metrics are always created so the hot path has no nil checks; they are
// registered only when a Registerer is given.
type metrics struct {
	fires        *prometheus.CounterVec
	firesByKind  [len(kinds)]prometheus.Counter // by kindIndex: no label lookup per fire
	lateness     prometheus.Histogram
	misfires     *prometheus.CounterVec
	misfiresBy   [len(policies)][2]prometheus.Counter // by policy, then fired/skipped
	rules        prometheus.GaugeFunc
	commit       prometheus.Histogram
	commitErrors prometheus.Counter
	batch        prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer, rules func() float64) (*metrics, error) {
	m := &metrics{
		fires: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "timerd_fires_total",
			Help: "Fires committed by the scheduler, by timer kind.",
		}, []string{"kind"}),
		lateness: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "timerd_fire_lateness_seconds",
			Help:    "How late a committed fire was: fired_at minus its slot.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 12), // 1ms .. ~70min
		}),
		misfires: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "timerd_misfires_total",
			Help: "Missed slots handled by the misfire policy: action=fired counts catch-up fires committed, " +
				"action=skipped counts decisions that dropped one or more missed slots (one per rule per catch-up).",
		}, []string{"policy", "action"}),
		rules: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "timerd_scheduler_rules",
			Help: "Rules known to the scheduler engine, including one-shot timers that have fired.",
		}, rules),
		commit: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "timerd_scheduler_commit_seconds",
			Help:    "Time spent in one commit of a batch of fires.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16), // 0.5ms .. 16s
		}),
		commitErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "timerd_scheduler_commit_errors_total",
			Help: "Commits of a batch of fires that failed and were retried.",
		}),
		batch: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "timerd_scheduler_batch_fires",
			Help:    "Fires per committed batch.",
			Buckets: prometheus.ExponentialBuckets(1, 4, 8), // 1 .. 16384
		}),
	}
	for i, k := range kinds {
		m.firesByKind[i] = m.fires.WithLabelValues(string(k))
	}
	for i, p := range policies {
		m.misfiresBy[i] = [2]prometheus.Counter{m.misfires.WithLabelValues(string(p), "fired"), m.misfires.WithLabelValues(string(p), "skipped")}
	}
	if _, err := metricset.Register(reg, m.fires, m.lateness, m.misfires, m.rules, m.commit, m.commitErrors, m.batch); err != nil {
		return nil, fmt.Errorf("scheduler: %w", err)
	}
	return m, nil
}

// kinds and policies are the label values whose series are made up front.
var (
	kinds    = [...]Kind{KindInterval, KindCron, KindDatetime}
	policies = [...]MisfirePolicy{FireOnce, FireAll, Skip}
)

// kindIndex is k's index in kinds, or -1.
func kindIndex(k Kind) int {
	for i, c := range kinds {
		if k == c {
			return i
		}
	}
	return -1
}

// misfire is the counter of a policy (as policyOf returns it) and an action,
// "fired" or "skipped".
func (m *metrics) misfire(p MisfirePolicy, action string) prometheus.Counter {
	a := 0
	if action != "fired" {
		a = 1
	}
	for i, c := range policies {
		if p == c {
			return m.misfiresBy[i][a]
		}
	}
	return m.misfires.WithLabelValues(string(p), action)
}
