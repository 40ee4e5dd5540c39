package scheduler

import (
	"math"
	"time"
)

const maxDuration = time.Duration(math.MaxInt64)

// planned is what plan decided for one due rule.
type planned struct {
	n       int       // fires appended to the batch
	last    time.Time // watermark slot once they are committed (or the last slot skipped when n == 0)
	count   uint64    // watermark count once they are committed
	next    time.Time // the rule's following slot
	hasNext bool
}

// policyOf is the timer's misfire policy, FireOnce when unset or unknown.
func policyOf(t *Timer) MisfirePolicy {
	switch t.Misfire {
	case FireAll, Skip:
		return t.Misfire
	}
	return FireOnce
}

// grace is how late a slot of t may be and still be on time; ok is false
// when it is never missed.
func (e *Engine) grace(t *Timer) (g time.Duration, limited bool) {
	g = t.MisfireGrace
	if g == 0 {
		g = e.cfg.DefaultMisfireGrace
	}
	return g, g >= 0
}

// plan decides the fires of one due rule at now and appends at most room of
// them to e.fires. first is the rule's next slot, Next(wm.Slot), and is due.
//
// Slots in (wm.Slot, now] that are at most the grace late are on time and all
// fire, in order. Older ones were missed: the policy fires the most recent one
// (FireOnce), the most recent MaxCatchUp (FireAll) or none (Skip). Finding
// them costs O(fires + log gap) calls to Next and Last, never O(gap).
//
// With a jitter a slot is due at its fire time (Timer.FireTime), and missed
// only once even its latest fire time (the slot plus the jitter) is more than
// the grace late.
//
// When room runs out the plan stops early: the rule's next slot is still due
// and the next batch plans the rest.
//
// Missed slots are reported in e.missed, a run per reason (missRun): those the
// policy dropped (skipped, or collapsed by fire_once) and those fired late by
// catch-up (node_down). An on-time plan reports nothing and costs nothing more.
func (e *Engine) plan(id int64, t *Timer, wm Watermark, first, now time.Time, room int) planned {
	p := planned{last: wm.Slot, count: wm.Count, next: first, hasNext: true}
	s := first
	g, limited := e.grace(t)
	var cutoff time.Time // slots before it are missed
	missed := false
	if limited {
		cutoff = now.Add(-g - t.Jitter)
		if s.Before(cutoff) {
			missed = true
			policy := policyOf(t)
			m, ok := e.lastSlot(t, wm.Slot, cutoff.Add(-time.Nanosecond))
			if !ok || m.Before(s) {
				m = s // a Last that disagrees with Next: trust Next
			}
			switch policy {
			case Skip:
				e.m.misfire(Skip, "skipped").Inc()
				e.missRun(id, t, s, m, now, MissSkipped)
				p.last = m
				p.next, p.hasNext = e.nextSlot(t, m)
				if !p.hasNext {
					return p
				}
				s = p.next
			case FireAll:
				start := e.catchUpStart(t, wm.Slot, s, m)
				if start.After(s) {
					e.m.misfire(FireAll, "skipped").Inc()
					e.missBefore(id, t, wm.Slot, s, start, now, MissSkipped)
				}
				s = start
			default:
				if m.After(s) {
					e.m.misfire(FireOnce, "skipped").Inc()
					e.missBefore(id, t, wm.Slot, s, m, now, MissCollapsed)
				}
				s = m
			}
		}
	}
	var lateFrom, lateTo time.Time // the catch-up fires of this plan: one run of lateN
	var lateN uint64
	for room > 0 && !t.FireTime(id, s).After(now) {
		nx, ok := e.nextSlot(t, s)
		p.count++
		f := Fire{RuleID: id, Slot: s, FiredAt: now, Count: p.count, CatchUp: missed && s.Before(cutoff), Timer: t}
		if ok {
			f.Next = nx
		}
		if f.CatchUp {
			if lateN == 0 {
				lateFrom = s
			}
			lateTo = s
			lateN++
		}
		e.fires = append(e.fires, f)
		p.n++
		room--
		p.last = s
		p.next, p.hasNext = nx, ok
		if !ok {
			break
		}
		s = nx
	}
	if lateN > 0 {
		e.missed = append(e.missed, Miss{RuleID: id, From: lateFrom, To: lateTo, Count: lateN, Reason: MissNodeDown, At: now})
	}
	return p
}

// missBefore records the run of missed slots from first up to the slot before
// until, as missRun, when there is one (wm is the rule's watermark slot).
func (e *Engine) missBefore(id int64, t *Timer, wm, first, until, now time.Time, reason MissReason) {
	to, ok := e.lastSlot(t, wm, until.Add(-time.Nanosecond))
	if !ok || to.Before(first) {
		to = first // a Last that disagrees with Next: one slot
	}
	e.missRun(id, t, first, to, now, reason)
}

// catchUpStart returns the oldest of the last MaxCatchUp slots in
// (after, m], where first is the first slot after after and m the most
// recent missed slot.
//
// There is no Prev, so it guesses a window (x, m] from the spacing of the
// last two slots, counts the slots in it with Next (keeping the most recent
// in a ring), and widens the window by doubling while it holds too few or
// bisects it while it holds far too many. For a regular schedule the first
// guess is exact: about MaxCatchUp calls, whatever the gap.
func (e *Engine) catchUpStart(t *Timer, after, first, m time.Time) time.Time {
	limit := e.cfg.MaxCatchUp
	if limit <= 1 {
		return m
	}
	prev, ok := e.lastSlot(t, after, m.Add(-time.Nanosecond))
	if !ok {
		return m // m is the only missed slot
	}
	span := maxDuration
	if step := m.Sub(prev); step < maxDuration/time.Duration(limit) {
		span = step * time.Duration(limit)
	}
	return e.searchCatchUp(t, after, first, m, span)
}

// searchCatchUp is catchUpStart from a guessed window of span before m.
func (e *Engine) searchCatchUp(t *Timer, after, first, m time.Time, span time.Duration) time.Time {
	limit := e.cfg.MaxCatchUp
	if len(e.ring) < limit {
		e.ring = make([]time.Time, limit)
	}
	x := back(m, span, after)
	lo, hi := after, m // (lo, m] holds too many slots once tooMany; (hi, m] too few
	tooMany := false
	for range 256 {
		n, aborted := e.countSlots(t, x, m, 4*limit)
		switch {
		case aborted:
			lo, tooMany = x, true
		case n >= limit:
			return e.ring[n%limit] // the oldest of the last limit slots
		case !x.After(after):
			return first // all the missed slots fit under the cap
		default:
			hi = x
		}
		if tooMany {
			nx := lo.Add(hi.Sub(lo) / 2)
			if !nx.After(lo) || !nx.Before(hi) {
				break
			}
			x = nx
		} else {
			d := m.Sub(x)
			if d > maxDuration/2 {
				d = maxDuration
			} else {
				d *= 2
			}
			x = back(m, d, after)
		}
	}
	// Unreachable for a schedule whose slots strictly increase; fall back
	// to the one most recent slot rather than fire too many.
	return m
}

// back is m-d, but not before floor.
func back(m time.Time, d time.Duration, floor time.Time) time.Time {
	if d >= m.Sub(floor) {
		return floor
	}
	return m.Add(-d)
}

// countSlots counts the slots in (x, m] into e.ring, giving up (aborted) once
// there are more than abortAt.
func (e *Engine) countSlots(t *Timer, x, m time.Time, abortAt int) (n int, aborted bool) {
	limit := e.cfg.MaxCatchUp
	for s, ok := e.nextSlot(t, x); ok && !s.After(m); s, ok = e.nextSlot(t, s) {
		e.ring[n%limit] = s
		n++
		if n > abortAt {
			return n, true
		}
	}
	return n, false
}

// nextSlot is t.Next, counted, and refusing a slot that does not move
// forward (it would make the engine spin).
func (e *Engine) nextSlot(t *Timer, after time.Time) (time.Time, bool) {
	e.calls++
	s, ok := t.Next(after)
	if !ok || !s.After(after) {
		return time.Time{}, false
	}
	return s, true
}

// lastSlot is t.Last, counted and checked.
func (e *Engine) lastSlot(t *Timer, after, notAfter time.Time) (time.Time, bool) {
	e.calls++
	s, ok := t.Last(after, notAfter)
	if !ok || !s.After(after) || s.After(notAfter) {
		return time.Time{}, false
	}
	return s, true
}
