// Command node measures one real `timerd agent` against a null Attune: a stub
// that lists N timer rules and answers every event at once (or after -delay, as
// an Attune on PostgreSQL would). After a warm-up it reports, over a window,
// the events per second received, the agent's CPU per event and RSS, the
// lateness of receipt against scheduled_at, and any key received twice.
// With -baseline REV the same run is made with the timerd of that revision,
// and both are printed side by side with their ratio (issue 11).
//
// With -down D it measures catch-up (issue 14, point 3): the agent is
// stopped after the warm-up, started again D later, and the run reports the
// on-time events' lateness while the backlog drains, and the drain's rate
// against -catchup-rate (catchup.go).
//
//	go run ./test/bench/node -rules 50000 -every 10s
//	go run ./test/bench/node -rules 100000 -delay 20ms -baseline 190e9eb
//	go run ./test/bench/node -rules 5000 -every 1s -misfire fire_all -down 2m -catchup-rate 5000 -baseline main
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/timerd/timerd/test/internal/benchkit"
)

type config struct {
	Rules    int
	Every    time.Duration
	Mix      mix
	Delay    time.Duration
	Warmup   time.Duration
	Window   time.Duration
	Workers  int
	Budget   int
	Binary   string
	Baseline string
	Metrics  string // directory: each run's /metrics at the window's end, and its CPU profile with Profile
	Profile  bool   // take a CPU profile of the agent over the window (TIMERD_PPROF)
	// The catch-up mode (Down > 0): the agent is stopped after the warm-up,
	// started again Down later, and measured while it drains the backlog.
	Down        time.Duration
	CatchUpRate string // TIMERD_CATCHUP_RATE of the agent ("": unset, its default: auto)
	Misfire     string // the interval and cron rules' misfire policy ("": the default)
}

func main() {
	cfg := config{Rules: 50_000, Every: 10 * time.Second, Mix: mix{Interval: 1}, Warmup: 20 * time.Second, Window: 30 * time.Second}
	fs := flag.NewFlagSet("node", flag.ContinueOnError)
	fs.IntVar(&cfg.Rules, "rules", cfg.Rules, "timer rules the stub lists")
	fs.DurationVar(&cfg.Every, "every", cfg.Every, "period of the interval and cron rules (whole seconds, under a minute for cron)")
	fs.Var(&cfg.Mix, "mix", "share of each kind, e.g. interval=0.8,cron=0.1,datetime=0.1 (datetime rules fire once, spread over the window)")
	fs.DurationVar(&cfg.Delay, "delay", 0, "how long the stub takes to answer each event (0: at once)")
	fs.DurationVar(&cfg.Warmup, "warmup", cfg.Warmup, "run before the window: start, reconcile, settle")
	fs.DurationVar(&cfg.Window, "window", cfg.Window, "measuring window")
	fs.IntVar(&cfg.Workers, "workers", 0, "TIMERD_WORKERS of the agent: a cap on its POSTs in flight, deprecated (0: unset)")
	fs.IntVar(&cfg.Budget, "budget", 0, "TIMERD_DELIVERY_BUDGET of the agent: the most POSTs in flight, adapted below it (0: its default; a revision without the setting ignores it)")
	fs.StringVar(&cfg.Binary, "binary", "", "timerd binary (default: go build ./cmd/timerd)")
	fs.StringVar(&cfg.Baseline, "baseline", "", "also run the timerd of this git revision, side by side")
	fs.StringVar(&cfg.Metrics, "metrics", "", "write each run's /metrics at the window's end into this directory")
	fs.DurationVar(&cfg.Down, "down", 0, "catch-up mode: stop the agent after the warm-up for this long, start it again and measure the backlog's drain beside the on-time events (the window is then the drain, at most -window)")
	fs.StringVar(&cfg.CatchUpRate, "catchup-rate", "", "TIMERD_CATCHUP_RATE of the agent: auto, off or catch-up events/s (unset: the agent's default; a revision without the setting ignores it)")
	fs.StringVar(&cfg.Misfire, "misfire", "", "misfire policy of the interval and cron rules (fire_all, fire_once, skip; default: the rules' default)")
	fs.BoolVar(&cfg.Profile, "cpuprofile", false, "also write a CPU profile of the agent over the window into the -metrics directory (go tool pprof -top FILE)")
	if err := fs.Parse(os.Args[1:]); err != nil {
		os.Exit(2)
	}
	if cfg.Every < time.Second || cfg.Every%time.Second != 0 || (cfg.Mix.Cron > 0 && cfg.Every >= time.Minute) {
		fmt.Fprintln(os.Stderr, "node: -every must be whole seconds (under a minute with cron rules)")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := runAll(ctx, cfg, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "node:", err)
		os.Exit(1)
	}
}

func runAll(ctx context.Context, cfg config, out io.Writer) error {
	tmp, err := os.MkdirTemp("", "timerd-bench-node-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	type run struct {
		name, bin string
	}
	var runs []run
	if cfg.Baseline != "" {
		bin, err := benchkit.BuildRevision(ctx, cfg.Baseline, tmp)
		if err != nil {
			return err
		}
		runs = append(runs, run{cfg.Baseline, bin})
	}
	bin := cfg.Binary
	if bin == "" {
		bin = filepath.Join(tmp, "timerd")
		if err := benchkit.GoBuild(ctx, ".", bin); err != nil {
			return err
		}
	}
	runs = append(runs, run{"this tree", bin})
	var results []result
	var catchUps []catchUpResult
	for _, r := range runs {
		benchkit.Progress("run %s: %d rules (%s), every %s, stub delay %s", r.name, cfg.Rules, cfg.Mix, cfg.Every, cfg.Delay)
		if cfg.Down > 0 {
			res, err := measureCatchUp(ctx, cfg, r.bin, filepath.Join(tmp, "data-"+fmt.Sprint(len(catchUps))))
			if err != nil {
				return fmt.Errorf("%s: %w", r.name, err)
			}
			res.Name = r.name
			catchUps = append(catchUps, res)
			continue
		}
		res, err := measure(ctx, cfg, r.bin, filepath.Join(tmp, "data-"+fmt.Sprint(len(results))), r.name)
		if err != nil {
			return fmt.Errorf("%s: %w", r.name, err)
		}
		res.Name = r.name
		results = append(results, res)
	}
	if cfg.Down > 0 {
		printCatchUp(out, cfg, catchUps)
		return nil
	}
	printResults(out, cfg, results)
	return nil
}

func printResults(out io.Writer, cfg config, rs []result) {
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(out, "%d rules (%s) every %s, stub delay %s, window %s after %s of warm-up; %.0f events/s due\n",
		cfg.Rules, cfg.Mix, cfg.Every, cfg.Delay, cfg.Window, cfg.Warmup, cfg.due())
	header := "\t"
	for _, r := range rs {
		header += r.Name + "\t"
	}
	if len(rs) == 2 {
		header += "ratio\t"
	}
	fmt.Fprintln(w, header)
	row := func(name string, f func(r result) float64, format string) {
		line := name + "\t"
		for _, r := range rs {
			line += fmt.Sprintf(format, f(r)) + "\t"
		}
		if len(rs) == 2 && f(rs[0]) != 0 {
			line += fmt.Sprintf("%.2f×", f(rs[1])/f(rs[0])) + "\t"
		}
		fmt.Fprintln(w, line)
	}
	row("events/s received", func(r result) float64 { return r.PerSec }, "%.0f")
	row("agent CPU per event (µs)", func(r result) float64 { return r.CPUPerEvent }, "%.1f")
	row("agent CPU (cores)", func(r result) float64 { return r.Cores }, "%.2f")
	row("agent RSS max (MiB)", func(r result) float64 { return r.RSSMaxMiB }, "%.0f")
	row("lateness p50 (ms)", func(r result) float64 { return r.Lateness.P50 }, "%.1f")
	row("lateness p99 (ms)", func(r result) float64 { return r.Lateness.P99 }, "%.1f")
	row("lateness max (ms)", func(r result) float64 { return r.Lateness.Max }, "%.1f")
	row("keys received twice", func(r result) float64 { return float64(r.Duplicates) }, "%.0f")
	w.Flush()
}
