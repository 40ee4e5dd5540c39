package scheduler

import (
	"context"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// TestAdvanceSkipsSlotsFiredElsewhere: a watermark merged in from a peer moves a
// running rule past the slots it covers; an earlier one, or one of an unknown rule,
// changes nothing.
func TestAdvanceSkipsSlotsFiredElsewhere(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var mu sync.Mutex
		var fired []Fire
		e, err := New(Config{Commit: func(fs []Fire, _ []Miss) error {
			mu.Lock()
			fired = append(fired, fs...)
			mu.Unlock()
			return nil
		}})
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		e.Upsert(1, mustParse(t, "core.intervaltimer", `{"interval":1,"start_at":"`+start.UTC().Format(time.RFC3339Nano)+`"}`, 1),
			Watermark{Slot: start})
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { _ = e.Run(ctx); close(done) }()

		time.Sleep(1500 * time.Millisecond) // slot start+1s fires here
		e.Advance(1, Watermark{Slot: start.Add(3 * time.Second), Count: 7})
		e.Advance(1, Watermark{Slot: start.Add(2 * time.Second), Count: 9}) // earlier: ignored
		e.Advance(2, Watermark{Slot: start.Add(time.Hour)})                 // unknown: ignored
		time.Sleep(3 * time.Second)                                         // start+4s fires; 2 s and 3 s do not
		cancel()
		<-done

		mu.Lock()
		defer mu.Unlock()
		var slots []time.Duration
		for _, f := range fired {
			slots = append(slots, f.Slot.Sub(start))
		}
		want := []time.Duration{time.Second, 4 * time.Second}
		if len(slots) != len(want) || slots[0] != want[0] || slots[1] != want[1] {
			t.Fatalf("fired slots %v after Advance to +3s, want %v", slots, want)
		}
		if fired[1].Count != 8 {
			t.Errorf("count after the advance = %d, want 8 (7 from the advance, +1)", fired[1].Count)
		}
	})
}
