package scheduler

import "time"

// Kind is the shape of a timer's schedule.
type Kind string

const (
	KindInterval Kind = "interval" // anchor + k·interval
	KindCron     Kind = "cron"     // cron expression in a time zone (and "@every d", kept as cron for its payload)
	KindDatetime Kind = "datetime" // one slot
)

// MisfirePolicy says what happens to slots that came due more than the
// misfire grace ago (the node was down, or the rule was being handed over).
type MisfirePolicy string

const (
	FireOnce MisfirePolicy = "fire_once" // one catch-up fire for the most recent missed slot (default)
	FireAll  MisfirePolicy = "fire_all"  // every missed slot, capped
	Skip     MisfirePolicy = "skip"      // none of them
)

// DSTGap says what a cron slot whose wall-clock time does not exist
// (spring forward) does.
type DSTGap string

const (
	GapShift DSTGap = "shift" // fire later by the length of the gap (default; like time.Date)
	GapSkip  DSTGap = "skip"  // do not fire
)

// DSTOverlap says what a cron slot whose wall-clock time happens twice
// (fall back) does.
type DSTOverlap string

const (
	OverlapOnce  DSTOverlap = "once"  // fire at the first occurrence only (default)
	OverlapTwice DSTOverlap = "twice" // fire at both
)

// UnlimitedGrace as a MisfireGrace means a late slot is never missed:
// it always fires, however late.
const UnlimitedGrace time.Duration = -1

// Timer is a parsed timer trigger: the schedule of one rule. It is
// immutable once parsed and safe for concurrent use.
type Timer struct {
	TriggerRef string // as given, e.g. "core.intervaltimer" or "core.timer"
	Kind       Kind

	// KindInterval: slots are Anchor + k·Interval for integer k.
	// KindCron with "@every d": Interval = d, slots as for KindInterval.
	Interval time.Duration
	Anchor   time.Time

	// KindCron.
	Expression string         // as given (normalised descriptors kept as written)
	Timezone   string         // IANA name, "UTC" by default; for datetime: informational
	Location   *time.Location // loaded from Timezone
	DSTGap     DSTGap
	DSTOverlap DSTOverlap

	// KindDatetime.
	FireAt time.Time

	Misfire MisfirePolicy
	// MisfireGrace is how late a slot may fire and still count as on time.
	// 0 means the engine's default; UnlimitedGrace means never missed.
	MisfireGrace time.Duration

	// Jitter, when above 0, delays each slot by an offset below it, the same
	// for a rule's slot on every node and at every start (FireTime). The slot
	// (the event's scheduled_at, its key, the watermark) stays the nominal one.
	Jitter time.Duration

	// cron is the compiled expression of a KindCron timer, set by Parse.
	// Interval and datetime slots are computed from the fields above by
	// value: nothing else is allocated per timer.
	cron *cronSchedule
}

// schedule is slot arithmetic that has only next (cron); Last bisects over it.
type schedule interface {
	// next returns the first slot strictly after t, or false if there is none.
	next(t time.Time) (time.Time, bool)
}

// Watermark is what a rule has fired: the last slot and how many fires in all.
// A zero Slot means "never fired"; the caller sets Slot to the rule's creation
// time so the first slot fired is the first one after it.
type Watermark struct {
	Slot  time.Time
	Count uint64
}

// Fire is one slot of one rule, due and about to be committed.
type Fire struct {
	RuleID  int64
	Slot    time.Time // scheduled_at: the slot this fire stands for
	FiredAt time.Time // when the engine fired it
	Count   uint64    // execution_count, this fire included
	Next    time.Time // the rule's following slot; zero if none
	CatchUp bool      // fired by the misfire policy for a missed slot
	Timer   *Timer
}
