package main

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/go-co-op/gocron/v2"
	"github.com/robfig/cron/v3"
)

// tickerDesign is the original sensor's design: a goroutine and a
// time.Ticker per rule. A one-shot timer first waits for the rule's first
// slot so that the ticker keeps the workload's phase.
type tickerDesign struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func (t *tickerDesign) start(ctx context.Context, b *bench, deadline time.Time) (int, error) {
	ctx, t.cancel = context.WithCancel(ctx)
	for i := range b.cfg.N {
		t.wg.Add(1)
		go t.loop(ctx, b, i)
		if err := setupCheck(i, deadline); err != nil {
			return i + 1, err
		}
	}
	return b.cfg.N, nil
}

func (t *tickerDesign) loop(ctx context.Context, b *bench, i int) {
	defer t.wg.Done()
	now := b.now()
	first := time.NewTimer(time.Duration(b.firstAfter(i, now) - now))
	select {
	case <-ctx.Done():
		first.Stop()
		return
	case <-first.C:
	}
	b.fire(i)
	tk := time.NewTicker(time.Duration(b.every[i]))
	defer tk.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tk.C:
			b.fire(i)
		}
	}
}

func (t *tickerDesign) stop() {
	if t.cancel != nil {
		t.cancel()
	}
	t.wg.Wait()
}

// robfigDesign is one robfig/cron Cron with a job per rule. The schedule is
// the workload's own grid (an "@every d" spec would round the phase to whole
// seconds). All jobs are added before Start: adding to a running Cron
// re-sorts every entry per add.
type robfigDesign struct {
	c *cron.Cron
}

// gridSchedule is anchor + k·every, in nanoseconds since the bench epoch.
type gridSchedule struct {
	b *bench
	i int
}

func (g gridSchedule) Next(t time.Time) time.Time {
	return g.b.epoch.Add(time.Duration(g.b.firstAfter(g.i, int64(t.Sub(g.b.epoch)))))
}

func (r *robfigDesign) start(_ context.Context, b *bench, deadline time.Time) (int, error) {
	r.c = cron.New(cron.WithLogger(cron.DiscardLogger))
	for i := range b.cfg.N {
		r.c.Schedule(gridSchedule{b: b, i: i}, cron.FuncJob(func() { b.fire(i) }))
		if err := setupCheck(i, deadline); err != nil {
			return i + 1, err
		}
	}
	r.c.Start()
	return b.cfg.N, nil
}

func (r *robfigDesign) stop() {
	if r.c != nil {
		<-r.c.Stop().Done()
	}
}

// gocronDesign is one gocron Scheduler with a DurationJob per rule, started
// at the rule's anchor (WithStartDateTimePast keeps the phase). Jobs are
// added before Start.
type gocronDesign struct {
	s gocron.Scheduler
}

func (g *gocronDesign) start(_ context.Context, b *bench, deadline time.Time) (int, error) {
	s, err := gocron.NewScheduler()
	if err != nil {
		return 0, fmt.Errorf("new gocron scheduler: %w", err)
	}
	g.s = s
	for i := range b.cfg.N {
		_, err := s.NewJob(
			gocron.DurationJob(time.Duration(b.every[i])),
			gocron.NewTask(func() { b.fire(i) }),
			gocron.WithStartAt(gocron.WithStartDateTimePast(b.anchorTime(i))),
		)
		if err != nil {
			return i, fmt.Errorf("gocron job %d: %w", i, err)
		}
		if err := setupCheck(i, deadline); err != nil {
			return i + 1, err
		}
	}
	s.Start()
	return b.cfg.N, nil
}

func (g *gocronDesign) stop() {
	if g.s != nil {
		_ = g.s.Shutdown()
	}
}
