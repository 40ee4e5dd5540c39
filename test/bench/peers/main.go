// Command peers runs the same interval workload through timerd's engine and
// three peer designs (a goroutine + time.Ticker per rule, robfig/cron v3,
// go-co-op/gocron v2), each in a fresh child process, and prints CPU,
// memory per rule, fires, misses and lateness side by side, with the
// targets timerd must meet at 100,000 rules.
//
//	go run ./test/bench/peers [-n 100000] [-duration 60s] [-designs timerd,ticker,robfig,gocron] [-json]
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"time"
)

// resultPrefix marks the child's result line on its stdout, so stray
// output from a library cannot be mistaken for it.
const resultPrefix = "PEERS-RESULT "

type options struct {
	cfg     config
	designs []string
	json    bool
	child   bool
	design  string
	cpuProf string
}

func parseFlags(args []string) (options, error) {
	fs := flag.NewFlagSet("peers", flag.ContinueOnError)
	var o options
	fs.IntVar(&o.cfg.N, "n", 100000, "number of interval rules (rule i fires every 1+i%60 s)")
	fs.DurationVar(&o.cfg.Duration, "duration", 60*time.Second, "measured window per design")
	fs.DurationVar(&o.cfg.Settle, "settle", time.Second, "pause between setup and the window")
	fs.DurationVar(&o.cfg.Drain, "drain", time.Second, "how long after the window a late fire still counts")
	fs.DurationVar(&o.cfg.SetupTimeout, "setup-timeout", 90*time.Second, "give up on a design that cannot take all rules in this time")
	fs.BoolVar(&o.cfg.Aligned, "aligned", false, "put every slot on a whole second instead of spreading phases over milliseconds")
	fs.DurationVar(&o.cfg.Coalesce, "coalesce", 0, "timerd's scheduler Coalesce window (0: the engine's default, negative: off)")
	list := fs.String("designs", strings.Join(designOrder, ","), "comma-separated designs to run")
	fs.BoolVar(&o.json, "json", false, "print JSON instead of a table")
	fs.BoolVar(&o.child, "child", false, "internal: measure one design in this process")
	fs.StringVar(&o.design, "design", "", "internal: the design a child measures")
	fs.StringVar(&o.cpuProf, "cpuprofile", "", "write each design's CPU profile of the window to this path + \".\" + design")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	for _, d := range strings.Split(*list, ",") {
		d = strings.TrimSpace(d)
		if d == "" {
			continue
		}
		if _, ok := designs[d]; !ok {
			return o, fmt.Errorf("designs: unknown design %q, want some of %s", d, strings.Join(designOrder, ","))
		}
		o.designs = append(o.designs, d)
	}
	if len(o.designs) == 0 && !o.child {
		return o, errors.New("designs: empty")
	}
	return o, o.cfg.validate()
}

func main() {
	o, err := parseFlags(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "peers:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if o.child {
		if o.cpuProf != "" {
			o.cfg.profile = o.cpuProf + "." + o.design
		}
		res, err := measure(ctx, o.design, o.cfg, false)
		if err != nil {
			res.Error = err.Error()
		}
		line, _ := json.Marshal(res)
		fmt.Printf("%s%s\n", resultPrefix, line)
		// Exit without stopping the design: tearing down 100k jobs is not measured.
		os.Exit(0)
	}
	if err := runParent(ctx, o, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "peers:", err)
		os.Exit(1)
	}
}

// runParent runs each design in a child process and prints the report.
func runParent(ctx context.Context, o options, out io.Writer) error {
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find own executable: %w", err)
	}
	var results []result
	for _, d := range o.designs {
		if !o.json {
			fmt.Fprintf(os.Stderr, "peers: running %s (n=%d, window %v)...\n", d, o.cfg.N, o.cfg.Duration)
		}
		cfg := o.cfg
		cfg.profile = o.cpuProf
		res := runChild(ctx, self, d, cfg)
		results = append(results, res)
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
	rep := buildReport(o.cfg, results)
	if o.json {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	printReport(out, rep)
	return nil
}

func runChild(ctx context.Context, self, name string, cfg config) result {
	res := result{Design: name, N: cfg.N}
	limit := cfg.SetupTimeout + cfg.Settle + cfg.Duration + cfg.Drain + 60*time.Second
	cctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	cmd := exec.CommandContext(cctx, self, "-child", "-design="+name,
		fmt.Sprintf("-n=%d", cfg.N), "-duration="+cfg.Duration.String(),
		"-settle="+cfg.Settle.String(), "-drain="+cfg.Drain.String(),
		"-setup-timeout="+cfg.SetupTimeout.String(), fmt.Sprintf("-aligned=%t", cfg.Aligned),
		"-coalesce="+cfg.Coalesce.String(),
		"-cpuprofile="+cfg.profile)
	var stdout bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = os.Stderr
	runErr := cmd.Run()
	found := false
	sc := bufio.NewScanner(&stdout)
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	for sc.Scan() {
		if line, ok := strings.CutPrefix(sc.Text(), resultPrefix); ok {
			if err := json.Unmarshal([]byte(line), &res); err != nil {
				res.Error = fmt.Sprintf("decode child result: %v", err)
			}
			found = true
		}
	}
	if cmd.ProcessState != nil {
		res.ProcessCPU = (cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()).Seconds()
	}
	if !found && res.Error == "" {
		res.Error = fmt.Sprintf("child gave no result: %v", runErr)
	}
	return res
}
