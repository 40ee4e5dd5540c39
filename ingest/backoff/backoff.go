// Package backoff is timerd's one jittered backoff: the wait before the next
// try of event delivery and of the dead-letter breaker's probes, of the ack
// commit, of the lifecycle consumer's and publisher's reconnects, of the
// node's first reconcile and queue declare, of the agent's API health check
// at start, of the API token's refresh (auth) and of the cluster's join
// (cluster). Jitter keeps the nodes one failure stopped together from
// retrying together.
//
// It imports nothing of timerd, so that any package may import it; it lives
// under ingest, which holds most of its callers, because the top-level
// directories are fixed. Two schedules stay exact and their own: the fire
// commit's (scheduler: this node's own disk, no shared server to spread the
// load of) and the store copies' resend in the protocol (cluster/protocol:
// the deterministic simulation replays it by seed).
//
// Delay is a pure function of the attempt number rather than a stateful
// policy (cenkalti/backoff's ExponentialBackOff): delivery keeps a count per
// waiting event and computes a due time, and the library's jitter spreads
// around the interval (±factor) where delivery needs a floor with full jitter
// above it.
package backoff

import (
	"context"
	"math/rand/v2"
	"time"
)

// Delay is exponential backoff with full jitter above a floor: uniform
// in [lo, min(hi, lo·2^(attempt-1))]. The floor keeps a failing API from
// seeing a burst of near-zero retries.
func Delay(attempt int, lo, hi time.Duration) time.Duration {
	ceil := hi
	if attempt < 1 {
		attempt = 1
	}
	if attempt-1 < 62 {
		if c := lo << (attempt - 1); c > 0 && c>>(attempt-1) == lo && c < hi {
			ceil = c
		}
	}
	if ceil <= lo {
		return lo
	}
	return lo + rand.N(ceil-lo+1)
}

// RetryAfter is the wait when a server asked for retryAfter: at least that
// and at least lo, plus up to lo of jitter so that the clients it paused do
// not all come back at once, capped at hi (a server cannot park a client
// longer than its own backoff would).
func RetryAfter(retryAfter, lo, hi time.Duration) time.Duration {
	return min(max(retryAfter, lo)+rand.N(max(lo, 0)+1), hi)
}

// Sleep waits d, or less when ctx is done; it reports whether ctx is still
// live.
func Sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
