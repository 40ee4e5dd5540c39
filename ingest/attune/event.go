package attune

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/timerd/timerd/scheduler"
	"github.com/timerd/timerd/store"
)

// ErrBadFire is returned by BuildEvent for a fire that cannot become an event.
var ErrBadFire = errors.New("bad fire")

// Bounds of time.Time.UnixNano; a slot outside them has no idempotency key.
var (
	minUnixNano = time.Unix(0, math.MinInt64)
	maxUnixNano = time.Unix(0, math.MaxInt64)
)

// BuildEvent turns a fire into the event posted to Attune (contract §3): the
// JSON body with the payload keys of the timer's kind, and the idempotency
// key "<rule_id>:<slot as unix nanoseconds>". trigger_ref is the rule's
// trigger_ref as given. Times are RFC 3339 with nanoseconds, in UTC.
func BuildEvent(f scheduler.Fire, sensorRef string) (store.Event, error) {
	switch {
	case f.Timer == nil:
		return store.Event{}, fmt.Errorf("build event for rule %d: %w: no timer", f.RuleID, ErrBadFire)
	case f.RuleID <= 0:
		return store.Event{}, fmt.Errorf("build event: %w: rule id %d is not positive", ErrBadFire, f.RuleID)
	case f.Slot.Before(minUnixNano) || f.Slot.After(maxUnixNano):
		return store.Event{}, fmt.Errorf("build event for rule %d: %w: slot %v out of range", f.RuleID, ErrBadFire, f.Slot)
	case f.FiredAt.IsZero():
		return store.Event{}, fmt.Errorf("build event for rule %d: %w: fired_at is zero", f.RuleID, ErrBadFire)
	}
	t := f.Timer
	// The body is appended field by field in a buffer of about its size: the keys in
	// the order of contract §3, strings escaped exactly as encoding/json does
	// (event_test.go checks it byte for byte against json.Marshal).
	b := make([]byte, 0, 320+len(t.TriggerRef)+len(t.Expression)+len(t.Timezone)+len(sensorRef))
	b = append(b, `{"trigger_ref":`...)
	b = appendJSONString(b, t.TriggerRef)
	b = append(b, `,"trigger_instance_id":"rule_`...)
	b = strconv.AppendInt(b, f.RuleID, 10)
	b = append(b, `","payload":{"type":`...)
	switch t.Kind {
	case scheduler.KindInterval:
		b = append(b, `"interval","interval_seconds":`...)
		b = appendJSONFloat(b, t.Interval.Seconds())
		b = appendTimeField(b, `,"fired_at":`, f.FiredAt)
		b = appendTimeField(b, `,"scheduled_at":`, f.Slot)
	case scheduler.KindCron:
		b = append(b, `"cron"`...)
		b = appendTimeField(b, `,"fired_at":`, f.FiredAt)
		b = appendTimeField(b, `,"scheduled_at":`, f.Slot)
		b = append(b, `,"expression":`...)
		b = appendJSONString(b, t.Expression)
		b = append(b, `,"timezone":`...)
		b = appendJSONString(b, t.Timezone)
		if f.Next.IsZero() {
			b = append(b, `,"next_fire_at":null`...) // the rule has no next slot
		} else {
			b = appendTimeField(b, `,"next_fire_at":`, f.Next)
		}
	case scheduler.KindDatetime:
		fireAt := t.FireAt
		if fireAt.IsZero() {
			fireAt = f.Slot
		}
		b = append(b, `"one_shot"`...)
		b = appendTimeField(b, `,"fire_at":`, fireAt)
		b = appendTimeField(b, `,"fired_at":`, f.FiredAt)
		b = appendTimeField(b, `,"scheduled_at":`, f.Slot)
		b = append(b, `,"timezone":`...)
		b = appendJSONString(b, t.Timezone)
		b = append(b, `,"delay_ms":`...)
		b = strconv.AppendInt(b, f.FiredAt.Sub(fireAt).Milliseconds(), 10)
	default:
		return store.Event{}, fmt.Errorf("build event for rule %d: %w: unknown timer kind %q", f.RuleID, ErrBadFire, t.Kind)
	}
	b = append(b, `,"execution_count":`...)
	b = strconv.AppendUint(b, f.Count, 10)
	b = append(b, `,"sensor_ref":`...)
	b = appendJSONString(b, sensorRef)
	body := append(b, "}}"...)
	return store.Event{
		RuleID:         f.RuleID,
		Slot:           f.Slot,
		IdempotencyKey: IdempotencyKey(f.RuleID, f.Slot),
		Body:           body,
	}, nil
}

// IdempotencyKey is the Idempotency-Key of a rule's slot:
// "<rule_id>:<slot as unix nanoseconds>".
func IdempotencyKey(ruleID int64, slot time.Time) string {
	b := make([]byte, 0, 40)
	b = strconv.AppendInt(b, ruleID, 10)
	b = append(b, ':')
	b = strconv.AppendInt(b, slot.UnixNano(), 10)
	return string(b)
}

// appendTimeField appends key and t as a JSON string: RFC 3339 with nanoseconds, in
// UTC (no character of it needs escaping).
func appendTimeField(b []byte, key string, t time.Time) []byte {
	b = append(b, key...)
	b = append(b, '"')
	b = t.UTC().AppendFormat(b, time.RFC3339Nano)
	return append(b, '"')
}

// appendJSONFloat appends f as encoding/json writes a float64: the shortest
// representation, in exponent form below 1e-6 and from 1e21, with a one-digit
// negative exponent written as e-7, not e-07. f is finite (a duration in seconds).
func appendJSONFloat(b []byte, f float64) []byte {
	format := byte('f')
	if abs := math.Abs(f); abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		format = 'e'
	}
	b = strconv.AppendFloat(b, f, format, -1, 64)
	if format == 'e' {
		if n := len(b); n >= 4 && b[n-4] == 'e' && b[n-3] == '-' && b[n-2] == '0' {
			b[n-2] = b[n-1]
			b = b[:n-1]
		}
	}
	return b
}

const hexDigits = "0123456789abcdef"

// appendJSONString appends s as encoding/json's Marshal writes a string: quoted,
// with \", \\, \b, \f, \n, \r and \t, other control bytes and <, >, & as \u00XX,
// U+2028 and U+2029 as \u2028 and \u2029, and each byte of invalid UTF-8 as \ufffd.
func appendJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		if c := s[i]; c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
		case r == '\u2028' || r == '\u2029':
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xF])
		default:
			i += size
			continue
		}
		i += size
		start = i
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// MarkEvent returns e with the payload key mark set to true, at the payload's end:
// "manual" on an event an operator fired (timerd rules fire), "backfill" on one a
// backfill sent (docs/operations.md, "Backfill and fire now"). mark is a JSON name
// that needs no escaping; e's body is BuildEvent's, which ends with the payload's
// and the body's closing braces.
func MarkEvent(e store.Event, mark string) (store.Event, error) {
	body := e.Body
	if len(body) < 2 || string(body[len(body)-2:]) != "}}" {
		return store.Event{}, fmt.Errorf("mark event of rule %d %q: %w: the body does not end with its payload", e.RuleID, mark, ErrBadFire)
	}
	b := make([]byte, 0, len(body)+len(mark)+8)
	b = append(b, body[:len(body)-2]...)
	b = append(b, `,"`...)
	b = append(b, mark...)
	b = append(b, `":true}}`...)
	e.Body = b
	return e, nil
}

// ManualKey is the Idempotency-Key of an event an operator fired at at:
// "<rule_id>:manual:<at as unix nanoseconds>", never the key of a slot.
func ManualKey(ruleID int64, at time.Time) string {
	b := make([]byte, 0, 48)
	b = strconv.AppendInt(b, ruleID, 10)
	b = append(b, ":manual:"...)
	b = strconv.AppendInt(b, at.UnixNano(), 10)
	return string(b)
}
