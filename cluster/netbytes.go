package cluster

import (
	"fmt"
	"log"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/prometheus/client_golang/prometheus"
)

// NetBytes is what this node's gossip layer sent and received: memberlist's probes,
// gossip and push/pull, and the protocol's messages it carries (transport.go), as
// written to and read from the sockets (encryption and memberlist's headers
// included; IP and UDP/TCP headers not).
type NetBytes struct {
	SentUDP, SentTCP         uint64
	ReceivedUDP, ReceivedTCP uint64
}

// Sent is the bytes sent over both transports.
func (b NetBytes) Sent() uint64 { return b.SentUDP + b.SentTCP }

// Received is the bytes received over both transports.
func (b NetBytes) Received() uint64 { return b.ReceivedUDP + b.ReceivedTCP }

// NetBytes is what this node's gossip sockets carried since New; zero when
// Config.Memberlist brought a transport of its own (a test's), which is not counted.
func (c *Cluster) NetBytes() NetBytes {
	if c.counted == nil {
		return NetBytes{}
	}
	return c.counted.bytes()
}

// countingTransport is memberlist's network transport with every byte it carries
// counted: the per-node cost of the membership and the protocol (issue 15), which
// memberlist itself reports only to hashicorp/go-metrics' global sink (not installed).
type countingTransport struct {
	memberlist.NodeAwareTransport

	sentUDP, sentTCP, receivedUDP, receivedTCP atomic.Uint64

	packets chan *memberlist.Packet // the inner transport's packets, counted
	streams chan net.Conn           // its accepted streams, wrapped to count
	stop    chan struct{}
	wg      sync.WaitGroup
	once    sync.Once
}

// countingNetTransport binds memberlist's NetTransport as memberlist.Create would (the
// same retries of a port 0 that another socket took between the TCP and the UDP bind),
// writes a port 0's bound port back into mc and wraps the transport to count its bytes.
// The error reads as memberlist's own ("could not set up network transport: ..."), which
// startFailure classifies as ErrBind.
func countingNetTransport(mc *memberlist.Config) (*countingTransport, error) {
	nc := &memberlist.NetTransportConfig{
		BindAddrs:    []string{mc.BindAddr},
		BindPort:     mc.BindPort,
		Logger:       mc.Logger,
		MetricLabels: mc.MetricLabels,
	}
	if nc.Logger == nil { // memberlistConfig sets one; memberlist's own default else
		nc.Logger = log.New(os.Stderr, "", log.LstdFlags)
	}
	tries := 1
	if mc.BindPort == 0 {
		tries = 10
	}
	var (
		nt  *memberlist.NetTransport
		err error
	)
	for range tries {
		if nt, err = memberlist.NewNetTransport(nc); err == nil || !strings.Contains(err.Error(), "address already in use") {
			break
		}
	}
	if err != nil {
		return nil, fmt.Errorf("could not set up network transport: failed to obtain an address: %w", err)
	}
	if mc.BindPort == 0 { // both, as memberlist.Create does
		mc.BindPort = nt.GetAutoBindPort()
		mc.AdvertisePort = mc.BindPort
	}
	t := &countingTransport{
		NodeAwareTransport: nt,
		packets:            make(chan *memberlist.Packet),
		streams:            make(chan net.Conn),
		stop:               make(chan struct{}),
	}
	t.wg.Add(2)
	go t.forwardPackets()
	go t.forwardStreams()
	return t, nil
}

func (t *countingTransport) bytes() NetBytes {
	return NetBytes{
		SentUDP: t.sentUDP.Load(), SentTCP: t.sentTCP.Load(),
		ReceivedUDP: t.receivedUDP.Load(), ReceivedTCP: t.receivedTCP.Load(),
	}
}

func (t *countingTransport) forwardPackets() {
	defer t.wg.Done()
	in := t.NodeAwareTransport.PacketCh()
	for {
		select {
		case p := <-in:
			t.receivedUDP.Add(uint64(len(p.Buf)))
			select {
			case t.packets <- p:
			case <-t.stop:
				return
			}
		case <-t.stop:
			return
		}
	}
}

func (t *countingTransport) forwardStreams() {
	defer t.wg.Done()
	in := t.NodeAwareTransport.StreamCh()
	for {
		select {
		case c := <-in:
			select {
			case t.streams <- &countingConn{Conn: c, t: t}:
			case <-t.stop:
				_ = c.Close()
				return
			}
		case <-t.stop:
			return
		}
	}
}

func (t *countingTransport) PacketCh() <-chan *memberlist.Packet { return t.packets }

func (t *countingTransport) StreamCh() <-chan net.Conn { return t.streams }

func (t *countingTransport) WriteTo(b []byte, addr string) (time.Time, error) {
	return t.WriteToAddress(b, memberlist.Address{Addr: addr})
}

func (t *countingTransport) WriteToAddress(b []byte, a memberlist.Address) (time.Time, error) {
	at, err := t.NodeAwareTransport.WriteToAddress(b, a)
	if err == nil {
		t.sentUDP.Add(uint64(len(b)))
	}
	return at, err
}

func (t *countingTransport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	return t.DialAddressTimeout(memberlist.Address{Addr: addr}, timeout)
}

func (t *countingTransport) DialAddressTimeout(a memberlist.Address, timeout time.Duration) (net.Conn, error) {
	c, err := t.NodeAwareTransport.DialAddressTimeout(a, timeout)
	if err != nil {
		return nil, err
	}
	return &countingConn{Conn: c, t: t}, nil
}

// Shutdown stops the inner transport first, while memberlist still reads what the
// forwarders hand it (its listeners may be sending a last packet), then the forwarders.
// Idempotent: memberlist shuts it down, and New again when Create failed.
func (t *countingTransport) Shutdown() error {
	var err error
	t.once.Do(func() {
		err = t.NodeAwareTransport.Shutdown()
		close(t.stop)
		t.wg.Wait()
	})
	return err
}

// countingConn counts a stream's bytes as TCP traffic of its transport.
type countingConn struct {
	net.Conn
	t *countingTransport
}

func (c *countingConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.t.receivedTCP.Add(uint64(n))
	return n, err
}

func (c *countingConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.t.sentTCP.Add(uint64(n))
	return n, err
}

var netBytesDesc = prometheus.NewDesc("timerd_cluster_network_bytes_total",
	"Bytes this node's gossip sockets sent and received (memberlist's probes, gossip and push/pull, and the protocol's messages), by direction (sent, received) and transport (udp, tcp).",
	[]string{"direction", "transport"}, nil)

// netBytesCollector reads the counts at scrape time.
type netBytesCollector struct{ c *Cluster }

func (netBytesCollector) Describe(ch chan<- *prometheus.Desc) { ch <- netBytesDesc }

func (nc netBytesCollector) Collect(ch chan<- prometheus.Metric) {
	b := nc.c.NetBytes()
	for _, v := range []struct {
		dir, tr string
		n       uint64
	}{
		{"sent", transportUDP, b.SentUDP}, {"sent", transportTCP, b.SentTCP},
		{"received", transportUDP, b.ReceivedUDP}, {"received", transportTCP, b.ReceivedTCP},
	} {
		ch <- prometheus.MustNewConstMetric(netBytesDesc, prometheus.CounterValue, float64(v.n), v.dir, v.tr)
	}
}
