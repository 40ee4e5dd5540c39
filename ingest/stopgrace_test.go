package ingest

import (
	"testing"
	"time"

	"github.com/timerd/timerd/test/testkit"
)

// A stopping delivery lets the POSTs in flight be answered (within StopGrace)
// rather than cut them: an event the receiver stored and answered is acked, not
// left to be posted again (a duplicate) at the next start or by the member it is
// handed to. A POST that is not answered within the grace is cut, and its event
// stays in the outbox.
func TestStopLetsPostsInFlightBeAnswered(t *testing.T) {
	leakCheck(t)
	for _, tc := range []struct {
		name     string
		answerIn time.Duration // the receiver's delay
		grace    time.Duration
		acked    bool
	}{
		{"answered within the grace", 600 * time.Millisecond, 2 * time.Second, true},
		{"not answered within it", 10 * time.Second, 300 * time.Millisecond, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := openStore(t)
			api := newFakeAPI(t, func(seenRequest, int) response {
				return response{status: 201, block: after(tc.answerIn)}
			})
			commitEvents(t, st, 1, 1, time.Now())
			cfg := testConfig(st, api.srv.URL)
			cfg.StopGrace = tc.grace
			_, stop := startDelivery(t, cfg)
			testkit.Eventually(t, 5*time.Second, "the POST in flight", func() bool { return api.inFlight.Load() == 1 })
			begin := time.Now()
			stop()
			took := time.Since(begin)
			if tc.acked {
				if n := outboxLen(t, st); n != 0 || api.count() != 1 {
					t.Errorf("stopped with a POST answered within the grace: outbox %d, POSTs %d; want it acked, posted once", n, api.count())
				}
				if took > tc.answerIn+time.Second {
					t.Errorf("stop took %s, want about the answer's %s", took, tc.answerIn)
				}
				return
			}
			if n := outboxLen(t, st); n != 1 {
				t.Errorf("stopped with a POST unanswered: outbox %d, want the event kept", n)
			}
			if took < tc.grace || took > tc.grace+time.Second {
				t.Errorf("stop took %s, want about the grace %s", took, tc.grace)
			}
		})
	}
}
