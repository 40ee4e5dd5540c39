package node

import (
	"context"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/timerd/timerd/scheduler/metricset"
)

// storeHealth follows whether the node's store takes commits (docs/operations.md,
// "When the disk fills"): a failed commit makes the node not ready until a probe
// commit succeeds. A fire's commit that succeeds meanwhile does not clear it: on a
// full disk bbolt can reuse freed pages for one commit and fail the next, and a node
// ready one moment and not the next helps nobody. Only writes the store tried count: a
// commit refused before the store (no lease) says nothing about the disk.
type storeHealth struct {
	mu       sync.Mutex
	since    time.Time // the first failure since the last success; zero while commits succeed
	lastErr  error
	failures prometheus.Counter
	now      func() time.Time // the node's clock: how long commits fail decides a leave (offline.go)
}

func newStoreHealth(reg prometheus.Registerer, now func() time.Time) (*storeHealth, error) {
	h := &storeHealth{now: now, failures: prometheus.NewCounter(prometheus.CounterOpts{
		Name: "timerd_store_commit_failures_total",
		Help: "Commits of the node's store that failed (a full disk, an I/O error): fires, protocol writes and probes.",
	})}
	_, err := metricset.Register(reg, h.failures,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "timerd_store_commit_failing",
			Help: "1 while the store's last commit failed (the node is not ready), else 0.",
		}, func() float64 {
			if _, _, failing := h.failing(); failing {
				return 1
			}
			return 0
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "timerd_store_commit_failing_seconds",
			Help: "How long the store's commits have been failing (since the first failure after the last success); 0 while they succeed.",
		}, func() float64 {
			if since, _, failing := h.failing(); failing {
				return h.now().Sub(since).Seconds()
			}
			return 0
		}),
	)
	if err != nil {
		return nil, err
	}
	return h, nil
}

// probeEvery is how often a store that failed a commit is probed.
const probeEvery = time.Second

// record notes the outcome of a commit the store tried: a failure, or nothing.
func (h *storeHealth) record(err error) {
	if err == nil {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.failures.Inc()
	if h.since.IsZero() {
		h.since = h.now()
	}
	h.lastErr = err
}

// failing reports since when commits fail and the last error; ok false while they succeed.
func (h *storeHealth) failing() (since time.Time, err error, ok bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.since, h.lastErr, !h.since.IsZero()
}

// failingFor is how long commits have been failing; 0 while they succeed.
func (h *storeHealth) failingFor() time.Duration {
	if since, _, ok := h.failing(); ok {
		return h.now().Sub(since)
	}
	return 0
}

// run probes the store every probeEvery while its commits fail, until ctx ends; the
// first probe that succeeds clears the failure.
func (h *storeHealth) run(ctx context.Context, probe func() error) {
	t := time.NewTicker(probeEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if _, _, failing := h.failing(); !failing {
			continue
		}
		if err := probe(); err != nil {
			h.record(err)
			continue
		}
		h.mu.Lock()
		h.since, h.lastErr = time.Time{}, nil
		h.mu.Unlock()
	}
}
