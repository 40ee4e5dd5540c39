// Command pernode measures what one node of a cluster costs at 3, 5 and 10 nodes
// under the same total load: the same rules (interval rules of one period, listed
// by a null Attune), so the same fires a second over the cluster. For each size it
// starts that many real `timerd agent` processes joined into one cluster, waits
// until every node is ready and sees them all, lets the cluster settle, and over
// a window reads each node's gossip bytes (timerd_cluster_network_bytes_total),
// protocol messages sent, CPU and RSS, and its store's size on disk.
//
// Every node receives every fire's watermark today, so the bytes and CPU a node
// spends on the protocol stay about flat as nodes are added; issue 15 asks for
// them to fall (fires replicated to a rule's successors only). -baseline REV runs
// the same with the timerd of that revision, side by side, with the ratios: the
// command that shows the change.
//
//	go run ./test/bench/pernode
//	go run ./test/bench/pernode -nodes 3,10 -rules 60000 -every 60s -baseline main
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/timerd/timerd/test/internal/benchkit"
)

type config struct {
	Nodes    []int
	Rules    int
	Every    time.Duration
	Settle   time.Duration
	Window   time.Duration
	Binary   string
	Baseline string
}

func parseNodes(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 || n > 50 {
			return nil, fmt.Errorf("-nodes: %q is not a cluster size of 1..50", f)
		}
		out = append(out, n)
	}
	return out, nil
}

func main() {
	cfg := config{Rules: 30_000, Every: 60 * time.Second, Settle: 30 * time.Second, Window: 60 * time.Second}
	fs := flag.NewFlagSet("pernode", flag.ContinueOnError)
	nodes := fs.String("nodes", "3,5,10", "cluster sizes, comma-separated")
	fs.IntVar(&cfg.Rules, "rules", cfg.Rules, "interval rules the stub lists (the same at every size)")
	fs.DurationVar(&cfg.Every, "every", cfg.Every, "the rules' interval (whole seconds): rules/every fires a second over the cluster")
	fs.DurationVar(&cfg.Settle, "settle", cfg.Settle, "after every node is ready and sees all: acquisitions and the first fires settle")
	fs.DurationVar(&cfg.Window, "window", cfg.Window, "measuring window (whole periods of -every keep the fires even)")
	fs.StringVar(&cfg.Binary, "binary", "", "timerd binary (default: go build ./cmd/timerd)")
	fs.StringVar(&cfg.Baseline, "baseline", "", "also run the timerd of this git revision, side by side")
	if err := fs.Parse(os.Args[1:]); err != nil {
		os.Exit(2)
	}
	var err error
	if cfg.Nodes, err = parseNodes(*nodes); err != nil || cfg.Rules < 1 || cfg.Every < time.Second || cfg.Every%time.Second != 0 {
		fmt.Fprintln(os.Stderr, "pernode: want -nodes of sizes 1..50, -rules ≥ 1, -every whole seconds", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := runAll(ctx, cfg); err != nil {
		fmt.Fprintln(os.Stderr, "pernode:", err)
		os.Exit(1)
	}
}

// build is one timerd binary to measure.

func runAll(ctx context.Context, cfg config) error {
	tmp, err := os.MkdirTemp("", "timerd-bench-pernode-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	builds, err := benchkit.Builds(ctx, cfg.Baseline, cfg.Binary, tmp)
	if err != nil {
		return err
	}
	results := map[string][]result{}
	// Sizes outside, builds inside: the two builds of one size run minutes apart, not an
	// hour, on a machine whose load changes.
	for _, n := range cfg.Nodes {
		for _, b := range builds {
			benchkit.Progress("%s: %d nodes, %d rules every %s (%.0f fires/s over the cluster)", b.Name, n, cfg.Rules, cfg.Every,
				float64(cfg.Rules)/cfg.Every.Seconds())
			r, err := measure(ctx, cfg, b.Bin, filepath.Join(tmp, strings.ReplaceAll(b.Name, "/", "_")), n)
			if err != nil {
				return fmt.Errorf("%s, %d nodes: %w", b.Name, n, err)
			}
			benchkit.Progress("%s", r)
			results[b.Name] = append(results[b.Name], r)
		}
	}
	printResults(os.Stdout, cfg, builds, results)
	return nil
}
