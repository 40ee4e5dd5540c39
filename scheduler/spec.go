package scheduler

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Trigger refs timerd serves.
const (
	refInterval = "core.intervaltimer"
	refCron     = "core.crontimer"
	refDatetime = "core.datetimetimer"
	refTimer    = "core.timer" // seed and older tagged forms; the kind is inferred
)

// Input bounds: anything larger is rejected before any work is done on it.
const (
	maxParamsBytes     = 1 << 20
	maxExpressionBytes = 1024
	maxTimezoneBytes   = 128
	maxShownBytes      = 64 // of a bad value quoted back in an error
	maxInterval        = 36500 * 24 * time.Hour
)

// SpecError is a bad trigger: Field names the offending input
// ("trigger_ref", "trigger_params", "trigger_params.interval", …).
type SpecError struct {
	Field  string
	Reason string
}

func (e *SpecError) Error() string { return e.Field + ": " + e.Reason }

func specErr(field, format string, args ...any) *SpecError {
	return &SpecError{Field: field, Reason: fmt.Sprintf(format, args...)}
}

// TimerTriggers returns the trigger refs timerd serves (a new slice each call).
func TimerTriggers() []string { return []string{refInterval, refCron, refDatetime, refTimer} }

// IsTimerTrigger reports whether timerd serves triggerRef.
func IsTimerTrigger(triggerRef string) bool {
	switch triggerRef {
	case refInterval, refCron, refDatetime, refTimer:
		return true
	}
	return false
}

// internRef returns the constant equal to ref, so that a parsed Timer does
// not keep the caller's copy of the string (one allocation per rule).
func internRef(ref string) string {
	for _, c := range [...]string{refInterval, refCron, refDatetime, refTimer} {
		if ref == c {
			return c
		}
	}
	return ref
}

// Parse turns (trigger_ref, trigger_params) into a Timer. ruleID seeds the
// stable phase of interval timers that have no start_at. Parse is pure: the
// same input gives the same Timer on every node and at every time.
func Parse(triggerRef string, params []byte, ruleID int64) (*Timer, error) {
	if !IsTimerTrigger(triggerRef) {
		return nil, specErr("trigger_ref", "%s is not a timer trigger", quote(triggerRef))
	}
	p, err := decodeParams(params)
	if err != nil {
		return nil, err
	}
	t := &Timer{TriggerRef: internRef(triggerRef)}
	if err := p.policies(t); err != nil {
		return nil, err
	}
	kind := Kind("")
	switch triggerRef {
	case refInterval:
		kind = KindInterval
	case refCron:
		kind = KindCron
	case refDatetime:
		kind = KindDatetime
	case refTimer:
		if kind, err = p.inferKind(); err != nil {
			return nil, err
		}
	}
	t.Kind = kind
	switch kind {
	case KindInterval:
		err = p.interval(t, ruleID)
	case KindCron:
		err = p.cron(t, ruleID)
	case KindDatetime:
		err = p.datetime(t)
	}
	if err != nil {
		return nil, err
	}
	if t.Interval > 0 && t.Jitter >= t.Interval {
		// A cron's jitter is kept below the gap to its next slot as it fires (FireTime).
		return nil, specErr("trigger_params.jitter", "%v must be shorter than the interval, %v: a rule's slots never reorder", t.Jitter, t.Interval)
	}
	return t, nil
}

// Next returns the first slot strictly after after, or false if there is none.
// It allocates nothing for interval and datetime timers, parsed or built by
// hand: the engine calls it on every fire.
func (t *Timer) Next(after time.Time) (time.Time, bool) {
	after = after.Round(0)
	switch t.shape() {
	case shapeInterval:
		return intervalSchedule{anchor: t.Anchor, period: t.Interval}.next(after)
	case shapeDatetime:
		return oneShot{at: t.FireAt}.next(after)
	case shapeCron:
		if c := t.cronSchedule(); c != nil {
			return c.next(after)
		}
	}
	return time.Time{}, false
}

// Last returns the latest slot s with after < s <= notAfter, or false. It is
// cheap however long the span: arithmetic for intervals, a bisection over
// Next for cron.
func (t *Timer) Last(after, notAfter time.Time) (time.Time, bool) {
	after, notAfter = after.Round(0), notAfter.Round(0)
	if !notAfter.After(after) {
		return time.Time{}, false
	}
	switch t.shape() {
	case shapeInterval:
		return intervalSchedule{anchor: t.Anchor, period: t.Interval}.last(after, notAfter)
	case shapeDatetime:
		return oneShot{at: t.FireAt}.last(after, notAfter)
	case shapeCron:
		if c := t.cronSchedule(); c != nil {
			return lastBySearch(c, after, notAfter)
		}
	}
	return time.Time{}, false
}

// shape is which arithmetic gives a timer's slots.
type shape uint8

const (
	shapeNone shape = iota
	shapeInterval
	shapeDatetime
	shapeCron
)

// shape reads the slot arithmetic from the exported fields, so that a Timer
// built by hand rather than by Parse works too.
func (t *Timer) shape() shape {
	switch {
	case t.cron != nil:
		return shapeCron
	case t.Kind == KindDatetime:
		return shapeDatetime
	case t.Interval > 0 && (t.Kind == KindInterval || t.Kind == KindCron):
		return shapeInterval // a cron "@every d" is an interval
	case t.Kind == KindCron:
		return shapeCron
	}
	return shapeNone
}

// cronSchedule is the compiled expression: Parse's, or for a Timer built
// by hand one compiled on each call (nil if the expression is bad).
func (t *Timer) cronSchedule() *cronSchedule {
	if t.cron != nil {
		return t.cron
	}
	loc := t.Location
	if loc == nil {
		loc = time.UTC
	}
	c, err := newCron(t.Expression, loc, t.DSTGap, t.DSTOverlap)
	if err != nil {
		return nil
	}
	return c
}

// Equal reports whether two timers have the same schedule and policies, and
// the same fields that show in an event's payload (trigger ref, expression,
// time zone). Parsing the same input twice gives Equal timers.
func (t *Timer) Equal(o *Timer) bool {
	if t == nil || o == nil {
		return t == o
	}
	return t.TriggerRef == o.TriggerRef &&
		t.Kind == o.Kind &&
		t.Interval == o.Interval &&
		t.Anchor.Equal(o.Anchor) &&
		t.Expression == o.Expression &&
		t.Timezone == o.Timezone &&
		t.DSTGap == o.DSTGap &&
		t.DSTOverlap == o.DSTOverlap &&
		t.FireAt.Equal(o.FireAt) &&
		t.Misfire == o.Misfire &&
		t.MisfireGrace == o.MisfireGrace &&
		t.Jitter == o.Jitter
}

// oneShot is a datetime timer's single slot.
type oneShot struct{ at time.Time }

func (o oneShot) next(after time.Time) (time.Time, bool) {
	return o.at, o.at.After(after)
}

func (o oneShot) last(after, notAfter time.Time) (time.Time, bool) {
	return o.at, o.at.After(after) && !o.at.After(notAfter)
}

// lastBySearch finds the last slot in (after, notAfter] with O(log span)
// calls to next: first a window ending at notAfter that holds a slot,
// doubling its width; then a bisection for the last slot in it. Slots are
// at least a second apart, which bounds the bisection.
func lastBySearch(s schedule, after, notAfter time.Time) (time.Time, bool) {
	lo := after
	for width := time.Second; ; width *= 2 {
		if width < notAfter.Sub(after) && width < 1<<62 { // Sub saturates; width stops before it overflows
			lo = notAfter.Add(-width)
		} else {
			lo = after
		}
		if n, ok := s.next(lo); ok && !n.After(notAfter) {
			break
		}
		if lo.Equal(after) {
			return time.Time{}, false
		}
	}
	hi := notAfter
	// Invariant: a slot lies in (lo, hi]; the answer is the last one.
	for {
		first, _ := s.next(lo)
		second, ok := s.next(first)
		if !ok || second.After(hi) {
			return first, true
		}
		mid := second.Add(hi.Sub(second) / 2)
		if m, ok := s.next(mid); ok && !m.After(hi) {
			lo = mid
		} else {
			lo, hi = first, mid // second is in (first, mid]
		}
	}
}

// params is a decoded trigger_params object.
type params map[string]json.RawMessage

func decodeParams(b []byte) (params, error) {
	if len(b) > maxParamsBytes {
		return nil, specErr("trigger_params", "%d bytes, limit %d", len(b), maxParamsBytes)
	}
	b = bytes.TrimSpace(b)
	if len(b) == 0 || string(b) == "null" {
		return nil, specErr("trigger_params", "required, got %s", orNothing(string(b)))
	}
	if b[0] != '{' {
		return nil, specErr("trigger_params", "must be a JSON object, got %s", jsonType(b))
	}
	var p params
	if err := json.Unmarshal(b, &p); err != nil {
		return nil, specErr("trigger_params", "invalid JSON: %v", err)
	}
	return p, nil
}

// raw returns a key's value; null counts as absent.
func (p params) raw(key string) (json.RawMessage, bool) {
	r, ok := p[key]
	if !ok || string(bytes.TrimSpace(r)) == "null" {
		return nil, false
	}
	return r, true
}

func (p params) has(key string) bool {
	_, ok := p.raw(key)
	return ok
}

// str returns a string key; absent or null gives "", false.
func (p params) str(key string) (string, bool, error) {
	r, ok := p.raw(key)
	if !ok {
		return "", false, nil
	}
	var s string
	if err := json.Unmarshal(r, &s); err != nil {
		return "", false, specErr("trigger_params."+key, "must be a string, got %s", jsonType(r))
	}
	return s, true, nil
}

// positiveInt returns a required positive integer key.
func (p params) positiveInt(key string) (int64, error) {
	field := "trigger_params." + key
	r, ok := p[key]
	if !ok {
		return 0, specErr(field, "required: a positive integer")
	}
	text := string(bytes.TrimSpace(r))
	n, err := strconv.ParseInt(text, 10, 64)
	if err != nil || n <= 0 {
		if len(text) > 0 && (text[0] == '-' || text[0] >= '0' && text[0] <= '9') {
			return 0, specErr(field, "must be a positive integer, got %s", shorten(text))
		}
		return 0, specErr(field, "must be a positive integer, got %s", jsonType(r))
	}
	return n, nil
}

// inferKind reads the kind of a core.timer from "type" or, without it, from
// which keys are present.
func (p params) inferKind() (Kind, error) {
	typ, ok, err := p.str("type")
	if err != nil {
		return "", err
	}
	if ok {
		switch strings.ToLower(typ) {
		case "interval":
			return KindInterval, nil
		case "cron":
			return KindCron, nil
		case "date_time", "datetime", "one_shot":
			return KindDatetime, nil
		}
		return "", specErr("trigger_params.type", "must be interval, cron, date_time or datetime, got %s", quote(typ))
	}
	var kinds []Kind
	var keys []string
	for _, c := range []struct {
		key  string
		kind Kind
	}{{"interval_seconds", KindInterval}, {"interval", KindInterval}, {"expression", KindCron}, {"fire_at", KindDatetime}} {
		if p.has(c.key) {
			keys = append(keys, c.key)
			if len(kinds) == 0 || kinds[len(kinds)-1] != c.kind {
				kinds = append(kinds, c.kind)
			}
		}
	}
	switch len(kinds) {
	case 0:
		return "", specErr("trigger_params", "cannot tell the timer kind: want type, interval_seconds, interval, expression or fire_at")
	case 1:
		return kinds[0], nil
	}
	return "", specErr("trigger_params", "ambiguous timer kind: has %s; set type", strings.Join(keys, " and "))
}

// policies reads timerd's own keys, valid on every timer.
func (p params) policies(t *Timer) error {
	t.Misfire, t.DSTGap, t.DSTOverlap = FireOnce, GapShift, OverlapOnce
	if s, ok, err := p.str("misfire"); err != nil {
		return err
	} else if ok {
		switch m := MisfirePolicy(s); m {
		case FireOnce, FireAll, Skip:
			t.Misfire = m
		default:
			return specErr("trigger_params.misfire", "must be fire_once, fire_all or skip, got %s", quote(s))
		}
	}
	if s, ok, err := p.str("misfire_grace"); err != nil {
		return err
	} else if ok {
		d, err := time.ParseDuration(s)
		if err != nil || d < 0 {
			return specErr("trigger_params.misfire_grace", "must be a Go duration ≥ 0 such as \"30s\", got %s", quote(s))
		}
		t.MisfireGrace = d
	}
	if s, ok, err := p.str("dst_gap"); err != nil {
		return err
	} else if ok {
		switch g := DSTGap(s); g {
		case GapShift, GapSkip:
			t.DSTGap = g
		default:
			return specErr("trigger_params.dst_gap", "must be shift or skip, got %s", quote(s))
		}
	}
	if s, ok, err := p.str("dst_overlap"); err != nil {
		return err
	} else if ok {
		switch o := DSTOverlap(s); o {
		case OverlapOnce, OverlapTwice:
			t.DSTOverlap = o
		default:
			return specErr("trigger_params.dst_overlap", "must be once or twice, got %s", quote(s))
		}
	}
	if s, ok, err := p.str("jitter"); err != nil {
		return err
	} else if ok {
		d, err := time.ParseDuration(s)
		if err != nil || d < 0 {
			return specErr("trigger_params.jitter", "must be a Go duration ≥ 0 such as \"30s\", got %s", quote(s))
		}
		t.Jitter = d
	}
	// start_at is checked on every kind so a typo is not silently ignored.
	if s, ok, err := p.str("start_at"); err != nil {
		return err
	} else if ok {
		at, err := parseRFC3339(s)
		if err != nil {
			return specErr("trigger_params.start_at", "%v", err)
		}
		t.Anchor = at.UTC() // an offset's *time.Location would be kept per timer; slots do not depend on it
	}
	return nil
}

func (p params) interval(t *Timer, ruleID int64) error {
	field, unit := "trigger_params.interval", time.Second
	var n int64
	var err error
	if _, ok := p["interval_seconds"]; ok && !p.has("interval") {
		field = "trigger_params.interval_seconds"
		n, err = p.positiveInt("interval_seconds")
	} else {
		n, err = p.positiveInt("interval")
		if err == nil {
			unit, err = p.unit()
		}
	}
	if err != nil {
		return err
	}
	if n > int64(maxInterval/unit) {
		return specErr(field, "%d × %v is longer than the limit of %v", n, unit, maxInterval)
	}
	t.Interval = time.Duration(n) * unit
	t.Anchor = anchorFor(t.Anchor, t.Interval, ruleID)
	return nil
}

func (p params) unit() (time.Duration, error) {
	s, ok, err := p.str("unit")
	if err != nil || !ok {
		return time.Second, err
	}
	switch strings.ToLower(s) {
	case "seconds", "second", "s":
		return time.Second, nil
	case "minutes", "minute", "m":
		return time.Minute, nil
	case "hours", "hour", "h":
		return time.Hour, nil
	case "days", "day", "d":
		return 24 * time.Hour, nil
	}
	return 0, specErr("trigger_params.unit", "must be seconds, minutes, hours or days, got %s", quote(s))
}

func (p params) cron(t *Timer, ruleID int64) error {
	expr, ok, err := p.str("expression")
	if err != nil {
		return err
	}
	if !ok || strings.TrimSpace(expr) == "" {
		return specErr("trigger_params.expression", "required: a cron expression such as \"0 */5 * * * *\" or \"@every 5m\"")
	}
	if len(expr) > maxExpressionBytes {
		return specErr("trigger_params.expression", "%d bytes, limit %d", len(expr), maxExpressionBytes)
	}
	t.Expression = expr
	if t.Timezone, t.Location, err = p.timezone(); err != nil {
		return err
	}
	if every, isEvery, err := parseEvery(expr); err != nil {
		return err
	} else if isEvery {
		t.Interval = every
		t.Anchor = anchorFor(t.Anchor, every, ruleID)
		return nil
	}
	t.Anchor = time.Time{} // start_at has no meaning for a wall-clock schedule
	c, err := newCron(expr, t.Location, t.DSTGap, t.DSTOverlap)
	if err != nil {
		return err
	}
	t.cron = c
	return nil
}

func (p params) timezone() (string, *time.Location, error) {
	name, ok, err := p.str("timezone")
	if err != nil {
		return "", nil, err
	}
	if !ok || name == "" {
		return "UTC", time.UTC, nil
	}
	loc, err := loadLocation(name)
	if err != nil {
		return "", nil, err
	}
	return name, loc, nil
}

func (p params) datetime(t *Timer) error {
	s, ok, err := p.str("fire_at")
	if err != nil {
		return err
	}
	if !ok {
		return specErr("trigger_params.fire_at", "required: an RFC 3339 time with offset such as \"2026-01-27T12:00:00Z\"")
	}
	if t.FireAt, err = parseRFC3339(s); err != nil {
		return specErr("trigger_params.fire_at", "%v", err)
	}
	// As start_at: the offset's *time.Location would be kept per timer (and
	// its binary form would have to keep it); the slot does not depend on it.
	t.FireAt = t.FireAt.UTC()
	// Informational only (Attune ignores it too), so any string is kept.
	if t.Timezone, _, err = p.str("timezone"); err != nil {
		return err
	}
	if t.Timezone == "" {
		t.Timezone = "UTC"
	}
	t.Anchor = time.Time{}
	// A one-shot that came due while nobody ran fires late, however late,
	// unless told otherwise.
	if !p.has("misfire_grace") && t.Misfire != Skip {
		t.MisfireGrace = UnlimitedGrace
	}
	return nil
}

func parseRFC3339(s string) (time.Time, error) {
	at, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("must be an RFC 3339 time with offset such as \"2026-01-27T12:00:00Z\", got %s", quote(s))
	}
	// A slot is stored as Unix nanoseconds (the lowest means "none"): a
	// fire outside that range could never be committed, and its retries
	// would hold up every rule.
	if !at.After(minKeyTime) || at.After(maxKeyTime) {
		return time.Time{}, fmt.Errorf("must be between the years 1678 and 2262, got %s", quote(s))
	}
	return at, nil
}

// zones caches loaded locations: time.LoadLocation reads the zone file on
// every call and a node may parse 100k rules at start. Only valid names are
// stored, so it is bounded by the zone database.
var zones sync.Map // string → *time.Location

func loadLocation(name string) (*time.Location, error) {
	if l, ok := zones.Load(name); ok {
		return l.(*time.Location), nil
	}
	// "Local" would make slots depend on the node's configuration.
	if name == "Local" || len(name) > maxTimezoneBytes {
		return nil, specErr("trigger_params.timezone", "unknown time zone %s", quote(name))
	}
	loc, err := time.LoadLocation(name)
	if err != nil {
		return nil, specErr("trigger_params.timezone", "unknown time zone %s", quote(name))
	}
	zones.Store(name, loc)
	return loc, nil
}

// quote quotes s for an error message, shortened.
func quote(s string) string { return strconv.Quote(shorten(s)) }

func shorten(s string) string { return Truncate(s, maxShownBytes) }

// Truncate cuts s after n bytes, drops a rune the cut splits (and any other
// invalid UTF-8 before it), and marks the cut with "…": a bounded, printable
// excerpt of outside input for an error or a log line. It is the module's one
// truncator; this package, the lowest one, owns it because its spec errors
// quote input first, and every other package that quotes input imports it.
func Truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return strings.ToValidUTF8(s[:max(n, 0)], "") + "…"
}

func orNothing(s string) string {
	if s == "" {
		return "nothing"
	}
	return s
}

// jsonType names the JSON type of a raw value for an error message.
func jsonType(r []byte) string {
	r = bytes.TrimSpace(r)
	if len(r) == 0 {
		return "nothing"
	}
	switch c := r[0]; {
	case c == '"':
		return "string " + shorten(string(r))
	case c == '{':
		return "object"
	case c == '[':
		return "array"
	case c == 't' || c == 'f':
		return "boolean"
	case c == 'n':
		return "null"
	case c == '-' || c >= '0' && c <= '9':
		return "number " + shorten(string(r))
	}
	return "invalid JSON"
}
