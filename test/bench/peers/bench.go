package main

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"runtime"
	"runtime/metrics"
	"runtime/pprof"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/timerd/timerd/ingest/backoff"
)

// config is one child's workload and measurement window.
type config struct {
	N            int           // rules
	Duration     time.Duration // measured window
	Settle       time.Duration // pause between setup end and window start, so setup backlog stays out of the run figures
	Drain        time.Duration // how long after the window a fire for an in-window slot may still arrive and count
	SetupTimeout time.Duration // a design that cannot set up N rules in this time is reported, not run
	Aligned      bool          // every rule's phase is 0 (all slots on whole seconds) instead of spread
	Coalesce     time.Duration // timerd's scheduler.Config.Coalesce (0: its default)
	profile      string        // CPU profile of the window goes here, if set
}

func (c config) validate() error {
	switch {
	case c.N <= 0:
		return fmt.Errorf("n: %d rules, want > 0", c.N)
	case c.N > math.MaxInt32:
		return fmt.Errorf("n: %d rules, want <= %d", c.N, math.MaxInt32)
	case c.Duration <= 0:
		return fmt.Errorf("duration: %v, want > 0", c.Duration)
	case c.Settle < 0:
		return fmt.Errorf("settle: %v, want >= 0", c.Settle)
	case c.Drain < 0:
		return fmt.Errorf("drain: %v, want >= 0", c.Drain)
	case c.SetupTimeout <= 0:
		return fmt.Errorf("setup-timeout: %v, want > 0", c.SetupTimeout)
	}
	return nil
}

// errSetupTimeout: the design could not take all rules within config.SetupTimeout.
var errSetupTimeout = errors.New("setup timed out")

// earlyTolerance lets a fire that comes a little before its slot still be
// attributed to that slot when a design reports no slot of its own.
const earlyTolerance = int64(10 * time.Millisecond)

// bench is the shared workload and the fire recorder. All times are
// nanoseconds since epoch on the monotonic clock.
type bench struct {
	cfg   config
	epoch time.Time
	// Rule i's slots are anchor[i] + k·every[i].
	anchor []int64
	every  []int64
	counts []atomic.Uint32 // in-window fires per rule

	w0, w1 atomic.Int64 // window (w0, w1]: slots in it count; MaxInt64 until setup is over

	fired   atomic.Uint64 // every fire, in window or not
	inWin   atomic.Uint64
	lateMax atomic.Int64
	lateSum atomic.Int64
	badSlot atomic.Uint64 // fires whose slot is off the rule's grid or whose rule is unknown
}

// interval of rule i: 1 + i%60 seconds.
func interval(i int) time.Duration { return time.Duration(1+i%60) * time.Second }

// phase of rule i: the golden-ratio sequence over the rules of one interval,
// in whole milliseconds, so that phases cover the interval evenly for any N
// and the ~7,800 fires/s of 100k rules are spread over ~1,000 instants a
// second rather than landing together on whole seconds.
func phase(i int, aligned bool) time.Duration {
	if aligned {
		return 0
	}
	ms := int64(interval(i) / time.Millisecond)
	j := int64(i / 60) // index among the rules of the same interval
	return time.Duration(j*618034%1000000*ms/1000000) * time.Millisecond
}

func newBench(cfg config) *bench {
	b := &bench{
		cfg:    cfg,
		epoch:  time.Now(),
		anchor: make([]int64, cfg.N),
		every:  make([]int64, cfg.N),
		counts: make([]atomic.Uint32, cfg.N),
	}
	for i := range cfg.N {
		b.anchor[i] = int64(phase(i, cfg.Aligned))
		b.every[i] = int64(interval(i))
	}
	b.w0.Store(math.MaxInt64)
	b.w1.Store(math.MaxInt64)
	return b
}

func (b *bench) now() int64 { return int64(time.Since(b.epoch)) }

// anchorTime is rule i's anchor as a wall-clock time without a monotonic
// reading, as it would be after a round trip through JSON or bbolt.
func (b *bench) anchorTime(i int) time.Time {
	return b.epoch.Round(0).Add(time.Duration(b.anchor[i]))
}

// firstAfter returns rule i's first slot strictly after t.
func (b *bench) firstAfter(i int, t int64) int64 {
	a, d := b.anchor[i], b.every[i]
	return a + (floorDiv(t-a, d)+1)*d
}

// fire records a fire of rule i happening now, for designs that do not say
// which slot they fire: the slot is the latest one at or before now.
func (b *bench) fire(i int) {
	now := b.now()
	a, d := b.anchor[i], b.every[i]
	b.record(i, a+floorDiv(now-a+earlyTolerance, d)*d, now)
}

// fireSlot records a fire of rule i for a slot the design names.
func (b *bench) fireSlot(i int, slot, now int64) {
	if i < 0 || i >= len(b.anchor) {
		b.fired.Add(1)
		b.badSlot.Add(1)
		return
	}
	if (slot-b.anchor[i])%b.every[i] != 0 {
		b.badSlot.Add(1)
	}
	b.record(i, slot, now)
}

func (b *bench) record(i int, slot, now int64) {
	b.fired.Add(1)
	if slot <= b.w0.Load() || slot > b.w1.Load() {
		return
	}
	b.counts[i].Add(1)
	b.inWin.Add(1)
	late := now - slot
	b.lateSum.Add(late)
	for {
		m := b.lateMax.Load()
		if late <= m || b.lateMax.CompareAndSwap(m, late) {
			break
		}
	}
}

// expected is the number of rule i's slots in (w0, w1].
func (b *bench) expected(i int, w0, w1 int64) int64 {
	a, d := b.anchor[i], b.every[i]
	return floorDiv(w1-a, d) - floorDiv(w0-a, d)
}

func floorDiv(x, d int64) int64 {
	q := x / d
	if x%d != 0 && (x < 0) != (d < 0) {
		q--
	}
	return q
}

// design is one way of running the workload.
type design interface {
	// start takes all rules and starts firing. It returns how many rules it
	// took; with errSetupTimeout when deadline passed first.
	start(ctx context.Context, b *bench, deadline time.Time) (int, error)
	// stop ends firing and waits for the design's goroutines.
	stop()
}

var designs = map[string]func() design{
	"timerd": newTimerd,
	"ticker": func() design { return &tickerDesign{} },
	"robfig": func() design { return &robfigDesign{} },
	"gocron": func() design { return &gocronDesign{} },
}

var designOrder = []string{"timerd", "ticker", "robfig", "gocron"}

// result is one design's measurements.
type result struct {
	Design        string  `json:"design"`
	N             int     `json:"n"`
	Rules         int     `json:"rules"` // taken by the design
	SetupTimedOut bool    `json:"setup_timed_out,omitempty"`
	Error         string  `json:"error,omitempty"`
	SetupSeconds  float64 `json:"setup_seconds"`
	SetupCPU      float64 `json:"setup_cpu_seconds"`
	WindowSeconds float64 `json:"window_seconds"`
	RunCPU        float64 `json:"run_cpu_seconds"` // user+sys during the window only
	ProcessCPU    float64 `json:"process_cpu_seconds,omitempty"`
	CPUPerFireUS  float64 `json:"cpu_per_fire_us"`
	Goroutines    int     `json:"goroutines_after_setup"`

	// Bytes per rule above the baseline taken before setup.
	PeakPerRule     float64 `json:"peak_bytes_per_rule"`      // max over the window of heap objects + goroutine stacks
	PeakHeapPerRule float64 `json:"peak_heap_bytes_per_rule"` // max over the window of heap objects (HeapAlloc)
	SettledPerRule  float64 `json:"settled_bytes_per_rule"`   // HeapInuse + StackInuse after a GC right after setup
	SettledHeapIn   float64 `json:"settled_heapinuse_per_rule"`

	Fires       uint64  `json:"fires"` // slots in the window that fired
	Expected    uint64  `json:"expected"`
	Missed      uint64  `json:"missed"` // summed per rule: max(0, expected - fires)
	Extra       uint64  `json:"extra"`  // summed per rule: max(0, fires - expected)
	AllFires    uint64  `json:"all_fires"`
	BadSlots    uint64  `json:"bad_slots,omitempty"`
	MaxLateMS   float64 `json:"max_late_ms"`
	MeanLateMS  float64 `json:"mean_late_ms"`
	StandInNote string  `json:"note,omitempty"`
	LoadAvg     float64 `json:"load_avg_1m"` // machine's 1-minute load at the window's end: other work skews lateness and CPU
}

var memSamples = []metrics.Sample{
	{Name: "/memory/classes/heap/objects:bytes"},
	{Name: "/memory/classes/heap/stacks:bytes"},
}

func readMem() (objects, stacks uint64) {
	s := make([]metrics.Sample, len(memSamples))
	copy(s, memSamples)
	metrics.Read(s)
	return s[0].Value.Uint64(), s[1].Value.Uint64()
}

func settledMem() (heapInuse, stackInuse uint64) {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse, ms.StackInuse
}

// cpuSeconds is this process's user+sys CPU so far.
func cpuSeconds() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	tv := func(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }
	return tv(ru.Utime) + tv(ru.Stime)
}

// measure runs one design in this process and measures it. When keep is
// false the design is left running (the child exits right after); tests
// pass true so the design is stopped.
func measure(ctx context.Context, name string, cfg config, keep bool) (result, error) {
	mk, ok := designs[name]
	if !ok {
		return result{}, fmt.Errorf("design %q: unknown, want one of %v", name, designOrder)
	}
	if err := cfg.validate(); err != nil {
		return result{}, err
	}
	res := result{Design: name, N: cfg.N}
	if name == "timerd" {
		res.StandInNote = "Commit counts fires in memory: a stand-in for the bbolt store"
	}
	b := newBench(cfg)

	baseHeapIn, baseStackIn := settledMem()
	baseObj, baseStk := readMem()

	d := mk()
	if keep {
		defer d.stop()
	}
	cpu0, t0 := cpuSeconds(), time.Now()
	rules, err := d.start(ctx, b, t0.Add(cfg.SetupTimeout))
	setupEnd := b.now()
	res.Rules = rules
	res.SetupSeconds = time.Since(t0).Seconds()
	res.SetupCPU = cpuSeconds() - cpu0
	if errors.Is(err, errSetupTimeout) {
		res.SetupTimedOut = true
		res.Error = fmt.Sprintf("took %d of %d rules in %v", rules, cfg.N, cfg.SetupTimeout)
		return res, nil
	}
	if err != nil {
		return res, fmt.Errorf("start %s: %w", name, err)
	}

	w0 := setupEnd + int64(cfg.Settle)
	w1 := w0 + int64(cfg.Duration)
	b.w0.Store(w0)
	b.w1.Store(w1)

	heapIn, stackIn := settledMem()
	perRule := func(v, base uint64) float64 { return (float64(v) - float64(base)) / float64(cfg.N) }
	res.SettledPerRule = perRule(heapIn+stackIn, baseHeapIn+baseStackIn)
	res.SettledHeapIn = perRule(heapIn, baseHeapIn)
	res.Goroutines = runtime.NumGoroutine()

	if err := sleepUntil(ctx, b, w0); err != nil {
		return res, err
	}
	if cfg.profile != "" {
		f, err := os.Create(cfg.profile)
		if err != nil {
			return res, fmt.Errorf("create cpu profile: %w", err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return res, fmt.Errorf("start cpu profile: %w", err)
		}
		defer pprof.StopCPUProfile()
	}
	cpuW0 := cpuSeconds()
	var peak, peakObj uint64
	sample := func() {
		obj, stk := readMem()
		peak = max(peak, obj+stk)
		peakObj = max(peakObj, obj)
	}
	tick := time.NewTicker(100 * time.Millisecond)
	sample()
	for b.now() < w1 {
		select {
		case <-ctx.Done():
			tick.Stop()
			return res, ctx.Err()
		case <-tick.C:
			sample()
		}
	}
	tick.Stop()
	sample()
	cpuW1 := cpuSeconds()
	res.LoadAvg = loadAvg()
	if err := sleepUntil(ctx, b, w1+int64(cfg.Drain)); err != nil {
		return res, err
	}

	res.WindowSeconds = cfg.Duration.Seconds()
	res.RunCPU = cpuW1 - cpuW0
	res.PeakPerRule = perRule(peak, baseObj+baseStk)
	res.PeakHeapPerRule = perRule(peakObj, baseObj)
	for i := range cfg.N {
		got := int64(b.counts[i].Load())
		want := b.expected(i, w0, w1)
		res.Fires += uint64(got)
		res.Expected += uint64(want)
		if got < want {
			res.Missed += uint64(want - got)
		} else {
			res.Extra += uint64(got - want)
		}
	}
	if res.Fires > 0 {
		res.CPUPerFireUS = res.RunCPU / float64(res.Fires) * 1e6
		res.MeanLateMS = float64(b.lateSum.Load()) / float64(b.inWin.Load()) / 1e6
	}
	res.MaxLateMS = float64(b.lateMax.Load()) / 1e6
	res.AllFires = b.fired.Load()
	res.BadSlots = b.badSlot.Load()
	return res, nil
}

func sleepUntil(ctx context.Context, b *bench, t int64) error {
	d := time.Duration(t - b.now())
	if d <= 0 {
		return nil
	}
	if !backoff.Sleep(ctx, d) {
		return ctx.Err()
	}
	return nil
}

// setupCheck reports errSetupTimeout every 1024 rules once deadline passed.
func setupCheck(i int, deadline time.Time) error {
	if i&1023 == 1023 && time.Now().After(deadline) {
		return errSetupTimeout
	}
	return nil
}

// loadAvg is the machine's 1-minute load average, or 0 if unknown.
func loadAvg() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	var l float64
	if _, err := fmt.Sscan(string(b), &l); err != nil {
		return 0
	}
	return l
}
