package scheduler

import (
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

// Heartbeat stays current while the loop waits (idle, between slots, between
// the attempts of a failing commit) and falls behind only while a Commit does
// not return: what a liveness probe and systemd's watchdog are told.
func TestHeartbeat(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		t0 := time.Now()
		block := make(chan struct{})
		var blocking atomic.Bool
		rec := &recorder{}
		e, _ := newEngine(t, Config{
			RetryMin: 5 * time.Second, RetryMax: 5 * time.Second,
			Commit: func(fires []Fire, missed []Miss) error {
				if blocking.Load() {
					<-block
				}
				return rec.commit(fires, missed)
			},
		})
		behind := func() time.Duration { return time.Since(e.Heartbeat()) }
		if d := behind(); d != 0 {
			t.Fatalf("before Run: Heartbeat %v behind, want 0", d)
		}
		stop := start(t, e)

		// Empty: the loop waits for an Upsert without a timer.
		time.Sleep(time.Minute)
		synctest.Wait()
		if d := behind(); d != 0 {
			t.Errorf("empty engine a minute on: Heartbeat %v behind, want 0", d)
		}

		// A commit failing again and again: the loop waits between attempts.
		rec.mu.Lock()
		rec.fail = 3
		rec.mu.Unlock()
		e.Upsert(1, every(10*time.Second, t0), Watermark{Slot: t0})
		time.Sleep(12 * time.Second) // to t0+72s: attempts at +60s, +65s, +70s failed, the next at +75s
		synctest.Wait()
		if d := behind(); d != 0 {
			t.Errorf("during retries of a failing commit: Heartbeat %v behind, want 0", d)
		}
		rec.mu.Lock()
		attempts := len(rec.attempts)
		rec.mu.Unlock()
		if attempts != 3 {
			t.Fatalf("%d commit attempts by t0+72s, want 3 (at +60s, +65s, +70s)", attempts)
		}

		// A commit that does not return.
		time.Sleep(20 * time.Second)
		synctest.Wait()
		blocking.Store(true) // set while the engine waits for the next slot
		time.Sleep(10 * time.Second)
		synctest.Wait() // in Commit, blocked
		time.Sleep(30 * time.Second)
		if d := behind(); d < 30*time.Second || d > 40*time.Second {
			t.Errorf("Commit blocked for 30s+: Heartbeat %v behind, want 30s..40s", d)
		}
		close(block)
		synctest.Wait()
		if d := behind(); d != 0 {
			t.Errorf("after the commit returned: Heartbeat %v behind, want 0", d)
		}
		stop()
		if d := behind(); d != 0 {
			t.Errorf("after Run returned: Heartbeat %v behind, want 0", d)
		}
	})
}
