package main

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

// procSample is one reading of a process's CPU time and resident memory.
type procSample struct {
	at  time.Time
	cpu time.Duration // user + system, since the process started
	rss int64         // bytes
}

// readProc reads /proc/PID/stat.
func readProc(pid int) (procSample, error) {
	at := time.Now()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procSample{}, fmt.Errorf("read /proc/%d/stat: %w", pid, err)
	}
	// The command name may hold spaces and parentheses: fields start after
	// the last ')'. Field 3 (state) is f[0], so field n is f[n-3].
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return procSample{}, fmt.Errorf("parse /proc/%d/stat: no ')'", pid)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 22 {
		return procSample{}, fmt.Errorf("parse /proc/%d/stat: %d fields", pid, len(f)+2)
	}
	field := func(n int) int64 {
		v, _ := strconv.ParseInt(f[n-3], 10, 64)
		return v
	}
	ticks := field(14) + field(15)
	return procSample{
		at:  at,
		cpu: time.Duration(ticks) * time.Second / userHZ,
		rss: field(24) * int64(os.Getpagesize()),
	}, nil
}

// procStats summarises samples taken about once a second.
type procStats struct {
	CPUAvgPct float64 `json:"cpu_avg_pct"` // 100 = one core busy
	CPUMaxPct float64 `json:"cpu_max_pct"` // busiest interval between two samples
	RSSAvgMiB float64 `json:"rss_avg_mib"`
	RSSMaxMiB float64 `json:"rss_max_mib"`
	Samples   int     `json:"samples"`
}

func summarise(ss []procSample) procStats {
	var st procStats
	if len(ss) == 0 {
		return st
	}
	st.Samples = len(ss)
	var rssSum int64
	for i, s := range ss {
		rssSum += s.rss
		st.RSSMaxMiB = max(st.RSSMaxMiB, mib(s.rss))
		if i > 0 {
			st.CPUMaxPct = max(st.CPUMaxPct, cpuPct(ss[i-1], s))
		}
	}
	st.RSSAvgMiB = mib(rssSum / int64(len(ss)))
	if len(ss) > 1 {
		st.CPUAvgPct = cpuPct(ss[0], ss[len(ss)-1])
	}
	return st
}

func cpuPct(a, b procSample) float64 {
	wall := b.at.Sub(a.at)
	if wall <= 0 {
		return 0
	}
	return 100 * float64(b.cpu-a.cpu) / float64(wall)
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }
