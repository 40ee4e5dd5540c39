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
// The limit moves once per window of samples (a few round trips), as
// Netflix's concurrency-limits Gradient2 limiter does, with TCP's halving on
// loss:
//
//   - While the limit binds (an event waited for a slot during the window:
//     there is a backlog) it becomes limit·gradient + √limit, where the
//     gradient is tolerance·base/rtt clamped to [0.5, 1]: rtt is the window's
//     mean round trip, base a moving average of the windows before. While
//     latency holds (rtt within tolerance of base) that is growth by √limit;
//     when the round trip jumps, a cut of up to half. At a fixed rate the
//     round trip grows with the POSTs in flight (Little's law again), so
//     latency holding is what says that more POSTs in flight still bring more
//     events per second.
//   - Without a backlog it stays: more room would change nothing.
//   - It halves at once on an answer that says the receiver is overloaded
//     (429, 5xx, 408, a transport error or timeout), once per round: the POSTs
//     that were already in flight when it halved do not halve it again.
//   - A Retry-After stops new POSTs until it has passed (capped by the
//     caller), on top of the halving.
//   - It never exceeds the ceiling, the node's share of the cluster's budget,
//     and never falls below 1.
//
// The base is an average of the window means over about baseWindows windows
// (a second or two), falling four times as fast as it rises: it follows a
// receiver that became slower for good, so that the limit does not collapse
// under a steady, higher latency (a busy machine's own scheduling delays look
// the same from here), while a sudden jump of the round trip cuts the limit.
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
	base      float64       // moving average of the window means, ns; 0: none yet
	lastDrop  time.Time     // POSTs started before it do not lower the limit again
	pausedTil time.Time     // Retry-After: no new POST before
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
	baseWindows      = 20
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

	m := float64(mean)
	base := l.base // the windows before this one
	switch {
	case l.base == 0:
		l.base, base = m, m
	case m < l.base:
		l.base += (m - l.base) * 4 / baseWindows
	default:
		l.base += (m - l.base) / baseWindows
	}
	if !binds {
		return limitSame // no backlog: more room would change nothing
	}
	gradient := math.Max(0.5, math.Min(1, latencyTolerance*base/m))
	next := math.Min(float64(l.ceiling), math.Max(1, l.limit*gradient+math.Sqrt(l.limit)))
	switch {
	case next > l.limit:
		l.limit = next
		return limitGrew
	case next < l.limit:
		l.limit = next
		return limitLatency
	}
	return limitSame
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
