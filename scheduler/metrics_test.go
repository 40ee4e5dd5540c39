package scheduler

import (
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// gathered flattens a registry into "name{labels}" -> value (counter,
// gauge) or sample count (histogram).
func gathered(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("Gather: %v", err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			name := mf.GetName()
			for _, l := range m.GetLabel() {
				name += "{" + l.GetName() + "=" + l.GetValue() + "}"
			}
			switch mf.GetType() {
			case dto.MetricType_COUNTER:
				out[name] = m.GetCounter().GetValue()
			case dto.MetricType_GAUGE:
				out[name] = m.GetGauge().GetValue()
			case dto.MetricType_HISTOGRAM:
				out[name] = float64(m.GetHistogram().GetSampleCount())
				out[name+"_sum"] = m.GetHistogram().GetSampleSum()
			}
		}
	}
	return out
}

func TestMetrics(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		t0 := time.Now()
		reg := prometheus.NewPedanticRegistry()
		e, rec := newEngine(t, Config{Registerer: reg, RetryMin: time.Second, RetryMax: time.Second})
		rec.fail = 1
		e.Upsert(1, every(10*time.Second, t0), Watermark{Slot: t0})
		once := every(time.Second, t0.Add(-time.Hour))
		e.Upsert(2, once, Watermark{Slot: t0.Add(-time.Hour)}) // fire_once catch-up
		skip := every(time.Second, t0.Add(-time.Hour))
		skip.Misfire = Skip
		e.Upsert(3, skip, Watermark{Slot: t0.Add(-time.Hour)})
		e.Upsert(4, at(t0.Add(5*time.Second), 0, ""), Watermark{Slot: t0})
		stop := start(t, e)
		time.Sleep(10 * time.Second)
		synctest.Wait()
		stop()

		got := gathered(t, reg)
		n := float64(len(rec.fires()))
		want := map[string]float64{
			"timerd_fires_total{kind=interval}":                       n - 1,
			"timerd_fires_total{kind=datetime}":                       1,
			"timerd_fire_lateness_seconds":                            n,
			"timerd_misfires_total{action=fired}{policy=fire_once}":   1,
			"timerd_misfires_total{action=skipped}{policy=fire_once}": 1,
			"timerd_misfires_total{action=skipped}{policy=skip}":      1,
			"timerd_scheduler_rules":                                  4,
			"timerd_scheduler_commit_seconds":                         float64(len(rec.batchSizes()) + 1),
			"timerd_scheduler_commit_errors_total":                    1,
			"timerd_scheduler_batch_fires":                            float64(len(rec.batchSizes())),
			"timerd_scheduler_batch_fires_sum":                        n,
		}
		for k, v := range want {
			if got[k] != v {
				t.Errorf("metric %s = %v, want %v", k, got[k], v)
			}
		}
		// The failed first attempt made the t0 fires 1s late.
		if s := got["timerd_fire_lateness_seconds_sum"]; s < 1 {
			t.Errorf("lateness sum %v, want >= 1s", s)
		}
	})
}

func TestMetricsRegisterTwice(t *testing.T) {
	reg := prometheus.NewRegistry()
	ok := func([]Fire, []Miss) error { return nil }
	if _, err := New(Config{Commit: ok, Registerer: reg}); err != nil {
		t.Fatalf("first New: %v", err)
	}
	_, err := New(Config{Commit: ok, Registerer: reg})
	if err == nil {
		t.Fatalf("second New on the same registry: got nil error, want a registration error")
	}
	if !strings.Contains(err.Error(), "timerd_fires_total") {
		t.Errorf("second New on the same registry = %q, want an error naming timerd_fires_total", err)
	}
}
