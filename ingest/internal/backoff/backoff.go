// Package backoff is the capped, jittered exponential backoff of ingest's
// retries: event delivery, the dead-letter breaker's probes, and the
// reconnects of the lifecycle consumer and publisher.
package backoff

import (
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
