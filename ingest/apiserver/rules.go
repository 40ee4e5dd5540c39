package apiserver

import (
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/google/uuid"
	bolt "go.etcd.io/bbolt"

	"github.com/timerd/timerd/ingest/attune"
	"github.com/timerd/timerd/ingest/pubsub"
	"github.com/timerd/timerd/scheduler"
)

// rule is a rule as stored and as served. Values are never mutated once in
// the catalogue: a write replaces the pointer.
type rule struct {
	ID            int64           `json:"id"`
	Ref           string          `json:"ref"`
	TriggerRef    string          `json:"trigger_ref"`
	TriggerID     *int64          `json:"trigger_id,omitempty"`
	TriggerParams json.RawMessage `json:"trigger_params"`
	Enabled       bool            `json:"enabled"`
	ActionRef     *string         `json:"action_ref"`
	Created       time.Time       `json:"created"`
	Updated       time.Time       `json:"updated"`
}

// catalogue is the in-memory copy of the rules bucket. Reads take the read
// lock briefly and never wait for a commit: writers update it after theirs.
type catalogue struct {
	mu    sync.RWMutex
	byRef map[string]*rule
	byID  map[int64]*rule
	list  []*rule // sorted by id
	gen   uint64  // counts the changes: a listing view of an older gen is stale

	viewMu sync.Mutex       // taken after mu, never before
	views  map[string]*view // listing filter → the rules it passes (matching)
}

func loadCatalogue(db *bolt.DB) (*catalogue, error) {
	c := &catalogue{byRef: map[string]*rule{}, byID: map[int64]*rule{}}
	err := db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketRules).ForEach(func(k, v []byte) error {
			var r rule
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("rule %x: %w", k, err)
			}
			c.put(&r)
			return nil
		})
	})
	return c, err
}

// put inserts or replaces r. The caller holds mu (or owns c exclusively).
func (c *catalogue) put(r *rule) {
	c.gen++
	if old, ok := c.byID[r.ID]; ok && old.Ref != r.Ref {
		delete(c.byRef, old.Ref)
	}
	c.byRef[r.Ref] = r
	c.byID[r.ID] = r
	i, found := slices.BinarySearchFunc(c.list, r.ID, func(x *rule, id int64) int { return cmp.Compare(x.ID, id) })
	if found {
		c.list[i] = r
	} else {
		c.list = slices.Insert(c.list, i, r)
	}
}

func (c *catalogue) remove(r *rule) {
	c.gen++
	delete(c.byRef, r.Ref)
	delete(c.byID, r.ID)
	if i, found := slices.BinarySearchFunc(c.list, r.ID, func(x *rule, id int64) int { return cmp.Compare(x.ID, id) }); found {
		c.list = slices.Delete(c.list, i, i+1)
	}
}

func (c *catalogue) byRefGet(ref string) *rule {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.byRef[ref]
}

func (c *catalogue) refOf(id int64) (string, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if r, ok := c.byID[id]; ok {
		return r.Ref, true
	}
	return "", false
}

func idKey(id int64) []byte {
	return binary.BigEndian.AppendUint64(make([]byte, 0, 8), uint64(id))
}

// view is the rules one listing filter passes, as the catalogue was at gen.
type view struct {
	gen   uint64
	rules []*rule // in id order; never changed once made
}

// maxViews bounds the listing views kept: a reconcile pages through one
// filter per timer trigger.
const maxViews = 16

// matching returns the rules with triggerRef (any if "") and enabled (any if
// nil), in id order. The slice is made once per filter while the catalogue
// does not change: a reconcile that pages through N rules costs O(N) once,
// not O(N) a page (1,000,000 rules at 100 a page: 10,000 scans of them). The
// caller must not change it.
func (c *catalogue) matching(triggerRef string, enabled *bool) []*rule {
	key := triggerRef + "\x00"
	if enabled != nil {
		key += strconv.FormatBool(*enabled)
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	c.viewMu.Lock()
	v, ok := c.views[key]
	c.viewMu.Unlock()
	if ok && v.gen == c.gen {
		return v.rules
	}
	v = &view{gen: c.gen}
	for _, ru := range c.list {
		if (triggerRef == "" || ru.TriggerRef == triggerRef) && (enabled == nil || ru.Enabled == *enabled) {
			v.rules = append(v.rules, ru)
		}
	}
	c.viewMu.Lock()
	if c.views == nil || len(c.views) >= maxViews {
		c.views = map[string]*view{}
	}
	c.views[key] = v
	c.viewMu.Unlock()
	return v.rules
}

func (s *Server) listRules(w http.ResponseWriter, r *http.Request) {
	page, size, err := pageParams(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	q := r.URL.Query()
	triggerRef := q.Get("trigger_ref")
	var enabled *bool
	if v := q.Get("enabled"); v != "" || q.Has("enabled") {
		b, err := strconv.ParseBool(v)
		if err != nil {
			s.fail(w, r, errorf(http.StatusBadRequest, "enabled: %q is not true or false", v))
			return
		}
		enabled = &b
	}
	all := s.cat.matching(triggerRef, enabled)
	total := int64(len(all))
	lo := min(int64(page-1)*int64(size), total)
	items := all[lo:min(lo+int64(size), total)]
	resp := struct {
		Items      []*rule    `json:"items"`
		Pagination pagination `json:"pagination"`
	}{Items: items, Pagination: newPagination(page, size, total)}
	if len(resp.Items) == 0 {
		resp.Items = []*rule{}
	}
	writeJSON(w, http.StatusOK, resp)
}

func (s *Server) getRule(w http.ResponseWriter, r *http.Request) {
	ru := s.cat.byRefGet(r.PathValue("ref"))
	if ru == nil {
		s.fail(w, r, errNoRule(r.PathValue("ref")))
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"data": ru})
}

func errNoRule(ref string) error {
	return errorf(http.StatusNotFound, "rule %q not found", ref)
}

func (s *Server) createRule(w http.ResponseWriter, r *http.Request) {
	p := underWay(&s.rqPending)
	defer p.done()
	ru, err := s.parseNewRule(w, r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	req := &ruleReq{ru: ru, resp: make(chan error, 1)}
	if !enqueue(s, s.ruleq, req, p) {
		s.fail(w, r, ErrClosed)
		return
	}
	if err := <-req.resp; err != nil { // the committer always answers a create it took
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, s.ruleAnswer(ru))
}

// ruleAnswer is the answer to a create or an update: the rule and, for a timer
// whose schedule likely does not do what its author meant (a clock change makes
// it fire twice or not at all on a day, a cron that fires every second of a
// minute: scheduler.Lint), "warnings" saying so. The rule is stored all the
// same: a warning is advice, not a refusal.
func (s *Server) ruleAnswer(ru *rule) map[string]any {
	out := map[string]any{"data": ru}
	if !scheduler.IsTimerTrigger(ru.TriggerRef) {
		return out
	}
	t, err := scheduler.Parse(ru.TriggerRef, ru.TriggerParams, ru.ID)
	if err != nil {
		return out // validated before it was stored: not reached
	}
	var warnings []string
	for _, f := range scheduler.Lint(t, s.cfg.Now()) {
		warnings = append(warnings, f.Message)
	}
	if len(warnings) > 0 {
		out["warnings"] = warnings
	}
	return out
}

// ruleReq is a validated create waiting for the committer, which sets
// ru.ID and answers on resp (capacity 1).
type ruleReq struct {
	ru   *rule
	resp chan error
}

// maxRuleBatch bounds the creates of one bbolt transaction.
const maxRuleBatch = 1000

// putNewRules stores the creates of batch in tx, in order; errs[i] is the
// conflict of a ref already taken. Creates are group-committed with the
// events (runCommitter): one fsync for every create waiting, where one each
// made the API take about 650 rules/s.
func (s *Server) putNewRules(tx *bolt.Tx, batch []*ruleReq, errs []error) error {
	if len(batch) == 0 {
		return nil
	}
	refs, rules := tx.Bucket(bucketRuleRefs), tx.Bucket(bucketRules)
	for i, req := range batch {
		if refs.Get([]byte(req.ru.Ref)) != nil {
			errs[i] = errorf(http.StatusConflict, "rule %q already exists", req.ru.Ref)
			continue
		}
		seq, err := rules.NextSequence()
		if err != nil {
			return err
		}
		req.ru.ID = int64(seq)
		if err := putRule(tx, req.ru); err != nil {
			return err
		}
	}
	return nil
}

// addNewRules adds the committed creates of batch to the catalogue and
// sends their messages, in order; the caller awaits their confirms once it
// has released ruleWriteMu, which it holds.
func (s *Server) addNewRules(batch []*ruleReq, errs []error) *publishing {
	s.cat.mu.Lock()
	msgs := make([]attune.Lifecycle, 0, len(batch))
	for i, req := range batch {
		if errs[i] == nil {
			s.cat.put(req.ru)
			msgs = append(msgs, lifecycleOf(attune.RuleCreated, req.ru))
		}
	}
	s.cat.mu.Unlock()
	return s.send(msgs...)
}

func (s *Server) parseNewRule(w http.ResponseWriter, r *http.Request) (*rule, error) {
	body, err := readBody(w, r)
	if err != nil {
		return nil, err
	}
	return newRuleOf(body, s.cfg.Now().UTC())
}

// newRuleOf validates the body of a create (POST, or a line of a bulk load)
// and returns the rule it makes at now, without an id.
func newRuleOf(body []byte, now time.Time) (*rule, error) {
	f, err := decodeObject(body)
	if err != nil {
		return nil, err
	}
	ru := &rule{Enabled: true, Created: now, Updated: now, TriggerParams: json.RawMessage(`{}`)}
	ref, err := f.requiredStr("ref")
	if err != nil {
		return nil, err
	}
	if err := checkRef("ref", ref); err != nil {
		return nil, err
	}
	ru.Ref = ref
	tref, err := f.requiredStr("trigger_ref")
	if err != nil {
		return nil, err
	}
	if err := checkName("trigger_ref", tref); err != nil {
		return nil, err
	}
	ru.TriggerRef = tref
	if err := applyOptional(f, ru); err != nil {
		return nil, err
	}
	if err := validateTimer(ru, now); err != nil {
		return nil, err
	}
	return ru, nil
}

// pastAllowance is how far before now a one-shot's fire_at may be: it fires at once (a
// "fire now" rule, clocks a little apart), as the nodes' rule book allows.
const pastAllowance = time.Minute

// validateTimer checks a timer rule's params with the scheduler's own parser, as every
// node will read them, and that the schedule has a time left: a 400 naming the field,
// rather than a rule the nodes refuse (or keep firing the old schedule of).
func validateTimer(ru *rule, now time.Time) error {
	if !scheduler.IsTimerTrigger(ru.TriggerRef) {
		return nil
	}
	t, err := scheduler.Parse(ru.TriggerRef, ru.TriggerParams, ru.ID)
	if err != nil {
		return errorf(http.StatusBadRequest, "%v", err)
	}
	if _, ok := t.Next(now.Add(-pastAllowance)); !ok {
		field := "trigger_params"
		switch t.Kind {
		case scheduler.KindDatetime:
			field = "trigger_params.fire_at"
		case scheduler.KindCron:
			field = "trigger_params.expression"
		}
		return errorf(http.StatusBadRequest, "%s: the schedule has no time left after %s", field,
			now.Add(-pastAllowance).Format(time.RFC3339))
	}
	return nil
}

// applyOptional sets trigger_params, enabled, action_ref and trigger_id from
// f when present. trigger_params null means {}; action_ref null clears it.
func applyOptional(f fields, ru *rule) error {
	if f.has("trigger_params") {
		p, err := f.object("trigger_params")
		if err != nil {
			return err
		}
		if p == nil {
			p = json.RawMessage(`{}`)
		}
		if ru.TriggerParams, err = canonicalObject(p); err != nil {
			return errorf(http.StatusBadRequest, "trigger_params: %v", err)
		}
	}
	if v, ok, err := f.boolean("enabled"); err != nil {
		return err
	} else if ok {
		ru.Enabled = v
	}
	if f.has("action_ref") {
		v, ok, err := f.str("action_ref")
		if err != nil {
			return err
		}
		ru.ActionRef = nil
		if ok {
			if err := checkName("action_ref", v); err != nil {
				return err
			}
			ru.ActionRef = &v
		}
	}
	if f.has("trigger_id") {
		v, ok, err := f.positiveInt("trigger_id")
		if err != nil {
			return err
		}
		ru.TriggerID = nil
		if ok {
			ru.TriggerID = &v
		}
	}
	return nil
}

func putRule(tx *bolt.Tx, ru *rule) error {
	b, err := json.Marshal(ru)
	if err != nil {
		return err
	}
	if err := tx.Bucket(bucketRules).Put(idKey(ru.ID), b); err != nil {
		return err
	}
	return tx.Bucket(bucketRuleRefs).Put([]byte(ru.Ref), idKey(ru.ID))
}

// modifyRule runs change on a copy of the rule named by the path under the
// write lock, stores the result if change reports a difference, and publishes
// what msgs returns for (old, new) after the commit. The answer waits for
// the broker's confirms, the write lock does not.
func (s *Server) modifyRule(w http.ResponseWriter, r *http.Request, change func(ru *rule) (bool, error),
	msgs func(old, cur *rule) []attune.Lifecycle) {
	cur, pub, err := s.modifyLocked(r.PathValue("ref"), change, msgs)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.await(pub)
	writeJSON(w, http.StatusOK, s.ruleAnswer(cur))
}

func (s *Server) modifyLocked(ref string, change func(ru *rule) (bool, error),
	msgs func(old, cur *rule) []attune.Lifecycle) (*rule, *publishing, error) {
	s.ruleWriteMu.Lock()
	defer s.ruleWriteMu.Unlock()
	old := s.cat.byRefGet(ref)
	if old == nil {
		return nil, nil, errNoRule(ref)
	}
	cur := *old
	changed, err := change(&cur)
	if err != nil {
		return nil, nil, err
	}
	if changed {
		cur.Updated = s.cfg.Now().UTC()
		if err := s.db.Update(func(tx *bolt.Tx) error { return putRule(tx, &cur) }); err != nil {
			return nil, nil, err
		}
		s.cat.mu.Lock()
		s.cat.put(&cur)
		s.cat.mu.Unlock()
	}
	return &cur, s.send(msgs(old, &cur)...), nil
}

// updateRule is PUT: trigger_ref, trigger_params, enabled, action_ref and
// trigger_id may change; ref may not. Messages follow Attune: a trigger
// change of an enabled rule is RuleDisabled (old) then RuleEnabled (new); a
// parameter change is RuleEnabled; a change of the enabled flag is the
// matching message.
func (s *Server) updateRule(w http.ResponseWriter, r *http.Request) {
	body, err := readBody(w, r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	f, err := decodeObject(body)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.modifyRule(w, r, func(ru *rule) (bool, error) {
		before, _ := json.Marshal(ru)
		if ref, ok, err := f.str("ref"); err != nil {
			return false, err
		} else if ok && ref != ru.Ref {
			return false, errorf(http.StatusBadRequest, "ref: cannot change %q to %q", ru.Ref, ref)
		}
		if tref, ok, err := f.str("trigger_ref"); err != nil {
			return false, err
		} else if ok {
			if err := checkName("trigger_ref", tref); err != nil {
				return false, err
			}
			ru.TriggerRef = tref
		}
		if err := applyOptional(f, ru); err != nil {
			return false, err
		}
		if err := validateTimer(ru, s.cfg.Now().UTC()); err != nil {
			return false, err
		}
		after, _ := json.Marshal(ru)
		return !bytes.Equal(before, after), nil
	}, func(old, cur *rule) []attune.Lifecycle {
		triggerChanged := old.TriggerRef != cur.TriggerRef
		paramsChanged := !bytes.Equal(old.TriggerParams, cur.TriggerParams)
		switch {
		case old.Enabled && cur.Enabled && triggerChanged:
			return []attune.Lifecycle{lifecycleOf(attune.RuleDisabled, old), lifecycleOf(attune.RuleEnabled, cur)}
		case old.Enabled && cur.Enabled && paramsChanged:
			return []attune.Lifecycle{lifecycleOf(attune.RuleEnabled, cur)}
		case !old.Enabled && cur.Enabled:
			return []attune.Lifecycle{lifecycleOf(attune.RuleEnabled, cur)}
		case old.Enabled && !cur.Enabled:
			return []attune.Lifecycle{lifecycleOf(attune.RuleDisabled, old)}
		}
		return nil
	})
}

// enableRule and disableRule publish unconditionally, as Attune does.
func (s *Server) enableRule(w http.ResponseWriter, r *http.Request) {
	s.setEnabled(w, r, true)
}

func (s *Server) disableRule(w http.ResponseWriter, r *http.Request) {
	s.setEnabled(w, r, false)
}

func (s *Server) setEnabled(w http.ResponseWriter, r *http.Request, enabled bool) {
	if _, err := readBody(w, r); err != nil { // the body, if any, is ignored
		s.fail(w, r, err)
		return
	}
	s.modifyRule(w, r, func(ru *rule) (bool, error) {
		changed := ru.Enabled != enabled
		ru.Enabled = enabled
		return changed, nil
	}, func(_, cur *rule) []attune.Lifecycle {
		if enabled {
			return []attune.Lifecycle{lifecycleOf(attune.RuleEnabled, cur)}
		}
		return []attune.Lifecycle{lifecycleOf(attune.RuleDisabled, cur)}
	})
}

func (s *Server) deleteRule(w http.ResponseWriter, r *http.Request) {
	ru, pub, err := s.deleteLocked(r.PathValue("ref"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.await(pub)
	writeJSON(w, http.StatusOK, map[string]any{"data": ru})
}

func (s *Server) deleteLocked(ref string) (*rule, *publishing, error) {
	s.ruleWriteMu.Lock()
	defer s.ruleWriteMu.Unlock()
	ru := s.cat.byRefGet(ref)
	if ru == nil {
		return nil, nil, errNoRule(ref)
	}
	err := s.db.Update(func(tx *bolt.Tx) error {
		if err := tx.Bucket(bucketRules).Delete(idKey(ru.ID)); err != nil {
			return err
		}
		return tx.Bucket(bucketRuleRefs).Delete([]byte(ru.Ref))
	})
	if err != nil {
		return nil, nil, err
	}
	s.cat.mu.Lock()
	s.cat.remove(ru)
	s.cat.mu.Unlock()
	return ru, s.send(lifecycleOf(attune.RuleDeleted, ru)), nil
}

// lifecycleOf builds the message Attune publishes for a write of ru.
// Disabled and Deleted carry no parameters and enabled=false.
func lifecycleOf(t attune.LifecycleType, ru *rule) attune.Lifecycle {
	l := attune.Lifecycle{Type: t, RuleID: ru.ID, RuleRef: ru.Ref, TriggerRef: ru.TriggerRef}
	if ru.TriggerID != nil {
		l.TriggerID = *ru.TriggerID
	}
	if ru.ActionRef != nil {
		l.ActionRef = *ru.ActionRef
	}
	switch t {
	case attune.RuleCreated:
		l.Params, l.Enabled = ru.TriggerParams, ru.Enabled
	case attune.RuleEnabled:
		l.Params, l.Enabled = ru.TriggerParams, true
	}
	return l
}

// confirmingPublisher is a Publisher that can send without waiting for the
// broker's confirm (pubsub.AMQPPublisher): messages leave in the order of
// the sends, and their confirms are awaited together.
type confirmingPublisher interface {
	Send(ctx context.Context, m attune.Message) (*pubsub.Confirm, error)
}

// publishing is the lifecycle messages of one or more writes, sent, whose
// confirms are still to be awaited.
type publishing struct {
	msgs  []attune.Lifecycle
	confs []*pubsub.Confirm // by msgs; nil where there is nothing to await
	errs  []error           // by msgs: a send that failed
}

// send publishes msgs in order, after the commit, under ruleWriteMu (held by
// the caller), so that messages leave in commit order. With a
// confirmingPublisher it does not wait for the broker: await does, after the
// lock is released, so that the confirms of the writes waiting meanwhile
// come in one round rather than one round each. Attune's publishing is
// best-effort and nodes reconcile, so a failure is logged and counted only.
func (s *Server) send(msgs ...attune.Lifecycle) *publishing {
	if s.cfg.Publisher == nil || len(msgs) == 0 {
		return nil
	}
	p := &publishing{msgs: msgs, confs: make([]*pubsub.Confirm, len(msgs)), errs: make([]error, len(msgs))}
	cp, pipelined := s.cfg.Publisher.(confirmingPublisher)
	for i, l := range msgs {
		ctx, cancel := context.WithTimeout(context.Background(), s.cfg.PublishTimeout)
		m := attune.Message{
			RoutingKey: attune.RoutingKey(l.Type),
			Body:       attune.EnvelopeJSON(l, uuid.NewString(), s.cfg.Now()),
		}
		if pipelined {
			p.confs[i], p.errs[i] = cp.Send(ctx, m)
		} else {
			p.errs[i] = s.cfg.Publisher.Publish(ctx, m)
		}
		cancel()
	}
	return p
}

// await waits for the confirms of p (nil: nothing was sent), logging and
// counting every message that did not make it.
func (s *Server) await(p *publishing) {
	if p == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.PublishTimeout)
	defer cancel()
	for i, l := range p.msgs {
		err := p.errs[i]
		if err == nil && p.confs[i] != nil {
			err = p.confs[i].Wait(ctx)
		}
		if err != nil {
			s.metrics.publishErrors.Inc()
			s.log.Warn("publish lifecycle message failed", "type", l.Type, "rule_id", l.RuleID, "rule_ref", l.RuleRef, "err", err)
		}
	}
}
