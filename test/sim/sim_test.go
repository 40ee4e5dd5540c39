package sim

import (
	"flag"
	"os"
	"strings"
	"testing"
	"time"
)

var (
	seeds   = flag.Int("sim.seeds", 100, "seeds per scenario (make test: 100; make sim: 1500)")
	oneSeed = flag.Uint64("sim.seed", 0, "run only this seed, with its whole trace")
)

// scenarios are the families of runs; every seed runs each of them.
var scenarios = []struct {
	name string
	cfg  Config
}{
	{"quiet", Config{Nodes: 3}},
	{"lossy", Config{Nodes: 3, Faults: Faults{Drop: 0.05, MaxDelay: 20 * time.Millisecond}}},
	{"partitions", Config{Nodes: 3, Faults: Faults{Partitions: 3, MaxDelay: 5 * time.Millisecond}}},
	{"pauses", Config{Nodes: 3, Faults: Faults{Pauses: 3, MaxDelay: 5 * time.Millisecond}}},
	{"crashes", Config{Nodes: 3, Faults: Faults{Crashes: 3, StoreFail: 0.02, MaxDelay: 5 * time.Millisecond}}},
	{"leaves", Config{Nodes: 4, Faults: Faults{Leaves: 2, Pauses: 1, MaxDelay: 5 * time.Millisecond}}},
	// A node leaves for good while the acks of its last fires are 2.5-5 s late, past its
	// leave's budget (2 s): it must not retire with them unreplicated, or they are lost.
	{"departure", Config{Nodes: 4, Faults: Faults{Departures: 1, AckDelay: 5 * time.Second, Leaves: 1, MaxDelay: 5 * time.Millisecond}}},
	// TIMERD_EXPECT left at 1: N is the most members seen, less those that left cleanly.
	{"unexpected", Config{Nodes: 3, Expect: 1, Faults: Faults{Leaves: 2, Crashes: 1, Pauses: 1, MaxDelay: 5 * time.Millisecond}}},
	// Rules created and disabled during the run, their messages late, twice, out of order.
	{"lifecycle", Config{Nodes: 3, Faults: Faults{Lifecycle: true, Crashes: 1, Pauses: 1, MaxDelay: 5 * time.Millisecond}}},
	// Fires stored by W = Replicas < Q members (the firer and W − 1 acks), and read by
	// acquisitions from N − W + 1: 3 of 7, and 2 of 5 through leaves.
	{"replicas", Config{Nodes: 7, Replicas: 3, Faults: Faults{Drop: 0.02, MaxDelay: 10 * time.Millisecond, Partitions: 2,
		Pauses: 2, Crashes: 2, StoreFail: 0.01}}},
	{"replicas-leaves", Config{Nodes: 5, Replicas: 2, Faults: Faults{Leaves: 2, Crashes: 1, Pauses: 1, Lifecycle: true,
		MaxDelay: 5 * time.Millisecond}}},
	{"everything", Config{Nodes: 5, Faults: Faults{Drop: 0.03, MaxDelay: 30 * time.Millisecond, Partitions: 2,
		Pauses: 2, Crashes: 2, StoreFail: 0.02, APIDown: 1, ClockSkew: 200 * time.Millisecond, Leaves: 1, Lifecycle: true}}},
}

func TestSim(t *testing.T) {
	for _, sc := range scenarios {
		t.Run(sc.name, func(t *testing.T) {
			t.Parallel()
			first, n := uint64(1), *seeds
			if *oneSeed != 0 {
				first, n = *oneSeed, 1
			}
			failed := 0
			for seed := first; seed < first+uint64(n); seed++ {
				cfg := sc.cfg
				cfg.Seed, cfg.Trace = seed, *oneSeed != 0
				r := Run(cfg)
				if r.Failed() {
					failed++
					if failed <= 3 {
						t.Errorf("%s\n  replay: go test ./test/sim -run 'TestSim/%s$' -sim.seed %d -v\n  last steps:\n    %s",
							r, sc.name, seed, strings.Join(tail(r.Trace, 40), "\n    "))
					}
				}
				if *oneSeed != 0 {
					t.Log(r)
					t.Log(r.Stats)
					if testing.Verbose() && os.Getenv("SIM_TRACE") != "" {
						t.Log("\n" + strings.Join(r.Trace, "\n"))
					}
				}
			}
			if failed > 0 {
				t.Errorf("%d of %d seeds broke an invariant", failed, n)
			}
		})
	}
}

func tail(s []string, n int) []string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// TestTraceRule prints the trace lines of one run that concern one partition's holders
// and one rule (debugging aid: -sim.seed, -sim.scenario, -sim.rule).
func TestTraceRule(t *testing.T) {
	if *traceRule == 0 {
		t.Skip("set -sim.rule")
	}
	for _, sc := range scenarios {
		if sc.name != *traceScenario {
			continue
		}
		cfg := sc.cfg
		cfg.Seed, cfg.Trace = *oneSeed, true
		cfg.traceRule = *traceRule
		r := Run(cfg)
		t.Log("\n" + strings.Join(r.Trace, "\n"))
	}
}

var (
	traceRule     = flag.Int64("sim.rule", 0, "TestTraceRule: the rule to follow")
	traceScenario = flag.String("sim.scenario", "everything", "TestTraceRule: the scenario")
)

// TestSimCatchesRevertedFixes leaves out, one at a time, a fix the node's commit path
// and acquisition rely on, and checks that the simulation then finds a broken
// invariant: a simulation that passes with the fix missing would prove nothing.
func TestSimCatchesRevertedFixes(t *testing.T) {
	cases := []struct {
		fix      string
		breaks   string // the start of the violation it keeps away
		scenario Config
	}{
		// Fire every held partition, lease or not: a paused node fires after its lease.
		{fixLeaseCheck, "I3", Config{Nodes: 3, Faults: Faults{Pauses: 3, MaxDelay: 5 * time.Millisecond}}},
		// Deliver fires at once: a takeover does not know them and fires them again.
		{fixReplicationGate, "I1", Config{Nodes: 3, Faults: Faults{Pauses: 3, Crashes: 2, MaxDelay: 5 * time.Millisecond}}},
		// Ignore the grants' watermarks: a new holder fires again what the old one fired.
		{fixGrantWatermarks, "I1", Config{Nodes: 3, Faults: Faults{Crashes: 2, Leaves: 1, MaxDelay: 5 * time.Millisecond}}},
		// Apply lifecycle messages in arrival order: a stale enable keeps a disabled rule.
		{fixSourceVersions, "I4: rule", Config{Nodes: 3, Rules: 60, Faults: Faults{Lifecycle: true, MaxDelay: 5 * time.Millisecond}}},
		// Start a new schedule when its message arrives: a late creation loses slots.
		{fixAnchors, "I2", Config{Nodes: 3, Faults: Faults{Lifecycle: true, MaxDelay: 5 * time.Millisecond}}},
		// Retire at the leave's budget with fires not yet replicated: a node that never
		// comes back strands them, and nobody fires their slots.
		{fixLeaveWait, "I2", Config{Nodes: 4, Faults: Faults{Departures: 1, AckDelay: 3 * time.Second, MaxDelay: 5 * time.Millisecond}}},
	}
	for _, c := range cases {
		t.Run(c.fix, func(t *testing.T) {
			t.Parallel()
			caught := 0
			first := ""
			const runs = 40
			for seed := uint64(1); seed <= runs; seed++ {
				cfg := c.scenario
				cfg.Seed = seed
				cfg.Faults.DisableFix = c.fix
				r := Run(cfg)
				for _, v := range r.Violations {
					if strings.Contains(v, " "+c.breaks) {
						if caught == 0 {
							first = v
						}
						caught++
						break
					}
				}
			}
			if caught == 0 {
				t.Fatalf("without %s, %d seeds broke no %s: the simulation does not see what it fixes", c.fix, runs, c.breaks)
			}
			t.Logf("without %s: %d of %d seeds broke %s; first: %s", c.fix, caught, runs, c.breaks, first)
		})
	}
}
