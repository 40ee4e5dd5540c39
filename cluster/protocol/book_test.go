package protocol

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/timerd/timerd/scheduler"
)

var now = time.Date(2026, 1, 27, 12, 0, 0, 0, time.UTC)

func ago(d time.Duration) time.Time { return now.Add(-d) }

func interval(id int64, params string) Rule {
	return Rule{ID: id, Ref: fmt.Sprintf("r%d", id), TriggerRef: "core.intervaltimer", Params: json.RawMessage(params)}
}

func datetime(id int64, fireAt time.Time) Rule {
	return Rule{ID: id, Ref: fmt.Sprintf("r%d", id), TriggerRef: "core.datetimetimer",
		Params: json.RawMessage(`{"fire_at":"` + fireAt.Format(time.RFC3339Nano) + `"}`)}
}

func live(r Rule, v time.Time, wm scheduler.Watermark) Record {
	return Record{Live: true, Rule: r, Version: v, Watermark: wm}
}

func tombstone(v time.Time) Record { return Record{Version: v} }

func enable(r Rule, v time.Time) Change { return Change{Rule: r, Enabled: true, Version: v} }

func disable(id int64, v time.Time) Change {
	return Change{Rule: Rule{ID: id, TriggerRef: "core.intervaltimer"}, Version: v}
}

func wm(slot time.Time, count uint64) scheduler.Watermark {
	return scheduler.Watermark{Slot: slot, Count: count}
}

func TestBookApply(t *testing.T) {
	every5 := interval(1, `{"interval":5}`)
	every7 := interval(1, `{"interval":7}`)
	tests := []struct {
		name  string
		rec   Record
		c     Change
		bound time.Duration

		result     Result
		write      bool
		reschedule bool
		want       Record // checked when write; else the record must be rec
	}{
		// New rules: the schedule starts at the anchor.
		{name: "new rule starts at its version",
			c: enable(every5, ago(10*time.Second)), result: Applied, write: true, reschedule: true,
			want: live(every5, ago(10*time.Second), wm(ago(10*time.Second), 0))},
		{name: "no version: the receive time",
			c: enable(every5, time.Time{}), result: Applied, write: true, reschedule: true,
			want: live(every5, now, wm(now, 0))},
		{name: "version in year 9999: clamped, anchored now",
			c:      enable(every5, time.Date(9999, 12, 31, 0, 0, 0, 0, time.UTC)),
			result: Applied, write: true, reschedule: true,
			want: live(every5, now.Add(SkewAllowance), wm(now, 0))},
		{name: "version a little ahead: kept, anchored now",
			c: enable(every5, now.Add(20*time.Second)), result: Applied, write: true, reschedule: true,
			want: live(every5, now.Add(20*time.Second), wm(now, 0))},
		{name: "version older than the anchor bound: starts now",
			c: enable(every5, ago(6*time.Minute)), result: Applied, write: true, reschedule: true,
			want: live(every5, ago(6*time.Minute), wm(now, 0))},
		{name: "anchor bound is a parameter",
			c: enable(every5, ago(6*time.Minute)), bound: 10 * time.Minute, result: Applied, write: true, reschedule: true,
			want: live(every5, ago(6*time.Minute), wm(ago(6*time.Minute), 0))},
		{name: "version before 1970: clamped to the epoch, starts now",
			c: enable(every5, time.Date(1600, 1, 1, 0, 0, 0, 0, time.UTC)), result: Applied, write: true, reschedule: true,
			want: live(every5, minVersion, wm(now, 0))},
		{name: "datetime created before its slot, received after it: fires late",
			c: enable(datetime(1, ago(time.Minute)), ago(2*time.Minute)), result: Applied, write: true, reschedule: true,
			want: live(datetime(1, ago(time.Minute)), ago(2*time.Minute), wm(ago(2*time.Minute), 0))},
		{name: "datetime due just before its creation: fires at once",
			c: enable(datetime(1, ago(90*time.Second)), ago(time.Minute)), result: Applied, write: true, reschedule: true,
			want: live(datetime(1, ago(90*time.Second)), ago(time.Minute), wm(ago(90*time.Second).Add(-time.Nanosecond), 0))},
		{name: "datetime due at its creation: fires at once",
			c: enable(datetime(1, ago(time.Minute)), ago(time.Minute)), result: Applied, write: true, reschedule: true,
			want: live(datetime(1, ago(time.Minute)), ago(time.Minute), wm(ago(time.Minute).Add(-time.Nanosecond), 0))},
		{name: "datetime due more than the skew before its creation: never",
			c: enable(datetime(1, ago(3*time.Minute)), ago(time.Minute)), result: Applied, write: true, reschedule: true,
			want: live(datetime(1, ago(3*time.Minute)), ago(time.Minute), wm(ago(time.Minute), 0))},
		{name: "new to this node, fired by the cluster since: continues after the cluster's watermark",
			rec: Record{Watermark: wm(ago(time.Second), 4)},
			c:   enable(every5, ago(time.Minute)), result: Applied, write: true, reschedule: true,
			want: live(every5, ago(time.Minute), wm(ago(time.Second), 4))},
		{name: "new to this node, cluster's watermark before the anchor: the anchor, the count kept",
			rec: Record{Watermark: wm(ago(time.Hour), 4)},
			c:   enable(every5, ago(time.Minute)), result: Applied, write: true, reschedule: true,
			want: live(every5, ago(time.Minute), wm(ago(time.Minute), 4))},

		// Duplicates and other spellings.
		{name: "duplicate", rec: live(every5, ago(time.Minute), wm(ago(time.Second), 3)),
			c: enable(every5, ago(time.Minute)), result: Unchanged},
		{name: "same rule republished later: the version moves, nothing else",
			rec: live(every5, ago(time.Minute), wm(ago(time.Second), 3)),
			c:   enable(interval(1, `{ "interval" : 5 }`), ago(time.Second)), result: Unchanged, write: true,
			want: live(every5, ago(time.Second), wm(ago(time.Second), 3))},
		{name: "same timer in another spelling keeps its watermark",
			rec: live(every5, ago(time.Minute), wm(ago(time.Second), 3)),
			c:   enable(interval(1, `{"interval":5,"unit":"seconds"}`), ago(time.Second)), result: Applied, write: true,
			want: live(interval(1, `{"interval":5,"unit":"seconds"}`), ago(time.Second), wm(ago(time.Second), 3))},

		// Changed timers.
		{name: "changed timer continues after its anchor, keeping its count",
			rec: live(every5, ago(time.Hour), wm(ago(30*time.Second), 7)),
			c:   enable(every7, ago(10*time.Second)), result: Applied, write: true, reschedule: true,
			want: live(every7, ago(10*time.Second), wm(ago(10*time.Second), 7))},
		{name: "changed timer continues after its watermark when that is later",
			rec: live(every5, ago(time.Hour), wm(now.Add(time.Second), 7)),
			c:   enable(every7, ago(10*time.Second)), result: Applied, write: true, reschedule: true,
			want: live(every7, ago(10*time.Second), wm(now.Add(time.Second), 7))},
		{name: "datetime moved to a time before the change, within the skew: fires at once",
			rec: live(datetime(1, now.Add(time.Hour)), ago(time.Hour), wm(ago(time.Hour), 0)),
			c:   enable(datetime(1, ago(40*time.Second)), ago(10*time.Second)), result: Applied, write: true, reschedule: true,
			want: live(datetime(1, ago(40*time.Second)), ago(10*time.Second), wm(ago(40*time.Second).Add(-time.Nanosecond), 0))},
		{name: "equal versions apply", rec: live(every5, ago(time.Minute), wm(ago(time.Minute), 0)),
			c: enable(every7, ago(time.Minute)), result: Applied, write: true, reschedule: true,
			want: live(every7, ago(time.Minute), wm(ago(time.Minute), 0))},
		{name: "older repeat of the rule as held: unchanged, the version stays",
			rec: live(every5, ago(time.Minute), wm(ago(time.Minute), 0)),
			c:   enable(interval(1, `{ "interval": 5 }`), ago(time.Minute+time.Millisecond)), result: Unchanged},
		{name: "older change is stale", rec: live(every5, ago(time.Minute), wm(ago(time.Minute), 0)),
			c: enable(every7, ago(2*time.Minute)), result: Stale},
		{name: "stored before versions were kept: any change applies",
			rec: live(every5, time.Time{}, wm(ago(time.Minute), 2)),
			c:   enable(every7, ago(time.Hour)), result: Applied, write: true, reschedule: true,
			want: live(every7, ago(time.Hour), wm(now, 2))},

		// Removals and tombstones.
		{name: "disable of a live rule leaves a tombstone",
			rec: live(every5, ago(time.Minute), wm(ago(time.Second), 3)),
			c:   disable(1, ago(time.Second)), result: Applied, write: true, want: tombstone(ago(time.Second))},
		{name: "enabled as another trigger: removed",
			rec:    live(every5, ago(time.Minute), wm(ago(time.Second), 3)),
			c:      enable(Rule{ID: 1, TriggerRef: "core.webhook", Params: json.RawMessage(`{}`)}, ago(time.Second)),
			result: Applied, write: true, want: tombstone(ago(time.Second))},
		{name: "older disable of a live rule is stale",
			rec: live(every5, ago(time.Minute), wm(ago(time.Second), 3)), c: disable(1, ago(2*time.Minute)), result: Stale},
		{name: "disable of a rule never seen keeps its version",
			c: disable(1, ago(time.Second)), result: Unchanged, write: true, want: tombstone(ago(time.Second))},
		{name: "flat disable without a trigger of a rule never seen",
			c: Change{Rule: Rule{ID: 1}, Version: ago(time.Second)}, result: Unchanged, write: true, want: tombstone(ago(time.Second))},
		{name: "another trigger's rule never seen is ignored",
			c: enable(Rule{ID: 1, TriggerRef: "core.webhook"}, ago(time.Second)), result: Ignored},
		{name: "another trigger's rule deleted is ignored",
			c: Change{Rule: Rule{ID: 1, TriggerRef: "core.webhook"}, Version: ago(time.Second)}, result: Ignored},
		{name: "tombstone, then a stale enable", rec: tombstone(ago(time.Second)),
			c: enable(every5, ago(time.Minute)), result: Stale},
		{name: "tombstone, then a newer enable", rec: tombstone(ago(time.Minute)),
			c: enable(every5, ago(time.Second)), result: Applied, write: true, reschedule: true,
			want: live(every5, ago(time.Second), wm(ago(time.Second), 0))},
		{name: "tombstone past its TTL no longer holds an enable back",
			rec: tombstone(ago(TombstoneTTL + time.Hour)),
			c:   enable(every5, ago(TombstoneTTL+2*time.Hour)), result: Applied, write: true, reschedule: true,
			want: live(every5, ago(TombstoneTTL+2*time.Hour), wm(now, 0))},
		{name: "tombstone, then an older disable: what it asks for holds", rec: tombstone(ago(time.Second)),
			c: disable(1, ago(time.Minute)), result: Unchanged},
		{name: "tombstone, then a duplicate delete", rec: tombstone(ago(time.Second)),
			c: disable(1, ago(time.Second)), result: Unchanged},
		{name: "tombstone, then a newer delete", rec: tombstone(ago(time.Minute)),
			c: disable(1, ago(time.Second)), result: Unchanged, write: true, want: tombstone(ago(time.Second))},

		// Bad input changes nothing.
		{name: "invalid timer", c: enable(interval(1, `{"interval":-5}`), ago(time.Second)), result: Invalid},
		// A live rule changed to an invalid timer stops: held with the change's
		// version, params and the rule's watermark, and no timer.
		{name: "invalid change of a live rule stops it", rec: live(every5, ago(time.Minute), wm(ago(time.Second), 3)),
			c: enable(interval(1, `{"interval":"x"}`), ago(time.Second)), result: Invalid, write: true,
			want: live(interval(1, `{"interval":"x"}`), ago(time.Second), wm(ago(time.Second), 3))},
		{name: "an older invalid change of a live rule is stale", rec: live(every5, ago(time.Second), wm(ago(time.Second), 3)),
			c: enable(interval(1, `{"interval":"x"}`), ago(time.Minute)), result: Stale},
		{name: "a repeat of the invalid change of a stopped rule", rec: live(interval(1, `{"interval":0}`), ago(time.Minute), wm(ago(time.Second), 3)),
			c: enable(interval(1, `{"interval":0}`), ago(time.Second)), result: Unchanged, write: true,
			want: live(interval(1, `{"interval":0}`), ago(time.Second), wm(ago(time.Second), 3))},
		{name: "a valid change of a stopped rule continues after its watermark",
			rec: live(interval(1, `{"interval":0}`), ago(time.Minute), wm(ago(time.Second), 3)),
			c:   enable(every5, ago(time.Minute/2)), result: Applied, write: true, reschedule: true,
			want: live(every5, ago(time.Minute/2), wm(ago(time.Second), 3))},
		{name: "params too large for a live rule: stopped without them",
			rec:    live(every5, ago(time.Minute), wm(ago(time.Second), 3)),
			c:      enable(interval(1, `{"interval":5,"pad":"`+strings.Repeat("x", 70<<10)+`"}`), ago(time.Second)),
			result: Invalid, write: true, want: live(interval(1, ""), ago(time.Second), wm(ago(time.Second), 3))},
		{name: "params too large",
			c:      enable(interval(1, `{"interval":5,"pad":"`+strings.Repeat("x", 70<<10)+`"}`), ago(time.Second)),
			result: Invalid},
		{name: "params not JSON", c: enable(interval(1, `{"interval":`), ago(time.Second)), result: Invalid},
		{name: "timestamp zero on a removal: the receive time",
			rec: live(every5, ago(time.Minute), wm(ago(time.Second), 3)),
			c:   disable(1, time.Time{}), result: Applied, write: true, want: tombstone(now)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := Book{AnchorBound: tt.bound}.Apply(tt.rec, tt.c, now)
			if d.Result != tt.result || d.Write != tt.write || d.Reschedule != tt.reschedule {
				t.Fatalf("Apply(%+v, %+v) = %s write %v reschedule %v (%v), want %s write %v reschedule %v",
					tt.rec, tt.c, d.Result, d.Write, d.Reschedule, d.Reason, tt.result, tt.write, tt.reschedule)
			}
			want := tt.rec
			if tt.write {
				want = tt.want
			}
			if !sameRecord(d.Record, want) {
				t.Errorf("Apply(%+v, %+v).Record =\n%+v, want\n%+v", tt.rec, tt.c, d.Record, want)
			}
			if (d.Reason != nil) != (d.Result == Invalid || d.Result == Ignored) {
				t.Errorf("Apply: result %s with reason %v", d.Result, d.Reason)
			}
			if (d.Timer != nil) != (d.Result == Applied && d.Record.Live) {
				t.Errorf("Apply: result %s, live %v, timer %v", d.Result, d.Record.Live, d.Timer)
			}
		})
	}
}

func sameRecord(a, b Record) bool {
	return a.Live == b.Live && a.Version.Equal(b.Version) && a.Watermark.Slot.Equal(b.Watermark.Slot) &&
		a.Watermark.Count == b.Watermark.Count && a.Rule.ID == b.Rule.ID && a.Rule.Ref == b.Rule.Ref &&
		a.Rule.TriggerRef == b.Rule.TriggerRef && string(a.Rule.Params) == string(b.Rule.Params)
}

// The slots the book's baselines give: a datetime that reaches a node after
// its slot fires (late), one due just before its creation fires, one due
// long before does not.
func TestBookDatetimeFires(t *testing.T) {
	tests := []struct {
		name    string
		fireAt  time.Time
		version time.Time
		fires   bool
	}{
		{"due after its creation, received after it is due", ago(time.Minute), ago(2 * time.Minute), true},
		{"due in the future", now.Add(time.Minute), ago(time.Second), true},
		{"due 59s before its creation", ago(time.Minute + 59*time.Second), ago(time.Minute), true},
		{"due 61s before its creation", ago(2*time.Minute + time.Second), ago(time.Minute), false},
		{"created long ago (past the anchor bound), due since", ago(5 * time.Minute), ago(6 * time.Minute), false},
		{"a timestamp from year 9999, due a second ago", ago(time.Second), time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC), true},
	}
	for _, tt := range tests {
		d := Book{}.Apply(Record{}, enable(datetime(1, tt.fireAt), tt.version), now)
		if d.Result != Applied {
			t.Fatalf("%s: Apply = %s (%v), want applied", tt.name, d.Result, d.Reason)
		}
		slot, ok := d.Timer.Next(d.Record.Watermark.Slot)
		if ok != tt.fires || (ok && !slot.Equal(tt.fireAt)) {
			t.Errorf("%s: next slot after the baseline %v = %v, %v; want fires %v at %v",
				tt.name, d.Record.Watermark.Slot, slot, ok, tt.fires, tt.fireAt)
		}
	}
}

// Whatever order a rule's changes arrive in, the book ends in the state of
// the newest one (I4), and a duplicate of any of them changes nothing.
func TestBookOrderDoesNotMatter(t *testing.T) {
	r1 := interval(1, `{"interval":5}`)
	r2 := interval(1, `{"interval":7}`)
	type change struct {
		name string
		c    Change
	}
	sets := []struct {
		name    string
		changes []change // oldest first
	}{
		{"created, enabled, disabled, deleted", []change{
			{"created", enable(r1, ago(4*time.Second))},
			{"enabled", enable(r2, ago(3*time.Second))},
			{"disabled", disable(1, ago(2*time.Second))},
			{"deleted", disable(1, ago(time.Second))},
		}},
		{"created, disabled, enabled", []change{
			{"created", enable(r1, ago(3*time.Second))},
			{"disabled", disable(1, ago(2*time.Second))},
			{"enabled", enable(r2, ago(time.Second))},
		}},
		{"created, enabled, enabled as another trigger, enabled again", []change{
			{"created", enable(r1, ago(4*time.Second))},
			{"enabled", enable(r2, ago(3*time.Second))},
			{"webhook", enable(Rule{ID: 1, TriggerRef: "core.webhook"}, ago(2*time.Second))},
			{"enabled again", enable(r1, ago(time.Second))},
		}},
	}
	for _, set := range sets {
		newest := set.changes[len(set.changes)-1].c
		for _, order := range permutations(len(set.changes)) {
			var rec Record
			var names []string
			for i, k := range order {
				ch := set.changes[k]
				names = append(names, ch.name)
				at := now.Add(time.Duration(i) * time.Millisecond)
				d := Book{}.Apply(rec, ch.c, at)
				if d.Write {
					rec = d.Record
				}
				// A duplicate right after changes nothing.
				if dup := (Book{}).Apply(rec, ch.c, at); dup.Write || dup.Reschedule {
					t.Errorf("%s: order %v: duplicate %s: %s write %v", set.name, names, ch.name, dup.Result, dup.Write)
				}
			}
			wantLive := newest.Enabled && scheduler.IsTimerTrigger(newest.Rule.TriggerRef)
			if rec.Live != wantLive || !rec.Version.Equal(newest.Version) ||
				(wantLive && string(rec.Rule.Params) != string(newest.Rule.Params)) {
				t.Errorf("%s: order %v: ends live %v version %v params %s; want the newest: live %v version %v params %s",
					set.name, names, rec.Live, rec.Version, rec.Rule.Params, wantLive, newest.Version, newest.Rule.Params)
			}
		}
	}
}

func permutations(n int) [][]int {
	if n == 1 {
		return [][]int{{0}}
	}
	var out [][]int
	for _, p := range permutations(n - 1) {
		for i := 0; i <= len(p); i++ {
			out = append(out, slices.Insert(slices.Clone(p), i, n-1))
		}
	}
	return out
}

// A watermark never moves back: a sequence of changes of one rule whose
// watermark is ahead of every anchor keeps it.
func TestBookWatermarkNeverMovesBack(t *testing.T) {
	ahead := wm(now.Add(time.Hour), 9)
	rec := live(interval(1, `{"interval":5}`), ago(time.Hour), ahead)
	for i, params := range []string{`{"interval":7}`, `{"interval":7,"unit":"seconds"}`, `{"interval":1,"unit":"minutes"}`} {
		d := Book{}.Apply(rec, enable(interval(1, params), ago(time.Duration(3-i)*time.Second)), now)
		if d.Result != Applied {
			t.Fatalf("change %d: %s (%v)", i, d.Result, d.Reason)
		}
		rec = d.Record
		if !rec.Watermark.Slot.Equal(ahead.Slot) || rec.Watermark.Count != ahead.Count {
			t.Fatalf("change %d (%s): watermark %+v, want %+v kept", i, params, rec.Watermark, ahead)
		}
	}
}

func TestBookPrune(t *testing.T) {
	listed := now
	every5 := interval(1, `{"interval":5}`)
	tests := []struct {
		name   string
		rec    Record
		result Result
		want   Record
	}{
		{"older than the listing less the skew: removed", live(every5, listed.Add(-2*time.Minute), wm(ago(time.Second), 1)),
			Applied, tombstone(listed.Add(-SkewAllowance))},
		{"stored before versions were kept: removed", live(every5, time.Time{}, wm(ago(time.Second), 1)),
			Applied, tombstone(listed.Add(-SkewAllowance))},
		{"changed while the listing was paged: kept", live(every5, listed.Add(-30*time.Second), wm(ago(time.Second), 1)),
			Unchanged, live(every5, listed.Add(-30*time.Second), wm(ago(time.Second), 1))},
		{"changed after the listing started: kept", live(every5, listed.Add(time.Second), wm(ago(time.Second), 1)),
			Unchanged, live(every5, listed.Add(time.Second), wm(ago(time.Second), 1))},
		{"a tombstone stays as it is", tombstone(ago(time.Hour)), Unchanged, tombstone(ago(time.Hour))},
		{"nothing stays nothing", Record{}, Unchanged, Record{}},
	}
	for _, tt := range tests {
		d := Book{}.Prune(tt.rec, listed)
		if d.Result != tt.result || d.Write != (tt.result == Applied) || !sameRecord(d.Record, tt.want) {
			t.Errorf("%s: Prune(%+v, %v) = %s write %v %+v, want %s %+v", tt.name, tt.rec, listed, d.Result, d.Write, d.Record, tt.result, tt.want)
		}
	}
	// The tombstone holds back an enable older than the listing.
	d := Book{}.Prune(live(every5, ago(time.Hour), wm(ago(time.Second), 1)), listed)
	if e := (Book{}).Apply(d.Record, enable(every5, ago(2*time.Minute)), now); e.Result != Stale {
		t.Errorf("enable older than the listing after a prune: %s, want stale", e.Result)
	}
}

func TestExpired(t *testing.T) {
	for _, tt := range []struct {
		age  time.Duration
		want bool
	}{{0, false}, {TombstoneTTL, false}, {TombstoneTTL + time.Nanosecond, true}, {-time.Hour, false}} {
		if got := Expired(ago(tt.age), now); got != tt.want {
			t.Errorf("Expired(now-%v, now) = %v, want %v", tt.age, got, tt.want)
		}
	}
}
