package main

import (
	"fmt"
	"slices"
	"time"
)

// event is one event the API stored, as the run reads it.
type event struct {
	ID      int64
	Rule    int64 // from trigger_instance_id rule_<id>
	Key     string
	Slot    time.Time // payload.scheduled_at
	Fired   time.Time // payload.fired_at
	Created time.Time // stored by the API
}

// slotCheck is what checkSlots found in a window.
type slotCheck struct {
	Slots    int      // slots of the probes due in the window
	Missing  int      // of them, none stored
	Twice    int      // of them, stored more than once
	Examples []string // a few of the missing and twice stored, for the report
}

func (c slotCheck) ok() bool { return c.Missing == 0 && c.Twice == 0 }

// checkSlots checks that every slot in (from, to] of each probe (an interval
// rule of every) is stored exactly once. A probe's phase is read from its
// events (the node derives it from the rule id); one with no event at all has
// every slot of the window missing.
func checkSlots(byRule map[int64][]event, probes []int64, every time.Duration, from, to time.Time) slotCheck {
	var c slotCheck
	note := func(format string, args ...any) {
		if len(c.Examples) < 8 {
			c.Examples = append(c.Examples, fmt.Sprintf(format, args...))
		}
	}
	for _, id := range probes {
		evs := byRule[id]
		if len(evs) == 0 {
			n := int(to.Sub(from) / every)
			c.Slots += n
			c.Missing += n
			if n > 0 {
				note("rule %d: no event stored", id)
			}
			continue
		}
		phase := evs[0].Slot.UnixNano() % int64(every)
		stored := map[int64]int{}
		for _, e := range evs {
			stored[e.Slot.UnixNano()]++
		}
		first := from.UnixNano() - from.UnixNano()%int64(every) + phase
		for first <= from.UnixNano() {
			first += int64(every)
		}
		for s := first; s <= to.UnixNano(); s += int64(every) {
			c.Slots++
			switch stored[s] {
			case 0:
				c.Missing++
				note("rule %d: slot %s missing", id, time.Unix(0, s).UTC().Format(time.StampMilli))
			case 1:
			default:
				c.Twice++
				note("rule %d: slot %s stored %d times", id, time.Unix(0, s).UTC().Format(time.StampMilli), stored[s])
			}
		}
	}
	return c
}

// duplicates counts the events that repeat an Idempotency-Key already stored,
// and those that repeat a (rule, slot) already stored under another key.
func duplicates(evs []event) (byKey, bySlot int) {
	keys := make(map[string]bool, len(evs))
	type slot struct {
		rule int64
		at   int64
	}
	slots := make(map[slot]bool, len(evs))
	for _, e := range evs {
		if keys[e.Key] {
			byKey++
		} else {
			keys[e.Key] = true
			s := slot{e.Rule, e.Slot.UnixNano()}
			if slots[s] {
				bySlot++
			}
			slots[s] = true
		}
	}
	return byKey, bySlot
}

// byRule groups evs by rule.
func byRule(evs []event) map[int64][]event {
	out := map[int64][]event{}
	for _, e := range evs {
		out[e.Rule] = append(out[e.Rule], e)
	}
	return out
}

// balance is the spread of rules over nodes: fewest, most, and the ideal
// share (total / nodes).
type balance struct {
	Min, Max, Total, Nodes int
}

func balanceOf(owned map[string]int) balance {
	b := balance{Nodes: len(owned)}
	first := true
	for _, n := range owned {
		b.Total += n
		if first || n < b.Min {
			b.Min = n
		}
		if first || n > b.Max {
			b.Max = n
		}
		first = false
	}
	return b
}

func (b balance) ideal() float64 {
	if b.Nodes == 0 {
		return 0
	}
	return float64(b.Total) / float64(b.Nodes)
}

func (b balance) String() string {
	id := b.ideal()
	if id == 0 {
		return "no rules owned"
	}
	return fmt.Sprintf("min %d  max %d  ideal %.0f  (min/ideal %.2f, max/ideal %.2f; %d rules over %d nodes)",
		b.Min, b.Max, id, float64(b.Min)/id, float64(b.Max)/id, b.Total, b.Nodes)
}

// quantile is the q-quantile (0..1) of ds, 0 when empty.
func quantile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[min(len(s)-1, int(q*float64(len(s))))]
}
