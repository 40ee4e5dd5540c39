package scheduler

// TEMPORARY: placeholder so the engine compiles while spec.go is written.
// The spec helper deletes this file when Parse, Next, Last and Equal exist.

import (
	"errors"
	"time"
)

// Parse turns (trigger_ref, trigger_params) into a Timer. ruleID seeds the
// stable phase of interval timers that have no start_at.
func Parse(triggerRef string, params []byte, ruleID int64) (*Timer, error) {
	return nil, errors.New("not implemented yet")
}

// Next returns the first slot strictly after t, or false if there is none.
func (t *Timer) Next(after time.Time) (time.Time, bool) {
	if t.Kind == KindDatetime {
		return t.FireAt, t.FireAt.After(after)
	}
	k := after.Sub(t.Anchor)/t.Interval + 1
	s := t.Anchor.Add(k * t.Interval)
	for !s.After(after) {
		s = s.Add(t.Interval)
	}
	return s, true
}

// Last returns the latest slot s with after < s <= notAfter, or false.
func (t *Timer) Last(after, notAfter time.Time) (time.Time, bool) {
	var last time.Time
	ok := false
	for s, more := t.Next(after); more && !s.After(notAfter); s, more = t.Next(s) {
		last, ok = s, true
	}
	return last, ok
}

// Equal reports whether two timers have the same schedule and policies.
func (t *Timer) Equal(o *Timer) bool { return t == o }
