package scheduler

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/cronexpr"
)

// cronSchedule evaluates a cron expression on the wall clock of a time zone
// and maps each matching wall time to real instants:
//
//   - a wall time that exists once fires once;
//   - one in a spring-forward gap fires shifted by the gap's length (GapShift,
//     as time.Date does) or not at all (GapSkip);
//   - one in a fall-back overlap fires at its first occurrence (OverlapOnce)
//     or at both (OverlapTwice).
//
// The expression is evaluated by cronexpr on times in UTC whose fields are
// the zone's wall clock, so cronexpr never sees a DST transition.
type cronSchedule struct {
	// expr is shared and read-only: cronexpr's Next writes a field of its
	// receiver, so every evaluation runs on a copy.
	expr *cronexpr.Expression
	// tod is expr with any day of month and of week: on a day known to
	// hold a slot it gives the same answer without cronexpr's per-call
	// map of the month's days (5 µs and 12 allocations). nil when expr
	// restricts neither.
	tod *cronexpr.Expression
	// dayWithSlot is 1 + the wall day (days since 1970) of the last slot
	// expr returned, 0 if none. Any day stored holds a slot, so a stale
	// value read by a concurrent Next is still right.
	dayWithSlot atomic.Int64

	loc     *time.Location
	utc     bool
	gap     DSTGap
	overlap DSTOverlap
}

var (
	// cronMin is where evaluation starts at the earliest: cronexpr knows no
	// year before 1970 and reads a zero time as "no time".
	cronMin = time.Date(1969, 12, 31, 23, 59, 59, 0, time.UTC)
	// probeFrom is where Parse checks that an expression matches at all.
	probeFrom = cronMin
)

const (
	// maxOffsetJump bounds the change of UTC offset at one transition
	// (−12h to +14h); only that close to a transition can a gap or an
	// overlap put a slot before the zone's regular walls.
	maxOffsetJump = 27 * time.Hour
	// maxZoneSteps bounds the walk over zone periods in next (two a year;
	// cronexpr stops in 2099).
	maxZoneSteps = 1000
)

// descriptors are the @-forms, as 7-field expressions (seconds … year).
var descriptors = map[string]string{
	"@yearly":   "0 0 0 1 1 * *",
	"@annually": "0 0 0 1 1 * *",
	"@monthly":  "0 0 0 1 * * *",
	"@weekly":   "0 0 0 * * 0 *",
	"@daily":    "0 0 0 * * * *",
	"@midnight": "0 0 0 * * * *",
	"@hourly":   "0 0 * * * * *",
}

func newCron(expr string, loc *time.Location, gap DSTGap, overlap DSTOverlap) (*cronSchedule, error) {
	key := scheduleKey{expr, loc, gap, overlap}
	schedules.Lock()
	c, ok := schedules.m[key]
	schedules.Unlock()
	if ok {
		return c, nil
	}
	c, err := compileSchedule(expr, loc, gap, overlap)
	if err != nil {
		return nil, err
	}
	schedules.Lock()
	if len(schedules.m) >= maxCompiled || schedules.m == nil {
		schedules.m = make(map[scheduleKey]*cronSchedule)
	}
	schedules.m[key] = c
	schedules.Unlock()
	return c, nil
}

// schedules caches compiled schedules by what they are compiled from, so that
// the timers of a million rules that share a few expressions and zones share
// a few schedules: one allocation each rather than one per timer, and no
// normalising of the text at start (DecodeTimer). Sharing is safe: a schedule
// is read-only but for dayWithSlot, which holds a day with a slot of the
// expression in the zone whichever timer stored it. Locations are cached by
// name (loadLocation), so the pointer stands for the zone. Bounded: emptied
// when full.
var schedules struct {
	sync.Mutex
	m map[scheduleKey]*cronSchedule
}

type scheduleKey struct {
	expr    string
	loc     *time.Location
	gap     DSTGap
	overlap DSTOverlap
}

func compileSchedule(expr string, loc *time.Location, gap DSTGap, overlap DSTOverlap) (*cronSchedule, error) {
	norm, err := normaliseCron(expr)
	if err != nil {
		return nil, err
	}
	if gap == "" {
		gap = GapShift
	}
	if overlap == "" {
		overlap = OverlapOnce
	}
	cc, err := compileCron(norm)
	if errors.Is(err, errNoSlot) {
		return nil, specErr("trigger_params.expression", "%s %v", quote(expr), err)
	} else if err != nil {
		return nil, specErr("trigger_params.expression", "%s: %v", quote(expr), err)
	}
	return &cronSchedule{expr: cc.expr, tod: cc.tod, loc: loc, utc: loc == time.UTC, gap: gap, overlap: overlap}, nil
}

var errNoSlot = errors.New("matches no time between 1970 and 2099")

// compiledCron is a checked expression, shareable between timers.
type compiledCron struct{ expr, tod *cronexpr.Expression }

// compiled caches checked expressions by normalised text: cronexpr.Parse
// runs a dozen regular expressions per field, a node parses every rule
// at start and on each reconcile, and most rules share a few expressions.
// Bounded: emptied when full.
var compiled struct {
	sync.Mutex
	m map[string]compiledCron
}

const maxCompiled = 4096

func compileCron(norm string) (compiledCron, error) {
	compiled.Lock()
	cc, ok := compiled.m[norm]
	compiled.Unlock()
	if ok {
		return cc, nil
	}
	e, err := parseCronexpr(norm)
	if err != nil {
		return compiledCron{}, err
	}
	cc.expr = e
	if f := strings.Fields(norm); !isAnyDay(f[3]) || !isAnyDay(f[5]) {
		f[3], f[5] = "*", "*"
		if cc.tod, err = parseCronexpr(strings.Join(f, " ")); err != nil {
			return compiledCron{}, err
		}
	}
	if err := checkFields(norm); err != nil {
		return compiledCron{}, err
	}
	probe := cronSchedule{expr: cc.expr}
	if w := probe.nextWall(probeFrom); w.IsZero() {
		return compiledCron{}, errNoSlot
	}
	compiled.Lock()
	if len(compiled.m) >= maxCompiled || compiled.m == nil {
		compiled.m = make(map[string]compiledCron)
	}
	compiled.m[norm] = cc
	compiled.Unlock()
	return cc, nil
}

// normaliseCron turns the forms timerd accepts into cronexpr's 7 fields
// (seconds minutes hours day-of-month month day-of-week year):
// 5 fields are minutes … day-of-week at second 0; 6 fields are seconds first
// (Attune's parser; cronexpr would read them as minutes … year).
func normaliseCron(expr string) (string, error) {
	fields := splitFields(expr)
	if len(fields) == 1 && strings.HasPrefix(fields[0], "@") {
		if d, ok := descriptors[strings.ToLower(fields[0])]; ok {
			return d, nil
		}
		return "", specErr("trigger_params.expression", "unknown descriptor %s: want @yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly or @every <duration>", quote(fields[0]))
	}
	// cronexpr substitutes descriptors anywhere in the string.
	if strings.Contains(expr, "@") {
		return "", specErr("trigger_params.expression", "%s: '@' is only valid at the start of a descriptor such as @daily", quote(expr))
	}
	switch len(fields) {
	case 5:
		fields = append([]string{"0"}, append(fields, "*")...)
	case 6:
		fields = append(fields, "*")
	case 7:
	default:
		return "", specErr("trigger_params.expression", "%d fields, want 5, 6 or 7", len(fields))
	}
	fields[5] = fixDowSunday(fields[5])
	return strings.Join(fields, " "), nil
}

// splitFields splits on the white space cronexpr's field finder (`\S+`)
// knows, so the count here is the count cronexpr sees.
func splitFields(s string) []string {
	return strings.FieldsFunc(s, func(r rune) bool { return r < 0x80 && isSpace(byte(r)) })
}

func isSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f'
}

var dowNumbers = map[string]int{
	"0": 0, "00": 0, "1": 1, "01": 1, "2": 2, "02": 2, "3": 3, "03": 3, "4": 4, "04": 4,
	"5": 5, "05": 5, "6": 6, "06": 6, "7": 7, "07": 7,
	"sun": 0, "mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6,
	"sunday": 0, "monday": 1, "tuesday": 2, "wednesday": 3, "thursday": 4, "friday": 5, "saturday": 6,
}

// fixDowSunday rewrites day-of-week ranges that end on Sunday ("5-7",
// "FRI-SUN", "0-7"), which cronexpr truncates to Saturday or widens to the
// whole week, as the explicit list of days they mean.
func fixDowSunday(field string) string {
	entries := strings.Split(field, ",")
	changed := false
	for i, entry := range entries {
		rng, stepText, hasStep := strings.Cut(entry, "/")
		lo, hi, isRange := strings.Cut(strings.ToLower(rng), "-")
		if !isRange {
			continue
		}
		first, ok1 := dowNumbers[lo]
		last, ok2 := dowNumbers[hi]
		if !ok1 || !ok2 || last%7 != 0 {
			continue
		}
		step := 1
		if hasStep {
			n, err := strconv.Atoi(stepText)
			if err != nil || n < 1 || n > 7 {
				continue // cronexpr reports it
			}
			step = n
		}
		if first > 0 || hi == "7" || hi == "07" {
			last = 7 // Sunday at the end of the week
		}
		var days []string
		for d := first; d <= last; d += step {
			days = append(days, strconv.Itoa(d%7))
		}
		entries[i] = strings.Join(days, ",")
		changed = true
	}
	if !changed {
		return field
	}
	return strings.Join(entries, ",")
}

// parseCronexpr is cronexpr.Parse, whose behaviour on malformed input is
// undetermined, with panics turned into errors.
func parseCronexpr(s string) (e *cronexpr.Expression, err error) {
	defer func() {
		if r := recover(); r != nil {
			e, err = nil, fmt.Errorf("malformed expression")
		}
	}()
	return cronexpr.Parse(s)
}

// checkFields rejects fields that match no value at all, such as the
// reversed range "5-2". cronexpr accepts them and then panics or searches
// hour by hour until 2099. Only a range can be empty, so only fields with
// one are probed, each in an expression whose other fields stop the search
// within a year.
func checkFields(norm string) error {
	f := strings.Fields(norm) // 7 fields, normalised
	probes := []struct {
		name string
		idx  int
		expr func(string) string
	}{
		{"second", 0, func(v string) string { return v + " 0 0 1 1 ? 1970" }},
		{"minute", 1, func(v string) string { return "0 " + v + " 0 1 1 ? 1970" }},
		{"hour", 2, func(v string) string { return "0 0 " + v + " 1 1 ? 1970" }},
		{"month", 4, func(v string) string { return "0 0 0 1 " + v + " ? 1970" }},
		{"year", 6, func(v string) string { return "0 0 0 1 1 ? " + v }},
	}
	for _, p := range probes {
		v := f[p.idx]
		if !strings.Contains(v, "-") {
			continue
		}
		e, err := parseCronexpr(p.expr(v))
		if err != nil {
			return fmt.Errorf("%s field %q: %w", p.name, v, err)
		}
		c := cronSchedule{expr: e}
		if c.nextWall(probeFrom).IsZero() {
			return fmt.Errorf("%s field %q matches no value", p.name, v)
		}
	}
	return nil
}

func isAnyDay(field string) bool { return field == "*" || field == "?" }

// nextWall returns the first wall time strictly after from (a time in UTC
// standing for a wall clock) that matches, or the zero time.
func (c *cronSchedule) nextWall(from time.Time) time.Time {
	if from.Before(cronMin) {
		from = cronMin
	}
	from = from.UTC()
	if c.tod == nil {
		return evalNext(c.expr, from)
	}
	day := from.Unix() / 86400
	if from.Unix() >= 0 && c.dayWithSlot.Load() == day+1 {
		if w := evalNext(c.tod, from); !w.IsZero() && w.Unix()/86400 == day {
			return w
		}
	}
	w := evalNext(c.expr, from)
	if !w.IsZero() {
		c.dayWithSlot.Store(w.Unix()/86400 + 1)
	}
	return w
}

// evalNext is e.Next(from), run on a copy of e (cronexpr's Next writes to
// its receiver) with a panic, which cronexpr does not rule out on odd
// input, taken as "no slot".
func evalNext(e *cronexpr.Expression, from time.Time) (w time.Time) {
	defer func() {
		if recover() != nil {
			w = time.Time{}
		}
	}()
	cp := *e
	if w = cp.Next(from); !w.After(from) {
		return time.Time{}
	}
	return w
}

func (c *cronSchedule) next(after time.Time) (time.Time, bool) {
	if c.utc {
		w := c.nextWall(after)
		return w, !w.IsZero()
	}
	// Walk the zone's periods of constant offset from the one holding after.
	// In a period [start, end) with offset off, the slots are the matching
	// walls in [start+off, end+off) mapped to wall−off, less those that
	// already fired in the previous period's overlap (OverlapOnce), plus
	// the walls of the gap before start shifted by it (GapShift).
	t, q := after, after // slots must be > t; q is in the period looked at
	for range maxZoneSteps {
		off, start, end := zoneOf(q, c.loc)
		from := t.Add(off)
		var best time.Time
		if !start.IsZero() && t.Sub(start) < maxOffsetJump {
			_, prev := start.Add(-time.Second).In(c.loc).Zone()
			prevOff := time.Duration(prev) * time.Second
			switch {
			case prevOff > off && c.overlap == OverlapOnce:
				// Walls in [start+off, start+prevOff) fired before start.
				if lim := start.Add(prevOff - time.Nanosecond); lim.After(from) {
					from = lim
				}
			case prevOff < off && c.gap == GapShift:
				// Walls in [start+prevOff, start+off) do not exist.
				gfrom := t.Add(prevOff)
				if lim := start.Add(prevOff - time.Nanosecond); lim.After(gfrom) {
					gfrom = lim
				}
				if w := c.nextWall(gfrom); !w.IsZero() && w.Before(start.Add(off)) {
					best = w.Add(-prevOff)
				}
			}
		}
		w := c.nextWall(from)
		if !w.IsZero() && (end.IsZero() || w.Before(end.Add(off))) {
			if s := w.Add(-off); best.IsZero() || s.Before(best) {
				best = s
			}
		}
		if !best.IsZero() {
			return best.In(c.loc), true
		}
		if w.IsZero() || end.IsZero() {
			return time.Time{}, false
		}
		// A slot after t comes from a wall ≥ w, so lies at or after
		// w − maxOffsetJump, or from an earlier wall, so lies before
		// t + maxOffsetJump. If this period covered the latter and found
		// nothing, skip the periods before the former.
		q = end
		if skipTo := w.Add(-maxOffsetJump); end.Sub(t) > maxOffsetJump && skipTo.After(end) {
			q = skipTo
		}
		t = q.Add(-time.Nanosecond)
	}
	return time.Time{}, false
}

// zoneOf returns the UTC offset in effect at t and the bounds of the period
// it holds for (zero: unbounded).
func zoneOf(t time.Time, loc *time.Location) (off time.Duration, start, end time.Time) {
	lt := t.In(loc)
	_, o := lt.Zone()
	start, end = lt.ZoneBounds()
	return time.Duration(o) * time.Second, start, end
}
