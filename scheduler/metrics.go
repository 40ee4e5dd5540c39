package scheduler

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are always created so the hot path has no nil checks; they are
// registered only when a Registerer is given.
type metrics struct {
	fires        *prometheus.CounterVec
	firesByKind  [3]prometheus.Counter // interval, cron, datetime: no label lookup per fire
	lateness     prometheus.Histogram
	misfires     *prometheus.CounterVec
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
	m.firesByKind = [3]prometheus.Counter{
		m.fires.WithLabelValues(string(KindInterval)),
		m.fires.WithLabelValues(string(KindCron)),
		m.fires.WithLabelValues(string(KindDatetime)),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.fires, m.lateness, m.misfires, m.rules, m.commit, m.commitErrors, m.batch} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register scheduler metrics: %w", err)
		}
	}
	return m, nil
}

func (m *metrics) fired(k Kind) prometheus.Counter {
	switch k {
	case KindInterval:
		return m.firesByKind[0]
	case KindCron:
		return m.firesByKind[1]
	case KindDatetime:
		return m.firesByKind[2]
	}
	return m.fires.WithLabelValues(string(k))
}

func (m *metrics) misfire(p MisfirePolicy, action string) prometheus.Counter {
	return m.misfires.WithLabelValues(string(p), action)
}
