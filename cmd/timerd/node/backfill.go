package node

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/timerd/timerd/ingest/attune"
	"github.com/timerd/timerd/scheduler"
	"github.com/timerd/timerd/scheduler/metricset"
	"github.com/timerd/timerd/store"
)

// POST /v1/rules/{id}/backfill and POST /v1/rules/{id}/fire: an operator's events
// for one rule, sent by the node that fires it (docs/operations.md, "Backfill and
// fire now"). Any node takes the request and forwards it to the rule's owner by its
// ring, once; the owner checks it holds the rule's partition, writes the events to its
// outbox ready to deliver, with a record in the rule's history (the missed-fire log's
// bucket), in one transaction, and answers what it sent. The events change no
// watermark: the schedule goes on as it was.
//
// Which slots a backfill sends: a slot after the rule's watermark is not fired yet,
// and the schedule fires it (left_to_schedule). A slot at or before it was sent, or
// is from before the rule began (skipped; with force, sent again under its key:
// resent), unless the rule's history says it was not sent: a run the misfire policy
// dropped (skipped_by_policy, collapsed_by_fire_once) that no later backfill sent,
// or any slot of a rule that never fired. Those are sent now (sent), under their
// slot's own key.

// History records of an operator's events, in the rule's missed-fire log.
const (
	HistoryBackfilled    = "backfilled"
	HistoryFiredManually = "fired_manually"
)

// Bounds of a backfill and of the requests.
const (
	// MaxBackfillSlots bounds the slots of one backfill's range (one store
	// transaction, one answer): a longer range is refused, to be split.
	MaxBackfillSlots = 10_000
	// maxManualBody bounds a request's body.
	maxManualBody = 4 << 10
	// forwardWriteTimeout bounds a forwarded backfill or fire, inside the CLI's
	// default --timeout of 5 s.
	forwardWriteTimeout = 4 * time.Second
	// maxForwardAnswer bounds the owner's answer that is relayed.
	maxForwardAnswer = 64 << 10
)

// BackfillRequest is the JSON of POST /v1/rules/{id}/backfill.
type BackfillRequest struct {
	From time.Time `json:"from"`
	To   time.Time `json:"to"`
	// Force sends again, under their keys, the slots that were sent already.
	Force bool `json:"force,omitempty"`
	// DryRun answers what would be sent, and sends nothing.
	DryRun bool `json:"dry_run,omitempty"`
}

// BackfillResult is the answer of a backfill: the rule's slots in [From, To], by
// what happened to them.
type BackfillResult struct {
	RuleID      int64     `json:"rule_id"`
	AnsweredBy  string    `json:"answered_by"`
	ForwardedBy string    `json:"forwarded_by,omitempty"`
	From        time.Time `json:"from"`
	To          time.Time `json:"to"`
	DryRun      bool      `json:"dry_run,omitempty"`
	Slots       int       `json:"slots"`
	// Sent: slots recorded as never sent (dropped by the misfire policy, or of a
	// rule that never fired), sent now.
	Sent int `json:"sent"`
	// Resent: Skipped slots sent with force, under their own keys.
	Resent int `json:"resent"`
	// Skipped: slots at or before the watermark that the rule's history does not
	// record as dropped, not sent (without force): slots sent before, and slots
	// from before the rule's first fire (timerd keeps no record of when it began).
	Skipped int `json:"skipped"`
	// LeftToSchedule: slots after the watermark, which the schedule fires.
	LeftToSchedule int `json:"left_to_schedule"`
	// FirstSent and LastSent are the first and last slot sent (or resent).
	FirstSent *time.Time     `json:"first_sent,omitempty"`
	LastSent  *time.Time     `json:"last_sent,omitempty"`
	Watermark *RuleWatermark `json:"watermark,omitempty"`
}

// FireResult is the answer of a fire now.
type FireResult struct {
	RuleID         int64     `json:"rule_id"`
	AnsweredBy     string    `json:"answered_by"`
	ForwardedBy    string    `json:"forwarded_by,omitempty"`
	IdempotencyKey string    `json:"idempotency_key"`
	FiredAt        time.Time `json:"fired_at"`
}

// manualMetrics counts an operator's events: timerd_manual_events_total{kind}.
type manualMetrics struct{ backfill, resend, fire prometheus.Counter }

func newManualMetrics(reg prometheus.Registerer) (*manualMetrics, error) {
	vec := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "timerd_manual_events_total",
		Help: "Events an operator asked for and this node wrote to its outbox, by kind: backfill (a slot never sent before), resend (a slot sent again by a forced backfill), fire (timerd rules fire).",
	}, []string{"kind"})
	if _, err := metricset.Register(reg, vec); err != nil {
		return nil, fmt.Errorf("manual events: %w", err)
	}
	return &manualMetrics{backfill: vec.WithLabelValues("backfill"), resend: vec.WithLabelValues("resend"),
		fire: vec.WithLabelValues("fire")}, nil
}

// manualError is a refusal of a backfill or a fire: its status and message.
type manualError struct {
	code int
	msg  string
}

func (e *manualError) Error() string { return e.msg }

func refuse(code int, format string, args ...any) error {
	return &manualError{code: code, msg: fmt.Sprintf(format, args...)}
}

// handleBackfill serves POST /v1/rules/{id}/backfill.
func (n *Node) handleBackfill(w http.ResponseWriter, r *http.Request) {
	id, body, ok := n.manualRequest(w, r)
	if !ok {
		return
	}
	var req BackfillRequest
	if err := decodeStrict(body, &req); err != nil {
		http.Error(w, "backfill: the body is not a backfill request: "+err.Error(), http.StatusBadRequest)
		return
	}
	if err := n.checkRange(req); err != nil {
		n.writeManualError(w, "backfill", id, err)
		return
	}
	if !n.atOwner(w, r, id, body) {
		return
	}
	res, err := n.backfill(id, req)
	if err != nil {
		n.writeManualError(w, "backfill", id, err)
		return
	}
	res.ForwardedBy = r.Header.Get(ForwardedHeader)
	writeJSON(w, http.StatusOK, res)
}

// handleFire serves POST /v1/rules/{id}/fire.
func (n *Node) handleFire(w http.ResponseWriter, r *http.Request) {
	id, body, ok := n.manualRequest(w, r)
	if !ok {
		return
	}
	if len(bytes.TrimSpace(body)) > 0 {
		var none struct{}
		if err := decodeStrict(body, &none); err != nil {
			http.Error(w, "fire: the body must be empty or {}: "+err.Error(), http.StatusBadRequest)
			return
		}
	}
	if !n.atOwner(w, r, id, body) {
		return
	}
	res, err := n.fireNow(id)
	if err != nil {
		n.writeManualError(w, "fire", id, err)
		return
	}
	res.ForwardedBy = r.Header.Get(ForwardedHeader)
	writeJSON(w, http.StatusOK, res)
}

// manualRequest reads the rule id and the bounded body of a backfill or a fire; ok
// is false when it answered the request already.
func (n *Node) manualRequest(w http.ResponseWriter, r *http.Request) (id int64, body []byte, ok bool) {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil || id < 1 {
		http.Error(w, fmt.Sprintf("rule id %q: want a whole number ≥ 1", scheduler.Truncate(r.PathValue("id"), 40)),
			http.StatusBadRequest)
		return 0, nil, false
	}
	body, err = io.ReadAll(http.MaxBytesReader(w, r.Body, maxManualBody))
	if err != nil {
		http.Error(w, fmt.Sprintf("the body is larger than %d bytes, or could not be read", maxManualBody),
			http.StatusRequestEntityTooLarge)
		return 0, nil, false
	}
	return id, body, true
}

// decodeStrict decodes one JSON value into v, refusing unknown fields and
// trailing data.
func decodeStrict(body []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("trailing data after the JSON value")
	}
	return nil
}

// checkRange refuses a backfill range that is not a past range.
func (n *Node) checkRange(req BackfillRequest) error {
	now := n.cfg.Now()
	switch {
	case req.From.IsZero() || req.To.IsZero():
		return refuse(http.StatusBadRequest, "backfill: from and to are both needed (RFC 3339 times)")
	case req.To.Before(req.From):
		return refuse(http.StatusBadRequest, "backfill: to (%s) is before from (%s)", fmtTime(req.To), fmtTime(req.From))
	case req.To.After(now):
		return refuse(http.StatusBadRequest, "backfill: to (%s) is in the future (now is %s): a backfill sends past slots; "+
			"the schedule fires the coming ones", fmtTime(req.To), fmtTime(now))
	}
	return nil
}

func fmtTime(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }

// writeManualError answers err: a refusal's own status, else 500 (logged).
func (n *Node) writeManualError(w http.ResponseWriter, what string, id int64, err error) {
	if me := (*manualError)(nil); errors.As(err, &me) {
		http.Error(w, me.msg, me.code)
		return
	}
	n.log.Error(what+" of a rule failed", "rule_id", id, "err", err)
	http.Error(w, what+": the node could not write the events (see its log): nothing was sent", http.StatusInternalServerError)
}

// atOwner reports whether this node serves a backfill or a fire of rule id itself:
// it fires the rule by its ring. Otherwise it forwards the request to the owner, once,
// relays the answer and reports false, as it does when it cannot.
func (n *Node) atOwner(w http.ResponseWriter, r *http.Request, id int64, body []byte) bool {
	owner, _ := n.ruleOwner(id)
	switch {
	case owner == n.selfName():
		return true
	case owner == "":
		http.Error(w, fmt.Sprintf("%s has no view of the cluster yet, so no owner for rule %d: try again in a few seconds",
			n.selfName(), id), http.StatusServiceUnavailable)
		return false
	case r.Header.Get(ForwardedHeader) != "":
		http.Error(w, fmt.Sprintf("%s forwarded this request for rule %d here, but %s's ring gives it to %s: the ring is "+
			"changing; nothing was sent; try again in a few seconds", r.Header.Get(ForwardedHeader), id, n.selfName(), owner),
			http.StatusConflict)
		return false
	}
	n.forwardWrite(w, r, owner, body)
	return false
}

// forwardWrite sends r, with body, to owner and relays its answer (status and body).
// The caller's Authorization goes only to an address that came by encrypted gossip.
func (n *Node) forwardWrite(w http.ResponseWriter, r *http.Request, owner string, body []byte) {
	addr := n.cl.HTTPAddr(owner)
	direct := fmt.Sprintf("ask the owner directly (--addr %s)", addr)
	if addr == "" {
		http.Error(w, fmt.Sprintf("the rule's owner is %s, whose HTTP address is unknown (no TIMERD_HTTP_ADDR, or a build "+
			"that does not tell it): nothing was sent; ask it directly", owner), http.StatusBadGateway)
		return
	}
	c := &Client{base: "http://" + addr, http: n.forwardHTTP(), header: http.Header{ForwardedHeader: {n.selfName()}}}
	if a := r.Header.Get("Authorization"); a != "" {
		if !n.gossipEncrypted() {
			http.Error(w, fmt.Sprintf("the rule's owner is %s at %s, not asked: gossip is not encrypted, so its address is "+
				"not authenticated and the operator's token is not forwarded to it; nothing was sent; %s", owner, addr, direct),
				http.StatusBadGateway)
			return
		}
		c.header.Set("Authorization", a)
	}
	ctx, cancel := context.WithTimeout(r.Context(), forwardWriteTimeout)
	defer cancel()
	resp, err := c.send(ctx, http.MethodPost, c.base+r.URL.Path, bytes.NewReader(body))
	if err != nil {
		http.Error(w, fmt.Sprintf("the rule's owner %s did not answer (%v): it may or may not have sent the events; "+
			"`timerd rules describe` shows its history; %s", owner, err, direct), http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxForwardAnswer+1))
	if err != nil || len(raw) > maxForwardAnswer {
		http.Error(w, fmt.Sprintf("the rule's owner %s answered %d, and its answer could not be read whole: "+
			"`timerd rules describe` shows what it did; %s", owner, resp.StatusCode, direct), http.StatusBadGateway)
		return
	}
	if resp.StatusCode == http.StatusOK {
		w.Header().Set("Content-Type", "application/json")
	} else {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	}
	w.WriteHeader(resp.StatusCode)
	_, _ = w.Write(raw)
}

// forwardHTTP is the HTTP client of forwarded requests: it never follows a redirect.
func (n *Node) forwardHTTP() *http.Client { return NewClient("", "").http }

// manualRule is what a backfill or a fire needs of rule id, read on the owner.
type manualRule struct {
	timer *scheduler.Timer
	wm    scheduler.Watermark
}

// ownedRule reads rule id and its watermark as the engine fires it; a rule this
// node does not know, or does not fire, or whose timer does not parse is refused.
func (n *Node) ownedRule(id int64) (manualRule, error) {
	rule, storedWM, ok, err := n.store.Rule(id)
	if err != nil {
		return manualRule{}, err
	}
	if !ok {
		if ts, removed, err := n.store.Tombstone(id); err != nil {
			return manualRule{}, err
		} else if removed {
			return manualRule{}, refuse(http.StatusNotFound, "rule %d was disabled or deleted (at %s): nothing was sent",
				id, fmtTime(ts.Version))
		}
		return manualRule{}, refuse(http.StatusNotFound, "rule %d is not known to %s (not a timer rule, or not created yet): "+
			"nothing was sent", id, n.selfName())
	}
	timer := rule.Timer
	if timer == nil {
		var perr error
		if timer, perr = scheduler.Parse(rule.TriggerRef, rule.Params, id); perr != nil {
			return manualRule{}, refuse(http.StatusConflict, "rule %d's timer does not parse, so it does not fire: %v; "+
				"nothing was sent", id, perr)
		}
	}
	wm, firing := n.engine.Watermark(id)
	switch {
	case firing:
	case n.drv != nil:
		return manualRule{}, refuse(http.StatusServiceUnavailable, "%s does not fire rule %d yet (it is taking over the "+
			"rule's partition): nothing was sent; try again in a few seconds", n.selfName(), id)
	default:
		wm = scheduler.Watermark(storedWM)
	}
	return manualRule{timer: timer, wm: wm}, nil
}

// slotClass is what a backfill does with one slot.
type slotClass int

const (
	classSend     slotClass = iota // never sent: send it
	classSent                      // sent before: skip it, or resend it with force
	classSchedule                  // after the watermark: the schedule fires it
)

// unsentRuns is the runs of a rule's slots that its history says were not sent: the
// misfire policy's drops, less what a later backfill sent.
type unsentRuns struct{ runs []store.MissedSlot }

func newUnsentRuns(history []store.MissedSlot) unsentRuns {
	var u unsentRuns
	for _, m := range history { // oldest first
		switch m.Reason {
		case string(scheduler.MissSkipped), string(scheduler.MissCollapsed):
			if !m.From.IsZero() {
				u.runs = append(u.runs, m)
			}
		case HistoryBackfilled:
			u.runs = append(u.runs, m)
		}
	}
	return u
}

// unsent reports whether slot s falls in a dropped run that no later backfill covers.
func (u unsentRuns) unsent(s time.Time) bool {
	dropped := false
	for _, m := range u.runs {
		if s.Before(m.From) || s.After(m.To) {
			continue
		}
		dropped = m.Reason != HistoryBackfilled
	}
	return dropped
}

func (mr manualRule) classify(s time.Time, u unsentRuns) slotClass {
	switch {
	case mr.wm.Slot.IsZero():
		return classSend // no watermark: the schedule starts after now
	case s.After(mr.wm.Slot):
		return classSchedule
	case mr.wm.Count == 0 || u.unsent(s):
		return classSend
	}
	return classSent
}

// backfill sends rule id's slots in [req.From, req.To] (checkRange's range) that
// were never sent, and with req.Force those sent before.
func (n *Node) backfill(id int64, req BackfillRequest) (BackfillResult, error) {
	n.manualMu.Lock() // two backfills of one range must not both find a slot unsent
	defer n.manualMu.Unlock()
	res := BackfillResult{RuleID: id, AnsweredBy: n.selfName(), From: req.From.UTC(), To: req.To.UTC(), DryRun: req.DryRun}
	mr, err := n.ownedRule(id)
	if err != nil {
		return res, err
	}
	if !mr.wm.Slot.IsZero() {
		res.Watermark = &RuleWatermark{Slot: mr.wm.Slot.UTC(), Count: mr.wm.Count}
	}
	history, err := n.store.MissedSlots(id)
	if err != nil {
		return res, err
	}
	u := newUnsentRuns(history)
	now := n.cfg.Now()
	var evs []store.Event
	s, more := mr.timer.Next(req.From.Add(-time.Nanosecond))
	for ; more && !s.After(req.To); s, more = mr.timer.Next(s) {
		if res.Slots++; res.Slots > MaxBackfillSlots {
			return res, refuse(http.StatusBadRequest, "backfill: rule %d has more than %d slots from %s to %s: split the range",
				id, MaxBackfillSlots, fmtTime(req.From), fmtTime(req.To))
		}
		switch mr.classify(s, u) {
		case classSchedule:
			res.LeftToSchedule++
			continue
		case classSent:
			if !req.Force {
				res.Skipped++
				continue
			}
			res.Resent++
		default:
			res.Sent++
		}
		if res.FirstSent == nil {
			first := s.UTC()
			res.FirstSent = &first
		}
		last := s.UTC()
		res.LastSent = &last
		if req.DryRun {
			continue
		}
		next, _ := mr.timer.Next(s)
		ev, err := attune.BuildEvent(scheduler.Fire{RuleID: id, Slot: s, FiredAt: now, Count: mr.wm.Count, Next: next,
			Timer: mr.timer}, n.cfg.SensorRef)
		if err == nil {
			ev, err = attune.MarkEvent(ev, "backfill")
		}
		if err != nil {
			return res, fmt.Errorf("backfill of rule %d: %w", id, err)
		}
		evs = append(evs, ev)
	}
	if req.DryRun || len(evs) == 0 {
		return res, nil
	}
	detail := fmt.Sprintf("%d sent, %d resent, %d skipped, %d left to the schedule; asked for %s to %s",
		res.Sent, res.Resent, res.Skipped, res.LeftToSchedule, fmtTime(req.From), fmtTime(req.To))
	rec := store.MissedSlot{RuleID: id, From: *res.FirstSent, To: *res.LastSent, Count: uint64(len(evs)),
		Reason: HistoryBackfilled, DetectedAt: now, Detail: detail}
	if err := n.commitManual(id, evs, rec); err != nil {
		return res, err
	}
	n.manual.backfill.Add(float64(res.Sent))
	n.manual.resend.Add(float64(res.Resent))
	n.log.Info("backfill", "rule_id", id, "from", fmtTime(req.From), "to", fmtTime(req.To), "sent", res.Sent,
		"resent", res.Resent, "skipped", res.Skipped, "left_to_schedule", res.LeftToSchedule)
	return res, nil
}

// fireNow sends one extra event of rule id now, under a key of its own.
func (n *Node) fireNow(id int64) (FireResult, error) {
	n.manualMu.Lock()
	defer n.manualMu.Unlock()
	res := FireResult{RuleID: id, AnsweredBy: n.selfName()}
	mr, err := n.ownedRule(id)
	if err != nil {
		return res, err
	}
	at := n.cfg.Now().UTC()
	if !at.After(n.lastManual) {
		at = n.lastManual.Add(time.Nanosecond) // a key of its own, even within one clock tick
	}
	next, _ := mr.timer.Next(maxTime(mr.wm.Slot, at))
	ev, err := attune.BuildEvent(scheduler.Fire{RuleID: id, Slot: at, FiredAt: at, Count: mr.wm.Count, Next: next,
		Timer: mr.timer}, n.cfg.SensorRef)
	if err == nil {
		ev, err = attune.MarkEvent(ev, "manual")
	}
	if err != nil {
		return res, fmt.Errorf("fire of rule %d: %w", id, err)
	}
	ev.IdempotencyKey = attune.ManualKey(id, at)
	rec := store.MissedSlot{RuleID: id, From: at, To: at, Count: 1, Reason: HistoryFiredManually, DetectedAt: at,
		Detail: ev.IdempotencyKey}
	if err := n.commitManual(id, []store.Event{ev}, rec); err != nil {
		return res, err
	}
	n.lastManual = at
	n.manual.fire.Inc()
	n.log.Info("fire now", "rule_id", id, "idempotency_key", ev.IdempotencyKey)
	res.IdempotencyKey, res.FiredAt = ev.IdempotencyKey, at
	return res, nil
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// commitManual writes an operator's events of rule id, ready to deliver, with their
// history record, and wakes delivery. In a cluster the node must hold the rule's
// partition and its lease (checked under stepMu, as the commit of fires is): a
// node that lost them meanwhile sends nothing.
func (n *Node) commitManual(id int64, evs []store.Event, rec store.MissedSlot) error {
	if d := n.drv; d != nil {
		d.stepMu.Lock()
		defer d.stepMu.Unlock()
		if d.offline.Load() {
			return refuse(http.StatusServiceUnavailable, "%s's store cannot commit now: nothing was sent", n.selfName())
		}
		if _, ok := d.snap.Load().mayFire(d.partitionOf(id), bootNow()); !ok {
			return refuse(http.StatusServiceUnavailable, "%s no longer holds rule %d's partition (or its lease lapsed): "+
				"nothing was sent; try again in a few seconds", n.selfName(), id)
		}
	}
	err := n.store.AppendManual(evs, []store.MissedSlot{rec})
	n.health.record(err)
	if err != nil {
		return err
	}
	n.delivery.Notify()
	return nil
}
