package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/timerd/timerd/cluster/protocol"
	"github.com/timerd/timerd/test/testkit"
)

// pair starts a and b, joined, each seeing the other.
func pair(t *testing.T, cfgA, cfgB func(*Config)) (a, b *Cluster, alog, blog *logBuf) {
	t.Helper()
	ca := testConfig("a")
	if cfgA != nil {
		cfgA(&ca)
	}
	a, alog = start(t, ca)
	cb := testConfig("b", a.LocalAddr())
	if cfgB != nil {
		cfgB(&cb)
	}
	b, blog = start(t, cb)
	testkit.Eventually(t, 20*time.Second, "a and b see each other", func() bool {
		return slices.Equal(a.Known(), []string{"b"}) && slices.Equal(b.Known(), []string{"a"})
	})
	return a, b, alog, blog
}

// receive waits for the next protocol message of c.
func receive(t *testing.T, c *Cluster, within time.Duration) protocol.Message {
	t.Helper()
	select {
	case m := <-c.Messages():
		return m
	case <-time.After(within):
		t.Fatalf("%s: no protocol message within %v", c.Name(), within)
		return nil
	}
}

func dropsOf(c *Cluster, dir, reason string) float64 {
	return testutil.ToFloat64(c.met.protoDropped.WithLabelValues(dir, reason))
}

func sentOf(c *Cluster, transport string) float64 {
	return testutil.ToFloat64(c.met.protoSent.WithLabelValues(transport))
}

// bigGrant is a Grant of at least size encoded bytes.
func bigGrant(from, to protocol.Incarnation, size int) protocol.Grant {
	g := protocol.Grant{From: from, To: to, ID: 7, Granted: []int{1, 2, 3},
		Refused: []protocol.PartitionEpoch{{Partition: 4, Epoch: protocol.Epoch{N: 9, Node: "c"}}},
		Members: []protocol.Incarnation{from, to}}
	const perWatermark = 58 // a watermark of one point named by the sender, at most
	for i := range size/perWatermark + 1 {
		slot := int64(1_700_000_000_000_000_000 + i)
		g.Watermarks = append(g.Watermarks, protocol.Watermark{Rule: int64(i + 1), Slot: slot, Count: uint64(i),
			Chain: protocol.Chain{{From: slot - 1000, Last: slot, Firer: from, Epoch: protocol.Epoch{N: 3, Node: from.Node}}}})
	}
	return g
}

func TestProtocolMessagesArrive(t *testing.T) {
	a, b, _, _ := pair(t, nil, nil)
	ia, ib := protocol.Incarnation{Node: "a", N: 3}, protocol.Incarnation{Node: "b", N: 1}

	hb := protocol.Heartbeat{From: ia, Seq: 42, Expect: 3, Wall: time.Now().UnixNano(), Fences: map[string]uint64{"c": 2}}
	if err := a.Send("b", hb); err != nil {
		t.Fatalf("a.Send(b, Heartbeat) = %v", err)
	}
	if got := receive(t, b, 10*time.Second); !reflect.DeepEqual(got, hb) {
		t.Errorf("b received %#v, want %#v", got, hb)
	}
	if got := sentOf(a, transportUDP); got != 1 {
		t.Errorf("a sent{transport=udp} = %v after a heartbeat, want 1", got)
	}

	g := bigGrant(ib, ia, 1<<20)
	enc, err := protocol.Encode(g)
	if err != nil || len(enc) < 1<<20 {
		t.Fatalf("Encode(Grant of %d watermarks) = %d bytes, %v; want ≥ 1 MiB", len(g.Watermarks), len(enc), err)
	}
	if err := b.Send("a", g); err != nil {
		t.Fatalf("b.Send(a, Grant of %d bytes) = %v", len(enc), err)
	}
	got := receive(t, a, 20*time.Second)
	if gg, ok := got.(protocol.Grant); !ok || !reflect.DeepEqual(gg, g) {
		t.Errorf("a received a %T (%d watermarks), want the Grant of %d watermarks sent", got, len(gg.Watermarks), len(g.Watermarks))
	}
	if got := sentOf(b, transportTCP); got != 1 {
		t.Errorf("b sent{transport=tcp} = %v after a 1 MiB grant, want 1", got)
	}
	if got := testutil.ToFloat64(a.met.protoReceived); got != 1 {
		t.Errorf("a received_total = %v, want 1", got)
	}
}

// A Fired of MaxFiredRecordsPerPacket records of the sender's own fires goes in one UDP
// datagram, whatever the sender's name.
func TestProtocolFullFiredFitsUDP(t *testing.T) {
	a, _, _, _ := pair(t, nil, nil)
	for _, name := range []string{"a", strings.Repeat("n", 512)} {
		from := protocol.Incarnation{Node: name, N: 1 << 40}
		f := protocol.Fired{From: from, Seq: 1 << 60}
		for i := range protocol.MaxFiredRecordsPerPacket {
			f.Records = append(f.Records, protocol.FireRecord{Rule: 1<<62 + int64(i), Prev: -1 << 62, Slot: 1 << 62,
				Count: 1 << 63, Firer: from, Epoch: protocol.Epoch{N: 1 << 63, Node: name}})
		}
		before := sentOf(a, transportUDP)
		if err := a.Send("b", f); err != nil {
			t.Fatalf("Send(Fired of %d records from a %d-byte name) = %v", len(f.Records), len(name), err)
		}
		if got := sentOf(a, transportUDP) - before; got != 1 {
			t.Errorf("Fired of %d records from a %d-byte name: sent{udp} += %v, want 1 (budget %d bytes)",
				len(f.Records), len(name), got, a.tr.udpBudget)
		}
	}
}

func TestProtocolBadPacketsDropped(t *testing.T) {
	a, b, _, _ := pair(t, nil, nil)
	hb := func(from string) []byte {
		enc, err := protocol.Encode(protocol.Heartbeat{From: protocol.Incarnation{Node: from, N: 1}, Seq: 1})
		if err != nil {
			t.Fatal(err)
		}
		return append([]byte{protocolPrefix}, enc...)
	}
	good := hb("a")
	tests := []struct {
		name   string
		msg    []byte
		reason string
	}{
		{"prefix only", []byte{protocolPrefix}, protocol.WireMalformed},
		{"truncated", good[:len(good)-1], protocol.WireMalformed},
		{"trailing byte", append(slices.Clone(good), 0), protocol.WireMalformed},
		{"unknown kind", []byte{protocolPrefix, protocol.WireVersion, 200}, protocol.WireMalformed},
		{"future version", append([]byte{protocolPrefix, 9}, good[2:]...), protocol.WireUnknownVersion},
		{"not a member", hb("mallory"), dropNotMember},
		{"self is no peer but a member", hb("b"), ""},
	}
	d := &delegate{b}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.reason == "" {
				d.NotifyMsg(tt.msg)
				if m := receive(t, b, time.Second); m.Sender().Node != "b" {
					t.Errorf("NotifyMsg(%x) delivered %#v", tt.msg, m)
				}
				return
			}
			before := dropsOf(b, dirIn, tt.reason)
			d.NotifyMsg(tt.msg)
			if got := dropsOf(b, dirIn, tt.reason) - before; got != 1 {
				t.Errorf("NotifyMsg(%x): dropped{in,%s} += %v, want 1", tt.msg, tt.reason, got)
			}
			select {
			case m := <-b.Messages():
				t.Errorf("NotifyMsg(%x) delivered %#v, want it dropped", tt.msg, m)
			default:
			}
		})
	}
	// The same over the network: a's garbage and a non-member's message are counted, the
	// good message that follows them arrives alone.
	node, _ := a.liveNode("b")
	malformed, notMember := dropsOf(b, dirIn, protocol.WireMalformed), dropsOf(b, dirIn, dropNotMember)
	for _, p := range [][]byte{{protocolPrefix, protocol.WireVersion, 0xee}, hb("mallory"), good} {
		if err := a.ml.SendReliable(&node, p); err != nil {
			t.Fatal(err)
		}
	}
	if m := receive(t, b, 10*time.Second); m.Sender().Node != "a" {
		t.Errorf("b received %#v, want a's heartbeat", m)
	}
	testkit.Eventually(t, 10*time.Second, "b counts the malformed and the non-member's messages", func() bool {
		return dropsOf(b, dirIn, protocol.WireMalformed) == malformed+1 && dropsOf(b, dirIn, dropNotMember) == notMember+1
	})
	if err := a.Send("b", protocol.Retired{From: protocol.Incarnation{Node: "mallory", N: 1}}); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 10*time.Second, "b drops the non-member's message sent with Send", func() bool {
		return dropsOf(b, dirIn, dropNotMember) == notMember+2
	})
}

func TestProtocolSendErrors(t *testing.T) {
	a, _, _, _ := pair(t, nil, nil)
	hb := protocol.Heartbeat{From: protocol.Incarnation{Node: "a", N: 1}}
	tests := []struct {
		name   string
		to     string
		msg    protocol.Message
		want   error
		reason string
	}{
		{"unknown member", "nobody", hb, ErrUnknownMember, dropUnknownMember},
		{"empty name", "", hb, ErrUnknownMember, dropUnknownMember},
		{"name too long", "b", protocol.Heartbeat{From: protocol.Incarnation{Node: strings.Repeat("x", 600)}},
			protocol.ErrWire, protocol.WireTooLarge},
		{"nil message", "b", nil, protocol.ErrWire, protocol.WireInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := dropsOf(a, dirOut, tt.reason)
			if err := a.Send(tt.to, tt.msg); !errors.Is(err, tt.want) {
				t.Fatalf("Send(%q, %T) = %v, want %v", tt.to, tt.msg, err, tt.want)
			}
			if got := dropsOf(a, dirOut, tt.reason) - before; got != 1 {
				t.Errorf("Send(%q, %T): dropped{out,%s} += %v, want 1", tt.to, tt.msg, tt.reason, got)
			}
		})
	}
}

// A peer whose node meta tells no wire version (a build before version 2) is written
// version 1, which it reads: heartbeats without Replicas; one that tells version 2 gets
// them whole (a rolling upgrade: docs/protocol.md §10).
func TestProtocolWritesThePeersWireVersion(t *testing.T) {
	a, b, _, _ := pair(t, nil, nil)
	hb := protocol.Heartbeat{From: protocol.Incarnation{Node: "a", N: 1}, Seq: 1, Expect: 3, Replicas: 3}
	if err := a.Send("b", hb); err != nil {
		t.Fatal(err)
	}
	if got, ok := receive(t, b, 10*time.Second).(protocol.Heartbeat); !ok || got.Replicas != 3 {
		t.Errorf("b, of this build, received %#v; want the heartbeat with Replicas 3", got)
	}
	a.mu.Lock()
	addr := "127.0.0.1:1"
	a.members["b"].node.Meta = append([]byte{metaVersion, byte(len(addr))}, addr...) // as efe9e0f tells it
	a.mu.Unlock()
	before := dropsOf(b, dirIn, protocol.WireMalformed)
	if err := a.Send("b", hb); err != nil {
		t.Fatal(err)
	}
	got, ok := receive(t, b, 10*time.Second).(protocol.Heartbeat)
	if want := (protocol.Heartbeat{From: hb.From, Seq: 1, Expect: 3}); !ok || !reflect.DeepEqual(got, want) {
		t.Errorf("b, told as a build before version 2, received %#v; want %#v", got, want)
	}
	if d := dropsOf(b, dirIn, protocol.WireMalformed) - before; d != 0 {
		t.Errorf("b dropped %v malformed messages", d)
	}
}

// A reader that does not keep up loses messages, counted; gossip and the other messages go on.
func TestProtocolSlowConsumer(t *testing.T) {
	a, b, _, _ := pair(t, nil, func(c *Config) { c.MessageBuffer = 2 })
	send := func(seq uint64) {
		t.Helper()
		if err := a.Send("b", protocol.Heartbeat{From: protocol.Incarnation{Node: "a", N: 1}, Seq: seq}); err != nil {
			t.Fatalf("Send(b, heartbeat %d) = %v", seq, err)
		}
	}
	send(1)
	send(2)
	testkit.Eventually(t, 10*time.Second, "b's Messages holds 2", func() bool { return len(b.Messages()) == 2 })
	// Over TCP, so that none is lost on the way: each NotifyMsg returns for the next.
	node, _ := a.liveNode("b")
	for seq := uint64(3); seq <= 5; seq++ {
		enc, _ := protocol.Encode(protocol.Heartbeat{From: protocol.Incarnation{Node: "a", N: 1}, Seq: seq})
		if err := a.ml.SendReliable(&node, append([]byte{protocolPrefix}, enc...)); err != nil {
			t.Fatal(err)
		}
	}
	testkit.Eventually(t, 10*time.Second, "b counts 3 messages dropped as slow_consumer", func() bool {
		return dropsOf(b, dirIn, dropSlowReader) == 3
	})
	// The other messages go on: a leave intent reaches b; the held messages are the first two.
	if err := a.ml.SendReliable(&node, append([]byte{leaveVersion, leaveKind}, "gone"...)); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 10*time.Second, "b has the leave intent", func() bool {
		b.mu.Lock()
		defer b.mu.Unlock()
		_, ok := b.leaving["gone"]
		return ok
	})
	var held []uint64 // UDP: in either order
	for range 2 {
		held = append(held, receive(t, b, time.Second).(protocol.Heartbeat).Seq)
	}
	if slices.Sort(held); !slices.Equal(held, []uint64{1, 2}) {
		t.Errorf("b read heartbeats %v, want 1 and 2", held)
	}
	send(6)
	if m := receive(t, b, 10*time.Second).(protocol.Heartbeat); m.Seq != 6 {
		t.Errorf("b read heartbeat %d after draining, want 6", m.Seq)
	}
}

// A node with another gossip key reaches nothing, over UDP or TCP, even naming a member.
// A peer's TCP queue is bounded by messages and by bytes; what does not fit is dropped,
// counted, and Send returns at once. (The queue of "stuck" has no sender draining it.)
func TestProtocolTCPQueueBounded(t *testing.T) {
	a, _ := start(t, testConfig("a"))
	a.tr.mu.Lock()
	a.tr.queues["stuck"] = &peerQueue{ch: make(chan []byte, tcpQueueLen)}
	a.tr.queues["stuck bytes"] = &peerQueue{ch: make(chan []byte, tcpQueueLen)}
	a.tr.mu.Unlock()
	for i := range tcpQueueLen {
		if err := a.enqueue("stuck", make([]byte, 2000)); err != nil {
			t.Fatalf("enqueue %d of %d: %v", i+1, tcpQueueLen, err)
		}
	}
	if err := a.enqueue("stuck", make([]byte, 2000)); !errors.Is(err, ErrQueueFull) {
		t.Errorf("enqueue beyond %d messages = %v, want ErrQueueFull", tcpQueueLen, err)
	}
	if err := a.enqueue("stuck bytes", make([]byte, maxReliableBytes)); err != nil {
		t.Errorf("enqueue of %d bytes on an empty queue = %v, want nil", maxReliableBytes, err)
	}
	if err := a.enqueue("stuck bytes", make([]byte, tcpQueueBytes-maxReliableBytes+1)); !errors.Is(err, ErrQueueFull) {
		t.Errorf("enqueue beyond %d bytes = %v, want ErrQueueFull", tcpQueueBytes, err)
	}
	if got := dropsOf(a, dirOut, dropQueueFull); got != 2 {
		t.Errorf("dropped{out,queue_full} = %v, want 2", got)
	}
}

func TestProtocolWrongGossipKey(t *testing.T) {
	key := func(k string) func(*Config) { return func(c *Config) { c.GossipKey = k } }
	a, b, alog, _ := pair(t, key("AAECAwQFBgcICQoLDA0ODw=="), key("AAECAwQFBgcICQoLDA0ODw=="))
	cfg := testConfig("m")
	cfg.GossipKey = "DwAOAQ0CDAMLBAoFCQYIBw=="
	m, _ := start(t, cfg)

	enc, _ := protocol.Encode(protocol.Heartbeat{From: protocol.Incarnation{Node: "b", N: 1}, Seq: 9})
	p := append([]byte{protocolPrefix}, enc...)
	host, port, _ := net.SplitHostPort(a.LocalAddr())
	pn, _ := strconv.Atoi(port)
	if err := m.ml.SendToAddress(memberlist.Address{Addr: a.LocalAddr(), Name: "a"}, p); err != nil {
		t.Fatalf("UDP from m: %v", err)
	}
	if err := m.ml.SendReliable(&memberlist.Node{Name: "a", Addr: net.ParseIP(host), Port: uint16(pn)}, p); err != nil {
		t.Fatalf("TCP from m: %v", err)
	}
	testkit.Eventually(t, 10*time.Second, "a refuses m's packet and stream", func() bool {
		l := alog.String()
		return strings.Contains(l, "Decrypt packet failed") && strings.Contains(l, "failed to receive")
	})
	select {
	case got := <-a.Messages():
		t.Fatalf("a received %#v from a node with another key", got)
	default:
	}
	// The same packet from b, which holds the key, arrives.
	node, _ := b.liveNode("a")
	if err := b.ml.SendBestEffort(&node, p); err != nil {
		t.Fatal(err)
	}
	if got := receive(t, a, 10*time.Second).(protocol.Heartbeat); got.Seq != 9 {
		t.Errorf("a received heartbeat %d from b, want 9", got.Seq)
	}
	for _, r := range protocolDropReasons[dirIn] {
		if got := dropsOf(a, dirIn, r); got != 0 {
			t.Errorf("a dropped{in,%s} = %v, want 0: the packets never reached the delegate", r, got)
		}
	}
}

func TestKnownFollowsMembers(t *testing.T) {
	a, _ := start(t, testConfig("a"))
	if got := a.Known(); len(got) != 0 {
		t.Errorf("a alone: Known() = %v, want none", got)
	}
	select { // drain what a's own join may have signalled
	case <-a.KnownChanges():
	default:
	}
	waitKnown := func(want ...string) {
		t.Helper()
		deadline := time.After(20 * time.Second)
		for !slices.Equal(a.Known(), want) {
			select {
			case <-a.KnownChanges():
			case <-deadline:
				t.Fatalf("a.Known() = %v, want %v", a.Known(), want)
			}
		}
	}
	b, _ := start(t, testConfig("b", a.LocalAddr()))
	start(t, testConfig("c", a.LocalAddr()))
	waitKnown("b", "c")
	ctx, cancel := contextWithTimeout(10 * time.Second)
	defer cancel()
	if err := b.Leave(ctx); err != nil {
		t.Fatalf("b.Leave: %v", err)
	}
	waitKnown("c")
}

func TestPartitionOfIsWhatOwnerHashes(t *testing.T) {
	for _, tt := range []struct {
		cfg     RingConfig
		members []string
	}{{RingConfig{}, []string{"a", "b", "c"}}, {RingConfig{Partitions: 7}, []string{"a", "b", "c"}}, {RingConfig{Partitions: 1}, []string{"a"}}} {
		cfg := tt.cfg
		r, err := NewRing(cfg, tt.members)
		if err != nil {
			t.Fatal(err)
		}
		parts := cfg.withDefaults().Partitions
		for id := int64(-50); id <= 5000; id++ {
			p := PartitionOf(cfg, id)
			if p < 0 || p >= parts {
				t.Fatalf("PartitionOf(%+v, %d) = %d, want 0..%d", cfg, id, p, parts-1)
			}
			if got, want := r.PartitionOwner(p), r.Owner(id); got != want {
				t.Fatalf("partitions %d: PartitionOwner(PartitionOf(%d)) = %q, Owner(%d) = %q", parts, id, got, id, want)
			}
		}
	}
	if p := PartitionOf(RingConfig{Partitions: -1}, 1); p != -1 {
		t.Errorf("PartitionOf(Partitions -1) = %d, want -1", p)
	}
	var nilRing *Ring
	for _, p := range []int{-1, 0, 1 << 30} {
		if got := nilRing.PartitionOwner(p); got != "" {
			t.Errorf("nil ring: PartitionOwner(%d) = %q, want \"\"", p, got)
		}
	}
}

func TestRingOfOwnsEveryPartitionOnce(t *testing.T) {
	cfg := RingConfig{Partitions: 1021, ReplicationFactor: 100}
	ringOf, err := RingOf(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, members := range [][]string{{"a"}, {"a", "b", "c"}, {"n3", "n1", "n4", "n0", "n2"}} {
		r := ringOf(members)
		count := map[string]int{}
		for p := range cfg.Partitions {
			o := r.Owner(p)
			if !slices.Contains(members, o) {
				t.Fatalf("members %v: Owner(%d) = %q, want one of the members", members, p, o)
			}
			count[o]++
		}
		if len(count) != len(members) {
			t.Errorf("members %v: owners %v, want every member to own partitions", members, count)
		}
		for _, bad := range []int{-1, cfg.Partitions} {
			if o := r.Owner(bad); o != "" {
				t.Errorf("members %v: Owner(%d) = %q, want \"\"", members, bad, o)
			}
		}
	}
	// The same set in another order is the ring built before.
	r1, r2 := ringOf([]string{"a", "b", "c"}), ringOf([]string{"c", "a", "b"})
	if r1.(PartitionRing).Ring != r2.(PartitionRing).Ring {
		t.Errorf("RingOf built the ring of {a,b,c} twice, want the cached one")
	}
	// A set no ring can be built for owns nothing.
	if o := ringOf([]string{"a", "a"}).Owner(0); o != "" {
		t.Errorf("ring of a doubled name: Owner(0) = %q, want \"\"", o)
	}
	if _, err := RingOf(RingConfig{Load: 0.5}); !errors.Is(err, ErrRing) {
		t.Errorf("RingOf(Load 0.5) = %v, want ErrRing", err)
	}
	// The default config: every one of its partitions owned by one of 3 members.
	def, err := RingOf(RingConfig{})
	if err != nil {
		t.Fatal(err)
	}
	members := []string{"x", "y", "z"}
	r := def(members)
	for p := range DefaultPartitions {
		if !slices.Contains(members, r.Owner(p)) {
			t.Fatalf("default ring: Owner(%d) = %q", p, r.Owner(p))
		}
	}
}

// BenchmarkProtocolFired: node a sends b.N Fired messages of MaxFiredRecordsPerPacket
// records to b over loopback (UDP) as fast as Send returns; b reads Messages. It reports
// the messages and fire records b received per second, and the share lost (UDP, or
// memberlist's handler queue of 1024 packets, or Messages full). memberlist compresses
// every packet (LZW) by default; compression=off measures without.
//
//	go test -run '^$' -bench ProtocolFired -benchtime=20000x ./cluster
func BenchmarkProtocolFired(b *testing.B) {
	for _, compress := range []bool{true, false} {
		b.Run(fmt.Sprintf("compression=%v", compress), func(b *testing.B) { benchFired(b, compress) })
	}
}

func benchFired(b *testing.B, compress bool) {
	quiet := func(c *Config) {
		c.Logger = slog.New(slog.DiscardHandler)
		c.Memberlist = func() *memberlist.Config {
			mc := testMemberlist()
			mc.EnableCompression = compress
			return mc
		}
	}
	ca := testConfig("a")
	quiet(&ca)
	a, err := New(ca)
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = a.Shutdown() }()
	cb := testConfig("b", a.LocalAddr())
	quiet(&cb)
	r, err := New(cb)
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = r.Shutdown() }()
	ctx, cancel := contextWithTimeout(10 * time.Second)
	defer cancel()
	if _, err := a.Join(ctx); err != nil {
		b.Fatal(err)
	}
	if _, err := r.Join(ctx); err != nil {
		b.Fatal(err)
	}
	testkit.Eventually(b, 20*time.Second, "a and b see each other", func() bool {
		return slices.Equal(a.Known(), []string{"b"}) && slices.Equal(r.Known(), []string{"a"})
	})
	from := protocol.Incarnation{Node: "a", N: 1}
	f := protocol.Fired{From: from}
	now := time.Now().UnixNano()
	for i := range protocol.MaxFiredRecordsPerPacket {
		f.Records = append(f.Records, protocol.FireRecord{Rule: int64(i + 1), Prev: now - 1e9, Slot: now,
			Count: 10, Firer: from, Epoch: protocol.Epoch{N: 3, Node: "a"}})
	}
	var got atomic.Int64
	var last atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-r.stop:
				return
			case <-r.Messages():
				got.Add(1)
				last.Store(time.Now().UnixNano())
			}
		}
	}()
	b.ResetTimer()
	start := time.Now()
	for i := range b.N {
		f.Seq = uint64(i)
		if err := a.Send("b", f); err != nil {
			b.Fatal(err)
		}
	}
	// Wait until nothing more arrives for 200 ms.
	for n := int64(-1); n != got.Load(); {
		n = got.Load()
		time.Sleep(200 * time.Millisecond)
	}
	b.StopTimer()
	received := got.Load()
	took := time.Duration(last.Load() - start.UnixNano())
	if received > 0 && took > 0 {
		b.ReportMetric(float64(received)/took.Seconds(), "msgs/s")
		b.ReportMetric(float64(received)*float64(len(f.Records))/took.Seconds(), "records/s")
	}
	b.ReportMetric(100*(1-float64(received)/float64(b.N)), "%lost")
	b.ReportMetric(100*dropsOf(r, dirIn, dropSlowReader)/float64(b.N), "%slow_consumer")
	_ = r.Shutdown()
	<-done
}

func contextWithTimeout(d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), d)
}
