// Command members simulates a cluster of 50–100 members in one process: timerd's
// own cluster package (memberlist and the consistent-hash ring) on real UDP and
// TCP sockets, one loopback address per member (127.0.0.2, 127.0.0.3, ...). It
// measures the time until every member's ring agrees after the cluster forms, a
// join, a crash and a graceful leave; the partitions each change moved against
// the ideal; and the gossip bytes per member per second (Cluster.NetBytes: every
// byte of the member's sockets) at rest and in the window after each change. The
// fire-once protocol does not run here: its per-message cost is measured apart
// (-wire), and docs/architecture.md's cost model multiplies it out.
//
//	go run ./test/bench/members -n 100
//	go run ./test/bench/members -n 50 -rest 20s -profile local
//	go run ./test/bench/members -wire-only
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/timerd/timerd/test/internal/benchkit"
)

func main() {
	cfg := config{N: 100, Rest: 15 * time.Second, Timeout: 2 * time.Minute, Seeds: 3, Batch: 10, Profile: "lan", Encrypt: true, VNodes: 10}
	fs := flag.NewFlagSet("members", flag.ContinueOnError)
	fs.IntVar(&cfg.N, "n", cfg.N, "members at the start (2..1000)")
	fs.DurationVar(&cfg.Rest, "rest", cfg.Rest, "the window measured at rest, and after each change")
	fs.DurationVar(&cfg.Timeout, "timeout", cfg.Timeout, "give up when the rings do not agree within this")
	fs.IntVar(&cfg.Seeds, "seeds", cfg.Seeds, "members in the join list (TIMERD_JOIN)")
	fs.IntVar(&cfg.Batch, "batch", cfg.Batch, "members started at once while the cluster forms, a batch after the one before converged")
	fs.StringVar(&cfg.Profile, "profile", cfg.Profile, "memberlist's base config: lan (what timerd runs), wan (probe timeout 3 s: for a machine too busy for lan's 500 ms) or local")
	fs.BoolVar(&cfg.Encrypt, "encrypt", cfg.Encrypt, "gossip with a key (TIMERD_GOSSIP_KEY), as a cluster should")
	fs.IntVar(&cfg.VNodes, "vnodes", cfg.VNodes, "virtual nodes per member of the members' own rings (the default ring's 1,000 take seconds at 100 members, built by every member in this one process)")
	verbose := fs.Bool("v", false, "print the members' warnings (memberlist's suspicions, deaths) on stderr")
	wireOnly := fs.Bool("wire-only", false, "measure the protocol messages' sizes only")
	if err := fs.Parse(os.Args[1:]); err != nil {
		os.Exit(2)
	}
	if cfg.N < 2 || cfg.N > 1000 || cfg.Seeds < 1 || cfg.Batch < 1 || cfg.VNodes < 2 || (cfg.Profile != "lan" && cfg.Profile != "wan" && cfg.Profile != "local") {
		fmt.Fprintln(os.Stderr, "members: want -n 2..1000, -seeds ≥ 1, -batch ≥ 1, -vnodes ≥ 2, -profile lan, wan or local")
		os.Exit(2)
	}
	cfg.Progress = benchkit.Progress
	if *verbose {
		cfg.Log = os.Stderr
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rows, err := wireCost(ctx, cfg.Encrypt, 2000)
	if err != nil {
		fmt.Fprintln(os.Stderr, "members: wire:", err)
		os.Exit(1)
	}
	printWire(os.Stdout, cfg.Encrypt, rows)
	if *wireOnly {
		return
	}
	res, err := run(ctx, cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "members:", err)
		os.Exit(1)
	}
	printResult(os.Stdout, res)
}

func printWire(out io.Writer, encrypted bool, rows []wireRow) {
	fmt.Fprintf(out, "protocol messages (encrypted gossip: %v): encoded, and what the sender's socket writes\n", encrypted)
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "message\tencoded B\ton the wire B\tper item B\tCPU µs, both ends\t")
	for _, r := range rows {
		fmt.Fprintf(w, "%s\t%d\t%.0f\t%.1f\t%.0f\t\n", r.What, r.Encoded, r.OnWire, r.OnWire/float64(r.Per),
			float64(r.CPU.Nanoseconds())/1e3)
	}
	w.Flush()
	fmt.Fprintln(out)
}

func printResult(out io.Writer, r result) {
	fmt.Fprintf(out, "%d members (memberlist %s config, encrypted %v, views on rings of %d virtual nodes per member): formed in %s; Go heap %.0f KiB per member\n",
		r.N, r.Profile, r.Encrypted, r.VNodes, r.FormedIn.Round(time.Millisecond), r.HeapPerMember/1024)
	fmt.Fprintf(out, "the default ring (1,000 virtual nodes per member): builds in %s at 10 members, %s at %d; balance at %d: most %.2f×, fewest %.2f× the mean\n",
		r.RingBuild[10].Round(time.Millisecond), r.RingBuild[r.N].Round(time.Millisecond), r.N, r.N, r.BalanceHi, r.BalanceLo)
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "window\tmembers\trings agree after\tmoved\tideal\tmoved between stayers\tsent B/s per member (mean, max)\treceived B/s (mean, max)\tCPU per member\t")
	for _, x := range r.Windows {
		agree, moved, ideal, between := "–", "–", "–", "–"
		if x.ConvergedIn > 0 {
			agree = x.ConvergedIn.Round(time.Millisecond).String()
			moved = fmt.Sprintf("%.2f%%", 100*x.MovedFraction)
			ideal = fmt.Sprintf("%.2f%%", 100*x.IdealFraction)
			between = fmt.Sprint(x.MovedBetweenOlds)
		}
		fmt.Fprintf(w, "%s (%s)\t%d\t%s\t%s\t%s\t%s\t%.0f, %.0f\t%.0f, %.0f\t%.2f%%\t\n", x.What, x.Span.Round(time.Second),
			x.Members, agree, moved, ideal, between, x.SentPerSec.Mean, x.SentPerSec.Max,
			x.ReceivedPerSec.Mean, x.ReceivedPerSec.Max, x.CPUPerMemberPct)
	}
	w.Flush()
}
