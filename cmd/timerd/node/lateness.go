package node

import (
	"sync"
	"time"

	"github.com/timerd/timerd/scheduler"
)

// firedLog keeps the lateness of the last fires of the rules this node fired
// recently, for describe (describe.go). Memory stays small whatever the number
// of rules: latenessPerRule fires a rule, of at most 2·latenessRules rules, in
// two generations: when the current one is full it becomes the previous one and
// the older is dropped, so the rules fired least recently go first (~260 bytes a
// rule, ~1 MB at most). Nothing is kept for rules that do not fire here.
// record is on the fire path: the dropped generation's map and rings are reused,
// so that a node whose rules take turns (more than 2·latenessRules of them)
// allocates nothing a fire.
type firedLog struct {
	mu        sync.Mutex
	cur, prev map[int64]*firedRing
	free      []*firedRing // rings of a dropped generation, to reuse
}

const (
	latenessPerRule = 10
	latenessRules   = 2048 // per generation
)

// firedRing is a rule's last fires, oldest first from next once full.
type firedRing struct {
	slot, fired [latenessPerRule]int64 // Unix ns
	late        [latenessPerRule]int64 // ns after the slot's fire time (its jitter added)
	catchUp     uint16                 // bit i: fire i was a catch-up
	n, next     uint8
}

// record notes committed fires: the engine's Commit after a successful commit.
func (l *firedLog) record(fires []scheduler.Fire) {
	if len(fires) == 0 {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for i := range fires {
		f := &fires[i]
		r := l.cur[f.RuleID]
		if r == nil {
			if r = l.prev[f.RuleID]; r != nil {
				delete(l.prev, f.RuleID) // in cur from now on: not freed with prev
			} else {
				r = l.newRing()
			}
			if len(l.cur) >= latenessRules || l.cur == nil {
				l.rotate()
			}
			l.cur[f.RuleID] = r
		}
		due := f.Slot
		if f.Timer != nil {
			due = f.Timer.FireTime(f.RuleID, f.Slot)
		}
		j := r.next
		r.slot[j], r.fired[j], r.late[j] = f.Slot.UnixNano(), f.FiredAt.UnixNano(), int64(f.FiredAt.Sub(due))
		r.catchUp &^= 1 << j
		if f.CatchUp {
			r.catchUp |= 1 << j
		}
		r.next = (j + 1) % latenessPerRule
		r.n = min(r.n+1, latenessPerRule)
	}
}

// rotate makes the current generation the previous one, and the previous one,
// emptied, the current: its rings (those not moved into cur) are reused.
func (l *firedLog) rotate() {
	for _, r := range l.prev {
		l.free = append(l.free, r)
	}
	clear(l.prev)
	l.prev, l.cur = l.cur, l.prev
	if l.cur == nil {
		l.cur = make(map[int64]*firedRing, latenessRules)
	}
}

// newRing is an empty ring, a reused one when there is one.
func (l *firedLog) newRing() *firedRing {
	if n := len(l.free); n > 0 {
		r := l.free[n-1]
		l.free = l.free[:n-1]
		*r = firedRing{}
		return r
	}
	return new(firedRing)
}

// of is rule id's recorded fires, oldest first; empty if none.
func (l *firedLog) of(id int64) []RuleFire {
	l.mu.Lock()
	defer l.mu.Unlock()
	r := l.cur[id]
	if r == nil {
		r = l.prev[id]
	}
	out := []RuleFire{}
	if r == nil {
		return out
	}
	start := (int(r.next) + latenessPerRule - int(r.n)) % latenessPerRule
	for k := range int(r.n) {
		j := (start + k) % latenessPerRule
		late := time.Duration(r.late[j])
		out = append(out, RuleFire{Slot: time.Unix(0, r.slot[j]).UTC(), FiredAt: time.Unix(0, r.fired[j]).UTC(), Late: late.Round(time.Microsecond).String(),
			Lateness: late.Seconds(), CatchUp: r.catchUp&(1<<j) != 0})
	}
	return out
}

// commitRecorded is the engine's Commit: the node's commit, then the fires'
// lateness noted for describe.
func (n *Node) commitRecorded(fires []scheduler.Fire, missed []scheduler.Miss) error {
	if err := n.commit(fires, missed); err != nil {
		return err
	}
	n.fired.record(fires)
	return nil
}
