package node

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/timerd/timerd/cluster/protocol"
	"github.com/timerd/timerd/ingest/attune"
	"github.com/timerd/timerd/scheduler"
)

// defaultApplyChunk bounds the rules one store transaction of a reconcile
// applies (Node.applyChunk).
// A transaction holds every dirty page of bbolt and every parsed timer of
// its rules until it commits, and a listing held whole holds every rule:
// a start-up reconcile of 200,000 rules listed, then applied in one
// transaction, peaked at 2.7 KB a rule (a node joining a cluster of a
// million rules, at 2.7 GB).
const defaultApplyChunk = 10_000

// remoteApply applies a snapshot of the rules API (a reconcile's listing,
// or the start-up set) as it is read, Node.applyChunk rules a transaction, and
// keeps only the ids it listed, to prune the stored rules it lacked once
// it is whole. Each chunk is whole: the rule book decided each of its rules
// against the store as the chunks before left it. A listing that fails
// half-way leaves the rules it applied (they are rules the API listed,
// applied by their versions, as a whole listing would) and removes
// nothing.
type remoteApply struct {
	n      *Node
	ctx    context.Context
	what   string    // "reconcile", "start-up set": for logs and errors
	listed time.Time // when the listing started; zero for the start-up set, which prunes nothing
	chunk  []attune.RemoteRule
	ids    []int64 // every rule listed, when the snapshot may prune
	counts map[string]int
	rules  int // rules listed, duplicates too
}

func (n *Node) newRemoteApply(ctx context.Context, listed time.Time, what string) *remoteApply {
	return &remoteApply{n: n, ctx: ctx, what: what, listed: listed, counts: map[string]int{}}
}

func (a *remoteApply) snapshot() protocol.Snapshot { return protocol.Snapshot{Started: a.listed} }

// add takes rules of the snapshot, applying each chunk once it is full.
// It copies what it keeps of rules.
func (a *remoteApply) add(rules []attune.RemoteRule) error {
	a.rules += len(rules)
	if a.snapshot().MayPrune() {
		for _, r := range rules {
			a.ids = append(a.ids, r.ID)
		}
	}
	size := max(a.n.applyChunk, 1)
	for len(rules) > 0 {
		take := min(len(rules), size-len(a.chunk))
		a.chunk = append(a.chunk, rules[:take]...)
		rules = rules[take:]
		if len(a.chunk) >= size {
			if err := a.apply(); err != nil {
				return err
			}
		}
	}
	return nil
}

// apply applies the chunk in one store transaction: the rules it holds are
// read in one read transaction too.
func (a *remoteApply) apply() error {
	chunk := a.chunk
	if len(chunk) == 0 {
		return nil
	}
	defer func() {
		clear(chunk) // the listing's params and strings, for the collector
		a.chunk = chunk[:0]
	}()
	snap := a.snapshot()
	snap.Rules = make([]protocol.Listed, len(chunk))
	ids := make([]int64, len(chunk))
	for i, r := range chunk {
		snap.Rules[i] = protocol.Listed{Rule: remoteRule(r), Version: r.Version()}
		ids[i] = r.ID
	}
	tx := a.n.newRuleTxn()
	if err := tx.preload(ids); err != nil {
		return fmt.Errorf("%s: %w", a.what, err)
	}
	for i, c := range snap.Changes() {
		r := chunk[i]
		res, err := tx.change(c)
		a.counts[res]++
		switch res {
		case resError:
			return fmt.Errorf("%s: rule %d: %w", a.what, r.ID, err)
		case resInvalid:
			a.n.log.Warn(a.what+": rule not scheduled", "rule_id", r.ID, "rule_ref", r.Ref, "err", err)
		case resIgnored:
			a.n.log.Info(a.what+": rule is not a timer rule; not scheduled", "rule_id", r.ID, "rule_ref", r.Ref,
				"trigger_ref", scheduler.Truncate(r.TriggerRef, 64))
		}
	}
	if err := tx.commit(); err != nil {
		return fmt.Errorf("%s: %w", a.what, err)
	}
	return nil
}

// fail applies the rules taken before the listing failed (it removes
// nothing), and returns err with the store's error if that failed too.
func (a *remoteApply) fail(err error) error {
	return errors.Join(err, a.apply())
}

// finish applies the last chunk, then prunes what a complete listing
// (incomplete "") lacked, and says how many rules changed: applied (added
// or updated) or pruned.
func (a *remoteApply) finish(incomplete string) (int, error) {
	if err := a.apply(); err != nil {
		return 0, err
	}
	removed, err := a.prune(incomplete)
	if err != nil {
		return 0, err
	}
	c := a.counts
	if c[resApplied]+removed+c[resInvalid]+c[resIgnored]+c[resStale] > 0 {
		a.n.log.Info(a.what+" applied", "rules", a.rules, "applied", c[resApplied], "removed", removed,
			"stale", c[resStale], "invalid", c[resInvalid], "ignored", c[resIgnored])
	}
	return c[resApplied] + removed, nil
}

// prune removes the stored rules the snapshot did not list, as the rule
// book decides (protocol.Book.PruneUnlisted), in one transaction.
func (a *remoteApply) prune(incomplete string) (int, error) {
	snap := a.snapshot()
	snap.Incomplete = incomplete
	if !snap.MayPrune() {
		return 0, nil
	}
	held, err := a.n.store.RuleIDs()
	if err != nil {
		return 0, fmt.Errorf("%s: %w", a.what, err)
	}
	slices.Sort(a.ids)
	listed := slices.Compact(a.ids)
	var gone []int64
	for _, id := range held { // both in id order: a merge
		i, found := slices.BinarySearch(listed, id)
		listed = listed[i:]
		if !found {
			gone = append(gone, id)
		}
	}
	tx := a.n.newRuleTxn()
	p, err := tx.book.PruneUnlisted(snap, gone, func(id int64) (protocol.Record, error) {
		st, err := tx.state(id)
		if err != nil {
			return protocol.Record{}, fmt.Errorf("rule %d: %w", id, err)
		}
		return st.rec, nil
	}, func(r protocol.Rule) protocol.Answer { return a.n.recheck(a.ctx, r) })
	a.n.logPruning(a.what, p)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", a.what, err)
	}
	for _, pr := range p.Prunes {
		tx.take(tx.rules[pr.ID], pr.Decision) // its state was read to decide it
	}
	if err := tx.commit(); err != nil {
		return 0, fmt.Errorf("%s: %w", a.what, err)
	}
	return len(p.Prunes), nil
}
