package node

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/timerd/timerd/cluster/protocol"
	"github.com/timerd/timerd/ingest/attune"
	"github.com/timerd/timerd/scheduler"
	"github.com/timerd/timerd/store"
	"github.com/timerd/timerd/test/testkit"
)

// missedOf is rule id's missed-fire log as "reason count" strings.
func missedOf(t *testing.T, n *Node, id int64) []string {
	t.Helper()
	ms, err := n.MissedSlots(id)
	if err != nil {
		t.Fatalf("MissedSlots(%d): %v", id, err)
	}
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = fmt.Sprintf("%s %d", m.Reason, m.Count)
	}
	return out
}

// setWatermarkBack moves the stored watermark of rule id back to at, in the store of
// a stopped node: as if the node had stopped then.
func setWatermarkBack(t *testing.T, dir string, id int64, at time.Time) {
	t.Helper()
	st, err := store.Open(filepath.Join(dir, "node.db"), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	r, wm, ok, err := st.Rule(id)
	if err != nil || !ok {
		t.Fatalf("rule %d: %v %v", id, ok, err)
	}
	if err := st.PutRule(r, &store.Watermark{Slot: at, Count: wm.Count}); err != nil {
		t.Fatal(err)
	}
}

// A node stopped while its rules' slots come due records, once restarted, each run
// of slots it did not fire on time, by policy: fire_once's collapsed run and its one
// late fire, fire_all's 100 late fires and the run beyond its cap, skip's run; counts
// them in timerd_missed_slots_total; and drops a rule's log with the rule.
func TestMissedSlotsAcrossRestart(t *testing.T) {
	t.Parallel()
	sys := startAPI(t, t.TempDir())
	dir := t.TempDir()
	n := sys.startNode(dir, true)
	ids := map[string]int64{}
	for _, p := range []string{"fire_once", "fire_all", "skip"} {
		ids[p] = sys.createRule("missed_"+p, "core.intervaltimer", fmt.Sprintf(`{"interval":1,"misfire":%q}`, p))
	}
	testkit.Eventually(t, 10*time.Second, "every rule fired", func() bool {
		for p := range ids {
			if len(sys.events("missed_"+p)) == 0 {
				return false
			}
		}
		return true
	})
	for p, id := range ids {
		if got := missedOf(t, n.Node, id); len(got) != 0 {
			t.Errorf("rule %s fired on time, yet its log holds %q", p, got)
		}
	}
	n.stop(t)
	// Down for ten minutes, as far as the rules can tell: 600 slots of 1 s, of which
	// the last minute (the misfire grace) is on time.
	down := time.Now().Add(-10 * time.Minute).Truncate(time.Second)
	for _, id := range ids {
		setWatermarkBack(t, dir, id, down)
	}

	n2 := sys.startNode(dir, true)
	testkit.Eventually(t, 10*time.Second, "the misses recorded", func() bool {
		for _, id := range ids {
			if len(missedOf(t, n2.Node, id)) == 0 {
				return false
			}
		}
		return true
	})
	runs := map[string][]store.MissedSlot{}
	for p, id := range ids {
		ms, err := n2.MissedSlots(id)
		if err != nil {
			t.Fatal(err)
		}
		runs[p] = ms
	}
	// The slots after down up to a minute before the restart: about 540, and a few
	// more for the seconds the restart took. A rule's slots are a whole number of
	// seconds apart, at an offset of its own (docs/timers.md).
	between := func(n uint64, lo, hi uint64) bool { return n >= lo && n <= hi }
	first := func(m store.MissedSlot) bool { return m.From.After(down) && !m.From.After(down.Add(time.Second)) }
	check := func(policy string, want ...string) {
		t.Helper()
		got := runs[policy]
		if len(got) != len(want) {
			t.Errorf("%s: log %+v, want %v", policy, got, want)
			return
		}
		for i, m := range got {
			if m.Reason != want[i] || m.DetectedAt.IsZero() || m.To.Before(m.From) || !m.From.After(down) {
				t.Errorf("%s: record %d = %+v, want %s, after %v", policy, i, m, want[i], down)
			}
		}
	}
	check("fire_once", "collapsed_by_fire_once", "node_down")
	check("fire_all", "skipped_by_policy", "node_down")
	check("skip", "skipped_by_policy")
	if t.Failed() {
		t.FailNow()
	}
	once, all, skip := runs["fire_once"], runs["fire_all"], runs["skip"]
	if c := once[0]; !between(c.Count, 530, 560) || !first(c) || c.Count != uint64(c.To.Sub(c.From)/time.Second)+1 {
		t.Errorf("fire_once collapsed %+v: want one run of about 540 slots from the first after %v", c, down)
	}
	if l := once[1]; l.Count != 1 || !l.From.Equal(once[0].To.Add(time.Second)) {
		t.Errorf("fire_once late fire %+v: want the one slot after the collapsed run", l)
	}
	if l := all[1]; l.Count != 100 || !l.From.Equal(all[0].To.Add(time.Second)) {
		t.Errorf("fire_all late fires %+v: want the 100 slots after the run skipped", l)
	}
	if s := all[0]; !between(s.Count, 430, 460) || !first(s) {
		t.Errorf("fire_all skipped %+v: want about 440 slots from the first after %v", s, down)
	}
	if s := skip[0]; !between(s.Count, 530, 561) || !first(s) {
		t.Errorf("skip skipped %+v: want about 540 slots", s)
	}
	// Describe shows the log as the store holds it.
	for policy, id := range ids {
		code, d, body := describe(t, "http://"+n2.HTTPAddr(), fmt.Sprint(id), nil)
		if code != http.StatusOK || len(d.Missed) != len(runs[policy]) {
			t.Fatalf("describe %s: %d, missed %+v; want the %d records of its log\n%s", policy, code, d.Missed, len(runs[policy]), body)
		}
		for i, m := range d.Missed {
			r := runs[policy][i]
			if m.Reason != r.Reason || m.Count != r.Count || !m.From.Equal(r.From) || !m.To.Equal(r.To) {
				t.Errorf("describe %s: missed[%d] = %+v, want %+v", policy, i, m, r)
			}
		}
	}
	// The metric counts the same slots.
	want := map[string]uint64{"node_down": once[1].Count + all[1].Count,
		"collapsed_by_fire_once": once[0].Count, "skipped_by_policy": all[0].Count + skip[0].Count}
	for reason, n := range want {
		if got := testCounter(t, n2, "timerd_missed_slots_total", fmt.Sprintf("reason=%q", reason)); got != float64(n) {
			t.Errorf("timerd_missed_slots_total{reason=%q} = %v, want %d", reason, got, n)
		}
	}
	// Deleting the rule drops its log.
	sys.post("DELETE /api/v1/rules/missed_fire_once")
	testkit.Eventually(t, 5*time.Second, "the deleted rule's log gone", func() bool {
		return len(missedOf(t, n2.Node, ids["fire_once"])) == 0
	})
	if got := missedOf(t, n2.Node, ids["skip"]); len(got) != 1 {
		t.Errorf("another rule's log after the deletion: %q, want its one record", got)
	}
}

// A rule changed to a timer that does not parse records invalid_schedule, with no
// slots, counted as one; a restart that loads it so replaces the record rather than
// adding one.
func TestMissedInvalidSchedule(t *testing.T) {
	t.Parallel()
	sys := startAPI(t, t.TempDir())
	dir := t.TempDir()
	n := sys.startNode(dir, true)
	id := sys.createRule("bad", "core.intervaltimer", `{"interval":1}`)
	testkit.Eventually(t, 10*time.Second, "the rule fired", func() bool { return len(sys.events("bad")) > 0 })
	// A change the node cannot parse (a newer Attune's params, say): the rule stops.
	if err := sys.bus.Publish(context.Background(),
		envelope(attune.RuleEnabled, id, "core.intervaltimer", `{"interval":"soon"}`)); err != nil {
		t.Fatal(err)
	}
	var before time.Time
	for round := range 2 {
		if round == 1 {
			n.stop(t)
			n = sys.startNode(dir, true) // the stored rule is loaded invalid
		}
		testkit.Eventually(t, 5*time.Second, "invalid_schedule counted", func() bool {
			return testCounter(t, n, "timerd_missed_slots_total", `reason="invalid_schedule"`) == 1
		})
		ms, _ := n.MissedSlots(id)
		if len(ms) != 1 || ms[0].Reason != "invalid_schedule" || ms[0].Count != 0 || !ms[0].From.IsZero() ||
			!ms[0].DetectedAt.After(before) {
			t.Errorf("start %d: log %+v, want one invalid_schedule record without slots, detected after %v", round+1, ms, before)
		} else {
			before = ms[0].DetectedAt
		}
		if n.engine.Len() != 0 {
			t.Errorf("start %d: the invalid rule is in the engine", round+1)
		}
	}
}

// The commit path of a clustered node: a late fire whose rule another node fired last
// is owner_changing, one this node fired last (or nobody) node_down; a fire decided
// meanwhile, one the store's watermark refuses and one a verdict drops are
// duplicate_guard, each recorded once.
func TestMissedInTheCluster(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	n, err := New(Config{DataDir: t.TempDir(), APIURL: "http://127.0.0.1:1", ReconcileInterval: -1,
		Registry: reg, NodeName: "solo", Cluster: clusterConfig()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	engineDone := make(chan error, 1)
	go func() { engineDone <- n.engine.Run(ctx) }() // commits the misses the node reports
	t.Cleanup(func() {
		cancel()
		if err := <-engineDone; err != nil {
			t.Errorf("engine Run: %v", err)
		}
		_ = n.cl.Shutdown()
		n.store.Close()
	})
	timer, err := scheduler.Parse("core.intervaltimer", json.RawMessage(`{"interval":1}`), 1)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().Truncate(time.Second).UTC()
	self := protocol.Incarnation{Node: "solo", N: 9}
	other := protocol.Incarnation{Node: "n2", N: 4}
	held := map[int]protocol.Epoch{}
	for id := int64(1); id <= 6; id++ {
		if err := n.store.PutRule(store.Rule{ID: id, Ref: fmt.Sprintf("r%d", id), TriggerRef: "core.intervaltimer",
			Params: json.RawMessage(`{"interval":1}`), UpdatedAt: now.Add(-time.Hour)}, nil); err != nil {
			t.Fatal(err)
		}
		held[n.drv.partitionOf(id)] = protocol.Epoch{N: 3, Node: "solo"}
	}
	chain := func(id int64, by protocol.Incarnation, last time.Time) protocol.Watermark {
		l := last.UnixNano()
		return protocol.Watermark{Rule: id, Slot: l, Count: 5, Chain: protocol.Chain{{From: l - int64(time.Second), Last: l, Firer: by, Epoch: protocol.Epoch{N: 2, Node: by.Node}}}}
	}
	if err := n.store.MergeWatermarks([]protocol.Watermark{
		chain(1, other, now.Add(-time.Hour)),  // fired last by another node
		chain(2, self, now.Add(-time.Hour)),   // by this one
		chain(5, other, now.Add(time.Minute)), // its watermark is past the fire below
	}); err != nil {
		t.Fatal(err)
	}
	n.drv.snap.Store(&memberSnap{self: self, held: held, leaseUntil: bootNow() + time.Hour})
	n.drv.overlay[4] = protocol.Watermark{Rule: 4, Slot: now.UnixNano(), Count: 9} // merged in this protocol batch

	late := func(id int64) scheduler.Miss {
		return scheduler.Miss{RuleID: id, From: now.Add(-2 * time.Minute), To: now.Add(-2 * time.Minute), Count: 1,
			Reason: scheduler.MissNodeDown, At: now}
	}
	fire := func(id int64) scheduler.Fire {
		return scheduler.Fire{RuleID: id, Slot: now, Count: 6, FiredAt: now, Timer: timer}
	}
	if err := n.commit([]scheduler.Fire{fire(3), fire(4), fire(5)}, []scheduler.Miss{late(1), late(2), late(3)}); err != nil {
		t.Fatalf("commit: %v", err)
	}
	n.reportDropped([]protocol.EventRef{{Rule: 6, Slot: now.Add(-2 * time.Second).UnixNano()}, {Rule: 6, Slot: now.UnixNano()}},
		protocol.FiredByAnother)

	want := map[int64]string{1: "owner_changing 1", 2: "node_down 1", 3: "node_down 1", 4: "duplicate_guard 1",
		5: "duplicate_guard 1", 6: "duplicate_guard 2"}
	testkit.Eventually(t, 5*time.Second, "the reported misses committed", func() bool {
		return len(missedOf(t, n, 5)) > 0 && len(missedOf(t, n, 6)) > 0
	})
	for id, w := range want {
		if got := missedOf(t, n, id); len(got) != 1 || got[0] != w {
			t.Errorf("rule %d: log %q, want [%s]", id, got, w)
		}
	}
	details := map[int64]string{1: "last fired by n2", 4: "decided_meanwhile", 5: "watermark_passed", 6: "fired_by_another"}
	for id, w := range details {
		if ms, _ := n.MissedSlots(id); len(ms) != 1 || ms[0].Detail != w {
			t.Errorf("rule %d: record %+v, want detail %q", id, ms, w)
		}
	}
	if ms, _ := n.MissedSlots(6); len(ms) == 1 && (!ms[0].From.Equal(now.Add(-2*time.Second)) || !ms[0].To.Equal(now)) {
		t.Errorf("rule 6's dropped run %v..%v, want %v..%v", ms[0].From, ms[0].To, now.Add(-2*time.Second), now)
	}
	got := map[string]float64{}
	for _, r := range []string{"owner_changing", "node_down", "duplicate_guard"} {
		got[r] = testCounterOf(t, reg, "timerd_missed_slots_total", fmt.Sprintf("reason=%q", r))
	}
	if got["owner_changing"] != 1 || got["node_down"] != 2 || got["duplicate_guard"] != 4 {
		t.Errorf("timerd_missed_slots_total = %v, want owner_changing 1, node_down 2, duplicate_guard 4", got)
	}
}
