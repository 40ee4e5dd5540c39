package main

import (
	"context"
	"math"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestMeasure runs the command's core on a small workload and checks that
// the harness counts what the design fires.
func TestMeasure(t *testing.T) {
	// 2,000 rules: enough that their memory stands well above what a GC
	// shrinking the test's own stacks moves (tens of KB under -race).
	cfg := config{N: 2000, Duration: 3 * time.Second, Settle: 200 * time.Millisecond, Drain: time.Second, SetupTimeout: 10 * time.Second}
	for _, name := range []string{"timerd", "ticker"} {
		// Not parallel: both designs share this process's heap, and one
		// starting or stopping moves the other's baseline.
		t.Run(name, func(t *testing.T) {
			res, err := measure(context.Background(), name, cfg, true)
			if err != nil {
				t.Fatalf("measure(%s): %v", name, err)
			}
			if res.Error != "" || res.Rules != cfg.N {
				t.Fatalf("measure(%s): rules %d error %q, want %d rules and no error", name, res.Rules, res.Error, cfg.N)
			}
			// 2,000 rules over 3 s: about 530 slots, more or less by phase.
			if res.Expected < 200 || res.Expected > 900 {
				t.Errorf("measure(%s): expected %d fires, want 200..900", name, res.Expected)
			}
			if res.Missed != 0 || res.Extra != 0 || res.Fires != res.Expected || res.BadSlots != 0 {
				t.Errorf("measure(%s): fires %d expected %d missed %d extra %d bad slots %d, want fires = expected",
					name, res.Fires, res.Expected, res.Missed, res.Extra, res.BadSlots)
			}
			if res.AllFires < res.Fires {
				t.Errorf("measure(%s): all fires %d < in-window fires %d", name, res.AllFires, res.Fires)
			}
			if res.PeakPerRule <= 0 || res.RunCPU <= 0 {
				t.Errorf("measure(%s): peak %.0f B/rule, run CPU %.3f s, want both > 0", name, res.PeakPerRule, res.RunCPU)
			}
		})
	}
}

func TestExpected(t *testing.T) {
	sec := int64(time.Second)
	cases := []struct {
		name   string
		rule   int // rule 0: every 1 s, phase 0; rule 1: every 2 s, phase 0
		w0, w1 int64
		want   int64
	}{
		{"open start, closed end", 0, 0, 3 * sec, 3},
		{"slot on w0 excluded", 0, sec, 2 * sec, 1},
		{"negative window", 0, -2 * sec, 0, 2},
		{"inside one period", 1, sec / 2, sec, 0},
		{"two-second rule", 1, 0, 10 * sec, 5},
		{"off-grid bounds", 1, sec + 1, 4*sec + 1, 2},
		{"bounds just past slots", 1, 2*sec + 1, 4*sec - 1, 0},
	}
	b := newBench(config{N: 2, Aligned: true})
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := b.expected(c.rule, c.w0, c.w1); got != c.want {
				t.Errorf("expected(rule %d, %d, %d) = %d, want %d", c.rule, c.w0, c.w1, got, c.want)
			}
		})
	}
}

func TestPhaseWithinInterval(t *testing.T) {
	seen := map[time.Duration]bool{}
	for i := range 60000 {
		p := phase(i, false)
		if p < 0 || p >= interval(i) {
			t.Fatalf("phase(%d) = %v, want in [0, %v)", i, p, interval(i))
		}
		if i%60 == 0 {
			seen[p] = true
		}
	}
	if len(seen) < 850 { // 1000 rules of 1 s spread over its 1000 milliseconds
		t.Errorf("1 s rules have %d distinct phases, want >= 850", len(seen))
	}
}

func TestTargets(t *testing.T) {
	timerd := result{Design: "timerd", RunCPU: 1, PeakPerRule: 100, Expected: 10}
	cases := []struct {
		name    string
		results []result
		want    map[string]string
		pass    bool
	}{
		{
			name: "all met",
			results: []result{timerd,
				{Design: "ticker", RunCPU: 1, PeakPerRule: 1000},
				{Design: "robfig", RunCPU: 10, PeakPerRule: 100},
				{Design: "gocron", RunCPU: 3, PeakPerRule: 300}},
			want: map[string]string{"memory/rule ticker ÷ timerd": "PASS", "CPU robfig ÷ timerd": "PASS",
				"CPU gocron ÷ timerd": "PASS", "memory/rule gocron ÷ timerd": "PASS", "timerd missed fires": "PASS"},
			pass: true,
		},
		{
			name: "short of each",
			results: []result{{Design: "timerd", RunCPU: 1, PeakPerRule: 100, Expected: 10, Missed: 1},
				{Design: "ticker", RunCPU: 1, PeakPerRule: 999},
				{Design: "robfig", RunCPU: 9.9, PeakPerRule: 100},
				{Design: "gocron", RunCPU: 2.9, PeakPerRule: 299}},
			want: map[string]string{"memory/rule ticker ÷ timerd": "FAIL", "CPU robfig ÷ timerd": "FAIL",
				"CPU gocron ÷ timerd": "FAIL", "memory/rule gocron ÷ timerd": "FAIL", "timerd missed fires": "FAIL"},
		},
		{
			name:    "peer missing or timed out",
			results: []result{timerd, {Design: "gocron", SetupTimedOut: true, Error: "took 5 of 10 rules"}},
			want: map[string]string{"memory/rule ticker ÷ timerd": "SKIP", "CPU robfig ÷ timerd": "SKIP",
				"CPU gocron ÷ timerd": "SKIP", "memory/rule gocron ÷ timerd": "SKIP", "timerd missed fires": "PASS"},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rep := buildReport(config{N: targetN, Duration: time.Second}, c.results)
			if len(rep.Targets) != len(c.want) {
				t.Fatalf("buildReport: %d targets, want %d", len(rep.Targets), len(c.want))
			}
			for _, tg := range rep.Targets {
				if tg.Status != c.want[tg.Name] {
					t.Errorf("target %q: status %s (got %.2f), want %s", tg.Name, tg.Status, tg.Got, c.want[tg.Name])
				}
				if math.IsNaN(tg.Got) {
					t.Errorf("target %q: got NaN, which JSON cannot carry", tg.Name)
				}
			}
			if rep.Pass != c.pass {
				t.Errorf("buildReport: pass %v, want %v", rep.Pass, c.pass)
			}
		})
	}
}

func TestParseFlags(t *testing.T) {
	cases := []struct {
		name    string
		args    []string
		wantErr bool
		designs int
	}{
		{"defaults", nil, false, 4},
		{"two designs", []string{"-designs=timerd, ticker"}, false, 2},
		{"unknown design", []string{"-designs=timerd,quartz"}, true, 0},
		{"zero rules", []string{"-n=0"}, true, 0},
		{"zero duration", []string{"-duration=0s"}, true, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			o, err := parseFlags(c.args)
			if (err != nil) != c.wantErr {
				t.Fatalf("parseFlags(%q): error %v, want error %v", c.args, err, c.wantErr)
			}
			if err == nil && len(o.designs) != c.designs {
				t.Errorf("parseFlags(%q): %d designs, want %d", c.args, len(o.designs), c.designs)
			}
		})
	}
}
