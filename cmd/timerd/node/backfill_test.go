package node

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/timerd/timerd/ingest/attune"
	"github.com/timerd/timerd/scheduler"
	"github.com/timerd/timerd/store"
	"github.com/timerd/timerd/test/testkit"
)

// postJSON POSTs body to url and returns the status and the answer.
func postJSON(t *testing.T, url, body string, header http.Header) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if header != nil {
		req.Header = header.Clone()
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(raw)
}

func backfillBody(from, to time.Time, extra string) string {
	return fmt.Sprintf(`{"from":%q,"to":%q%s}`, from.Format(time.RFC3339Nano), to.Format(time.RFC3339Nano), extra)
}

func decodeAs[T any](t *testing.T, raw string) T {
	t.Helper()
	var v T
	if err := json.Unmarshal([]byte(raw), &v); err != nil {
		t.Fatalf("decode %s: %v", raw, err)
	}
	return v
}

// A node restarted after its skip rule's slots passed: backfill sends exactly the
// slots the policy dropped, under their own keys, once; a second backfill sends
// none; --force sends a fired slot again under its key; fire now sends one event
// of its own key; the watermark does not move for any of them; describe shows them;
// bad requests change nothing.
func TestBackfillAndFireNow(t *testing.T) {
	t.Parallel()
	sys := startAPI(t, t.TempDir())
	dir := t.TempDir()
	n := sys.startNode(dir, true)
	id := sys.createRule("skipper", "core.intervaltimer", `{"unit":"seconds","interval":1,"misfire":"skip","misfire_grace":"500ms"}`)
	testkit.Eventually(t, 10*time.Second, "two fires", func() bool {
		wm, ok := n.engine.Watermark(id)
		return ok && wm.Count >= 2
	})
	n.stop(t)
	time.Sleep(3500 * time.Millisecond) // 3 slots or more pass: the restart skips them
	n = sys.startNode(dir, true)
	base := "http://" + n.HTTPAddr()
	var skipped []time.Time
	testkit.Eventually(t, 10*time.Second, "the skipped run recorded", func() bool {
		ms, err := n.store.MissedSlots(id)
		if err != nil || len(ms) == 0 {
			return false
		}
		m := ms[len(ms)-1]
		if m.Reason != string(scheduler.MissSkipped) {
			return false
		}
		skipped = skipped[:0]
		for s := m.From; !s.After(m.To); s = s.Add(time.Second) {
			skipped = append(skipped, s)
		}
		return len(skipped) >= 2
	})
	keysBefore := map[string]bool{}
	for _, e := range sys.events("skipper") {
		keysBefore[e.IdempotencyKey] = true
	}
	for _, s := range skipped {
		if keysBefore[attune.IdempotencyKey(id, s)] {
			t.Fatalf("skipped slot %v was sent", s)
		}
	}
	wmBefore, _ := n.engine.Watermark(id)
	from, to := skipped[0].Add(-5*time.Second), time.Now().Add(-100*time.Millisecond)
	url := fmt.Sprintf("%s/v1/rules/%d/backfill", base, id)

	// Bad requests: refused, nothing written. The rule fires on meanwhile (its outbox
	// grows while delivery lags on a busy machine), so what is counted is the events an
	// operator's request marks, in the outbox and delivered.
	marked := func() int {
		c := 0
		for _, e := range sys.events("skipper") {
			if e.Payload["backfill"] == true || e.Payload["manual"] == true {
				c++
			}
		}
		out, err := n.store.Outbox(0, 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range out {
			if bytes.Contains(e.Event.Body, []byte(`"backfill":true`)) || bytes.Contains(e.Event.Body, []byte(`"manual":true`)) {
				c++
			}
		}
		return c
	}
	before := marked()
	history, _ := n.store.MissedSlots(id)
	for _, bad := range []struct {
		url, body string
		code      int
		want      string
	}{
		{url, backfillBody(to, from, ""), 400, "is before from"},
		{url, backfillBody(from, time.Now().Add(time.Hour), ""), 400, "in the future"},
		{url, `{"to":"2026-01-01T00:00:00Z"}`, 400, "both needed"},
		{url, `{"from":"2026-01-01T00:00:00Z","to":"2026-01-01T00:00:01Z","forse":true}`, 400, "unknown field"},
		{url, `{"from":"yesterday"}`, 400, "not a backfill request"},
		{url, `{} {}`, 400, "trailing data"},
		{url, `{"from":"` + strings.Repeat("x", 5000) + `"}`, 413, "larger than"},
		{url, backfillBody(to.Add(-3*time.Hour), to, ""), 400, "more than 10000 slots"},
		{base + "/v1/rules/0/backfill", backfillBody(from, to, ""), 400, "whole number"},
		{base + "/v1/rules/99999/backfill", backfillBody(from, to, ""), 404, "not known"},
		{base + "/v1/rules/99999/fire", "", 404, "not known"},
		{fmt.Sprintf("%s/v1/rules/%d/fire", base, id), `{"now":true}`, 400, "empty or {}"},
	} {
		code, body := postJSON(t, bad.url, bad.body, nil)
		if code != bad.code || !strings.Contains(body, bad.want) {
			t.Errorf("POST %s %.80s = %d %q, want %d and %q", bad.url, bad.body, code, body, bad.code, bad.want)
		}
	}
	if got := marked(); got != before {
		t.Errorf("bad requests wrote %d events", got-before)
	}
	if got, _ := n.store.MissedSlots(id); len(got) != len(history) {
		t.Errorf("bad requests wrote history: %d records, had %d", len(got), len(history))
	}

	// A dry run says what a backfill sends, and sends nothing.
	code, body := postJSON(t, url, backfillBody(from, to, `,"dry_run":true`), nil)
	dry := decodeAs[BackfillResult](t, body)
	if code != 200 || !dry.DryRun || dry.Sent != len(skipped) || dry.Resent != 0 || dry.Skipped == 0 ||
		dry.Slots != dry.Sent+dry.Skipped+dry.LeftToSchedule {
		t.Fatalf("dry run = %d %s; want %d slots to send, the fired ones left out", code, body, len(skipped))
	}
	code, body = postJSON(t, url, backfillBody(from, to, ""), nil)
	res := decodeAs[BackfillResult](t, body)
	if code != 200 || res.DryRun || res.Sent != len(skipped) || res.Resent != 0 ||
		res.AnsweredBy != "test" || !res.FirstSent.Equal(skipped[0]) || !res.LastSent.Equal(skipped[len(skipped)-1]) {
		t.Fatalf("backfill = %d %s; want the %d skipped slots %v..%v sent", code, body, len(skipped), skipped[0], skipped[len(skipped)-1])
	}
	want := map[string]bool{}
	for _, s := range skipped {
		want[attune.IdempotencyKey(id, s)] = true
	}
	testkit.Eventually(t, 10*time.Second, "the backfilled events delivered", func() bool {
		got := 0
		for _, e := range sys.events("skipper") {
			if want[e.IdempotencyKey] && e.Payload["backfill"] == true {
				got++
			}
		}
		return got == len(want)
	})
	// Sent once: a second backfill of the range sends nothing.
	code, body = postJSON(t, url, backfillBody(from, to, ""), nil)
	if again := decodeAs[BackfillResult](t, body); code != 200 || again.Sent != 0 || again.Resent != 0 ||
		again.Skipped != res.Skipped+res.Sent {
		t.Errorf("second backfill = %d %s; want nothing sent, all %d sent already", code, body, res.Skipped+res.Sent)
	}
	// --force sends a fired slot again, under its key.
	fired := wmBefore.Slot
	code, body = postJSON(t, url, backfillBody(fired, fired, `,"force":true`), nil)
	if forced := decodeAs[BackfillResult](t, body); code != 200 || forced.Resent != 1 || forced.Sent != 0 {
		t.Errorf("forced backfill of the fired slot %v = %d %s; want it resent", fired, code, body)
	}
	// The reference API answers a repeated key with the first event (Attune stores
	// it again): the resend is delivered when the outbox is empty again.
	testkit.Eventually(t, 10*time.Second, "the resent slot delivered", func() bool {
		l, _ := n.store.OutboxLen()
		return l == 0
	})

	// Fire now: one event, a key of its own, marked manual; twice, two keys.
	fireURL := fmt.Sprintf("%s/v1/rules/%d/fire", base, id)
	var keys []string
	for range 2 {
		code, body := postJSON(t, fireURL, "", nil)
		fr := decodeAs[FireResult](t, body)
		if code != 200 || !strings.HasPrefix(fr.IdempotencyKey, fmt.Sprintf("%d:manual:", id)) || fr.AnsweredBy != "test" {
			t.Fatalf("fire = %d %s; want a manual key", code, body)
		}
		keys = append(keys, fr.IdempotencyKey)
	}
	if keys[0] == keys[1] {
		t.Errorf("two fires now had one key %s", keys[0])
	}
	testkit.Eventually(t, 10*time.Second, "both manual events delivered", func() bool {
		got := 0
		for _, e := range sys.events("skipper") {
			if (e.IdempotencyKey == keys[0] || e.IdempotencyKey == keys[1]) && e.Payload["manual"] == true {
				got++
			}
		}
		return got == 2
	})
	if got := testCounter(t, n, "timerd_manual_events_total", `kind="backfill"`); got != float64(len(skipped)) {
		t.Errorf("timerd_manual_events_total{kind=backfill} = %v, want %d", got, len(skipped))
	}
	if got := testCounter(t, n, "timerd_manual_events_total", `kind="resend"`); got != 1 {
		t.Errorf("timerd_manual_events_total{kind=resend} = %v, want 1", got)
	}
	if got := testCounter(t, n, "timerd_manual_events_total", `kind="fire"`); got != 2 {
		t.Errorf("timerd_manual_events_total{kind=fire} = %v, want 2", got)
	}
	// None of it moved the schedule: the watermark is the schedule's alone.
	wmAfter, _ := n.engine.Watermark(id)
	if wmAfter.Slot.Before(wmBefore.Slot) || wmAfter.Count-wmBefore.Count > uint64(time.Since(wmBefore.Slot)/time.Second)+1 {
		t.Errorf("watermark %+v → %+v: moved by more than the schedule's fires", wmBefore, wmAfter)
	}

	// Describe shows the operations, and keeps them out of the missed fires.
	code, d, raw := describe(t, base, fmt.Sprint(id), nil)
	if code != 200 {
		t.Fatalf("describe = %d %s", code, raw)
	}
	var kinds []string
	for _, o := range d.Operations {
		kinds = append(kinds, o.Kind)
	}
	if fmt.Sprint(kinds) != fmt.Sprint([]string{HistoryBackfilled, HistoryBackfilled, HistoryFiredManually, HistoryFiredManually}) ||
		d.Operations[0].Count != uint64(len(skipped)) || d.Operations[2].Detail != keys[0] {
		t.Errorf("describe's operations = %+v; want the backfill, the forced one and two fires", d.Operations)
	}
	for _, m := range d.Missed {
		if m.Reason == HistoryBackfilled || m.Reason == HistoryFiredManually {
			t.Errorf("describe lists an operation among the missed fires: %+v", m)
		}
	}
	// A deleted rule takes neither.
	sys.post("DELETE /api/v1/rules/skipper")
	testkit.Eventually(t, 10*time.Second, "the rule deleted", func() bool {
		_, _, ok, _ := n.store.Rule(id)
		return !ok
	})
	if code, body := postJSON(t, fireURL, "{}", nil); code != 404 || !strings.Contains(body, "disabled or deleted") {
		t.Errorf("fire of a deleted rule = %d %q, want 404 saying so", code, body)
	}
}

// unsentRuns: a slot is unsent while the last history record covering it is a drop.
func TestUnsentRuns(t *testing.T) {
	t0 := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	u := newUnsentRuns([]store.MissedSlot{
		{From: at(10), To: at(20), Reason: string(scheduler.MissSkipped)},
		{From: at(30), To: at(30), Reason: string(scheduler.MissNodeDown)}, // fired late: sent
		{From: at(15), To: at(17), Reason: HistoryBackfilled},
		{From: at(40), To: at(45), Reason: string(scheduler.MissCollapsed)},
		{Reason: string(scheduler.MissInvalidSchedule)}, // no slots known
	})
	for s, want := range map[int]bool{9: false, 10: true, 14: true, 15: false, 17: false, 18: true, 20: true, 21: false,
		30: false, 40: true, 45: true, 46: false, 0: false} {
		if got := u.unsent(at(s)); got != want {
			t.Errorf("unsent(+%ds) = %v, want %v", s, got, want)
		}
	}
	mr := manualRule{wm: scheduler.Watermark{Slot: at(50), Count: 7}}
	for s, want := range map[int]slotClass{12: classSend, 16: classSent, 50: classSent, 51: classSchedule} {
		if got := mr.classify(at(s), u); got != want {
			t.Errorf("classify(+%ds) = %v, want %v", s, got, want)
		}
	}
	never := manualRule{wm: scheduler.Watermark{Slot: at(50)}} // a baseline: the rule never fired
	if got := never.classify(at(16), u); got != classSend {
		t.Errorf("classify of a rule that never fired = %v, want send", got)
	}
}
