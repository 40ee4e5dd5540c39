package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/timerd/timerd/auth"
	"github.com/timerd/timerd/ingest/backoff"
	"github.com/timerd/timerd/scheduler"
	"github.com/timerd/timerd/test/internal/benchkit"
	"github.com/timerd/timerd/test/internal/procstat"
)

// mix is the share of each timer kind among the rules.
type mix struct{ Interval, Cron, Datetime float64 }

func (m mix) String() string {
	var parts []string
	for _, p := range []struct {
		name string
		v    float64
	}{{"interval", m.Interval}, {"cron", m.Cron}, {"datetime", m.Datetime}} {
		if p.v > 0 {
			parts = append(parts, fmt.Sprintf("%s=%g", p.name, p.v))
		}
	}
	return strings.Join(parts, ",")
}

func (m *mix) Set(s string) error {
	*m = mix{}
	for _, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(kv), "=")
		f, err := strconv.ParseFloat(v, 64)
		if !ok || err != nil || f < 0 {
			return fmt.Errorf("%q is not kind=share", kv)
		}
		switch k {
		case "interval":
			m.Interval = f
		case "cron":
			m.Cron = f
		case "datetime":
			m.Datetime = f
		default:
			return fmt.Errorf("unknown kind %q (interval, cron, datetime)", k)
		}
	}
	if m.Interval+m.Cron+m.Datetime == 0 {
		return errors.New("no rules of any kind")
	}
	return nil
}

// due is the events per second the interval and cron rules make.
func (c config) due() float64 {
	sum := c.Mix.Interval + c.Mix.Cron + c.Mix.Datetime
	return float64(c.Rules) * (c.Mix.Interval + c.Mix.Cron) / sum / c.Every.Seconds()
}

// result is one run's figures over the window.
type result struct {
	Name        string
	PerSec      float64
	CPUPerEvent float64 // µs
	Cores       float64
	RSSMaxMiB   float64
	Lateness    dist
	Duplicates  int
}

// measure runs one agent of bin against a fresh stub.
func measure(ctx context.Context, cfg config, bin, dataDir, name string) (result, error) {
	stub, err := startStub(cfg)
	if err != nil {
		return result{}, err
	}
	defer stub.close()
	tok, err := benchToken()
	if err != nil {
		return result{}, err
	}
	ag, err := startAgent(ctx, cfg, bin, dataDir, stub.url, tok)
	if err != nil {
		return result{}, err
	}
	defer ag.stop()
	base := ag.base
	started := time.Now()
	if err := ag.waitReady(); err != nil {
		return result{}, err
	}
	benchkit.Progress("ready %s after start; warm-up %s", time.Since(started).Round(time.Millisecond), cfg.Warmup)
	backoff.Sleep(ctx, cfg.Warmup)
	pid := ag.cmd.Process.Pid
	first, err := procstat.Read(pid)
	if err != nil {
		return result{}, err
	}
	samples := []procstat.Sample{first}
	winStart := time.Now()
	profiled := make(chan error, 1)
	if cfg.Profile && cfg.Metrics != "" {
		go func() {
			u := fmt.Sprintf("%s/debug/pprof/profile?seconds=%d", base, max(1, int(cfg.Window.Seconds())-1))
			profiled <- save(u, filepath.Join(cfg.Metrics, strings.ReplaceAll(name, " ", "-")+".cpu.pprof"))
		}()
	} else {
		profiled <- nil
	}
	for end := winStart.Add(cfg.Window); time.Now().Before(end) && ctx.Err() == nil; {
		backoff.Sleep(ctx, min(time.Second, time.Until(end)))
		if s, err := procstat.Read(pid); err == nil {
			samples = append(samples, s)
		}
	}
	winEnd := time.Now()
	if err := <-profiled; err != nil {
		return result{}, fmt.Errorf("cpu profile: %w", err)
	}
	if cfg.Metrics != "" {
		if err := save(base+"/metrics", filepath.Join(cfg.Metrics, strings.ReplaceAll(name, " ", "-")+".prom")); err != nil {
			return result{}, err
		}
	}
	last := samples[len(samples)-1]
	evs, dups := stub.window(winStart, winEnd)
	res := result{Duplicates: dups, RSSMaxMiB: procstat.Summarise(samples).RSSMaxMiB}
	res.PerSec = float64(len(evs)) / winEnd.Sub(winStart).Seconds()
	cpu := last.CPU - first.CPU
	res.Cores = cpu.Seconds() / last.At.Sub(first.At).Seconds()
	if len(evs) > 0 {
		res.CPUPerEvent = float64(cpu.Microseconds()) / float64(len(evs))
	}
	late := make([]time.Duration, len(evs))
	for i, e := range evs {
		late[i] = e.received.Sub(e.scheduled)
	}
	res.Lateness = newDist(late)
	benchkit.Progress("%.0f events/s, %.1f µs CPU each, lateness %s", res.PerSec, res.CPUPerEvent, res.Lateness)
	return res, ctx.Err()
}

// save writes what GET u answers to path.
func save(u, path string) error {
	resp, err := http.Get(u)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.Copy(f, resp.Body)
	return err
}

func ready(base string) bool {
	resp, err := http.Get(base + "/readyz")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// dist is a distribution of durations, in milliseconds.
type dist struct {
	N             int
	P50, P99, Max float64
}

func newDist(ds []time.Duration) dist {
	if len(ds) == 0 {
		return dist{}
	}
	slices.Sort(ds)
	q := func(p float64) float64 { return ms(ds[min(len(ds)-1, int(p*float64(len(ds))))]) }
	return dist{N: len(ds), P50: q(0.5), P99: q(0.99), Max: ms(ds[len(ds)-1])}
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func (d dist) String() string {
	return fmt.Sprintf("p50 %.1f ms, p99 %.1f ms, max %.1f ms (%d)", d.P50, d.P99, d.Max, d.N)
}

// The body fields the stub reads of an event.
type eventBody struct {
	Payload struct {
		ScheduledAt string `json:"scheduled_at"`
		FireAt      string `json:"fire_at"`
	} `json:"payload"`
}

func scheduledAt(body []byte) (time.Time, error) {
	// The field as timerd writes it, found without decoding the body (the
	// stub's CPU is taken from the agent it measures); anything else is decoded.
	if _, rest, ok := bytes.Cut(body, []byte(`"scheduled_at":"`)); ok {
		if v, _, ok := bytes.Cut(rest, []byte(`"`)); ok {
			if t, err := time.Parse(time.RFC3339Nano, string(v)); err == nil {
				return t, nil
			}
		}
	}
	var e eventBody
	if err := json.Unmarshal(body, &e); err != nil {
		return time.Time{}, err
	}
	s := e.Payload.ScheduledAt
	if s == "" {
		s = e.Payload.FireAt
	}
	return time.Parse(time.RFC3339Nano, s)
}

// benchToken is a sensor token the stub takes (it checks none).
func benchToken() (string, error) {
	key := make([]byte, 32)
	rand.Read(key)
	tok, _, err := (&auth.Issuer{Key: key}).Issue(auth.IssueRequest{Subject: "bench", IdentityID: "bench",
		Scope: auth.ScopeSensor, TriggerTypes: scheduler.TimerTriggers(), TTL: 24 * time.Hour, Login: "core.timer"})
	return tok, err
}

// agentProc is a running `timerd agent`.
type agentProc struct {
	cmd    *exec.Cmd
	base   string // its HTTP address, http://host:port
	logs   *benchkit.TailBuffer
	exited chan error
}

// startAgent starts an agent of bin on dataDir against the stub at apiURL.
func startAgent(ctx context.Context, cfg config, bin, dataDir, apiURL, tok string) (*agentProc, error) {
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return nil, err
	}
	httpAddr, err := benchkit.FreePort()
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, bin, "agent")
	cmd.Env = append(os.Environ(),
		"ATTUNE_API_URL="+apiURL, "ATTUNE_API_TOKEN="+tok, "TIMERD_DATA_DIR="+dataDir,
		"TIMERD_HTTP_ADDR="+httpAddr, "TIMERD_BIND_ADDR=127.0.0.1:0", "TIMERD_NODE_NAME=bench",
		"TIMERD_RECONCILE_INTERVAL=1h", "ATTUNE_LOG_LEVEL=warn")
	if cfg.Profile {
		cmd.Env = append(cmd.Env, "TIMERD_PPROF=true")
	}
	if cfg.Workers > 0 {
		cmd.Env = append(cmd.Env, fmt.Sprintf("TIMERD_WORKERS=%d", cfg.Workers))
	}
	if cfg.Budget > 0 {
		cmd.Env = append(cmd.Env, fmt.Sprintf("TIMERD_DELIVERY_BUDGET=%d", cfg.Budget))
	}
	if cfg.CatchUpRate != "" { // a revision without the setting ignores it
		cmd.Env = append(cmd.Env, "TIMERD_CATCHUP_RATE="+cfg.CatchUpRate)
	}
	ag := &agentProc{cmd: cmd, base: "http://" + httpAddr, logs: &benchkit.TailBuffer{}, exited: make(chan error, 1)}
	cmd.Stdout, cmd.Stderr = ag.logs, ag.logs // warnings and errors: shown if the agent fails
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	go func() { ag.exited <- cmd.Wait() }()
	return ag, nil
}

// waitReady waits until the agent answers /readyz 200 (5 minutes at most).
func (ag *agentProc) waitReady() error {
	started := time.Now()
	for !ready(ag.base) {
		select {
		case err := <-ag.exited:
			ag.exited <- err
			return fmt.Errorf("the agent exited (%w):\n%s", err, ag.logs.String())
		default:
		}
		if time.Since(started) > 5*time.Minute {
			return fmt.Errorf("the agent was not ready within 5 minutes:\n%s", ag.logs.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	return nil
}

// stop sends SIGTERM and waits for the agent to exit; its status after our
// SIGTERM tells nothing. Stopping twice is a no-op.
func (ag *agentProc) stop() {
	_ = ag.cmd.Process.Signal(syscall.SIGTERM)
	err := <-ag.exited
	ag.exited <- err
}
