package node

import (
	"encoding/binary"
	"fmt"
	"io"
	"log"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/timerd/timerd/cluster/protocol"
	"github.com/timerd/timerd/store"
	"github.com/timerd/timerd/test/testkit"
)

// A node that leaves for good while the acks of its last fires are late, past its
// leave's budget (a quarter of the shutdown timeout), waits on for them before it
// retires: it leaves no fire pending in its store (a node that never starts again
// would strand it: its partitions' new holders know the slot as fired, and nobody
// delivers it), and every slot of every rule is stored once. The simulation's
// "departure" scenario checks the same over many runs (test/sim).
func TestLeaveWaitsForLateAcks(t *testing.T) {
	const (
		rules    = 20
		shutdown = 20 * time.Second // leave budget 5 s; it waits on for its fires up to 15 s
		ackDelay = 6 * time.Second
	)
	sys := startClusterAPI(t)
	slow := &slowAcks{delay: ackDelay}
	plain := func(c *Config) { c.ShutdownTimeout = shutdown }
	// a hears b's acks of its fires late once slow is on. Without compression, so that
	// a packet says what it carries.
	acc := clusterConfig()
	acc.Memberlist = slow.memberlist(t)
	a := sys.startClusterNode("a", acc, false, plain)
	bcc := clusterConfig(a.cl.LocalAddr())
	bcc.Memberlist = uncompressedMemberlist
	b := sys.startClusterNode("b", bcc, false, plain)
	ids := make([]int64, 0, rules)
	for i := range rules {
		ids = append(ids, sys.createRule(fmt.Sprintf("lv%02d", i), "core.intervaltimer", `{"interval":1}`))
	}
	nodes := []*runningNode{a, b}
	testkit.Eventually(t, 30*time.Second, "every rule run by one of a, b", func() bool { return ownedOnce(nodes, ids) })
	time.Sleep(1500 * time.Millisecond) // both fire

	t.Cleanup(func() {
		if t.Failed() { // every line of a's shutdown
			for line := range strings.SplitSeq(sys.logs.String(), "\n") {
				if strings.Contains(line, "node=a") && !strings.Contains(line, "level=DEBUG") {
					t.Log(line)
				}
			}
		}
	})
	slow.on.Store(true)
	testkit.Eventually(t, 15*time.Second, "a has fires waiting for b's late acks", func() bool {
		n, _ := a.store.PendingLen()
		return n > 0 && slow.delayed.Load() > 0
	})
	dir := filepath.Dir(a.store.Path())
	begin := time.Now()
	a.stopped.Do(func() { // a.stop, with room for the shutdown timeout
		a.cancel()
		select {
		case err := <-a.done:
			if err != nil {
				t.Errorf("node Run: %v", err)
			}
		case <-time.After(2 * shutdown):
			t.Fatalf("a did not stop within %s", 2*shutdown)
		}
	})
	took := time.Since(begin)

	st, err := store.Open(filepath.Join(dir, "node.db"), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	pending, _ := st.PendingLen()
	left, _ := st.OutboxLen()
	st.Close()
	waited := sys.logs.contains("node=a", "waiting for the last fires to reach their replicas")
	t.Logf("a stopped %s after SIGTERM; %d acks delayed by %s; waited past its budget for its fires: %v; its store after: %d pending, %d ready",
		took.Round(time.Millisecond), slow.delayed.Load(), ackDelay, waited, pending, left)
	if !waited {
		// The test's own premise: a's fires must still wait for acks when its budget ends.
		t.Errorf("a did not wait past its leave budget for fires pending replication: the acks were not late enough to test it")
	}
	if pending != 0 {
		t.Errorf("a left with %d fires pending replication in its store, want 0: they are lost if it never starts again", pending)
	}

	testkit.Eventually(t, 30*time.Second, "b delivers everything", func() bool { n, _ := b.store.OutboxLen(); return n == 0 })
	if d := counterValue(t, sys.apiReg, "timerd_api_events_duplicate_total"); d != 0 {
		t.Errorf("API dropped %v repeated slots, want 0", d)
	}
	gaps := 0
	for id, slots := range slotsByRule(t, sys.allEvents()) {
		slices.Sort(slots)
		for i := 1; i < len(slots); i++ {
			if d := time.Duration(slots[i] - slots[i-1]); d != time.Second {
				gaps++
				t.Errorf("rule %d: slots %v apart at %d of %d stored", id, d, i, len(slots))
			}
		}
	}
	t.Logf("%d rules: %d gaps between stored slots", rules, gaps)
}

// contains reports whether a line of the logs holds every one of parts.
func (l *lockedBuffer) contains(parts ...string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for line := range strings.SplitSeq(l.b.String(), "\n") {
		ok := true
		for _, p := range parts {
			if !strings.Contains(line, p) {
				ok = false
				break
			}
		}
		if ok {
			return true
		}
	}
	return false
}

func uncompressedMemberlist() *memberlist.Config {
	mc := localMemberlist()
	mc.EnableCompression = false
	return mc
}

// slowAcks holds back, while on, the FiredAck packets a node receives (the acks of its
// fires) for delay: its peers answer late, as a busy machine's would.
type slowAcks struct {
	delay   time.Duration
	on      atomic.Bool
	delayed atomic.Int64
}

// memberlist is a memberlist config whose UDP packets come through s.
func (s *slowAcks) memberlist(t *testing.T) func() *memberlist.Config {
	return func() *memberlist.Config {
		mc := uncompressedMemberlist()
		nt, err := memberlist.NewNetTransport(&memberlist.NetTransportConfig{
			BindAddrs: []string{"127.0.0.1"}, Logger: log.New(io.Discard, "", 0)})
		if err != nil {
			t.Fatal(err)
		}
		st := &slowTransport{NetTransport: nt, s: s, ch: make(chan *memberlist.Packet), done: make(chan struct{})}
		go st.relay()
		mc.Transport = st
		return mc
	}
}

// slowTransport is a NetTransport whose received packets go through slowAcks.
type slowTransport struct {
	*memberlist.NetTransport
	s        *slowAcks
	ch       chan *memberlist.Packet
	done     chan struct{}
	stopOnce sync.Once
}

func (t *slowTransport) PacketCh() <-chan *memberlist.Packet { return t.ch }

func (t *slowTransport) Shutdown() error {
	t.stopOnce.Do(func() { close(t.done) })
	return t.NetTransport.Shutdown()
}

func (t *slowTransport) relay() {
	in := t.NetTransport.PacketCh()
	for {
		select {
		case p := <-in:
			if t.s.on.Load() && carriesFiredAck(p.Buf) {
				t.s.delayed.Add(1)
				time.AfterFunc(t.s.delay, func() { t.forward(p) })
				continue
			}
			t.forward(p)
		case <-t.done:
			return
		}
	}
}

func (t *slowTransport) forward(p *memberlist.Packet) {
	select {
	case t.ch <- p:
	case <-t.done:
	}
}

// memberlist's packet framing (v0.7.0, net.go): a type byte; a CRC header wraps a
// packet, a compound packet holds several.
const (
	mlCompoundMsg = 7
	mlUserMsg     = 8
	mlHasCrcMsg   = 12
	protoPrefix   = 'P' // cluster/transport.go
)

// carriesFiredAck reports whether an unencrypted, uncompressed memberlist packet holds a
// protocol FiredAck.
func carriesFiredAck(b []byte) bool {
	if len(b) >= 5 && b[0] == mlHasCrcMsg {
		b = b[5:]
	}
	if len(b) < 1 {
		return false
	}
	switch b[0] {
	case mlUserMsg:
		if len(b) < 2 || b[1] != protoPrefix {
			return false
		}
		m, err := protocol.Decode(b[2:])
		_, ack := m.(protocol.FiredAck)
		return err == nil && ack
	case mlCompoundMsg:
		if len(b) < 2 {
			return false
		}
		n := int(b[1])
		lens, body := b[2:], b[2+2*n:]
		if len(b) < 2+2*n {
			return false
		}
		for i := range n {
			l := int(binary.BigEndian.Uint16(lens[2*i:]))
			if l > len(body) {
				return false
			}
			if carriesFiredAck(body[:l]) {
				return true
			}
			body = body[l:]
		}
	}
	return false
}
