package protocol

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"math"
	"os"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"testing"
)

var (
	wireN0 = Incarnation{Node: "timerd-0", N: 7}
	wireN1 = Incarnation{Node: "timerd-1", N: 3}
	wireN2 = Incarnation{Node: "timerd-2", N: 12}
	// wireLong is a node name of the greatest length allowed.
	wireLong = strings.Repeat("n", maxNameLen)
)

const wireSlot = int64(1769515200_000_000_000) // 2026-01-27T12:00:00Z

// wireRecords is n fires of the sender n0, as a node sends its own fires.
func wireRecords(n int, from Incarnation) []FireRecord {
	recs := make([]FireRecord, n)
	for i := range recs {
		slot := wireSlot + int64(i)*5e9
		recs[i] = FireRecord{Rule: int64(1000 + i), Prev: slot - 5e9, Slot: slot, Count: uint64(100 + i),
			Firer: from, Epoch: Epoch{N: uint64(40 + i%7), Node: from.Node}}
	}
	return recs
}

// wireWatermarks is n watermarks with 2-point chains: fired by n1, then by n0.
func wireWatermarks(n int) []Watermark {
	wms := make([]Watermark, n)
	for i := range wms {
		slot := wireSlot + int64(i)*1e9
		wms[i] = Watermark{Rule: int64(i + 1), Slot: slot, Count: uint64(i + 10), Chain: Chain{
			{From: slot - 20e9, Last: slot - 10e9, Firer: wireN1, Epoch: Epoch{N: 5, Node: "timerd-1"}},
			{From: slot - 10e9, Last: slot, Firer: wireN0, Epoch: Epoch{N: 6, Node: "timerd-0"}},
		}}
	}
	return wms
}

// wireCase is a message and what it is after a round trip when that is not itself.
type wireCase struct {
	name string
	msg  Message
}

// wireCases are realistic and edge values of every message type.
func wireCases() []wireCase {
	fullChain := make(Chain, ChainLen)
	for i := range fullChain {
		fullChain[i] = Point{From: int64(i), Last: int64(i + 1), Firer: Incarnation{fmt.Sprintf("n%d", i%3), uint64(i)},
			Epoch: Epoch{N: uint64(i), Node: fmt.Sprintf("n%d", i%3)}}
	}
	var manyNames []Incarnation // more than an encoder scans
	for i := range 3 * linearNames {
		manyNames = append(manyNames, Incarnation{fmt.Sprintf("timerd-%d", i), uint64(i)})
	}
	verdicts := []Verdict{0, Yours, Late, FiredByAnother, Unknown}
	refs := []EventRef{
		{Rule: 1, Prev: NoSlot, Slot: wireSlot, Count: 1, Firer: Incarnation{"timerd-0", 6}},
		{Rule: math.MaxInt64, Prev: wireSlot, Slot: math.MaxInt64, Count: math.MaxUint64, Firer: wireN1},
		{Rule: -1, Prev: math.MinInt64, Slot: math.MinInt64, Count: 0, Firer: Incarnation{}},
		{Rule: 4, Prev: 1, Slot: 2, Count: 3, Firer: wireN2},
		{Rule: 5, Prev: 2, Slot: 3, Count: 4, Firer: Incarnation{"timerd-3", 1}},
	}
	epochs := []Epoch{{}, {N: 9, Node: "timerd-2"}, {N: math.MaxUint64, Node: wireLong}, {N: 1, Node: "timerd-2"}, {N: 2, Node: "ünïcødé"}}
	return []wireCase{
		{"heartbeat", Heartbeat{From: wireN0, Seq: 41, Expect: 3, Replicas: 3, Wall: wireSlot,
			Fences: map[string]uint64{"timerd-1": 2, "timerd-2": 11, "timerd-3": 1, "timerd-4": 5, "timerd-5": 8}}},
		{"heartbeat zero", Heartbeat{}},
		{"heartbeat empty fences", Heartbeat{From: wireN0, Seq: 1, Expect: 1, Fences: map[string]uint64{}}},
		{"heartbeat leaving", Heartbeat{From: wireN0, Seq: 2, Expect: 3, Leaving: true}},
		{"heartbeat edges", Heartbeat{From: Incarnation{wireLong, math.MaxUint64}, Seq: math.MaxUint64, Expect: maxSmallInt,
			Wall: math.MinInt64, Fences: map[string]uint64{wireLong: math.MaxUint64, "": 0, "a": 1}}},
		{"heartbeat fences own name", Heartbeat{From: wireN0, Fences: map[string]uint64{"timerd-0": 6}}},
		{"ack", HeartbeatAck{From: wireN1, To: wireN0, Seq: 41, Wall: wireSlot + 3e6, Echo: wireSlot}},
		{"ack fenced", HeartbeatAck{From: wireN1, To: wireN0, Seq: 41, Fenced: true}},
		{"ack mismatch", HeartbeatAck{From: wireN1, To: wireN0, Seq: 41, Mismatch: true, Wall: -1, Echo: math.MaxInt64}},
		{"ack both", HeartbeatAck{From: wireN1, To: wireN1, Fenced: true, Mismatch: true}},
		{"ack zero", HeartbeatAck{}},
		{"acquire", Acquire{From: wireN0, ID: 17, Parts: []PartitionEpoch{
			{Partition: 0, Epoch: Epoch{N: 4, Node: "timerd-0"}}, {Partition: 16380, Epoch: Epoch{N: 5, Node: "timerd-0"}}}}},
		{"acquire edges", Acquire{From: wireN0, ID: math.MaxUint64, Parts: []PartitionEpoch{
			{Partition: maxSmallInt, Epoch: Epoch{N: math.MaxUint64, Node: wireLong}}, {}}}},
		{"acquire empty", Acquire{From: wireN0, Parts: []PartitionEpoch{}}},
		{"acquire nil", Acquire{From: wireN0}},
		{"grant", Grant{From: wireN1, To: wireN0, ID: 17, Granted: []int{0, 7, 16380},
			Refused: []PartitionEpoch{{Partition: 9}, {Partition: 10, Epoch: Epoch{N: 8, Node: "timerd-2"}}},
			Members: []Incarnation{{"timerd-0", 1}, {"timerd-1", 4}, {"timerd-2", 2}}, Watermarks: wireWatermarks(20)}},
		{"grant full chain, no chain, baseline", Grant{From: wireN1, To: wireN0, Granted: []int{3},
			Watermarks: []Watermark{
				{Rule: 1, Slot: wireSlot, Count: 9, Chain: fullChain},
				{Rule: 2, Slot: NoSlot},
				{Rule: 3, Slot: wireSlot, Chain: Chain{}},
				{Rule: math.MaxInt64, Slot: math.MaxInt64, Count: math.MaxUint64, Chain: fullChain[:1]},
			}}},
		{"grant many names", Grant{From: wireN1, To: wireN0, Members: manyNames, Watermarks: []Watermark{
			{Rule: 1, Chain: Chain{{Firer: Incarnation{manyNames[40].Node, 1}, Epoch: Epoch{1, manyNames[20].Node}}}}}}},
		{"grant empty", Grant{From: wireN1, To: wireN0, Granted: []int{}, Refused: []PartitionEpoch{}, Members: []Incarnation{},
			Watermarks: []Watermark{}}},
		{"grant zero", Grant{}},
		{"fired 50", Fired{From: wireN0, Seq: 99, Records: wireRecords(50, wireN0)}},
		{"fired offered events", Fired{From: wireN0, Seq: 1, Records: []FireRecord{
			{Rule: 1, Prev: NoSlot, Slot: wireSlot, Count: 1, Firer: Incarnation{"timerd-0", 5}, Epoch: Epoch{N: 3, Node: "timerd-2"}},
			{Rule: 2, Prev: wireSlot, Slot: wireSlot + 1, Count: 2, Firer: Incarnation{"timerd-3", 2}, Epoch: Epoch{N: 4, Node: "timerd-1"}},
			{Rule: math.MinInt64, Prev: math.MaxInt64, Slot: math.MinInt64, Count: math.MaxUint64,
				Firer: Incarnation{wireLong, math.MaxUint64}, Epoch: Epoch{N: math.MaxUint64, Node: wireLong}},
		}}},
		{"fired empty", Fired{From: wireN0, Seq: 2, Records: []FireRecord{}}},
		{"fired zero", Fired{}},
		{"fired ack", FiredAck{From: wireN1, To: wireN0, Seq: 99}},
		{"fired ack refused", FiredAck{From: wireN1, To: wireN0, Seq: 99, Refused: []int{0, 3, 49, maxSmallInt}}},
		{"fired ack empty", FiredAck{From: wireN1, To: wireN0, Refused: []int{}}},
		{"offer", Offer{From: Incarnation{"timerd-0", 8}, ID: 3, Events: refs}},
		{"offer empty", Offer{From: wireN0, Events: []EventRef{}}},
		{"offer zero", Offer{}},
		{"offer reply", OfferReply{From: wireN2, To: wireN0, ID: 3, Events: refs, Verdicts: verdicts, Epochs: epochs}},
		{"offer reply uneven", OfferReply{From: wireN2, To: wireN0, ID: 3, Events: refs[:1], Verdicts: verdicts[:3]}},
		{"offer reply empty", OfferReply{From: wireN2, To: wireN0, Events: []EventRef{}, Verdicts: []Verdict{}, Epochs: []Epoch{}}},
		{"retired", Retired{From: wireN2}},
		{"retired clean", Retired{From: wireN2, Clean: true}},
		{"handover", Handover{From: wireN2, ID: 7, Events: []HandedEvent{
			{Key: "42:1767225600000000000", Rule: 42, Slot: wireSlot, Body: []byte(`{"trigger_ref":"core.intervaltimer"}`)},
			{Key: "43:1", Rule: 43, Slot: 1, Body: []byte(`{}`)}}}},
		{"handover empty", Handover{From: wireN2, ID: 1}},
		{"handover ack", HandoverAck{From: wireN1, To: wireN2, ID: 7}},
		{"transfer", Transfer{From: wireN2, ID: 9, Chunk: 2, Chunks: 3, Epochs: epochsOf(wireN1.Node, 0, 9, 16380),
			Watermarks: wireWatermarks(20)}},
		{"transfer last, no epochs", Transfer{From: wireN2, Chunk: 0, Chunks: 1, Watermarks: []Watermark{
			{Rule: 1, Slot: wireSlot, Count: 9, Chain: fullChain}, {Rule: 2, Slot: NoSlot}}}},
		{"transfer empty", Transfer{From: wireN2, Chunks: 1, Epochs: []PartitionEpoch{}, Watermarks: []Watermark{}}},
		{"transfer ack", TransferAck{From: wireN1, To: wireN2, ID: math.MaxUint64, Chunk: maxSmallInt}},
		{"retired long name", Retired{From: Incarnation{wireLong, math.MaxUint64}}},
		{"retired zero", Retired{}},
	}
}

func epochsOf(node string, parts ...int) []PartitionEpoch {
	out := make([]PartitionEpoch, len(parts))
	for i, p := range parts {
		out[i] = PartitionEpoch{Partition: p, Epoch: Epoch{N: uint64(i + 1), Node: node}}
	}
	return out
}

// wireNormal is m as Decode returns it: every empty slice and map nil.
func wireNormal(m Message) Message {
	v := reflect.New(reflect.TypeOf(m)).Elem()
	v.Set(reflect.ValueOf(m))
	v = wireNilEmpty(v)
	return v.Interface().(Message)
}

func wireNilEmpty(v reflect.Value) reflect.Value {
	switch v.Kind() {
	case reflect.Slice, reflect.Map:
		if v.Len() == 0 {
			return reflect.Zero(v.Type())
		}
		if v.Kind() == reflect.Slice {
			c := reflect.MakeSlice(v.Type(), v.Len(), v.Len())
			for i := range v.Len() {
				c.Index(i).Set(wireNilEmpty(v.Index(i)))
			}
			return c
		}
	case reflect.Struct:
		c := reflect.New(v.Type()).Elem()
		c.Set(v)
		for i := range v.NumField() {
			if c.Field(i).CanSet() {
				c.Field(i).Set(wireNilEmpty(v.Field(i)))
			}
		}
		return c
	}
	return v
}

func TestWireRoundTrip(t *testing.T) {
	for _, tc := range wireCases() {
		t.Run(tc.name, func(t *testing.T) {
			b, err := Encode(tc.msg)
			if err != nil {
				t.Fatalf("Encode(%s): %v", tc.name, err)
			}
			if b[0] != WireVersion {
				t.Errorf("Encode(%s): version %d, want %d", tc.name, b[0], WireVersion)
			}
			got, err := Decode(b)
			if err != nil {
				t.Fatalf("Decode(Encode(%s)): %v", tc.name, err)
			}
			if want := wireNormal(tc.msg); !reflect.DeepEqual(got, want) {
				t.Errorf("Decode(Encode(%s)):\n got %#v\nwant %#v", tc.name, got, want)
			}
			b2, err := Encode(got)
			if err != nil || !bytes.Equal(b, b2) {
				t.Errorf("Encode(Decode(Encode(%s))) = %x, %v; want the first encoding %x", tc.name, b2, err, b)
			}
		})
	}
}

// TestWireEmptyIsNil documents that a round trip makes empty slices and maps nil.
func TestWireEmptyIsNil(t *testing.T) {
	empty, _ := Encode(Fired{Records: []FireRecord{}})
	null, _ := Encode(Fired{})
	if !bytes.Equal(empty, null) {
		t.Errorf("Encode(Fired with empty records) = %x, want that with nil records, %x", empty, null)
	}
	if m, err := Decode(empty); err != nil || m.(Fired).Records != nil {
		t.Errorf("Decode(%x) = %#v, %v; want nil records", empty, m, err)
	}
	empty, _ = Encode(Heartbeat{Fences: map[string]uint64{}})
	if m, err := Decode(empty); err != nil || m.(Heartbeat).Fences != nil {
		t.Errorf("Decode(%x) = %#v, %v; want nil fences", empty, m, err)
	}
}

// TestWireCoversEveryMessage fails for a message type of the package (a type with a
// Sender method) that has no round-trip case, so none goes without a codec.
func TestWireCoversEveryMessage(t *testing.T) {
	fset := token.NewFileSet()
	entries, err := os.ReadDir(".")
	if err != nil {
		t.Fatal(err)
	}
	var types []string
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".go") || strings.HasSuffix(e.Name(), "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, e.Name(), nil, parser.SkipObjectResolution)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range f.Decls {
			fn, ok := d.(*ast.FuncDecl)
			if !ok || fn.Recv == nil || fn.Name.Name != "Sender" {
				continue
			}
			if id, ok := fn.Recv.List[0].Type.(*ast.Ident); ok {
				types = append(types, id.Name)
			} else {
				t.Errorf("%s: Sender has a pointer receiver: Encode takes message values", fset.Position(fn.Pos()))
			}
		}
	}
	if len(types) < 9 {
		t.Fatalf("found %d message types (%v), want at least the 9 of messages.go", len(types), types)
	}
	covered := map[string]bool{}
	for _, tc := range wireCases() {
		covered[reflect.TypeOf(tc.msg).Name()] = true
	}
	for _, name := range types {
		if !covered[name] {
			t.Errorf("message type %s has no case in wireCases: give it a wire kind in wire.go and a case here", name)
		}
	}
}

// TestWireKindsStay pins each message type to its kind: a kind is never reused.
func TestWireKindsStay(t *testing.T) {
	kinds := map[string]byte{"Heartbeat": 1, "HeartbeatAck": 2, "Acquire": 3, "Grant": 4, "Fired": 5,
		"FiredAck": 6, "Offer": 7, "OfferReply": 8, "Retired": 9, "Handover": 10, "HandoverAck": 11,
		"Transfer": 12, "TransferAck": 13}
	for _, tc := range wireCases() {
		b, err := Encode(tc.msg)
		if err != nil {
			t.Fatal(err)
		}
		if name := reflect.TypeOf(tc.msg).Name(); b[1] != kinds[name] {
			t.Errorf("Encode(%s): kind %d, want %d", tc.name, b[1], kinds[name])
		}
	}
}

type wireUnknown struct{}

func (wireUnknown) Sender() Incarnation { return Incarnation{} }

func TestWireEncodeRefuses(t *testing.T) {
	long := wireLong + "x"
	chain := make(Chain, ChainLen+1)
	tests := []struct {
		name   string
		msg    Message
		reason string
	}{
		{"nil", nil, WireInvalid},
		{"pointer", &Retired{}, WireInvalid},
		{"unknown type", wireUnknown{}, WireInvalid},
		{"transfer chunk past chunks", Transfer{From: wireN2, Chunk: 1, Chunks: 1}, WireInvalid},
		{"transfer negative chunk", Transfer{From: wireN2, Chunk: -1, Chunks: 1}, WireInvalid},
		{"long sender", Retired{From: Incarnation{Node: long}}, WireTooLarge},
		{"long fence", Heartbeat{Fences: map[string]uint64{long: 1}}, WireTooLarge},
		{"long member", Grant{Members: []Incarnation{{"a", 1}, {long, 1}}}, WireTooLarge},
		{"long epoch node", Fired{Records: []FireRecord{{Epoch: Epoch{Node: long}}}}, WireTooLarge},
		{"negative expect", Heartbeat{Expect: -1}, WireInvalid},
		{"huge expect", Heartbeat{Expect: maxSmallInt + 1}, WireInvalid},
		{"negative partition", Acquire{Parts: []PartitionEpoch{{Partition: -1}}}, WireInvalid},
		{"huge granted partition", Grant{Granted: []int{maxSmallInt + 1}}, WireInvalid},
		{"negative refused partition", Grant{Refused: []PartitionEpoch{{Partition: -5}}}, WireInvalid},
		{"negative record index", FiredAck{Refused: []int{-1}}, WireInvalid},
		{"verdict", OfferReply{Verdicts: []Verdict{Yours, Unknown + 1}}, WireInvalid},
		{"long chain", Grant{Watermarks: []Watermark{{Rule: 1}, {Rule: 2, Chain: chain}}}, WireTooLarge},
		{"too many records", FiredAck{Refused: make([]int, maxItems+1)}, WireTooLarge},
	}
	for _, tt := range tests {
		b, err := Encode(tt.msg)
		if !errors.Is(err, ErrWire) || WireReason(err) != tt.reason {
			t.Errorf("Encode(%s) = %x, %v (reason %q); want an ErrWire of reason %q", tt.name, b, err, WireReason(err), tt.reason)
		}
	}
}

// wireBytes builds a message from parts: bytes, and numbers in their wire sizes.
type wireBytes []byte

func (w wireBytes) u8(v byte) wireBytes              { return append(w, v) }
func (w wireBytes) u32(v uint32) wireBytes           { return binary.BigEndian.AppendUint32(w, v) }
func (w wireBytes) u64(v uint64) wireBytes           { return binary.BigEndian.AppendUint64(w, v) }
func (w wireBytes) uvarint(v uint64) wireBytes       { return binary.AppendUvarint(w, v) }
func (w wireBytes) name(s string) wireBytes          { return append(w.uvarint(uint64(len(s))<<1|1), s...) }
func (w wireBytes) inc(s string, n uint64) wireBytes { return w.name(s).u64(n) }

func wireHeader(kind byte) wireBytes { return wireBytes{WireVersion, kind}.inc("a", 1) }

func TestWireDecodeRefuses(t *testing.T) {
	tests := []struct {
		name   string
		b      []byte
		reason string
	}{
		{"empty", nil, WireMalformed},
		{"one byte", []byte{WireVersion}, WireMalformed},
		{"version 0", []byte{0, kindRetired, 1, 'a', 0, 0, 0, 0, 0, 0, 0, 1}, WireUnknownVersion},
		{"version 3", append([]byte{WireVersion + 1, kindRetired}, wireHeader(0)[2:]...), WireUnknownVersion},
		{"kind 0", wireHeader(0), WireMalformed},
		{"kind 10", wireHeader(10), WireMalformed},
		{"kind 14", wireHeader(14), WireMalformed},
		{"transfer chunk past chunks", wireHeader(kindTransfer).u64(1).u32(3).u32(3).uvarint(0).uvarint(0), WireInvalid},
		{"transfer of no chunks", wireHeader(kindTransfer).u64(1).u32(0).u32(0).uvarint(0).uvarint(0), WireInvalid},
		{"trailing byte", wireHeader(kindRetired).u8(0).u8(0), WireMalformed},
		{"retired flags", wireHeader(kindRetired).u8(2), WireMalformed},
		{"heartbeat flags", wireHeader(kindHeartbeat).u64(1).u32(1).u32(0).u64(0).u8(2).uvarint(0), WireMalformed},
		{"name too long", wireBytes{WireVersion, kindRetired}.uvarint((maxNameLen+1)<<1 | 1), WireTooLarge},
		{"name past the end", wireBytes{WireVersion, kindRetired}.uvarint(20<<1 | 1).u8('a'), WireMalformed},
		{"name not in table", wireBytes{WireVersion, kindRetired}.uvarint(0).u64(1), WireMalformed},
		{"name ref past table", wireBytes{WireVersion, kindFiredAck}.inc("a", 1).uvarint(1 << 1).u64(1).u64(1).uvarint(0), WireMalformed},
		{"bad uvarint", wireBytes{WireVersion, kindRetired, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}, WireMalformed},
		{"handover key too long", append(wireHeader(kindHandover).u64(1).uvarint(1).uvarint(maxKeyLen+1), make([]byte, 40)...), WireTooLarge},
		{"handover body past the end", wireHeader(kindHandover).u64(1).uvarint(1).uvarint(1).u8('k').u64(1).u64(2).uvarint(100), WireMalformed},
		{"2^40 records in 10 bytes", wireHeader(kindFired).u64(1).uvarint(1 << 40), WireTooLarge},
		{"2^64-1 records", wireHeader(kindFired).u64(1).uvarint(math.MaxUint64), WireTooLarge},
		{"1000 records in 60 bytes", append(wireHeader(kindFired).u64(1).uvarint(1000), make([]byte, 60)...), WireMalformed},
		{"2^20 members in 1000 bytes", append(wireHeader(kindGrant).inc("b", 2).u64(1).uvarint(0).uvarint(0).uvarint(maxItems),
			make([]byte, 1000)...), WireMalformed},
		{"2^20+1 granted", wireHeader(kindGrant).inc("b", 2).u64(1).uvarint(maxItems + 1), WireTooLarge},
		{"expect negative", wireHeader(kindHeartbeat).u64(1).u32(math.MaxUint32).u32(0).u64(0).u8(0).uvarint(0), WireInvalid},
		{"replicas negative", wireHeader(kindHeartbeat).u64(1).u32(1).u32(math.MaxUint32).u64(0).u8(0).uvarint(0), WireInvalid},
		{"partition negative", wireHeader(kindAcquire).u64(1).uvarint(1).u32(1 << 31).u64(1).uvarint(0), WireInvalid},
		{"granted negative", wireHeader(kindGrant).inc("b", 2).u64(1).uvarint(1).u32(math.MaxUint32), WireInvalid},
		{"record index negative", wireHeader(kindFiredAck).inc("b", 2).u64(1).uvarint(1).u32(1 << 31), WireInvalid},
		{"verdict 5", wireHeader(kindOfferReply).inc("b", 2).u64(1).uvarint(0).uvarint(1).u8(byte(Unknown) + 1).uvarint(0), WireInvalid},
		{"verdict 255", wireHeader(kindOfferReply).inc("b", 2).u64(1).uvarint(0).uvarint(1).u8(255).uvarint(0), WireInvalid},
		{"chain too long", append(wireHeader(kindGrant).inc("b", 2).u64(1).uvarint(0).uvarint(0).uvarint(0).uvarint(1).
			u64(1).u64(2).u64(3).uvarint(ChainLen+1), make([]byte, (ChainLen+1)*minPoint)...), WireTooLarge},
		{"chain past the end", wireHeader(kindGrant).inc("b", 2).u64(1).uvarint(0).uvarint(0).uvarint(0).uvarint(1).
			u64(1).u64(2).u64(3).uvarint(2).u64(1), WireMalformed},
		{"ack flags", wireHeader(kindHeartbeatAck).inc("b", 2).u64(1).u8(4).u64(0).u64(0), WireMalformed},
		{"fences out of order", wireHeader(kindHeartbeat).u64(1).u32(1).u32(0).u64(0).u8(0).uvarint(2).name("c").u64(1).name("b").u64(1), WireMalformed},
		{"fences twice", wireHeader(kindHeartbeat).u64(1).u32(1).u32(0).u64(0).u8(0).uvarint(2).name("b").u64(1).uvarint(1 << 1).u64(2), WireMalformed},
	}
	for _, tt := range tests {
		m, err := Decode(tt.b)
		if !errors.Is(err, ErrWire) || WireReason(err) != tt.reason || m != nil {
			t.Errorf("Decode(%s: %x) = %#v, %v (reason %q); want nil and an ErrWire of reason %q",
				tt.name, tt.b, m, err, WireReason(err), tt.reason)
		}
	}
	// The hand-made messages above are right but for the one fault: mended, they decode.
	for _, b := range [][]byte{
		wireHeader(kindRetired).u8(0),
		wireHeader(kindRetired).u8(1),
		wireHeader(kindHeartbeat).u64(1).u32(1).u32(0).u64(0).u8(0).uvarint(2).name("b").u64(1).name("c").u64(1),
		wireHeader(kindFiredAck).inc("b", 2).u64(1).uvarint(1).u32(1<<31 - 1),
		wireHeader(kindOfferReply).inc("b", 2).u64(1).uvarint(0).uvarint(1).u8(byte(Unknown)).uvarint(0),
		wireHeader(kindHeartbeatAck).inc("b", 2).u64(1).u8(3).u64(0).u64(0),
	} {
		if _, err := Decode(b); err != nil {
			t.Errorf("Decode(%x): %v, want a message", b, err)
		}
	}
}

// TestWireDecodeTruncated: every prefix of a message is malformed, and no change of one
// byte makes Decode panic.
func TestWireDecodeTruncated(t *testing.T) {
	for _, tc := range wireCases() {
		b, err := Encode(tc.msg)
		if err != nil {
			t.Fatal(err)
		}
		for n := range len(b) {
			if _, err := Decode(b[:n]); WireReason(err) != WireMalformed {
				t.Errorf("Decode(%s, first %d of %d bytes) = %v, want malformed", tc.name, n, len(b), err)
			}
		}
		c := slices.Clone(b)
		for i := range c {
			for _, x := range []byte{0x01, 0x80, 0xff} {
				c[i] ^= x
				if m, err := Decode(c); err == nil {
					if _, err := Encode(m); err != nil {
						t.Errorf("Decode(%s, byte %d ^ %#x) decodes to a message Encode refuses: %v", tc.name, i, x, err)
					}
				}
				c[i] ^= x
			}
		}
	}
}

// TestWireHostileAllocations: a claimed count is checked against the bytes left before
// anything is allocated for it.
func TestWireHostileAllocations(t *testing.T) {
	for _, b := range [][]byte{
		wireHeader(kindFired).u64(1).uvarint(1 << 40),
		append(wireHeader(kindFired).u64(1).uvarint(maxItems), make([]byte, 64)...),
		append(wireHeader(kindGrant).inc("b", 2).u64(1).uvarint(maxItems), make([]byte, 64)...),
		append(wireHeader(kindHeartbeat).u64(1).u32(1).u32(0).u64(0).uvarint(maxItems), make([]byte, 64)...),
		append(wireHeader(kindOfferReply).inc("b", 2).u64(1).uvarint(0).uvarint(maxItems), make([]byte, 64)...),
	} {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		_, err := Decode(b)
		runtime.ReadMemStats(&after)
		if err == nil {
			t.Fatalf("Decode(%x) succeeded", b)
		}
		if n := after.TotalAlloc - before.TotalAlloc; n > 4096 {
			t.Errorf("Decode(%x) allocated %d bytes, want no more than its error's", b, n)
		}
	}
}

// TestWireDecodeAllocations guards the allocations that make decoding cheap: names
// once per message, one array for a grant's chains.
func TestWireDecodeAllocations(t *testing.T) {
	tests := []struct {
		name string
		msg  Message
		max  float64
	}{
		{"fired 50", Fired{From: wireN0, Seq: 1, Records: wireRecords(50, wireN0)}, 3}, // name, records, boxing
		{"grant 10000", Grant{From: wireN1, To: wireN0, Granted: []int{1}, Watermarks: wireWatermarks(10_000)}, 20},
		{"heartbeat", Heartbeat{From: wireN0}, 2},
	}
	for _, tt := range tests {
		b, err := Encode(tt.msg)
		if err != nil {
			t.Fatal(err)
		}
		if n := testing.AllocsPerRun(20, func() { _, _ = Decode(b) }); n > tt.max {
			t.Errorf("Decode(%s): %v allocations, want at most %v", tt.name, n, tt.max)
		}
	}
}

func wireLen(t *testing.T, m Message) int {
	t.Helper()
	b, err := Encode(m)
	if err != nil {
		t.Fatal(err)
	}
	return len(b)
}

// TestWireSizes logs the sizes of the frequent messages (go test -v -run WireSizes) and
// checks MaxFiredRecordsPerPacket against the UDP budget.
func TestWireSizes(t *testing.T) {
	fences := map[string]uint64{"timerd-1": 2, "timerd-2": 11, "timerd-3": 1, "timerd-4": 5, "timerd-5": 8}
	hb := wireLen(t, Heartbeat{From: wireN0, Seq: 41, Expect: 5, Wall: wireSlot, Fences: fences})
	ack := wireLen(t, HeartbeatAck{From: wireN1, To: wireN0, Seq: 41, Wall: wireSlot, Echo: wireSlot})
	fired := wireLen(t, Fired{From: wireN0, Seq: 99, Records: wireRecords(50, wireN0)})
	t.Logf("names of 8 bytes (timerd-0): Heartbeat with 5 fences %d B, HeartbeatAck %d B, Fired of 50 records %d B (budget %d B)",
		hb, ack, fired, packetBudget)
	if want := 2 + (1 + 8 + 8) + 8 + 4 + 4 + 8 + 1 + 1 + 5*(1+8+8); hb != want {
		t.Errorf("Heartbeat with 5 fences: %d bytes, want %d", hb, want)
	}
	if want := 2 + 2*(1+8+8) + 8 + 1 + 8 + 8; ack != want {
		t.Errorf("HeartbeatAck: %d bytes, want %d", ack, want)
	}
	if want := 2 + (1 + 8 + 8) + 8 + 1 + 50*fireRecordLen; fired != want {
		t.Errorf("Fired of 50: %d bytes, want %d", fired, want)
	}
	for _, n := range []int{8, 32, 64, 253, maxNameLen} {
		from := Incarnation{Node: strings.Repeat("n", n), N: math.MaxUint64}
		fit := 0
		for wireLen(t, Fired{From: from, Seq: math.MaxUint64, Records: wireRecords(fit+1, from)}) <= packetBudget {
			fit++
		}
		t.Logf("name of %d bytes: %d records fit in a packet", n, fit)
		if fit < MaxFiredRecordsPerPacket {
			t.Errorf("name of %d bytes: %d records fit, fewer than MaxFiredRecordsPerPacket = %d", n, fit, MaxFiredRecordsPerPacket)
		}
		if n == maxNameLen && fit != MaxFiredRecordsPerPacket {
			t.Errorf("name of %d bytes: %d records fit, want MaxFiredRecordsPerPacket = %d", n, fit, MaxFiredRecordsPerPacket)
		}
	}
}

func BenchmarkWire(b *testing.B) {
	for _, bm := range []struct {
		name string
		msg  Message
	}{
		{"Fired50", Fired{From: wireN0, Seq: 99, Records: wireRecords(50, wireN0)}},
		{"Grant10000", Grant{From: wireN1, To: wireN0, ID: 17, Granted: []int{3, 4, 5},
			Members: []Incarnation{{"timerd-0", 1}, {"timerd-1", 4}, {"timerd-2", 2}}, Watermarks: wireWatermarks(10_000)}},
		{"Heartbeat5", Heartbeat{From: wireN0, Seq: 41, Expect: 5, Wall: wireSlot,
			Fences: map[string]uint64{"timerd-1": 2, "timerd-2": 11, "timerd-3": 1, "timerd-4": 5, "timerd-5": 8}}},
	} {
		enc, err := Encode(bm.msg)
		if err != nil {
			b.Fatal(err)
		}
		b.Run("Encode/"+bm.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(enc)))
			for b.Loop() {
				if _, err := Encode(bm.msg); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run("Decode/"+bm.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(enc)))
			for b.Loop() {
				if _, err := Decode(enc); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestWireVersion1: a node reads what the build before version 2 wrote (the heartbeat
// below is efe9e0f's Encode, the previous release's), and writes version 1 for a peer
// that reads no newer: a heartbeat without Replicas, every other message as version 2
// but for its first byte.
func TestWireVersion1(t *testing.T) {
	hb := Heartbeat{From: Incarnation{Node: "timerd-0", N: 7}, Seq: 41, Expect: 3, Wall: 1767225600000000000,
		Leaving: true, Fences: map[string]uint64{"timerd-1": 2, "timerd-2": 5}}
	old, _ := hex.DecodeString("01011174696d6572642d30000000000000000700000000000000290000000318867251edfa0000" +
		"01021174696d6572642d3100000000000000021174696d6572642d320000000000000005")
	m, err := Decode(old)
	if err != nil || !reflect.DeepEqual(m, hb) {
		t.Fatalf("Decode(efe9e0f's heartbeat) = %#v, %v; want %#v", m, err, hb)
	}
	withReplicas := hb
	withReplicas.Replicas = 3
	if b, err := EncodeVersion(withReplicas, 1); err != nil || !bytes.Equal(b, old) {
		t.Errorf("EncodeVersion(heartbeat, 1) = %x, %v; want efe9e0f's %x", b, err, old)
	}
	b, err := EncodeVersion(withReplicas, 2)
	if err != nil || b[0] != 2 {
		t.Fatalf("EncodeVersion(heartbeat, 2) = %x, %v", b, err)
	}
	if m, err := Decode(b); err != nil || !reflect.DeepEqual(m, withReplicas) {
		t.Errorf("Decode(version 2 heartbeat) = %#v, %v; want %#v", m, err, withReplicas)
	}
	for _, tc := range wireCases() {
		if _, ok := tc.msg.(Heartbeat); ok {
			continue
		}
		v1, err1 := EncodeVersion(tc.msg, 1)
		v2, err2 := EncodeVersion(tc.msg, 2)
		if err1 != nil || err2 != nil || v1[0] != 1 || !bytes.Equal(v1[1:], v2[1:]) {
			t.Errorf("%s: version 1 %x (%v) and version 2 %x (%v) differ past the version byte", tc.name, v1, err1, v2, err2)
		}
	}
	for _, v := range []byte{0, WireVersion + 1} {
		if b, err := EncodeVersion(hb, v); WireReason(err) != WireUnknownVersion || b != nil {
			t.Errorf("EncodeVersion(heartbeat, %d) = %x, %v; want a refusal of the version", v, b, err)
		}
	}
}
