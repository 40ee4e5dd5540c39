package scheduler

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"
)

// The binary form of a parsed Timer, which the store keeps next to a rule's JSON so
// that a restart needs no JSON parsing (docs/benchmarks.md, "Restart with 1,000,000
// rules"). Parse stays the single source of truth: the form is written only from a
// Timer that Parse returned, and DecodeTimer gives back a Timer Equal to it, with the
// same slots. Layout (varints as encoding/binary writes them):
//
//	v1 | ref u8 | kind u8 | misfire u8 | dst_gap u8 | dst_overlap u8 | flags u8 |
//	     varint misfire_grace | varint interval |
//	     [varint anchor Unix ns if flags&1] | [varint fire_at Unix ns if flags&2] |
//	     [varint jitter ns if flags&4] |
//	     uvarint len, timezone | uvarint len, expression |
//	     [uvarint len, trigger_ref if ref = 0]
//
// A flag a build does not know fails its decode (code out of range): the jitter flag
// came after the first builds of v1, which refuse such a form rather than fire
// without the jitter.
//
// A stored form freezes what Parse gave when it was written: a build whose Parse gives
// another Timer for the same input (a changed default, a fixed bug) must have the forms
// rewritten from the JSON, with a new store schema version as 4 → 5 did.
//
// The enumerations are codes, 0 for the empty string; ref 1–4 are the trigger refs
// timerd serves. A cron expression is compiled when decoded (the compiled form is
// shared between timers); "@every" cron timers are intervals and compile nothing.
const timerCodecV1 = 1

const (
	flagAnchor = 1 << iota
	flagFireAt
	flagJitter
)

// Code tables: index = code. Append only; a code is part of the stored format.
var (
	refCodes     = [...]string{"", refInterval, refCron, refDatetime, refTimer}
	kindCodes    = [...]Kind{"", KindInterval, KindCron, KindDatetime}
	misfireCodes = [...]MisfirePolicy{"", FireOnce, FireAll, Skip}
	gapCodes     = [...]DSTGap{"", GapShift, GapSkip}
	overlapCodes = [...]DSTOverlap{"", OverlapOnce, OverlapTwice}
)

func codeOf[T comparable](table []T, v T) (byte, bool) {
	for i, c := range table {
		if c == v {
			return byte(i), true
		}
	}
	return 0, false
}

// AppendBinary appends the binary form of t to b (encoding.BinaryAppender). It fails
// only for a Timer built by hand with a value Parse never gives.
func (t *Timer) AppendBinary(b []byte) ([]byte, error) {
	kind, ok1 := codeOf(kindCodes[:], t.Kind)
	misfire, ok2 := codeOf(misfireCodes[:], t.Misfire)
	gap, ok3 := codeOf(gapCodes[:], t.DSTGap)
	overlap, ok4 := codeOf(overlapCodes[:], t.DSTOverlap)
	if !ok1 || !ok2 || !ok3 || !ok4 || kind == 0 {
		return b, fmt.Errorf("timer of kind %q, misfire %q, dst_gap %q, dst_overlap %q: not a parsed timer",
			t.Kind, t.Misfire, t.DSTGap, t.DSTOverlap)
	}
	ref, known := codeOf(refCodes[:], t.TriggerRef)
	if t.TriggerRef == "" {
		known = false // code 0 is "spelled out", so an empty ref is written as such
	}
	if !known {
		ref = 0
	}
	var flags byte
	if !t.Anchor.IsZero() {
		flags |= flagAnchor
	}
	if !t.FireAt.IsZero() {
		flags |= flagFireAt
	}
	if t.Jitter != 0 {
		flags |= flagJitter
	}
	b = append(b, timerCodecV1, ref, kind, misfire, gap, overlap, flags)
	b = binary.AppendVarint(b, int64(t.MisfireGrace))
	b = binary.AppendVarint(b, int64(t.Interval))
	if flags&flagAnchor != 0 {
		b = binary.AppendVarint(b, t.Anchor.UnixNano())
	}
	if flags&flagFireAt != 0 {
		b = binary.AppendVarint(b, t.FireAt.UnixNano())
	}
	if flags&flagJitter != 0 {
		b = binary.AppendVarint(b, int64(t.Jitter))
	}
	b = appendStr(b, t.Timezone)
	b = appendStr(b, t.Expression)
	if ref == 0 {
		b = appendStr(b, t.TriggerRef)
	}
	return b, nil
}

func appendStr(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// ErrTimerForm is a binary form that does not decode (the store wraps it with the
// rule's id).
var ErrTimerForm = errors.New("bad binary timer")

// DecodeTimer returns the Timer whose binary form is b. It never panics on bad input:
// a truncated, unknown or inconsistent form is an error wrapping ErrTimerForm. A sound
// form of a cron timer whose time zone or expression this build cannot load (a zone
// database without the zone) gives Parse's error for it, a *SpecError.
func DecodeTimer(b []byte) (*Timer, error) {
	t := new(Timer)
	if err := DecodeTimerInto(b, t); err != nil {
		return nil, err
	}
	return t, nil
}

// DecodeTimerInto is DecodeTimer into *t, which it overwrites whole: a load of a
// million rules reuses one Timer rather than allocating one per rule (the engine
// keeps a copy of what it needs, Engine.LoadFrom). On an error *t is unspecified.
func DecodeTimerInto(b []byte, t *Timer) error {
	d := formReader{b: b}
	if v := d.byte(); v != timerCodecV1 {
		return d.failf("version %d", v)
	}
	ref, kind, misfire, gap, overlap, flags := d.byte(), d.byte(), d.byte(), d.byte(), d.byte(), d.byte()
	if d.err != nil {
		return d.err
	}
	if int(ref) >= len(refCodes) || kind == 0 || int(kind) >= len(kindCodes) || int(misfire) >= len(misfireCodes) ||
		int(gap) >= len(gapCodes) || int(overlap) >= len(overlapCodes) || flags&^(flagAnchor|flagFireAt|flagJitter) != 0 {
		return d.failf("code out of range")
	}
	*t = Timer{
		TriggerRef: refCodes[ref],
		Kind:       kindCodes[kind],
		Misfire:    misfireCodes[misfire],
		DSTGap:     gapCodes[gap],
		DSTOverlap: overlapCodes[overlap],
	}
	t.MisfireGrace = time.Duration(d.varint())
	t.Interval = time.Duration(d.varint())
	if flags&flagAnchor != 0 {
		t.Anchor = time.Unix(0, d.varint()).UTC()
	}
	if flags&flagFireAt != 0 {
		t.FireAt = time.Unix(0, d.varint()).UTC()
	}
	if flags&flagJitter != 0 {
		t.Jitter = time.Duration(d.varint())
	}
	t.Timezone = d.str()
	t.Expression = d.str()
	if ref == 0 {
		t.TriggerRef = d.str()
	}
	switch {
	case d.err != nil:
		return d.err
	case len(d.b) != 0:
		return d.failf("%d trailing bytes", len(d.b))
	case t.MisfireGrace < 0 && t.MisfireGrace != UnlimitedGrace, t.Interval < 0, t.Jitter < 0,
		t.Interval > 0 && t.Jitter >= t.Interval:
		return d.failf("negative duration, or a jitter not below the interval")
	}
	switch t.Kind {
	case KindInterval:
		if t.Interval == 0 {
			return d.failf("interval timer without a period")
		}
	case KindDatetime:
		if t.FireAt.IsZero() {
			return d.failf("datetime timer without fire_at")
		}
	case KindCron:
		// Parse's time zone: the name as given, "UTC" when there was none.
		// A zone or an expression this build cannot load is not a bad form: Parse of
		// the rule's params fails the same way here, and says so.
		loc, err := loadLocation(t.Timezone)
		if err != nil {
			return err
		}
		t.Location = loc
		if t.Interval > 0 {
			break // "@every d": slots as for an interval
		}
		if t.cron, err = newCron(t.Expression, loc, t.DSTGap, t.DSTOverlap); err != nil {
			return err
		}
	}
	return nil
}

// formReader reads a binary form; the first failure sticks.
type formReader struct {
	b   []byte
	err error
}

func (d *formReader) failf(format string, args ...any) error {
	if d.err == nil {
		d.err = fmt.Errorf("%w: %s", ErrTimerForm, fmt.Sprintf(format, args...))
	}
	d.b = nil
	return d.err
}

func (d *formReader) byte() byte {
	if len(d.b) == 0 {
		_ = d.failf("truncated")
		return 0
	}
	v := d.b[0]
	d.b = d.b[1:]
	return v
}

func (d *formReader) varint() int64 {
	v, n := binary.Varint(d.b)
	if n <= 0 {
		_ = d.failf("truncated or bad varint")
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *formReader) str() string {
	l, n := binary.Uvarint(d.b)
	if n <= 0 || l > uint64(len(d.b)-n) {
		_ = d.failf("bad string length")
		return ""
	}
	s := internStr(d.b[n : n+int(l)])
	d.b = d.b[n+int(l):]
	return s
}

// internStr returns the string of b, the same one for the common values (time zones
// and expressions repeat across rules; "UTC" is on nearly every cron timer), so that
// decoding a million rules does not allocate a copy of each.
func internStr(b []byte) string {
	switch string(b) { // no allocation: the compiler compares in place
	case "":
		return ""
	case "UTC":
		return "UTC"
	}
	interned.Lock()
	defer interned.Unlock()
	if s, ok := interned.m[string(b)]; ok {
		return s
	}
	s := string(b)
	if len(interned.m) < maxInterned {
		if interned.m == nil {
			interned.m = make(map[string]string)
		}
		interned.m[s] = s
	}
	return s
}

// interned holds the strings internStr shares. Bounded: past maxInterned distinct
// values each further one is a copy of its own, as without the table.
var interned struct {
	sync.Mutex
	m map[string]string
}

const maxInterned = 4096
