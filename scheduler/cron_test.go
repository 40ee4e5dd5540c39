package scheduler

import (
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/cronexpr"
)

// slotsFrom returns up to n slots of tm strictly after from.
func slotsFrom(tm *Timer, from time.Time, n int) []time.Time {
	var out []time.Time
	for s, ok := tm.Next(from); ok && len(out) < n; s, ok = tm.Next(s) {
		out = append(out, s)
	}
	return out
}

func formatSlots(ss []time.Time) string {
	parts := make([]string, len(ss))
	for i, s := range ss {
		parts[i] = s.UTC().Format(time.RFC3339)
	}
	return "[" + strings.Join(parts, " ") + "]"
}

func TestCronSyntax(t *testing.T) {
	const jan1 = "2026-01-01T00:00:00Z" // a Thursday
	tests := []struct {
		name, expr, tz, from string
		want                 []string // the first slots after from, UTC
		ends                 bool     // and no more
	}{
		{"5 fields", "*/15 * * * *", "", jan1, []string{"2026-01-01T00:15:00Z", "2026-01-01T00:30:00Z", "2026-01-01T00:45:00Z"}, false},
		{"6 fields are seconds first", "30 */2 * * * *", "", jan1, []string{"2026-01-01T00:00:30Z", "2026-01-01T00:02:30Z", "2026-01-01T00:04:30Z"}, false},
		{"6 fields every 5 seconds", "*/5 * * * * *", "", jan1, []string{"2026-01-01T00:00:05Z", "2026-01-01T00:00:10Z", "2026-01-01T00:00:15Z"}, false},
		{"7 fields with a year", "0 0 12 1 1 ? 2027", "", jan1, []string{"2027-01-01T12:00:00Z"}, true},
		{"7 fields, year in the past", "0 0 12 1 1 ? 2020", "", jan1, nil, true},
		{"ranges with a step", "0 0 1-5/2 * *", "", jan1, []string{"2026-01-03T00:00:00Z", "2026-01-05T00:00:00Z", "2026-02-01T00:00:00Z"}, false},
		{"month and weekday names", "0 9 * JAN,feb MON", "", jan1, []string{"2026-01-05T09:00:00Z", "2026-01-12T09:00:00Z", "2026-01-19T09:00:00Z"}, false},
		{"question mark", "0 0 ? * SUN", "", jan1, []string{"2026-01-04T00:00:00Z", "2026-01-11T00:00:00Z"}, false},
		{"7 is Sunday", "0 0 * * 7", "", jan1, []string{"2026-01-04T00:00:00Z", "2026-01-11T00:00:00Z"}, false},
		{"L last day of month", "0 0 L * ?", "", jan1, []string{"2026-01-31T00:00:00Z", "2026-02-28T00:00:00Z", "2026-03-31T00:00:00Z"}, false},
		{"W nearest weekday", "0 0 15W * ?", "", jan1, []string{"2026-01-15T00:00:00Z", "2026-02-16T00:00:00Z", "2026-03-16T00:00:00Z"}, false},
		{"LW last weekday", "0 0 LW * ?", "", jan1, []string{"2026-01-30T00:00:00Z", "2026-02-27T00:00:00Z", "2026-03-31T00:00:00Z"}, false},
		{"# nth weekday", "0 0 ? * FRI#2", "", jan1, []string{"2026-01-09T00:00:00Z", "2026-02-13T00:00:00Z", "2026-03-13T00:00:00Z"}, false},
		{"L last weekday of month", "0 0 ? * 5L", "", jan1, []string{"2026-01-30T00:00:00Z", "2026-02-27T00:00:00Z", "2026-03-27T00:00:00Z"}, false},
		{"Feb 29", "0 0 29 2 *", "", jan1, []string{"2028-02-29T00:00:00Z", "2032-02-29T00:00:00Z"}, false},
		{"Vixie: day-of-month OR day-of-week", "0 0 13 * FRI", "", jan1, []string{"2026-01-02T00:00:00Z", "2026-01-09T00:00:00Z", "2026-01-13T00:00:00Z", "2026-01-16T00:00:00Z"}, false},
		{"Vixie: ? leaves day-of-month alone", "0 0 13 * ?", "", jan1, []string{"2026-01-13T00:00:00Z", "2026-02-13T00:00:00Z"}, false},
		{"Vixie: * leaves day-of-week alone", "0 0 * * FRI", "", jan1, []string{"2026-01-02T00:00:00Z", "2026-01-09T00:00:00Z"}, false},
		{"range ending on SUN", "0 0 * * FRI-SUN", "", jan1, []string{"2026-01-02T00:00:00Z", "2026-01-03T00:00:00Z", "2026-01-04T00:00:00Z", "2026-01-09T00:00:00Z"}, false},
		{"range ending on 7", "0 0 * * 5-7", "", jan1, []string{"2026-01-02T00:00:00Z", "2026-01-03T00:00:00Z", "2026-01-04T00:00:00Z", "2026-01-09T00:00:00Z"}, false},
		{"range 0-7 is every day", "0 0 * * 0-7", "", jan1, []string{"2026-01-02T00:00:00Z", "2026-01-03T00:00:00Z", "2026-01-04T00:00:00Z"}, false},
		{"range SUN-SUN is Sunday", "0 0 * * SUN-SUN", "", jan1, []string{"2026-01-04T00:00:00Z", "2026-01-11T00:00:00Z"}, false},
		{"range to 7 with a step", "0 0 * * 1-7/3", "", jan1, []string{"2026-01-04T00:00:00Z", "2026-01-05T00:00:00Z", "2026-01-08T00:00:00Z"}, false},
		{"tabs and repeated spaces", "0\t0  * *\t*", "", jan1, []string{"2026-01-02T00:00:00Z", "2026-01-03T00:00:00Z"}, false},
		{"@hourly", "@hourly", "", jan1, []string{"2026-01-01T01:00:00Z", "2026-01-01T02:00:00Z"}, false},
		{"@daily", "@daily", "", jan1, []string{"2026-01-02T00:00:00Z", "2026-01-03T00:00:00Z"}, false},
		{"@midnight", "@midnight", "", jan1, []string{"2026-01-02T00:00:00Z", "2026-01-03T00:00:00Z"}, false},
		{"@DAILY upper case", " @DAILY ", "", jan1, []string{"2026-01-02T00:00:00Z"}, false},
		{"@weekly", "@weekly", "", jan1, []string{"2026-01-04T00:00:00Z", "2026-01-11T00:00:00Z"}, false},
		{"@monthly", "@monthly", "", jan1, []string{"2026-02-01T00:00:00Z", "2026-03-01T00:00:00Z"}, false},
		{"@yearly", "@yearly", "", jan1, []string{"2027-01-01T00:00:00Z", "2028-01-01T00:00:00Z"}, false},
		{"@annually", "@annually", "", jan1, []string{"2027-01-01T00:00:00Z"}, false},
		{"time zone", "0 9 * * *", "America/New_York", jan1, []string{"2026-01-01T14:00:00Z", "2026-01-02T14:00:00Z"}, false},
		{"half-hour zone", "0 9 * * *", "Asia/Kolkata", jan1, []string{"2026-01-01T03:30:00Z", "2026-01-02T03:30:00Z"}, false},
		{"@daily in a zone", "@daily", "Asia/Tokyo", jan1, []string{"2026-01-01T15:00:00Z", "2026-01-02T15:00:00Z"}, false},
		{"from the zero time", "0 0 1 1 *", "", "0001-01-01T00:00:00Z", []string{"1970-01-01T00:00:00Z", "1971-01-01T00:00:00Z"}, false},
		{"ends in 2099", "0 0 1 1 *", "", "2098-06-01T00:00:00Z", []string{"2099-01-01T00:00:00Z"}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			params := fmt.Sprintf(`{"expression":%q,"timezone":%q}`, tt.expr, tt.tz)
			tm := mustParse(t, "core.crontimer", params, 1)
			got := slotsFrom(tm, ts(t, tt.from), len(tt.want)+1)
			if !tt.ends && len(got) > len(tt.want) {
				got = got[:len(tt.want)]
			}
			var want []time.Time
			for _, w := range tt.want {
				want = append(want, ts(t, w))
			}
			if !slices.EqualFunc(got, want, time.Time.Equal) {
				t.Errorf("expression %q tz %q: slots after %s = %s, want %s", tt.expr, tt.tz, tt.from, formatSlots(got), formatSlots(want))
			}
		})
	}
}

func TestCronDST(t *testing.T) {
	tests := []struct {
		name, zone, expr string
		gap              DSTGap
		overlap          DSTOverlap
		from             string
		want             []string // UTC
	}{
		// Berlin, 2026-03-29: 02:00 CET → 03:00 CEST.
		{"Berlin gap shift", "Europe/Berlin", "30 2 * * *", GapShift, OverlapOnce, "2026-03-28T12:00:00Z", []string{"2026-03-29T01:30:00Z", "2026-03-30T00:30:00Z"}},
		{"Berlin gap skip", "Europe/Berlin", "30 2 * * *", GapSkip, OverlapOnce, "2026-03-28T12:00:00Z", []string{"2026-03-30T00:30:00Z", "2026-03-31T00:30:00Z"}},
		{"Berlin gap shift, 6 fields", "Europe/Berlin", "0 30 2 * * *", GapShift, OverlapOnce, "2026-03-28T12:00:00Z", []string{"2026-03-29T01:30:00Z"}},
		{"Berlin gap shift lands on an existing slot", "Europe/Berlin", "0,30 * * * *", GapShift, OverlapOnce, "2026-03-29T00:00:00Z", []string{"2026-03-29T00:30:00Z", "2026-03-29T01:00:00Z", "2026-03-29T01:30:00Z", "2026-03-29T02:00:00Z"}},
		{"Berlin gap skip hourly", "Europe/Berlin", "0,30 * * * *", GapSkip, OverlapOnce, "2026-03-29T00:00:00Z", []string{"2026-03-29T00:30:00Z", "2026-03-29T01:00:00Z", "2026-03-29T01:30:00Z", "2026-03-29T02:00:00Z"}},
		// Berlin, 2026-10-25: 03:00 CEST → 02:00 CET.
		{"Berlin overlap once", "Europe/Berlin", "30 2 * * *", GapShift, OverlapOnce, "2026-10-24T12:00:00Z", []string{"2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"}},
		{"Berlin overlap twice", "Europe/Berlin", "30 2 * * *", GapShift, OverlapTwice, "2026-10-24T12:00:00Z", []string{"2026-10-25T00:30:00Z", "2026-10-25T01:30:00Z", "2026-10-26T01:30:00Z"}},
		{"Berlin overlap twice, between the passes", "Europe/Berlin", "30 2 * * *", GapShift, OverlapTwice, "2026-10-25T00:45:00Z", []string{"2026-10-25T01:30:00Z"}},
		{"Berlin overlap once, between the passes", "Europe/Berlin", "30 2 * * *", GapShift, OverlapOnce, "2026-10-25T00:45:00Z", []string{"2026-10-26T01:30:00Z"}},
		{"Berlin overlap twice, half-hourly", "Europe/Berlin", "0,30 * * * *", GapShift, OverlapTwice, "2026-10-24T23:45:00Z", []string{"2026-10-25T00:00:00Z", "2026-10-25T00:30:00Z", "2026-10-25T01:00:00Z", "2026-10-25T01:30:00Z", "2026-10-25T02:00:00Z"}},
		{"Berlin overlap once, half-hourly", "Europe/Berlin", "0,30 * * * *", GapShift, OverlapOnce, "2026-10-24T23:45:00Z", []string{"2026-10-25T00:00:00Z", "2026-10-25T00:30:00Z", "2026-10-25T02:00:00Z", "2026-10-25T02:30:00Z"}},
		// New York: 2026-03-08 02:00 EST → 03:00 EDT; 2026-11-01 02:00 EDT → 01:00 EST.
		{"New York gap shift", "America/New_York", "30 2 * * *", GapShift, OverlapOnce, "2026-03-07T12:00:00Z", []string{"2026-03-08T07:30:00Z", "2026-03-09T06:30:00Z"}},
		{"New York gap skip", "America/New_York", "30 2 * * *", GapSkip, OverlapOnce, "2026-03-07T12:00:00Z", []string{"2026-03-09T06:30:00Z"}},
		{"New York overlap once", "America/New_York", "30 1 * * *", GapShift, OverlapOnce, "2026-10-31T12:00:00Z", []string{"2026-11-01T05:30:00Z", "2026-11-02T06:30:00Z"}},
		{"New York overlap twice", "America/New_York", "30 1 * * *", GapShift, OverlapTwice, "2026-10-31T12:00:00Z", []string{"2026-11-01T05:30:00Z", "2026-11-01T06:30:00Z", "2026-11-02T06:30:00Z"}},
		// Lord Howe shifts by 30 minutes: 2026-04-05 02:00 +11 → 01:30 +10:30; 2026-10-04 02:00 +10:30 → 02:30 +11.
		{"Lord Howe overlap once", "Australia/Lord_Howe", "45 1 * * *", GapShift, OverlapOnce, "2026-04-04T00:00:00Z", []string{"2026-04-04T14:45:00Z", "2026-04-05T15:15:00Z"}},
		{"Lord Howe overlap twice", "Australia/Lord_Howe", "45 1 * * *", GapShift, OverlapTwice, "2026-04-04T00:00:00Z", []string{"2026-04-04T14:45:00Z", "2026-04-04T15:15:00Z", "2026-04-05T15:15:00Z"}},
		{"Lord Howe gap shift", "Australia/Lord_Howe", "15 2 * * *", GapShift, OverlapOnce, "2026-10-03T00:00:00Z", []string{"2026-10-03T15:45:00Z", "2026-10-04T15:15:00Z"}},
		{"Lord Howe gap skip", "Australia/Lord_Howe", "15 2 * * *", GapSkip, OverlapOnce, "2026-10-03T00:00:00Z", []string{"2026-10-04T15:15:00Z"}},
		// São Paulo 2018-11-04: midnight did not exist (00:00 −03 → 01:00 −02).
		{"Sao Paulo midnight gap shift", "America/Sao_Paulo", "0 0 * * *", GapShift, OverlapOnce, "2018-11-03T12:00:00Z", []string{"2018-11-04T03:00:00Z", "2018-11-05T02:00:00Z"}},
		{"Sao Paulo midnight gap skip", "America/Sao_Paulo", "0 0 * * *", GapSkip, OverlapOnce, "2018-11-03T12:00:00Z", []string{"2018-11-05T02:00:00Z"}},
		// Apia skipped 2011-12-30 entirely (−10 → +14).
		{"Apia lost day shift", "Pacific/Apia", "0 12 * * *", GapShift, OverlapOnce, "2011-12-29T00:00:00Z", []string{"2011-12-29T22:00:00Z", "2011-12-30T22:00:00Z", "2011-12-31T22:00:00Z"}},
		{"Apia lost day skip", "Pacific/Apia", "0 12 30 12 *", GapSkip, OverlapOnce, "2011-12-29T00:00:00Z", []string{"2012-12-29T22:00:00Z"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			params := fmt.Sprintf(`{"expression":%q,"timezone":%q,"dst_gap":%q,"dst_overlap":%q}`, tt.expr, tt.zone, tt.gap, tt.overlap)
			tm := mustParse(t, "core.crontimer", params, 1)
			got := slotsFrom(tm, ts(t, tt.from), len(tt.want))
			var want []time.Time
			for _, w := range tt.want {
				want = append(want, ts(t, w))
			}
			if !slices.EqualFunc(got, want, time.Time.Equal) {
				t.Errorf("%s %q gap=%s overlap=%s: slots after %s = %s, want %s", tt.zone, tt.expr, tt.gap, tt.overlap, tt.from, formatSlots(got), formatSlots(want))
			}
		})
	}
}

// A slot shifted out of a gap can come after the slot of a later wall
// time: on Lord Howe's 30-minute spring forward, 02:15 (shifted to 02:45)
// follows 02:40.
func TestCronDSTShiftedSlotOrder(t *testing.T) {
	tm := mustParse(t, "core.crontimer", `{"expression":"15,40 2 * * *","timezone":"Australia/Lord_Howe"}`, 1)
	got := slotsFrom(tm, ts(t, "2026-10-03T00:00:00Z"), 4)
	want := []time.Time{
		ts(t, "2026-10-03T15:40:00Z"), ts(t, "2026-10-03T15:45:00Z"),
		ts(t, "2026-10-04T15:15:00Z"), ts(t, "2026-10-04T15:40:00Z"),
	}
	if !slices.EqualFunc(got, want, time.Time.Equal) {
		t.Errorf("slots = %s, want %s", formatSlots(got), formatSlots(want))
	}
}

// dstWalk is every minute of real time in a window with its wall clock
// and whether the wall clock matches an expression.
type dstWalk struct {
	instants, walls []time.Time
	match           []bool
	matches         func(wall time.Time) bool
}

func newDSTWalk(t *testing.T, expr string, loc *time.Location, from, to time.Time) *dstWalk {
	t.Helper()
	norm, err := normaliseCron(expr)
	if err != nil {
		t.Fatal(err)
	}
	e := cronexpr.MustParse(norm)
	d := &dstWalk{matches: func(w time.Time) bool { return e.Next(w.Add(-time.Second)).Equal(w) }}
	for s := from.Add(-maxOffsetJump).Truncate(time.Minute); !s.After(to.Add(time.Minute)); s = s.Add(time.Minute) {
		_, off := s.In(loc).Zone()
		w := s.Add(time.Duration(off) * time.Second).UTC()
		d.instants, d.walls, d.match = append(d.instants, s), append(d.walls, w), append(d.match, d.matches(w))
	}
	return d
}

// dstOracle lists the slots in (from, to] of a minute-resolution cron
// expression by brute force: it walks every minute of real time, reads
// the wall clock, fires a matching wall time at its first (or every)
// occurrence, and fires matching wall times that a gap skipped over at
// the wall time read with the offset before the gap.
func (d *dstWalk) oracle(gap DSTGap, overlap DSTOverlap, from, to time.Time) []time.Time {
	seen := map[int64]bool{}
	var out []time.Time
	for i := 0; i+1 < len(d.instants); i++ {
		s, w := d.instants[i], d.walls[i]
		if d.match[i] {
			if !seen[w.Unix()] || overlap == OverlapTwice {
				out = append(out, s)
			}
			seen[w.Unix()] = true
		}
		if gap == GapShift {
			for g := w.Add(time.Minute); g.Before(d.walls[i+1]); g = g.Add(time.Minute) {
				if d.matches(g) {
					out = append(out, s.Add(g.Sub(w)))
				}
			}
		}
	}
	slices.SortFunc(out, time.Time.Compare)
	out = slices.CompactFunc(out, time.Time.Equal)
	return slices.DeleteFunc(out, func(s time.Time) bool { return !s.After(from) || s.After(to) })
}

func TestCronDSTMatchesOracle(t *testing.T) {
	transitions := []struct{ zone, at string }{
		{"Europe/Berlin", "2026-03-29T01:00:00Z"},
		{"Europe/Berlin", "2026-10-25T01:00:00Z"},
		{"America/New_York", "2026-03-08T07:00:00Z"},
		{"America/New_York", "2026-11-01T06:00:00Z"},
		{"Australia/Lord_Howe", "2026-04-04T15:00:00Z"},
		{"Australia/Lord_Howe", "2026-10-03T15:30:00Z"},
		{"America/Sao_Paulo", "2018-11-04T03:00:00Z"},
		{"America/Sao_Paulo", "2018-02-18T02:00:00Z"},
		{"Pacific/Apia", "2011-12-30T10:00:00Z"},
	}
	exprs := []string{"30 2 * * *", "*/20 * * * *", "45 1 * * *", "0 0 * * *", "* 2 * * *", "0,30 1-3 * * *", "0 23 * * *", "10 2,3 * * *", "15,40 2 * * *"}
	for _, tr := range transitions {
		loc, err := time.LoadLocation(tr.zone)
		if err != nil {
			t.Fatal(err)
		}
		at := ts(t, tr.at)
		from, to := at.Add(-25*time.Hour), at.Add(25*time.Hour)
		for _, expr := range exprs {
			walk := newDSTWalk(t, expr, loc, from, to)
			for _, gap := range []DSTGap{GapShift, GapSkip} {
				for _, overlap := range []DSTOverlap{OverlapOnce, OverlapTwice} {
					name := fmt.Sprintf("%s %s %q %s %s", tr.zone, tr.at, expr, gap, overlap)
					params := fmt.Sprintf(`{"expression":%q,"timezone":%q,"dst_gap":%q,"dst_overlap":%q}`, expr, tr.zone, gap, overlap)
					tm := mustParse(t, "core.crontimer", params, 1)
					want := walk.oracle(gap, overlap, from, to)
					var got []time.Time
					for s, ok := tm.Next(from); ok && !s.After(to); s, ok = tm.Next(s) {
						got = append(got, s)
					}
					if !slices.EqualFunc(got, want, time.Time.Equal) {
						t.Errorf("%s: slots = %s\nwant %s", name, formatSlots(got), formatSlots(want))
						continue
					}
					// Next from any point, and Last of any window, agree with the oracle.
					for k, after := 0, from; after.Before(to); k, after = k+1, after.Add(17*time.Minute+13*time.Second) {
						i, _ := slices.BinarySearchFunc(want, after, func(s, a time.Time) int {
							if s.After(a) {
								return 1
							}
							return -1
						})
						n, ok := tm.Next(after)
						if i < len(want) && (!ok || !n.Equal(want[i])) {
							t.Errorf("%s: Next(%v) = %v, %v; want %v", name, after, n, ok, want[i])
							break
						}
						if i > 0 && k%4 == 0 {
							l, ok := tm.Last(from, after)
							if !ok || !l.Equal(want[i-1]) {
								t.Errorf("%s: Last(%v, %v) = %v, %v; want %v", name, from, after, l, ok, want[i-1])
								break
							}
						}
					}
				}
			}
		}
	}
}

// Timers are shared by the engine's goroutines; cronexpr writes to its
// Expression during Next, so this fails under -race without the copy.
func TestCronConcurrentNext(t *testing.T) {
	tm := mustParse(t, "core.crontimer", `{"expression":"0 0 13 * FRI","timezone":"Europe/Berlin"}`, 1)
	want := slotsFrom(tm, ts(t, "2026-01-01T00:00:00Z"), 50)
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			if got := slotsFrom(tm, ts(t, "2026-01-01T00:00:00Z"), 50); !slices.EqualFunc(got, want, time.Time.Equal) {
				t.Errorf("goroutine %d: slots differ from a serial run", g)
			}
		})
	}
	wg.Wait()
}

// Last must not walk every slot of a long span: a per-second cron after a
// week down is found with a few dozen calls to next.
func TestCronLastIsLogarithmic(t *testing.T) {
	tm := mustParse(t, "core.crontimer", `{"expression":"* * * * * *","timezone":"Europe/Berlin"}`, 1)
	sparse := mustParse(t, "core.crontimer", `{"expression":"0 0 0 1 1 ?"}`, 1)
	tests := []struct {
		name            string
		tm              *Timer
		after, notAfter string
		want            string
	}{
		{"per second, a week", tm, "2026-03-25T00:00:00Z", "2026-04-01T00:00:00.5Z", "2026-04-01T00:00:00Z"},
		{"yearly, 30 years", sparse, "2000-01-01T00:00:00Z", "2030-06-01T00:00:00Z", "2030-01-01T00:00:00Z"},
		{"yearly, all of time", sparse, "0001-01-01T00:00:00Z", "9999-01-01T00:00:00Z", "2099-01-01T00:00:00Z"},
		{"per second, all of time", tm, "0001-01-01T00:00:00Z", "9999-01-01T00:00:00Z", "2099-12-31T22:59:59Z"},
	}
	for _, tt := range tests {
		c := &countingSchedule{s: tt.tm.cron}
		got, ok := lastBySearch(c, ts(t, tt.after), ts(t, tt.notAfter))
		if !ok || !got.Equal(ts(t, tt.want)) {
			t.Errorf("%s: Last = %v, %v; want %s", tt.name, got, ok, tt.want)
		}
		if c.calls > 200 {
			t.Errorf("%s: Last called next %d times, want ≤ 200", tt.name, c.calls)
		}
	}
}

type countingSchedule struct {
	s     schedule
	calls int
}

func (c *countingSchedule) next(t time.Time) (time.Time, bool) {
	c.calls++
	return c.s.next(t)
}

func TestFixDowSunday(t *testing.T) {
	tests := []struct{ in, want string }{
		{"*", "*"},
		{"MON-FRI", "MON-FRI"},
		{"5-7", "5,6,0"},
		{"fri-sun", "5,6,0"},
		{"0-7", "0,1,2,3,4,5,6,0"},
		{"sun-sun", "0"},
		{"7-7", "0"},
		{"1-7/3", "1,4,0"},
		{"1,5-7,3", "1,5,6,0,3"},
		{"5-7/x", "5-7/x"},
		{"5#2", "5#2"},
	}
	for _, tt := range tests {
		if got := fixDowSunday(tt.in); got != tt.want {
			t.Errorf("fixDowSunday(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

// FuzzCron drives cron expressions (and zones and DST policies) straight
// into Parse, where FuzzParse mostly finds broken JSON.
func FuzzCron(f *testing.F) {
	for i, e := range []string{
		"*/5 * * * * *", "0 0 13 * FRI", "0 0 ? * 5L 2030", "0 0 15W,L * ?", "0 0 LW * ?", "0 0 ? * MON#3",
		"@every 90s", "@weekly", "0 0 * * FRI-SUN/2", "59 59 23 31 12 ? 2099", "0 30 2 * * *", "*/7 1-5,20-23 * JAN-MAR,OCT *",
	} {
		f.Add(e, uint8(i), i%2 == 0, i%3 == 0, int64(1767225600+i*86399))
	}
	zones := []string{"UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "America/Sao_Paulo", "Pacific/Apia", "Asia/Kolkata"}
	f.Fuzz(func(t *testing.T, expr string, zone uint8, skip, twice bool, afterUnix int64) {
		gap, overlap := GapShift, OverlapOnce
		if skip {
			gap = GapSkip
		}
		if twice {
			overlap = OverlapTwice
		}
		params, err := json.Marshal(map[string]string{"expression": expr, "timezone": zones[int(zone)%len(zones)], "dst_gap": string(gap), "dst_overlap": string(overlap)})
		if err != nil {
			return
		}
		tm, err := Parse("core.crontimer", params, 1)
		if err != nil {
			var se *SpecError
			if !errors.As(err, &se) || se.Field != "trigger_params.expression" {
				t.Fatalf("Parse(%s) error %v: want a *SpecError on trigger_params.expression", params, err)
			}
			return
		}
		prev := time.Unix(afterUnix%(130*365*24*3600), 0)
		for range 5 {
			n, ok := tm.Next(prev)
			if !ok {
				break
			}
			if !n.After(prev) {
				t.Fatalf("%s: Next(%v) = %v, not after", params, prev, n)
			}
			if l, ok := tm.Last(prev, n); !ok || !l.Equal(n) {
				t.Fatalf("%s: Last(%v, %v) = %v, %v; want %v", params, prev, n, l, ok, n)
			}
			prev = n
		}
	})
}

// A sparse schedule far from after skips the zone's periods in between
// rather than walking them, and finds the same slots.
func TestCronSparseInZone(t *testing.T) {
	tm := mustParse(t, "core.crontimer", `{"expression":"0 0 0 29 2 ?","timezone":"Europe/Berlin"}`, 1)
	got := slotsFrom(tm, time.Time{}, 40)
	if len(got) != 32 { // leap years 1972…2096
		t.Fatalf("Feb 29 slots from the zero time: %d, want 32: %s", len(got), formatSlots(got))
	}
	for i, s := range got {
		local := s.In(tm.Location)
		if y := 1972 + 4*i; local.Year() != y || local.Month() != time.February || local.Day() != 29 || local.Hour() != 0 || local.Minute() != 0 {
			t.Errorf("slot %d = %v, want %d-02-29 00:00 Berlin time", i, local, y)
		}
	}
}

// The day cache (tod) must give exactly what cronexpr gives on its own.
func TestCronDayCacheMatchesCronexpr(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for _, expr := range []string{
		"*/10 9-17 * * MON-FRI", "0 */7 * 13 * FRI", "* * 1 L * ?", "0 0 12 ? * 5#3", "*/30 * * 15W * ?",
		"0 0 * 1,15 * SUN", "5 4 * * 0-7", "0 0 0 LW * ? 2026-2030", "*/20 * * * * 1-5",
	} {
		norm, err := normaliseCron(expr)
		if err != nil {
			t.Fatalf("normaliseCron(%q): %v", expr, err)
		}
		c, err := newCron(expr, time.UTC, GapShift, OverlapOnce)
		if err != nil {
			t.Fatalf("newCron(%q): %v", expr, err)
		}
		if c.tod == nil {
			t.Fatalf("newCron(%q): no day cache for a day-restricted expression", expr)
		}
		plain := cronexpr.MustParse(norm)
		from := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
		for i := 0; i < 3000; i++ {
			if i%100 == 0 { // jump somewhere else, sometimes backwards
				from = time.Date(2025, 6, 1, 0, 0, 0, 0, time.UTC).Add(time.Duration(r.Int64N(int64(3 * 365 * 24 * time.Hour))))
			}
			got, want := c.nextWall(from), plain.Next(from)
			if !got.Equal(want) {
				t.Fatalf("%q: nextWall(%v) = %v, cronexpr says %v", expr, from, got, want)
			}
			if want.IsZero() {
				break
			}
			from = want
		}
	}
}
