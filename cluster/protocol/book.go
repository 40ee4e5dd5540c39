package protocol

import (
	"bytes"
	"encoding/json"
	"fmt"
	"time"

	"github.com/timerd/timerd/scheduler"
)

// Parameters of the rule book (protocol.md, "Parameters").
const (
	// SkewAllowance is how far apart Attune's clock and a node's may be:
	// reconcile pruning, a fire_at just before its rule's creation, and how
	// far ahead of now a source version may be.
	SkewAllowance = time.Minute
	// TombstoneTTL is how long a removed rule's version is kept: the
	// lifetime of a node's queue. An older change cannot be waiting in it.
	TombstoneTTL = 7 * 24 * time.Hour
	// DefaultAnchorBound is the anchor bound when Book.AnchorBound is unset:
	// the default reconcile interval.
	DefaultAnchorBound = 5 * time.Minute
)

// maxParamsBytes bounds the trigger_params of one rule: Attune's timer
// parameters are a few keys; anything this large is not a timer.
const maxParamsBytes = 64 << 10

// Result is what a change did to a rule; its string is the result label of
// timerd_lifecycle_messages_total.
type Result string

const (
	Applied   Result = "applied"   // the rule or its schedule changed
	Unchanged Result = "unchanged" // nothing to change (a duplicate, or a removal of a rule not held)
	Stale     Result = "stale"     // older than the version held: changes nothing
	Invalid   Result = "invalid"   // its timer does not parse: changes nothing, but stops a live rule (stopped)
	Ignored   Result = "ignored"   // not a timer rule, and not held
)

// Rule is a timer rule as Attune defines it.
type Rule struct {
	ID         int64
	Ref        string
	TriggerRef string
	Params     json.RawMessage
}

// Record is what a node holds of one rule id: a live rule, a tombstone (a
// removed rule's version), or nothing.
type Record struct {
	// Live: the rule is held and scheduled. Else Version, if set, is a
	// tombstone's.
	Live bool
	Rule Rule // when Live
	// Version is the source version of the last change applied; zero when
	// none is known (never seen, or stored before versions were kept).
	Version time.Time
	// Watermark, when Live, is the rule's (the later of the stored and the
	// running one). Else it is what the cluster knows of the rule, zero if
	// nothing: a rule new to a node continues after it.
	Watermark scheduler.Watermark
}

// Change is one change to a rule: a lifecycle message or a listed rule.
type Change struct {
	// Rule as the change leaves it. A removal needs only ID (and TriggerRef
	// if known, to tell a rule of another trigger).
	Rule Rule
	// Enabled: the rule runs (created, enabled, listed). False removes it
	// (disabled, deleted).
	Enabled bool
	// Version is the change's source version: the message's timestamp, the
	// listing's updated (else created). Zero: none, the receive time is.
	Version time.Time
}

// Decision is what the book decided for one change.
type Decision struct {
	Result Result
	Reason error  // why, for Invalid and Ignored
	Record Record // the record after the change; the input record unless Write
	// Write: Record differs from the input record (a new version, rule or
	// tombstone): store it.
	Write bool
	// Reschedule: the schedule is new or changed; Record.Watermark is where
	// it continues from, to store with the rule and hand to the engine.
	// Else a live rule keeps the watermark it has.
	Reschedule bool
	// Timer is the parsed timer of Record.Rule when Result is Applied and
	// the rule is live.
	Timer *scheduler.Timer
}

// Book decides the changes to rules (protocol.md §1). The zero value uses
// the defaults.
type Book struct {
	// AnchorBound: a change whose source version is older than this starts
	// its schedule at the time it is applied, not at its version. The node
	// passes its reconcile interval. Zero or negative: DefaultAnchorBound.
	AnchorBound time.Duration
	// MaxRechecks bounds the rules one snapshot re-checks before pruning
	// them (PruneSnapshot). Zero or negative: DefaultMaxRechecks.
	MaxRechecks int
}

// Versions are clamped to what the store can hold and a clock can mean: from
// the Unix epoch to SkewAllowance after now.
var minVersion = time.Unix(0, 0).UTC()

// Apply decides change c to the rule held as rec, received at now.
func (b Book) Apply(rec Record, c Change, now time.Time) Decision {
	v := version(c.Version, now)
	timer := scheduler.IsTimerTrigger(c.Rule.TriggerRef)
	keep := Decision{Record: rec}

	if !rec.Live && (!c.Enabled || !timer) {
		// A removal of a rule not held, or another trigger's rule.
		if c.Rule.TriggerRef != "" && !timer {
			keep.Result, keep.Reason = Ignored, fmt.Errorf("trigger %q is not a timer trigger", scheduler.Truncate(c.Rule.TriggerRef, 64))
			return keep
		}
		if held(rec, now) && v.Before(rec.Version) {
			keep.Result = Unchanged // an older removal of a rule removed since: what it asks for holds
			return keep
		}
		// Unchanged, but its version is kept: a create that is older and
		// arrives later must not bring the rule back.
		keep.Result = Unchanged
		if !v.Equal(rec.Version) {
			keep.Record = Record{Version: v}
			keep.Write = true
		}
		return keep
	}
	if held(rec, now) && v.Before(rec.Version) {
		// Older than what is held. A repeat of the rule as it is (a listing
		// and a message of one change disagree on its time by rounding)
		// asks for nothing: unchanged. Anything else is stale.
		keep.Result = Stale
		if c.Enabled && timer && rec.Live && sameRule(rec.Rule, c.Rule) {
			keep.Result = Unchanged
		}
		return keep
	}
	if !c.Enabled || !timer {
		// A live rule removed, or enabled as another trigger: no longer ours.
		return Decision{Result: Applied, Record: Record{Version: v}, Write: true}
	}

	r := c.Rule
	if rec.Live && sameRule(rec.Rule, r) {
		keep.Result = Unchanged
		if v.After(rec.Version) {
			keep.Record.Version = v
			keep.Write = true
		}
		return keep
	}
	var t *scheduler.Timer
	err := fmt.Errorf("trigger_params: %d bytes, at most %d", len(r.Params), maxParamsBytes)
	if len(r.Params) <= maxParamsBytes {
		t, err = scheduler.Parse(r.TriggerRef, r.Params, r.ID)
	}
	if err != nil {
		keep.Result, keep.Reason = Invalid, err
		if rec.Live {
			keep.Record, keep.Write = stopped(rec, r, v), true
		}
		return keep
	}
	d := Decision{Result: Applied, Write: true, Timer: t,
		Record: Record{Live: true, Rule: r, Version: v, Watermark: rec.Watermark}}
	if rec.Live {
		if old, err := scheduler.Parse(rec.Rule.TriggerRef, rec.Rule.Params, rec.Rule.ID); err == nil && old.Equal(t) {
			return d // the same timer in another spelling (or another ref): the watermark stays
		}
	}
	// A new or changed schedule continues after the later of its watermark
	// (never moved back) and its anchor, keeping its count.
	d.Reschedule = true
	d.Record.Watermark.Slot = later(rec.Watermark.Slot, startAfter(t, b.anchor(v, now)))
	return d
}

// stopped is the record of a live rule after a newer change whose timer does
// not parse: the user changed the rule, so its old schedule must not go on
// firing; it is held, unscheduled, with its watermark, until a valid change
// (which continues after that watermark) or a removal. The params are kept
// so that a repeat of the same change is unchanged, unless they are too
// large to store.
func stopped(rec Record, r Rule, v time.Time) Record {
	if len(r.Params) > maxParamsBytes {
		r.Params = nil
	}
	return Record{Live: true, Rule: r, Version: v, Watermark: rec.Watermark}
}

// Prune decides a live rule that a rules listing started at listed does not
// list. It is removed only if its version is older than the listing's start
// less SkewAllowance: a rule enabled while the listing was paged may be
// missing from it. Its tombstone takes that time as its version, so an
// enable older than the listing cannot bring it back.
func (b Book) Prune(rec Record, listed time.Time) Decision {
	cut := listed.Add(-SkewAllowance)
	if !rec.Live || !rec.Version.Before(cut) {
		return Decision{Result: Unchanged, Record: rec}
	}
	return Decision{Result: Applied, Record: Record{Version: cut}, Write: true}
}

// Expired reports whether a tombstone of version is past TombstoneTTL at
// now, and may be purged: a change older than it can no longer arrive.
func Expired(version, now time.Time) bool {
	return now.Sub(version) > TombstoneTTL
}

// held reports whether rec has a version a change must not be older than: a
// live rule's, or a tombstone's within its TTL.
func held(rec Record, now time.Time) bool {
	if rec.Version.IsZero() {
		return false
	}
	return rec.Live || !Expired(rec.Version, now)
}

// version is a change's source version: the receive time when it has
// none, and never more than SkewAllowance ahead of now (a hostile or broken
// timestamp must not lock a rule against every later change).
func version(v, now time.Time) time.Time {
	switch {
	case v.IsZero():
		return now
	case v.After(now.Add(SkewAllowance)):
		return now.Add(SkewAllowance)
	case v.Before(minVersion):
		return minVersion
	}
	return v
}

// anchor is where a schedule changed at version v starts: v, but now when v
// is in the future or older than the anchor bound.
func (b Book) anchor(v, now time.Time) time.Time {
	bound := b.AnchorBound
	if bound <= 0 {
		bound = DefaultAnchorBound
	}
	if v.After(now) || now.Sub(v) > bound {
		return now
	}
	return v
}

// startAfter is the watermark baseline of timer t anchored at anchor: its
// first slot is the first one after it. A datetime due before its anchor
// by at most SkewAllowance (clock differences, "fire now") fires at once.
func startAfter(t *scheduler.Timer, anchor time.Time) time.Time {
	if t.Kind == scheduler.KindDatetime && !t.FireAt.After(anchor) && anchor.Sub(t.FireAt) <= SkewAllowance {
		return t.FireAt.Add(-time.Nanosecond)
	}
	return anchor
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func sameRule(a, b Rule) bool {
	return a.ID == b.ID && a.Ref == b.Ref && a.TriggerRef == b.TriggerRef && sameJSON(a.Params, b.Params)
}

// sameJSON compares two JSON values ignoring key order and spacing.
func sameJSON(a, b json.RawMessage) bool {
	if bytes.Equal(a, b) {
		return true
	}
	var va, vb any
	if json.Unmarshal(a, &va) != nil || json.Unmarshal(b, &vb) != nil {
		return false
	}
	ca, _ := json.Marshal(va)
	cb, _ := json.Marshal(vb)
	return bytes.Equal(ca, cb)
}
