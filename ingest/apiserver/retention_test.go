package apiserver

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	bolt "go.etcd.io/bbolt"

	"github.com/timerd/timerd/test/testkit"
)

// storeEvents stores n events of the given instances (round robin), each
// with an Idempotency-Key, through the request parser and the committer's
// commit, up to maxEventBatch a transaction (a backlog of thousands in a
// few fsyncs). It returns the keys in order.
func storeEvents(t *testing.T, s *Server, n int, insts ...string) []string {
	t.Helper()
	var keys []string
	for done := 0; done < n; {
		var b commitBatch
		for ; done < n && len(b.events) < maxEventBatch; done++ {
			inst := insts[done%len(insts)]
			key := fmt.Sprintf("%s:%d", strings.TrimPrefix(inst, "rule_"), s.cfg.Now().UnixNano()+int64(done)) // a slot
			r := httptest.NewRequest(http.MethodPost, "/api/v1/events",
				strings.NewReader(fmt.Sprintf(`{"trigger_ref":"core.intervaltimer","trigger_instance_id":%q,"payload":{"n":%d}}`, inst, done)))
			r.Header.Set("Idempotency-Key", key)
			req, err := s.parseEvent(httptest.NewRecorder(), r)
			if err != nil {
				t.Fatalf("parseEvent(%s) = %v", key, err)
			}
			b.events = append(b.events, req)
			keys = append(keys, key)
		}
		s.commit(b)
		for _, req := range b.events {
			if resp := <-req.resp; resp.err != nil || resp.dup {
				t.Fatalf("commit of key %s = %+v, want stored", req.idemKey, resp)
			}
		}
	}
	return keys
}

// checkIndexConsistent checks that the in-memory index is the one a restart
// would rebuild from bbolt, and that every idempotency entry names an event
// that exists and every event with a key has its entry.
func checkIndexConsistent(t *testing.T, s *Server) {
	t.Helper()
	rebuilt, err := loadEventIndex(s.db)
	if err != nil {
		t.Fatalf("loadEventIndex = %v", err)
	}
	s.evIndex.mu.RLock()
	for name, pair := range map[string][2]map[string][]int64{
		"trigger_instance_id": {s.evIndex.byInst, rebuilt.byInst},
		"rule_ref":            {s.evIndex.byRule, rebuilt.byRule},
	} {
		mem, disk := pair[0], pair[1]
		if len(mem) != len(disk) {
			t.Errorf("index by %s: %d keys in memory, %d rebuilt from bbolt", name, len(mem), len(disk))
		}
		for k, ids := range disk {
			if !slices.Equal(mem[k], ids) {
				t.Errorf("index by %s %q: memory %v, bbolt %v", name, k, mem[k], ids)
			}
		}
	}
	s.evIndex.mu.RUnlock()
	err = s.db.View(func(tx *bolt.Tx) error {
		events, idem := tx.Bucket(bucketEvents), tx.Bucket(bucketEventIdem)
		entries := 0
		if err := idem.ForEach(func(k, v []byte) error {
			entries++
			if events.Get(v) == nil {
				t.Errorf("idempotency entry %x names event %d, which is not stored", k, binary.BigEndian.Uint64(v))
			}
			return nil
		}); err != nil {
			return err
		}
		withKey := 0
		if err := events.ForEach(func(k, v []byte) error {
			if bytes.Contains(v, []byte(`"idempotency_key":"`)) {
				withKey++
			}
			return nil
		}); err != nil {
			return err
		}
		if entries != withKey {
			t.Errorf("%d idempotency entries for %d events with a key", entries, withKey)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func listIDs(e *testEnv, query string) ([]int64, int64) {
	e.t.Helper()
	var l eventList
	e.must(http.StatusOK, &l, "GET", "/api/v1/events"+query, "")
	ids := []int64{}
	for _, ev := range l.Items {
		ids = append(ids, ev.ID)
	}
	return ids, l.Pagination.TotalItems
}

// A backlog of 2,500 old events goes in three transactions of at most 1,000;
// the new events stay; listing (whole, paged and by both indexes), the
// idempotency index and a restart see only what is left; a key of a deleted
// event stores a new event rather than pointing at the deleted one.
func TestEventRetentionDeletesOldEventsInBatches(t *testing.T) {
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	clk := &clock{now: t0}
	e := newEnv(t, func(c *Config) { c.Now = clk.Now })
	e.must(http.StatusCreated, nil, "POST", "/api/v1/rules", `{"ref":"ops.a","trigger_ref":"core.intervaltimer","trigger_params":{"interval":5}}`)
	e.must(http.StatusCreated, nil, "POST", "/api/v1/rules", `{"ref":"ops.b","trigger_ref":"core.intervaltimer","trigger_params":{"interval":5}}`)
	// The job is not running (EventRetention was 0 at New): the test sweeps.
	e.srv.cfg.EventRetention = 7 * 24 * time.Hour

	oldKeys := storeEvents(t, e.srv, 2500, "rule_1", "rule_2")
	clk.set(t0.Add(7*24*time.Hour - time.Second))
	newKeys := storeEvents(t, e.srv, 10, "rule_1", "rule_2")

	// One second short of the retention: nothing is old enough yet.
	if r := e.srv.sweepEvents(); r.err != nil || r.deleted != 0 || r.batches != 0 {
		t.Fatalf("sweep at t0+7d-1s = %+v, want nothing deleted", r)
	}
	clk.set(t0.Add(7*24*time.Hour + time.Second))
	r := e.srv.sweepEvents()
	if r.err != nil || r.deleted != 2500 || r.batches != 3 {
		t.Fatalf("sweep at t0+7d+1s = %+v, want 2500 deleted in 3 batches", r)
	}
	if got := e.counter("timerd_api_events_deleted_total"); got != 2500 {
		t.Errorf("timerd_api_events_deleted_total = %v, want 2500", got)
	}

	check := func(when string) {
		t.Helper()
		want := seq(2501, 2510)
		if ids, total := listIDs(e, ""); !slices.Equal(ids, want) || total != 10 {
			t.Errorf("%s: GET events = ids %v, total %d; want %v, total 10", when, ids, total, want)
		}
		if ids, total := listIDs(e, "?page=2&page_size=4"); !slices.Equal(ids, seq(2505, 2508)) || total != 10 {
			t.Errorf("%s: GET events page 2 of 4 = ids %v, total %d; want 2505..2508, total 10", when, ids, total)
		}
		if ids, total := listIDs(e, "?page=3&page_size=4"); !slices.Equal(ids, seq(2509, 2510)) || total != 10 {
			t.Errorf("%s: GET events page 3 of 4 = ids %v, total %d; want 2509..2510, total 10", when, ids, total)
		}
		if ids, total := listIDs(e, "?trigger_instance_id=rule_1"); !slices.Equal(ids, []int64{2501, 2503, 2505, 2507, 2509}) || total != 5 {
			t.Errorf("%s: GET events of rule_1 = ids %v, total %d; want the 5 new ones", when, ids, total)
		}
		if ids, total := listIDs(e, "?rule_ref=ops.b&trigger_instance_id=rule_2"); !slices.Equal(ids, []int64{2502, 2504, 2506, 2508, 2510}) || total != 5 {
			t.Errorf("%s: GET events of ops.b and rule_2 = ids %v, total %d; want the 5 new ones", when, ids, total)
		}
		checkIndexConsistent(t, e.srv)
	}
	check("after the sweep")

	// A new event's key is still a duplicate; a deleted event's key is not.
	code, body := e.do("POST", "/api/v1/events", `{"trigger_ref":"core.intervaltimer","trigger_instance_id":"rule_1"}`, "Idempotency-Key", newKeys[0])
	if code != http.StatusOK || strings.TrimSpace(string(body)) != `{"data":{"id":2501}}` {
		t.Errorf("repeat of kept key %s = %d %s, want 200 with id 2501", newKeys[0], code, body)
	}
	var again eventData
	e.must(http.StatusCreated, &again, "POST", "/api/v1/events", `{"trigger_ref":"core.intervaltimer","trigger_instance_id":"rule_1"}`,
		"Idempotency-Key", oldKeys[0])
	if again.Data.ID != 2511 {
		t.Errorf("key %s of a deleted event stored id %d, want a new event 2511", oldKeys[0], again.Data.ID)
	}
	if ids, total := listIDs(e, "?trigger_instance_id=rule_1"); len(ids) != 6 || ids[5] != 2511 || total != 6 {
		t.Errorf("GET events of rule_1 after a new one = ids %v, total %d; want 6 ending with 2511", ids, total)
	}
	// Another sweep finds nothing; a restart rebuilds the same index.
	if r := e.srv.sweepEvents(); r.err != nil || r.deleted != 0 {
		t.Errorf("second sweep = %+v, want nothing deleted", r)
	}
	e.restart()
	if ids, total := listIDs(e, ""); len(ids) != 11 || ids[0] != 2501 || total != 11 {
		t.Errorf("after restart: GET events = ids %v, total %d; want 2501..2511", ids, total)
	}
	checkIndexConsistent(t, e.srv)
}

// Every event old: the bucket empties and listing says 0, then ids go on
// from the sequence.
func TestEventRetentionDeletesEverything(t *testing.T) {
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	clk := &clock{now: t0}
	e := newEnv(t, func(c *Config) { c.Now = clk.Now })
	e.srv.cfg.EventRetention = time.Hour
	storeEvents(t, e.srv, 5, "rule_7")
	clk.set(t0.Add(2 * time.Hour))
	if r := e.srv.sweepEvents(); r.err != nil || r.deleted != 5 || r.batches != 1 {
		t.Fatalf("sweep = %+v, want 5 deleted in 1 batch", r)
	}
	if ids, total := listIDs(e, ""); len(ids) != 0 || total != 0 {
		t.Errorf("GET events of an emptied store = ids %v, total %d; want none", ids, total)
	}
	if ids, total := listIDs(e, "?trigger_instance_id=rule_7"); len(ids) != 0 || total != 0 {
		t.Errorf("GET events of rule_7 = ids %v, total %d; want none", ids, total)
	}
	checkIndexConsistent(t, e.srv)
	var ev eventData
	e.must(http.StatusCreated, &ev, "POST", "/api/v1/events", `{"trigger_ref":"core.intervaltimer","trigger_instance_id":"rule_7"}`)
	if ev.Data.ID != 6 {
		t.Errorf("first event after emptying = id %d, want 6 (ids are never reused)", ev.Data.ID)
	}
	if ids, total := listIDs(e, ""); !slices.Equal(ids, []int64{6}) || total != 1 {
		t.Errorf("GET events = ids %v, total %d; want [6], total 1", ids, total)
	}
}

// An event that is not JSON stops the sweep with an error naming it, and
// nothing of that batch is deleted.
func TestEventRetentionMalformedEvent(t *testing.T) {
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	clk := &clock{now: t0}
	e := newEnv(t, func(c *Config) { c.Now = clk.Now })
	e.srv.cfg.EventRetention = time.Hour
	storeEvents(t, e.srv, 3, "rule_1")
	if err := e.srv.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketEvents).Put(idKey(2), []byte("{not json")) }); err != nil {
		t.Fatal(err)
	}
	clk.set(t0.Add(2 * time.Hour))
	r := e.srv.sweepEvents()
	if r.err == nil || !strings.Contains(r.err.Error(), "event 2") || r.deleted != 0 {
		t.Errorf("sweep over a malformed event = %+v, want an error naming event 2 and nothing deleted", r)
	}
	n := 0
	_ = e.srv.db.View(func(tx *bolt.Tx) error { n = tx.Bucket(bucketEvents).Stats().KeyN; return nil })
	if n != 3 {
		t.Errorf("after the failed sweep: %d events, want 3", n)
	}
}

// syncBuffer is a bytes.Buffer safe for the server's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// The job (fake time in a bubble) sweeps every EventSweepInterval, deletes
// in batches of eventDeleteBatch and logs each sweep with its count.
func TestEventRetentionJob(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var logs syncBuffer
		srv, err := New(Config{
			DataDir: t.TempDir(), EventRetention: time.Hour, EventSweepInterval: 10 * time.Minute,
			eventDeleteBatch: 3, Logger: slog.New(slog.NewTextHandler(&logs, nil)),
		})
		if err != nil {
			t.Fatal(err)
		}
		defer srv.Close()
		start := time.Now()
		storeEvents(t, srv, 7, "rule_1")
		time.Sleep(55 * time.Minute)
		storeEvents(t, srv, 2, "rule_1") // created at +55m
		count := func() int {
			n := 0
			_ = srv.db.View(func(tx *bolt.Tx) error { n = tx.Bucket(bucketEvents).Stats().KeyN; return nil })
			return n
		}
		steps := []struct {
			at   time.Duration
			left int
		}{
			{60*time.Minute - 2*time.Second, 9}, // before the sweep at +60m
			{60 * time.Minute, 9},               // created at +0 is not before +60m-1h
			{70 * time.Minute, 2},               // the sweep at +70m: 7 in 3 batches
			{2 * time.Hour, 0},
		}
		for _, st := range steps {
			// A second on: the sweep's pauses between batches pass.
			time.Sleep(time.Until(start.Add(st.at + time.Second)))
			synctest.Wait()
			if n := count(); n != st.left {
				t.Errorf("at +%v: %d events, want %d", st.at, n, st.left)
			}
		}
		if got := testutil.ToFloat64(srv.metrics.eventsDeleted); got != 9 {
			t.Errorf("timerd_api_events_deleted_total = %v, want 9", got)
		}
		if out := logs.String(); !strings.Contains(out, `msg="event retention sweep" component=apiserver deleted=7 batches=3`) ||
			!strings.Contains(out, `msg="event retention sweep" component=apiserver deleted=2 batches=1`) {
			t.Errorf("log = %s\nwant a line for each sweep that deleted, with deleted=7 batches=3 and deleted=2 batches=1", out)
		}
	})
}

func TestEventRetentionValidate(t *testing.T) {
	for _, c := range []Config{
		{DataDir: "x", EventRetention: -time.Second},
		{DataDir: "x", EventSweepInterval: -time.Second},
	} {
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "negative") {
			t.Errorf("Validate(%+v) = %v, want a negative-duration error", c, err)
		}
	}
}

// The API stores events while a sweep deletes a backlog: the committer gets
// bbolt's writer lock between two batches, so a POST made once the sweep
// started is answered before the sweep ends (40 batches with 50 ms pauses).
func TestEventRetentionLetsTheAPIAnswer(t *testing.T) {
	t.Parallel()
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	clk := &clock{now: t0}
	e := newEnv(t, func(c *Config) {
		c.Now = clk.Now
		c.eventDeleteBatch = 100
		c.eventDeletePause = 50 * time.Millisecond
	})
	e.srv.cfg.EventRetention = time.Hour
	storeEvents(t, e.srv, 4000, "rule_1")
	clk.set(t0.Add(2 * time.Hour))

	done := make(chan sweepResult, 1)
	go func() { done <- e.srv.sweepEvents() }()
	testkit.Eventually(t, 10*time.Second, "the sweep's first batch", func() bool { return testutil.ToFloat64(e.srv.metrics.eventsDeleted) > 0 })
	var ev eventData
	e.must(http.StatusCreated, &ev, "POST", "/api/v1/events", `{"trigger_ref":"core.intervaltimer","trigger_instance_id":"rule_1"}`)
	select {
	case r := <-done:
		t.Errorf("the sweep (%+v) ended before a POST made during it was answered", r)
	default:
	}
	r := <-done
	if r.err != nil || r.deleted != 4000 || r.batches != 40 {
		t.Errorf("sweep = %+v, want 4000 deleted in 40 batches", r)
	}
	if ids, total := listIDs(e, ""); !slices.Equal(ids, []int64{ev.Data.ID}) || total != 1 {
		t.Errorf("after the sweep: ids %v, total %d; want only the event posted during it, %d", ids, total, ev.Data.ID)
	}
	checkIndexConsistent(t, e.srv)
}
