package protocol

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
)

// Wire format of the protocol's messages, carried by memberlist: Heartbeat,
// HeartbeatAck, Fired, FiredAck and Retired in UDP packets, Acquire, Grant, Offer and
// OfferReply over TCP (they can be megabytes).
//
// A message is [wire version][kind][body]. In the body, fixed-size numbers are
// big-endian (uint64 and int64 in 8 bytes; partitions, record indices and Expect in 4
// bytes, 0..math.MaxInt32; a Verdict in one byte); counts and name tags are uvarints.
//
// Node names are interned per message: a name is a uvarint tag, len<<1|1 followed by
// len bytes for a name that is new in the message (the table of names grows by it), or
// i<<1 for the i-th name of the table. The sender's name comes first, so every later
// mention of it (the firer of each of its fire records, the node of each of its
// epochs) is one byte, and Decode allocates each name once per message.
//
//	Incarnation     name, N uint64
//	Epoch           N uint64, name
//	PartitionEpoch  partition uint32, Epoch
//	Point           From int64, Last int64, Firer Incarnation, Epoch
//	Watermark       Rule int64, Slot int64, Count uint64, count, Point…   (count ≤ ChainLen)
//	FireRecord      Rule int64, Prev int64, Slot int64, Count uint64, Firer Incarnation, Epoch
//	EventRef        Rule int64, Prev int64, Slot int64, Count uint64, Firer Incarnation
//
//	1 Heartbeat     From, Seq uint64, Expect uint32, Replicas uint32 (version 2 on), Wall int64, count, (name, uint64)… by name, ascending
//	2 HeartbeatAck  From, To, Seq uint64, flags byte (1 Fenced, 2 Mismatch), Wall int64, Echo int64
//	3 Acquire       From, ID uint64, count, PartitionEpoch…
//	4 Grant         From, To, ID uint64, count, partition…, count, PartitionEpoch…, count, name…, count, Watermark…
//	5 Fired         From, Seq uint64, count, FireRecord…
//	6 FiredAck      From, To, Seq uint64, count, index uint32…
//	7 Offer         From, ID uint64, count, EventRef…
//	8 OfferReply    From, To, ID uint64, count, EventRef…, count, Verdict byte…, count, Epoch…
//	9 Retired       From, flags byte (1 Clean)
//	10 Handover     From, ID uint64, count, (key, Rule int64, Slot int64, body)…
//	11 HandoverAck  From, To, ID uint64
//	12 Transfer     From, ID uint64, Chunk uint32, Chunks uint32, count, PartitionEpoch…, count, Watermark…
//	13 TransferAck  From, To, ID uint64, Chunk uint32
//
// Decode returns nil for every empty slice and map, and Encode writes nil and empty
// alike: a message that went over the wire compares equal to the one sent once its
// empty slices and maps are nil.
//
// Kinds are never reused. A new field or message is a new wire version (§10 of
// docs/protocol.md): a node reads its own version and the one before, and writes to a
// peer the lower of its own and the newest the peer reads (its node meta says:
// cluster/meta.go), so that a rolling upgrade never sends a message the old nodes
// cannot read. Version 2 added a Heartbeat's Replicas; a version 1 heartbeat is of a
// build that always wrote to a quorum (Replicas 0).

// WireVersion is the version Encode writes, and the newest Decode reads.
const WireVersion = 2

// MinWireVersion is the oldest version EncodeVersion writes and Decode reads.
const MinWireVersion = 1

// Message kinds, the second byte of a message.
const (
	kindHeartbeat byte = iota + 1
	kindHeartbeatAck
	kindAcquire
	kindGrant
	kindFired
	kindFiredAck
	kindOffer
	kindOfferReply
	kindRetired
	kindHandover
	kindHandoverAck
	kindTransfer
	kindTransferAck
)

// Bounds of what a message may hold. A message beyond them is refused, by Encode and
// by Decode, before anything is allocated for it.
const (
	maxNameLen  = 512     // bytes of a node name (cluster.maxNameLen)
	maxKeyLen   = 256     // bytes of an idempotency key
	maxBodyLen  = 1 << 20 // bytes of a handed-over event's body
	maxItems    = 1 << 20 // records, partitions, watermarks, names… of one list
	maxSmallInt = math.MaxInt32
)

// Least encoded sizes, to check a claimed count against the bytes left.
const (
	minName           = 1
	minIncarnation    = minName + 8
	minEpoch          = 8 + minName
	minPartitionEpoch = 4 + minEpoch
	minPoint          = 8 + 8 + minIncarnation + minEpoch
	minWatermark      = 8 + 8 + 8 + 1
	minFireRecord     = 4*8 + minIncarnation + minEpoch
	minEventRef       = 4*8 + minIncarnation
	minFence          = minName + 8
)

// packetBudget is what a UDP packet may carry of a message: memberlist's 1400 bytes less
// what memberlist and its encryption add (cluster/config.go, packetOverhead).
const packetBudget = 1400 - 64

// fireRecordLen is the size of a fire record whose firer and epoch name one of the first
// 64 names of the message (one byte each), such as the sender's node.
const fireRecordLen = 4*8 + (1 + 8) + (8 + 1)

// firedHeaderMax is the most a Fired takes besides its records (of fewer than 128):
// version, kind, From with a name of maxNameLen bytes, Seq, the records' count.
const firedHeaderMax = 2 + (2 + maxNameLen + 8) + 8 + 1

// MaxFiredRecordsPerPacket is how many fire records a Fired may hold to fit in one UDP
// packet whatever the sender's name (up to 512 bytes), when its records name only the
// sender's node as firer and as the node of their epochs: what a node sends of its own
// fires. Each other node a Fired names adds its name, once, to the message (at most 514
// bytes): the sender checks the encoded size and sends a larger message over TCP.
const MaxFiredRecordsPerPacket = (packetBudget - firedHeaderMax) / fireRecordLen

// Reasons of wire errors (WireReason), for a metric's label.
const (
	WireMalformed      = "malformed" // not a message: truncated, trailing bytes, unknown kind, bad name tag
	WireUnknownVersion = "version"   // a wire version this node does not read
	WireInvalid        = "invalid"   // a value outside its range: a negative partition, a verdict
	WireTooLarge       = "too_large" // a name, list or chain beyond its bound
)

// ErrWire matches (errors.Is) every error of Encode and Decode.
var ErrWire = errors.New("protocol wire")

// wireError is a message that cannot be encoded or was dropped, with the metric reason.
type wireError struct{ reason, detail string }

func (e *wireError) Error() string        { return "protocol wire: " + e.reason + ": " + e.detail }
func (e *wireError) Is(target error) bool { return target == ErrWire }

// WireReason is the reason of an error of Encode or Decode, for a metric's label:
// WireMalformed, WireUnknownVersion, WireInvalid or WireTooLarge; "" for any other error.
func WireReason(err error) string {
	if we, ok := errors.AsType[*wireError](err); ok {
		return we.reason
	}
	return ""
}

// Encode writes m in the wire format of WireVersion. It refuses (ErrWire) what Decode
// would refuse: a name, list or chain beyond its bound, a value outside its range, a
// message type it has no kind for.
func Encode(m Message) ([]byte, error) { return EncodeVersion(m, WireVersion) }

// EncodeVersion is Encode in the wire format of version v, MinWireVersion through
// WireVersion, for a peer that reads no newer one: what v has no field for is left out
// (a version 1 heartbeat has no Replicas).
func EncodeVersion(m Message, v byte) ([]byte, error) {
	if v < MinWireVersion || v > WireVersion {
		return nil, &wireError{WireUnknownVersion, fmt.Sprintf("version %d, this node writes %d to %d", v, MinWireVersion, WireVersion)}
	}
	e := encoders.Get().(*encoder)
	defer e.release()
	e.version = v
	hint := sizeHint(m)
	big := hint > bigMessage
	if big {
		// Encoded in a buffer of its own that is returned as it is: no copy of a
		// megabyte, and no megabyte kept in the pool.
		e.b = make([]byte, 0, hint+hint/16+1024)
	} else {
		e.b = slices.Grow(e.b, hint)
	}
	e.b = append(e.b, v)
	switch m := m.(type) {
	case Heartbeat:
		e.heartbeat(m)
	case HeartbeatAck:
		e.heartbeatAck(m)
	case Acquire:
		e.acquire(m)
	case Grant:
		e.grant(m)
	case Fired:
		e.fired(m)
	case FiredAck:
		e.firedAck(m)
	case Offer:
		e.offer(m)
	case OfferReply:
		e.offerReply(m)
	case Retired:
		e.b = append(e.b, kindRetired)
		e.incarnation(m.From)
		var flags byte
		if m.Clean {
			flags |= retiredClean
		}
		e.u8(flags)
	case Handover:
		e.handover(m)
	case HandoverAck:
		e.u8(kindHandoverAck)
		e.incarnation(m.From)
		e.incarnation(m.To)
		e.u64(m.ID)
	case Transfer:
		if m.Chunk < 0 || m.Chunk >= m.Chunks {
			return nil, &wireError{WireInvalid, fmt.Sprintf("Transfer: chunk %d of %d", m.Chunk, m.Chunks)}
		}
		e.u8(kindTransfer)
		e.incarnation(m.From)
		e.u64(m.ID)
		e.small(m.Chunk, "Transfer.Chunk")
		e.small(m.Chunks, "Transfer.Chunks")
		e.partitionEpochs(m.Epochs, "Transfer.Epochs")
		e.watermarks(m.Watermarks, "Transfer.Watermarks")
	case TransferAck:
		e.u8(kindTransferAck)
		e.incarnation(m.From)
		e.incarnation(m.To)
		e.u64(m.ID)
		e.small(m.Chunk, "TransferAck.Chunk")
	default:
		return nil, &wireError{WireInvalid, fmt.Sprintf("no wire kind for message type %T", m)}
	}
	if e.err != nil {
		return nil, e.err
	}
	if big {
		b := e.b
		e.b = nil
		return b, nil
	}
	return slices.Clone(e.b), nil
}

// bigMessage is the size hint above which Encode does not use a pooled buffer.
const bigMessage = 64 << 10

// sizeHint is about the size of m's encoding: its lists at their least sizes (a name
// mentioned before is one byte) plus the names that are likely new.
func sizeHint(m Message) int {
	const base = 2 + 2*(2+maxNameLen+8) + 3*8 + 8
	switch m := m.(type) {
	case Heartbeat:
		return base + len(m.Fences)*(minFence+16)
	case Acquire:
		return base + len(m.Parts)*minPartitionEpoch
	case Grant:
		n := base + 3*4 + len(m.Granted)*4 + len(m.Refused)*minPartitionEpoch + watermarksHint(m.Watermarks)
		for _, node := range m.Members {
			n += 2 + len(node.Node) + 8
		}
		return n
	case Transfer:
		return base + 2*4 + len(m.Epochs)*minPartitionEpoch + watermarksHint(m.Watermarks)
	case Fired:
		return base + len(m.Records)*minFireRecord
	case FiredAck:
		return base + len(m.Refused)*4
	case Offer:
		return base + len(m.Events)*minEventRef
	case OfferReply:
		return base + 3*4 + len(m.Events)*minEventRef + len(m.Verdicts) + len(m.Epochs)*minEpoch
	case Handover:
		n := base + 4
		for _, ev := range m.Events {
			n += 2*4 + 16 + len(ev.Key) + len(ev.Body)
		}
		return n
	}
	return base
}

func watermarksHint(ws []Watermark) int {
	n := len(ws) * minWatermark
	for _, w := range ws {
		n += len(w.Chain) * minPoint
	}
	return n
}

// Encoders are reused: Encode allocates the message it returns and nothing else.
var encoders = sync.Pool{New: func() any { return new(encoder) }}

// linearNames is how many names an encoder looks up by scanning before it keeps an index.
const linearNames = 16

type encoder struct {
	version byte // the wire version written
	b       []byte
	names   []string       // the message's table of names, in order
	index   map[string]int // of names, once it has more than linearNames
	keys    []string       // scratch for the fences in name order
	err     error
}

func (e *encoder) release() {
	if cap(e.b) > 2*bigMessage {
		e.b = nil // keep no large buffer alive in the pool
	} else {
		e.b = e.b[:0]
	}
	clear(e.names)
	e.names = e.names[:0]
	clear(e.index)
	clear(e.keys)
	e.keys = e.keys[:0]
	e.err = nil
	encoders.Put(e)
}

func (e *encoder) fail(reason, format string, args ...any) {
	if e.err == nil {
		e.err = &wireError{reason, fmt.Sprintf(format, args...)}
	}
}

func (e *encoder) u8(v byte)    { e.b = append(e.b, v) }
func (e *encoder) u64(v uint64) { e.b = binary.BigEndian.AppendUint64(e.b, v) }
func (e *encoder) i64(v int64)  { e.b = binary.BigEndian.AppendUint64(e.b, uint64(v)) }

// small writes a partition, a record index or Expect: 0..math.MaxInt32 in 4 bytes.
func (e *encoder) small(v int, what string) {
	if v < 0 || v > maxSmallInt {
		e.fail(WireInvalid, "%s %d: outside 0..%d", what, v, maxSmallInt)
		return
	}
	e.b = binary.BigEndian.AppendUint32(e.b, uint32(v))
}

// count writes the length of a list, and reports whether to write its items: not
// after an error.
func (e *encoder) count(n int, what string) bool {
	if n > maxItems {
		e.fail(WireTooLarge, "%s: %d items, at most %d", what, n, maxItems)
	}
	e.b = binary.AppendUvarint(e.b, uint64(n))
	return e.err == nil
}

func (e *encoder) name(s string) {
	if len(s) > maxNameLen {
		e.fail(WireTooLarge, "name of %d bytes, at most %d", len(s), maxNameLen)
		return
	}
	if i, ok := e.lookup(s); ok {
		e.b = binary.AppendUvarint(e.b, uint64(i)<<1)
		return
	}
	e.b = binary.AppendUvarint(e.b, uint64(len(s))<<1|1)
	e.b = append(e.b, s...)
	e.names = append(e.names, s)
	switch n := len(e.names); {
	case n == linearNames+1:
		if e.index == nil {
			e.index = make(map[string]int, 2*linearNames)
		}
		for i, s := range e.names {
			e.index[s] = i
		}
	case n > linearNames+1:
		e.index[s] = n - 1
	}
}

func (e *encoder) lookup(s string) (int, bool) {
	if len(e.names) > linearNames {
		i, ok := e.index[s]
		return i, ok
	}
	for i, n := range e.names {
		if n == s {
			return i, true
		}
	}
	return 0, false
}

func (e *encoder) incarnation(i Incarnation) {
	e.name(i.Node)
	e.u64(i.N)
}

func (e *encoder) epoch(ep Epoch) {
	e.u64(ep.N)
	e.name(ep.Node)
}

func (e *encoder) partitionEpochs(pes []PartitionEpoch, what string) {
	if !e.count(len(pes), what) {
		return
	}
	for _, pe := range pes {
		e.small(pe.Partition, "partition")
		e.epoch(pe.Epoch)
	}
}

func (e *encoder) eventRef(r EventRef) {
	e.i64(r.Rule)
	e.i64(r.Prev)
	e.i64(r.Slot)
	e.u64(r.Count)
	e.incarnation(r.Firer)
}

func (e *encoder) heartbeat(m Heartbeat) {
	e.u8(kindHeartbeat)
	e.incarnation(m.From)
	e.u64(m.Seq)
	e.small(m.Expect, "Heartbeat.Expect")
	if e.version >= 2 {
		e.small(m.Replicas, "Heartbeat.Replicas")
	}
	e.i64(m.Wall)
	var flags byte
	if m.Leaving {
		flags |= hbLeaving
	}
	e.u8(flags)
	e.count(len(m.Fences), "Heartbeat.Fences")
	if e.err != nil {
		return
	}
	for node := range m.Fences {
		e.keys = append(e.keys, node)
	}
	slices.Sort(e.keys)
	for _, node := range e.keys {
		e.name(node)
		e.u64(m.Fences[node])
	}
}

func (e *encoder) heartbeatAck(m HeartbeatAck) {
	e.u8(kindHeartbeatAck)
	e.incarnation(m.From)
	e.incarnation(m.To)
	e.u64(m.Seq)
	var flags byte
	if m.Fenced {
		flags |= ackFenced
	}
	if m.Mismatch {
		flags |= ackMismatch
	}
	e.u8(flags)
	e.i64(m.Wall)
	e.i64(m.Echo)
}

// Flags of a Heartbeat and of a Retired.
const (
	hbLeaving    = 1
	retiredClean = 1
	hbFlags      = hbLeaving
	retiredFlags = retiredClean
)

// Flags of a HeartbeatAck.
const (
	ackFenced   = 1
	ackMismatch = 2
	ackFlags    = ackFenced | ackMismatch
)

func (e *encoder) acquire(m Acquire) {
	e.u8(kindAcquire)
	e.incarnation(m.From)
	e.u64(m.ID)
	e.partitionEpochs(m.Parts, "Acquire.Parts")
}

func (e *encoder) grant(m Grant) {
	e.u8(kindGrant)
	e.incarnation(m.From)
	e.incarnation(m.To)
	e.u64(m.ID)
	if !e.count(len(m.Granted), "Grant.Granted") {
		return
	}
	for _, p := range m.Granted {
		e.small(p, "partition")
	}
	e.partitionEpochs(m.Refused, "Grant.Refused")
	if !e.count(len(m.Members), "Grant.Members") {
		return
	}
	for _, n := range m.Members {
		e.incarnation(n)
	}
	e.watermarks(m.Watermarks, "Grant.Watermarks")
}

func (e *encoder) watermarks(ws []Watermark, what string) {
	if !e.count(len(ws), what) {
		return
	}
	for _, w := range ws {
		if e.err != nil {
			return
		}
		e.i64(w.Rule)
		e.i64(w.Slot)
		e.u64(w.Count)
		if len(w.Chain) > ChainLen {
			e.fail(WireTooLarge, "rule %d: chain of %d points, at most %d", w.Rule, len(w.Chain), ChainLen)
			return
		}
		e.b = binary.AppendUvarint(e.b, uint64(len(w.Chain)))
		for _, p := range w.Chain {
			e.i64(p.From)
			e.i64(p.Last)
			e.incarnation(p.Firer)
			e.epoch(p.Epoch)
		}
	}
}

func (e *encoder) fired(m Fired) {
	e.u8(kindFired)
	e.incarnation(m.From)
	e.u64(m.Seq)
	if !e.count(len(m.Records), "Fired.Records") {
		return
	}
	for _, r := range m.Records {
		e.i64(r.Rule)
		e.i64(r.Prev)
		e.i64(r.Slot)
		e.u64(r.Count)
		e.incarnation(r.Firer)
		e.epoch(r.Epoch)
	}
}

func (e *encoder) firedAck(m FiredAck) {
	e.u8(kindFiredAck)
	e.incarnation(m.From)
	e.incarnation(m.To)
	e.u64(m.Seq)
	if !e.count(len(m.Refused), "FiredAck.Refused") {
		return
	}
	for _, i := range m.Refused {
		e.small(i, "record index")
	}
}

func (e *encoder) handover(m Handover) {
	e.u8(kindHandover)
	e.incarnation(m.From)
	e.u64(m.ID)
	if !e.count(len(m.Events), "Handover.Events") {
		return
	}
	for _, ev := range m.Events {
		if len(ev.Key) > maxKeyLen || len(ev.Body) > maxBodyLen {
			e.fail(WireTooLarge, "handed event of rule %d: key of %d bytes, body of %d", ev.Rule, len(ev.Key), len(ev.Body))
			return
		}
		e.blob([]byte(ev.Key))
		e.i64(ev.Rule)
		e.i64(ev.Slot)
		e.blob(ev.Body)
	}
}

// blob writes a length-prefixed byte string.
func (e *encoder) blob(b []byte) {
	e.b = binary.AppendUvarint(e.b, uint64(len(b)))
	e.b = append(e.b, b...)
}

func (e *encoder) offer(m Offer) {
	e.u8(kindOffer)
	e.incarnation(m.From)
	e.u64(m.ID)
	if !e.count(len(m.Events), "Offer.Events") {
		return
	}
	for _, r := range m.Events {
		e.eventRef(r)
	}
}

func (e *encoder) offerReply(m OfferReply) {
	e.u8(kindOfferReply)
	e.incarnation(m.From)
	e.incarnation(m.To)
	e.u64(m.ID)
	if !e.count(len(m.Events), "OfferReply.Events") {
		return
	}
	for _, r := range m.Events {
		e.eventRef(r)
	}
	if !e.count(len(m.Verdicts), "OfferReply.Verdicts") {
		return
	}
	for _, v := range m.Verdicts {
		if v > Unknown {
			e.fail(WireInvalid, "verdict %d", v)
		}
		e.u8(byte(v))
	}
	if !e.count(len(m.Epochs), "OfferReply.Epochs") {
		return
	}
	for _, ep := range m.Epochs {
		e.epoch(ep)
	}
}

// Decode reads a message written by Encode of this wire version or the one before. It
// checks the whole message before returning it, never panics, and allocates nothing for
// a claimed count or length that the bytes left cannot hold. Its errors match ErrWire;
// WireReason says why.
func Decode(b []byte) (Message, error) {
	if len(b) < 2 {
		return nil, &wireError{WireMalformed, fmt.Sprintf("%d bytes", len(b))}
	}
	// Versions differ only in the fields a version added (the decoder asks its
	// version where one did).
	if b[0] < MinWireVersion || b[0] > WireVersion {
		return nil, &wireError{WireUnknownVersion, fmt.Sprintf("version %d, this node reads %d to %d", b[0], MinWireVersion, WireVersion)}
	}
	return decodeBody(b[0], b[1], b[2:])
}

// decodeBody reads the body of a message of version v.
func decodeBody(v, kind byte, body []byte) (Message, error) {
	d := decoder{b: body, version: v}
	var m Message
	switch kind {
	case kindHeartbeat:
		m = d.heartbeat()
	case kindHeartbeatAck:
		m = d.heartbeatAck()
	case kindAcquire:
		m = d.acquire()
	case kindGrant:
		m = d.grant()
	case kindFired:
		m = d.fired()
	case kindFiredAck:
		m = d.firedAck()
	case kindOffer:
		m = d.offer()
	case kindOfferReply:
		m = d.offerReply()
	case kindHandover:
		m = d.handover()
	case kindHandoverAck:
		m = HandoverAck{From: d.incarnation(), To: d.incarnation(), ID: d.u64("id")}
	case kindTransfer:
		t := Transfer{From: d.incarnation(), ID: d.u64("id"), Chunk: d.small("chunk"), Chunks: d.small("chunks")}
		t.Epochs = d.partitionEpochs("Transfer.Epochs")
		t.Watermarks = d.watermarks("Transfer.Watermarks")
		if d.err == nil && t.Chunk >= t.Chunks {
			d.fail(WireInvalid, "chunk %d of %d", t.Chunk, t.Chunks)
		}
		m = t
	case kindTransferAck:
		m = TransferAck{From: d.incarnation(), To: d.incarnation(), ID: d.u64("id"), Chunk: d.small("chunk")}
	case kindRetired:
		r := Retired{From: d.incarnation()}
		flags := d.u8("flags")
		if flags&^retiredFlags != 0 {
			d.fail(WireMalformed, "flags %#x", flags)
		}
		r.Clean = flags&retiredClean != 0
		m = r
	default:
		return nil, &wireError{WireMalformed, fmt.Sprintf("kind %d", kind)}
	}
	if d.err == nil && len(d.b) > 0 {
		d.fail(WireMalformed, "%d bytes after the message", len(d.b))
	}
	if d.err != nil {
		return nil, d.err
	}
	return m, nil
}

// decoder reads a message's body. After its first error it reads zeros and empty
// lists, so a decoding function reads on and the caller checks err once.
type decoder struct {
	version byte   // the message's wire version
	b       []byte // what is left
	// The message's table of names: the first ones in first, the others in more (a
	// slice of an array of the decoder would make every decoder escape to the heap).
	first  [8]string
	nfirst int
	more   []string
	err    error
}

func (d *decoder) fail(reason, format string, args ...any) {
	if d.err == nil {
		d.err = &wireError{reason, fmt.Sprintf(format, args...)}
	}
	d.b = nil
}

func (d *decoder) need(n int, what string) bool {
	if len(d.b) < n {
		d.fail(WireMalformed, "%s: truncated", what)
		return false
	}
	return true
}

// fixed returns the next n bytes, or nil after an error.
func (d *decoder) fixed(n int, what string) []byte {
	if !d.need(n, what) {
		return nil
	}
	b := d.b[:n:n]
	d.b = d.b[n:]
	return b
}

func (d *decoder) u8(what string) byte {
	if !d.need(1, what) {
		return 0
	}
	v := d.b[0]
	d.b = d.b[1:]
	return v
}

func (d *decoder) u64(what string) uint64 {
	if !d.need(8, what) {
		return 0
	}
	v := binary.BigEndian.Uint64(d.b)
	d.b = d.b[8:]
	return v
}

func (d *decoder) i64(what string) int64 { return int64(d.u64(what)) }

func (d *decoder) small(what string) int {
	if !d.need(4, what) {
		return 0
	}
	v := binary.BigEndian.Uint32(d.b)
	d.b = d.b[4:]
	if v > maxSmallInt {
		d.fail(WireInvalid, "%s %d: outside 0..%d", what, v, maxSmallInt)
		return 0
	}
	return int(v)
}

func (d *decoder) uvarint(what string) uint64 {
	if len(d.b) > 0 && d.b[0] < 0x80 {
		v := d.b[0]
		d.b = d.b[1:]
		return uint64(v)
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail(WireMalformed, "%s: bad uvarint", what)
		return 0
	}
	d.b = d.b[n:]
	return v
}

// count reads the length of a list whose items take at least min bytes each, and
// checks it against its bound and the bytes left before anything is allocated for it.
func (d *decoder) count(min int, what string) int {
	n := d.uvarint(what)
	switch {
	case d.err != nil:
		return 0
	case n > maxItems:
		d.fail(WireTooLarge, "%s: %d items, at most %d", what, n, maxItems)
		return 0
	case int(n)*min > len(d.b):
		d.fail(WireMalformed, "%s: %d items in %d bytes", what, n, len(d.b))
		return 0
	}
	return int(n)
}

func (d *decoder) name() string {
	tag := d.uvarint("name")
	switch {
	case d.err != nil:
		return ""
	case tag&1 == 0:
		i := tag >> 1
		switch {
		case i < uint64(d.nfirst):
			return d.first[i]
		case i-uint64(len(d.first)) < uint64(len(d.more)):
			return d.more[i-uint64(len(d.first))]
		}
		d.fail(WireMalformed, "name %d of %d", i, d.nfirst+len(d.more))
		return ""
	}
	n := tag >> 1
	if n > maxNameLen {
		d.fail(WireTooLarge, "name of %d bytes, at most %d", n, maxNameLen)
		return ""
	}
	if !d.need(int(n), "name") {
		return ""
	}
	s := string(d.b[:n])
	d.b = d.b[n:]
	if d.nfirst < len(d.first) {
		d.first[d.nfirst] = s
		d.nfirst++
	} else {
		d.more = append(d.more, s)
	}
	return s
}

func (d *decoder) incarnation() Incarnation {
	node := d.name()
	return Incarnation{Node: node, N: d.u64("incarnation")}
}

func (d *decoder) epoch() Epoch {
	n := d.u64("epoch")
	return Epoch{N: n, Node: d.name()}
}

func (d *decoder) partitionEpochs(what string) []PartitionEpoch {
	n := d.count(minPartitionEpoch, what)
	if n == 0 {
		return nil
	}
	pes := make([]PartitionEpoch, n)
	for i := range pes {
		pes[i].Partition = d.small("partition")
		pes[i].Epoch = d.epoch()
	}
	return pes
}

func (d *decoder) eventRefs(what string) []EventRef {
	n := d.count(minEventRef, what)
	if n == 0 {
		return nil
	}
	rs := make([]EventRef, n)
	for i := range rs {
		r := &rs[i]
		if b := d.fixed(32, "event"); b != nil {
			r.Rule = int64(binary.BigEndian.Uint64(b))
			r.Prev = int64(binary.BigEndian.Uint64(b[8:]))
			r.Slot = int64(binary.BigEndian.Uint64(b[16:]))
			r.Count = binary.BigEndian.Uint64(b[24:])
		}
		r.Firer = d.incarnation()
	}
	return rs
}

func (d *decoder) heartbeat() Heartbeat {
	m := Heartbeat{From: d.incarnation(), Seq: d.u64("seq"), Expect: d.small("expect")}
	if d.version >= 2 {
		m.Replicas = d.small("replicas")
	}
	m.Wall = d.i64("wall")
	flags := d.u8("flags")
	if flags&^hbFlags != 0 {
		d.fail(WireMalformed, "flags %#x", flags)
	}
	m.Leaving = flags&hbLeaving != 0
	n := d.count(minFence, "Heartbeat.Fences")
	if n == 0 {
		return m
	}
	m.Fences = make(map[string]uint64, n)
	prev := ""
	for i := range n {
		node := d.name()
		if i > 0 && node <= prev && d.err == nil {
			d.fail(WireMalformed, "fences not in ascending order of name")
		}
		prev = node
		m.Fences[node] = d.u64("fence")
	}
	return m
}

func (d *decoder) heartbeatAck() HeartbeatAck {
	m := HeartbeatAck{From: d.incarnation(), To: d.incarnation(), Seq: d.u64("seq")}
	flags := d.u8("flags")
	if flags&^ackFlags != 0 {
		d.fail(WireMalformed, "flags %#x", flags)
	}
	m.Fenced, m.Mismatch = flags&ackFenced != 0, flags&ackMismatch != 0
	m.Wall, m.Echo = d.i64("wall"), d.i64("echo")
	return m
}

func (d *decoder) acquire() Acquire {
	return Acquire{From: d.incarnation(), ID: d.u64("id"), Parts: d.partitionEpochs("Acquire.Parts")}
}

func (d *decoder) grant() Grant {
	m := Grant{From: d.incarnation(), To: d.incarnation(), ID: d.u64("id")}
	if n := d.count(4, "Grant.Granted"); n > 0 {
		m.Granted = make([]int, n)
		for i := range m.Granted {
			m.Granted[i] = d.small("partition")
		}
	}
	m.Refused = d.partitionEpochs("Grant.Refused")
	if n := d.count(minIncarnation, "Grant.Members"); n > 0 {
		m.Members = make([]Incarnation, n)
		for i := range m.Members {
			m.Members[i] = d.incarnation()
		}
	}
	m.Watermarks = d.watermarks("Grant.Watermarks")
	return m
}

func (d *decoder) watermarks(what string) []Watermark {
	n := d.count(minWatermark, what)
	if n == 0 {
		return nil
	}
	ws := make([]Watermark, n)
	// The chains share one array: a grant of 10,000 rules is a few allocations, not
	// 10,000. It grows as points come (its first size is bounded by the bytes left).
	pts := make([]Point, 0, min(len(d.b)/minPoint, 2*n))
	for i := range ws {
		w := &ws[i]
		w.Rule, w.Slot, w.Count = d.i64("rule"), d.i64("slot"), d.u64("count")
		c := d.uvarint("chain")
		if c > ChainLen && d.err == nil {
			d.fail(WireTooLarge, "rule %d: chain of %d points, at most %d", w.Rule, c, ChainLen)
		}
		if d.err != nil {
			return nil
		}
		if c*minPoint > uint64(len(d.b)) {
			d.fail(WireMalformed, "rule %d: chain of %d points in %d bytes", w.Rule, c, len(d.b))
			return nil
		}
		start := len(pts)
		for range c {
			var p Point
			if b := d.fixed(16, "point"); b != nil {
				p.From, p.Last = int64(binary.BigEndian.Uint64(b)), int64(binary.BigEndian.Uint64(b[8:]))
			}
			p.Firer = d.incarnation()
			p.Epoch = d.epoch()
			pts = append(pts, p)
		}
		if c > 0 {
			w.Chain = pts[start:len(pts):len(pts)]
		}
	}
	// Point the chains at the final array (append may have moved it).
	off := 0
	for i := range ws {
		w := &ws[i]
		if c := len(w.Chain); c > 0 {
			w.Chain = pts[off : off+c : off+c]
			off += c
		}
	}
	return ws
}

func (d *decoder) fired() Fired {
	m := Fired{From: d.incarnation(), Seq: d.u64("seq")}
	n := d.count(minFireRecord, "Fired.Records")
	if n == 0 {
		return m
	}
	m.Records = make([]FireRecord, n)
	for i := range m.Records {
		r := &m.Records[i]
		if b := d.fixed(32, "record"); b != nil {
			r.Rule = int64(binary.BigEndian.Uint64(b))
			r.Prev = int64(binary.BigEndian.Uint64(b[8:]))
			r.Slot = int64(binary.BigEndian.Uint64(b[16:]))
			r.Count = binary.BigEndian.Uint64(b[24:])
		}
		r.Firer = d.incarnation()
		r.Epoch = d.epoch()
	}
	return m
}

func (d *decoder) firedAck() FiredAck {
	m := FiredAck{From: d.incarnation(), To: d.incarnation(), Seq: d.u64("seq")}
	if n := d.count(4, "FiredAck.Refused"); n > 0 {
		m.Refused = make([]int, n)
		for i := range m.Refused {
			m.Refused[i] = d.small("record index")
		}
	}
	return m
}

func (d *decoder) handover() Handover {
	m := Handover{From: d.incarnation(), ID: d.u64("id")}
	n := d.count(1+8+8+1, "Handover.Events")
	if n == 0 {
		return m
	}
	m.Events = make([]HandedEvent, n)
	for i := range m.Events {
		key := d.blob(maxKeyLen, "key")
		ev := HandedEvent{Key: string(key), Rule: d.i64("rule"), Slot: d.i64("slot")}
		ev.Body = bytes.Clone(d.blob(maxBodyLen, "body"))
		if d.err != nil {
			return m
		}
		m.Events[i] = ev
	}
	return m
}

// blob reads a length-prefixed byte string of at most max bytes; it points into the
// message.
func (d *decoder) blob(max int, what string) []byte {
	n := d.uvarint(what)
	switch {
	case d.err != nil:
		return nil
	case n > uint64(max):
		d.fail(WireTooLarge, "%s of %d bytes, at most %d", what, n, max)
		return nil
	}
	return d.fixed(int(n), what)
}

func (d *decoder) offer() Offer {
	return Offer{From: d.incarnation(), ID: d.u64("id"), Events: d.eventRefs("Offer.Events")}
}

func (d *decoder) offerReply() OfferReply {
	m := OfferReply{From: d.incarnation(), To: d.incarnation(), ID: d.u64("id"), Events: d.eventRefs("OfferReply.Events")}
	if n := d.count(1, "OfferReply.Verdicts"); n > 0 {
		m.Verdicts = make([]Verdict, n)
		for i := range m.Verdicts {
			v := Verdict(d.u8("verdict"))
			if v > Unknown && d.err == nil {
				d.fail(WireInvalid, "verdict %d", v)
			}
			m.Verdicts[i] = v
		}
	}
	if n := d.count(minEpoch, "OfferReply.Epochs"); n > 0 {
		m.Epochs = make([]Epoch, n)
		for i := range m.Epochs {
			m.Epochs[i] = d.epoch()
		}
	}
	return m
}
