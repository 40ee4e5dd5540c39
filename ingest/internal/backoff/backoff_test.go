package backoff

import (
	"testing"
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
