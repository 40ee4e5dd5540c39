package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/timerd/timerd/scheduler"
)

// timerdDesign is timerd's engine with default settings, fed timers from
// scheduler.Parse as a node does. Its Commit only counts fires (and their
// lateness at commit time): a stand-in for the bbolt store, so the figures
// are the engine's own, without I/O.
type timerdDesign struct {
	cancel context.CancelFunc
	done   chan error
}

func newTimerd() design { return &timerdDesign{} }

func (t *timerdDesign) start(ctx context.Context, b *bench, deadline time.Time) (int, error) {
	e, err := scheduler.New(scheduler.Config{Coalesce: b.cfg.Coalesce, Commit: func(fires []scheduler.Fire, _ []scheduler.Miss) error {
		now := b.now()
		for i := range fires {
			f := &fires[i]
			b.fireSlot(int(f.RuleID-1), int64(f.Slot.Sub(b.epoch)), now)
		}
		return nil
	}})
	if err != nil {
		return 0, fmt.Errorf("new engine: %w", err)
	}
	items := make([]scheduler.Item, b.cfg.N)
	var params []byte
	for i := range items {
		// Parsed as a node parses a stored rule; start_at pins the
		// workload's phase (without it the phase comes from the rule id).
		if b.every[i]%int64(time.Second) != 0 {
			return i, fmt.Errorf("rule %d: interval %v is not whole seconds, as trigger params need", i+1, time.Duration(b.every[i]))
		}
		params = fmt.Appendf(params[:0], `{"interval":%d,"unit":"seconds","start_at":%q}`,
			b.every[i]/int64(time.Second), b.anchorTime(i).UTC().Format(time.RFC3339Nano))
		tm, err := scheduler.Parse("core.intervaltimer", params, int64(i+1))
		if err != nil {
			return i, fmt.Errorf("parse rule %d: %w", i+1, err)
		}
		items[i] = scheduler.Item{ID: int64(i + 1), Timer: tm}
		if err := setupCheck(i, deadline); err != nil {
			return i + 1, err
		}
	}
	// The rules are created when they are loaded: the first fire of each is
	// its first slot after that, as for rules a node takes in one by one.
	// (Created before parsing them all, the slots due while the rest were
	// parsed made one catch-up batch at the start, whose scratch the settled
	// figure then counted as if it were per rule.)
	start := time.Now().Round(0)
	for i := range items {
		items[i].Watermark = scheduler.Watermark{Slot: start}
	}
	e.Load(items)
	ctx, t.cancel = context.WithCancel(ctx)
	t.done = make(chan error, 1)
	go func() { t.done <- e.Run(ctx) }()
	return b.cfg.N, nil
}

func (t *timerdDesign) stop() {
	if t.cancel == nil {
		return
	}
	t.cancel()
	if err := <-t.done; err != nil && !errors.Is(err, context.Canceled) {
		fmt.Fprintf(os.Stderr, "timerd engine: %v\n", err)
	}
}
