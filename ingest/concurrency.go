package ingest

import (
	"math"
	"time"
)

// limiter decides how many event POSTs may be in flight: the adaptive
// concurrency of delivery. It follows the receiver rather than a fixed pool:
// a receiver that answers in 20 ms needs ten times the POSTs in flight of one
// that answers in 2 ms for the same events per second (Little's law), and one
// that is overloaded needs fewer.
//
// The limit moves once per window of samples (a few round trips), in the
// spirit of Netflix's concurrency-limits gradient limiter and of TCP's AIMD:
//
//   - It grows (by √limit) only while the limit binds (an event waited for a
//     slot during the window: there is a backlog) and latency holds: the
//     window's mean round trip is within tolerance of the base round trip.
//     At a fixed rate the round trip grows with the POSTs in flight (Little's
//     law again), so latency holding is what says that more POSTs in flight
//     still bring more events per second.
//   - It shrinks by the gradient base·tolerance/rtt (at most by half) when the
//     latency does not hold while the limit binds.
//   - It halves at once on an answer that says the receiver is overloaded
//     (429, 5xx, 408, a transport error or timeout), once per round: the POSTs
//     that were already in flight when it halved do not halve it again.
//   - A Retry-After stops new POSTs until it has passed (capped by the
//     caller), on top of the halving.
//   - It never exceeds the ceiling, the node's share of the cluster's budget,
//     and never falls below 1.
//
// The base round trip is the lowest window mean of the last two base periods
// (baseEvery each): it follows a receiver that became slower for good within
// 2·baseEvery, and a burst of queueing does not become the new normal at once.
//
// Every method takes the time: a limiter has no clock of its own, so tests
// drive it with made-up times. It is not safe for concurrent use: the
// delivery engine's loop owns it.
type limiter struct {
	limit   float64
	ceiling int

	winStart  time.Time
	winN      int
	winRTT    time.Duration // sum of the window's round trips
	winBinds  bool          // an event waited for a slot during the window
	baseCur   time.Duration // lowest window mean since baseAt; 0: none yet
	basePrev  time.Duration // lowest window mean of the period before
	baseAt    time.Time
	lastDrop  time.Time // POSTs started before it do not lower the limit again
	pausedTil time.Time // Retry-After: no new POST before
}

const (
	// initialLimit is where a limiter starts (the old fixed pool's size).
	initialLimit = 32
	// latencyTolerance: the window's round trip may be this many times the
	// base before the limit stops growing and shrinks.
	latencyTolerance = 2.0
	// minWindow and minWindowSamples bound a window from below; a window is
	// also at least two of its own round trips long.
	minWindow        = 50 * time.Millisecond
	minWindowSamples = 8
	baseEvery        = 10 * time.Second
)

// limitChange says why a window or a signal changed the limit.
type limitChange int

const (
	limitSame limitChange = iota
	limitGrew
	limitLatency  // shrunk: the latency did not hold
	limitOverload // halved: 429, 5xx, transport error
	limitRetryAfter
)

func newLimiter(ceiling int) *limiter {
	l := &limiter{}
	l.setCeiling(ceiling)
	l.limit = math.Min(initialLimit, float64(l.ceiling))
	return l
}

// setCeiling sets the most POSTs in flight; the limit drops to it at once.
func (l *limiter) setCeiling(c int) {
	l.ceiling = max(1, c)
	if l.limit > float64(l.ceiling) {
		l.limit = float64(l.ceiling)
	}
}

// current is the POSTs that may be in flight now: 0 during a Retry-After.
func (l *limiter) current(now time.Time) int {
	if now.Before(l.pausedTil) {
		return 0
	}
	return max(1, int(l.limit))
}

// value is the limit, a pause aside.
func (l *limiter) value() int { return max(1, int(l.limit)) }

// pausedUntil is the end of a Retry-After pause (zero or past: none).
func (l *limiter) pausedUntil() time.Time { return l.pausedTil }

// binds records that an event waited for a slot: the limit, not the work,
// bounds the POSTs in flight.
func (l *limiter) binds() { l.winBinds = true }

// success records a POST answered without a sign of overload, started at
// start and answered after rtt; at the end of a window the limit moves.
func (l *limiter) success(start time.Time, rtt time.Duration, now time.Time) limitChange {
	if start.Before(l.lastDrop) {
		return limitSame // from before the last decrease: it says nothing of the new limit
	}
	if l.winN == 0 {
		l.winStart = now
	}
	l.winN++
	l.winRTT += max(rtt, time.Microsecond)
	mean := l.winRTT / time.Duration(l.winN)
	if l.winN < minWindowSamples || now.Sub(l.winStart) < max(minWindow, 2*mean) {
		return limitSame
	}
	binds := l.winBinds
	l.resetWindow()

	if l.baseAt.IsZero() || now.Sub(l.baseAt) >= baseEvery {
		l.basePrev, l.baseCur, l.baseAt = l.baseCur, 0, now
	}
	if l.baseCur == 0 || mean < l.baseCur {
		l.baseCur = mean
	}
	base := l.baseCur
	if l.basePrev != 0 && l.basePrev < base {
		base = l.basePrev
	}
	if !binds {
		return limitSame // no backlog: more room would change nothing
	}
	if float64(mean) <= latencyTolerance*float64(base) {
		if l.limit >= float64(l.ceiling) {
			return limitSame
		}
		l.limit = math.Min(float64(l.ceiling), l.limit+math.Max(1, math.Sqrt(l.limit)))
		return limitGrew
	}
	gradient := math.Max(0.5, latencyTolerance*float64(base)/float64(mean))
	l.limit = math.Max(1, l.limit*gradient)
	return limitLatency
}

// overload halves the limit for a POST started at start that was answered
// with a sign of overload: once for the POSTs in flight together.
func (l *limiter) overload(start, now time.Time) limitChange {
	if start.Before(l.lastDrop) {
		return limitSame
	}
	before := l.limit
	l.limit = math.Max(1, l.limit/2)
	l.lastDrop = now
	l.resetWindow()
	if l.limit == before {
		return limitSame // at 1 already
	}
	return limitOverload
}

// retryAfter is overload, and no new POST until now+wait.
func (l *limiter) retryAfter(start, now time.Time, wait time.Duration) limitChange {
	l.overload(start, now)
	if until := now.Add(wait); until.After(l.pausedTil) {
		l.pausedTil = until
	}
	return limitRetryAfter
}

func (l *limiter) resetWindow() {
	l.winN, l.winRTT, l.winBinds = 0, 0, false
}
