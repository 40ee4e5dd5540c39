package e2e

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/timerd/timerd/cmd/timerd/node"
	"github.com/timerd/timerd/test/testkit"
)

// The curl lines dev prints (as the README says): an interval rule of 1 s
// shows events within 3 s.
func TestDevIntervalRuleEventsWithin3s(t *testing.T) {
	d := startDev(t, t.TempDir())
	export := d.waitOutput(regexp.MustCompile(`(?m)^\s*(export TOKEN=.*)$`), time.Second)[1]
	curl := d.waitOutput(regexp.MustCompile(`(?m)^\s*(curl -s -X POST `+regexp.QuoteMeta(d.apiURL)+`/api/v1/rules .*)$`), time.Second)[1]

	created := time.Now()
	out, err := exec.Command("bash", "-c", export+"\n"+curl).CombinedOutput()
	if err != nil {
		t.Fatalf("the printed curl line: %v\n%s", err, out)
	}
	var answer struct {
		Data struct{ ID int64 } `json:"data"`
	}
	if err := json.Unmarshal(out, &answer); err != nil || answer.Data.ID == 0 {
		t.Fatalf("the printed curl line answered %q, want the created rule", out)
	}
	id := answer.Data.ID
	var evs []event
	testkit.Eventually(t, 3*time.Second, "first event of demo.every_second", func() bool {
		evs = d.events(t, "demo.every_second")
		return len(evs) > 0
	})
	t.Logf("first event stored %s after the rule was created", time.Since(created).Round(time.Millisecond))

	e := evs[0]
	if want := fmt.Sprintf("rule_%d", id); e.TriggerInstanceID != want {
		t.Errorf("trigger_instance_id = %q, want %q", e.TriggerInstanceID, want)
	}
	if e.TriggerRef != "core.intervaltimer" {
		t.Errorf("trigger_ref = %q, want core.intervaltimer", e.TriggerRef)
	}
	if got := e.Payload["type"]; got != "interval" {
		t.Errorf("payload.type = %v, want interval", got)
	}
	if got := payloadInt(e, "interval_seconds"); got != 1 {
		t.Errorf("payload.interval_seconds = %d, want 1", got)
	}
	if got := payloadInt(e, "execution_count"); got != 1 {
		t.Errorf("payload.execution_count = %d, want 1", got)
	}
	slot := payloadTime(t, e, "scheduled_at")
	if want := fmt.Sprintf("%d:%d", id, slot.UnixNano()); e.IdempotencyKey != want {
		t.Errorf("idempotency key = %q, want %q", e.IdempotencyKey, want)
	}

	if err := d.stop(20 * time.Second); err != nil {
		t.Fatalf("timerd dev after SIGTERM: %v, want exit status 0", err)
	}
}

// SIGKILL while a datetime rule is due in 5 s; start again 10 s later on the
// same data dir: the datetime event arrives (late, once) and interval rules
// resume from their watermarks with their misfire policy applied.
func TestDevSIGKILLRestartRecovers(t *testing.T) {
	t.Parallel() // few nodes, no slot timing: beside the agent tests (Makefile: -parallel)
	dir := t.TempDir()
	d := startDev(t, dir)

	fireAt := time.Now().Add(5 * time.Second).UTC().Truncate(time.Millisecond)
	d.createRule(t, "once", "core.datetimetimer", map[string]any{"fire_at": fireAt.Format(time.RFC3339Nano)})
	foID := d.createRule(t, "every.fire_once", "core.intervaltimer", map[string]any{"interval": 1, "misfire": "fire_once", "misfire_grace": "1s"})
	d.createRule(t, "every.default", "core.intervaltimer", map[string]any{"interval": 1})
	testkit.Eventually(t, 10*time.Second, "two events of each interval rule", func() bool {
		return len(d.events(t, "every.fire_once")) >= 2 && len(d.events(t, "every.default")) >= 2
	})

	if n := len(d.events(t, "once")); n != 0 {
		t.Fatalf("datetime rule fired before its time: %d events", n)
	}
	d.kill() // the API dies with it: dev is one process
	killed := time.Now()
	time.Sleep(10 * time.Second) // the outage under test
	restarted := time.Now()
	d = startDev(t, dir)

	var once []event
	testkit.Eventually(t, 10*time.Second, "the datetime event after restart", func() bool {
		once = d.events(t, "once")
		return len(once) > 0
	})
	// Let the interval rules run a few seconds past the restart.
	time.Sleep(3 * time.Second)
	once = d.events(t, "once")
	if len(once) != 1 {
		t.Fatalf("datetime rule: %d events, want exactly 1", len(once))
	}
	if got := payloadTime(t, once[0], "scheduled_at"); !got.Equal(fireAt) {
		t.Errorf("datetime scheduled_at = %s, want %s", got, fireAt)
	}
	if late := payloadTime(t, once[0], "fired_at").Sub(fireAt); late < 5*time.Second {
		t.Errorf("datetime fired %s after fire_at, want late (the node was down)", late)
	}

	// Default policy (grace 1 m > the 10 s outage): every slot is delivered, late.
	def := slotsOf(t, d.events(t, "every.default"))
	if len(def) == 0 || def[len(def)-1].slot.Before(restarted) {
		t.Fatalf("every.default: %d events, none after the restart at %s: it did not resume", len(def), restarted)
	}
	for i := 1; i < len(def); i++ {
		if gap := def[i].slot.Sub(def[i-1].slot); gap != time.Second {
			t.Errorf("every.default: slot %s follows %s (gap %s), want every slot", def[i].slot, def[i-1].slot, gap)
		}
		if def[i].count != def[i-1].count+1 {
			t.Errorf("every.default: execution_count %d follows %d", def[i].count, def[i-1].count)
		}
	}
	// fire_once with a 1 s grace: the ~9 slots missed during the outage
	// become one catch-up fire; the count still runs on from the watermark.
	fo := slotsOf(t, d.events(t, "every.fire_once"))
	inOutage := 0
	for i, s := range fo {
		if s.slot.After(killed.Add(time.Second)) && s.slot.Before(restarted) {
			inOutage++
		}
		if i > 0 && s.count != fo[i-1].count+1 {
			t.Errorf("every.fire_once: execution_count %d follows %d", s.count, fo[i-1].count)
		}
	}
	// One catch-up, plus at most one slot that came due within the grace
	// before the node was up again; the other ~8 are dropped.
	if inOutage < 1 {
		t.Errorf("every.fire_once: no slot of the outage fired, want one catch-up")
	}
	if inOutage > 2 {
		t.Errorf("every.fire_once: %d slots of the ~10 s outage fired, want one catch-up (and one on time at most)", inOutage)
	}
	if last := fo[len(fo)-1].slot; last.Before(restarted) {
		t.Errorf("every.fire_once: last slot %s is before the restart at %s: it did not resume", last, restarted)
	}
	backfillCollapsed(t, d, foID, killed.Add(-2*time.Second))
}

// backfillCollapsed checks `timerd rules backfill` and `timerd rules fire` on rule
// id of d, a fire_once rule of 1 s whose slots after from an outage collapsed:
// the backfill sends exactly the collapsed slots, once each, under their own keys
// (the rule's events then hold every slot from its first to its watermark once);
// a second sends nothing; fire sends one event of a key of its own; describe
// lists both (docs/operations.md, "Backfill and fire now").
func backfillCollapsed(t *testing.T, d *dev, id int64, from time.Time) {
	t.Helper()
	args := []string{"rules", "backfill", fmt.Sprint(id), "--addr", d.nodeURL, "--from", from.Format(time.RFC3339Nano), "--to", "now", "--json"}
	var res node.BackfillResult
	if err := json.Unmarshal([]byte(timerdOut(t, args...)), &res); err != nil {
		t.Fatalf("timerd rules backfill: %v", err)
	}
	if res.Sent < 5 || res.Resent != 0 || res.Skipped < 2 || res.Watermark == nil {
		t.Fatalf("backfill of the outage: %+v; want the ~8 collapsed slots sent, those fired left out", res)
	}
	var marked, firedNow int
	testkit.Eventually(t, 10*time.Second, "the backfilled events delivered", func() bool {
		marked = 0
		for _, e := range d.events(t, "every.fire_once") {
			if e.Payload["backfill"] == true {
				marked++
			}
		}
		return marked >= res.Sent
	})
	if marked != res.Sent {
		t.Errorf("%d backfilled events delivered, want %d", marked, res.Sent)
	}
	// Every slot once from the first event up to the watermark: none missing, and
	// slotsOf fails on a repeated key.
	fo := slotsOf(t, d.events(t, "every.fire_once"))
	for i := 1; i < len(fo) && !fo[i].slot.After(res.Watermark.Slot); i++ {
		if gap := fo[i].slot.Sub(fo[i-1].slot); gap != time.Second {
			t.Errorf("every.fire_once after the backfill: slot %s follows %s (gap %s), want every slot", fo[i].slot, fo[i-1].slot, gap)
		}
	}
	if again := timerdOut(t, args...); !strings.Contains(again, `"sent":0,`) || !strings.Contains(again, `"resent":0,`) {
		t.Errorf("a second backfill of the range: %s; want nothing sent", again)
	}

	out := timerdOut(t, "rules", "fire", fmt.Sprint(id), "--addr", d.nodeURL)
	key := regexp.MustCompile(`Idempotency-Key (\S+)`).FindStringSubmatch(out)
	if key == nil || !strings.HasPrefix(key[1], fmt.Sprintf("%d:manual:", id)) {
		t.Fatalf("timerd rules fire: %q; want the event's manual key", out)
	}
	testkit.Eventually(t, 10*time.Second, "the manual event delivered", func() bool {
		firedNow = 0
		for _, e := range d.events(t, "every.fire_once") {
			if e.IdempotencyKey == key[1] && e.Payload["manual"] == true {
				firedNow++
			}
		}
		return firedNow == 1
	})
	text := timerdOut(t, "rules", "describe", fmt.Sprint(id), "--addr", d.nodeURL)
	if !strings.Contains(text, "OPERATION") || !strings.Contains(text, "backfilled") || !strings.Contains(text, "fired_manually") ||
		!strings.Contains(text, "collapsed_by_fire_once") {
		t.Errorf("describe after the backfill and the fire:\n%s\nwant the collapsed run, the backfill and the fire", text)
	}
	t.Logf("describe after the outage, the backfill and a fire now:\n%s", text)
}

type slotCount struct {
	slot  time.Time
	count int64
}

// slotsOf returns the events' slots in order, failing on a duplicate slot.
func slotsOf(t *testing.T, evs []event) []slotCount {
	t.Helper()
	var out []slotCount
	seen := map[string]bool{}
	for _, e := range evs {
		if seen[e.IdempotencyKey] {
			t.Errorf("duplicate event for %s", e.IdempotencyKey)
		}
		seen[e.IdempotencyKey] = true
		out = append(out, slotCount{payloadTime(t, e, "scheduled_at"), payloadInt(e, "execution_count")})
	}
	slices.SortFunc(out, func(a, b slotCount) int { return a.slot.Compare(b.slot) })
	if len(out) == 0 {
		t.Fatal("no events")
	}
	return out
}
