// Command load drives `timerd dev` (the API, the lifecycle bus and one node
// in one process) with many interval rules, created as fast as the API takes
// them, and checks what the API stored from the first create on: every slot
// of every rule since its create exactly once, the fire-to-stored latency
// (created − scheduled_at) over the whole run and, against a target, after
// the last create; and how long after the last create the node runs them all.
//
//	go run ./test/load                       # 50,000 rules of 10 s, then 60 s
//	go run ./test/load -rules 200 -interval 1s -duration 5s
//	go run ./test/load -json > load.json
//
// It exits 0 on PASS, 1 on FAIL and 2 when the run itself failed.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"
)

func main() {
	cfg := defaultConfig()
	fs := flag.NewFlagSet("load", flag.ContinueOnError)
	fs.IntVar(&cfg.Rules, "rules", cfg.Rules, "interval rules to create")
	fs.DurationVar(&cfg.Interval, "interval", cfg.Interval, "interval of every rule (whole seconds)")
	fs.DurationVar(&cfg.Duration, "duration", cfg.Duration, "how long the run goes on after the last create (it is measured from the first)")
	fs.IntVar(&cfg.Concurrency, "concurrency", cfg.Concurrency, "concurrent clients creating rules")
	fs.StringVar(&cfg.Binary, "binary", "", "timerd binary to run (default: go build ./cmd/timerd into a temp dir)")
	fs.StringVar(&cfg.DataDir, "data-dir", "", "data dir of timerd dev (default: a fresh temp dir)")
	fs.BoolVar(&cfg.Keep, "keep", false, "keep the data dir")
	fs.DurationVar(&cfg.P99Target, "p99", cfg.P99Target, "target for the p99 of created − scheduled_at of the slots after the last create")
	fs.DurationVar(&cfg.Settle, "settle", cfg.Settle, "wait after the outbox drained before fetching events")
	fs.DurationVar(&cfg.DrainTimeout, "drain-timeout", cfg.DrainTimeout, "longest wait for the outbox to drain after the window")
	asJSON := fs.Bool("json", false, "print the report as JSON on stdout (progress still goes to stderr)")
	quiet := fs.Bool("q", false, "no progress lines")
	if err := fs.Parse(os.Args[1:]); err != nil {
		os.Exit(2)
	}
	if !*quiet {
		cfg.Progress = os.Stderr
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rep, err := run(ctx, cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "load:", err)
		os.Exit(2)
	}
	if *asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			fmt.Fprintln(os.Stderr, "load: write the report:", err)
			os.Exit(2)
		}
	} else {
		printReport(os.Stdout, rep)
	}
	if !rep.Pass {
		os.Exit(1)
	}
}

func printReport(out io.Writer, r *report) {
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	row := func(k, format string, args ...any) {
		fmt.Fprintf(w, "  %s\t"+format+"\n", append([]any{k}, args...)...)
	}
	opt := func(p *int) string {
		if p == nil {
			return "n/a"
		}
		return fmt.Sprint(*p)
	}
	fmt.Fprintf(w, "timerd load: %d interval rules of %gs (%.0f fires/s), measured from the first create to %gs after the last, %d CPUs\n",
		r.Rules, r.IntervalSec, r.FiresPerSec, r.DurationSec, r.CPUs)
	fmt.Fprintln(w, "creation and intake")
	row("create rules", "%d in %.1fs (%.0f/s, %d clients; per create %s)", r.Rules, r.SetupSec, r.CreatePerSec, r.Concurrency, r.CreateLatency)
	row("intake delay", "%.2fs from the last create until the node ran all %d rules (outbox %d then)", r.OwnedAfterSec, r.Rules, r.BacklogAtOwned)
	row("intake lag", "at most %d rules created but not yet running (sampled each second)", r.IntakeLagMax)
	fmt.Fprintf(w, "run [%s, %s), creation ended %s\n", r.RunStart, r.RunEnd, r.CreatedEnd)
	row("fires expected", "%d (every slot of every rule after its create was answered)", r.Expected)
	row("events stored", "%d slots stored (%d events in the run, %d fetched; %d slots during a create also stored)", r.Stored, r.EventsInRun, r.EventsFetched, r.Optional)
	row("duplicates stored", "%d", r.Duplicates)
	row("duplicates rejected by API", "%s (timerd_api_events_duplicate_total)", opt(r.APIDupRejected))
	row("node deliveries", "%s answered 2xx, %s answered 200 (the API's duplicate answer), %s failed attempts",
		opt(r.NodeDelivered), opt(r.NodeDupAnswered), opt(r.NodeDelivErrors))
	row("missing slots", "%d (%d fires still in the outbox when the events were read)", r.Missing, r.OutboxAtFetch)
	if r.OffGrid+r.Foreign+r.Early > 0 {
		row("off-grid / early / foreign events", "%d / %d / %d", r.OffGrid, r.Early, r.Foreign)
	}
	for _, m := range r.MissingSample {
		row("  missing e.g.", "%s", m)
	}
	row("latency (created−slot), whole run", "%s", r.Latency)
	row("latency after creation", "%s", r.LatencyAfter)
	row("  fire lateness (fired−slot)", "%s", r.Lateness)
	row("  fire lateness after creation", "%s", r.LatenessAfter)
	row("  fired→stored (created−fired)", "%s", r.Store)
	for _, s := range r.Worst {
		row(fmt.Sprintf("  worst second +%ds", s.At), "%d slots: p50 %s  p99 %s  max %s", s.N, fmtMs(s.P50), fmtMs(s.P99), fmtMs(s.Max))
	}
	row("outbox", "depth max %d in the run; under 100 ms of fires %.1fs after it (%v); dead letters %d", r.OutboxMax, r.DrainSec, r.Drained, r.DeadLetters)
	row("events fetched in", "%.1fs", r.FetchSec)
	fmt.Fprintln(w, "process (timerd dev, sampled each second in the run)")
	row("CPU", "avg %.0f%%  max %.0f%% (100%% = one core)", r.Process.CPUAvgPct, r.Process.CPUMaxPct)
	row("RSS", "avg %.0f MiB  max %.0f MiB", r.Process.RSSAvgMiB, r.Process.RSSMaxMiB)
	row("exit", "%s", r.Exit)
	if len(r.Timeline) > 0 {
		fmt.Fprintln(w, "node over the run (from /metrics, since the first create)")
		for _, t := range r.Timeline {
			row("+"+t.At, "%s", t)
		}
	}
	if len(r.NodeMetrics) > 0 {
		fmt.Fprintln(w, "node metrics, first create → after drain (histograms: count  mean  p50  p99)")
		printMetrics(row, r.NodeMetrics)
	}
	if len(r.APIMetrics) > 0 {
		fmt.Fprintln(w, "API metrics, first create → after drain")
		printMetrics(row, r.APIMetrics)
	}
	w.Flush()
	pf := func(ok bool) string {
		if ok {
			return "PASS"
		}
		return "FAIL"
	}
	fmt.Fprintf(out, "%s exactly once: %d slots expected, %d stored, %d missing, %d duplicates stored, %d off-grid, %d early\n",
		pf(r.ExactlyOnce), r.Expected, r.Stored, r.Missing, r.Duplicates, r.OffGrid, r.Early)
	fmt.Fprintf(out, "%s latency after creation: p99 %s (target ≤ %s); whole run p99 %s, max %s\n", pf(r.LatencyOK),
		fmtMs(r.LatencyAfter.P99), fmtMs(r.P99TargetMs), fmtMs(r.Latency.P99), fmtMs(r.Latency.Max))
	fmt.Fprintf(out, "intake: all %d rules running %.2fs after the last create (%.0f creates/s)\n", r.Rules, r.OwnedAfterSec, r.CreatePerSec)
	if d := r.APIDupRejected; d != nil && *d > 0 {
		fmt.Fprintf(out, "WARN the node delivered %d duplicates (dropped by the API)\n", *d)
	}
	fmt.Fprintln(out, pf(r.Pass))
}

func printMetrics(row func(k, format string, args ...any), ms []metricSummary) {
	for _, m := range ms {
		switch {
		case m.Value != nil:
			row(m.Name, "%g", *m.Value)
		case m.Mean != 0 || m.P50 != 0 || m.P99 != 0:
			f := func(v float64) string { return fmt.Sprintf("%.4g", v) }
			if strings.HasSuffix(m.Name, "_seconds") {
				f = secs
			}
			row(m.Name, "%.0f  %s  %s  %s", m.Count, f(m.Mean), f(m.P50), f(m.P99))
		default:
			row(m.Name, "%.0f", m.Count)
		}
	}
}

// secs formats a value in seconds (a metric's unit) readably.
func secs(v float64) string {
	if math.IsNaN(v) {
		return "n/a"
	}
	return fmtMs(float64(time.Duration(v*float64(time.Second)).Microseconds()) / 1000)
}
