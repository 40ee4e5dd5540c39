package main

import (
	"cmp"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/timerd/timerd/scheduler"
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

// analysis is what the stored events say about the run: every slot of every
// rule from its creation to the end of the window.
type analysis struct {
	Expected   int `json:"fires_expected"`
	Stored     int `json:"slots_stored"`      // expected slots stored at least once
	Duplicates int `json:"duplicates_stored"` // stored copies beyond the first of a slot
	Missing    int `json:"missing_slots"`
	// Optional are slots between the create request and its answer: the
	// rule may or may not have been anchored before them; stored once each
	// is fine, so they count neither as expected nor as missing.
	Optional      int      `json:"optional_slots_stored"`
	Early         int      `json:"early_events"`    // events of slots before the rule was created
	OffGrid       int      `json:"off_grid_events"` // events on no slot of their rule
	Foreign       int      `json:"foreign_events"`  // events of rules this run did not create
	MissingSample []string `json:"missing_sample,omitempty"`
	// Latency is created − scheduled_at (fire to stored, scheduling
	// lateness included); Lateness is fired_at − scheduled_at; Store is
	// created − fired_at. Each from the first stored copy of a slot, over
	// the whole run (from the first create); the After ones only for slots
	// at or after the last create was answered.
	Latency       dist `json:"latency"`
	LatencyAfter  dist `json:"latency_after_creation"`
	Lateness      dist `json:"fire_lateness"`
	LatenessAfter dist `json:"fire_lateness_after_creation"`
	Store         dist `json:"fired_to_stored"`
	// Worst are the seconds of the run (by slot, since the first create)
	// with the highest p99 latency, worst first: a burst or a steady tail.
	Worst []secondStat `json:"worst_seconds,omitempty"`
}

// ruleSpec is a rule the run created: its timer, and when its create was
// sent and answered.
type ruleSpec struct {
	ID          int64
	Sent, Acked time.Time
	Timer       *scheduler.Timer
}

// span is the run: slots from Start (the first create) to End are
// analysed; CreatedEnd is when the last create was answered.
type span struct {
	Start, CreatedEnd, End time.Time
}

// anchorSlack is how far before its create request a rule's anchor may be:
// the lifecycle message's timestamp has millisecond precision.
const anchorSlack = time.Millisecond

// analyze checks that every slot of every rule, after its create was
// answered and before s.End, is stored exactly once. A slot between the
// request and the answer may or may not fire (the rule is anchored at the
// API's commit); one before the request must not.
func analyze(rules []ruleSpec, evs []event, s span) analysis {
	var a analysis
	byID := make(map[int64]*ruleSpec, len(rules))
	for i := range rules {
		byID[rules[i].ID] = &rules[i]
	}
	type key struct {
		rule int64
		slot int64
	}
	seen := make(map[key]int, len(evs))
	var lat, latAfter, late, lateAfter, store []time.Duration
	perSec := map[int][]time.Duration{}
	for _, e := range evs {
		slot := e.Payload.ScheduledAt
		if !slot.Before(s.End) {
			continue // after the run
		}
		id, ok := e.ruleID()
		r := byID[id]
		if !ok || r == nil {
			if !slot.Before(s.Start) {
				a.Foreign++
			}
			continue
		}
		if !slot.After(r.Sent.Add(-anchorSlack)) {
			a.Early++
			continue
		}
		if next, ok := r.Timer.Next(slot.Add(-time.Nanosecond)); !ok || !next.Equal(slot) {
			a.OffGrid++
			continue
		}
		k := key{id, slot.UnixNano()}
		seen[k]++
		if seen[k] > 1 {
			a.Duplicates++
			continue
		}
		if !slot.After(r.Acked) {
			a.Optional++
		}
		d := e.Created.Sub(slot)
		after := !slot.Before(s.CreatedEnd)
		lat = append(lat, d)
		if after {
			latAfter = append(latAfter, d)
		}
		sec := int(slot.Sub(s.Start) / time.Second)
		perSec[sec] = append(perSec[sec], d)
		if !e.Payload.FiredAt.IsZero() {
			l := e.Payload.FiredAt.Sub(slot)
			late = append(late, l)
			if after {
				lateAfter = append(lateAfter, l)
			}
			store = append(store, e.Created.Sub(e.Payload.FiredAt))
		}
	}
	for _, r := range rules {
		for slot, ok := r.Timer.Next(r.Acked); ok && slot.Before(s.End); slot, ok = r.Timer.Next(slot) {
			a.Expected++
			if seen[key{r.ID, slot.UnixNano()}] > 0 {
				a.Stored++
				continue
			}
			a.Missing++
			if len(a.MissingSample) < 10 {
				a.MissingSample = append(a.MissingSample,
					fmt.Sprintf("rule %d slot %s", r.ID, slot.UTC().Format(time.RFC3339Nano)))
			}
		}
	}
	a.Latency, a.LatencyAfter = newDist(lat), newDist(latAfter)
	a.Lateness, a.LatenessAfter, a.Store = newDist(late), newDist(lateAfter), newDist(store)
	for sec, ds := range perSec {
		d := newDist(ds)
		a.Worst = append(a.Worst, secondStat{At: sec, N: d.N, P50: d.P50, P99: d.P99, Max: d.Max})
	}
	slices.SortFunc(a.Worst, func(x, y secondStat) int { return cmp.Compare(y.P99, x.P99) })
	a.Worst = a.Worst[:min(len(a.Worst), 5)]
	return a
}

// secondStat is the latency of the slots of one second of the run.
type secondStat struct {
	At  int     `json:"second"` // since the first create
	N   int     `json:"n"`
	P50 float64 `json:"p50_ms"`
	P99 float64 `json:"p99_ms"`
	Max float64 `json:"max_ms"`
}
