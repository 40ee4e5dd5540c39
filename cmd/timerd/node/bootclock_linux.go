package node

import (
	"time"

	"golang.org/x/sys/unix"
)

// bootNow is CLOCK_BOOTTIME: it never steps and keeps counting while the machine or VM
// is suspended, so a lease measured on it lapses during a suspend (docs/protocol.md §3).
func bootNow() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return monoNow()
	}
	return time.Duration(ts.Nano())
}
