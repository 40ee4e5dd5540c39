package node

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/timerd/timerd/cluster"
	"github.com/timerd/timerd/scheduler"
	"github.com/timerd/timerd/test/testkit"
)

// describe GETs /v1/rules/{id} of base with the given headers.
func describe(t *testing.T, base, id string, header http.Header) (int, RuleDescription, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, base+"/v1/rules/"+id, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header = header
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var d RuleDescription
	if resp.StatusCode == http.StatusOK {
		if err := json.Unmarshal(raw, &d); err != nil {
			t.Fatalf("GET /v1/rules/%s: %v in %s", id, err, raw)
		}
	}
	return resp.StatusCode, d, string(raw)
}

// A running single node describes its rules: the schedule as parsed, the
// watermark, the next 10 slots with their jittered fire times, the lateness of
// its last fires; an unknown rule is a 404 saying so and a bad id a 400.
func TestDescribeSingleNode(t *testing.T) {
	t.Parallel()
	sys := startAPI(t, t.TempDir())
	n := sys.startNode(t.TempDir(), true)
	base := "http://" + n.HTTPAddr()
	every := sys.createRule("every", "core.intervaltimer", `{"unit":"seconds","interval":1,"misfire":"fire_all","misfire_grace":"5s"}`)
	cron := sys.createRule("cron", "core.crontimer", `{"expression":"0 30 2 * * *","timezone":"Europe/Berlin","dst_gap":"skip","dst_overlap":"twice","jitter":"10m"}`)

	testkit.Eventually(t, 15*time.Second, "rule every fired 3 times and its lateness kept", func() bool {
		wm, ok := n.engine.Watermark(every)
		return ok && wm.Count >= 3 && len(n.fired.of(every)) >= 3
	})
	code, d, body := describe(t, base, fmt.Sprint(every), nil)
	if code != http.StatusOK {
		t.Fatalf("describe %d = %d %s, want 200", every, code, body)
	}
	if d.RuleID != every || d.Owner != "test" || d.AnsweredBy != "test" || d.OwnerHTTPAddr != n.HTTPAddr() || d.Partition != nil ||
		d.ForwardedBy != "" || d.OwnerUnreachable != "" {
		t.Errorf("describe %d: rule %d owner %q at %q answered by %q, forwarded by %q, unreachable %q; want itself, test, test, no forward",
			every, d.RuleID, d.Owner, d.OwnerHTTPAddr, d.AnsweredBy, d.ForwardedBy, d.OwnerUnreachable)
	}
	if !d.State.Known || !d.State.Firing || d.State.Invalid != "" || d.State.Done || d.State.RemovedAt != nil {
		t.Errorf("describe %d: state %+v, want known and firing", every, d.State)
	}
	s := d.Schedule
	if s == nil || s.Kind != "interval" || s.Interval != "1s" || s.Misfire != "fire_all" || s.MisfireGrace != "5s" || s.Jitter != "" {
		t.Fatalf("describe %d: schedule %+v, want interval 1s, fire_all, grace 5s", every, s)
	}
	if d.Watermark == nil || d.Watermark.Count < 3 {
		t.Fatalf("describe %d: watermark %+v, want 3 fires or more", every, d.Watermark)
	}
	if len(d.Next) != NextSlotsShown {
		t.Fatalf("describe %d: %d next slots, want %d", every, len(d.Next), NextSlotsShown)
	}
	for i, sl := range d.Next {
		if !sl.Slot.After(d.Watermark.Slot) || !sl.FiresAt.Equal(sl.Slot) || i > 0 && sl.Slot.Sub(d.Next[i-1].Slot) != time.Second {
			t.Errorf("describe %d: next[%d] = %+v, want slots 1s apart after the watermark %s, firing on the slot",
				every, i, sl, d.Watermark.Slot)
		}
	}
	if len(d.Lateness) < 3 || len(d.Lateness) > latenessPerRule {
		t.Fatalf("describe %d: %d fires of lateness, want 3..%d", every, len(d.Lateness), latenessPerRule)
	}
	for i, f := range d.Lateness {
		late := f.FiredAt.Sub(f.Slot)
		if late < 0 || late > 5*time.Second || f.Lateness != late.Seconds() || f.Late == "" || i > 0 && !f.Slot.After(d.Lateness[i-1].Slot) {
			t.Errorf("describe %d: lateness[%d] = %+v, want fired at or after its slot, in order", every, i, f)
		}
	}
	// The last fire recorded is the watermark's, or a newer one fired since.
	if last := d.Lateness[len(d.Lateness)-1]; last.Slot.Before(d.Watermark.Slot) {
		t.Errorf("describe %d: last fire recorded %s is before the watermark %s", every, last.Slot, d.Watermark.Slot)
	}
	if d.LastFiredAt != nil && d.LastFiredAt.Before(d.Watermark.Slot) {
		t.Errorf("describe %d: last fired at %s, before its slot %s", every, d.LastFiredAt, d.Watermark.Slot)
	}
	if len(d.DeadLetters) != 0 || d.DeadLettersTotal != 0 {
		t.Errorf("describe %d: %d dead letters (total %d), want none", every, len(d.DeadLetters), d.DeadLettersTotal)
	}
	if !strings.Contains(body, `"lateness_seconds"`) || !strings.Contains(body, `"missed":[]`) {
		t.Errorf("describe %d body: %s; want lateness_seconds and an empty missed-fire log", every, body)
	}

	code, d, body = describe(t, base, fmt.Sprint(cron), nil)
	if code != http.StatusOK {
		t.Fatalf("describe %d = %d %s, want 200", cron, code, body)
	}
	s = d.Schedule
	if s == nil || s.Kind != "cron" || s.Expression != "0 30 2 * * *" || s.Timezone != "Europe/Berlin" || s.DSTGap != "skip" ||
		s.DSTOverlap != "twice" || s.Jitter != "10m0s" || s.Misfire != "fire_once" || s.MisfireGrace != "1m0s" {
		t.Errorf("describe %d: schedule %+v, want the cron as given, jitter 10m, fire_once with the default grace", cron, s)
	}
	berlin, _ := time.LoadLocation("Europe/Berlin")
	for i, sl := range d.Next {
		if h, m := sl.Slot.In(berlin).Hour(), sl.Slot.In(berlin).Minute(); h != 2 || m != 30 {
			if h != 3 || m != 30 { // the day the clocks spring forward has no 02:30 (dst_gap skip: none)
				t.Errorf("describe %d: next[%d] slot %s is %02d:%02d in Berlin, want 02:30", cron, i, sl.Slot, h, m)
			}
		}
		if off := sl.FiresAt.Sub(sl.Slot); off < 0 || off >= 10*time.Minute {
			t.Errorf("describe %d: next[%d] fires %v after its slot, want within the 10m jitter", cron, i, off)
		}
		want := (&scheduler.Timer{Jitter: 10 * time.Minute}).FireTime(cron, sl.Slot)
		if !sl.FiresAt.Equal(want) {
			t.Errorf("describe %d: next[%d] fires at %s, want %s (FireTime)", cron, i, sl.FiresAt, want)
		}
	}
	if len(d.Next) != NextSlotsShown || len(d.Lateness) != 0 || d.LastFiredAt != nil || d.Watermark == nil || d.Watermark.Count != 0 {
		t.Errorf("describe %d: %d next, %d lateness, last fired %v, watermark %+v; want 10, none, none, a baseline",
			cron, len(d.Next), len(d.Lateness), d.LastFiredAt, d.Watermark)
	}

	// A disabled rule: known by its tombstone, not firing.
	sys.post("/api/v1/rules/every/disable")
	testkit.Eventually(t, 10*time.Second, "rule every off the engine", func() bool {
		_, ok := n.engine.Watermark(every)
		return !ok
	})
	code, d, body = describe(t, base, fmt.Sprint(every), nil)
	if code != http.StatusOK || d.State.Known || d.State.Firing || d.State.RemovedAt == nil {
		t.Errorf("describe disabled %d = %d, state %+v (%s); want 200, removed, not firing", every, code, d.State, body)
	}

	for _, id := range []string{"abc", "0", "-1", "1.5", "99999999999999999999", "%20"} {
		if code, _, body := describe(t, base, id, nil); code != http.StatusBadRequest || !strings.Contains(body, "rule id") {
			t.Errorf("describe %q = %d %s, want 400 naming the rule id", id, code, body)
		}
	}
	if code, _, body := describe(t, base, "987654", nil); code != http.StatusNotFound || !strings.Contains(body, "rule 987654 is not known") {
		t.Errorf("describe unknown = %d %s, want 404 saying the rule is not known", code, body)
	}
}

// A rule's dead letters show in its description, the newest DeadLettersShown of
// them with the total; a rule known by its dead letters alone is described.
func TestDescribeDeadLetters(t *testing.T) {
	t.Parallel()
	n := newIdleNode(t)
	keys := withDeadLetters(t, n, 13) // rule 7, not in the store
	srv := httptest.NewServer(n.handler())
	defer srv.Close()
	code, d, body := describe(t, srv.URL, "7", nil)
	if code != http.StatusOK {
		t.Fatalf("describe 7 = %d %s, want 200", code, body)
	}
	if d.DeadLettersTotal != 13 || len(d.DeadLetters) != DeadLettersShown {
		t.Fatalf("describe 7: %d dead letters of %d, want %d of 13", len(d.DeadLetters), d.DeadLettersTotal, DeadLettersShown)
	}
	for i, dl := range d.DeadLetters {
		if want := keys[3+i]; dl.IdempotencyKey != want || dl.RuleID != 7 || dl.Status != 400 {
			t.Errorf("dead letter %d = %s rule %d status %d, want %s (the newest, oldest first), rule 7, 400",
				i, dl.IdempotencyKey, dl.RuleID, dl.Status, want)
		}
	}
	if d.State.Known || d.Schedule != nil || d.Watermark != nil || len(d.Next) != 0 {
		t.Errorf("describe 7: state %+v, schedule %+v, watermark %+v; want not known, no schedule, no watermark",
			d.State, d.Schedule, d.Watermark)
	}
	if code, d, _ := describe(t, srv.URL, "8", nil); code != http.StatusNotFound || d.DeadLettersTotal != 0 {
		t.Errorf("describe 8 = %d, %d dead letters; want 404", code, d.DeadLettersTotal)
	}
}

// The lateness log is bounded: latenessPerRule fires a rule, and rules fired
// least recently are forgotten past 2·latenessRules.
func TestFiredLogBounded(t *testing.T) {
	var l firedLog
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	timer := &scheduler.Timer{Kind: scheduler.KindInterval, Interval: time.Second}
	for i := range 25 {
		slot := t0.Add(time.Duration(i) * time.Second)
		l.record([]scheduler.Fire{{RuleID: 1, Slot: slot, FiredAt: slot.Add(time.Duration(i) * time.Millisecond), CatchUp: i == 24, Timer: timer}})
	}
	got := l.of(1)
	if len(got) != latenessPerRule {
		t.Fatalf("of(1) = %d fires, want %d", len(got), latenessPerRule)
	}
	for i, f := range got {
		k := 15 + i
		if want := t0.Add(time.Duration(k) * time.Second); !f.Slot.Equal(want) || f.Late != fmt.Sprint(time.Duration(k)*time.Millisecond) ||
			f.CatchUp != (k == 24) {
			t.Errorf("of(1)[%d] = %+v, want slot %s, %dms late, catch-up %v", i, f, want, k, k == 24)
		}
	}
	for id := int64(2); id < 2+3*latenessRules; id++ {
		l.record([]scheduler.Fire{{RuleID: id, Slot: t0, FiredAt: t0}})
	}
	if len(l.cur)+len(l.prev) > 2*latenessRules || len(l.free) > latenessRules {
		t.Errorf("log keeps %d rules and %d spare rings, want at most %d and %d", len(l.cur)+len(l.prev), len(l.free),
			2*latenessRules, latenessRules)
	}
	// A reused ring starts empty: every rule fired once has one fire.
	for _, id := range []int64{2 + 3*latenessRules - 1, 2 + 3*latenessRules - 100} { // in cur, in prev
		if got := l.of(id); len(got) != 1 || !got[0].Slot.Equal(t0) {
			t.Errorf("rule %d fired once: of = %+v", id, got)
		}
	}
	if len(l.of(1)) != 0 || len(l.of(2+3*latenessRules-1)) != 1 {
		t.Errorf("after %d other rules fired: rule 1 has %d fires (want forgotten), the last rule %d (want 1)",
			3*latenessRules, len(l.of(1)), len(l.of(2+3*latenessRules-1)))
	}
}

// In a cluster a node that does not own a rule forwards the request to the
// owner once (with the caller's Authorization), and when the owner misbehaves
// (a redirect, a hang, an answer too large, a refusal) answers itself with
// owner_unreachable; a forwarded request is never forwarded again.
func TestDescribeForwards(t *testing.T) {
	t.Parallel()
	var (
		fakeCalls  atomic.Int64
		fakeHeader atomic.Value // http.Header of the last call
		behaviour  atomic.Value // string
	)
	elsewhere := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { t.Error("a redirect was followed") }))
	defer elsewhere.Close()
	fake := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fakeCalls.Add(1)
		fakeHeader.Store(r.Header.Clone())
		switch behaviour.Load() {
		case "redirect":
			http.Redirect(w, r, elsewhere.URL+r.URL.Path, http.StatusTemporaryRedirect)
		case "hang":
			select {
			case <-r.Context().Done():
			case <-time.After(10 * time.Second):
			}
		case "huge":
			_, _ = io.Copy(w, io.LimitReader(zeros{}, maxDescribeBody+1))
		case "refuse":
			http.Error(w, "this endpoint needs the bearer token", http.StatusUnauthorized)
		case "other rule":
			w.Write([]byte(`{"rule_id":999999999}`))
		}
	}))
	defer fake.Close()
	fakeAddr := strings.TrimPrefix(fake.URL, "http://")

	sys := startClusterAPI(t)
	// Encrypted gossip: the addresses it carries are the members' own, so a
	// caller's token may be forwarded to them.
	key := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, 32))
	keyed := func(cc *cluster.Config) *cluster.Config { cc.GossipKey = key; return cc }
	a := sys.startClusterNode("a", keyed(clusterConfig()), true)
	b := sys.startClusterNode("b", keyed(clusterConfig(a.cl.LocalAddr())), true)
	fcc := keyed(clusterConfig(a.cl.LocalAddr()))
	fcc.HTTPAddr = fakeAddr // f tells its peers a fake owner's address
	f := sys.startClusterNode("f", fcc, false)
	nodes := []*runningNode{a, b, f}
	testkit.Eventually(t, 30*time.Second, "a, b and f see each other", func() bool {
		for _, n := range nodes {
			if len(n.drv.snap.Load().status.View) != 3 {
				return false
			}
		}
		return true
	})
	// A rule of b and a rule of f, created and stored everywhere.
	var ofB, ofF int64
	for i := 0; ofB == 0 || ofF == 0; i++ {
		if i > 200 {
			t.Fatal("no rule owned by b and one by f in 200")
		}
		id := sys.createRule(fmt.Sprintf("r%d", i), "core.intervaltimer", `{"unit":"hours","interval":1}`)
		switch owner, _ := a.ruleOwner(id); {
		case owner == "b" && ofB == 0:
			ofB = id
		case owner == "f" && ofF == 0:
			ofF = id
		}
	}
	testkit.Eventually(t, 20*time.Second, "b fires its rule and every node stores both", func() bool {
		_, firing := b.engine.Watermark(ofB)
		for _, n := range nodes {
			if _, _, ok, _ := n.store.Rule(ofF); !ok {
				return false
			}
		}
		return firing
	})

	// Forwarded to b: b's own answer, saying who forwarded it.
	auth := http.Header{"Authorization": {"Bearer caller-token-0123456789"}}
	code, viaA, body := describe(t, "http://"+a.HTTPAddr(), fmt.Sprint(ofB), auth)
	if code != http.StatusOK || viaA.AnsweredBy != "b" || viaA.ForwardedBy != "a" || viaA.Owner != "b" ||
		viaA.OwnerHTTPAddr != b.HTTPAddr() || !viaA.State.Firing || viaA.OwnerUnreachable != "" {
		t.Fatalf("describe %d on a = %d: answered by %q, forwarded by %q, owner %q at %q, firing %v, unreachable %q (%s); "+
			"want b's answer forwarded by a", ofB, code, viaA.AnsweredBy, viaA.ForwardedBy, viaA.Owner, viaA.OwnerHTTPAddr,
			viaA.State.Firing, viaA.OwnerUnreachable, body)
	}
	code, atB, _ := describe(t, "http://"+b.HTTPAddr(), fmt.Sprint(ofB), nil)
	if code != http.StatusOK || atB.ForwardedBy != "" || atB.Partition == nil || *atB.Partition != *viaA.Partition ||
		atB.Watermark.Slot != viaA.Watermark.Slot || fmt.Sprint(atB.Schedule) != fmt.Sprint(viaA.Schedule) ||
		fmt.Sprint(atB.Next) != fmt.Sprint(viaA.Next) {
		t.Errorf("describe %d on b differs from a's forward: %+v vs %+v", ofB, atB, viaA)
	}
	// A request already forwarded is answered by the node it reaches.
	code, once, _ := describe(t, "http://"+a.HTTPAddr(), fmt.Sprint(ofB), http.Header{ForwardedHeader: {"x"}})
	if code != http.StatusOK || once.AnsweredBy != "a" || once.State.Firing || once.Owner != "b" {
		t.Errorf("a forwarded request to a: %d answered by %q, firing %v, owner %q; want a's own answer naming b",
			code, once.AnsweredBy, once.State.Firing, once.Owner)
	}

	// ?here=true: a answers itself, without asking b.
	code, here, _ := describe(t, "http://"+a.HTTPAddr(), fmt.Sprint(ofB)+"?here=true", auth)
	if code != http.StatusOK || here.AnsweredBy != "a" || here.ForwardedBy != "" || here.OwnerUnreachable != "" || here.Owner != "b" {
		t.Errorf("describe %d?here=true on a: %d answered by %q, forwarded by %q, unreachable %q; want a's own answer naming b",
			ofB, code, here.AnsweredBy, here.ForwardedBy, here.OwnerUnreachable)
	}

	// The owner f is a fake that misbehaves: a answers itself, saying why.
	for _, tt := range []struct{ behaviour, want string }{
		{"redirect", "redirect to"},
		{"hang", "deadline exceeded"},
		{"huge", "larger than"},
		{"refuse", "status 401"},
		{"other rule", "describes rule 999999999"},
	} {
		behaviour.Store(tt.behaviour)
		before := fakeCalls.Load()
		start := time.Now()
		code, d, body := describe(t, "http://"+a.HTTPAddr(), fmt.Sprint(ofF), auth)
		if took := time.Since(start); took > forwardTimeout+2*time.Second {
			t.Errorf("%s: describe took %v, want at most the forward timeout %v and a little", tt.behaviour, took, forwardTimeout)
		}
		if code != http.StatusOK || d.AnsweredBy != "a" || d.Owner != "f" || d.OwnerHTTPAddr != fakeAddr || !d.State.Known ||
			!strings.HasPrefix(d.OwnerUnreachable, fakeAddr+": ") || !strings.Contains(d.OwnerUnreachable, tt.want) {
			t.Errorf("%s: describe %d on a = %d, answered by %q, owner %q at %q, unreachable %q (%s); want a's answer, %q",
				tt.behaviour, ofF, code, d.AnsweredBy, d.Owner, d.OwnerHTTPAddr, d.OwnerUnreachable, body, tt.want)
		}
		if got := fakeCalls.Load() - before; got != 1 {
			t.Errorf("%s: the owner was asked %d times, want once", tt.behaviour, got)
		}
		h, _ := fakeHeader.Load().(http.Header)
		if h.Get("Authorization") != auth.Get("Authorization") || h.Get(ForwardedHeader) != "a" {
			t.Errorf("%s: the owner got Authorization %q and %s %q; want the caller's and a",
				tt.behaviour, h.Get("Authorization"), ForwardedHeader, h.Get(ForwardedHeader))
		}
	}
	// Backfill and fire now go to the owner, and its answer comes back.
	code, body = postJSON(t, fmt.Sprintf("http://%s/v1/rules/%d/fire", a.HTTPAddr(), ofB), "", auth)
	if fr := decodeAs[FireResult](t, body); code != 200 || fr.AnsweredBy != "b" || fr.ForwardedBy != "a" ||
		!strings.HasPrefix(fr.IdempotencyKey, fmt.Sprintf("%d:manual:", ofB)) {
		t.Errorf("fire %d on a = %d %s; want b's answer forwarded by a", ofB, code, body)
	}
	now := time.Now()
	code, body = postJSON(t, fmt.Sprintf("http://%s/v1/rules/%d/backfill", a.HTTPAddr(), ofB),
		backfillBody(now.Add(-3*time.Hour), now, `,"dry_run":true`), auth)
	if br := decodeAs[BackfillResult](t, body); code != 200 || br.AnsweredBy != "b" || br.ForwardedBy != "a" || !br.DryRun ||
		br.Slots != 3 {
		t.Errorf("backfill dry run of %d on a = %d %s; want b's answer of 3 hourly slots, forwarded by a", ofB, code, body)
	}
	// A request forwarded to a node that does not fire the rule is refused, not
	// forwarded again.
	if code, body := postJSON(t, fmt.Sprintf("http://%s/v1/rules/%d/fire", a.HTTPAddr(), ofB), "",
		http.Header{ForwardedHeader: {"x"}}); code != http.StatusConflict || !strings.Contains(body, "ring is changing") {
		t.Errorf("fire forwarded to a non-owner = %d %q; want 409 saying the ring is changing", code, body)
	}
	// An owner that does not answer: a says the events may or may not have been
	// sent, within its bound; one that refuses: its status comes back.
	behaviour.Store("hang")
	start := time.Now()
	code, body = postJSON(t, fmt.Sprintf("http://%s/v1/rules/%d/fire", a.HTTPAddr(), ofF), "", auth)
	if took := time.Since(start); code != http.StatusBadGateway || !strings.Contains(body, "may or may not") ||
		took > forwardWriteTimeout+2*time.Second {
		t.Errorf("fire of a hanging owner's rule = %d %q after %v; want 502 within %v saying it may or may not have happened",
			code, body, took, forwardWriteTimeout)
	}
	behaviour.Store("refuse")
	if code, body := postJSON(t, fmt.Sprintf("http://%s/v1/rules/%d/fire", a.HTTPAddr(), ofF), "", auth); code !=
		http.StatusUnauthorized || !strings.Contains(body, "needs the bearer token") {
		t.Errorf("fire of a refusing owner's rule = %d %q; want its 401 relayed", code, body)
	}
	if h, _ := fakeHeader.Load().(http.Header); h.Get("Authorization") != auth.Get("Authorization") || h.Get(ForwardedHeader) != "a" {
		t.Errorf("the owner got Authorization %q and %s %q with a fire; want the caller's and a",
			h.Get("Authorization"), ForwardedHeader, h.Get(ForwardedHeader))
	}

	// Unknown everywhere: the owner's 404 and a's own knowledge agree.
	var unknown int64 = 1 << 40
	for owner, _ := a.ruleOwner(unknown); owner != "b"; owner, _ = a.ruleOwner(unknown) {
		unknown++
	}
	if code, _, body := describe(t, "http://"+a.HTTPAddr(), fmt.Sprint(unknown), nil); code != http.StatusNotFound ||
		!strings.Contains(body, "is not known") || !strings.Contains(body, "nor does its owner b") {
		t.Errorf("describe unknown %d on a = %d %s; want 404, not known, and b's answer", unknown, code, body)
	}
}

// Client.DescribeRule sends the token to /v1/rules/{id}, decodes the answer,
// refuses one of another rule, and a 404 is a *StatusError with the message.
func TestClientDescribeRule(t *testing.T) {
	const token = "operator-token-0123456789"
	var auths atomic.Value
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/rules/{id}", func(w http.ResponseWriter, r *http.Request) {
		auths.Store(r.Header.Get("Authorization"))
		switch r.PathValue("id") {
		case "42":
			w.Write([]byte(`{"rule_id":42,"answered_by":"b","owner":"b","forwarded_by":"a","next":[{"slot":"2026-01-01T00:00:00Z","fires_at":"2026-01-01T00:00:03Z"}]}`))
		case "43":
			w.Write([]byte(`{"rule_id":44}`))
		case "44":
			w.Write([]byte(`<html>`))
		default:
			http.Error(w, "rule 9 is not known: x stores no rule", http.StatusNotFound)
		}
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()
	c := NewClient(srv.URL, token)
	d, raw, err := c.DescribeRule(t.Context(), 42)
	if err != nil || d.AnsweredBy != "b" || d.ForwardedBy != "a" || len(d.Next) != 1 ||
		d.Next[0].FiresAt.Sub(d.Next[0].Slot) != 3*time.Second || !strings.Contains(string(raw), `"rule_id":42`) {
		t.Errorf("DescribeRule(42) = %+v, %s, %v; want b's answer forwarded by a", d, raw, err)
	}
	if got := auths.Load(); got != "Bearer "+token {
		t.Errorf("DescribeRule sent Authorization %q, want the bearer token", got)
	}
	if _, _, err := c.DescribeRule(t.Context(), 43); err == nil || !strings.Contains(err.Error(), "describes rule 44") {
		t.Errorf("DescribeRule(43) answered for 44: err %v, want one saying so", err)
	}
	if _, _, err := c.DescribeRule(t.Context(), 44); err == nil || !strings.Contains(err.Error(), "not a rule description") {
		t.Errorf("DescribeRule(44) of <html>: err %v, want not a rule description", err)
	}
	_, _, err = c.DescribeRule(t.Context(), 9)
	var se *StatusError
	if !errors.As(err, &se) || se.Code != http.StatusNotFound || !strings.Contains(se.Message, "rule 9 is not known") ||
		strings.Contains(err.Error(), token) {
		t.Errorf("DescribeRule(9) = %v, want a 404 StatusError with the message and no token", err)
	}
}

// With plain gossip a member's HTTP address is not authenticated (anyone who
// reaches the gossip port can claim one), so a caller's token is not forwarded
// there: the node answers itself and says where to ask.
func TestDescribeDoesNotForwardTokensOverPlainGossip(t *testing.T) {
	t.Parallel()
	var asked atomic.Int64
	fake := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { asked.Add(1) }))
	defer fake.Close()
	sys := startClusterAPI(t)
	a := sys.startClusterNode("a", clusterConfig(), true)
	fcc := clusterConfig(a.cl.LocalAddr())
	fcc.HTTPAddr = strings.TrimPrefix(fake.URL, "http://")
	f := sys.startClusterNode("f", fcc, false)
	testkit.Eventually(t, 30*time.Second, "a and f see each other", func() bool {
		return len(a.drv.snap.Load().status.View) == 2 && len(f.drv.snap.Load().status.View) == 2
	})
	var ofF int64
	for i := 0; ofF == 0; i++ {
		if i > 200 {
			t.Fatal("no rule owned by f in 200")
		}
		id := sys.createRule(fmt.Sprintf("p%d", i), "core.intervaltimer", `{"unit":"hours","interval":1}`)
		if owner, _ := a.ruleOwner(id); owner == "f" {
			ofF = id
		}
	}
	testkit.Eventually(t, 20*time.Second, "a stores f's rule", func() bool {
		_, _, ok, _ := a.store.Rule(ofF)
		return ok
	})
	code, d, body := describe(t, "http://"+a.HTTPAddr(), fmt.Sprint(ofF), http.Header{"Authorization": {"Bearer caller-token-0123456789"}})
	if code != http.StatusOK || d.AnsweredBy != "a" || !strings.Contains(d.OwnerUnreachable, "gossip is not encrypted") {
		t.Errorf("describe %d on a over plain gossip = %d, answered by %q, unreachable %q (%s); want a's own answer saying why",
			ofF, code, d.AnsweredBy, d.OwnerUnreachable, body)
	}
	code, body = postJSON(t, fmt.Sprintf("http://%s/v1/rules/%d/fire", a.HTTPAddr(), ofF), "", http.Header{"Authorization": {"Bearer caller-token-0123456789"}})
	if code != http.StatusBadGateway || !strings.Contains(body, "gossip is not encrypted") || !strings.Contains(body, "nothing was sent") {
		t.Errorf("fire %d on a over plain gossip = %d %q; want 502 saying why nothing was sent", ofF, code, body)
	}
	if n := asked.Load(); n != 0 {
		t.Errorf("the address f gossiped was asked %d times with the caller's token, want never", n)
	}
}
