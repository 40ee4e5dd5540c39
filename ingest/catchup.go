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
//   - at most at this node's part of the cluster's CatchUpRate, events per
//     second divided among the live members as the budget is (a token bucket,
//     golang.org/x/time/rate, whose burst is a twentieth of a second's events).
//
// So a node back from an hour down does not post the hour's events at once:
// the receiver, and the rules that fire now, see them arrive at the set pace.
//
// Like limiter it has no clock of its own: every method takes the time. The
// engine's loop owns it.
type pacer struct {
	share       float64       // of the limit, in (0, 1]
	clusterRate float64       // events/s for the whole cluster; 0: no rate
	bucket      *rate.Limiter // this node's part of clusterRate; nil without a rate
	nodeRate    float64       // the bucket's rate now
}

const (
	// paceBurst: the bucket holds this much of a second's events, so that a
	// loop that wakes every few milliseconds loses none of the rate.
	paceBurst = 20 // 1/20 s
	// minPaceWake bounds how often the loop wakes for tokens at high rates:
	// they accumulate meanwhile (up to the burst).
	minPaceWake = 5 * time.Millisecond
)

func newPacer(share, clusterRate float64, members int, now time.Time) *pacer {
	p := &pacer{share: share, clusterRate: clusterRate}
	if clusterRate > 0 {
		p.bucket = rate.NewLimiter(0, 1)
	}
	p.setMembers(members, now)
	return p
}

// setMembers divides the cluster's rate among the live members (at least 1).
func (p *pacer) setMembers(members int, now time.Time) {
	if p.bucket == nil {
		return
	}
	r := p.clusterRate / float64(max(1, members))
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
