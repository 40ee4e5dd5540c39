package apiserver

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Event retention: a job deletes the events older than Config.EventRetention,
// oldest first, with their idempotency-index entries and their ids in the
// in-memory index. Ids are assigned in commit order and created is the commit
// time, so the old events are a prefix of the events bucket: the job walks
// from the first id and stops at the first event young enough to keep, and
// what remains is always the contiguous ids first..Sequence() (listEvents
// counts and pages on that).
//
// A sweep deletes in transactions of at most eventDeleteBatch events with a
// pause between them: the committer (bbolt has one writer) gets the lock
// between batches, so a backlog of millions of events is deleted while the
// API keeps storing events at its usual latency.

const (
	defaultEventSweepInterval = time.Minute
	defaultEventDeleteBatch   = 1000
	defaultEventDeletePause   = 20 * time.Millisecond
)

// runEventRetention sweeps at start (a server restarted after a long stop
// has a backlog) and every EventSweepInterval until Close.
func (s *Server) runEventRetention() {
	defer s.committer.Done()
	t := time.NewTicker(s.cfg.EventSweepInterval)
	defer t.Stop()
	for {
		s.logSweep(s.sweepEvents())
		select {
		case <-s.quit:
			return
		case <-t.C:
		}
	}
}

// sweepResult is what one sweep did.
type sweepResult struct {
	deleted, batches int
	took             time.Duration
	err              error
}

func (s *Server) logSweep(r sweepResult) {
	attrs := []any{"deleted", r.deleted, "batches", r.batches, "retention", s.cfg.EventRetention.String(), "took", r.took.Round(time.Millisecond).String()}
	switch {
	case r.err != nil:
		s.log.Error("event retention sweep failed; the next sweep retries", append(attrs, "err", r.err)...)
	case r.deleted > 0:
		s.log.Info("event retention sweep", attrs...)
	default:
		s.log.Debug("event retention sweep", attrs...)
	}
}

// sweepEvents deletes every event created before now minus EventRetention,
// in batches, pausing between them; it stops early when the server closes.
func (s *Server) sweepEvents() sweepResult {
	start := time.Now()
	var r sweepResult
	cutoff := s.cfg.Now().Add(-s.cfg.EventRetention)
	pause := time.NewTimer(time.Hour)
	pause.Stop()
	defer pause.Stop()
	for {
		n, more, err := s.deleteEventBatch(cutoff, s.cfg.eventDeleteBatch)
		if n > 0 {
			r.deleted += n
			r.batches++
		}
		if err != nil || !more {
			r.err = err
			break
		}
		pause.Reset(s.cfg.eventDeletePause)
		select {
		case <-s.quit:
			r.took = time.Since(start)
			return r
		case <-pause.C:
		}
	}
	r.took = time.Since(start)
	return r
}

// deleteEventBatch deletes, in one transaction, up to limit of the oldest
// events created before cutoff and their idempotency-index entries, then
// drops them from the in-memory index. more: the batch was full, so the next
// event may be old too.
func (s *Server) deleteEventBatch(cutoff time.Time, limit int) (deleted int, more bool, err error) {
	var (
		last         int64
		insts, rules = map[string]struct{}{}, map[string]struct{}{}
	)
	err = s.db.Update(func(tx *bolt.Tx) error {
		events, idem := tx.Bucket(bucketEvents), tx.Bucket(bucketEventIdem)
		var keys, idemKeys [][]byte
		c := events.Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			if len(keys) == limit {
				more = true
				break
			}
			var e struct {
				Created    time.Time `json:"created"`
				TriggerRef string    `json:"trigger_ref"`
				Inst       string    `json:"trigger_instance_id"`
				RuleRef    string    `json:"rule_ref"`
				Key        *string   `json:"idempotency_key"`
			}
			if err := json.Unmarshal(v, &e); err != nil {
				return fmt.Errorf("event %d: %w", binary.BigEndian.Uint64(k), err)
			}
			if !e.Created.Before(cutoff) {
				break
			}
			keys = append(keys, bytes.Clone(k))
			if e.Key != nil && *e.Key != "" {
				idemKeys = append(idemKeys, scopedIdemKey(*e.Key, e.TriggerRef, e.Inst))
			}
			if e.Inst != "" {
				insts[e.Inst] = struct{}{}
			}
			if e.RuleRef != "" {
				rules[e.RuleRef] = struct{}{}
			}
		}
		for _, k := range keys {
			if err := events.Delete(k); err != nil {
				return err
			}
		}
		for _, k := range idemKeys {
			if err := idem.Delete(k); err != nil {
				return err
			}
		}
		if len(keys) > 0 {
			last = int64(binary.BigEndian.Uint64(keys[len(keys)-1]))
		}
		deleted = len(keys)
		return nil
	})
	if err != nil {
		return 0, false, fmt.Errorf("delete events created before %s: %w", cutoff.UTC().Format(time.RFC3339), err)
	}
	if deleted > 0 {
		s.evIndex.removeThrough(last, insts, rules)
		s.metrics.eventsDeleted.Add(float64(deleted))
	}
	return deleted, more, nil
}

// removeThrough drops the ids up to last from the lists of insts and rules
// (the instances and rules of the events deleted), and makes add ignore
// such ids from now on: a commit that raced the deletion may add its ids
// after it.
func (x *eventIndex) removeThrough(last int64, insts, rules map[string]struct{}) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.floor = max(x.floor, last)
	trimIDs(x.byInst, insts, last)
	trimIDs(x.byRule, rules, last)
}

// trimIDs drops the ids up to last from m's lists of keys. The ids are
// ascending, so that is a prefix; the array under the rest is released when
// an append outgrows it or the list empties.
func trimIDs(m map[string][]int64, keys map[string]struct{}, last int64) {
	for k := range keys {
		ids := m[k]
		i, _ := slices.BinarySearch(ids, last+1)
		if i == len(ids) {
			delete(m, k)
			continue
		}
		m[k] = ids[i:]
	}
}
