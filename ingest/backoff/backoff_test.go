package backoff

import (
	"context"
	"testing"
	"testing/synctest"
	"time"
)

func TestDelay(t *testing.T) {
	lo, hi := 200*time.Millisecond, 30*time.Second
	tests := []struct {
		attempt      int
		wantMinCeil  time.Duration // the delay lies in [lo, ceil]
		wantExactMin bool
	}{
		{attempt: 0, wantMinCeil: lo, wantExactMin: true},
		{attempt: 1, wantMinCeil: lo, wantExactMin: true},
		{attempt: 2, wantMinCeil: 2 * lo},
		{attempt: 5, wantMinCeil: 16 * lo},
		{attempt: 9, wantMinCeil: hi},
		{attempt: 70, wantMinCeil: hi},
		{attempt: 1 << 30, wantMinCeil: hi},
	}
	for _, tc := range tests {
		for range 200 {
			got := Delay(tc.attempt, lo, hi)
			if got < lo || got > tc.wantMinCeil || (tc.wantExactMin && got != lo) {
				t.Fatalf("Delay(%d, %v, %v) = %v, want in [%v, %v]", tc.attempt, lo, hi, got, lo, tc.wantMinCeil)
			}
		}
	}
}

func TestRetryAfter(t *testing.T) {
	lo, hi := 100*time.Millisecond, 5*time.Second
	tests := []struct {
		name                 string
		retryAfter, min, max time.Duration // the wait lies in [min, max]
	}{
		{"one second", time.Second, time.Second, time.Second + lo},
		{"below the floor", time.Millisecond, lo, 2 * lo},
		{"zero", 0, lo, 2 * lo},
		{"near the cap", hi - lo/2, hi - lo/2, hi},
		{"an hour is capped", time.Hour, hi, hi},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for range 200 {
				if got := RetryAfter(tc.retryAfter, lo, hi); got < tc.min || got > tc.max {
					t.Fatalf("RetryAfter(%v, %v, %v) = %v, want in [%v, %v]", tc.retryAfter, lo, hi, got, tc.min, tc.max)
				}
			}
		})
	}
	if got := RetryAfter(time.Second, 0, time.Minute); got != time.Second {
		t.Errorf("RetryAfter(1s, 0, 1m) = %v, want 1s (no floor, no jitter)", got)
	}
}

func TestSleep(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		start := time.Now()
		if !Sleep(context.Background(), time.Minute) || time.Since(start) != time.Minute {
			t.Errorf("Sleep(live ctx, 1m) = false or returned after %v, want true after 1m", time.Since(start))
		}
		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(time.Second, cancel)
		start = time.Now()
		if Sleep(ctx, time.Hour) || time.Since(start) != time.Second {
			t.Errorf("Sleep(ctx cancelled after 1s, 1h) = true or returned after %v, want false after 1s", time.Since(start))
		}
	})
}

// The jitter: draws for one attempt differ and spread over the whole
// range [lo, ceil], not only its middle; with lo ≥ hi there is none.
func TestDelayJitters(t *testing.T) {
	lo, hi := 200*time.Millisecond, 30*time.Second
	for _, tc := range []struct {
		attempt int
		ceil    time.Duration
	}{{2, 2 * lo}, {4, 8 * lo}, {12, hi}} {
		least, most := hi, time.Duration(0)
		seen := map[time.Duration]bool{}
		for range 200 {
			d := Delay(tc.attempt, lo, hi)
			if d < lo || d > tc.ceil {
				t.Fatalf("Delay(%d, %v, %v) = %v, want in [%v, %v]", tc.attempt, lo, hi, d, lo, tc.ceil)
			}
			least, most = min(least, d), max(most, d)
			seen[d] = true
		}
		// Uniform draws: 200 of them missing the lowest (or the highest)
		// quarter of the range has a chance of (3/4)^200.
		quarter := (tc.ceil - lo) / 4
		if len(seen) < 2 || least > lo+quarter || most < tc.ceil-quarter {
			t.Errorf("Delay(%d) over 200 draws: %d distinct, in [%v, %v]; want them spread over [%v, %v]",
				tc.attempt, len(seen), least, most, lo, tc.ceil)
		}
	}
	for _, tc := range []struct{ lo, hi time.Duration }{{time.Second, time.Second}, {time.Second, time.Millisecond}} {
		for attempt := range 5 {
			if d := Delay(attempt, tc.lo, tc.hi); d != tc.lo {
				t.Errorf("Delay(%d, %v, %v) = %v, want the floor %v", attempt, tc.lo, tc.hi, d, tc.lo)
			}
		}
	}
	a, b := RetryAfter(time.Second, lo, hi), RetryAfter(time.Second, lo, hi)
	for i := 0; a == b && i < 50; i++ {
		b = RetryAfter(time.Second, lo, hi)
	}
	if a == b {
		t.Errorf("RetryAfter(1s) drew %v 51 times, want jitter", a)
	}
}
