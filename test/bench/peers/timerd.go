package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/timerd/timerd/scheduler"
)

// timerdDesign is timerd's engine. Its Commit only counts fires (and their
// lateness at commit time): a stand-in for the bbolt store, so the figures
// are the engine's own, without I/O.
type timerdDesign struct {
	cancel context.CancelFunc
	done   chan error
}

func newTimerd() design { return &timerdDesign{} }

func (t *timerdDesign) start(ctx context.Context, b *bench, deadline time.Time) (int, error) {
	e, err := scheduler.New(scheduler.Config{Commit: func(fires []scheduler.Fire) error {
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
	start := time.Now().Round(0) // the first fire is the first slot after the benchmark's start
	items := make([]scheduler.Item, b.cfg.N)
	for i := range items {
		items[i] = scheduler.Item{
			ID:        int64(i + 1),
			Timer:     &scheduler.Timer{Kind: scheduler.KindInterval, Interval: time.Duration(b.every[i]), Anchor: b.anchorTime(i)},
			Watermark: scheduler.Watermark{Slot: start},
		}
		if err := setupCheck(i, deadline); err != nil {
			return 0, err
		}
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
