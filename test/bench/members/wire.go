package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/timerd/timerd/cluster/protocol"
	"github.com/timerd/timerd/test/internal/procstat"
)

// wireRow is one protocol message's size: encoded (protocol.Encode), and as the
// sender's socket writes it (memberlist's framing and, with a key, its encryption),
// measured by sending it.
type wireRow struct {
	What    string
	Encoded int
	OnWire  float64 // bytes the sender's socket wrote per message (UDP or TCP)
	Per     int     // what the message carries (records, watermarks), to divide by
	// CPU is this process's CPU per message: both ends (encode, compress, encrypt, the
	// sockets, decrypt, decompress, decode), and the pair's probes, noise.
	CPU time.Duration
}

// nodeName is a node name of a typical length (a StatefulSet's pod).
const nodeName = "timerd-42"

// wireMessages is a typical message of each kind on the fire path and in leases.
func wireMessages() []struct {
	what string
	m    protocol.Message
	per  int
} {
	now := time.Now().UnixNano()
	from := protocol.Incarnation{Node: nodeName, N: 7}
	to := protocol.Incarnation{Node: "timerd-43", N: 3}
	epoch := protocol.Epoch{N: 12, Node: nodeName}
	// Rule ids of a catalogue of 10,000,000, slots on whole seconds of the last hour
	// (interval rules, phases of their creation), periods of a minute to an hour:
	// what memberlist's compression (on in its LAN config) finds in real records.
	rng := rand.New(rand.NewPCG(15, 15))
	periods := []int64{60, 300, 900, 3600}
	slot := func() int64 { return (now/1e9 - rng.Int64N(3600)) * 1e9 }
	records := func(n int) []protocol.FireRecord {
		rs := make([]protocol.FireRecord, n)
		for i := range rs {
			s := slot()
			rs[i] = protocol.FireRecord{Rule: 1 + rng.Int64N(10_000_000), Prev: s - periods[rng.IntN(len(periods))]*1e9,
				Slot: s, Count: 1 + rng.Uint64N(100_000), Firer: from, Epoch: epoch}
		}
		return rs
	}
	watermarks := func(n int) []protocol.Watermark {
		ws := make([]protocol.Watermark, n)
		for i := range ws {
			s := slot()
			ws[i] = protocol.Watermark{Rule: 1 + rng.Int64N(10_000_000), Slot: s, Count: 1 + rng.Uint64N(100_000),
				Chain: protocol.Chain{{From: s - 86400e9, Last: s, Firer: from, Epoch: epoch}}}
		}
		return ws
	}
	return []struct {
		what string
		m    protocol.Message
		per  int
	}{
		{"Heartbeat", protocol.Heartbeat{From: from, Seq: 123456, Expect: 100, Wall: now}, 1},
		{"HeartbeatAck", protocol.HeartbeatAck{From: to, To: from, Seq: 123456, Wall: now, Echo: now}, 1},
		{"Fired, 1 record", protocol.Fired{From: from, Seq: 99, Records: records(1)}, 1},
		{"Fired, 16 records", protocol.Fired{From: from, Seq: 99, Records: records(16)}, 16},
		{"FiredAck", protocol.FiredAck{From: to, To: from, Seq: 99}, 1},
		{"Transfer, 500 watermarks", protocol.Transfer{From: from, ID: 1, Chunk: 0, Chunks: 1, Watermarks: watermarks(500)}, 500},
	}
}

// wireCost sends each message count times from one member of a pair to the other and
// reads the bytes the sender's socket wrote: memberlist's probes between the two (one a
// second, about a hundred bytes) are noise under a percent.
func wireCost(ctx context.Context, encrypt bool, count int) ([]wireRow, error) {
	s, err := newSim(config{N: 2, Seeds: 1, Profile: "lan", Encrypt: encrypt, Timeout: 30 * time.Second})
	if err != nil {
		return nil, err
	}
	// Addresses apart from the simulation's members (127.0.250.x).
	a, err := s.startAt(ctx, "wire-a", "127.0.250.2:0", nil)
	if err != nil {
		return nil, err
	}
	defer func() { _ = a.c.Shutdown() }()
	b, err := s.startAt(ctx, "wire-b", "127.0.250.3:0", []string{a.c.LocalAddr()})
	if err != nil {
		return nil, err
	}
	defer func() { _ = b.c.Shutdown() }()
	go func() { // the receiver's reader: keep its buffer from filling
		for range b.c.Messages() {
		}
	}()
	for !slicesHas(a.c.Known(), "wire-b") {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		time.Sleep(10 * time.Millisecond)
	}
	var rows []wireRow
	for _, wm := range wireMessages() {
		enc, err := protocol.Encode(wm.m)
		if err != nil {
			return nil, fmt.Errorf("encode %s: %w", wm.what, err)
		}
		n := count
		if len(enc) > 1300 { // TCP: fewer, within the peer's queue of 64
			n = 32
		}
		before := a.c.NetBytes().Sent()
		cpu0, _ := procstat.Read(osPid)
		for range n {
			if err := a.c.Send("wire-b", wm.m); err != nil {
				return nil, fmt.Errorf("send %s: %w", wm.what, err)
			}
		}
		// The TCP sender drains its queue in the background: wait until it is written.
		sent := uint64(0)
		for {
			time.Sleep(200 * time.Millisecond)
			now := a.c.NetBytes().Sent() - before
			if now == sent {
				break
			}
			sent = now
		}
		cpu1, _ := procstat.Read(osPid)
		rows = append(rows, wireRow{What: wm.what, Encoded: len(enc), OnWire: float64(sent) / float64(n), Per: wm.per,
			CPU: (cpu1.CPU - cpu0.CPU) / time.Duration(n)})
	}
	return rows, nil
}

func slicesHas(xs []string, x string) bool {
	for _, y := range xs {
		if y == x {
			return true
		}
	}
	return false
}
