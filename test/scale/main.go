// Command scale runs timerd at scale on one machine: `timerd api` with a
// million rules loaded in bulk (--load-rules), ten `timerd agent` processes
// joining, then an eleventh, a rolling restart of all eleven and a crash of
// one. Each phase prints a line of figures; the run checks what the API
// stored: every slot of the probe rules (short interval rules among the bulk)
// exactly once, no Idempotency-Key twice, no duplicate the API dropped.
//
//	go run ./test/scale                    # 1,000,000 rules, 10 + 1 nodes (make scale)
//	go run ./test/scale -rules 100000      # smaller
//
// It exits 0 when every guarantee held, 1 when one broke (a duplicate, a gap,
// a node never ready), 2 when the run itself failed and 3 when it stopped
// because the machine was running out of memory (-mem-floor).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"
)

type config struct {
	Rules             int
	Nodes             int
	Probes            int
	ProbeEvery        time.Duration
	Idle              time.Duration // the steady window measured for idle CPU
	ReadyWithin       time.Duration // how long a node may take to be ready
	ReconcileInterval time.Duration // agents' periodic reconcile (kept out of the run)
	Binary            string
	Dir               string
	Keep              bool
	SkipListing       bool
	Stagger           bool   // start the first nodes one at a time, each once the one before is ready
	Replicas          string // TIMERD_REPLICAS of the agents ("" leaves their default)
	MemFloor          int64  // bytes: the run stops when the machine has less available
	ProfileSeconds    int    // CPU profile of the joining node's start-up; 0: none
}

func main() {
	cfg := config{Rules: 1_000_000, Nodes: 10, Probes: 1000, ProbeEvery: 5 * time.Second, Idle: 30 * time.Second,
		ReadyWithin: 30 * time.Minute, ReconcileInterval: 6 * time.Hour}
	fs := flag.NewFlagSet("scale", flag.ContinueOnError)
	fs.IntVar(&cfg.Rules, "rules", cfg.Rules, "rules loaded into the API, probes included")
	fs.IntVar(&cfg.Nodes, "nodes", cfg.Nodes, "agents started first (one more joins later)")
	fs.IntVar(&cfg.Probes, "probes", cfg.Probes, "interval rules of -probe-every whose every slot is checked")
	fs.DurationVar(&cfg.ProbeEvery, "probe-every", cfg.ProbeEvery, "interval of the probes (whole seconds)")
	fs.DurationVar(&cfg.Idle, "idle", cfg.Idle, "steady window in which idle CPU is measured")
	fs.DurationVar(&cfg.ReadyWithin, "ready-within", cfg.ReadyWithin, "longest wait for a node to be ready")
	fs.DurationVar(&cfg.ReconcileInterval, "reconcile-interval", cfg.ReconcileInterval, "TIMERD_RECONCILE_INTERVAL of the agents")
	fs.StringVar(&cfg.Binary, "binary", "", "timerd binary (default: go build ./cmd/timerd into the run's dir)")
	fs.StringVar(&cfg.Dir, "dir", "", "directory of the run's data and logs (default: a fresh temp dir)")
	fs.BoolVar(&cfg.Keep, "keep", false, "keep the run's directory")
	memFloorGiB := fs.Float64("mem-floor", 2, "stop the run (exit 3) when the machine has less memory available than this, in GiB")
	fs.IntVar(&cfg.ProfileSeconds, "profile", 30, "seconds of CPU profile of the joining node's start-up, saved in the run's dir (0: none)")
	fs.StringVar(&cfg.Replicas, "replicas", "", "TIMERD_REPLICAS of the agents: majority (their default) or a number from 2")
	fs.BoolVar(&cfg.Stagger, "stagger", false, "start the first nodes one at a time, each once the one before is ready (default: all at once)")
	fs.BoolVar(&cfg.SkipListing, "skip-listing", false, "do not time one listing of every rule alone before the agents start")
	if err := fs.Parse(os.Args[1:]); err != nil {
		os.Exit(2)
	}
	cfg.MemFloor = int64(*memFloorGiB * (1 << 30))
	if err := cfg.validate(); err != nil {
		fmt.Fprintln(os.Stderr, "scale:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := run(ctx, cfg, os.Stdout)
	switch {
	case errors.Is(err, errGuarantee):
		fmt.Println("FAIL:", err)
		os.Exit(1)
	case errors.Is(err, errOutOfMemory):
		fmt.Println("TOO LARGE:", err)
		os.Exit(3)
	case err != nil:
		fmt.Fprintln(os.Stderr, "scale:", err)
		os.Exit(2)
	}
	fmt.Println("PASS")
}

func (c config) validate() error {
	switch {
	case c.Nodes < 2:
		return fmt.Errorf("-nodes %d: want at least 2", c.Nodes)
	case c.Probes < 1 || c.Probes > c.Rules:
		return fmt.Errorf("-probes %d: want 1..-rules (%d)", c.Probes, c.Rules)
	case c.ProbeEvery < time.Second || c.ProbeEvery%time.Second != 0:
		return fmt.Errorf("-probe-every %s: want whole seconds", c.ProbeEvery)
	}
	return nil
}
