package node

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/timerd/timerd/auth"
	"github.com/timerd/timerd/scheduler"
	"github.com/timerd/timerd/store"
)

// GET /v1/rules/{id}: one rule as the cluster runs it, answered on any node. The
// owner by the node's current ring answers; any other node forwards the request to
// it (once: ForwardedHeader stops a second hop) and, when the owner does not
// answer, says what it knows itself and where to ask (docs/operations.md,
// "Describe a rule"). With ?here=true the node asked answers itself.

// ForwardedHeader marks a request a node forwarded to a rule's owner, with the
// forwarding node's name: the owner answers it itself, never forwards it again.
const ForwardedHeader = "X-Timerd-Forwarded-By"

// Bounds of describe.
const (
	// NextSlotsShown is how many of a rule's coming slots describe lists.
	NextSlotsShown = 10
	// DeadLettersShown is how many of a rule's dead letters describe lists (its newest).
	DeadLettersShown = 10
	// forwardTimeout bounds the request to the owner, inside the caller's own
	// bound (timerd's --timeout is 5s), so that an unreachable owner leaves time
	// to answer what this node knows.
	forwardTimeout = 3 * time.Second
	// maxDescribeBody bounds the owner's answer: DeadLettersShown event bodies
	// and the rest.
	maxDescribeBody = 4 << 20
	// deadLetterScan bounds the dead letters read to find a rule's.
	deadLetterScan = 100_000
)

// RuleDescription is the JSON of GET /v1/rules/{id}.
type RuleDescription struct {
	RuleID int64 `json:"rule_id"`
	// AnsweredBy is the node that built this answer: the owner, or the node asked
	// when the owner did not answer.
	AnsweredBy string `json:"answered_by"`
	// Owner is the node that fires the rule by AnsweredBy's current ring ("" before
	// it has a view), OwnerHTTPAddr where its HTTP endpoints are ("" if unknown).
	Owner         string `json:"owner"`
	OwnerHTTPAddr string `json:"owner_http_addr,omitempty"`
	// Partition is the rule's ring partition (absent on a single node).
	Partition *int `json:"partition,omitempty"`
	// ForwardedBy is the node that was asked and forwarded the request to the owner.
	ForwardedBy string `json:"forwarded_by,omitempty"`
	// OwnerUnreachable, "<addr>: <error>", says the owner did not answer: the rest is
	// what AnsweredBy knows itself (its store holds every rule and the watermarks of
	// the fires replicated to it), and the owner is the one to ask.
	OwnerUnreachable string `json:"owner_unreachable,omitempty"`

	State    RuleState     `json:"state"`
	Schedule *RuleSchedule `json:"schedule,omitempty"`
	// Watermark is the last slot fired (or the baseline a new rule starts after) and
	// the fire count: from the engine on the node firing the rule, else the store's.
	Watermark *RuleWatermark `json:"watermark,omitempty"`
	// LastFiredAt is when the last slot was fired, known to the node that fired it
	// while it keeps its lateness (Lateness).
	LastFiredAt *time.Time `json:"last_fired_at,omitempty"`
	// Next is the next NextSlotsShown slots after the watermark and now.
	Next []RuleSlot `json:"next"`
	// Lateness is the rule's last fires by AnsweredBy, newest last: kept in memory
	// for the rules it fired recently (latenessRules at most), lost at a restart.
	Lateness []RuleFire `json:"lateness"`
	// DeadLetters is the newest DeadLettersShown of the rule's dead letters on
	// AnsweredBy, DeadLettersTotal how many it holds (of the first deadLetterScan
	// dead letters it read).
	DeadLetters      []DeadLetter `json:"dead_letters"`
	DeadLettersTotal int          `json:"dead_letters_total"`
	// Missed is the rule's missed-fire log on AnsweredBy, oldest first: the last
	// MissedShown runs of slots that did not fire on time, with the reason
	// (docs/timers.md#missed-fires). The node that fired the rule records them.
	Missed []RuleMiss `json:"missed"`
	// Operations is the operator's backfills and fires now of the rule on
	// AnsweredBy, oldest first (backfill.go): kept with the missed-fire records,
	// MissedShown of both at most.
	Operations []RuleOperation `json:"operations"`

	GeneratedAt time.Time `json:"generated_at"`
}

// RuleMiss is one run of a rule's slots that did not fire on time.
type RuleMiss struct {
	From  time.Time `json:"from,omitzero"` // the run's first slot; absent when unknown
	To    time.Time `json:"to,omitzero"`   // its last (equal to From for one)
	Count uint64    `json:"count"`
	// Estimated: Count is extrapolated (a long run of a cron schedule).
	Estimated  bool      `json:"estimated,omitempty"`
	Reason     string    `json:"reason"`
	DetectedAt time.Time `json:"detected_at"`
	Detail     string    `json:"detail,omitempty"`
}

// RuleOperation is one backfill (Kind "backfilled": the first and last slot sent
// and how many) or fire now (Kind "fired_manually": its time, Detail its key).
type RuleOperation struct {
	Kind   string    `json:"kind"`
	From   time.Time `json:"from"`
	To     time.Time `json:"to"`
	Count  uint64    `json:"count"`
	At     time.Time `json:"at"`
	Detail string    `json:"detail,omitempty"`
}

// MissedShown is how many of a rule's missed-fire records describe shows: all a
// node keeps (store's bound).
const MissedShown = 100

// RuleState is what AnsweredBy's store and engine hold of the rule.
type RuleState struct {
	// Known: the store holds the rule (every node stores every enabled rule).
	Known bool `json:"known"`
	// RemovedAt: the rule was disabled or deleted at this version; its tombstone
	// keeps an older change from bringing it back.
	RemovedAt *time.Time `json:"removed_at,omitempty"`
	// Invalid is why the stored timer does not parse: the rule does not fire.
	Invalid string `json:"invalid,omitempty"`
	// Firing: the rule is in AnsweredBy's engine (it holds its partition).
	Firing bool `json:"firing"`
	// Done: a timer with no slot left (a datetime that fired).
	Done bool `json:"done,omitempty"`
}

// RuleSchedule is the rule's timer as parsed.
type RuleSchedule struct {
	TriggerRef   string     `json:"trigger_ref"`
	Kind         string     `json:"kind"`
	Interval     string     `json:"interval,omitempty"`
	Anchor       *time.Time `json:"anchor,omitempty"`
	Expression   string     `json:"expression,omitempty"`
	Timezone     string     `json:"timezone,omitempty"`
	DSTGap       string     `json:"dst_gap,omitempty"`
	DSTOverlap   string     `json:"dst_overlap,omitempty"`
	FireAt       *time.Time `json:"fire_at,omitempty"`
	Misfire      string     `json:"misfire"`
	MisfireGrace string     `json:"misfire_grace"` // "unlimited": a late slot always fires
	Jitter       string     `json:"jitter,omitempty"`
}

// RuleWatermark is a rule's watermark.
type RuleWatermark struct {
	Slot  time.Time `json:"slot"`
	Count uint64    `json:"count"`
}

// RuleSlot is one coming slot and when it fires (later than the slot by the
// rule's jitter).
type RuleSlot struct {
	Slot    time.Time `json:"slot"`
	FiresAt time.Time `json:"fires_at"`
}

// RuleFire is one fire of the rule: its slot, when it was fired and how late.
type RuleFire struct {
	Slot    time.Time `json:"slot"`
	FiredAt time.Time `json:"fired_at"`
	// Late is FiredAt less the slot's fire time (with jitter); Lateness its
	// seconds, for scripts.
	Late     string  `json:"late"`
	Lateness float64 `json:"lateness_seconds"`
	CatchUp  bool    `json:"catch_up,omitempty"` // fired by the misfire policy, late
}

// handleDescribe serves GET /v1/rules/{id}.
func (n *Node) handleDescribe(w http.ResponseWriter, r *http.Request) {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil || id < 1 {
		http.Error(w, fmt.Sprintf("rule id %q: want a whole number ≥ 1", scheduler.Truncate(r.PathValue("id"), 40)),
			http.StatusBadRequest)
		return
	}
	owner, part := n.ruleOwner(id)
	forwardedBy := r.Header.Get(ForwardedHeader)
	var (
		unreachable string
		ownerErr    error
	)
	here := r.URL.Query().Get("here") == "true" // the caller wants this node's own knowledge
	if owner != "" && owner != n.selfName() && forwardedBy == "" && !here {
		var d RuleDescription
		if d, ownerErr = n.forwardDescribe(r, owner, id); ownerErr == nil {
			writeJSON(w, http.StatusOK, d)
			return
		}
		unreachable = ownerErr.Error()
	}
	d, known, err := n.describeLocal(id, owner, part)
	if err != nil {
		n.log.Error("describe rule", "rule_id", id, "err", err)
		http.Error(w, "describe rule: store error (see the node's log)", http.StatusInternalServerError)
		return
	}
	d.OwnerUnreachable = unreachable
	if !known {
		msg := fmt.Sprintf("rule %d is not known: %s stores no rule, tombstone, watermark or dead letter of it", id, n.selfName())
		switch {
		case errors.Is(ownerErr, errOwnerNotFound):
			msg += fmt.Sprintf(", nor does its owner %s", owner)
		case ownerErr != nil:
			msg += fmt.Sprintf("; its owner %s did not answer (%s)", owner, unreachable)
		}
		http.Error(w, msg, http.StatusNotFound)
		return
	}
	writeJSON(w, http.StatusOK, d)
}

// ruleOwner is the node that fires rule id by this node's current ring (the
// protocol's view, which drops a silent member within seconds), and its
// partition (-1 on a single node): "" before the node has a view.
func (n *Node) ruleOwner(id int64) (string, int) {
	if n.drv == nil {
		return n.selfName(), -1
	}
	p := n.drv.partitionOf(id)
	if view := n.drv.snap.Load().status.View; len(view) > 0 {
		return n.drv.ringOf(view).Owner(p), p
	}
	return n.cl.Owner(id), p
}

// errOwnerNotFound: the owner answered that it does not know the rule.
var errOwnerNotFound = errors.New("the owner does not know the rule")

// forwardDescribe asks owner for its description of rule id, with the caller's
// Authorization and ForwardedHeader, bounded by forwardTimeout and
// maxDescribeBody, never following a redirect. Its error reads "<addr>: <why>".
func (n *Node) forwardDescribe(r *http.Request, owner string, id int64) (RuleDescription, error) {
	addr := n.cl.HTTPAddr(owner)
	if addr == "" {
		return RuleDescription{}, fmt.Errorf("%s: its HTTP address is unknown (no TIMERD_HTTP_ADDR, or a build that does not tell it)", owner)
	}
	ctx, cancel := context.WithTimeout(r.Context(), forwardTimeout)
	defer cancel()
	c := &Client{base: "http://" + addr, http: auth.NoRedirects(nil), maxBody: maxDescribeBody,
		header: http.Header{ForwardedHeader: {n.selfName()}}}
	if a := r.Header.Get("Authorization"); a != "" {
		if !n.gossipEncrypted() {
			// The address came by plain gossip, which anyone who reaches the gossip
			// port can forge: the operator's token is not sent there.
			return RuleDescription{}, fmt.Errorf("%s: not asked: gossip is not encrypted, so its address is not "+
				"authenticated and the operator's token is not forwarded to it; ask it directly", addr)
		}
		c.header.Set("Authorization", a)
	}
	d, _, err := c.DescribeRule(ctx, id)
	if se := (*StatusError)(nil); errors.As(err, &se) && se.Code == http.StatusNotFound {
		err = fmt.Errorf("%w: %s", errOwnerNotFound, se.Message)
	}
	if err != nil {
		return RuleDescription{}, fmt.Errorf("%s: %w", addr, err)
	}
	d.ForwardedBy = n.selfName()
	return d, nil
}

// gossipEncrypted reports whether the members' gossip, and so the HTTP addresses
// it carries, comes from holders of the cluster's key.
func (n *Node) gossipEncrypted() bool {
	c := n.cfg.Cluster
	return c != nil && (c.GossipKey != "" || c.GossipKeyringFile != "")
}

// selfName is this node's name in the ring.
func (n *Node) selfName() string {
	if n.cl != nil {
		return n.cl.Name()
	}
	return n.cfg.NodeName
}

// describeLocal is what this node knows of rule id; known is false when it holds
// nothing of it.
func (n *Node) describeLocal(id int64, owner string, part int) (d RuleDescription, known bool, err error) {
	now := n.cfg.Now()
	d = RuleDescription{RuleID: id, AnsweredBy: n.selfName(), Owner: owner, Next: []RuleSlot{}, Lateness: []RuleFire{},
		DeadLetters: []DeadLetter{}, Missed: []RuleMiss{}, Operations: []RuleOperation{}, GeneratedAt: now.UTC()}
	if part >= 0 {
		d.Partition = &part
	}
	if owner != "" {
		if owner == n.selfName() {
			d.OwnerHTTPAddr = n.HTTPAddr()
		}
		if n.cl != nil {
			d.OwnerHTTPAddr = n.cl.HTTPAddr(owner)
		}
	}
	rule, storedWM, ok, err := n.store.Rule(id)
	if err != nil {
		return d, false, err
	}
	d.State.Known = ok
	var timer *scheduler.Timer
	if ok {
		timer = rule.Timer
		if timer == nil {
			var perr error
			if timer, perr = scheduler.Parse(rule.TriggerRef, rule.Params, id); perr != nil {
				d.State.Invalid = perr.Error()
			}
		}
	} else if ts, ok, err := n.store.Tombstone(id); err != nil {
		return d, false, err
	} else if ok {
		at := ts.Version.UTC()
		d.State.RemovedAt = &at
	}
	wm, firing := n.engine.Watermark(id)
	d.State.Firing = firing
	if !firing {
		wm = scheduler.Watermark(storedWM)
		if !ok {
			wm = n.clusterWatermark(id)
		}
	}
	if !wm.Slot.IsZero() {
		d.Watermark = &RuleWatermark{Slot: wm.Slot.UTC(), Count: wm.Count}
	}
	if timer != nil {
		d.Schedule = n.schedule(timer)
		after := wm.Slot
		if after.Before(now) {
			after = now
		}
		for len(d.Next) < NextSlotsShown {
			s, more := timer.Next(after)
			if !more {
				break
			}
			d.Next = append(d.Next, RuleSlot{Slot: s.UTC(), FiresAt: timer.FireTime(id, s).UTC()})
			after = s
		}
		_, more := timer.Next(wm.Slot)
		d.State.Done = !more && !wm.Slot.IsZero()
	}
	d.Lateness = n.fired.of(id)
	if l := len(d.Lateness); l > 0 && d.Watermark != nil && d.Lateness[l-1].Slot.Equal(d.Watermark.Slot) {
		at := d.Lateness[l-1].FiredAt
		d.LastFiredAt = &at
	}
	if d.DeadLetters, d.DeadLettersTotal, err = n.ruleDeadLetters(id); err != nil {
		return d, false, err
	}
	missed, err := n.MissedSlots(id)
	if err != nil {
		return d, false, err
	}
	for _, m := range missed[max(0, len(missed)-MissedShown):] {
		if m.Reason == HistoryBackfilled || m.Reason == HistoryFiredManually {
			d.Operations = append(d.Operations, RuleOperation{Kind: m.Reason, From: m.From.UTC(), To: m.To.UTC(),
				Count: m.Count, At: m.DetectedAt.UTC(), Detail: m.Detail})
			continue
		}
		d.Missed = append(d.Missed, RuleMiss{From: m.From.UTC(), To: m.To.UTC(), Count: m.Count, Estimated: m.Estimated,
			Reason: m.Reason, DetectedAt: m.DetectedAt.UTC(), Detail: m.Detail})
	}
	known = ok || d.State.RemovedAt != nil || d.Watermark != nil || d.DeadLettersTotal > 0 || len(d.Missed) > 0 ||
		len(d.Operations) > 0
	return d, known, nil
}

// schedule is t as describe shows it, with the grace the engine applies.
func (n *Node) schedule(t *scheduler.Timer) *RuleSchedule {
	s := &RuleSchedule{TriggerRef: t.TriggerRef, Kind: string(t.Kind), Misfire: string(t.Misfire)}
	if s.Misfire == "" {
		s.Misfire = string(scheduler.FireOnce)
	}
	switch grace := t.MisfireGrace; {
	case grace == scheduler.UnlimitedGrace:
		s.MisfireGrace = "unlimited"
	case grace > 0:
		s.MisfireGrace = grace.String()
	case n.cfg.MisfireGrace == scheduler.UnlimitedGrace:
		s.MisfireGrace = "unlimited"
	case n.cfg.MisfireGrace > 0:
		s.MisfireGrace = n.cfg.MisfireGrace.String()
	default:
		s.MisfireGrace = scheduler.DefaultMisfireGrace.String()
	}
	if t.Jitter > 0 {
		s.Jitter = t.Jitter.String()
	}
	if t.Interval > 0 {
		s.Interval = t.Interval.String()
		if !t.Anchor.IsZero() {
			a := t.Anchor.UTC()
			s.Anchor = &a
		}
	}
	switch t.Kind {
	case scheduler.KindCron:
		s.Expression, s.Timezone = t.Expression, t.Timezone
		s.DSTGap, s.DSTOverlap = string(t.DSTGap), string(t.DSTOverlap)
	case scheduler.KindDatetime:
		at := t.FireAt.UTC()
		s.FireAt, s.Timezone = &at, t.Timezone
	}
	return s
}

// ruleDeadLetters is the newest DeadLettersShown dead letters of rule id on this
// node and how many it has, of the first deadLetterScan read.
func (n *Node) ruleDeadLetters(id int64) ([]DeadLetter, int, error) {
	out := []DeadLetter{}
	if c, _ := n.store.DeadLetterCount(); c == 0 {
		return out, 0, nil
	}
	var (
		newest []store.DeadLetter // a ring of the last DeadLettersShown
		total  int
		after  uint64
	)
	for scanned := 0; scanned < deadLetterScan; {
		page, err := n.store.DeadLetters(after, MaxDeadLetterPage)
		if err != nil {
			return nil, 0, err
		}
		for _, dl := range page {
			if dl.Event.RuleID != id {
				continue
			}
			if len(newest) < DeadLettersShown {
				newest = append(newest, dl)
			} else {
				newest[total%DeadLettersShown] = dl
			}
			total++
		}
		scanned += len(page)
		if len(page) < MaxDeadLetterPage {
			break
		}
		after = page[len(page)-1].Seq
	}
	start := 0
	if total > DeadLettersShown {
		start = total % DeadLettersShown // the oldest kept
	}
	for i := range newest {
		out = append(out, deadLetterJSON(newest[(start+i)%len(newest)]))
	}
	return out, total, nil
}
