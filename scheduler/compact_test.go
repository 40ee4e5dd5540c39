package scheduler

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// The engine keeps interval timers compact (rule.setTimer): every fire must still
// carry a Timer Equal to the one the rule was given, with the same slots, whatever
// the kind, policy or anchor, through catch-up, skips and Upserts.
func TestCompactRulesFireWithTheirTimers(t *testing.T) {
	clock := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	timers := map[int64]*Timer{}
	type seen struct {
		id   int64
		slot time.Time
	}
	var fired []seen
	e, err := New(Config{Now: func() time.Time { return clock }, Commit: func(fs []Fire, _ []Miss) error {
		for _, f := range fs {
			want := timers[f.RuleID]
			if !f.Timer.Equal(want) || f.Timer.shape() != want.shape() {
				return fmt.Errorf("fire of rule %d: timer %+v, want %+v", f.RuleID, *f.Timer, *want)
			}
			if !f.Slot.Equal(clock) && f.Slot.After(clock) {
				return fmt.Errorf("fire of rule %d at %v before its slot %v", f.RuleID, clock, f.Slot)
			}
			fired = append(fired, seen{f.RuleID, f.Slot})
		}
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	params := []struct{ ref, params string }{
		{"core.intervaltimer", `{"interval":7}`},
		{"core.intervaltimer", `{"interval":3,"misfire":"fire_all"}`},
		{"core.intervaltimer", `{"interval":5,"misfire":"skip","misfire_grace":"1s"}`},
		{"core.intervaltimer", `{"interval":2,"unit":"minutes","start_at":"2029-12-31T23:59:59.5+01:00"}`},
		{"core.crontimer", `{"expression":"@every 4s","timezone":"Europe/Berlin"}`},
		{"core.crontimer", `{"expression":"*/6 * * * * *"}`},
		{"core.datetimetimer", `{"fire_at":"2030-01-01T00:00:09Z"}`},
		{"core.timer", `{"interval_seconds":11}`},
	}
	var items []Item
	for id := int64(1); id <= 200; id++ {
		p := params[id%int64(len(params))]
		tm, err := Parse(p.ref, []byte(p.params), id)
		if err != nil {
			t.Fatal(err)
		}
		timers[id] = tm
		items = append(items, Item{ID: id, Timer: tm, Watermark: Watermark{Slot: clock.Add(-time.Duration(id%4) * time.Minute)}})
	}
	// A hand-built timer whose anchor is not in UTC is kept whole.
	timers[201] = every(time.Second, time.Date(2029, 1, 1, 0, 0, 0, 1, time.FixedZone("X", 3600)))
	items = append(items, Item{ID: 201, Timer: timers[201], Watermark: Watermark{Slot: clock}})
	timers[202] = at(clock.Add(5*time.Second).In(time.FixedZone("Y", -3600)), 0, FireOnce)
	items = append(items, Item{ID: 202, Timer: timers[202], Watermark: Watermark{Slot: clock}})
	e.Load(items)
	for _, id := range []int64{201, 202} {
		if _, idx, _ := e.ids.find(e.rules, id); e.rules[idx].compact || e.rules[idx].timer != timers[id] {
			t.Errorf("rule %d, a time off UTC: kept compact", id)
		}
	}
	// A cron timer has nothing of its own: its rules share one timer.
	_, i6, _ := e.ids.find(e.rules, 5)
	_, i14, _ := e.ids.find(e.rules, 13)
	if r6, r14 := e.rules[i6], e.rules[i14]; r6.compact || r6.timer != r14.timer || r6.timer == timers[5] {
		t.Errorf("cron rules 5 and 13: compact %v, timers %p %p, want one shared template", r6.compact, r6.timer, r14.timer)
	}
	if len(e.templates) == 0 || len(e.templates) > len(params) {
		t.Errorf("%d templates for %d kinds of timer", len(e.templates), len(params))
	}
	tm := time.NewTimer(time.Hour)
	defer tm.Stop()
	step := func(until time.Time) {
		for !clock.After(until) {
			if _, _ = e.prepare(); len(e.flights) > 0 {
				if !e.commit(context.Background(), tm) {
					t.Fatal("commit abandoned")
				}
				continue
			}
			clock = clock.Add(250 * time.Millisecond)
		}
	}
	step(clock.Add(30 * time.Second))
	checkInvariants(t, e)
	// A changed timer, and the same one again (nothing changes), on compact rules.
	changed, err := Parse("core.intervaltimer", []byte(`{"interval":13}`), 8)
	if err != nil {
		t.Fatal(err)
	}
	same, _ := Parse(params[1].ref, []byte(params[1].params), 1)
	before, _ := e.Watermark(1)
	timers[8] = changed
	e.Upsert(8, changed, Watermark{})
	e.Upsert(1, same, Watermark{})
	if after, _ := e.Watermark(1); after != before {
		t.Errorf("Upsert of an Equal timer moved the watermark from %+v to %+v", before, after)
	}
	step(clock.Add(30 * time.Second))
	checkInvariants(t, e)
	// Every rule fired each of its slots once.
	count := map[seen]int{}
	for _, f := range fired {
		if count[f]++; count[f] > 1 {
			t.Errorf("rule %d slot %v fired twice", f.id, f.slot)
		}
	}
	if len(fired) < 1000 {
		t.Errorf("%d fires in a minute of 201 rules, want more", len(fired))
	}
	if e.timersLen != 0 {
		t.Errorf("batch timers in use after the batch: %d", e.timersLen)
	}
}

// Past maxTemplates distinct templates, rules keep their timers whole, and fire.
func TestCompactTemplatesAreBounded(t *testing.T) {
	clock := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	e, err := New(Config{Now: func() time.Time { return clock }, Commit: func([]Fire, []Miss) error { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	var items []Item
	for id := int64(1); id <= maxTemplates+10; id++ {
		items = append(items, Item{ID: id, Timer: &Timer{Kind: KindInterval, Interval: time.Second,
			Anchor: clock, MisfireGrace: time.Duration(id) * time.Millisecond}, Watermark: Watermark{Slot: clock}})
	}
	e.Load(items)
	if len(e.templates) != maxTemplates {
		t.Errorf("%d templates, want the bound %d", len(e.templates), maxTemplates)
	}
	whole := 0
	for _, r := range e.rules {
		if !r.compact {
			whole++
		}
	}
	if whole != 10 {
		t.Errorf("%d rules kept whole, want 10", whole)
	}
	checkInvariants(t, e)
}

// LoadFrom keeps nothing of the Timer it is given (a store scan reuses one for
// every rule): compact, shared and whole rules alike keep their timers when the
// scratch is overwritten after each rule and scribbled on after the load.
func TestLoadFromKeepsNoBorrowedTimer(t *testing.T) {
	clock := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	e, err := New(Config{Now: func() time.Time { return clock }, Commit: func([]Fire, []Miss) error { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	want := map[int64]*Timer{}
	for id, p := range []struct{ ref, params string }{
		{"core.intervaltimer", `{"interval":7}`},
		{"core.crontimer", `{"expression":"*/6 * * * * *","timezone":"Europe/Berlin"}`},
		{"core.crontimer", `{"expression":"@every 4s"}`},
		{"core.datetimetimer", `{"fire_at":"2030-01-01T00:00:09Z"}`},
	} {
		tm, err := Parse(p.ref, []byte(p.params), int64(id+1))
		if err != nil {
			t.Fatal(err)
		}
		want[int64(id+1)] = tm
	}
	// Kept whole: times off UTC.
	want[5] = every(time.Second, time.Date(2029, 1, 1, 0, 0, 0, 1, time.FixedZone("X", 3600)))
	want[6] = at(clock.Add(5*time.Second).In(time.FixedZone("Y", -3600)), 0, FireOnce)
	scratch := new(Timer)
	if err := e.LoadFrom(len(want), func(add func(Item)) error {
		for id := int64(1); id <= int64(len(want)); id++ {
			*scratch = *want[id]
			add(Item{ID: id, Timer: scratch, Watermark: Watermark{Slot: clock}})
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	*scratch = *usedTimer(t)
	for id, w := range want {
		_, idx, ok := e.ids.find(e.rules, id)
		if !ok {
			t.Fatalf("rule %d not loaded", id)
		}
		var buf Timer
		got := e.rules[idx].timerInto(&buf)
		if got == scratch || !got.Equal(w) || got.shape() != w.shape() {
			t.Errorf("rule %d: timer %+v, want %+v", id, *got, *w)
		}
	}
	checkInvariants(t, e)
	// each's error is LoadFrom's; the rules added before it are kept.
	boom := fmt.Errorf("boom")
	if err := e.LoadFrom(1, func(add func(Item)) error {
		add(Item{ID: 100, Timer: want[1]})
		return boom
	}); err != boom { //nolint:errorlint // LoadFrom returns each's very error, unwrapped
		t.Errorf("LoadFrom: %v, want %v", err, boom)
	}
	if e.Len() != len(want)+1 {
		t.Errorf("%d rules after a failed load, want %d", e.Len(), len(want)+1)
	}
	checkInvariants(t, e)
}

// A load indexes a run of new ids in increasing order at its end (indexAll):
// every rule is found after it, also when an id out of order ends the run in
// the middle (an upsert that must find the rule just added).
func TestLoadIndexesEveryRule(t *testing.T) {
	clock := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	e, err := New(Config{Now: func() time.Time { return clock }, Commit: func([]Fire, []Miss) error { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	tm := every(time.Minute, time.Time{})
	changed := every(time.Hour, time.Time{})
	var items []Item
	id := int64(0)
	for i := range 20000 {
		id += 1 + int64(i%7)*int64(i%3)<<20
		items = append(items, Item{ID: id, Timer: tm, Watermark: Watermark{Slot: clock}})
	}
	mid := items[10000].ID
	items = append(items[:15000:15000], append([]Item{{ID: mid, Timer: changed}}, items[15000:]...)...)
	if err := e.LoadFrom(len(items), func(add func(Item)) error {
		for _, it := range items {
			add(it)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if e.Len() != 20000 {
		t.Fatalf("%d rules, want 20000", e.Len())
	}
	for _, it := range items {
		_, idx, ok := e.ids.find(e.rules, it.ID)
		var buf Timer
		if want := map[bool]*Timer{true: changed, false: tm}[it.ID == mid]; !ok || !e.rules[idx].timerInto(&buf).Equal(want) {
			t.Fatalf("rule %d: found %v, timer %+v, want %+v", it.ID, ok, buf, *want)
		}
	}
	checkInvariants(t, e)
}
