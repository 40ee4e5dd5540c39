package e2e

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/timerd/timerd/scheduler"
	"github.com/timerd/timerd/test/testkit"
)

// Jittered rules through `timerd dev`, stopped and started again on the same data
// dir: every slot fires once, never before its slot plus the rule's offset for it
// (the same after the restart: a fixed function of the rule and the slot), and
// the event keeps the nominal slot as scheduled_at and in its key.
func TestDevJitter(t *testing.T) {
	t.Parallel()
	const (
		rules  = 10
		every  = 2 * time.Second
		jitter = 1500 * time.Millisecond
	)
	dir := t.TempDir()
	d := startDev(t, dir)
	ids := map[string]int64{}
	for i := range rules {
		ref := fmt.Sprintf("jitter.r%d", i)
		ids[ref] = d.createRule(t, ref, "core.intervaltimer", map[string]any{"interval": 2, "jitter": "1500ms"})
	}
	atLeast := func(d *dev, n int) func() bool {
		return func() bool {
			for ref := range ids {
				if len(d.events(t, ref)) < n {
					return false
				}
			}
			return true
		}
	}
	testkit.Eventually(t, 30*time.Second, "3 events of every jittered rule", atLeast(d, 3))
	if err := d.stop(20 * time.Second); err != nil {
		t.Fatalf("timerd dev after SIGTERM: %v", err)
	}
	stopped := time.Now()
	d = startDev(t, dir)
	testkit.Eventually(t, 30*time.Second, "6 events of every jittered rule", atLeast(d, 6))

	var onTime, all int
	for ref, id := range ids {
		evs := d.events(t, ref)
		var slots []time.Time
		for _, e := range evs {
			slot, fired := payloadTime(t, e, "scheduled_at"), payloadTime(t, e, "fired_at")
			slots = append(slots, slot)
			if want := fmt.Sprintf("%d:%d", id, slot.UnixNano()); e.IdempotencyKey != want {
				t.Errorf("%s: key %q, want %q (the nominal slot's)", ref, e.IdempotencyKey, want)
			}
			if slot.UnixNano()%int64(every) != 0 && slot.Sub(slot.Truncate(every)) != slots[0].Sub(slots[0].Truncate(every)) {
				t.Errorf("%s: scheduled_at %s is off the rule's grid", ref, slot.Format(time.RFC3339Nano))
			}
			due := slot.Add(scheduler.JitterOffset(id, slot, jitter))
			if fired.Before(due) {
				t.Errorf("%s: slot %s fired at %s, before its jittered time %s", ref, slot.Format(time.TimeOnly),
					fired.Format("15:04:05.000"), due.Format("15:04:05.000"))
			}
			if fired.Before(stopped) || fired.After(stopped.Add(15*time.Second)) {
				all++ // not a catch-up of the restart
				if fired.Sub(due) < 500*time.Millisecond {
					onTime++
				}
			}
		}
		slices.SortFunc(slots, time.Time.Compare)
		for i := 1; i < len(slots); i++ {
			if gap := slots[i].Sub(slots[i-1]); gap != every {
				t.Errorf("%s: slots %s then %s: a gap of %s, want every slot once", ref,
					slots[i-1].Format(time.TimeOnly), slots[i].Format(time.TimeOnly), gap)
			}
		}
	}
	// The delays follow the offsets: most fires come within half a second of their
	// jittered time (a build that ignored the jitter fires before it; one that
	// waited the whole jitter fires up to 1.5 s after it).
	if all == 0 || onTime*10 < all*8 {
		t.Errorf("%d of %d fires within 500 ms of their jittered time, want 80%%", onTime, all)
	}
	t.Logf("%d of %d fires within 500 ms of their jittered time", onTime, all)
}
