package node

import "time"

var monoStart = time.Now()

// monoNow is the monotonic clock since the process started: bootNow where the system
// has no boot clock (it stops while the machine is suspended).
func monoNow() time.Duration { return time.Since(monoStart) }
