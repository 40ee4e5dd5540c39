package protocol

import (
	"cmp"
	"fmt"
	"math"
	"slices"
	"strings"
)

// Incarnation names one life of a node: its name and a number raised at every
// start and every time the node learns it was fenced.
type Incarnation struct {
	Node string
	N    uint64
}

func (i Incarnation) String() string { return fmt.Sprintf("%s#%d", i.Node, i.N) }

// NoSlot is the slot of a watermark that has none (a rule never fired).
const NoSlot = math.MinInt64

// ChainLen bounds a fire chain: what a returning node's events can be decided by
// (docs/protocol.md, "Returning nodes and the fire chain").
const ChainLen = 8

// Point says that Firer fired (or skipped) the rule's slots after From up to and
// including Last (Unix ns), holding the rule's partition at Epoch. Where two points
// cover a slot, the one of the higher epoch says who fired it: the other is a fire its
// firer committed but never delivered (its lease lapsed, or it crashed, before the
// fire was replicated), which the later holder did not know of and fired again.
type Point struct {
	From, Last int64
	Firer      Incarnation
	Epoch      Epoch
}

func (p Point) covers(slot int64) bool { return p.From < slot && slot <= p.Last }

// Chain is who fired a rule's recent slots: at most ChainLen points, by Last.
type Chain []Point

// Watermark is a rule's last decided slot (Unix ns, NoSlot for none), its fire count
// and its fire chain.
type Watermark struct {
	Rule  int64
	Slot  int64
	Count uint64
	Chain Chain
}

// Fired reports whether w tells of a fire: a count or a chain. A rule never fired has
// its anchor for watermark, which every member derives from the rule itself.
func (w Watermark) Fired() bool { return w.Count > 0 || len(w.Chain) > 0 }

// NotFired is !w.Fired(), for slices.DeleteFunc.
func NotFired(w Watermark) bool { return !w.Fired() }

// Merge is the later of two watermarks of one rule with their chains joined: slot and
// count are the larger ones, and the chain holds what either knows.
func Merge(a, b Watermark) Watermark {
	return Watermark{Rule: a.Rule, Slot: max(a.Slot, b.Slot), Count: max(a.Count, b.Count),
		Chain: mergeChains(a.Chain, b.Chain)}
}

func comparePoints(x, y Point) int {
	switch {
	case x.Last != y.Last:
		return cmp.Compare(x.Last, y.Last)
	case x.Epoch != y.Epoch:
		if x.Epoch.Less(y.Epoch) {
			return -1
		}
		return 1
	case x.From != y.From:
		return cmp.Compare(x.From, y.From)
	}
	return strings.Compare(x.Firer.String(), y.Firer.String())
}

func mergeChains(a, b Chain) Chain {
	if len(b) == 0 {
		return slices.Clone(a)
	}
	if len(a) == 0 {
		return slices.Clone(b)
	}
	pts := make([]Point, 0, len(a)+len(b))
	pts = append(append(pts, a...), b...)
	slices.SortFunc(pts, comparePoints)
	pts = slices.Compact(pts)
	// Ranges of one firer and epoch that touch or overlap are one range.
	out := pts[:0]
	for _, p := range pts {
		joined := false
		for i := len(out) - 1; i >= 0; i-- {
			q := &out[i]
			if q.Firer == p.Firer && q.Epoch == p.Epoch && p.From <= q.Last && q.From <= p.Last {
				q.From, q.Last = min(q.From, p.From), max(q.Last, p.Last)
				joined = true
				break
			}
		}
		if !joined {
			out = append(out, p)
		}
	}
	slices.SortFunc(out, comparePoints)
	return Chain(out).bounded()
}

// bounded keeps the ChainLen points that end last.
func (c Chain) bounded() Chain {
	if n := len(c); n > ChainLen {
		return slices.Clone(c[n-ChainLen:])
	}
	return c
}

// Extend records that firer, holding the partition at epoch, decided the slot after
// prev (the watermark's slot before it): it fired or skipped it.
func (c Chain) Extend(prev, slot int64, firer Incarnation, epoch Epoch) Chain {
	return mergeChains(c, Chain{{From: prev, Last: slot, Firer: firer, Epoch: epoch}})
}

// Verdict is what a holder decides for an event of an older incarnation.
type Verdict uint8

// Verdicts of Decide.
const (
	// Yours: the firer fired the slot and nobody else did: it delivers it.
	Yours Verdict = iota + 1
	// Late: nobody fired the slot: the firer's event stands; the chain records it.
	Late
	// FiredByAnother: another incarnation fired the slot after the firer lapsed.
	FiredByAnother
	// Unknown: the chain no longer says who fired the slot.
	Unknown
)

func (v Verdict) String() string {
	switch v {
	case Yours:
		return "yours"
	case Late:
		return "late"
	case FiredByAnother:
		return "fired_by_another"
	case Unknown:
		return "dropped_unknown"
	}
	return "invalid"
}

// Deliver reports whether the verdict lets the firer deliver its event.
func (v Verdict) Deliver() bool { return v == Yours || v == Late }

// Decide is the holder's verdict on an event (slot, firer) of a rule whose watermark is
// wm: by the point of the highest epoch that covers the slot.
func Decide(wm Watermark, slot int64, firer Incarnation) Verdict {
	var best *Point
	for i := range wm.Chain {
		p := &wm.Chain[i]
		if p.covers(slot) && (best == nil || best.Epoch.Less(p.Epoch)) {
			best = p
		}
	}
	switch {
	case best != nil && best.Firer == firer:
		return Yours
	case best != nil:
		return FiredByAnother
	case slot > wm.Slot:
		return Late
	}
	// At or before the watermark but not covered: the chain no longer says (its points
	// were dropped, or the watermark is a baseline that fired nothing).
	return Unknown
}
