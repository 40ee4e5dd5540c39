package cluster

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/timerd/timerd/scheduler/metricset"
)

// Member states, as in Member.State and the state label of timerd_cluster_members.
const (
	StateAlive   = "alive"
	StateSuspect = "suspect"
	StateDead    = "dead"
	StateLeft    = "left"
)

type metrics struct {
	ringChanges prometheus.Counter

	protoSent     *prometheus.CounterVec
	protoReceived prometheus.Counter
	protoDropped  *prometheus.CounterVec

	keyringReloads *prometheus.CounterVec
}

func newMetrics() *metrics {
	m := &metrics{
		ringChanges: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "timerd_ring_changes_total",
			Help: "Changes of the member set of this node's hash ring.",
		}),
	}
	m.protoSent = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "timerd_cluster_protocol_messages_sent_total",
		Help: "Protocol messages sent to a peer, by transport: udp (one datagram), tcp (larger messages).",
	}, []string{"transport"})
	m.protoReceived = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "timerd_cluster_protocol_messages_received_total",
		Help: "Protocol messages received from live members and handed to the reader.",
	})
	m.protoDropped = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "timerd_cluster_protocol_messages_dropped_total",
		Help: "Protocol messages dropped. in: malformed, version, invalid, too_large (undecodable; version also counts the packets of an older build's watermark gossip), not_member (the sender is no live member), " +
			"slow_consumer (Messages channel full). out: malformed, invalid, too_large (not encodable), unknown_member (no live member of that name), " +
			"queue_full (the peer's TCP queue), send_failed.",
	}, []string{"direction", "reason"})
	m.keyringReloads = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "timerd_gossip_keyring_reloads_total",
		Help: "Changes of the gossip keyring file applied (ok) or refused (error: the keys in use stay).",
	}, []string{"result"})
	m.keyringReloads.WithLabelValues("ok")
	m.keyringReloads.WithLabelValues("error")
	for _, r := range []string{transportUDP, transportTCP} {
		m.protoSent.WithLabelValues(r)
	}
	for dir, reasons := range protocolDropReasons {
		for _, r := range reasons {
			m.protoDropped.WithLabelValues(dir, r)
		}
	}
	return m
}

// register registers m and the gauges of c (once c can list members).
func (m *metrics) register(reg prometheus.Registerer, c *Cluster) error {
	quorum := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "timerd_cluster_quorum",
		Help: "1 when this node's view holds a quorum of the expected members (it fires its share), else 0.",
	}, func() float64 {
		if c.view.Load().Quorum {
			return 1
		}
		return 0
	})
	expected := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "timerd_cluster_expected_members",
		Help: "N, the members a quorum (N/2+1) is counted of: TIMERD_EXPECT, or the most members this node has seen in one view when more.",
	}, func() float64 { return float64(c.view.Load().Expect) })
	keys := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "timerd_gossip_keys",
		Help: "Keys in this node's gossip keyring (0: gossip is not encrypted; 2 during a rotation).",
	}, func() float64 {
		if ring := c.keyring; ring != nil {
			return float64(len(ring.GetKeys()))
		}
		return 0
	})
	_, err := metricset.Register(reg, m.ringChanges, m.protoSent, m.protoReceived, m.protoDropped, m.keyringReloads,
		membersCollector{c}, netBytesCollector{c}, quorum, expected, keys)
	return err
}

var membersDesc = prometheus.NewDesc("timerd_cluster_members",
	"Members of the cluster as this node sees them, by state.", []string{"state"}, nil)

// membersCollector counts Members at scrape time.
type membersCollector struct{ c *Cluster }

func (membersCollector) Describe(ch chan<- *prometheus.Desc) { ch <- membersDesc }

func (mc membersCollector) Collect(ch chan<- prometheus.Metric) {
	counts := map[string]int{}
	for _, m := range mc.c.Members() {
		counts[m.State]++
	}
	for _, s := range []string{StateAlive, StateSuspect, StateDead, StateLeft} {
		ch <- prometheus.MustNewConstMetric(membersDesc, prometheus.GaugeValue, float64(counts[s]), s)
	}
}
