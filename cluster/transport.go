package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/timerd/timerd/cluster/protocol"
)

// Transport of the fire-once protocol's messages (cluster/protocol) between members.
//
// A protocol packet is [protocolPrefix][protocol.Encode(m)], carried as a memberlist user
// message: UDP (SendBestEffort) when it fits the packet budget, else TCP (SendReliable)
// from a bounded queue per peer, so that Send never waits on the network. GossipKey
// encrypts both.
//
// protocolPrefix is 'P' (0x50). The only other packet, the leave intent, starts with
// leaveVersion, 1, as did the watermark gossip of older builds: a packet of that gossip is
// dropped and counted (in, version), and a node of such a build counts a protocol packet
// as a watermark message of an unknown version (dropped, reason "version").
const protocolPrefix byte = 'P'

// Bounds of the transport.
const (
	// DefaultMessageBuffer is the default capacity of Messages.
	DefaultMessageBuffer = 4096
	// maxReliableBytes is the largest user message memberlist v0.7.0 reads off a TCP
	// stream (its maxUserMsgBytes); the receiver would drop a larger one unseen.
	maxReliableBytes = 20 << 20
	// tcpQueueLen and tcpQueueBytes bound the messages waiting to go to one peer over TCP;
	// a message beyond either is dropped (queue_full), except that an empty queue takes
	// one message of any size up to maxReliableBytes.
	tcpQueueLen   = 64
	tcpQueueBytes = 32 << 20
	// tcpIdle ends the sending goroutine of a peer that had nothing to send for this long.
	tcpIdle = 30 * time.Second
	// tcpStopWait bounds how long Shutdown waits for a TCP send in flight: memberlist's
	// stream writes have no deadline, and a write to a paused peer whose receive window is
	// full does not return while it stays paused.
	tcpStopWait = 5 * time.Second
	// packetOverhead is what memberlist and its encryption add to a user message (message
	// type, CRC, AES-GCM version, nonce and tag), rounded up.
	packetOverhead = 64
)

// Errors of Send.
var (
	ErrUnknownMember = errors.New("cluster: not a live member")
	ErrQueueFull     = errors.New("cluster: send queue full")
)

// Reasons of timerd_cluster_protocol_messages_dropped_total. Received messages ("in") are
// dropped by protocol.WireReason (malformed, version, invalid, too_large; packets that are
// no protocol message too: NotifyMsg), as not_member and as slow_consumer; sent ones ("out")
// by WireReason (Encode refused the message), as unknown_member, queue_full and send_failed.
const (
	dropNotMember     = "not_member"
	dropSlowReader    = "slow_consumer"
	dropUnknownMember = "unknown_member"
	dropQueueFull     = "queue_full"
	dropSendFailed    = "send_failed"

	dirIn  = "in"
	dirOut = "out"

	transportUDP = "udp"
	transportTCP = "tcp"
)

// protocolDropReasons lists the reasons of each direction, so that every label exists
// from the start.
var protocolDropReasons = map[string][]string{
	dirIn: {protocol.WireMalformed, protocol.WireUnknownVersion, protocol.WireInvalid, protocol.WireTooLarge,
		dropNotMember, dropSlowReader},
	dirOut: {protocol.WireMalformed, protocol.WireInvalid, protocol.WireTooLarge, dropUnknownMember,
		dropQueueFull, dropSendFailed},
}

// transport is the state of Send and of the protocol's side of the delegate.
type transport struct {
	udpBudget int // the largest protocol packet (prefix included) sent over UDP
	msgs      chan protocol.Message
	known     chan struct{} // KnownChanges: holds at most one unread signal

	mu     sync.Mutex // guards queues
	queues map[string]*peerQueue
	wg     sync.WaitGroup // the peers' TCP senders; Add under Cluster.life
}

// peerQueue is what waits to go to one peer over TCP; bytes is guarded by transport.mu.
type peerQueue struct {
	ch    chan []byte
	bytes int
}

func (t *transport) init(udpBufferSize, buffer int) {
	t.udpBudget = udpBufferSize - packetOverhead
	t.msgs = make(chan protocol.Message, buffer)
	t.known = make(chan struct{}, 1)
	t.queues = map[string]*peerQueue{}
}

// Send sends m to the member named to. A packet that fits one UDP datagram goes at once
// (best effort); a larger one is queued for the peer's TCP sender and goes in order with
// the peer's other large messages (delivered unless the peer fails). Send never waits on
// the network: it errors (and counts) when m cannot be encoded, when to is not a live
// member (ErrUnknownMember), when the peer's TCP queue is full (ErrQueueFull) and when the
// UDP send fails. Messages are unordered across the two ways.
func (c *Cluster) Send(to string, m protocol.Message) error {
	t := &c.tr
	node, ok := c.liveNode(to)
	if !ok {
		c.dropOut(dropUnknownMember)
		return fmt.Errorf("send %T to %s: %w", m, to, ErrUnknownMember)
	}
	// In the newest wire version the peer reads (its node meta says).
	b, err := protocol.EncodeVersion(m, wireVersionOf(node.Meta))
	if err != nil {
		c.dropOut(protocol.WireReason(err))
		return fmt.Errorf("send %T to %s: %w", m, to, err)
	}
	p := make([]byte, 0, 1+len(b))
	p = append(append(p, protocolPrefix), b...)
	if len(p) <= t.udpBudget {
		if err := c.ml.SendBestEffort(&node, p); err != nil {
			c.dropOut(dropSendFailed)
			return fmt.Errorf("send %T to %s over UDP: %w", m, to, err)
		}
		c.met.protoSent.WithLabelValues(transportUDP).Inc()
		return nil
	}
	if len(p) > maxReliableBytes {
		c.dropOut(protocol.WireTooLarge)
		return fmt.Errorf("send %T to %s: %w: %d bytes, over memberlist's %d", m, to, protocol.ErrWire, len(p), maxReliableBytes)
	}
	return c.enqueue(to, p)
}

// enqueue hands p to the TCP sender of peer to, starting it if needed.
func (c *Cluster) enqueue(to string, p []byte) error {
	t := &c.tr
	t.mu.Lock()
	defer t.mu.Unlock()
	q := t.queues[to]
	if q == nil {
		q = &peerQueue{ch: make(chan []byte, tcpQueueLen)}
		if !c.goSender(func() { c.drain(to, q) }) {
			return ErrShutdown
		}
		t.queues[to] = q
	}
	if q.bytes > 0 && q.bytes+len(p) > tcpQueueBytes {
		c.dropOut(dropQueueFull)
		return fmt.Errorf("send to %s over TCP: %w (%d bytes waiting)", to, ErrQueueFull, q.bytes)
	}
	select {
	case q.ch <- p:
		q.bytes += len(p)
		return nil
	default:
		c.dropOut(dropQueueFull)
		return fmt.Errorf("send to %s over TCP: %w (%d messages waiting)", to, ErrQueueFull, len(q.ch))
	}
}

// goSender runs f as a TCP sender that Shutdown waits for (bounded by tcpStopWait); false
// once shut down. transport.mu is held.
func (c *Cluster) goSender(f func()) bool {
	c.life.Lock()
	defer c.life.Unlock()
	if c.stopped {
		return false
	}
	c.tr.wg.Add(1)
	go func() {
		defer c.tr.wg.Done()
		f()
	}()
	return true
}

// drain sends the queue of peer to over TCP, one message at a time, until Shutdown or
// until the queue stayed empty for tcpIdle.
func (c *Cluster) drain(to string, q *peerQueue) {
	t := &c.tr
	idle := time.NewTimer(tcpIdle)
	defer idle.Stop()
	for {
		select {
		case <-c.stop:
			return
		default:
		}
		select {
		case <-c.stop:
			return
		case p := <-q.ch:
			c.sendReliable(to, p)
			t.mu.Lock()
			q.bytes -= len(p)
			t.mu.Unlock()
			idle.Reset(tcpIdle)
		case <-idle.C:
			t.mu.Lock()
			if len(q.ch) == 0 {
				delete(t.queues, to)
				t.mu.Unlock()
				return
			}
			t.mu.Unlock()
			idle.Reset(tcpIdle)
		}
	}
}

// sendReliable sends p to peer to over TCP, at the address it has now.
func (c *Cluster) sendReliable(to string, p []byte) {
	node, ok := c.liveNode(to)
	if !ok {
		c.dropOut(dropSendFailed)
		c.log.Debug("protocol message not sent: the peer is gone", "peer", to, "bytes", len(p))
		return
	}
	if err := c.ml.SendReliable(&node, p); err != nil {
		c.dropOut(dropSendFailed)
		c.log.Debug("protocol message not sent over TCP", "peer", to, "bytes", len(p), "err", err)
		return
	}
	c.met.protoSent.WithLabelValues(transportTCP).Inc()
}

// stopSenders waits for the TCP senders, at most tcpStopWait (Shutdown, after stop closed).
func (c *Cluster) stopSenders() {
	done := make(chan struct{})
	go func() {
		c.tr.wg.Wait()
		close(done)
	}()
	t := time.NewTimer(tcpStopWait)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		c.log.Warn("a TCP send to a peer is still blocked after shutdown; abandoning it", "waited", tcpStopWait)
	}
}

// dropIn counts a received packet dropped for reason, what saying which. A packet of
// another version is logged at debug level only: an older build's gossip sends many.
func (c *Cluster) dropIn(reason, what string) {
	c.met.protoDropped.WithLabelValues(dirIn, reason).Inc()
	level := slog.LevelWarn
	if reason == protocol.WireUnknownVersion {
		level = slog.LevelDebug
	}
	c.log.Log(context.Background(), level, "dropped a peer's packet", "reason", reason, "packet", what)
}

func (c *Cluster) dropOut(reason string) {
	if reason == "" {
		reason = protocol.WireMalformed
	}
	c.met.protoDropped.WithLabelValues(dirOut, reason).Inc()
}

// liveNode is the memberlist node of the live member named name (a copy).
func (c *Cluster) liveNode(name string) (memberlist.Node, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	m, ok := c.members[name]
	if !ok || m.state != StateAlive {
		return memberlist.Node{}, false
	}
	return m.node, true
}

// Messages delivers the protocol messages of live members, decoded. Its buffer holds
// Config.MessageBuffer; when it is full, a message is dropped (counted as slow_consumer):
// the gossip never waits for the reader.
func (c *Cluster) Messages() <-chan protocol.Message { return c.tr.msgs }

// Known lists the live members but this node, sorted by name.
func (c *Cluster) Known() []string {
	c.mu.Lock()
	out := make([]string, 0, len(c.members))
	for name, m := range c.members {
		if name != c.cfg.NodeName && m.state == StateAlive {
			out = append(out, name)
		}
	}
	c.mu.Unlock()
	slices.Sort(out)
	return out
}

// KnownChanges signals that Known may have changed; signals that the reader has not taken
// coalesce into one. Read Known after each.
func (c *Cluster) KnownChanges() <-chan struct{} { return c.tr.known }

// signalKnown is called when a member became live or stopped being live.
func (c *Cluster) signalKnown() {
	select {
	case c.tr.known <- struct{}{}:
	default:
	}
}

// protocolMsg receives a protocol packet (without its prefix): decoded, from a live member,
// onto Messages; else dropped and counted. It never blocks.
func (d *delegate) protocolMsg(b []byte) {
	c := d.c
	m, err := protocol.Decode(b)
	if err != nil {
		reason := protocol.WireReason(err)
		if reason == "" {
			reason = protocol.WireMalformed
		}
		c.met.protoDropped.WithLabelValues(dirIn, reason).Inc()
		c.log.Warn("dropped a peer's protocol message", "reason", reason, "err", err)
		return
	}
	from := m.Sender().Node
	if _, ok := c.liveNode(from); !ok {
		c.met.protoDropped.WithLabelValues(dirIn, dropNotMember).Inc()
		c.log.Debug("dropped a protocol message of a node that is not a live member", "from", from,
			"type", fmt.Sprintf("%T", m))
		return
	}
	select {
	case c.tr.msgs <- m:
		c.met.protoReceived.Inc()
	default:
		c.met.protoDropped.WithLabelValues(dirIn, dropSlowReader).Inc()
	}
}
