package node

import (
	"fmt"
	"slices"
	"testing"
	"time"
)

func TestNextReconcile(t *testing.T) {
	epoch := time.Unix(0, 0).UTC()
	at := func(d time.Duration) time.Time { return epoch.Add(1000*time.Hour + d) } // 1,000 h: a whole number of 5 min
	for _, tc := range []struct {
		name            string
		now             time.Time
		interval, phase time.Duration
		want            time.Time
	}{
		{"before the phase", at(10 * time.Second), 5 * time.Minute, time.Minute, at(time.Minute)},
		{"on the phase: the next one", at(time.Minute), 5 * time.Minute, time.Minute, at(6 * time.Minute)},
		{"just past the phase", at(time.Minute + time.Nanosecond), 5 * time.Minute, time.Minute, at(6 * time.Minute)},
		{"phase 0", at(4*time.Minute + 59*time.Second), 5 * time.Minute, 0, at(5 * time.Minute)},
		{"interval not dividing an hour", at(0), 7 * time.Second, 3 * time.Second, at(3 * time.Second)}, // want unchecked: 1,000 h is no multiple of 7 s
		{"before 1970", epoch.Add(-90 * time.Second), time.Minute, 10 * time.Second, epoch.Add(-50 * time.Second)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := nextReconcile(tc.now, tc.interval, tc.phase)
			if !got.After(tc.now) || got.Sub(tc.now) > tc.interval {
				t.Fatalf("nextReconcile(%v, %v, %v) = %v: not in (now, now+interval]", tc.now, tc.interval, tc.phase, got)
			}
			if into := time.Duration(got.UnixNano() % int64(tc.interval)); (into+tc.interval)%tc.interval != tc.phase {
				t.Errorf("nextReconcile(%v, %v, %v) = %v: %v into its interval, want the phase %v", tc.now, tc.interval, tc.phase, got, into, tc.phase)
			}
			if tc.name != "interval not dividing an hour" && !got.Equal(tc.want) {
				t.Errorf("nextReconcile(%v, %v, %v) = %v, want %v", tc.now, tc.interval, tc.phase, got, tc.want)
			}
		})
	}
}

// Ten nodes' rounds spread over the interval: no two within a second of
// each other in 5 minutes (phases are as uniform as the hash), each in range
// and stable for a name.
func TestReconcilePhaseSpreads(t *testing.T) {
	const interval = 5 * time.Minute
	var phases []time.Duration
	for i := range 10 {
		name := fmt.Sprintf("node-%d", i)
		p := reconcilePhase(name, interval)
		if p < 0 || p >= interval || p != reconcilePhase(name, interval) {
			t.Fatalf("reconcilePhase(%q, %v) = %v: out of [0, interval) or not stable", name, interval, p)
		}
		phases = append(phases, p)
	}
	slices.Sort(phases)
	for i := 1; i < len(phases); i++ {
		if phases[i]-phases[i-1] < 3*time.Second {
			t.Errorf("phases %v and %v are less than 3 s apart: rounds of two nodes would hit the API together (all: %v)", phases[i-1], phases[i], phases)
		}
	}
	// The longest stretch without a round: under a fifth of the interval
	// (unmixed FNV left 1m37s of 5m in three clusters).
	longest := phases[0] + interval - phases[len(phases)-1]
	for i := 1; i < len(phases); i++ {
		longest = max(longest, phases[i]-phases[i-1])
	}
	if longest > interval/5 {
		t.Errorf("phases %v leave %v without a round: clustered", phases, longest)
	}
	if p := reconcilePhase("", interval); p != 0 {
		t.Errorf(`reconcilePhase("", %v) = %v, want 0`, interval, p)
	}
}
