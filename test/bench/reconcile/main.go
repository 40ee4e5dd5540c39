// Command reconcile measures what a node's reconcile round costs the rules
// API and the node (issue 15, point 4): `timerd api` loaded with N timer
// rules, then one real `timerd agent` at a time, each behind a counting proxy,
// at the contract's old page size (100) and at the new default (1,000). For
// each it reports one periodic round (the node already holds every rule: the
// round every node makes every TIMERD_RECONCILE_INTERVAL): the listing
// requests and bytes, the round's time, the CPU the agent and the API spent
// on it, and the API requests per minute per million rules per node at the
// default interval of 5 minutes; the agent's peak RSS by the end of its
// start-up round (which stores every rule); then the ratios of the two.
// With -baseline REV, REV's agent is measured too, before this tree's.
//
//	go run ./test/bench/reconcile -rules 200000
//	go run ./test/bench/reconcile -rules 200000 -sizes 1000 -baseline 114f710   # an earlier revision's agent beside this tree's
//	go run ./test/bench/reconcile -rules 200000 -keep /tmp/rec-api   # keep the loaded API for the next run
//	go run ./test/bench/reconcile -rules 200000 -keep /tmp/rec-api -timerd /tmp/timerd-main -sizes 100   # another build
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/timerd/timerd/test/internal/benchkit"
)

type config struct {
	Rules    int
	Sizes    []int         // page sizes, one agent each
	Interval time.Duration // the agent's reconcile interval: one periodic round is measured
	Per      time.Duration // the interval the per-minute figure is given for
	Loaders  int           // concurrent POSTs while loading
	Keep     string        // the API's data directory, kept (and reused when it holds the rules)
	Binary   string        // a built timerd; "": go build
	Baseline string        // a revision whose agent is measured too, beside this tree's
}

func main() {
	cfg := config{Rules: 200_000, Sizes: []int{100, 1000}, Interval: 20 * time.Second, Per: 5 * time.Minute, Loaders: 16}
	fs := flag.NewFlagSet("reconcile", flag.ContinueOnError)
	fs.IntVar(&cfg.Rules, "rules", cfg.Rules, "timer rules in the API (80% interval of 1 to 24 h, 10% daily cron, 10% datetime in 2030)")
	fs.DurationVar(&cfg.Interval, "interval", cfg.Interval, "the agents' TIMERD_RECONCILE_INTERVAL (its first periodic round is the one measured)")
	fs.DurationVar(&cfg.Per, "per", cfg.Per, "the reconcile interval the requests-per-minute figure is given for (the default setting)")
	fs.IntVar(&cfg.Loaders, "loaders", cfg.Loaders, "concurrent POSTs loading the rules")
	fs.StringVar(&cfg.Keep, "keep", "", "the API's data directory: kept after the run, and reused (no load) when it holds -rules rules")
	fs.StringVar(&cfg.Binary, "timerd", "", "a timerd binary (default: go build ./cmd/timerd)")
	fs.StringVar(&cfg.Baseline, "baseline", "", "a git revision whose agent is measured too, side by side (with one -sizes: ratios)")
	fs.Func("sizes", "page sizes, one agent each, comma-separated (default 100,1000)", func(v string) error {
		cfg.Sizes = nil
		for _, f := range strings.Split(v, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || n < 1 {
				return fmt.Errorf("%q is not a page size", f)
			}
			cfg.Sizes = append(cfg.Sizes, n)
		}
		return nil
	})
	if err := fs.Parse(os.Args[1:]); err != nil {
		os.Exit(2)
	}
	if cfg.Rules < 1 || cfg.Interval < time.Second || cfg.Per <= 0 || cfg.Loaders < 1 {
		fmt.Fprintln(os.Stderr, "reconcile: -rules, -loaders must be positive, -interval at least 1s, -per positive")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "reconcile:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, cfg config, out io.Writer) error {
	tmp, err := os.MkdirTemp("", "timerd-bench-reconcile-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	benchkit.Progress("building timerd")
	builds, err := benchkit.Builds(ctx, cfg.Baseline, cfg.Binary, tmp)
	if err != nil {
		return err
	}
	bin := builds[len(builds)-1].Bin // this tree's serves the API
	apiDir := cfg.Keep
	if apiDir == "" {
		apiDir = filepath.Join(tmp, "api")
	}
	api, err := startAPI(ctx, bin, apiDir)
	if err != nil {
		return err
	}
	defer api.stop()
	if err := api.load(ctx, cfg.Rules, cfg.Loaders); err != nil {
		return err
	}
	var results []result
	for i, b := range builds {
		for _, size := range cfg.Sizes {
			benchkit.Progress("%s: agent asking %d rules a page", b.Name, size)
			res, err := measure(ctx, cfg, b.Bin, api, filepath.Join(tmp, fmt.Sprintf("agent-%d-%d", i, size)), size)
			if err != nil {
				return fmt.Errorf("%s, page size %d: %w", b.Name, size, err)
			}
			res.Build = b.Name
			results = append(results, res)
		}
	}
	printResults(out, cfg, results)
	return nil
}

func printResults(out io.Writer, cfg config, rs []result) {
	fmt.Fprintf(out, "%d rules in timerd api; one periodic reconcile round of one agent that holds them all\n", cfg.Rules)
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	header := "\t"
	for _, r := range rs {
		if len(rs) > len(cfg.Sizes) {
			header += r.Build + ", "
		}
		header += fmt.Sprintf("page %d\t", r.PageSize)
	}
	if len(rs) == 2 {
		header += "ratio\t"
	}
	fmt.Fprintln(w, header)
	row := func(name, format string, v func(result) float64) {
		line := name + "\t"
		for _, r := range rs {
			line += fmt.Sprintf(format, v(r)) + "\t"
		}
		if len(rs) == 2 && v(rs[0]) != 0 {
			line += fmt.Sprintf("%.2f\t", v(rs[1])/v(rs[0]))
		}
		fmt.Fprintln(w, line)
	}
	row("requests / round", "%.0f", func(r result) float64 { return float64(r.Requests) })
	row("MiB / round", "%.1f", func(r result) float64 { return float64(r.Bytes) / (1 << 20) })
	row("bytes / rule", "%.0f", func(r result) float64 { return float64(r.Bytes) / float64(cfg.Rules) })
	row("round s (first request to the node's log)", "%.2f", func(r result) float64 { return r.Round.Seconds() })
	row("agent CPU s / round", "%.2f", func(r result) float64 { return r.AgentCPU.Seconds() })
	row("API CPU s / round", "%.2f", func(r result) float64 { return r.APICPU.Seconds() })
	row("API CPU ms / request", "%.2f", func(r result) float64 { return r.APICPU.Seconds() * 1000 / float64(max(r.Requests, 1)) })
	perMin := fmt.Sprintf("requests / min / 1M rules / node at %s", cfg.Per)
	row(perMin, "%.0f", func(r result) float64 { return perMinute(r.Requests, cfg.Rules, cfg.Per) })
	row(fmt.Sprintf("MiB / min / 1M rules / node at %s", cfg.Per), "%.1f", func(r result) float64 {
		return perMinute(int(r.Bytes), cfg.Rules, cfg.Per) / (1 << 20)
	})
	row(fmt.Sprintf("API CPU s / min / 1M rules / node at %s", cfg.Per), "%.2f", func(r result) float64 {
		return perMinute(int(r.APICPU.Microseconds()), cfg.Rules, cfg.Per) / 1e6
	})
	row("agent start to ready s (first round: stores every rule)", "%.1f", func(r result) float64 { return r.Ready.Seconds() })
	row("agent peak RSS MiB (by the end of the first round)", "%.0f", func(r result) float64 { return float64(r.PeakRSS) / (1 << 20) })
	w.Flush()
}

// perMinute scales n a round of rules rules to a minute of one node
// reconciling a million rules every interval.
func perMinute(n, rules int, interval time.Duration) float64 {
	return float64(n) * (1e6 / float64(rules)) / interval.Minutes()
}
