package apiserver

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

type event struct {
	ID                int64           `json:"id"`
	TriggerRef        string          `json:"trigger_ref"`
	TriggerInstanceID *string         `json:"trigger_instance_id"`
	RuleRef           *string         `json:"rule_ref"`
	Payload           json.RawMessage `json:"payload"`
	Config            json.RawMessage `json:"config"`
	IdempotencyKey    *string         `json:"idempotency_key"`
	Created           time.Time       `json:"created"`
}

type eventData struct {
	Data event `json:"data"`
}

type eventList struct {
	Items      []event    `json:"items"`
	Pagination pagination `json:"pagination"`
}

func str(p *string) string {
	if p == nil {
		return "<nil>"
	}
	return *p
}

func TestEventCreate(t *testing.T) {
	now := time.Date(2026, 3, 1, 8, 0, 0, 0, time.UTC)
	e := newEnv(t, func(c *Config) { c.Now = func() time.Time { return now } })
	e.must(http.StatusCreated, nil, "POST", "/api/v1/rules", `{"ref":"ops.nightly","trigger_ref":"core.intervaltimer","trigger_params":{"interval":5}}`)

	var got eventData
	e.must(http.StatusCreated, &got, "POST", "/api/v1/events",
		`{"trigger_ref":"core.intervaltimer","trigger_instance_id":"rule_1","payload":{"type":"interval","execution_count":42},"extra":1}`,
		"Idempotency-Key", "1:1772352000000000000")
	ev := got.Data
	if ev.ID != 1 || ev.TriggerRef != "core.intervaltimer" || str(ev.TriggerInstanceID) != "rule_1" || str(ev.RuleRef) != "ops.nightly" ||
		string(ev.Payload) != `{"type":"interval","execution_count":42}` || str(ev.IdempotencyKey) != "1:1772352000000000000" ||
		!ev.Created.Equal(now) || ev.Config != nil {
		t.Errorf("POST event = %+v, want id 1, rule ops.nightly, the payload, the key, created %v", ev, now)
	}

	// The alias path; unknown rule and a non-rule instance leave rule_ref null.
	tests := []struct {
		name, body, wantRuleRef, wantInst string
	}{
		{"unknown rule", `{"trigger_ref":"core.crontimer","trigger_instance_id":"rule_99"}`, "<nil>", "rule_99"},
		{"not a rule instance", `{"trigger_ref":"core.crontimer","trigger_instance_id":"rule_+1"}`, "<nil>", "rule_+1"},
		{"no instance", `{"trigger_ref":"core.crontimer","payload":null,"config":{"a":1}}`, "<nil>", "<nil>"},
	}
	for i, tc := range tests {
		e.must(http.StatusCreated, &got, "POST", "/events", tc.body)
		if got.Data.ID != int64(i+2) || str(got.Data.RuleRef) != tc.wantRuleRef || str(got.Data.TriggerInstanceID) != tc.wantInst ||
			got.Data.IdempotencyKey != nil {
			t.Errorf("%s: POST /events %s = %+v, want id %d, rule_ref %s, instance %s, no key", tc.name, tc.body, got.Data, i+2, tc.wantRuleRef, tc.wantInst)
		}
	}
	if string(got.Data.Config) != `{"a":1}` || string(got.Data.Payload) != "null" {
		t.Errorf("event with config = %+v, want config {\"a\":1} and payload null", got.Data)
	}
}

func TestEventIdempotency(t *testing.T) {
	e := newEnv(t)
	body := `{"trigger_ref":"core.crontimer","trigger_instance_id":"rule_5","payload":{"n":1}}`
	var first, other eventData
	e.must(http.StatusCreated, &first, "POST", "/api/v1/events", body, "Idempotency-Key", "5:100")
	// The repeat may differ in payload (a retried fire is re-encoded): the key,
	// within its trigger and rule, decides. It is answered with the original's
	// id and nothing else.
	_, repeat := e.do("POST", "/events", `{"trigger_ref":"core.crontimer","trigger_instance_id":"rule_5","payload":{"n":2}}`,
		"Idempotency-Key", "5:100")
	if want := fmt.Sprintf(`{"data":{"id":%d}}`, first.Data.ID); strings.TrimSpace(string(repeat)) != want {
		t.Errorf("repeat of key 5:100 answered %s, want %s", repeat, want)
	}
	e.must(http.StatusCreated, &other, "POST", "/api/v1/events", body, "Idempotency-Key", "5:200")
	if other.Data.ID == first.Data.ID {
		t.Errorf("key 5:200 got id %d, the id of key 5:100", other.Data.ID)
	}
	// The same key for another rule or another trigger is another event.
	var otherRule, otherTrigger eventData
	e.must(http.StatusCreated, &otherRule, "POST", "/api/v1/events", `{"trigger_ref":"core.crontimer","trigger_instance_id":"rule_6"}`,
		"Idempotency-Key", "5:100")
	e.must(http.StatusCreated, &otherTrigger, "POST", "/api/v1/events", `{"trigger_ref":"core.intervaltimer","trigger_instance_id":"rule_5"}`,
		"Idempotency-Key", "5:100")
	var list eventList
	e.must(http.StatusOK, &list, "GET", "/api/v1/events", "")
	if list.Pagination.TotalItems != 4 {
		t.Errorf("stored %d events, want 4", list.Pagination.TotalItems)
	}
	if got := e.counter("timerd_api_events_duplicate_total"); got != 1 {
		t.Errorf("timerd_api_events_duplicate_total = %v, want 1", got)
	}
	if got := e.counter("timerd_api_events_stored_total"); got != 4 {
		t.Errorf("timerd_api_events_stored_total = %v, want 4", got)
	}
}

func TestEventCreateInvalid(t *testing.T) {
	e := newEnv(t)
	tests := []struct {
		name, body, wantErr string
	}{
		{"malformed", `{"trigger_ref":"t",`, "malformed JSON"},
		{"array", `[]`, "body must be a JSON object"},
		{"trigger_ref missing", `{"payload":{}}`, "trigger_ref: required"},
		{"trigger_ref empty", `{"trigger_ref":""}`, "trigger_ref: must not be empty"},
		{"trigger_ref number", `{"trigger_ref":5}`, "trigger_ref: must be a string"},
		{"instance number", `{"trigger_ref":"t","trigger_instance_id":123}`, "trigger_instance_id: must be a string"},
		{"payload array", `{"trigger_ref":"t","payload":[1]}`, "payload: must be a JSON object"},
		{"payload string", `{"trigger_ref":"t","payload":"{}"}`, "payload: must be a JSON object"},
		{"config number", `{"trigger_ref":"t","config":1}`, "config: must be a JSON object"},
		{"instance too long", `{"trigger_ref":"t","trigger_instance_id":"` + strings.Repeat("i", 1025) + `"}`, "trigger_instance_id: longer than"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var got apiError
			e.must(http.StatusBadRequest, &got, "POST", "/api/v1/events", tc.body, "Idempotency-Key", "k")
			if !strings.Contains(got.Error, tc.wantErr) {
				t.Errorf("POST /api/v1/events %s: error %q, want it to contain %q", tc.body, got.Error, tc.wantErr)
			}
		})
	}
	var list eventList
	e.must(http.StatusOK, &list, "GET", "/api/v1/events", "")
	if list.Pagination.TotalItems != 0 {
		t.Errorf("after invalid events: %d stored, want 0", list.Pagination.TotalItems)
	}
	// The key of a rejected request was not taken.
	e.must(http.StatusCreated, nil, "POST", "/api/v1/events", `{"trigger_ref":"t"}`, "Idempotency-Key", "k")
}

func TestEventList(t *testing.T) {
	e := newEnv(t)
	e.must(http.StatusCreated, nil, "POST", "/api/v1/rules", `{"ref":"a","trigger_ref":"t"}`)
	e.must(http.StatusCreated, nil, "POST", "/api/v1/rules", `{"ref":"b","trigger_ref":"t"}`)
	// 12 events: ids 1..12 alternate rule_1, rule_2, rule_3 (unknown rule).
	for i := 1; i <= 12; i++ {
		e.must(http.StatusCreated, nil, "POST", "/api/v1/events",
			fmt.Sprintf(`{"trigger_ref":"t","trigger_instance_id":"rule_%d","payload":{"i":%d}}`, (i-1)%3+1, i))
	}
	// Prefix neighbours must not leak into a filter.
	e.must(http.StatusCreated, nil, "POST", "/api/v1/events", `{"trigger_ref":"t","trigger_instance_id":"rule_11"}`) // id 13
	e.must(http.StatusCreated, nil, "POST", "/api/v1/events", `{"trigger_ref":"t","trigger_instance_id":"rule_"}`)   // id 14

	tests := []struct {
		query    string
		wantIDs  []int64
		wantPage pagination
	}{
		{"", seq(1, 14), pagination{1, 100, 14, 1, false, false}},
		{"?page_size=5&page=3", seq(11, 14), pagination{3, 5, 14, 3, false, true}},
		{"?page_size=5&page=4", nil, pagination{4, 5, 14, 3, false, true}},
		{"?trigger_instance_id=rule_1", []int64{1, 4, 7, 10}, pagination{1, 100, 4, 1, false, false}},
		{"?trigger_instance_id=rule_1&page_size=3&page=2", []int64{10}, pagination{2, 3, 4, 2, false, true}},
		{"?trigger_instance_id=rule_1&page_size=3&page=9", nil, pagination{9, 3, 4, 2, false, true}},
		{"?rule_ref=b", []int64{2, 5, 8, 11}, pagination{1, 100, 4, 1, false, false}},
		{"?rule_ref=b&page_size=2", []int64{2, 5}, pagination{1, 2, 4, 2, true, false}},
		{"?rule_ref=b&trigger_instance_id=rule_2&page_size=2&page=2", []int64{8, 11}, pagination{2, 2, 4, 2, false, true}},
		{"?rule_ref=a&trigger_instance_id=rule_2", nil, pagination{1, 100, 0, 0, false, false}},
		{"?rule_ref=nope", nil, pagination{1, 100, 0, 0, false, false}},
		{"?trigger_instance_id=rule_3", []int64{3, 6, 9, 12}, pagination{1, 100, 4, 1, false, false}},
		{"?trigger_instance_id=" + strings.Repeat("x", 2000), nil, pagination{1, 100, 0, 0, false, false}},
	}
	for _, tc := range tests {
		t.Run(tc.query, func(t *testing.T) {
			var got eventList
			e.must(http.StatusOK, &got, "GET", "/api/v1/events"+tc.query, "")
			var ids []int64
			for _, ev := range got.Items {
				ids = append(ids, ev.ID)
			}
			if fmt.Sprint(ids) != fmt.Sprint(tc.wantIDs) || got.Pagination != tc.wantPage {
				t.Errorf("GET /api/v1/events%.40s = ids %v %+v, want %v %+v", tc.query, ids, got.Pagination, tc.wantIDs, tc.wantPage)
			}
		})
	}
	for _, q := range []string{"page_size=0", "page_size=-1", "page_size=100000", "page_size=abc", "page=0", "page=x"} {
		e.must(http.StatusBadRequest, nil, "GET", "/api/v1/events?"+q, "")
	}
}

func TestConcurrentEvents(t *testing.T) {
	e := newEnv(t)
	const workers, per = 16, 125 // 2000 events
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: workers}}
	defer client.CloseIdleConnections()
	var created, dup atomic.Int64
	var wg sync.WaitGroup
	errc := make(chan error, workers)
	for w := range workers {
		wg.Go(func() {
			for i := range per {
				key := fmt.Sprintf("%d:%d", w, i)
				body := fmt.Sprintf(`{"trigger_ref":"t","trigger_instance_id":"rule_%d","payload":{"i":%d}}`, w+1, i)
				// Every 10th event is sent twice, as a retry would.
				for range 1 + boolInt(i%10 == 0) {
					req, _ := http.NewRequest(http.MethodPost, e.ts.URL+"/api/v1/events", strings.NewReader(body))
					req.Header.Set("Idempotency-Key", key)
					resp, err := client.Do(req)
					if err != nil {
						errc <- err
						return
					}
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					switch resp.StatusCode {
					case http.StatusCreated:
						created.Add(1)
					case http.StatusOK:
						dup.Add(1)
					default:
						errc <- fmt.Errorf("POST event %s: status %d", key, resp.StatusCode)
						return
					}
				}
			}
		})
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Error(err)
	}
	const wantDup = workers * (per/10 + 1)
	if created.Load() != workers*per || dup.Load() != wantDup {
		t.Errorf("created %d, duplicates %d; want %d, %d", created.Load(), dup.Load(), workers*per, wantDup)
	}
	// Every event is stored once, with ids 1..2000.
	seen := map[int64]bool{}
	for page := 1; ; page++ {
		var list eventList
		e.must(http.StatusOK, &list, "GET", fmt.Sprintf("/api/v1/events?page_size=1000&page=%d", page), "")
		for _, ev := range list.Items {
			if seen[ev.ID] {
				t.Fatalf("event id %d listed twice", ev.ID)
			}
			seen[ev.ID] = true
		}
		if !list.Pagination.HasNext {
			if list.Pagination.TotalItems != workers*per {
				t.Errorf("total_items = %d, want %d", list.Pagination.TotalItems, workers*per)
			}
			break
		}
	}
	for id := int64(1); id <= workers*per; id++ {
		if !seen[id] {
			t.Fatalf("event id %d missing", id)
		}
	}
	var one eventList
	e.must(http.StatusOK, &one, "GET", "/api/v1/events?trigger_instance_id=rule_7&page_size=1000", "")
	if one.Pagination.TotalItems != per {
		t.Errorf("events of rule_7 = %d, want %d", one.Pagination.TotalItems, per)
	}
	if got := e.counter("timerd_api_events_stored_total"); got != workers*per {
		t.Errorf("timerd_api_events_stored_total = %v, want %d", got, workers*per)
	}
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// Concurrent repeats of one key race past the read-only check; the committer
// must still store one event.
func TestEventIdempotencyConcurrent(t *testing.T) {
	e := newEnv(t)
	const n = 32
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: n}}
	defer client.CloseIdleConnections()
	for round := range 20 {
		key := fmt.Sprintf("k%d", round)
		var wg sync.WaitGroup
		start := make(chan struct{})
		codes := make([]int, n)
		ids := make([]int64, n)
		for i := range n {
			wg.Go(func() {
				<-start
				req, _ := http.NewRequest(http.MethodPost, e.ts.URL+"/api/v1/events", strings.NewReader(`{"trigger_ref":"t"}`))
				req.Header.Set("Idempotency-Key", key)
				resp, err := client.Do(req)
				if err != nil {
					t.Error(err)
					return
				}
				defer resp.Body.Close()
				var d eventData
				_ = json.NewDecoder(resp.Body).Decode(&d)
				codes[i], ids[i] = resp.StatusCode, d.Data.ID
			})
		}
		close(start)
		wg.Wait()
		created := 0
		for i := range n {
			if codes[i] == http.StatusCreated {
				created++
			}
			if ids[i] != ids[0] || (codes[i] != http.StatusCreated && codes[i] != http.StatusOK) {
				t.Fatalf("round %d: answer %d = %d id %d, want 200/201 with id %d", round, i, codes[i], ids[i], ids[0])
			}
		}
		if created != 1 {
			t.Fatalf("round %d: %d answers were 201, want exactly 1", round, created)
		}
	}
	var list eventList
	e.must(http.StatusOK, &list, "GET", "/api/v1/events", "")
	if list.Pagination.TotalItems != 20 {
		t.Errorf("stored %d events, want 20", list.Pagination.TotalItems)
	}
}

func TestIdemIndexKey(t *testing.T) {
	tests := []struct {
		key  string
		want string // hex
	}{
		{"7:1772352000000000000", "01" + "1898a8c0f0f40000" + "0000000000000007"},
		{"1:0", "01" + "0000000000000000" + "0000000000000001"},
		{"01:5", "0004" + fmt.Sprintf("%x", "01:5")}, // not canonical: kept as is, after its length
		{"1:+5", "0004" + fmt.Sprintf("%x", "1:+5")},
		{"abc", "0003" + fmt.Sprintf("%x", "abc")},
		{"1:18446744073709551616", "0016" + fmt.Sprintf("%x", "1:18446744073709551616")},
		{"", "0000"},
	}
	for _, tc := range tests {
		if got := fmt.Sprintf("%x", idemIndexKey(tc.key)); got != tc.want {
			t.Errorf("idemIndexKey(%q) = %s, want %s", tc.key, got, tc.want)
		}
	}
	// Later slots sort after earlier ones, whatever the rule.
	a, b := idemIndexKey("999:1772352000000000000"), idemIndexKey("1:1772352000000000001")
	if string(a) >= string(b) {
		t.Errorf("idemIndexKey: %x sorts after %x, want slot order", a, b)
	}
}
