package ingest

import (
	"math"
	"time"

	"golang.org/x/time/rate"
)

// pacer paces catch-up: the events whose slot was already older than
// CatchUpAfter when they became ready (an outage's backlog). On-time events
// are never paced; catch-up ones are posted only
//
//   - within their share of the node's POSTs in flight: at most
//     CatchUpShare of the adaptive limit (so of the ceiling too), at least one,
//     and never in the last eighth of the limit, kept for on-time events;
//   - at most at a rate (a token bucket, golang.org/x/time/rate, whose burst is
//     a twentieth of a second's events): by default (CatchUpRate 0, "auto") the
//     rate at which the node posted on-time events over the last minute, at
//     least MinAutoCatchUpRate, so that a backlog at most doubles what the
//     receiver gets from the node; or this node's part of the cluster's
//     CatchUpRate, divided among the live members as the budget is; or none
//     (NoCatchUpRate).
//
// So a node back from an hour down does not post the hour's events at once:
// the receiver, and the rules that fire now, see them arrive at the set pace.
//
// Like limiter it has no clock of its own: every method takes the time. The
// engine's loop owns it.
type pacer struct {
	share       float64       // of the limit, in (0, 1]
	clusterRate float64       // events/s for the whole cluster; 0: auto; NoCatchUpRate: none
	bucket      *rate.Limiter // the node's rate; nil without a rate
	nodeRate    float64       // the bucket's rate now

	// auto: the on-time events posted in each of the last autoWindow seconds
	// (a ring, second by second since the pacer's start), and this second's.
	onTime    [autoWindow]int
	second    int64 // the second (since start) onTime's current slot counts
	seconds   int64 // seconds counted so far, at most autoWindow
	start     time.Time
	onTimeNow int
}

const (
	// paceBurst: the bucket holds this much of a second's events, so that a
	// loop that wakes every few milliseconds loses none of the rate.
	paceBurst = 20 // 1/20 s
	// minPaceWake bounds how often the loop wakes for tokens at high rates:
	// they accumulate meanwhile (up to the burst).
	minPaceWake = 5 * time.Millisecond
	// autoWindow is the span, in seconds, of the on-time rate the auto rate follows.
	autoWindow = 60
)

// NoCatchUpRate as DeliveryConfig.CatchUpRate: catch-up is bounded by its share
// of the POSTs in flight alone (TIMERD_CATCHUP_RATE=off).
const NoCatchUpRate = -1

// MinAutoCatchUpRate is the least rate, per node, of the auto catch-up rate: a
// node that has posted few on-time events (it just started, or its rules are
// sparse) still drains a backlog.
const MinAutoCatchUpRate = 50

func newPacer(share, clusterRate float64, members int, now time.Time) *pacer {
	p := &pacer{share: share, clusterRate: clusterRate, start: now}
	if clusterRate >= 0 {
		p.bucket = rate.NewLimiter(0, 1)
	}
	p.setMembers(members, now)
	return p
}

// auto reports whether the rate follows the on-time rate (CatchUpRate 0).
func (p *pacer) auto() bool { return p.clusterRate == 0 }

// sentOnTime counts one on-time POST started at now (for the auto rate).
func (p *pacer) sentOnTime(now time.Time) {
	if p.auto() {
		p.roll(now)
		p.onTimeNow++
	}
}

// roll moves the auto rate's ring on to the second of now.
func (p *pacer) roll(now time.Time) {
	sec := int64(now.Sub(p.start) / time.Second)
	if sec-p.second > autoWindow { // idle for longer than the window: none of it counts
		p.onTime, p.onTimeNow = [autoWindow]int{}, 0
		p.second, p.seconds = sec, autoWindow
	}
	for ; p.second < sec; p.second++ {
		p.onTime[p.second%autoWindow] = p.onTimeNow
		p.onTimeNow = 0
		p.seconds = min(p.seconds+1, autoWindow)
	}
}

// onTimeRate is the node's on-time posts per second over the seconds counted,
// at most the last autoWindow.
func (p *pacer) onTimeRate() float64 {
	if p.seconds == 0 {
		return 0
	}
	n := 0
	for _, c := range p.onTime {
		n += c
	}
	return float64(n) / float64(p.seconds)
}

// setMembers sets the node's rate, about once a second: its part of the
// cluster's rate (divided among the live members, at least 1), or in auto
// mode its on-time rate of the last minute, at least MinAutoCatchUpRate.
func (p *pacer) setMembers(members int, now time.Time) {
	if p.bucket == nil {
		return
	}
	r := p.clusterRate / float64(max(1, members))
	if p.auto() {
		p.roll(now)
		r = max(MinAutoCatchUpRate, p.onTimeRate())
	}
	if r == p.nodeRate {
		return
	}
	p.nodeRate = r
	p.bucket.SetLimitAt(now, rate.Limit(r))
	p.bucket.SetBurstAt(now, burstOf(r))
}

// burstOf is the bucket size of a rate: a twentieth of a second's events, at
// least one.
func burstOf(r float64) int {
	return int(math.Max(1, math.Min(math.Ceil(r/paceBurst), math.MaxInt32)))
}

// rate is this node's part of the catch-up rate, events/s; 0: none.
func (p *pacer) rate() float64 { return p.nodeRate }

// maxInFlight is the most catch-up POSTs that may be in flight under a
// limit of limit: the share of it, at least one.
func (p *pacer) maxInFlight(limit int) int {
	return max(1, int(p.share*float64(limit)))
}

// mayStart reports whether one more catch-up POST may start now beside
// onTime and catchUp POSTs in flight, by the concurrency alone: its share,
// and the reserve kept for on-time events.
func (p *pacer) mayStart(limit, onTime, catchUp int) bool {
	return catchUp < p.maxInFlight(limit) && catchUp < limit-onTime-limit/catchUpReserve
}

// take spends a token of the rate for one catch-up POST at now; false: none
// is left (see next). Always true without a rate.
func (p *pacer) take(now time.Time) bool {
	return p.bucket == nil || p.bucket.AllowN(now, 1)
}

// next is when take may succeed again after it failed at now, at least
// minPaceWake later.
func (p *pacer) next(now time.Time) time.Time {
	if p.bucket == nil {
		return now
	}
	wait := minPaceWake
	if missing := 1 - p.bucket.TokensAt(now); missing > 0 && p.nodeRate > 0 {
		wait = max(wait, time.Duration(missing/p.nodeRate*float64(time.Second)))
	}
	return now.Add(wait)
}
