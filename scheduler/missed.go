package scheduler

import (
	"time"
)

// MissReason says why a rule's slots did not fire on time. The values are
// stable lowercase tokens: they are stored, exported as the reason label of
// timerd_missed_slots_total and documented in docs/timers.md.
type MissReason string

// The reasons the engine decides (plan) and those its host reports
// (ReportMissed).
const (
	// MissNodeDown: fired late by catch-up, past the misfire grace (the rule's
	// owner was down or restarting). The engine decides it.
	MissNodeDown MissReason = "node_down"
	// MissSkipped: dropped by the misfire policy: skip, or fire_all beyond its
	// cap of catch-up fires. The engine decides it.
	MissSkipped MissReason = "skipped_by_policy"
	// MissCollapsed: fire_once fired only the most recent missed slot; the
	// others, one run with a count. The engine decides it.
	MissCollapsed MissReason = "collapsed_by_fire_once"
	// MissOwnerChanging: fired late by catch-up where another node fired the
	// rule last (its ownership moved). A clustered host refines MissNodeDown
	// to it.
	MissOwnerChanging MissReason = "owner_changing"
	// MissDuplicateGuard: a fire refused because the rule's watermark or fire
	// chain says the slot was decided elsewhere. Reported by a clustered host.
	MissDuplicateGuard MissReason = "duplicate_guard"
	// MissInvalidSchedule: the rule's timer does not parse, so none of its
	// slots fire (the slots are unknown: From, To and Count are zero).
	// Reported by the host.
	MissInvalidSchedule MissReason = "invalid_schedule"
)

// MissReasons are the reasons recorded, in a stable order.
var MissReasons = []MissReason{MissNodeDown, MissSkipped, MissCollapsed, MissOwnerChanging, MissDuplicateGuard, MissInvalidSchedule}

// Miss is a run of one rule's slots that did not fire on time, for one
// reason: a whole outage's worth of a 1 s rule is one Miss with a count, not
// one per slot.
type Miss struct {
	RuleID   int64
	From, To time.Time // the run's first and last slot (equal for one slot); zero when unknown
	Count    uint64    // slots in [From, To]
	// Estimated: Count is extrapolated (a long run of a cron schedule, whose
	// slots are counted one by one only up to countLimit).
	Estimated bool
	Reason    MissReason
	At        time.Time // when it was decided
	Detail    string    // optional: a verdict, a parse error
}

// countLimit bounds the Next calls spent counting the slots of one run of a
// cron schedule: the count of a longer run is extrapolated from them. Interval
// runs are counted by arithmetic, whatever their length.
const countLimit = 128

// maxReported bounds the misses ReportMissed holds until a commit takes them;
// more are dropped (a store that cannot commit holds them back).
const maxReported = 4096

// countRun counts the slots of t in [from, to], both slots of t.
func (e *Engine) countRun(t *Timer, from, to time.Time) (n uint64, estimated bool) {
	if to.Before(from) {
		return 0, false
	}
	if t.shape() == shapeInterval {
		return uint64(to.Sub(from)/t.Interval) + 1, false
	}
	n = 1
	s := from
	for s.Before(to) {
		if n == countLimit {
			// Extrapolate from the spacing of the slots counted so far.
			per := s.Sub(from) / time.Duration(n-1)
			if per <= 0 {
				return n, true
			}
			return n + uint64(to.Sub(s)/per), true
		}
		nx, ok := e.nextSlot(t, s)
		if !ok || nx.After(to) {
			break
		}
		s = nx
		n++
	}
	return n, false
}

// missRun records a run of missed slots [from, to] of rule id.
func (e *Engine) missRun(id int64, t *Timer, from, to, now time.Time, reason MissReason) {
	n, est := e.countRun(t, from, to)
	e.missed = append(e.missed, Miss{RuleID: id, From: from, To: to, Count: n, Estimated: est, Reason: reason, At: now})
}

// ReportMissed hands the engine misses its host decided (a verdict, an
// invalid rule): they are committed with the next batch, which they start if
// nothing is due. At most maxReported wait; more are dropped. It may be called
// from any goroutine, also from LoadFrom's callback.
func (e *Engine) ReportMissed(ms ...Miss) {
	if len(ms) == 0 {
		return
	}
	e.reportMu.Lock()
	room := max(0, maxReported-len(e.reported))
	e.reported = append(e.reported, ms[:min(room, len(ms))]...)
	e.reportMu.Unlock()
	e.signal()
}
