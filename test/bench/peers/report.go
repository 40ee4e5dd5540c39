package main

import (
	"fmt"
	"io"
	"math"
	"strings"
	"text/tabwriter"
)

// targetN is the rule count the targets are set for.
const targetN = 100000

type report struct {
	N        int      `json:"n"`
	Window   string   `json:"window"`
	Aligned  bool     `json:"aligned"`
	Workload string   `json:"workload"`
	Results  []row    `json:"results"`
	Targets  []target `json:"targets"`
	Pass     bool     `json:"pass"`
}

type row struct {
	result
	CPURatio float64 `json:"cpu_ratio_to_timerd,omitempty"` // peer run CPU ÷ timerd run CPU
	MemRatio float64 `json:"mem_ratio_to_timerd,omitempty"` // peer peak bytes/rule ÷ timerd's
}

type target struct {
	Name   string  `json:"name"`
	Got    float64 `json:"got"`
	Want   string  `json:"want"`
	Status string  `json:"status"` // PASS, FAIL, or SKIP when a design has no figure
	Note   string  `json:"note,omitempty"`
}

func usable(r *result) bool { return r != nil && r.Error == "" && !r.SetupTimedOut }

func ratio(peer, base float64) float64 {
	if base <= 0 || math.IsNaN(peer) || math.IsNaN(base) {
		return 0 // no figure; JSON has no NaN
	}
	return peer / base
}

func buildReport(cfg config, results []result) report {
	rep := report{
		N:       cfg.N,
		Window:  cfg.Duration.String(),
		Aligned: cfg.Aligned,
		Workload: fmt.Sprintf("%d interval rules, rule i every 1+i%%60 s, %s phases; window %v after setup + %v settle; "+
			"timerd's Commit only counts fires (stand-in for the bbolt store, no I/O)",
			cfg.N, map[bool]string{true: "whole-second", false: "ms-spread"}[cfg.Aligned], cfg.Duration, cfg.Settle),
	}
	if cfg.Coalesce != 0 {
		rep.Workload += fmt.Sprintf("; timerd Coalesce %v", cfg.Coalesce)
	}
	byName := map[string]*result{}
	for i := range results {
		byName[results[i].Design] = &results[i]
	}
	base := byName["timerd"]
	for _, r := range results {
		rw := row{result: r}
		if r.Design != "timerd" && usable(base) && usable(&r) {
			rw.CPURatio = ratio(r.RunCPU, base.RunCPU)
			rw.MemRatio = ratio(r.PeakPerRule, base.PeakPerRule)
		}
		rep.Results = append(rep.Results, rw)
	}
	rep.Targets = targets(byName)
	rep.Pass = true
	for _, t := range rep.Targets {
		if t.Status != "PASS" {
			rep.Pass = false
		}
	}
	if cfg.N != targetN {
		for i := range rep.Targets {
			rep.Targets[i].Note = strings.TrimSpace(rep.Targets[i].Note + fmt.Sprintf(" (targets are set for n=%d; this run has n=%d)", targetN, cfg.N))
		}
	}
	return rep
}

func targets(by map[string]*result) []target {
	base := by["timerd"]
	ratioTarget := func(name, peer string, want float64, pick func(*result) float64) target {
		t := target{Name: name, Want: fmt.Sprintf(">= %gx", want)}
		p := by[peer]
		switch {
		case !usable(base):
			t.Status, t.Note = "SKIP", "no timerd figure"
		case !usable(p):
			t.Status, t.Note = "SKIP", "no "+peer+" figure"
			if p != nil && p.SetupTimedOut {
				t.Note = peer + " setup timed out: " + p.Error
			}
		default:
			t.Got = ratio(pick(p), pick(base))
			t.Status = passFail(t.Got >= want)
		}
		return t
	}
	mem := func(r *result) float64 { return r.PeakPerRule }
	cpu := func(r *result) float64 { return r.RunCPU }
	ts := []target{
		ratioTarget("memory/rule ticker ÷ timerd", "ticker", 10, mem),
		ratioTarget("CPU robfig ÷ timerd", "robfig", 10, cpu),
		ratioTarget("CPU gocron ÷ timerd", "gocron", 3, cpu),
		ratioTarget("memory/rule gocron ÷ timerd", "gocron", 3, mem),
	}
	miss := target{Name: "timerd missed fires", Want: "0"}
	if usable(base) {
		miss.Got = float64(base.Missed + base.BadSlots)
		miss.Status = passFail(base.Missed == 0 && base.BadSlots == 0 && base.Expected > 0)
		if base.BadSlots > 0 {
			miss.Note = fmt.Sprintf("%d fires had a slot off the rule's grid", base.BadSlots)
		}
	} else {
		miss.Status, miss.Note = "SKIP", "no timerd figure"
	}
	return append(ts, miss)
}

func passFail(ok bool) string {
	if ok {
		return "PASS"
	}
	return "FAIL"
}

func printReport(out io.Writer, rep report) {
	fmt.Fprintf(out, "workload: %s\n", rep.Workload)
	fmt.Fprintln(out, "memory: bytes per rule above the pre-setup baseline; peak = max over the window of heap objects + goroutine stacks (sampled every 100 ms); settled = HeapInuse + StackInuse after a GC right after setup")
	fmt.Fprintln(out, "CPU: user+sys of the child process during the window (setup separate); fires/expected count slots in the window, per rule; late = fire (or commit) time - slot; load = machine 1-min load average at the window's end (2 cores)")
	fmt.Fprintln(out)
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "design\trules\tsetup s\tsetup CPU s\trun CPU s\tµs/fire\tpeak B/rule\tsettled B/rule\tfires\texpected\tmissed\textra\tmax late ms\tmean late ms\tCPU ×timerd\tmem ×timerd\tload\t")
	for _, r := range rep.Results {
		if !usable(&r.result) {
			fmt.Fprintf(tw, "%s\t%d\t%.2f\t%.2f\t-\t-\t-\t-\t-\t-\t-\t-\t-\t-\t-\t-\t-\t\n", r.Design, r.Rules, r.SetupSeconds, r.SetupCPU)
			continue
		}
		fmt.Fprintf(tw, "%s\t%d\t%.2f\t%.2f\t%.2f\t%.2f\t%.0f\t%.0f\t%d\t%d\t%d\t%d\t%.1f\t%.2f\t%s\t%s\t%.1f\t\n",
			r.Design, r.Rules, r.SetupSeconds, r.SetupCPU, r.RunCPU, r.CPUPerFireUS,
			r.PeakPerRule, r.SettledPerRule, r.Fires, r.Expected, r.Missed, r.Extra,
			r.MaxLateMS, r.MeanLateMS, fmtRatio(r.Design, r.CPURatio), fmtRatio(r.Design, r.MemRatio), r.LoadAvg)
	}
	tw.Flush()
	for _, r := range rep.Results {
		if r.Error != "" {
			fmt.Fprintf(out, "%s: %s\n", r.Design, r.Error)
		}
	}
	fmt.Fprintln(out)
	fmt.Fprintf(out, "targets at n=%d: timerd >=10x less memory/rule than ticker, >=10x less CPU than robfig, >=3x less CPU and memory than gocron, no missed fire\n", targetN)
	for _, t := range rep.Targets {
		got := "-"
		if t.Status != "SKIP" {
			got = fmt.Sprintf("%.2f", t.Got)
		}
		fmt.Fprintf(out, "  %-4s  %-28s got %-8s want %s", t.Status, t.Name, got, t.Want)
		if t.Note != "" {
			fmt.Fprintf(out, "  %s", t.Note)
		}
		fmt.Fprintln(out)
	}
	fmt.Fprintf(out, "overall: %s\n", passFail(rep.Pass))
}

func fmtRatio(design string, v float64) string {
	if design == "timerd" {
		return "1"
	}
	if v == 0 || math.IsNaN(v) {
		return "-"
	}
	return fmt.Sprintf("%.1f", v)
}
