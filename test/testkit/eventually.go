// Package testkit holds the helpers that tests of every package share. It
// imports only the standard library, so any package's tests can import it
// without a cycle.
package testkit

import (
	"testing"
	"time"
)

// The pause between two polls starts short, so a condition that holds soon is
// seen soon, and doubles up to maxPause, so a long wait does not spin.
const (
	firstPause = time.Millisecond
	maxPause   = 20 * time.Millisecond
)

// Eventually polls cond until it holds, and fails the test if it does not
// within the given time, saying what it waited for and how long. Call it from
// the test's goroutine (it calls t.Fatalf).
func Eventually(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	EventuallyWhy(t, within, what, func() (string, bool) { return "", cond() })
}

// EventuallyWhy is Eventually whose condition also says why it does not hold
// yet; the failure message gives the last reason.
func EventuallyWhy(t testing.TB, within time.Duration, what string, cond func() (why string, ok bool)) {
	t.Helper()
	start := time.Now()
	deadline := start.Add(within)
	pause := firstPause
	for {
		why, ok := cond()
		if ok {
			return
		}
		left := time.Until(deadline)
		if left <= 0 {
			msg := "not within " + within.String() + " (waited " + time.Since(start).Round(time.Millisecond).String() + "): " + what
			if why != "" {
				msg += ": " + why
			}
			t.Fatal(msg)
			return
		}
		time.Sleep(min(pause, left))
		pause = min(2*pause, maxPause)
	}
}
