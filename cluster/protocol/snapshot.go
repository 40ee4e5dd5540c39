package protocol

import (
	"slices"
	"time"
)

// StartupVersion is the source version of a start-up rule: the set carries
// none, and it is older than anything a node holds, so it never undoes a
// change the node has seen, starts what it adds now, and the first
// reconcile prunes what Attune no longer lists.
var StartupVersion = time.Unix(0, 0).UTC()

// DefaultMaxRechecks is the re-check budget when Book.MaxRechecks is unset:
// the rules one reconcile asks the API for one by one, so that a mass
// deletion does not hold lifecycle messages back for minutes; the rest go at
// the next reconcile.
const DefaultMaxRechecks = 1000

// Why a snapshot removed nothing, or not a rule it lacked: the reason label
// of timerd_reconcile_refused_total, counted once per rule kept. An
// incomplete listing counts its own reason (Snapshot.Incomplete) once.
const (
	RefusedChanged      = "changed_since_listing" // the rule's version is newer than the listing
	RefusedStillEnabled = "still_enabled"         // the re-check found the rule enabled: paging missed it
	RefusedRecheck      = "recheck_failed"        // the re-check got no clear answer
	RefusedDeferred     = "recheck_deferred"      // past the re-check budget, or after a failed one: the next reconcile asks
)

// Listed is one rule as the rules API lists it.
type Listed struct {
	Rule Rule
	// Version is the listing's updated, else created; zero if it has neither.
	Version time.Time
}

// Snapshot is every enabled timer rule as the rules API gave it: a
// reconcile's listing, or the start-up set.
type Snapshot struct {
	Rules []Listed
	// Started is when the listing started; zero for the start-up set, which
	// prunes nothing.
	Started time.Time
	// Incomplete is "" when the listing proved itself complete; else why not
	// (ingest.Incomplete*): it then prunes nothing.
	Incomplete string
}

// Changes are the changes the snapshot asks for, in its order: each listed
// rule enabled at its version. A listing without times is as old as its
// start; the start-up set is older than anything held (StartupVersion).
func (s Snapshot) Changes() []Change {
	cs := make([]Change, len(s.Rules))
	for i, l := range s.Rules {
		v := l.Version
		if v.IsZero() {
			v = s.Started
			if s.Started.IsZero() {
				v = StartupVersion
			}
		}
		cs[i] = Change{Rule: l.Rule, Enabled: true, Version: v}
	}
	return cs
}

// MayPrune reports whether the snapshot may remove rules it lacks: a
// listing may, the start-up set may not.
func (s Snapshot) MayPrune() bool { return !s.Started.IsZero() }

// Answer is the rules API's answer for one rule asked alone.
type Answer struct {
	Found   bool // else the API says the rule is gone (404)
	Rule    Rule // when Found
	Enabled bool // when Found
	Err     error
}

// Kept is a rule a snapshot lacked that its re-check kept.
type Kept struct {
	Rule   Rule
	Reason string // RefusedStillEnabled or RefusedRecheck
	Err    error  // the re-check's, for RefusedRecheck
}

// Prune is a rule to remove, and the book's decision for it.
type Prune struct {
	ID       int64
	Decision Decision
}

// Pruning is what a snapshot removes and what it refuses to.
type Pruning struct {
	Prunes []Prune // in id order
	// Refused counts the rules kept by reason, and the listing's reason once
	// when it withheld pruning.
	Refused map[string]int
	Kept    []Kept // the re-checks that kept a rule, in order
	// Incomplete is the listing's reason when it withheld pruning of
	// NotListed held rules it lacks.
	Incomplete string
	NotListed  int
}

// PruneSnapshot decides which of the held rules (ids) snapshot s, which
// lacks them, removes: PruneUnlisted of the held rules s does not list.
func (b Book) PruneSnapshot(s Snapshot, held []int64, record func(id int64) (Record, error),
	recheck func(Rule) Answer) (Pruning, error) {
	if !s.MayPrune() {
		return Pruning{Refused: map[string]int{}}, nil
	}
	listed := make(map[int64]bool, len(s.Rules))
	for _, l := range s.Rules {
		listed[l.Rule.ID] = true
	}
	var gone []int64
	for _, id := range held {
		if !listed[id] {
			gone = append(gone, id)
		}
	}
	return b.PruneUnlisted(s, gone, record, recheck)
}

// PruneUnlisted decides which of the held rules a listing lacked (gone)
// it removes; s says when the listing started and whether it proved itself
// complete (its Rules are not read: a reconcile applies a large listing as
// it reads it, and keeps only the ids). A listing that did not prove itself
// complete removes nothing. Else each rule goes if Prune says so (it is
// older than the listing) and the API, asked for it alone (recheck), says
// it is gone: offset paging misses rules that move between pages while it
// reads. At most MaxRechecks are asked, and none after a failed one: an API
// that hangs must not hold intake for a timeout per rule.
//
// record reads what is held of a rule; its error ends the pruning, and is
// returned with what was decided until then.
func (b Book) PruneUnlisted(s Snapshot, gone []int64, record func(id int64) (Record, error),
	recheck func(Rule) Answer) (Pruning, error) {
	p := Pruning{Refused: map[string]int{}}
	if !s.MayPrune() {
		return p, nil
	}
	if len(gone) > 0 && s.Incomplete != "" {
		p.Refused[s.Incomplete]++
		p.Incomplete, p.NotListed = s.Incomplete, len(gone)
		return p, nil
	}
	gone = slices.Clone(gone)
	slices.Sort(gone)
	rechecks, failed := 0, false
	for _, id := range gone {
		rec, err := record(id)
		if err != nil {
			return p, err
		}
		d := b.Prune(rec, s.Started)
		if d.Result != Applied {
			if rec.Live {
				p.Refused[RefusedChanged]++
			}
			continue
		}
		if failed || rechecks >= b.maxRechecks() {
			p.Refused[RefusedDeferred]++
			continue
		}
		rechecks++
		a := recheck(rec.Rule)
		if reason := keeps(rec.Rule, a); reason != "" {
			p.Refused[reason]++
			p.Kept = append(p.Kept, Kept{Rule: rec.Rule, Reason: reason, Err: a.Err})
			failed = reason == RefusedRecheck
			continue
		}
		p.Prunes = append(p.Prunes, Prune{ID: id, Decision: d})
	}
	return p, nil
}

// keeps is why re-check answer a keeps rule r: "" when the API says the rule
// is gone, disabled, another rule under the ref, or no longer of r's
// trigger.
func keeps(r Rule, a Answer) string {
	switch {
	case a.Err != nil:
		return RefusedRecheck
	case a.Found && a.Enabled && a.Rule.ID == r.ID && a.Rule.TriggerRef == r.TriggerRef:
		return RefusedStillEnabled
	}
	return ""
}

func (b Book) maxRechecks() int {
	if b.MaxRechecks <= 0 {
		return DefaultMaxRechecks
	}
	return b.MaxRechecks
}
