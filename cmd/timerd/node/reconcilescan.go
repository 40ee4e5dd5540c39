package node

import (
	"cmp"
	"slices"

	"github.com/timerd/timerd/cluster/protocol"
	"github.com/timerd/timerd/store"
)

// heldAsListed scans the store once, in id order: held is the id of every
// rule it holds; same[i] says that it holds the rule of changes[i] as the
// change has it, so that the rule book leaves it unchanged (decided on the
// record the transaction would read, watermark aside, which that decision
// does not look at). A rule listed twice is never same: its second change
// must see the first.
func (n *Node) heldAsListed(tx *ruleTxn, changes []protocol.Change) (held []int64, same []bool, err error) {
	order := make([]int32, len(changes))
	for i := range order {
		order[i] = int32(i)
	}
	slices.SortFunc(order, func(a, b int32) int { return cmp.Compare(changes[a].Rule.ID, changes[b].Rule.ID) })
	same = make([]bool, len(changes))
	j := 0
	held = make([]int64, 0, n.engine.Len())
	err = n.store.ForEachRule(func(r store.Rule, _ store.Watermark) error {
		held = append(held, r.ID)
		for j < len(order) && changes[order[j]].Rule.ID < r.ID {
			j++
		}
		if j == len(order) || changes[order[j]].Rule.ID != r.ID ||
			(j+1 < len(order) && changes[order[j+1]].Rule.ID == r.ID) {
			return nil
		}
		rec := protocol.Record{Live: true, Version: r.UpdatedAt,
			Rule: protocol.Rule{ID: r.ID, Ref: r.Ref, TriggerRef: r.TriggerRef, Params: r.Params}}
		if d := tx.book.Apply(rec, changes[order[j]], tx.now); d.Result == protocol.Unchanged && !d.Write {
			same[order[j]] = true
		}
		return nil
	})
	return held, same, err
}
