// Package procstat reads a process's CPU time and resident memory from /proc, for
// the load and benchmark commands.
package procstat

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// userHZ is the unit of utime/stime in /proc/PID/stat (USER_HZ, 100 on
// every Linux platform Go supports; sysconf would need cgo).
const userHZ = 100

// Sample is one reading of a process's CPU time and resident memory.
type Sample struct {
	At  time.Time
	CPU time.Duration // user + system, since the process started
	RSS int64         // bytes
}

// Read reads /proc/PID/stat.
func Read(pid int) (Sample, error) {
	at := time.Now()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return Sample{}, fmt.Errorf("read /proc/%d/stat: %w", pid, err)
	}
	// The command name may hold spaces and parentheses: fields start after
	// the last ')'. Field 3 (state) is f[0], so field n is f[n-3].
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return Sample{}, fmt.Errorf("parse /proc/%d/stat: no ')'", pid)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 22 {
		return Sample{}, fmt.Errorf("parse /proc/%d/stat: %d fields", pid, len(f)+2)
	}
	field := func(n int) int64 {
		v, _ := strconv.ParseInt(f[n-3], 10, 64)
		return v
	}
	ticks := field(14) + field(15)
	return Sample{
		At:  at,
		CPU: time.Duration(ticks) * time.Second / userHZ,
		RSS: field(24) * int64(os.Getpagesize()),
	}, nil
}

// Stats summarises samples taken about once a second.
type Stats struct {
	CPUAvgPct float64 `json:"cpu_avg_pct"` // 100 = one core busy
	CPUMaxPct float64 `json:"cpu_max_pct"` // busiest interval between two samples
	RSSAvgMiB float64 `json:"rss_avg_mib"`
	RSSMaxMiB float64 `json:"rss_max_mib"`
	Samples   int     `json:"samples"`
}

// Summarise is the Stats of samples in time order.
func Summarise(ss []Sample) Stats {
	var st Stats
	if len(ss) == 0 {
		return st
	}
	st.Samples = len(ss)
	var rssSum int64
	for i, s := range ss {
		rssSum += s.RSS
		st.RSSMaxMiB = max(st.RSSMaxMiB, MiB(s.RSS))
		if i > 0 {
			st.CPUMaxPct = max(st.CPUMaxPct, CPUPct(ss[i-1], s))
		}
	}
	st.RSSAvgMiB = MiB(rssSum / int64(len(ss)))
	if len(ss) > 1 {
		st.CPUAvgPct = CPUPct(ss[0], ss[len(ss)-1])
	}
	return st
}

// CPUPct is the CPU used between a and b, 100 for one core busy.
func CPUPct(a, b Sample) float64 {
	wall := b.At.Sub(a.At)
	if wall <= 0 {
		return 0
	}
	return 100 * float64(b.CPU-a.CPU) / float64(wall)
}

// MiB is b bytes in MiB.
func MiB(b int64) float64 { return float64(b) / (1 << 20) }

// PeakRSS is the most resident memory the process has had (VmHWM of
// /proc/PID/status), in bytes.
func PeakRSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("read /proc/%d/status: %w", pid, err)
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("parse /proc/%d/status VmHWM %q: %w", pid, strings.TrimSpace(v), err)
			}
			return kb << 10, nil
		}
	}
	return 0, fmt.Errorf("/proc/%d/status has no VmHWM", pid)
}
