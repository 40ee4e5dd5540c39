//go:build !linux

package node

import "time"

// bootNow is the monotonic clock where the system offers no boot clock.
func bootNow() time.Duration { return monoNow() }
