package node

import (
	"fmt"
	"reflect"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/timerd/timerd/cluster/protocol"
	"github.com/timerd/timerd/ingest/attune"
	"github.com/timerd/timerd/test/testkit"
)

// newIdleClusterNode is a node of a cluster of one that is not running: its store,
// engine and protocol driver, for driving acquisitions, releases and intake directly.
func newIdleClusterNode(t testing.TB) *Node {
	t.Helper()
	n, err := New(Config{DataDir: t.TempDir(), APIURL: "http://127.0.0.1:1", ReconcileInterval: -1,
		NodeName: "own-test", Cluster: clusterConfig(), Registry: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.Close() })
	return n
}

// idsIn returns count rule ids of partition p, from 1 up.
func idsIn(n *Node, p, count int) []int64 {
	var ids []int64
	for id := int64(1); len(ids) < count; id++ {
		if n.drv.partitionOf(id) == p {
			ids = append(ids, id)
		}
	}
	return ids
}

const every5s = `{"interval":5}`

func create(n *Node, t testing.TB, ids ...int64) {
	t.Helper()
	var msgs []attune.Message
	for _, id := range ids {
		msgs = append(msgs, envelope(attune.RuleCreated, id, "core.intervaltimer", every5s))
	}
	if err := n.applyMessages(msgs); err != nil {
		t.Error(err) // not Fatal: called from the tests' goroutines
	}
}

func acquire(t testing.TB, n *Node, parts ...int) {
	t.Helper()
	m := map[int]protocol.Epoch{}
	for _, p := range parts {
		m[p] = protocol.Epoch{N: 1, Node: "own-test"}
	}
	if err := n.drv.startFiring(m); err != nil {
		t.Error(err)
	}
}

func release(t testing.TB, n *Node, parts ...int) {
	t.Helper()
	n.drv.stopFiring(parts)
}

// checkEngineMatchesHoldings asserts the invariant of adoption: of ids, the engine runs
// exactly the rules stored whose partition is fired here.
func checkEngineMatchesHoldings(t *testing.T, n *Node, when string, ids []int64) {
	t.Helper()
	n.ownMu.Lock()
	defer n.ownMu.Unlock()
	for _, id := range ids {
		_, _, stored, err := n.store.Rule(id)
		if err != nil {
			t.Fatal(err)
		}
		_, running := n.engine.Watermark(id)
		if want := stored && n.drv.firing[n.drv.partitionOf(id)]; running != want {
			t.Errorf("%s: rule %d (partition %d, stored %v, fired here %v): running %v, want %v", when, id,
				n.drv.partitionOf(id), stored, n.drv.firing[n.drv.partitionOf(id)], running, want)
		}
	}
}

func TestAdoptionLoadsOnlyThePartitionsRules(t *testing.T) {
	n := newIdleClusterNode(t)
	mine, other := idsIn(n, 5, 4), idsIn(n, 6, 3)
	all := append(append([]int64{}, mine...), other...)
	create(n, t, all...)
	checkEngineMatchesHoldings(t, n, "nothing held", all)
	if got := n.engine.Len(); got != 0 {
		t.Errorf("engine runs %d rules before any acquisition, want 0", got)
	}
	acquire(t, n, 5)
	checkEngineMatchesHoldings(t, n, "partition 5 acquired", all)
	if got := n.engine.Len(); got != len(mine) {
		t.Errorf("engine runs %d rules after acquiring partition 5, want its %d", got, len(mine))
	}
	// A watermark of a rule not stored yet (a grant ahead of intake) is indexed: the
	// grant of the partition carries it. The rules never fired are left out (their
	// anchors every member derives), as a walk of the partition finds them.
	ahead := idsIn(n, 5, 6)[5]
	if err := n.store.MergeWatermarks([]protocol.Watermark{{Rule: ahead, Slot: time.Now().UnixNano(), Count: 9}}); err != nil {
		t.Fatal(err)
	}
	wms := memberStore{d: n.drv}.FiredWatermarks([]int{5})
	walked, err := n.store.PartitionWatermarksOf([]int{5}, n.drv.partitionOf)
	if err != nil {
		t.Fatal(err)
	}
	walked = slices.DeleteFunc(walked, protocol.NotFired)
	if len(wms) != 1 || wms[0].Rule != ahead || wms[0].Count != 9 || !reflect.DeepEqual(wms, walked) {
		t.Errorf("FiredWatermarks(5) = %+v\nwant that of rule %d (count 9) alone, as the walk finds: %+v", wms, ahead, walked)
	}
	release(t, n, 5)
	checkEngineMatchesHoldings(t, n, "partition 5 released", all)
	if got := n.engine.Len(); got != 0 {
		t.Errorf("engine runs %d rules after the release, want 0", got)
	}
}

// TestAdoptionRacesIntake makes intake and the driver meet at ownMu in both orders: a
// rule stored while its partition is being acquired, a rule deleted while its partition
// is being released, and a partition that changes owner twice quickly while its rules
// change. After each round the engine runs exactly the stored rules of the partitions
// held.
func TestAdoptionRacesIntake(t *testing.T) {
	n := newIdleClusterNode(t)
	const p = 7
	ids := idsIn(n, p, 12)
	storedUnderLock := func(id int64, want bool) func() bool {
		return func() bool {
			_, _, ok, err := n.store.Rule(id)
			return err == nil && ok == want
		}
	}
	for round := range 12 {
		id := ids[round]
		// Intake stores the rule and waits for ownMu; the acquisition waits too; who
		// takes ownMu first is up to the scheduler.
		n.ownMu.Lock()
		var wg sync.WaitGroup
		wg.Go(func() { create(n, t, id) })
		testkit.Eventually(t, 5*time.Second, fmt.Sprintf("rule %d stored", id), storedUnderLock(id, true))
		wg.Go(func() { acquire(t, n, p) })
		n.ownMu.Unlock()
		wg.Wait()
		checkEngineMatchesHoldings(t, n, fmt.Sprintf("round %d: created while acquiring", round), ids)

		// Deleted while the partition is released.
		n.ownMu.Lock()
		wg.Go(func() {
			if err := n.applyMessages([]attune.Message{envelope(attune.RuleDeleted, id, "core.intervaltimer", every5s)}); err != nil {
				t.Error(err)
			}
		})
		testkit.Eventually(t, 5*time.Second, fmt.Sprintf("rule %d deleted", id), storedUnderLock(id, false))
		wg.Go(func() { release(t, n, p) })
		n.ownMu.Unlock()
		wg.Wait()
		checkEngineMatchesHoldings(t, n, fmt.Sprintf("round %d: deleted while releasing", round), ids)

		// Twice quickly, a change of the rules in between and alongside.
		wg.Go(func() {
			acquire(t, n, p)
			release(t, n, p)
			acquire(t, n, p)
		})
		wg.Go(func() {
			create(n, t, id)
			if err := n.applyMessages([]attune.Message{envelope(attune.RuleEnabled, ids[(round+1)%len(ids)],
				"core.intervaltimer", `{"interval":7}`)}); err != nil {
				t.Error(err)
			}
		})
		wg.Wait()
		checkEngineMatchesHoldings(t, n, fmt.Sprintf("round %d: acquired, released, acquired", round), ids)
		release(t, n, p)
		checkEngineMatchesHoldings(t, n, fmt.Sprintf("round %d: released at the end", round), ids)
		if t.Failed() {
			return
		}
	}
}

// TestClaimWritesAtTheBatchEnd: the StartFiring effect puts the grants' watermarks in
// the overlay (merged with what it holds), where the member's reads see them; the
// batch's end writes them with the overlay and the holding in one transaction, and
// only then loads the partition's rules, at the later of the two watermarks.
func TestClaimWritesAtTheBatchEnd(t *testing.T) {
	n := newIdleClusterNode(t)
	const p = 3
	ids := idsIn(n, p, 3)
	create(n, t, ids...)
	d := n.drv
	base := time.Now().Add(time.Minute).Truncate(time.Second)
	at := func(s int) int64 { return base.Add(time.Duration(s) * time.Second).UnixNano() }
	d.stepMu.Lock()
	defer d.stepMu.Unlock()
	d.overlay[ids[0]] = protocol.Watermark{Rule: ids[0], Slot: at(10), Count: 4}
	d.overlay[ids[1]] = protocol.Watermark{Rule: ids[1], Slot: at(5), Count: 2}
	err := d.apply(protocol.StartFiring{Parts: map[int]protocol.Epoch{p: {N: 2, Node: "own-test"}},
		Watermarks: []protocol.Watermark{
			{Rule: ids[1], Slot: at(20), Count: 7}, // ahead of the overlay's
			{Rule: ids[2], Slot: at(30), Count: 9},
		}})
	if err != nil {
		t.Fatal(err)
	}
	ms := memberStore{d: d}
	for i, want := range []int64{at(10), at(20), at(30)} {
		if wm, ok := ms.Watermark(ids[i]); !ok || wm.Slot != want {
			t.Errorf("before the batch's end the member reads rule %d at %+v, %v; want slot %v", ids[i], wm, ok, time.Unix(0, want))
		}
		if _, running := n.engine.Watermark(ids[i]); running {
			t.Errorf("rule %d runs before its grant's watermark is stored", ids[i])
		}
		if wm, ok, _ := n.store.LoadWatermark(ids[i]); ok && wm.Slot == want {
			t.Errorf("rule %d's watermark stored before the batch's end", ids[i])
		}
	}
	before := storeCommits(t, n)
	if err := d.flush(); err != nil {
		t.Fatal(err)
	}
	if got := storeCommits(t, n) - before; got != 1 {
		t.Errorf("the batch's end wrote in %d transactions, want 1", got)
	}
	if left := len(d.overlay); left != 0 {
		t.Errorf("overlay after the batch's end holds %d watermarks, want 0 (written)", left)
	}
	for i, want := range []int64{at(10), at(20), at(30)} {
		wm, ok, err := n.store.LoadWatermark(ids[i])
		if err != nil || !ok || wm.Slot != want {
			t.Errorf("stored watermark of rule %d = %+v, %v, %v; want slot %v", ids[i], wm, ok, err, time.Unix(0, want))
		}
		got, running := n.engine.Watermark(ids[i])
		if !running || got.Slot.UnixNano() != want {
			t.Errorf("engine's watermark of rule %d = %v (running %v), want %v", ids[i], got.Slot, running, time.Unix(0, want))
		}
	}
	if held, err := n.store.Durable(); err != nil || len(held.Held) != 1 {
		t.Errorf("stored holdings after the claim = %+v, %v; want partition %d", held.Held, err, p)
	}
}

// TestClaimReleasedInTheSameBatchNeverFires: a partition claimed and then released
// within one batch (a grant to a higher epoch right after the claim) is not loaded at
// the batch's end, and the store does not record it held.
func TestClaimReleasedInTheSameBatchNeverFires(t *testing.T) {
	n := newIdleClusterNode(t)
	const p, q = 3, 4
	ids := append(idsIn(n, p, 2), idsIn(n, q, 2)...)
	create(n, t, ids...)
	d := n.drv
	d.stepMu.Lock()
	defer d.stepMu.Unlock()
	e := protocol.Epoch{N: 2, Node: "own-test"}
	for _, eff := range []protocol.Effect{
		protocol.StartFiring{Parts: map[int]protocol.Epoch{p: e, q: e}},
		protocol.StopFiring{Parts: []int{p}},
	} {
		if err := d.apply(eff); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.flush(); err != nil {
		t.Fatal(err)
	}
	for i, id := range ids {
		_, running := n.engine.Watermark(id)
		if want := i >= 2; running != want { // the first two are p's
			t.Errorf("rule %d (partition %d) running %v after the batch, want %v", id, d.partitionOf(id), running, want)
		}
	}
	if held, err := n.store.Durable(); err != nil || len(held.Held) != 1 || held.Held[q] != e {
		t.Errorf("stored holdings = %+v, %v; want partition %d alone", held.Held, err, q)
	}
}

// storeCommits is how many read-write transactions n's store has committed.
func storeCommits(t *testing.T, n *Node) uint64 {
	t.Helper()
	mfs, err := n.cfg.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "timerd_store_commit_seconds" {
			return mf.GetMetric()[0].GetHistogram().GetSampleCount()
		}
	}
	t.Fatal("no timerd_store_commit_seconds")
	return 0
}
