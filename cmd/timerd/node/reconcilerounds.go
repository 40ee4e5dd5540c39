package node

import (
	"hash/fnv"
	"time"
)

// reconcileRounds times the periodic reconciles. Each node's rounds fall at
// its own phase of the interval, counted from the Unix epoch, the phase a
// pure function of the node's name: N nodes' rounds spread over the interval
// instead of all asking the rules API in the same second (they would, started
// together, with a ticker each), and a node keeps its phase across restarts.
// The rounds are an interval apart, as a ticker's were; a round that overruns
// the next slot skips it. The first reconcile, at start, is not one of them:
// it stays immediate.
type reconcileRounds struct {
	c        <-chan time.Time // nil when the periodic reconcile is off: never ready
	timer    *time.Timer
	interval time.Duration
	phase    time.Duration
	now      func() time.Time
}

// newReconcileRounds times the node's periodic reconciles from now: off
// when ReconcileInterval is not positive.
func (n *Node) newReconcileRounds() *reconcileRounds {
	r := &reconcileRounds{interval: n.cfg.ReconcileInterval, now: n.cfg.Now}
	if r.interval <= 0 {
		return r
	}
	r.phase = reconcilePhase(n.cfg.NodeName, r.interval)
	r.timer = time.NewTimer(0)
	r.c = r.timer.C
	r.next()
	return r
}

// next arms the timer for the first round after now.
func (r *reconcileRounds) next() {
	if r.timer == nil {
		return
	}
	now := r.now()
	r.timer.Reset(nextReconcile(now, r.interval, r.phase).Sub(now))
}

func (r *reconcileRounds) stop() {
	if r.timer != nil {
		r.timer.Stop()
	}
}

// reconcilePhase is where in every interval the rounds of the node named name
// fall: its name's FNV-1a hash, mixed, modulo the interval (an empty name,
// phase 0). Unmixed, names that differ in their last letter (node-0 … node-9)
// fell in three clusters of a few seconds each; mixed, they fall as if at
// random (10 such names in 5 minutes: 3.7 s apart at the closest).
func reconcilePhase(name string, interval time.Duration) time.Duration {
	if interval <= 0 || name == "" {
		return 0
	}
	h := fnv.New64a()
	h.Write([]byte(name))
	return time.Duration(mix64(h.Sum64()) % uint64(interval))
}

// mix64 is MurmurHash3's 64-bit finalizer: every bit of x moves every bit of
// the result.
func mix64(x uint64) uint64 {
	x ^= x >> 33
	x *= 0xff51afd7ed558ccd
	x ^= x >> 33
	x *= 0xc4ceb9fe1a85ec53
	x ^= x >> 33
	return x
}

// nextReconcile is the first time strictly after now that lies phase past a
// whole number of intervals since the Unix epoch.
func nextReconcile(now time.Time, interval, phase time.Duration) time.Time {
	since := now.UnixNano() - int64(phase)
	into := since % int64(interval)
	if into < 0 {
		into += int64(interval)
	}
	return now.Add(time.Duration(int64(interval) - into))
}
