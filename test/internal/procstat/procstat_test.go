package procstat

import (
	"os"
	"testing"
)

// The peak is at least what the process holds now, and a process that is gone
// is an error, not a zero.
func TestPeakRSS(t *testing.T) {
	now, err := Read(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	peak, err := PeakRSS(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if peak <= 0 || peak < now.RSS {
		t.Errorf("PeakRSS = %d, RSS now %d: want a peak at least the RSS", peak, now.RSS)
	}
	if _, err := PeakRSS(1 << 30); err == nil {
		t.Error("PeakRSS of a pid that does not exist: no error")
	}
}
