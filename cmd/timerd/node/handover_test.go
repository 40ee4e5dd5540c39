package node

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"path/filepath"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/timerd/timerd/store"
	"github.com/timerd/timerd/test/testkit"
)

// A node that leaves for good while the events API is down hands its undelivered
// events to the members that hold their partitions: its store keeps none, and once the
// API is back every slot is stored once (docs/protocol.md §7).
func TestLeaveWithAPIDownHandsEventsOver(t *testing.T) {
	const rules = 20
	sys := startClusterAPI(t)
	// The nodes reach the API through a switch that answers 503 while it is "down".
	target, _ := url.Parse(sys.apiURL)
	proxy := httputil.NewSingleHostReverseProxy(target)
	var down atomic.Bool
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if down.Load() {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(front.Close)
	viaFront := func(c *Config) { c.APIURL, c.ShutdownTimeout = front.URL, 4*time.Second }
	a := sys.startClusterNode("a", clusterConfig(), false, viaFront)
	b := sys.startClusterNode("b", clusterConfig(a.cl.LocalAddr()), false, viaFront)
	ids := make([]int64, 0, rules)
	for i := range rules {
		ids = append(ids, sys.createRule(fmt.Sprintf("ho%02d", i), "core.intervaltimer", `{"interval":1}`))
	}
	nodes := []*runningNode{a, b}
	testkit.Eventually(t, 30*time.Second, "every rule run by one of a, b", func() bool { return ownedOnce(nodes, ids) })
	time.Sleep(1500 * time.Millisecond)

	down.Store(true)
	testkit.Eventually(t, 15*time.Second, "a has undelivered events", func() bool { n, _ := a.store.OutboxLen(); return n > 0 })
	dir := filepath.Dir(a.store.Path())
	a.stop(t)

	st, err := store.Open(filepath.Join(dir, "node.db"), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	left, _ := st.OutboxLen()
	pending, _ := st.PendingLen()
	st.Close()
	if left != 0 || pending != 0 {
		t.Errorf("a left with %d ready and %d pending events in its store, want none (handed over)", left, pending)
	}

	down.Store(false)
	testkit.Eventually(t, 30*time.Second, "b delivers everything", func() bool { n, _ := b.store.OutboxLen(); return n == 0 })
	if d := counterValue(t, sys.apiReg, "timerd_api_events_duplicate_total"); d != 0 {
		t.Errorf("API dropped %v repeated slots, want 0", d)
	}
	gaps := 0
	for id, slots := range slotsByRule(t, sys.allEvents()) {
		slices.Sort(slots)
		for i := 1; i < len(slots); i++ {
			if d := time.Duration(slots[i] - slots[i-1]); d != time.Second {
				gaps++
				t.Errorf("rule %d: slots %v apart at %d of %d stored", id, d, i, len(slots))
			}
		}
	}
	t.Logf("%d rules; a's store after it left: %d ready, %d pending; gaps %d", rules, left, pending, gaps)
}
