package store

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"time"
)

// Records are small binary envelopes rather than JSON: decoding 1M rules at start-up is
// on the restart path, and a fixed layout decodes several times faster than
// encoding/json (see BenchmarkDecodeRule). Every value starts with a codec version byte.
//
//	rule:        v2 | updated_at i64 | uvarint len, ref | uvarint len, trigger_ref | params…
//	             (v1, the same layout, held the time the node stored the rule: it is read as zero)
//	watermark:   slot i64 | count u64                     (no version byte: fixed 16 bytes)
//	tombstone:   v1 | version i64
//	event:       v1 | created_at i64 | rule_id i64 | slot i64 | uvarint len, key | body…
//	dead letter: v1 | at i64 | varint status | uvarint len, reason | event…
//
// Integers are big-endian; times are Unix nanoseconds, with math.MinInt64 for the zero time.
const codecV1 = 1

// ruleV2 is the version byte of rule records whose updated_at is the rule's source
// version (Rule.UpdatedAt). A v1 rule's updated_at was when the node stored it.
const ruleV2 = 2

const watermarkLen = 16

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

func encodeRule(r Rule) []byte {
	b := make([]byte, 0, 1+8+2+len(r.Ref)+2+len(r.TriggerRef)+len(r.Params))
	b = append(b, ruleV2)
	b = appendTime(b, r.UpdatedAt)
	b = appendString(b, r.Ref)
	b = appendString(b, r.TriggerRef)
	return append(b, r.Params...)
}

// decoder reads a value; the first failure sticks and later reads return zero values.
type decoder struct {
	b   []byte
	err error
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

func decodeRule(id int64, v []byte) (Rule, error) {
	d := decoder{b: v}
	ver := d.versionOf(codecV1, ruleV2)
	r := Rule{ID: id, UpdatedAt: d.time("updated_at")}
	if ver == codecV1 {
		r.UpdatedAt = time.Time{} // not a source version: unknown
	}
	ref := d.bytes("ref")
	afterRef := len(v) - len(d.b)
	trig := d.bytes("trigger_ref")
	afterTrig := len(v) - len(d.b)
	if d.err != nil {
		return Rule{}, fmt.Errorf("rule %d: %w", id, d.err)
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

func encodeWatermark(w Watermark) []byte {
	b := make([]byte, 0, watermarkLen)
	b = appendTime(b, w.Slot)
	return binary.BigEndian.AppendUint64(b, w.Count)
}

func decodeWatermark(v []byte) (Watermark, error) {
	if len(v) != watermarkLen {
		return Watermark{}, fmt.Errorf("%w: watermark of %d bytes, want %d", ErrCorrupt, len(v), watermarkLen)
	}
	return Watermark{
		Slot:  nanosTime(int64(binary.BigEndian.Uint64(v))),
		Count: binary.BigEndian.Uint64(v[8:]),
	}, nil
}

func validateEvent(e Event) error {
	if e.RuleID <= 0 {
		return fmt.Errorf("event rule id %d: must be positive", e.RuleID)
	}
	return checkTime(e.RuleID, "event Slot", e.Slot)
}

func appendEvent(b []byte, e Event, created time.Time) []byte {
	b = append(b, codecV1)
	b = appendTime(b, created)
	b = binary.BigEndian.AppendUint64(b, uint64(e.RuleID))
	b = appendTime(b, e.Slot)
	b = appendString(b, e.IdempotencyKey)
	return append(b, e.Body...)
}

func eventLen(e Event) int {
	return 1 + 8 + 8 + 8 + binary.MaxVarintLen64 + len(e.IdempotencyKey) + len(e.Body)
}

func (d *decoder) event() (Event, time.Time) {
	d.version()
	created := d.time("created_at")
	e := Event{RuleID: int64(d.u64("rule_id")), Slot: d.time("slot")}
	e.IdempotencyKey = string(d.bytes("idempotency key"))
	e.Body = d.rest()
	return e, created
}

func decodeOutboxEntry(seq uint64, v []byte) (OutboxEntry, error) {
	d := decoder{b: v}
	e, created := d.event()
	if d.err != nil {
		return OutboxEntry{}, fmt.Errorf("outbox entry %d: %w", seq, d.err)
	}
	return OutboxEntry{Seq: seq, Event: e, CreatedAt: created}, nil
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
	dl.Event, _ = d.event()
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
