package testkit

import (
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// fakeTB records a Fatal instead of stopping the goroutine, so the tests can
// look at what Eventually would have reported.
type fakeTB struct {
	testing.TB
	fatal string
}

func (f *fakeTB) Helper()               {}
func (f *fakeTB) Fatal(args ...any)     { f.fatal = args[0].(string) }
func (f *fakeTB) Fatalf(string, ...any) { panic("Eventually reports with Fatal") }

func TestEventuallyReturnsOnceTheConditionHolds(t *testing.T) {
	var polls atomic.Int32
	start := time.Now()
	Eventually(t, 5*time.Second, "the third poll", func() bool { return polls.Add(1) >= 3 })
	if n := polls.Load(); n != 3 {
		t.Errorf("polled %d times, want 3", n)
	}
	// Pauses of 1 ms and 2 ms: far below the cap.
	if took := time.Since(start); took > time.Second {
		t.Errorf("took %v for three polls", took)
	}
}

func TestEventuallyFailsWithWhatAndHowLong(t *testing.T) {
	f := &fakeTB{TB: t}
	start := time.Now()
	Eventually(f, 50*time.Millisecond, "the moon", func() bool { return false })
	if took := time.Since(start); took < 50*time.Millisecond {
		t.Errorf("gave up after %v, before the 50ms", took)
	}
	if !strings.Contains(f.fatal, "not within 50ms") || !strings.Contains(f.fatal, "the moon") || !strings.Contains(f.fatal, "waited ") {
		t.Errorf("failure %q does not say what it waited for and how long", f.fatal)
	}
}

func TestEventuallyWhyGivesTheLastReason(t *testing.T) {
	f := &fakeTB{TB: t}
	n := 0
	EventuallyWhy(f, 30*time.Millisecond, "a quorum", func() (string, bool) {
		n++
		if n == 1 {
			return "first", false
		}
		return "latest", false
	})
	if !strings.HasSuffix(f.fatal, "a quorum: latest") {
		t.Errorf("failure %q does not end with the last reason", f.fatal)
	}
}

func TestEventuallyDoesNotSpin(t *testing.T) {
	f := &fakeTB{TB: t}
	polls := 0
	Eventually(f, 300*time.Millisecond, "never", func() bool { polls++; return false })
	// Pauses of 1, 2, 4, 8, 16 ms, then 20 ms: at most about 20 polls in 300 ms.
	if polls > 25 {
		t.Errorf("polled %d times in 300ms, want at most 25", polls)
	}
}
