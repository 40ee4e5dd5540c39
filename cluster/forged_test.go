package cluster

import (
	"net"
	"testing"
	"time"

	"github.com/timerd/timerd/cluster/protocol"
)

// memberlistUserMsg is memberlist's message type of a user message (its
// userMsg): a plain packet [8][payload] is handed to NotifyMsg unless the
// node encrypts gossip.
const memberlistUserMsg = 8

// sendRaw sends one UDP datagram to c's gossip port from another socket, as an
// attacker on the network would.
func sendRaw(t *testing.T, c *Cluster, payload []byte) {
	t.Helper()
	conn, err := net.Dial("udp", c.LocalAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write(append([]byte{memberlistUserMsg}, payload...)); err != nil {
		t.Fatal(err)
	}
}

// The attacks of issue 10 on gossip, sent as packets over the network: the
// 27-byte watermark packet of older builds (rule 101, a slot in 2262), and a
// protocol message claiming to come from a member, recording a fire of rule
// 101 in 2262. With a gossip key neither reaches the protocol; without one
// (TIMERD_GOSSIP_INSECURE) the watermark packet is dropped as an unknown
// version and the forged record does reach the member, which refuses its
// future slot (protocol: TestFiredFutureSlotRefused and the grant check).
func TestForgedGossipPacketsChangeNothing(t *testing.T) {
	const slot2262 = int64(9_200_000_000_000_000_000)
	oldWatermark := func() []byte { // [version 1][kind 1][rule][slot][count], 26 bytes: 27 with the type byte
		b := []byte{1, 1}
		for _, v := range []int64{101, slot2262, 1} {
			for i := 7; i >= 0; i-- {
				b = append(b, byte(v>>(8*i)))
			}
		}
		return b
	}
	forgedFire := func(from string) []byte {
		m, err := protocol.Encode(protocol.Fired{From: protocol.Incarnation{Node: from, N: 1}, Seq: 1,
			Records: []protocol.FireRecord{{Rule: 101, Slot: slot2262, Count: 1, Firer: protocol.Incarnation{Node: from, N: 1}}}})
		if err != nil {
			t.Fatal(err)
		}
		return append([]byte{protocolPrefix}, m...)
	}
	for _, keyed := range []bool{true, false} {
		name := "with a gossip key"
		if !keyed {
			name = "without a key"
		}
		t.Run(name, func(t *testing.T) {
			withKey := func(c *Config) {
				if keyed {
					c.GossipKey = oldKey
				}
			}
			a, _, _, _ := pair(t, withKey, withKey)
			versionDrops := dropsOf(a, dirIn, protocol.WireUnknownVersion)
			sendRaw(t, a, oldWatermark())
			sendRaw(t, a, forgedFire("b"))
			time.Sleep(500 * time.Millisecond)
			select {
			case m := <-a.Messages():
				if keyed {
					t.Fatalf("a forged packet reached the protocol through encrypted gossip: %+v", m)
				}
				f, ok := m.(protocol.Fired)
				if !ok || len(f.Records) != 1 || f.Records[0].Slot != slot2262 {
					t.Fatalf("without a key the forged fire should reach the member (which refuses it), got %+v", m)
				}
			default:
				if !keyed {
					t.Fatalf("without a key the forged fire did not reach the member: the test sends nothing")
				}
			}
			got := dropsOf(a, dirIn, protocol.WireUnknownVersion) - versionDrops
			switch {
			case keyed && got != 0:
				t.Errorf("with a key the plain watermark packet reached NotifyMsg (%v version drops)", got)
			case !keyed && got != 1:
				t.Errorf("without a key the old watermark packet: %v version drops, want 1", got)
			}
		})
	}
}
