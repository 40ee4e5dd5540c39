package scheduler

import (
	"fmt"
	"strings"
	"time"
)

// A Finding is something about a valid schedule that its author likely did not
// mean: it fires no more, a clock change makes it fire more or fewer times on a
// day than on the days around it, or a cron expression fires every second or
// minute of a span where it names one minute or hour.
type Finding struct {
	Kind    FindingKind
	At      time.Time // FindingDST: the clock change; otherwise zero
	Message string
}

// FindingKind names what a Finding is about.
type FindingKind string

const (
	FindingNeverFires FindingKind = "never_fires" // no slot after the time linted from
	FindingDST        FindingKind = "dst"         // a clock change adds or removes fires
	FindingTooOften   FindingKind = "too_often"   // every second (or minute) of a named minute (or hour)
)

// LintHorizon is how far ahead Lint looks for clock changes.
const LintHorizon = 366 * 24 * time.Hour

// dstWindow is the span around a clock change whose fires Lint compares with a
// day without one: wider than any change of offset in the zone database.
const dstWindow = 3 * time.Hour

// maxDSTFires bounds the fires counted in a window: a schedule that fires more
// often than once a minute loses or gains fires at every clock change by design,
// and counting them would cost a create.
const maxDSTFires = int(2*dstWindow/time.Minute) + 1

// Lint reports what Finding describes, for the year after from. It is cheap
// enough for every create of a rule (a few hundred slot computations at most).
func Lint(t *Timer, from time.Time) []Finding {
	var out []Finding
	if _, ok := t.Next(from); !ok {
		what := "the schedule has no slot"
		switch t.Kind {
		case KindDatetime:
			what = "fire_at " + t.FireAt.UTC().Format(time.RFC3339) + " is past"
		case KindCron:
			what = "the expression " + quote(t.Expression) + " matches no time"
		}
		return append(out, Finding{Kind: FindingNeverFires,
			Message: fmt.Sprintf("never fires after %s: %s", from.UTC().Format(time.RFC3339), what)})
	}
	if t.shape() != shapeCron {
		return out
	}
	if f, ok := lintFrequency(t.Expression); ok {
		out = append(out, f)
	}
	return append(out, lintDST(t, from)...)
}

// lintDST finds the clock changes of the timer's zone in the horizon after which
// the schedule fires a different number of times around the change than a day
// without one fires at the same wall-clock times: a slot in a skipped hour that
// does not fire (dst_gap skip) or one in a repeated hour that fires twice
// (dst_overlap twice), or hourly slots that merge.
func lintDST(t *Timer, from time.Time) []Finding {
	c := t.cronSchedule()
	if c == nil || c.utc {
		return nil
	}
	var out []Finding
	end := from.Add(LintHorizon)
	for at := from.In(c.loc); at.Before(end); {
		_, change := at.ZoneBounds()
		if change.IsZero() || !change.Before(end) {
			break
		}
		_, before := change.Add(-time.Second).Zone()
		_, after := change.Zone()
		at = change
		if before == after {
			continue // a change of name only
		}
		if f, ok := lintChange(t, c, change, before, after); ok {
			out = append(out, f)
		}
	}
	return out
}

// lintChange compares the fires in the real window of dstWindow either side of
// the change at change with those of the same wall-clock span on a zone that
// keeps the offset before.
func lintChange(t *Timer, c *cronSchedule, change time.Time, before, after int) (Finding, bool) {
	from, to := change.Add(-dstWindow), change.Add(dstWindow)
	got, ok := slotsIn(t.Next, from, to)
	if !ok {
		return Finding{}, false
	}
	// Compiled apart from the shared cache (newCron): a fixed zone is a new
	// location each time, and would crowd the nodes' schedules out.
	fl := time.FixedZone("", before)
	fixed, err := compileSchedule(t.Expression, fl, c.gap, c.overlap)
	if err != nil {
		return Finding{}, false
	}
	// The same wall span: it ends at to's wall time under the offset after.
	wallLen := to.Sub(from) + time.Duration(after-before)*time.Second
	want, ok := slotsIn(fixed.next, from, from.Add(wallLen))
	if !ok || len(got) == len(want) {
		return Finding{}, false
	}
	zone := c.loc.String()
	local := func(s []time.Time, loc *time.Location) string {
		if len(s) == 0 {
			return "none"
		}
		var parts []string
		for i, x := range s {
			if i == maxListed {
				parts = append(parts, fmt.Sprintf("and %d more", len(s)-i))
				break
			}
			parts = append(parts, x.In(loc).Format("15:04:05 -07:00"))
		}
		return strings.Join(parts, ", ")
	}
	return Finding{Kind: FindingDST, At: change, Message: fmt.Sprintf(
		"%s: %s moves its clocks from %s to %s (%s → %s); the schedule fires %d %s from %s to %s local time (%s), "+
			"where a day without the change fires %d (%s); dst_gap is %s, dst_overlap is %s",
		change.In(c.loc).Format("2006-01-02"), zone, change.In(fl).Format("15:04"), change.In(c.loc).Format("15:04"),
		offset(before), offset(after), len(got), times(len(got)), from.In(c.loc).Format("15:04"), to.In(c.loc).Format("15:04"),
		local(got, c.loc), len(want), local(want, fl), c.gap, c.overlap)}, true
}

// maxListed bounds the slots a DST finding names.
const maxListed = 6

// slotsIn lists the slots of next in [from, to), or false past maxDSTFires.
func slotsIn(next func(time.Time) (time.Time, bool), from, to time.Time) ([]time.Time, bool) {
	var out []time.Time
	for s, ok := next(from.Add(-time.Nanosecond)); ok && s.Before(to); s, ok = next(s) {
		if len(out) == maxDSTFires {
			return nil, false
		}
		out = append(out, s)
	}
	return out, true
}

func times(n int) string {
	if n == 1 {
		return "time"
	}
	return "times"
}

// offset formats a UTC offset in seconds as ±hh:mm.
func offset(sec int) string {
	sign := '+'
	if sec < 0 {
		sign, sec = '-', -sec
	}
	return fmt.Sprintf("%c%02d:%02d", sign, sec/3600, sec%3600/60)
}

// cronUnits are the names of the fields lintFrequency reads, finest first.
var cronUnits = [...]string{"second", "minute", "hour"}

// lintFrequency finds a seconds (or minutes) field that matches anything under a
// coarser field of one value: `* 5 * * * *` fires at every second of minute 5,
// 60 times in a row each hour, where its author most likely meant once at
// minute 5 (`0 5 * * * *`). A step or a list is taken as meant (`*/10 5 * * * *`).
func lintFrequency(expr string) (Finding, bool) {
	given := splitFields(expr)
	if len(given) < 5 || strings.HasPrefix(expr, "@") {
		return Finding{}, false
	}
	norm, err := normaliseCron(expr)
	if err != nil {
		return Finding{}, false
	}
	f := strings.Fields(norm)
	for k := 1; k <= 2; k++ { // the coarser field of one value: minute, hour
		if !isNumber(f[k]) {
			continue
		}
		var free []int // the finer fields that match anything
		runs := 1      // the fires in a row: 60 for each free field, if the others are one value
		for j := range k {
			switch {
			case isAnyValue(f[j]):
				free = append(free, j)
				runs *= 60
			case !isNumber(f[j]):
				runs = 0 // a step, range or list: how many in a row is not worth saying
			}
		}
		if len(free) == 0 {
			return Finding{}, false
		}
		fixed := append([]string(nil), f...)
		for _, j := range free {
			fixed[j] = "0"
		}
		inARow := ""
		if runs > 0 {
			inARow = fmt.Sprintf(" (%s times in a row)", map[int]string{60: "60", 3600: "3,600"}[runs])
		}
		return Finding{Kind: FindingTooOften, Message: fmt.Sprintf(
			"%s fires every %s of %s %s%s, as its %s field is *; to fire once then, write %s",
			quote(expr), cronUnits[free[0]], cronUnits[k], f[k], inARow, cronUnits[free[0]], quote(denormalise(fixed, len(given))))}, true
	}
	return Finding{}, false
}

// denormalise writes 7 normalised fields back in the author's form of n fields.
func denormalise(f []string, n int) string {
	switch n {
	case 5:
		return strings.Join(f[1:6], " ")
	case 6:
		return strings.Join(f[:6], " ")
	}
	return strings.Join(f, " ")
}

func isNumber(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

func isAnyValue(s string) bool { return s == "*" || s == "*/1" || s == "?" }
