package apiserver

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestLoadRulesStoresEveryLineWithoutPublishing(t *testing.T) {
	now := time.Date(2026, 2, 1, 10, 0, 0, 0, time.UTC)
	e := newEnv(t, func(c *Config) { c.Now = func() time.Time { return now } })
	e.must(http.StatusCreated, nil, "POST", "/api/v1/rules",
		`{"ref":"before","trigger_ref":"core.intervaltimer","trigger_params":{"interval":5}}`)
	<-e.msg // the POST's lifecycle message
	in := strings.Join([]string{
		`{"ref":"bulk.1","trigger_ref":"core.intervaltimer","trigger_params":{"unit":"hours","interval":2}}`,
		``, // blank lines are skipped
		`{"ref":"bulk.2","trigger_ref":"core.crontimer","trigger_params":{"expression":"7 3 * * *"},"enabled":false}`,
		`  {"ref":"bulk.3","trigger_ref":"core.datetimetimer","trigger_params":{"fire_at":"2026-03-01T00:00:00Z"}}  `,
	}, "\n")
	n, err := e.srv.LoadRules(strings.NewReader(in))
	if err != nil || n != 3 {
		t.Fatalf("LoadRules = %d, %v; want 3, nil", n, err)
	}
	var l ruleList
	e.must(http.StatusOK, &l, "GET", "/api/v1/rules", "")
	var got []string
	for _, r := range l.Items {
		got = append(got, fmt.Sprintf("%d %s %s %v", r.ID, r.Ref, r.TriggerParams, r.Enabled))
	}
	want := []string{
		`1 before {"interval":5} true`,
		`2 bulk.1 {"interval":2,"unit":"hours"} true`,
		`3 bulk.2 {"expression":"7 3 * * *"} false`,
		`4 bulk.3 {"fire_at":"2026-03-01T00:00:00Z"} true`,
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("rules after the load:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	select {
	case m := <-e.msg:
		t.Errorf("the load published %s %s; want no lifecycle message", m.RoutingKey, m.Body)
	case <-time.After(50 * time.Millisecond):
	}
	// Stored, not only in memory: a restart finds them, and ids go on after them.
	e.restart()
	e.must(http.StatusOK, &l, "GET", "/api/v1/rules", "")
	if l.Pagination.TotalItems != 4 {
		t.Errorf("after a restart %d rules, want 4", l.Pagination.TotalItems)
	}
	var c ruleResp
	e.must(http.StatusCreated, &c, "POST", "/api/v1/rules",
		`{"ref":"after","trigger_ref":"core.intervaltimer","trigger_params":{"interval":5}}`)
	if c.Data.ID != 5 {
		t.Errorf("a create after the load got id %d, want 5", c.Data.ID)
	}
}

func TestLoadRulesRefusesBadInputAndStoresNothing(t *testing.T) {
	now := time.Date(2026, 2, 1, 10, 0, 0, 0, time.UTC)
	e := newEnv(t, func(c *Config) { c.Now = func() time.Time { return now } })
	e.must(http.StatusCreated, nil, "POST", "/api/v1/rules",
		`{"ref":"taken","trigger_ref":"core.intervaltimer","trigger_params":{"interval":5}}`)
	good := `{"ref":"ok.1","trigger_ref":"core.intervaltimer","trigger_params":{"interval":60}}`
	long := `{"ref":"long","trigger_ref":"x","pad":"` + strings.Repeat("a", MaxBodyBytes) + `"}`
	for _, tc := range []struct {
		name, in, want string
	}{
		{"malformed JSON", good + "\n{\"ref\":", "line 2: malformed JSON"},
		{"not an object", good + "\n[1,2]", "line 2: body must be a JSON object"},
		{"no ref", good + "\n" + `{"trigger_ref":"core.intervaltimer"}`, "line 2: ref: required"},
		{"bad ref", `{"ref":"a/b","trigger_ref":"core.intervaltimer","trigger_params":{"interval":5}}`, `line 1: ref: "a/b" has a character not allowed`},
		{"bad interval", good + "\n" + `{"ref":"ok.2","trigger_ref":"core.intervaltimer","trigger_params":{"interval":-1}}`, "line 2: "},
		{"bad cron", `{"ref":"c","trigger_ref":"core.crontimer","trigger_params":{"expression":"61 * * * *"}}`, "line 1: "},
		{"datetime in the past", `{"ref":"d","trigger_ref":"core.datetimetimer","trigger_params":{"fire_at":"2020-01-01T00:00:00Z"}}`, "line 1: trigger_params.fire_at: the schedule has no time left"},
		{"ref twice", good + "\n\n" + good, `line 3: ref "ok.1" already given on line 1`},
		{"ref already stored", good + "\n" + `{"ref":"taken","trigger_ref":"core.intervaltimer","trigger_params":{"interval":5}}`, `line 2: rule "taken" already exists`},
		{"line too long", good + "\n" + long, "line 2: longer than 1048576 bytes"},
		{"empty", "\n \n", "no rule in the input"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n, err := e.srv.LoadRules(strings.NewReader(tc.in))
			if err == nil || !strings.Contains(err.Error(), tc.want) || n != 0 {
				t.Fatalf("LoadRules = %d, %v; want 0 and an error with %q", n, err, tc.want)
			}
			var l ruleList
			e.must(http.StatusOK, &l, "GET", "/api/v1/rules", "")
			if l.Pagination.TotalItems != 1 || l.Items[0].Ref != "taken" {
				t.Errorf("rules after a refused load: %+v, want only %q", l.Items, "taken")
			}
		})
	}
	// Nothing reached the store either.
	e.restart()
	var l ruleList
	e.must(http.StatusOK, &l, "GET", "/api/v1/rules", "")
	if l.Pagination.TotalItems != 1 {
		t.Errorf("after a restart %d rules, want 1", l.Pagination.TotalItems)
	}
}

func TestNewLoadsRulesFileOrFailsNamingIt(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.jsonl")
	var b strings.Builder
	for i := range 2000 {
		fmt.Fprintf(&b, `{"ref":"r.%d","trigger_ref":"core.intervaltimer","trigger_params":{"unit":"hours","interval":%d}}`+"\n", i, 1+i%24)
	}
	if err := os.WriteFile(good, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, func(c *Config) { c.LoadRulesFile = good })
	var l ruleList
	e.must(http.StatusOK, &l, "GET", "/api/v1/rules?page=20&page_size=100", "")
	if l.Pagination.TotalItems != 2000 || len(l.Items) != 100 || l.Items[99].Ref != "r.1999" || l.Items[99].ID != 2000 {
		t.Errorf("page 20 of the loaded rules: %d items of %d, last %+v; want 2000 rules, the last r.1999 with id 2000",
			len(l.Items), l.Pagination.TotalItems, l.Items[len(l.Items)-1])
	}

	bad := filepath.Join(dir, "bad.jsonl")
	if err := os.WriteFile(bad, []byte(`{"ref":"x","trigger_ref":"core.crontimer","trigger_params":{}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{bad, filepath.Join(dir, "absent.jsonl")} {
		srv, err := New(Config{DataDir: t.TempDir(), LoadRulesFile: path})
		if err == nil {
			srv.Close()
			t.Fatalf("New with LoadRulesFile %s = nil error, want one", path)
		}
		if !strings.Contains(err.Error(), filepath.Base(path)) {
			t.Errorf("New with LoadRulesFile %s = %v, want the error to name the file", path, err)
		}
	}
}
