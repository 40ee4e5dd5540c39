// Command intake measures rule changes at scale (issue 15, point 3): a real
// `timerd api` publishing to RabbitMQ and N real `timerd agent` processes in
// one cluster, each with its own durable lifecycle queue. It creates -rules
// interval rules through POST /api/v1/rules, -concurrency at a time, and
// reports, for each N of -agents:
//
//   - creates/s as the client sees them (201s over the time to the last one),
//     and the create latency;
//   - the time until every agent has applied every rule (/v1/status
//     rules_known), as rules/s;
//   - where the time goes: CPU seconds per 1,000 rules of the API, the broker
//     and the agents together, and each agent's intake commits (store
//     transactions) with the lifecycle messages per commit.
//
// -bare adds a row per N with N bare queues drained by this process (auto-ack,
// nothing stored) instead of agents: the API's publish and confirm and the
// broker's fan-out without timerd's intake. -agents 0 is the API alone
// (no broker). With -baseline REV every run is made with the timerd of that
// revision too, side by side, with the ratio.
//
//	go run ./test/bench/intake -agents 1,3,10 -rules 10000
//	go run ./test/bench/intake -agents 1,3,10 -rules 10000 -baseline c0598a5
//	make bench-intake ARGS="-baseline main"
//
// RabbitMQ must answer at -mq (`make mq` starts one on 127.0.0.1:5672).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"
)

type config struct {
	Agents      []int
	Rules       int
	Concurrency int
	MQ          string
	Binary      string
	Baseline    string
	Bare        bool
	ApplyWithin time.Duration // how long every agent may take to apply every rule
	Profile     string        // directory: a CPU profile of the first agent over the creates' first seconds
}

func main() {
	cfg := config{Agents: []int{1, 3, 10}, Rules: 10_000, Concurrency: 32,
		MQ: "amqp://guest:guest@127.0.0.1:5672/", ApplyWithin: 10 * time.Minute}
	fs := flag.NewFlagSet("intake", flag.ContinueOnError)
	fs.Var((*intList)(&cfg.Agents), "agents", "comma-separated agent counts, one run each (0: the API alone, no broker)")
	fs.IntVar(&cfg.Rules, "rules", cfg.Rules, "rules created in each run")
	fs.IntVar(&cfg.Concurrency, "concurrency", cfg.Concurrency, "creates in flight")
	fs.StringVar(&cfg.MQ, "mq", cfg.MQ, "RabbitMQ URL")
	fs.StringVar(&cfg.Binary, "binary", "", "timerd binary (default: go build ./cmd/timerd)")
	fs.StringVar(&cfg.Baseline, "baseline", "", "also run the timerd of this git revision, side by side")
	fs.BoolVar(&cfg.Bare, "bare", false, "also run each N with N bare queues drained by this process instead of agents")
	fs.DurationVar(&cfg.ApplyWithin, "apply-within", cfg.ApplyWithin, "fail when the agents have not applied every rule this long after the last create")
	fs.StringVar(&cfg.Profile, "cpuprofile", "", "write a CPU profile of the first agent (5 s from the first create) into this directory (go tool pprof -top FILE)")
	if err := fs.Parse(os.Args[1:]); err != nil {
		os.Exit(2)
	}
	if err := cfg.validate(); err != nil {
		fmt.Fprintln(os.Stderr, "intake:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := runAll(ctx, cfg, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "intake:", err)
		os.Exit(1)
	}
}

func (c config) validate() error {
	switch {
	case len(c.Agents) == 0:
		return fmt.Errorf("-agents: none given")
	case c.Rules < 1:
		return fmt.Errorf("-rules: %d, at least 1", c.Rules)
	case c.Concurrency < 1:
		return fmt.Errorf("-concurrency: %d, at least 1", c.Concurrency)
	}
	for _, n := range c.Agents {
		if n < 0 || n > 50 {
			return fmt.Errorf("-agents: %d is out of range (0 .. 50)", n)
		}
	}
	return nil
}

// intList is a flag of comma-separated non-negative integers.
type intList []int

func (l *intList) String() string {
	if l == nil {
		return ""
	}
	s := make([]string, len(*l))
	for i, n := range *l {
		s[i] = strconv.Itoa(n)
	}
	return strings.Join(s, ",")
}

func (l *intList) Set(s string) error {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 0 {
			return fmt.Errorf("%q is not a count", f)
		}
		out = append(out, n)
	}
	*l = out
	return nil
}
