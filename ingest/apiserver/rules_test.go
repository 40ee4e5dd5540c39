package apiserver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/timerd/timerd/ingest"
	"github.com/timerd/timerd/ingest/attune"
)

type ruleResp struct {
	Data rule `json:"data"`
}

type ruleList struct {
	Items      []rule     `json:"items"`
	Pagination pagination `json:"pagination"`
}

func TestRuleCRUD(t *testing.T) {
	now := time.Date(2026, 2, 1, 10, 0, 0, 0, time.UTC)
	e := newEnv(t, func(c *Config) { c.Now = func() time.Time { return now } })

	var a ruleResp
	e.must(http.StatusCreated, &a, "POST", "/api/v1/rules",
		`{"ref":"ops.a","trigger_ref":"core.intervaltimer","trigger_params":{"unit":"seconds","interval":5},"action_ref":"core.echo","trigger_id":7}`)
	want := rule{ID: 1, Ref: "ops.a", TriggerRef: "core.intervaltimer", TriggerParams: json.RawMessage(`{"interval":5,"unit":"seconds"}`),
		Enabled: true, Created: now, Updated: now}
	if a.Data.ID != want.ID || a.Data.Ref != want.Ref || a.Data.TriggerRef != want.TriggerRef || !a.Data.Enabled ||
		string(a.Data.TriggerParams) != string(want.TriggerParams) || !a.Data.Created.Equal(now) || !a.Data.Updated.Equal(now) ||
		a.Data.ActionRef == nil || *a.Data.ActionRef != "core.echo" || a.Data.TriggerID == nil || *a.Data.TriggerID != 7 {
		t.Errorf("POST rule = %+v, want %+v with action core.echo, trigger_id 7", a.Data, want)
	}

	var b ruleResp
	e.must(http.StatusCreated, &b, "POST", "/api/v1/rules", `{"ref":"ops.b","trigger_ref":"core.crontimer","trigger_params":{"expression":"@hourly"},"enabled":false}`)
	if b.Data.ID != 2 || b.Data.Enabled || string(b.Data.TriggerParams) != `{"expression":"@hourly"}` || b.Data.ActionRef != nil {
		t.Errorf("POST rule b = %+v, want id 2, disabled, params @hourly, no action", b.Data)
	}
	// The wire form has every field, action_ref null when unset.
	_, raw := e.do("GET", "/api/v1/rules/ops.b", "")
	for _, k := range []string{`"id":2`, `"ref":"ops.b"`, `"trigger_ref":"core.crontimer"`, `"trigger_params":{"expression":"@hourly"}`,
		`"enabled":false`, `"action_ref":null`, `"created":"2026-02-01T10:00:00Z"`, `"updated":`} {
		if !strings.Contains(string(raw), k) {
			t.Errorf("GET /api/v1/rules/ops.b = %s, missing %s", raw, k)
		}
	}

	var dup apiError
	e.must(http.StatusConflict, &dup, "POST", "/api/v1/rules", `{"ref":"ops.a","trigger_ref":"core.crontimer","trigger_params":{"expression":"@hourly"}}`)
	if !strings.Contains(dup.Error, "ops.a") {
		t.Errorf("duplicate ref error = %q, want it to name the ref", dup.Error)
	}

	var got ruleResp
	e.must(http.StatusOK, &got, "GET", "/api/v1/rules/ops.a", "")
	if got.Data.ID != 1 {
		t.Errorf("GET ops.a id = %d, want 1", got.Data.ID)
	}
	e.must(http.StatusNotFound, nil, "GET", "/api/v1/rules/nope", "")
	for _, p := range []string{"/api/v1/rules/nope/enable", "/api/v1/rules/nope/disable"} {
		e.must(http.StatusNotFound, nil, "POST", p, "")
	}
	e.must(http.StatusNotFound, nil, "PUT", "/api/v1/rules/nope", `{}`)
	e.must(http.StatusNotFound, nil, "DELETE", "/api/v1/rules/nope", "")

	now = now.Add(time.Minute)
	e.must(http.StatusOK, &got, "POST", "/api/v1/rules/ops.b/enable", "")
	if !got.Data.Enabled || !got.Data.Updated.Equal(now) || !got.Data.Created.Equal(now.Add(-time.Minute)) {
		t.Errorf("enable ops.b = %+v, want enabled, updated %v, created unchanged", got.Data, now)
	}
	e.must(http.StatusOK, &got, "POST", "/api/v1/rules/ops.b/disable", `{"ignored":true}`)
	if got.Data.Enabled {
		t.Errorf("disable ops.b = %+v, want disabled", got.Data)
	}
	e.must(http.StatusOK, &got, "PUT", "/api/v1/rules/ops.a",
		`{"trigger_params":{"expression":"0 * * * * *"},"trigger_ref":"core.crontimer","action_ref":null,"enabled":false}`)
	if got.Data.TriggerRef != "core.crontimer" || string(got.Data.TriggerParams) != `{"expression":"0 * * * * *"}` ||
		got.Data.ActionRef != nil || got.Data.Enabled || got.Data.TriggerID == nil {
		t.Errorf("PUT ops.a = %+v, want cron, new params, no action, disabled, trigger_id kept", got.Data)
	}
	e.must(http.StatusBadRequest, nil, "PUT", "/api/v1/rules/ops.a", `{"ref":"ops.z"}`)

	e.must(http.StatusOK, &got, "DELETE", "/api/v1/rules/ops.a", "")
	if got.Data.Ref != "ops.a" {
		t.Errorf("DELETE ops.a answered %+v, want the deleted rule", got.Data)
	}
	e.must(http.StatusNotFound, nil, "GET", "/api/v1/rules/ops.a", "")
	// The ref is free again; ids are never reused.
	e.must(http.StatusCreated, &got, "POST", "/api/v1/rules", `{"ref":"ops.a","trigger_ref":"core.crontimer","trigger_params":{"expression":"@hourly"}}`)
	if got.Data.ID != 3 {
		t.Errorf("re-created ops.a id = %d, want 3", got.Data.ID)
	}
}

func TestRuleCreateInvalid(t *testing.T) {
	e := newEnv(t)
	tests := []struct {
		name, body, wantErr string
	}{
		{"malformed", `{"ref":`, "malformed JSON"},
		{"not an object", `[{"ref":"a"}]`, "body must be a JSON object"},
		{"empty body", ``, "body must be a JSON object"},
		{"ref missing", `{"trigger_ref":"t"}`, "ref: required"},
		{"ref null", `{"ref":null,"trigger_ref":"t"}`, "ref: required"},
		{"ref empty", `{"ref":"","trigger_ref":"t"}`, "ref: must not be empty"},
		{"ref number", `{"ref":1,"trigger_ref":"t"}`, "ref: must be a string"},
		{"ref with slash", `{"ref":"a/b","trigger_ref":"t"}`, "ref: \"a/b\" has a character"},
		{"ref too long", `{"ref":"` + strings.Repeat("a", 256) + `","trigger_ref":"t"}`, "ref: longer than 255"},
		{"trigger_ref missing", `{"ref":"a"}`, "trigger_ref: required"},
		{"trigger_ref bool", `{"ref":"a","trigger_ref":true}`, "trigger_ref: must be a string"},
		{"params array", `{"ref":"a","trigger_ref":"t","trigger_params":[1]}`, "trigger_params: must be a JSON object"},
		{"params string", `{"ref":"a","trigger_ref":"t","trigger_params":"{}"}`, "trigger_params: must be a JSON object"},
		{"enabled string", `{"ref":"a","trigger_ref":"t","enabled":"true"}`, "enabled: must be a boolean"},
		{"action_ref number", `{"ref":"a","trigger_ref":"t","action_ref":3}`, "action_ref: must be a string"},
		{"trigger_id zero", `{"ref":"a","trigger_ref":"t","trigger_id":0}`, "trigger_id: must be a positive integer"},
		{"trigger_id string", `{"ref":"a","trigger_ref":"t","trigger_id":"7"}`, "trigger_id: must be a positive integer"},
		{"trailing data", `{"ref":"a","trigger_ref":"t"} {}`, "malformed JSON"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var got apiError
			e.must(http.StatusBadRequest, &got, "POST", "/api/v1/rules", tc.body)
			if !strings.Contains(got.Error, tc.wantErr) {
				t.Errorf("POST /api/v1/rules %s: error %q, want it to contain %q", tc.body, got.Error, tc.wantErr)
			}
		})
	}
	var list ruleList
	e.must(http.StatusOK, &list, "GET", "/api/v1/rules", "")
	if len(list.Items) != 0 || list.Pagination.TotalItems != 0 {
		t.Errorf("after invalid creates: %+v, want no rules", list)
	}
	select {
	case m := <-e.msg:
		t.Errorf("invalid create published %s %s", m.RoutingKey, m.Body)
	default:
	}
	// The next valid rule still gets id 1: failed writes consume no id.
	var got ruleResp
	e.must(http.StatusCreated, &got, "POST", "/api/v1/rules", `{"ref":"a","trigger_ref":"t"}`)
	e.must(http.StatusConflict, nil, "POST", "/api/v1/rules", `{"ref":"a","trigger_ref":"t"}`)
	e.must(http.StatusCreated, &got, "POST", "/api/v1/rules", `{"ref":"b","trigger_ref":"t"}`)
	if got.Data.ID != 2 {
		t.Errorf("id after failures = %d, want 2", got.Data.ID)
	}
}

func TestRuleList(t *testing.T) {
	e := newEnv(t)
	// 25 rules: odd ids are cron, even interval; every third disabled.
	for i := 1; i <= 25; i++ {
		tref, params := "core.crontimer", `{"expression":"@hourly"}`
		if i%2 == 0 {
			tref, params = "core.intervaltimer", `{"interval":5}`
		}
		e.must(http.StatusCreated, nil, "POST", "/api/v1/rules",
			fmt.Sprintf(`{"ref":"r%02d","trigger_ref":%q,"trigger_params":%s,"enabled":%v}`, i, tref, params, i%3 != 0))
	}
	tests := []struct {
		query    string
		wantIDs  []int64
		wantPage pagination
	}{
		{"", seq(1, 25), pagination{1, 100, 25, 1, false, false}},
		{"?page_size=10", seq(1, 10), pagination{1, 10, 25, 3, true, false}},
		{"?page_size=10&page=2", seq(11, 20), pagination{2, 10, 25, 3, true, true}},
		{"?page_size=10&page=3", seq(21, 25), pagination{3, 10, 25, 3, false, true}},
		{"?page_size=10&page=4", nil, pagination{4, 10, 25, 3, false, true}},
		{"?page=1000000000", nil, pagination{1000000000, 100, 25, 1, false, true}},
		{"?page_size=1000", seq(1, 25), pagination{1, 1000, 25, 1, false, false}},
		{"?page_size=5&page=5", seq(21, 25), pagination{5, 5, 25, 5, false, true}},
		{"?trigger_ref=core.intervaltimer&enabled=true&page_size=3",
			[]int64{2, 4, 8}, pagination{1, 3, 8, 3, true, false}},
		{"?trigger_ref=core.intervaltimer&enabled=true&page_size=3&page=3", []int64{20, 22}, pagination{3, 3, 8, 3, false, true}},
		{"?enabled=false", []int64{3, 6, 9, 12, 15, 18, 21, 24}, pagination{1, 100, 8, 1, false, false}},
		{"?enabled=0&trigger_ref=core.crontimer", []int64{3, 9, 15, 21}, pagination{1, 100, 4, 1, false, false}},
		{"?trigger_ref=core.nothing", nil, pagination{1, 100, 0, 0, false, false}},
	}
	for _, tc := range tests {
		t.Run(tc.query, func(t *testing.T) {
			var got ruleList
			code, raw := e.do("GET", "/api/v1/rules"+tc.query, "")
			if code != http.StatusOK {
				t.Fatalf("GET %s = %d %s, want 200", tc.query, code, raw)
			}
			if !strings.Contains(string(raw), `"items":[`) {
				t.Errorf("GET %s = %s: items must be an array, never null", tc.query, raw)
			}
			if err := json.Unmarshal(raw, &got); err != nil {
				t.Fatal(err)
			}
			var ids []int64
			for _, r := range got.Items {
				ids = append(ids, r.ID)
			}
			if fmt.Sprint(ids) != fmt.Sprint(tc.wantIDs) || got.Pagination != tc.wantPage {
				t.Errorf("GET /api/v1/rules%s = ids %v %+v, want %v %+v", tc.query, ids, got.Pagination, tc.wantIDs, tc.wantPage)
			}
		})
	}
	for _, q := range []string{"page_size=0", "page_size=-1", "page_size=100000", "page_size=abc", "page_size=",
		"page=0", "page=-1", "page=abc", "page=1.5", "page=99999999999999999999", "enabled=maybe", "enabled="} {
		var got apiError
		e.must(http.StatusBadRequest, &got, "GET", "/api/v1/rules?"+q, "")
		if got.Error == "" {
			t.Errorf("GET /api/v1/rules?%s: empty error message", q)
		}
	}
}

func seq(from, to int64) []int64 {
	var s []int64
	for i := from; i <= to; i++ {
		s = append(s, i)
	}
	return s
}

// wantMsg is one expected lifecycle message; params "" means nil.
type wantMsg struct {
	typ        attune.LifecycleType
	triggerRef string
	params     string
	enabled    bool
}

// nextMsgs reads lifecycle messages up to a marker the test publishes itself
// (the server publishes before it answers, so the marker comes last).
func (e *testEnv) nextMsgs() []attune.Lifecycle {
	e.t.Helper()
	if err := e.bus.Publish(context.Background(), attune.Message{RoutingKey: "marker"}); err != nil {
		e.t.Fatal(err)
	}
	var got []attune.Lifecycle
	timeout := time.After(10 * time.Second)
	for {
		select {
		case m := <-e.msg:
			if m.RoutingKey == "marker" {
				return got
			}
			l, err := attune.ParseLifecycle(m.Body, "")
			if err != nil {
				e.t.Fatalf("ParseLifecycle(%s) = %v", m.Body, err)
			}
			if m.RoutingKey != attune.RoutingKey(l.Type) {
				e.t.Errorf("message %s has routing key %q, want %q", l.Type, m.RoutingKey, attune.RoutingKey(l.Type))
			}
			got = append(got, l)
		case <-timeout:
			e.t.Fatal("marker not received")
		}
	}
}

func TestRuleWritesPublishLifecycle(t *testing.T) {
	e := newEnv(t)
	const (
		interval = "core.intervaltimer"
		cron     = "core.crontimer"
	)
	p5 := `{"interval":5}`
	steps := []struct {
		name         string
		method, path string
		body         string
		want         []wantMsg
	}{
		{"create enabled", "POST", "/api/v1/rules", `{"ref":"a","trigger_ref":"core.intervaltimer","trigger_params":{"interval":5}}`,
			[]wantMsg{{attune.RuleCreated, interval, p5, true}}},
		{"create disabled", "POST", "/api/v1/rules", `{"ref":"b","trigger_ref":"core.crontimer","trigger_params":{"expression":"@hourly"},"enabled":false}`,
			[]wantMsg{{attune.RuleCreated, cron, `{"expression":"@hourly"}`, false}}},
		{"duplicate publishes nothing", "POST", "/api/v1/rules", `{"ref":"a","trigger_ref":"x"}`, nil},
		{"enable", "POST", "/api/v1/rules/b/enable", "", []wantMsg{{attune.RuleEnabled, cron, `{"expression":"@hourly"}`, true}}},
		{"enable again is published again", "POST", "/api/v1/rules/b/enable", "", []wantMsg{{attune.RuleEnabled, cron, `{"expression":"@hourly"}`, true}}},
		{"disable", "POST", "/api/v1/rules/b/disable", "", []wantMsg{{attune.RuleDisabled, cron, "", false}}},
		{"disable again", "POST", "/api/v1/rules/b/disable", "", []wantMsg{{attune.RuleDisabled, cron, "", false}}},
		{"PUT params of enabled", "PUT", "/api/v1/rules/a", `{"trigger_params":{"interval":10}}`,
			[]wantMsg{{attune.RuleEnabled, interval, `{"interval":10}`, true}}},
		{"PUT same params in another spelling", "PUT", "/api/v1/rules/a", `{"trigger_params":{ "interval" : 10 },"enabled":true}`, nil},
		{"PUT action only", "PUT", "/api/v1/rules/a", `{"action_ref":"core.echo"}`, nil},
		{"PUT trigger of enabled", "PUT", "/api/v1/rules/a", `{"trigger_ref":"core.crontimer","trigger_params":{"expression":"@hourly"}}`,
			[]wantMsg{{attune.RuleDisabled, interval, "", false}, {attune.RuleEnabled, cron, `{"expression":"@hourly"}`, true}}},
		{"PUT disable", "PUT", "/api/v1/rules/a", `{"enabled":false}`, []wantMsg{{attune.RuleDisabled, cron, "", false}}},
		{"PUT params of disabled", "PUT", "/api/v1/rules/a", `{"trigger_params":{"expression":"@daily"}}`, nil},
		{"PUT enable with new trigger", "PUT", "/api/v1/rules/a", `{"enabled":true,"trigger_ref":"core.intervaltimer","trigger_params":{"interval":1}}`,
			[]wantMsg{{attune.RuleEnabled, interval, `{"interval":1}`, true}}},
		{"PUT invalid publishes nothing", "PUT", "/api/v1/rules/a", `{"enabled":"no"}`, nil},
		{"delete", "DELETE", "/api/v1/rules/a", "", []wantMsg{{attune.RuleDeleted, interval, "", false}}},
		{"delete missing publishes nothing", "DELETE", "/api/v1/rules/a", "", nil},
	}
	ids := map[string]int64{"a": 1, "b": 2}
	for _, st := range steps {
		e.do(st.method, st.path, st.body)
		got := e.nextMsgs()
		var g, w []string
		for _, l := range got {
			g = append(g, fmt.Sprintf("%s %s %s %v", l.Type, l.TriggerRef, l.Params, l.Enabled))
			ref := strings.Split(strings.TrimPrefix(st.path, "/api/v1/rules/"), "/")[0]
			if st.path == "/api/v1/rules" {
				ref = l.RuleRef
			}
			if l.RuleRef != ref || l.RuleID != ids[ref] || l.MessageID == "" || l.Timestamp.IsZero() {
				t.Errorf("%s: message %+v: want rule %s id %d, a message id and a timestamp", st.name, l, ref, ids[ref])
			}
		}
		for _, m := range st.want {
			w = append(w, fmt.Sprintf("%s %s %s %v", m.typ, m.triggerRef, m.params, m.enabled))
		}
		if strings.Join(g, "\n") != strings.Join(w, "\n") {
			t.Errorf("%s: %s %s %s published\n%s\nwant\n%s", st.name, st.method, st.path, st.body,
				strings.Join(g, "\n"), strings.Join(w, "\n"))
		}
	}
}

type failingPublisher struct{}

func (failingPublisher) Publish(context.Context, attune.Message) error {
	return errors.New("broker down")
}

func TestPublishErrorKeepsWrite(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.Publisher = failingPublisher{} })
	e.must(http.StatusCreated, nil, "POST", "/api/v1/rules", `{"ref":"a","trigger_ref":"t"}`)
	e.must(http.StatusOK, nil, "POST", "/api/v1/rules/a/disable", "")
	e.must(http.StatusOK, nil, "GET", "/api/v1/rules/a", "")
	if got := e.counter("timerd_api_publish_errors_total"); got != 2 {
		t.Errorf("timerd_api_publish_errors_total = %v, want 2", got)
	}
	if got := e.counter("timerd_api_requests_total", "route", "POST /api/v1/rules", "code", "201"); got != 1 {
		t.Errorf("timerd_api_requests_total{POST /api/v1/rules,201} = %v, want 1", got)
	}
}

func TestRestartKeepsRulesAndCounters(t *testing.T) {
	e := newEnv(t)
	for _, ref := range []string{"a", "b", "c"} {
		e.must(http.StatusCreated, nil, "POST", "/api/v1/rules", `{"ref":"`+ref+`","trigger_ref":"t","trigger_params":{"k":1}}`)
	}
	e.must(http.StatusOK, nil, "DELETE", "/api/v1/rules/c", "")
	e.must(http.StatusOK, nil, "POST", "/api/v1/rules/b/disable", "")
	e.must(http.StatusCreated, nil, "POST", "/api/v1/events", `{"trigger_ref":"t","trigger_instance_id":"rule_1","payload":{"n":1}}`,
		"Idempotency-Key", "1:100")
	e.must(http.StatusCreated, nil, "POST", "/api/v1/events", `{"trigger_ref":"t","trigger_instance_id":"rule_2"}`)

	e.restart()

	var list ruleList
	e.must(http.StatusOK, &list, "GET", "/api/v1/rules", "")
	if len(list.Items) != 2 || list.Items[0].Ref != "a" || !list.Items[0].Enabled || list.Items[1].Ref != "b" ||
		list.Items[1].Enabled || string(list.Items[1].TriggerParams) != `{"k":1}` {
		t.Fatalf("rules after restart = %+v, want a (enabled), b (disabled)", list.Items)
	}
	var got ruleResp
	e.must(http.StatusCreated, &got, "POST", "/api/v1/rules", `{"ref":"d","trigger_ref":"t"}`)
	if got.Data.ID != 4 {
		t.Errorf("rule id after restart = %d, want 4 (3 was used before)", got.Data.ID)
	}
	e.must(http.StatusConflict, nil, "POST", "/api/v1/rules", `{"ref":"a","trigger_ref":"t"}`)

	var ev eventData
	e.must(http.StatusOK, &ev, "POST", "/api/v1/events", `{"trigger_ref":"t","trigger_instance_id":"rule_1"}`, "Idempotency-Key", "1:100")
	if ev.Data.ID != 1 {
		t.Errorf("repeat after restart = id %d, want 1", ev.Data.ID)
	}
	e.must(http.StatusCreated, &ev, "POST", "/api/v1/events", `{"trigger_ref":"t","trigger_instance_id":"rule_1"}`)
	if ev.Data.ID != 3 {
		t.Errorf("event id after restart = %d, want 3", ev.Data.ID)
	}
	var evs eventList
	e.must(http.StatusOK, &evs, "GET", "/api/v1/events?rule_ref=a", "")
	if evs.Pagination.TotalItems != 2 {
		t.Errorf("events of rule a after restart = %+v, want 2", evs)
	}
}

// Timer params are checked with the scheduler's own parser on POST and PUT: a rule the
// nodes could not run (an interval of 0, a cron whose years are all past, a fire_at an
// hour ago) is refused with a 400 naming the field, and a refused PUT leaves the rule
// and publishes nothing. A fire_at less than a minute ago is a "fire now" rule.
func TestRuleParamsValidatedWithTheScheduler(t *testing.T) {
	now := time.Date(2026, 2, 1, 10, 0, 0, 0, time.UTC)
	e := newEnv(t, func(c *Config) { c.Now = func() time.Time { return now } })
	bad := []struct {
		name, trigger, params, field string
	}{
		{"interval 0", "core.intervaltimer", `{"interval":0}`, "trigger_params.interval"},
		{"interval missing", "core.intervaltimer", `{}`, "trigger_params.interval"},
		{"cron years past", "core.crontimer", `{"expression":"0 0 0 1 1 * 2020"}`, "trigger_params.expression"},
		{"cron garbage", "core.crontimer", `{"expression":"every tuesday"}`, "trigger_params.expression"},
		{"fire_at an hour ago", "core.datetimetimer", `{"fire_at":"2026-02-01T09:00:00Z"}`, "trigger_params.fire_at"},
		{"fire_at not a time", "core.datetimetimer", `{"fire_at":"tomorrow"}`, "trigger_params.fire_at"},
		{"timezone unknown", "core.crontimer", `{"expression":"@hourly","timezone":"Mars/Olympus"}`, "trigger_params.timezone"},
	}
	for _, tc := range bad {
		var got apiError
		e.must(http.StatusBadRequest, &got, "POST", "/api/v1/rules",
			fmt.Sprintf(`{"ref":"bad","trigger_ref":%q,"trigger_params":%s}`, tc.trigger, tc.params))
		if !strings.HasPrefix(got.Error, tc.field+":") {
			t.Errorf("POST %s: error %q, want it to name %s", tc.name, got.Error, tc.field)
		}
	}
	e.must(http.StatusCreated, nil, "POST", "/api/v1/rules",
		`{"ref":"now","trigger_ref":"core.datetimetimer","trigger_params":{"fire_at":"2026-02-01T09:59:30Z"}}`)
	e.must(http.StatusCreated, nil, "POST", "/api/v1/rules",
		`{"ref":"tick","trigger_ref":"core.intervaltimer","trigger_params":{"interval":5}}`)
	for range 2 { // the creations' messages
		<-e.msg
	}
	for _, tc := range bad {
		var got apiError
		e.must(http.StatusBadRequest, &got, "PUT", "/api/v1/rules/tick",
			fmt.Sprintf(`{"trigger_ref":%q,"trigger_params":%s}`, tc.trigger, tc.params))
		if !strings.HasPrefix(got.Error, tc.field+":") {
			t.Errorf("PUT %s: error %q, want it to name %s", tc.name, got.Error, tc.field)
		}
	}
	var rule ruleResp
	e.must(http.StatusOK, &rule, "GET", "/api/v1/rules/tick", "")
	if rule.Data.TriggerRef != "core.intervaltimer" || string(rule.Data.TriggerParams) != `{"interval":5}` {
		t.Errorf("after refused PUTs the rule is %+v, want it unchanged", rule.Data)
	}
	select {
	case m := <-e.msg:
		t.Errorf("a refused PUT published %s %s", m.RoutingKey, m.Body)
	default:
	}
}

// Creates that commit together (the committer's group commit, with events
// posted meanwhile) are still each their own: distinct ids, one winner per
// ref, every rule stored and listed, and one RuleCreated per rule stored,
// with its id, in id order; and every event is stored once.
func TestConcurrentCreatesCommitTogether(t *testing.T) {
	e := newEnv(t)
	const refs, perRef = 60, 3 // every ref created three times at once
	const events = 200
	codes := make([][]int, refs)
	ids := make([][]int64, refs)
	var wg sync.WaitGroup
	evCodes := make([]int, events)
	for i := range events {
		wg.Go(func() {
			evCodes[i], _ = e.do("POST", "/api/v1/events",
				fmt.Sprintf(`{"trigger_ref":"core.intervaltimer","trigger_instance_id":"rule_%d","payload":{"n":%d}}`, i%7+1, i),
				"Idempotency-Key", fmt.Sprintf("%d:%d", i%7+1, i))
		})
	}
	for i := range refs {
		codes[i], ids[i] = make([]int, perRef), make([]int64, perRef)
		for j := range perRef {
			wg.Go(func() {
				code, raw := e.do("POST", "/api/v1/rules",
					fmt.Sprintf(`{"ref":"burst.r%d","trigger_ref":"core.intervaltimer","trigger_params":{"interval":60}}`, i))
				var r ruleResp
				if code == http.StatusCreated && json.Unmarshal(raw, &r) == nil {
					ids[i][j] = r.Data.ID
				}
				codes[i][j] = code
			})
		}
	}
	wg.Wait()
	byID := map[int64]string{}
	for i := range refs {
		won := 0
		for j := range perRef {
			switch codes[i][j] {
			case http.StatusCreated:
				won++
				ref := fmt.Sprintf("burst.r%d", i)
				if other, dup := byID[ids[i][j]]; dup || ids[i][j] <= 0 {
					t.Errorf("%s got id %d, already %q's", ref, ids[i][j], other)
				}
				byID[ids[i][j]] = ref
			case http.StatusConflict:
			default:
				t.Errorf("create burst.r%d: status %d, want 201 or 409", i, codes[i][j])
			}
		}
		if won != 1 {
			t.Errorf("burst.r%d created %d times, want once", i, won)
		}
	}
	for i, c := range evCodes {
		if c != http.StatusCreated {
			t.Errorf("event %d: status %d, want 201", i, c)
		}
	}
	var evs struct {
		Pagination pagination `json:"pagination"`
	}
	e.must(http.StatusOK, &evs, "GET", "/api/v1/events?page_size=1", "")
	if evs.Pagination.TotalItems != events {
		t.Errorf("%d events stored, want %d", evs.Pagination.TotalItems, events)
	}
	var list ruleList
	e.must(http.StatusOK, &list, "GET", "/api/v1/rules?page_size=1000", "")
	if len(list.Items) != refs {
		t.Errorf("listed %d rules, want %d", len(list.Items), refs)
	}
	for _, r := range list.Items {
		if byID[r.ID] != r.Ref {
			t.Errorf("listed rule %d %q, created as %q", r.ID, r.Ref, byID[r.ID])
		}
	}
	msgs := e.nextMsgs()
	if len(msgs) != refs {
		t.Fatalf("%d messages published, want %d", len(msgs), refs)
	}
	for i, l := range msgs {
		if l.Type != attune.RuleCreated || byID[l.RuleID] != l.RuleRef || (i > 0 && l.RuleID <= msgs[i-1].RuleID) {
			t.Errorf("message %d: %s of rule %d %q; want RuleCreated of a created rule, ids ascending", i, l.Type, l.RuleID, l.RuleRef)
		}
	}
}

// A timer whose schedule likely does not do what its author meant is stored, and
// the create's and the update's answers say why (scheduler.Lint); a schedule
// without surprises gets no "warnings" at all.
func TestRuleWarnings(t *testing.T) {
	now := time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)
	e := newEnv(t, func(c *Config) { c.Now = func() time.Time { return now } })
	type answer struct {
		Data     json.RawMessage `json:"data"`
		Warnings []string        `json:"warnings"`
	}
	var got answer
	e.must(http.StatusCreated, &got, "POST", "/api/v1/rules",
		`{"ref":"skip","trigger_ref":"core.crontimer","trigger_params":{"expression":"0 30 2 * * *","timezone":"Europe/Berlin","dst_gap":"skip"}}`)
	if len(got.Warnings) != 1 || !strings.HasPrefix(got.Warnings[0], "2027-03-28: Europe/Berlin moves its clocks") ||
		!strings.Contains(got.Warnings[0], "fires 0 times") {
		t.Errorf("create of a 02:30 cron that skips the gap: warnings %q, want the day of the spring change", got.Warnings)
	}
	if len(got.Data) == 0 {
		t.Error("the answer has no data")
	}
	got = answer{}
	e.must(http.StatusOK, &got, "PUT", "/api/v1/rules/skip", `{"trigger_params":{"expression":"* 5 * * * *"}}`)
	if len(got.Warnings) != 1 || !strings.Contains(got.Warnings[0], `write "0 5 * * * *"`) {
		t.Errorf("update to every second of minute 5: warnings %q, want the advice", got.Warnings)
	}
	var raw map[string]json.RawMessage
	e.must(http.StatusCreated, &raw, "POST", "/api/v1/rules",
		`{"ref":"fine","trigger_ref":"core.crontimer","trigger_params":{"expression":"0 0 12 * * *","timezone":"Europe/Berlin"}}`)
	if _, ok := raw["warnings"]; ok {
		t.Errorf("a noon cron got warnings: %s", raw["warnings"])
	}
}

// timerd's own rules client reads the reference server's listing 1,000
// rules a page, complete, and a listing after rule writes sees each of them
// (the server pages from a view it makes once per catalogue change).
func TestRuleListingForReconcile(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(c *Config) { c.Publisher = nil })
	const n = 1201
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := w + 1; i <= n; i += 8 {
				e.must(http.StatusCreated, nil, "POST", "/api/v1/rules",
					fmt.Sprintf(`{"ref":"r%04d","trigger_ref":"core.intervaltimer","trigger_params":{"interval":%d}}`, i, 60+i))
			}
		})
	}
	wg.Wait()
	e.must(http.StatusCreated, nil, "POST", "/api/v1/rules", `{"ref":"cron","trigger_ref":"core.crontimer","trigger_params":{"expression":"@hourly"}}`)
	client := &ingest.RulesClient{APIURL: e.ts.URL}
	list := func(what string, want int) map[string]bool {
		t.Helper()
		l, err := client.EnabledRules(context.Background(), "core.intervaltimer")
		if err != nil {
			t.Fatalf("%s: EnabledRules = %v", what, err)
		}
		wantPages := (want + ingest.DefaultPageSize - 1) / ingest.DefaultPageSize
		if len(l.Rules) != want || l.Incomplete != "" || l.Requests != wantPages || l.PageSize != ingest.DefaultPageSize || l.FellBack != "" {
			t.Fatalf("%s: EnabledRules = %d rules in %d requests of %d, incomplete %q, fell back %q; want %d in %d of %d, complete",
				what, len(l.Rules), l.Requests, l.PageSize, l.Incomplete, l.FellBack, want, wantPages, ingest.DefaultPageSize)
		}
		refs := map[string]bool{}
		for _, r := range l.Rules {
			refs[r.Ref] = true
		}
		return refs
	}
	list("after the creates", n)
	e.must(http.StatusOK, nil, "POST", "/api/v1/rules/r0005/disable", "")
	e.must(http.StatusOK, nil, "DELETE", "/api/v1/rules/r0006", "")
	e.must(http.StatusCreated, nil, "POST", "/api/v1/rules", `{"ref":"r9999","trigger_ref":"core.intervaltimer","trigger_params":{"interval":5}}`)
	refs := list("after a disable, a delete and a create", n-1)
	if refs["r0005"] || refs["r0006"] || !refs["r9999"] || !refs["r0007"] {
		t.Errorf("listing after the writes: r0005 %v, r0006 %v, r9999 %v, r0007 %v; want false, false, true, true",
			refs["r0005"], refs["r0006"], refs["r9999"], refs["r0007"])
	}
	e.must(http.StatusOK, nil, "POST", "/api/v1/rules/r0005/enable", "")
	if refs := list("after the enable", n); !refs["r0005"] {
		t.Error("listing after enabling r0005 lacks it")
	}
}
