package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/timerd/timerd/test/internal/benchkit"
)

// result is one run's figures: one build, one agent count.
type result struct {
	Build  string
	Agents int
	Bare   bool // N bare queues instead of agents

	Load           float64 // the 1-minute load average at the end of the run (other work on the machine)
	Rules          int
	Errors         int           // creates not answered 201
	ClientTook     time.Duration // first create sent to last answered
	AppliedTook    time.Duration // first create sent to every agent knowing every rule
	Latency        dist          // of one create, as the client saw it
	PublishErrors  float64       // timerd_api_publish_errors_total
	APICPU         time.Duration
	BrokerCPU      time.Duration // 0 when the broker's process was not found
	AgentsCPU      time.Duration // all agents together
	AgentsIdle     time.Duration // all agents together over idleWindow before the creates
	IntakeMessages float64       // lifecycle messages the agents took, all together
	IntakeCommits  float64       // store transactions of the agents, all together
}

func (r result) createsPerSec() float64 {
	return perSec(r.Rules-r.Errors, r.ClientTook)
}

func (r result) appliedPerSec() float64 {
	return perSec(r.Rules-r.Errors, r.AppliedTook)
}

func perSec(n int, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return float64(n) / d.Seconds()
}

// perThousand is CPU milliseconds per 1,000 rules created.
func (r result) perThousand(cpu time.Duration) float64 {
	if r.Rules == 0 {
		return 0
	}
	return float64(cpu.Milliseconds()) * 1000 / float64(r.Rules)
}

// agentsBusyCPU is the agents' CPU less what they spend at rest over the
// same time: their intake's.
func (r result) agentsBusyCPU() time.Duration {
	return max(0, r.AgentsCPU-time.Duration(float64(r.AgentsIdle)*r.AppliedTook.Seconds()/idleWindow.Seconds()))
}

// batch is the lifecycle messages per intake commit, over all agents.
func (r result) batch() float64 {
	if r.IntakeCommits == 0 {
		return 0
	}
	return r.IntakeMessages / r.IntakeCommits
}

func (r result) label() string {
	switch {
	case r.Agents == 0:
		return "API alone"
	case r.Bare:
		return fmt.Sprintf("%d bare queues", r.Agents)
	}
	return fmt.Sprintf("%d agents", r.Agents)
}

func runAll(ctx context.Context, cfg config, out io.Writer) error {
	tmp, err := os.MkdirTemp("", "timerd-bench-intake-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	builds, err := benchkit.Builds(ctx, cfg.Baseline, cfg.Binary, tmp)
	if err != nil {
		return err
	}
	var results []result
	// Builds alternate within each size, so that the machine's noise falls
	// on both alike.
	for _, n := range cfg.Agents {
		kinds := []bool{false}
		if cfg.Bare && n > 0 {
			kinds = append(kinds, true)
		}
		for _, bare := range kinds {
			for _, b := range builds {
				run := runSpec{build: b.Name, bin: b.Bin, agents: n, bare: bare, dir: filepath.Join(tmp, fmt.Sprintf("run-%d", len(results)))}
				benchkit.Progress("%s, %s: %d rules, %d in flight", b.Name, result{Agents: n, Bare: bare}.label(), cfg.Rules, cfg.Concurrency)
				res, err := measure(ctx, cfg, run)
				if err != nil {
					return fmt.Errorf("%s, %s: %w", b.Name, result{Agents: n, Bare: bare}.label(), err)
				}
				benchkit.Progress("%.0f creates/s, all applied at %.0f rules/s, %.1f messages per intake commit",
					res.createsPerSec(), res.appliedPerSec(), res.batch())
				results = append(results, res)
			}
		}
	}
	printResults(out, cfg, results)
	return nil
}

// printResults prints one block per run kind (agent count, bare or not), with
// a column per build and, for two builds, their ratio.
func printResults(out io.Writer, cfg config, rs []result) {
	fmt.Fprintf(out, "%d interval rules (1 h) created through POST /api/v1/rules, %d in flight\n", cfg.Rules, cfg.Concurrency)
	var builds []string
	for _, r := range rs {
		if !contains(builds, r.Build) {
			builds = append(builds, r.Build)
		}
	}
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	header := "\t"
	for _, b := range builds {
		header += b + "\t"
	}
	if len(builds) == 2 {
		header += "ratio\t"
	}
	fmt.Fprintln(w, header)
	var seen []string
	for _, r := range rs {
		if contains(seen, r.label()) {
			continue
		}
		seen = append(seen, r.label())
		group := make([]result, 0, len(builds))
		for _, b := range builds {
			for _, s := range rs {
				if s.Build == b && s.label() == r.label() {
					group = append(group, s)
				}
			}
		}
		fmt.Fprintln(w, r.label()+"\t")
		row := func(name string, f func(r result) float64, format string) {
			line := "  " + name + "\t"
			for _, g := range group {
				line += fmt.Sprintf(format, f(g)) + "\t"
			}
			if len(group) == 2 && f(group[0]) != 0 {
				line += fmt.Sprintf("%.2f×", f(group[1])/f(group[0])) + "\t"
			}
			fmt.Fprintln(w, line)
		}
		row("creates/s (client)", result.createsPerSec, "%.0f")
		row("load average (1 min)", func(r result) float64 { return r.Load }, "%.1f")
		row("create p50 (ms)", func(r result) float64 { return r.Latency.P50 }, "%.1f")
		row("create p99 (ms)", func(r result) float64 { return r.Latency.P99 }, "%.1f")
		row("create errors", func(r result) float64 { return float64(r.Errors) }, "%.0f")
		row("publish errors", func(r result) float64 { return r.PublishErrors }, "%.0f")
		if r.Agents > 0 && !r.Bare {
			row("all applied (rules/s)", result.appliedPerSec, "%.0f")
			row("messages per intake commit", result.batch, "%.1f")
			row("agents CPU ms / 1,000 rules", func(r result) float64 { return r.perThousand(r.AgentsCPU) }, "%.0f")
			row("  of which at rest", func(r result) float64 { return r.perThousand(r.AgentsCPU - r.agentsBusyCPU()) }, "%.0f")
		}
		row("API CPU ms / 1,000 rules", func(r result) float64 { return r.perThousand(r.APICPU) }, "%.0f")
		if r.Agents > 0 {
			row("broker CPU ms / 1,000 rules", func(r result) float64 { return r.perThousand(r.BrokerCPU) }, "%.0f")
		}
	}
	w.Flush()
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}
