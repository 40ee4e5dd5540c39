package store

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"math"
	"time"

	"github.com/timerd/timerd/cluster/protocol"
	"github.com/timerd/timerd/scheduler"
)

// Records are small binary envelopes rather than JSON: decoding 1M rules at start-up is
// on the restart path, and a fixed layout decodes several times faster than
// encoding/json (see BenchmarkDecodeRule). Every value starts with a codec version byte.
//
//	rule:        v4 | updated_at i64 | uvarint len, ref | uvarint len, trigger_ref |
//	                  uvarint len, timer | params… | crc32c
//	             (timer: the binary form of the parsed timer, scheduler.Timer.AppendBinary, so
//	             that a restart parses no JSON; empty when params do not parse)
//	             v3 | updated_at i64 | uvarint len, ref | uvarint len, trigger_ref | params… | crc32c
//	             (v2: v3 without the checksum; v1, the same layout, held the time the node
//	             stored the rule: it is read as zero)
//	watermark:   v3 | slot i64 | count u64 | chain | crc32c  (chain: see appendChain; 0 for none)
//	             slot i64 | count u64                     (before v3, no chain: fixed 16 bytes)
//	             v2 | slot i64 | count u64 | chain         (before v3, with a fire chain)
//	tombstone:   v1 | version i64
//	event:       v1 | created_at i64 | rule_id i64 | slot i64 | uvarint len, key | body…
//	             v2 | created_at i64 | rule_id i64 | slot i64 | prev i64 | count u64 |
//	                  uvarint firer N | uvarint len, firer node | uvarint len, key | body…
//	             (v2: a fire of the protocol, convertible to a protocol.EventRef)
//	dead letter: v1 | at i64 | varint status | uvarint len, reason | event…
//
// Integers are big-endian; times are Unix nanoseconds, with math.MinInt64 for the zero time.
// crc32c is the CRC-32 (Castagnoli) of every byte before it, big-endian: a flipped bit in
// a rule or a watermark is an error naming the rule, never a different schedule.
const codecV1 = 1

// sealedV3 is the version byte of rule and watermark records that end in a checksum.
const sealedV3 = 3

const crcLen = 4

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// seal appends the checksum of b.
func seal(b []byte) []byte {
	return binary.BigEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
}

// unseal checks v's trailing checksum and returns v without it.
func unseal(v []byte) ([]byte, error) {
	if len(v) < 1+crcLen {
		return nil, fmt.Errorf("%w: %d bytes, too short for a checksum", ErrCorrupt, len(v))
	}
	body, sum := v[:len(v)-crcLen], binary.BigEndian.Uint32(v[len(v)-crcLen:])
	if crc32.Checksum(body, castagnoli) != sum {
		return nil, fmt.Errorf("%w: checksum mismatch (a flipped bit on disk?)", ErrCorrupt)
	}
	return body, nil
}

// ruleV2 is the version byte of rule records whose updated_at is the rule's source
// version (Rule.UpdatedAt). A v1 rule's updated_at was when the node stored it.
const ruleV2 = 2

// watermarkLen is a watermark without a chain, as every version wrote it; wmV2 starts
// one with a chain.
const (
	watermarkLen = 16
	wmV2         = 2
)

var (
	minTime = time.Unix(0, math.MinInt64+1)
	maxTime = time.Unix(0, math.MaxInt64)
)

func idKey(id int64) []byte { return binary.BigEndian.AppendUint64(make([]byte, 0, 8), uint64(id)) }

func keyID(k []byte) (int64, error) {
	if len(k) != 8 {
		return 0, fmt.Errorf("%w: key of %d bytes, want 8", ErrCorrupt, len(k))
	}
	return int64(binary.BigEndian.Uint64(k)), nil
}

// checkTime refuses a time of rule id that Unix nanoseconds cannot hold. It is on the
// commit path of every fire, so the message is only formatted on failure.
func checkTime(id int64, field string, t time.Time) error {
	if !t.IsZero() && (t.Before(minTime) || t.After(maxTime)) {
		return fmt.Errorf("rule %d %s %v: outside the years 1678–2262", id, field, t)
	}
	return nil
}

func timeNanos(t time.Time) int64 {
	if t.IsZero() {
		return math.MinInt64
	}
	return t.UnixNano()
}

func nanosTime(n int64) time.Time {
	if n == math.MinInt64 {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}

func appendTime(b []byte, t time.Time) []byte {
	return binary.BigEndian.AppendUint64(b, uint64(timeNanos(t)))
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func validateRule(r Rule) error {
	if r.ID <= 0 {
		return fmt.Errorf("rule id %d: must be positive", r.ID)
	}
	if err := checkTime(r.ID, "UpdatedAt", r.UpdatedAt); err != nil {
		return err
	}
	if len(r.Params) > 0 && !json.Valid(r.Params) {
		return fmt.Errorf("rule %d params: not valid JSON", r.ID)
	}
	return nil
}

// ruleV4 is the version byte of rule records that hold the binary form of their timer
// (schema version 5); they end in a checksum, as sealedV3 ones.
const ruleV4 = 4

// maxTimerForm bounds a rule's binary timer: the form of an expression and a zone of
// the longest Parse accepts is far shorter.
const maxTimerForm = 4096

// encodeRule writes r as ruleV4, with the binary form of r.Timer, or of its params
// parsed here when r.Timer is nil (an empty form when they do not parse).
func encodeRule(r Rule) []byte {
	t := r.Timer
	if t == nil {
		t, _ = scheduler.Parse(r.TriggerRef, r.Params, r.ID)
	}
	b := make([]byte, 0, 1+8+2+len(r.Ref)+2+len(r.TriggerRef)+1+64+len(r.Params)+crcLen)
	b = append(b, ruleV4)
	b = appendTime(b, r.UpdatedAt)
	b = appendString(b, r.Ref)
	b = appendString(b, r.TriggerRef)
	var form []byte
	if t != nil {
		var scratch [128]byte
		if f, err := t.AppendBinary(scratch[:0]); err == nil && len(f) <= maxTimerForm {
			form = f
		}
	}
	b = binary.AppendUvarint(b, uint64(len(form)))
	b = append(b, form...)
	b = append(b, r.Params...)
	return seal(b)
}

// decoder reads a value; the first failure sticks and later reads return zero values.
type decoder struct {
	b    []byte
	err  error
	last string // the last string read by str
}

func (d *decoder) fail(what string) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: %s", ErrCorrupt, what)
	}
	d.b = nil
}

func (d *decoder) version() {
	d.versionOf(codecV1)
}

// versionOf reads the version byte, one of accepted, and returns it (0 on failure).
func (d *decoder) versionOf(accepted ...byte) byte {
	if len(d.b) == 0 || bytes.IndexByte(accepted, d.b[0]) < 0 {
		d.fail("unknown record version")
		return 0
	}
	v := d.b[0]
	d.b = d.b[1:]
	return v
}

func (d *decoder) u64(what string) uint64 {
	if len(d.b) < 8 {
		d.fail("short " + what)
		return 0
	}
	v := binary.BigEndian.Uint64(d.b)
	d.b = d.b[8:]
	return v
}

func (d *decoder) time(what string) time.Time { return nanosTime(int64(d.u64(what))) }

func (d *decoder) varint(what string) int64 {
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.fail("bad " + what)
		return 0
	}
	d.b = d.b[n:]
	return v
}

// bytes returns a length-prefixed field, still pointing into the value.
func (d *decoder) bytes(what string) []byte {
	l, n := binary.Uvarint(d.b)
	if n <= 0 || l > uint64(len(d.b)-n) {
		d.fail("bad " + what + " length")
		return nil
	}
	v := d.b[n : n+int(l)]
	d.b = d.b[n+int(l):]
	return v
}

// rest copies what is left (nil when empty); bbolt's memory is gone after the tx.
func (d *decoder) rest() []byte {
	if len(d.b) == 0 {
		return nil
	}
	v := make([]byte, len(d.b))
	copy(v, d.b)
	d.b = nil
	return v
}

func decodeRule(id int64, v []byte) (Rule, error) { return decodeRuleOf(id, v, nil) }

// decodeRuleOf decodes a rule value. With a scratch Timer (ForEachTimer) the timer is
// decoded into it, and the strings and params of a rule whose timer decodes are left
// out: the checksum still covers the whole value.
func decodeRuleOf(id int64, v []byte, scratch *scheduler.Timer) (Rule, error) {
	if len(v) > 0 && (v[0] == sealedV3 || v[0] == ruleV4) {
		body, err := unseal(v)
		if err != nil {
			return Rule{}, fmt.Errorf("rule %d: %w", id, err)
		}
		v = body
	}
	d := decoder{b: v}
	ver := d.versionOf(codecV1, ruleV2, sealedV3, ruleV4)
	r := Rule{ID: id, UpdatedAt: d.time("updated_at")}
	if ver == codecV1 {
		r.UpdatedAt = time.Time{} // not a source version: unknown
	}
	ref := d.bytes("ref")
	afterRef := len(v) - len(d.b)
	trig := d.bytes("trigger_ref")
	afterTrig := len(v) - len(d.b)
	var form []byte
	if ver == ruleV4 {
		form = d.bytes("timer")
	}
	if d.err != nil {
		return Rule{}, fmt.Errorf("rule %d: %w", id, d.err)
	}
	if len(form) > 0 {
		t := scratch
		if t == nil {
			t = new(scheduler.Timer)
		}
		err := scheduler.DecodeTimerInto(form, t)
		switch {
		case errors.Is(err, scheduler.ErrTimerForm):
			return Rule{}, fmt.Errorf("rule %d: %w: timer: %w", id, ErrCorrupt, err)
		case err == nil:
			r.Timer = t
		}
		// Otherwise the form is sound but names what this build cannot load (a time
		// zone missing from its zone database): no Timer, and the caller's Parse of
		// the params says why, as it would have without the form.
	}
	if scratch != nil && r.Timer != nil {
		return r, nil
	}
	// One allocation for both strings: they sit side by side in the value, with the
	// trigger_ref length prefix between them.
	both := string(v[afterRef-len(ref) : afterTrig])
	r.Ref = both[:len(ref)]
	r.TriggerRef = both[len(both)-len(trig):]
	if p := d.rest(); p != nil {
		r.Params = json.RawMessage(p)
	}
	return r, nil
}

// encodeWatermark writes v3 | slot | count | chain | crc32c; decodeWatermark also
// reads the two layouts of earlier versions.
func encodeWatermark(w Watermark, c protocol.Chain) []byte {
	n := 1 + watermarkLen + 1 + crcLen
	if len(c) > 0 {
		n += chainLen(c)
	}
	b := make([]byte, 0, n)
	b = append(b, sealedV3)
	b = appendTime(b, w.Slot)
	b = binary.BigEndian.AppendUint64(b, w.Count)
	return seal(appendChain(b, c))
}

func decodeWatermark(v []byte) (Watermark, protocol.Chain, error) {
	if len(v) == watermarkLen {
		return Watermark{
			Slot:  nanosTime(int64(binary.BigEndian.Uint64(v))),
			Count: binary.BigEndian.Uint64(v[8:]),
		}, nil, nil
	}
	if len(v) > 0 && v[0] == sealedV3 {
		body, err := unseal(v)
		if err != nil {
			return Watermark{}, nil, fmt.Errorf("watermark: %w", err)
		}
		v = body
	}
	d := decoder{b: v}
	d.versionOf(wmV2, sealedV3)
	w := Watermark{Slot: d.time("slot"), Count: d.u64("count")}
	c := d.chain()
	if d.err == nil && len(d.b) != 0 {
		d.fail("trailing bytes")
	}
	if d.err != nil {
		return Watermark{}, nil, fmt.Errorf("watermark of %d bytes: %w", len(v), d.err)
	}
	return w, c, nil
}

// Chains. A point is From i64 | Last i64 | uvarint firer N | firer node | uvarint
// epoch N | epoch node, where the epoch node is a uvarint 0 when it is the firer's (the
// common case: a holder fires under its own epoch), else its length + 1 and its bytes.
const (
	// maxChainPoints bounds a decoded chain (protocol.ChainLen is what is written).
	maxChainPoints = 64
	minPointLen    = 8 + 8 + 1 + 1 + 1 + 1
)

func chainLen(c protocol.Chain) int {
	n := binary.MaxVarintLen64
	for _, p := range c {
		n += 16 + 3*binary.MaxVarintLen64 + len(p.Firer.Node) + 1 + len(p.Epoch.Node)
	}
	return n
}

func appendChain(b []byte, c protocol.Chain) []byte {
	b = binary.AppendUvarint(b, uint64(len(c)))
	for _, p := range c {
		b = binary.BigEndian.AppendUint64(b, uint64(p.From))
		b = binary.BigEndian.AppendUint64(b, uint64(p.Last))
		b = binary.AppendUvarint(b, p.Firer.N)
		b = appendString(b, p.Firer.Node)
		b = binary.AppendUvarint(b, p.Epoch.N)
		if p.Epoch.Node == p.Firer.Node {
			b = append(b, 0)
		} else {
			b = binary.AppendUvarint(b, uint64(len(p.Epoch.Node))+1)
			b = append(b, p.Epoch.Node...)
		}
	}
	return b
}

func (d *decoder) uvarint(what string) uint64 {
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail("bad " + what)
		return 0
	}
	d.b = d.b[n:]
	return v
}

// str is a length-prefixed string; a repeat of the last one read shares its memory.
func (d *decoder) str(what string) string {
	b := d.bytes(what)
	if string(b) == d.last { // no allocation for the comparison
		return d.last
	}
	d.last = string(b)
	return d.last
}

func (d *decoder) chain() protocol.Chain {
	n := d.uvarint("chain length")
	if n == 0 || d.err != nil {
		return nil
	}
	if n > maxChainPoints || n*minPointLen > uint64(len(d.b)) {
		d.fail(fmt.Sprintf("chain of %d points", n))
		return nil
	}
	c := make(protocol.Chain, n)
	for i := range c {
		p := &c[i]
		p.From, p.Last = int64(d.u64("point from")), int64(d.u64("point last"))
		p.Firer.N = d.uvarint("firer incarnation")
		p.Firer.Node = d.str("firer node")
		p.Epoch.N = d.uvarint("epoch")
		switch l := d.uvarint("epoch node length"); {
		case d.err != nil:
		case l == 0:
			p.Epoch.Node = p.Firer.Node
		case l-1 > uint64(len(d.b)):
			d.fail("bad epoch node length")
		default:
			p.Epoch.Node = string(d.b[:l-1])
			d.b = d.b[l-1:]
		}
	}
	if d.err != nil {
		return nil
	}
	return c
}

func validateEvent(e Event) error {
	if e.RuleID <= 0 {
		return fmt.Errorf("event rule id %d: must be positive", e.RuleID)
	}
	return checkTime(e.RuleID, "event Slot", e.Slot)
}

// eventV2 is the version byte of events that record the fire they stand for.
const eventV2 = 2

// fireRef is what an event of the protocol records of its fire besides rule and slot.
type fireRef struct {
	prev  int64
	count uint64
	firer protocol.Incarnation
}

// appendEvent writes e as v1, or as v2 with ref when ref is not nil.
func appendEvent(b []byte, e Event, created time.Time, ref *fireRef) []byte {
	if ref == nil {
		b = append(b, codecV1)
	} else {
		b = append(b, eventV2)
	}
	b = appendTime(b, created)
	b = binary.BigEndian.AppendUint64(b, uint64(e.RuleID))
	b = appendTime(b, e.Slot)
	if ref != nil {
		b = binary.BigEndian.AppendUint64(b, uint64(ref.prev))
		b = binary.BigEndian.AppendUint64(b, ref.count)
		b = binary.AppendUvarint(b, ref.firer.N)
		b = appendString(b, ref.firer.Node)
	}
	b = appendString(b, e.IdempotencyKey)
	return append(b, e.Body...)
}

func eventLen(e Event, ref *fireRef) int {
	n := 1 + 8 + 8 + 8 + binary.MaxVarintLen64 + len(e.IdempotencyKey) + len(e.Body)
	if ref != nil {
		n += 16 + 2*binary.MaxVarintLen64 + len(ref.firer.Node)
	}
	return n
}

// event reads an event; ref is nil for a v1 event.
func (d *decoder) event() (Event, time.Time, *fireRef) {
	ver := d.versionOf(codecV1, eventV2)
	created := d.time("created_at")
	e := Event{RuleID: int64(d.u64("rule_id")), Slot: d.time("slot")}
	var ref *fireRef
	if ver == eventV2 {
		ref = &fireRef{prev: int64(d.u64("prev")), count: d.u64("count")}
		ref.firer.N = d.uvarint("firer incarnation")
		ref.firer.Node = string(d.bytes("firer node"))
	}
	e.IdempotencyKey = string(d.bytes("idempotency key"))
	e.Body = d.rest()
	return e, created, ref
}

func decodeOutboxEntry(seq uint64, v []byte) (OutboxEntry, error) {
	d := decoder{b: v}
	e, created, ref := d.event()
	if d.err != nil {
		return OutboxEntry{}, fmt.Errorf("outbox entry %d: %w", seq, d.err)
	}
	ent := OutboxEntry{Seq: seq, Event: e, CreatedAt: created}
	if ref != nil {
		ent.Prev, ent.Count, ent.Firer = ref.prev, ref.count, ref.firer
	}
	return ent, nil
}

func encodeDeadLetter(reason string, status int, at time.Time, outboxValue []byte) []byte {
	b := make([]byte, 0, 1+8+binary.MaxVarintLen64*2+len(reason)+len(outboxValue))
	b = append(b, codecV1)
	b = appendTime(b, at)
	b = binary.AppendVarint(b, int64(status))
	b = appendString(b, reason)
	return append(b, outboxValue...)
}

func decodeDeadLetter(seq uint64, v []byte) (DeadLetter, error) {
	d := decoder{b: v}
	d.version()
	dl := DeadLetter{Seq: seq, At: d.time("at"), Status: int(d.varint("status"))}
	dl.Reason = string(d.bytes("reason"))
	dl.Event, _, _ = d.event()
	if d.err != nil {
		return DeadLetter{}, fmt.Errorf("dead letter %d: %w", seq, d.err)
	}
	return dl, nil
}

func encodeTombstone(version time.Time) []byte {
	return appendTime(append(make([]byte, 0, 9), codecV1), version)
}

func decodeTombstone(id int64, v []byte) (Tombstone, error) {
	d := decoder{b: v}
	d.version()
	ts := Tombstone{ID: id, Version: d.time("version")}
	if d.err == nil && len(d.b) != 0 {
		d.fail("trailing bytes")
	}
	if d.err != nil {
		return Tombstone{}, fmt.Errorf("tombstone %d: %w", id, d.err)
	}
	return ts, nil
}

// outboxValueOfDeadLetter is the outbox value inside dead letter v, checked, in new
// memory, with its commit time set to now.
func outboxValueOfDeadLetter(seq uint64, v []byte, now time.Time) ([]byte, error) {
	d := decoder{b: v}
	d.version()
	d.time("at")
	d.varint("status")
	d.bytes("reason")
	if d.err != nil {
		return nil, fmt.Errorf("dead letter %d: %w", seq, d.err)
	}
	entry := bytes.Clone(d.b)
	if _, err := decodeOutboxEntry(seq, entry); err != nil {
		return nil, fmt.Errorf("dead letter %d: %w", seq, err)
	}
	copy(entry[1:9], appendTime(nil, now)) // the event's layout: version, created_at, …
	return entry, nil
}

// deadLetterAt reads only the time a dead letter was written.
func deadLetterAt(v []byte) (time.Time, error) {
	d := decoder{b: v}
	d.version()
	at := d.time("at")
	return at, d.err
}
