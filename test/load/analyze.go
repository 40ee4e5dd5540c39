package main

import (
	"cmp"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

// event is the part of a stored event the analysis reads.
type event struct {
	TriggerInstanceID string    `json:"trigger_instance_id"`
	RuleRef           string    `json:"rule_ref"`
	IdempotencyKey    string    `json:"idempotency_key"`
	Created           time.Time `json:"created"`
	Payload           struct {
		ScheduledAt time.Time `json:"scheduled_at"`
		FiredAt     time.Time `json:"fired_at"`
	} `json:"payload"`
}

// ruleID is the rule an event belongs to: from trigger_instance_id
// ("rule_<id>"), else from the idempotency key ("<id>:<nanos>").
func (e event) ruleID() (int64, bool) {
	if s, ok := strings.CutPrefix(e.TriggerInstanceID, "rule_"); ok {
		if id, err := strconv.ParseInt(s, 10, 64); err == nil {
			return id, true
		}
	}
	if s, _, ok := strings.Cut(e.IdempotencyKey, ":"); ok {
		if id, err := strconv.ParseInt(s, 10, 64); err == nil {
			return id, true
		}
	}
	return 0, false
}

// window is the measuring window [Start, End) of slots.
type window struct {
	Start, End time.Time
	Interval   time.Duration
}

// dist summarises durations, in milliseconds.
type dist struct {
	N    int     `json:"n"`
	P50  float64 `json:"p50_ms"`
	P90  float64 `json:"p90_ms"`
	P99  float64 `json:"p99_ms"`
	P999 float64 `json:"p999_ms"`
	Max  float64 `json:"max_ms"`
}

func newDist(ds []time.Duration) dist {
	if len(ds) == 0 {
		return dist{}
	}
	slices.Sort(ds)
	q := func(p float64) float64 {
		i := int(p*float64(len(ds))+0.5) - 1
		i = max(0, min(i, len(ds)-1))
		return ms(ds[i])
	}
	return dist{N: len(ds), P50: q(0.50), P90: q(0.90), P99: q(0.99), P999: q(0.999), Max: ms(ds[len(ds)-1])}
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func (d dist) String() string {
	if d.N == 0 {
		return "n/a"
	}
	return fmt.Sprintf("p50 %s  p90 %s  p99 %s  p99.9 %s  max %s",
		fmtMs(d.P50), fmtMs(d.P90), fmtMs(d.P99), fmtMs(d.P999), fmtMs(d.Max))
}

func fmtMs(v float64) string {
	switch {
	case v >= 1000:
		return fmt.Sprintf("%.2fs", v/1000)
	case v >= 10:
		return fmt.Sprintf("%.0fms", v)
	default:
		return fmt.Sprintf("%.1fms", v)
	}
}

// analysis is what the stored events say about the window.
type analysis struct {
	Expected      int      `json:"fires_expected"`
	Stored        int      `json:"slots_stored"`      // expected slots stored at least once
	Duplicates    int      `json:"duplicates_stored"` // stored copies beyond the first of a slot
	Missing       int      `json:"missing_slots"`
	OffGrid       int      `json:"off_grid_events"`     // in-window events on no slot of their rule's phase
	Foreign       int      `json:"foreign_events"`      // in-window events of rules this run did not create
	UnknownPhase  int      `json:"rules_unknown_phase"` // rules with no event at all: every slot counted missing
	MissingSample []string `json:"missing_sample,omitempty"`
	// Latency is created − scheduled_at (fire to stored, scheduling
	// lateness included); Lateness is fired_at − scheduled_at; Store is
	// created − fired_at. Each from the first stored copy of a slot.
	Latency dist `json:"latency"`
	// Worst are the seconds of the window (by slot) with the highest p99
	// latency, worst first: a burst or a steady tail.
	Worst    []secondStat `json:"worst_seconds,omitempty"`
	Lateness dist         `json:"fire_lateness"`
	Store    dist         `json:"fired_to_stored"`
}

// analyze checks that every slot of every rule in w is stored exactly once.
// A rule's phase (slot mod interval) comes from the first of its events in
// evs, else from phases (rule id → a slot seen elsewhere); a rule with
// neither is assumed to owe Duration/Interval slots, all missing.
func analyze(rules []int64, evs []event, w window, phases map[int64]time.Time) analysis {
	var a analysis
	iv := w.Interval.Nanoseconds()
	known := make(map[int64]bool, len(rules))
	for _, id := range rules {
		known[id] = true
	}
	type key struct {
		rule int64
		slot int64
	}
	first := make(map[int64]int64, len(rules)) // rule → first observed slot (unix nanos)
	seen := make(map[key]int)
	var lat, late, store []time.Duration
	perSec := map[int][]time.Duration{}
	for _, e := range evs {
		id, ok := e.ruleID()
		if !ok || !known[id] {
			if inWindow(e.Payload.ScheduledAt, w) {
				a.Foreign++
			}
			continue
		}
		slot := e.Payload.ScheduledAt.UnixNano()
		if f, ok := first[id]; !ok || slot < f {
			first[id] = slot
		}
		if !inWindow(e.Payload.ScheduledAt, w) {
			continue
		}
		k := key{id, slot}
		seen[k]++
		if seen[k] > 1 {
			a.Duplicates++
			continue
		}
		lat = append(lat, e.Created.Sub(e.Payload.ScheduledAt))
		sec := int(e.Payload.ScheduledAt.Sub(w.Start) / time.Second)
		perSec[sec] = append(perSec[sec], e.Created.Sub(e.Payload.ScheduledAt))
		if !e.Payload.FiredAt.IsZero() {
			late = append(late, e.Payload.FiredAt.Sub(e.Payload.ScheduledAt))
			store = append(store, e.Created.Sub(e.Payload.FiredAt))
		}
	}
	start, end := w.Start.UnixNano(), w.End.UnixNano()
	onGrid := 0
	for _, id := range rules {
		anchor, ok := first[id]
		if !ok {
			if t, ok2 := phases[id]; ok2 {
				anchor, ok = t.UnixNano(), true
			}
		}
		if !ok {
			a.UnknownPhase++
			n := int((end - start) / iv)
			a.Expected += n
			a.Missing += n
			if len(a.MissingSample) < 10 {
				a.MissingSample = append(a.MissingSample, fmt.Sprintf("rule %d: no event at all", id))
			}
			continue
		}
		phase := mod(anchor, iv)
		s := start + mod(phase-start, iv) // first slot ≥ start
		for ; s < end; s += iv {
			a.Expected++
			if seen[key{id, s}] > 0 {
				a.Stored++
				onGrid += seen[key{id, s}]
				continue
			}
			a.Missing++
			if len(a.MissingSample) < 10 {
				a.MissingSample = append(a.MissingSample,
					fmt.Sprintf("rule %d slot %s", id, time.Unix(0, s).UTC().Format(time.RFC3339Nano)))
			}
		}
	}
	// Every stored in-window copy of a known rule is on its grid or off it.
	total := 0
	for _, c := range seen {
		total += c
	}
	a.OffGrid = total - onGrid
	a.Latency, a.Lateness, a.Store = newDist(lat), newDist(late), newDist(store)
	for sec, ds := range perSec {
		d := newDist(ds)
		a.Worst = append(a.Worst, secondStat{At: sec, N: d.N, P50: d.P50, P99: d.P99, Max: d.Max})
	}
	slices.SortFunc(a.Worst, func(x, y secondStat) int { return cmp.Compare(y.P99, x.P99) })
	a.Worst = a.Worst[:min(len(a.Worst), 5)]
	return a
}

func inWindow(t time.Time, w window) bool { return !t.Before(w.Start) && t.Before(w.End) }

func mod(a, b int64) int64 {
	m := a % b
	if m < 0 {
		m += b
	}
	return m
}

// secondStat is the latency of the slots of one second of the window.
type secondStat struct {
	At  int     `json:"second"` // since the window start
	N   int     `json:"n"`
	P50 float64 `json:"p50_ms"`
	P99 float64 `json:"p99_ms"`
	Max float64 `json:"max_ms"`
}
