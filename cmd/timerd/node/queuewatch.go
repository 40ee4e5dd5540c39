package node

import (
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/timerd/timerd/scheduler/metricset"
)

// silentQueueReconciles is how many periodic reconciles must find rule
// changes, with no lifecycle message delivered since start, before the node
// says its queue looks bound to an exchange nobody publishes to. One could
// be a message in flight; two in a row, with nothing ever delivered, is a
// set-up fault (docs/configuration.md, ATTUNE_MQ_EXCHANGE).
const silentQueueReconciles = 2

// queueWatch notices a lifecycle queue that never delivers while the
// reconcile keeps finding rule changes the bus should have brought: a node
// bound to the wrong exchange (Attune's API publishes to attune.events)
// otherwise learns every change only at the next reconcile, minutes late,
// and nothing says so. It is used by the intake goroutine only.
type queueWatch struct {
	silent prometheus.Gauge

	delivered bool // a lifecycle message came since start
	changed   int  // periodic reconciles that found changes, none delivered
	warned    bool
}

func newQueueWatch(reg prometheus.Registerer) (*queueWatch, error) {
	w := &queueWatch{silent: prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "timerd_lifecycle_queue_silent",
		Help: "1 while the node's lifecycle queue has delivered no message since start although periodic reconciles found rule changes it should have brought (check ATTUNE_MQ_EXCHANGE: Attune's API publishes to attune.events), else 0.",
	})}
	if _, err := metricset.Register(reg, w.silent); err != nil {
		return nil, err
	}
	return w, nil
}

// messages notes n lifecycle messages from the queue: it is bound right.
func (w *queueWatch) messages(n int) {
	if n == 0 {
		return
	}
	w.delivered = true
	w.silent.Set(0)
}

// reconciled notes a periodic reconcile and the number of rules it changed
// in the store; past silentQueueReconciles reconciles with changes and no message ever
// delivered it warns once, naming the exchange and the queue.
func (w *queueWatch) reconciled(changes int, log *slog.Logger, exchange, queue string) {
	if w.delivered || changes == 0 {
		return
	}
	w.changed++
	if w.changed < silentQueueReconciles {
		return
	}
	w.silent.Set(1)
	if w.warned {
		return
	}
	w.warned = true
	log.Warn("LIFECYCLE QUEUE SILENT: it has delivered no message since start, yet reconciles keep finding rule changes "+
		"it should have brought; is it bound to the exchange Attune's API publishes to (ATTUNE_MQ_EXCHANGE, Attune's is attune.events)? "+
		"Until then rule changes reach this node only at each reconcile",
		"exchange", exchange, "queue", queue, "reconciles_with_changes", w.changed, "last_changes", changes)
}
