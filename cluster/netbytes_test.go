package cluster

import (
	"fmt"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/timerd/timerd/test/testkit"
)

// Every byte one node of two sends, the other receives: the counts of both directions
// and both transports (the join's push/pull is TCP, probes UDP) match across the pair,
// and /metrics exports them.
func TestNetBytesCountBothEnds(t *testing.T) {
	reg := prometheus.NewRegistry()
	acfg := testConfig("a")
	acfg.Registerer = reg
	a, _ := start(t, acfg)
	b, _ := start(t, testConfig("b", a.LocalAddr()))
	testkit.Eventually(t, 20*time.Second, "both see 2 members", func() bool { return viewHas(a, 2) && viewHas(b, 2) })

	var ab, bb NetBytes
	testkit.EventuallyWhy(t, 20*time.Second, "a's sent bytes are b's received and back", func() (string, bool) {
		ab, bb = a.NetBytes(), b.NetBytes()
		why := fmt.Sprintf("a %+v, b %+v", ab, bb)
		return why, ab.SentUDP > 0 && bb.SentUDP > 0 && ab.SentUDP == bb.ReceivedUDP && bb.SentUDP == ab.ReceivedUDP &&
			ab.SentTCP == bb.ReceivedTCP && bb.SentTCP == ab.ReceivedTCP
	})
	if ab.SentTCP == 0 || ab.ReceivedTCP == 0 || ab.Sent() != ab.SentUDP+ab.SentTCP || bb.Received() != bb.ReceivedUDP+bb.ReceivedTCP {
		t.Errorf("a %+v, b %+v: want the join's TCP push/pull counted both ways", ab, bb)
	}

	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, f := range families {
		if f.GetName() != "timerd_cluster_network_bytes_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			key := ""
			for _, l := range m.GetLabel() {
				key += l.GetValue() + "/"
			}
			got[key] = m.GetCounter().GetValue()
		}
	}
	if len(got) != 4 || got["sent/udp/"] < float64(ab.SentUDP) || got["received/tcp/"] < float64(ab.ReceivedTCP) {
		t.Errorf("timerd_cluster_network_bytes_total = %v, want 4 series at least a's counts %+v", got, ab)
	}
}

// A transport that Config.Memberlist brings is used as it is, not counted.
func TestNetBytesOwnTransportNotCounted(t *testing.T) {
	var mock memberlist.MockNetwork
	cfg := testConfig("mock")
	cfg.Memberlist = func() *memberlist.Config {
		mc := testMemberlist()
		mc.Transport = mock.NewTransport("mock")
		return mc
	}
	c, _ := start(t, cfg)
	if c.counted != nil || c.NetBytes() != (NetBytes{}) {
		t.Errorf("NetBytes with a transport of Config.Memberlist = %+v, want none counted", c.NetBytes())
	}
}
