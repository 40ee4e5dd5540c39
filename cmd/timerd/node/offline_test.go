package node

import (
	"errors"
	"fmt"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/timerd/timerd/cluster"
	"github.com/timerd/timerd/test/testkit"
)

// A node of three whose store fails its commits for longer than
// CommitFailureLeaveAfter steps out of the protocol: it holds nothing, is not
// ready, and the two others take its partitions over. When its commits stop
// failing (its probe succeeds) it comes back as a new incarnation and runs its
// share again. No slot is stored twice. (The failures are recorded as the engine
// records them; the store itself has room. test/e2e fills a real disk.)
func TestClusterNodeStepsOutWhileItsStoreFails(t *testing.T) {
	const rules = 30
	sys := startClusterAPI(t)
	expect3 := func(join ...string) *cluster.Config {
		cc := clusterConfig(join...)
		cc.Expect = 3
		return cc
	}
	leaveSoon := func(c *Config) { c.CommitFailureLeaveAfter = 100 * time.Millisecond }
	a := sys.startClusterNode("a", expect3(), false, leaveSoon)
	b := sys.startClusterNode("b", expect3(a.cl.LocalAddr()), true, leaveSoon)
	c := sys.startClusterNode("c", expect3(a.cl.LocalAddr()), true, leaveSoon)
	nodes := []*runningNode{a, b, c}
	ids := make([]int64, 0, rules)
	for i := range rules {
		ids = append(ids, sys.createRule(fmt.Sprintf("so%02d", i), "core.intervaltimer", `{"interval":1}`))
	}
	testkit.Eventually(t, 20*time.Second, "every rule run by exactly one of a, b, c", func() bool { return ownedOnce(nodes, ids) })
	before := c.drv.snap.Load().self

	// c's commits fail (as its engine would record them) until a and b hold everything.
	failing := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		full := errors.New("write node.db: no space left on device")
		for {
			select {
			case <-failing:
				return
			case <-time.After(time.Millisecond):
				c.health.record(full)
			}
		}
	}()
	held := func(n *runningNode) int { return len(n.drv.snap.Load().held) }
	testkit.Eventually(t, 15*time.Second, "a and b hold every partition, c none", func() bool {
		return held(a)+held(b) == cluster.DefaultPartitions && held(c) == 0
	})
	if code := get(t, "http://"+c.HTTPAddr()+"/readyz"); code != http.StatusServiceUnavailable {
		t.Errorf("c out of the protocol: /readyz %d, want 503", code)
	}
	if code := get(t, "http://"+c.HTTPAddr()+"/healthz"); code != http.StatusOK {
		t.Errorf("c out of the protocol: /healthz %d, want 200", code)
	}
	close(failing)
	<-stopped

	testkit.Eventually(t, 20*time.Second, "c back as a new incarnation, ready, each rule run once", func() bool {
		self := c.drv.snap.Load().self
		return self.N > before.N && held(c) > 0 && get(t, "http://"+c.HTTPAddr()+"/readyz") == http.StatusOK &&
			ownedOnce(nodes, ids)
	})
	time.Sleep(2 * time.Second) // c fires its share again
	if d := counterValue(t, sys.apiReg, "timerd_api_events_duplicate_total"); d != 0 {
		t.Errorf("API dropped %v repeated slots, want 0", d)
	}
	for id, s := range slotsByRule(t, sys.allEvents()) {
		if len(s) != len(slices.Compact(slices.Sorted(slices.Values(s)))) {
			t.Errorf("rule %d: a slot stored twice: %v", id, s)
		}
	}
	t.Logf("c: %s -> %s; store commit failures recorded %v", before, c.drv.snap.Load().self,
		counterValue(t, c.cfg.Registry, "timerd_store_commit_failures_total"))
}
