package scheduler

import (
	"math"
	"math/bits"
	"strings"
	"time"
)

// intervalSchedule has slots anchor + k·period for every integer k. Next
// and Last are integer arithmetic: no loops, no allocation, and no overflow
// whatever the distance between the anchor and the time asked about. It is
// used by value, made from a Timer's fields on each call.
type intervalSchedule struct {
	anchor time.Time
	period time.Duration // > 0
}

func (s intervalSchedule) next(after time.Time) (time.Time, bool) {
	n := after.Add(s.period - s.phase(after))
	return n, n.After(after) // false only at the edge of time.Time's range
}

func (s intervalSchedule) last(after, notAfter time.Time) (time.Time, bool) {
	l := notAfter.Add(-s.phase(notAfter))
	return l, l.After(after)
}

// phase returns (t − anchor) mod period, in [0, period).
func (s intervalSchedule) phase(t time.Time) time.Duration {
	// Within ±292 years of the anchor the difference is a Duration (Sub
	// saturates beyond, so only those two values can be wrong).
	if d := t.Sub(s.anchor); d != math.MinInt64 && d != math.MaxInt64 {
		r := d % s.period
		if r < 0 {
			r += s.period
		}
		return r
	}
	return s.phaseWide(t)
}

// phaseWide is phase in 128-bit arithmetic, for any distance.
func (s intervalSchedule) phaseWide(t time.Time) time.Duration {
	forward := !t.Before(s.anchor)
	hi, lo := absDiffNanos(t, s.anchor)
	r := time.Duration(bits.Rem64(hi, lo, uint64(s.period)))
	if !forward && r != 0 {
		r = s.period - r
	}
	return r
}

// absDiffNanos returns |a − b| in nanoseconds as a 128-bit (hi, lo) pair.
func absDiffNanos(a, b time.Time) (hi, lo uint64) {
	if a.Before(b) {
		a, b = b, a
	}
	secs := uint64(a.Unix()) - uint64(b.Unix()) // exact: the true difference is in [0, 2^64)
	ns := a.Nanosecond() - b.Nanosecond()
	if ns < 0 {
		secs--
		ns += 1e9
	}
	hi, lo = bits.Mul64(secs, 1e9)
	var carry uint64
	lo, carry = bits.Add64(lo, uint64(ns), 0)
	return hi + carry, lo
}

// anchorFor returns start if set, else the Unix epoch plus a stable offset
// in [0, period) taken from a hash of the rule id, in whole milliseconds.
// Rules created together are so spread over the interval instead of firing
// together (Prometheus spreads rule groups the same way). Changing the hash
// moves the phase of every interval timer: do not.
func anchorFor(start time.Time, period time.Duration, ruleID int64) time.Time {
	if !start.IsZero() {
		return start
	}
	h := uint64(14695981039346656037) // FNV-1a over the id's 8 little-endian bytes
	for i := 0; i < 8; i++ {
		h ^= uint64(ruleID) >> (8 * i) & 0xff
		h *= 1099511628211
	}
	ms := uint64(period / time.Millisecond)
	if ms == 0 {
		return time.Unix(0, 0).UTC()
	}
	offset := time.Duration(mix64(h)%ms) * time.Millisecond
	return time.Unix(0, 0).UTC().Add(offset)
}

// mix64 is splitmix64's finaliser: FNV-1a of consecutive ids differs mostly
// in the high bits, and the offset is taken modulo a small number.
func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

// parseEvery reads "@every <Go duration>". isEvery is false for anything
// that does not start with "@every".
func parseEvery(expr string) (d time.Duration, isEvery bool, err error) {
	s := strings.TrimSpace(expr)
	if len(s) < len("@every") || !strings.EqualFold(s[:len("@every")], "@every") {
		return 0, false, nil
	}
	arg := strings.TrimSpace(s[len("@every"):])
	if arg == "" || len(s) > len("@every") && !isSpace(s[len("@every")]) {
		return 0, true, specErr("trigger_params.expression", "want \"@every <duration>\" such as \"@every 5m\", got %s", quote(expr))
	}
	d, perr := time.ParseDuration(arg)
	switch {
	case perr != nil:
		return 0, true, specErr("trigger_params.expression", "@every: %s is not a Go duration such as \"90s\" or \"1h30m\"", quote(arg))
	case d < time.Second:
		return 0, true, specErr("trigger_params.expression", "@every: must be at least 1s, got %s", quote(arg))
	case d > maxInterval:
		return 0, true, specErr("trigger_params.expression", "@every: %s is longer than the limit of %v", quote(arg), maxInterval)
	}
	return d, true, nil
}
