package main

import (
	"context"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/timerd/timerd/ingest/backoff"
	"github.com/timerd/timerd/test/internal/benchkit"
)

// catchUpResult is one catch-up run (-down): an agent stopped after the
// warm-up, started again -down later, measured while it drains the backlog.
type catchUpResult struct {
	Name string
	// Ready is how long the agent took from its restart to /readyz 200.
	Ready time.Duration
	// Backlog is the events of slots due while the agent was down, received
	// after its restart; Drain the time from the restart to the last of them.
	Backlog int
	Drain   time.Duration
	// DrainRate is Backlog over the time from the first of them to the last;
	// PeakSecond the most of them received within one second.
	DrainRate  float64
	PeakSecond int
	// OnTime is the lateness of the slots due from a second after the agent
	// was ready, received while the backlog drained.
	OnTime     dist
	Duplicates int
}

// since is the events received from index i on, and the index after them.
func (s *stub) since(i int) ([]received, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]received(nil), s.events[i:]...), len(s.events)
}

// duplicates is the keys received more than once.
func (s *stub) duplicates() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, c := range s.keys {
		if c > 1 {
			n++
		}
	}
	return n
}

// drainQuiet: the backlog has drained when none of it arrived for this long.
const drainQuiet = 10 * time.Second

// measureCatchUp runs one agent of bin through an outage of cfg.Down.
func measureCatchUp(ctx context.Context, cfg config, bin, dataDir string) (catchUpResult, error) {
	var res catchUpResult
	stub, err := startStub(cfg)
	if err != nil {
		return res, err
	}
	defer stub.close()
	tok, err := benchToken()
	if err != nil {
		return res, err
	}
	ag, err := startAgent(ctx, cfg, bin, dataDir, stub.url, tok)
	if err != nil {
		return res, err
	}
	if err := ag.waitReady(); err != nil {
		ag.stop()
		return res, err
	}
	benchkit.Progress("ready; warm-up %s, then down for %s", cfg.Warmup, cfg.Down)
	backoff.Sleep(ctx, cfg.Warmup)
	stopAt := time.Now()
	ag.stop()
	benchkit.Progress("stopped in %s", time.Since(stopAt).Round(time.Millisecond))
	backoff.Sleep(ctx, time.Until(stopAt.Add(cfg.Down)))
	if ctx.Err() != nil {
		return res, ctx.Err()
	}

	restartAt := time.Now()
	ag, err = startAgent(ctx, cfg, bin, dataDir, stub.url, tok)
	if err != nil {
		return res, err
	}
	defer ag.stop()
	if err := ag.waitReady(); err != nil {
		return res, err
	}
	readyAt := time.Now()
	res.Ready = readyAt.Sub(restartAt)
	onTimeFrom := readyAt.Add(time.Second)
	benchkit.Progress("restarted: ready after %s; measuring the drain (at most %s)", res.Ready.Round(time.Millisecond), cfg.Window)

	var (
		idx                 int
		first, last         time.Time
		perSecond           = map[int64]int{}
		onTime              []received
		nextProgress        = time.Now().Add(10 * time.Second)
		backlogAtLastReport int
	)
	_, idx = stub.since(0)
	for ctx.Err() == nil {
		backoff.Sleep(ctx, time.Second)
		var evs []received
		evs, idx = stub.since(idx)
		for _, e := range evs {
			switch {
			case e.received.Before(restartAt):
				// delivered before the outage
			case e.scheduled.Before(restartAt):
				res.Backlog++
				if first.IsZero() || e.received.Before(first) {
					first = e.received
				}
				if e.received.After(last) {
					last = e.received
				}
				perSecond[int64(e.received.Sub(restartAt)/time.Second)]++
			case !e.scheduled.Before(onTimeFrom):
				onTime = append(onTime, e)
			}
		}
		if time.Now().After(nextProgress) {
			benchkit.Progress("backlog received: %d (+%d in 10s)", res.Backlog, res.Backlog-backlogAtLastReport)
			backlogAtLastReport, nextProgress = res.Backlog, time.Now().Add(10*time.Second)
		}
		if (res.Backlog > 0 && time.Since(last) > drainQuiet) || time.Since(restartAt) > cfg.Window {
			break
		}
	}
	if res.Backlog == 0 {
		return res, fmt.Errorf("no event of a slot due while the agent was down arrived within %s", cfg.Window)
	}
	res.Drain = last.Sub(restartAt)
	if span := last.Sub(first).Seconds(); span > 0 {
		res.DrainRate = float64(res.Backlog) / span
	}
	for _, n := range perSecond {
		res.PeakSecond = max(res.PeakSecond, n)
	}
	var late []time.Duration
	for _, e := range onTime {
		if !e.received.After(last) {
			late = append(late, e.received.Sub(e.scheduled))
		}
	}
	res.OnTime = newDist(late)
	res.Duplicates = stub.duplicates()
	benchkit.Progress("backlog of %d drained in %s (%.0f/s, peak %d in a second); on-time lateness meanwhile %s",
		res.Backlog, res.Drain.Round(time.Millisecond), res.DrainRate, res.PeakSecond, res.OnTime)
	return res, ctx.Err()
}

func printCatchUp(out io.Writer, cfg config, rs []catchUpResult) {
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(out, "%d rules (%s, misfire %s) every %s, stub delay %s, %s of warm-up, down %s, TIMERD_CATCHUP_RATE %s; %.0f events/s due\n",
		cfg.Rules, cfg.Mix, orDefault(cfg.Misfire), cfg.Every, cfg.Delay, cfg.Warmup, cfg.Down, orDefault(cfg.CatchUpRate), cfg.due())
	header := "\t"
	for _, r := range rs {
		header += r.Name + "\t"
	}
	fmt.Fprintln(w, header)
	row := func(name string, f func(r catchUpResult) float64, format string) {
		line := name + "\t"
		for _, r := range rs {
			line += fmt.Sprintf(format, f(r)) + "\t"
		}
		fmt.Fprintln(w, line)
	}
	row("ready after restart (s)", func(r catchUpResult) float64 { return r.Ready.Seconds() }, "%.1f")
	row("backlog events received", func(r catchUpResult) float64 { return float64(r.Backlog) }, "%.0f")
	row("drained after restart (s)", func(r catchUpResult) float64 { return r.Drain.Seconds() }, "%.1f")
	row("drain rate (events/s)", func(r catchUpResult) float64 { return r.DrainRate }, "%.0f")
	row("backlog peak in one second", func(r catchUpResult) float64 { return float64(r.PeakSecond) }, "%.0f")
	row("on-time events during the drain", func(r catchUpResult) float64 { return float64(r.OnTime.N) }, "%.0f")
	row("on-time lateness p50 (ms)", func(r catchUpResult) float64 { return r.OnTime.P50 }, "%.1f")
	row("on-time lateness p99 (ms)", func(r catchUpResult) float64 { return r.OnTime.P99 }, "%.1f")
	row("on-time lateness max (ms)", func(r catchUpResult) float64 { return r.OnTime.Max }, "%.1f")
	row("keys received twice", func(r catchUpResult) float64 { return float64(r.Duplicates) }, "%.0f")
	w.Flush()
}

func orDefault(s string) string {
	if s == "" {
		return "default"
	}
	return s
}
