package monitoring

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

// promtool is the installed promtool; without it the test fails (`make test`
// installs it first: `make prometheus`), it never skips.
func promtool(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatalf("promtool is not installed: `make prometheus` installs Debian's prometheus package (make test runs it first): %v", err)
	}
	return p
}

func runPromtool(t *testing.T, dir string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(promtool(t), args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func TestMetricNames(t *testing.T) {
	for _, tc := range []struct {
		name, expr string
		want       []string
		err        string
	}{
		{"selector", `timerd_ready == 0`, []string{"timerd_ready"}, ""},
		{"matchers and strings are not names", `up{job="timerd", instance=~"n1|timerd_x"} == 0`, []string{"up"}, ""},
		{"function, range, aggregation clause", `sum without (kind) (rate(timerd_fires_total[5m]))`, []string{"timerd_fires_total"}, ""},
		{"by before its argument list", `sum by (job, le) (rate(a_bucket[1m])) / on (job) group_left (x) b`, []string{"a_bucket", "b"}, ""},
		{"group_left without a list", `a * on (job) group_left b`, []string{"a", "b"}, ""},
		{"set operators and bool", `a > bool 1 and b unless c or d`, []string{"a", "b", "c", "d"}, ""},
		{"recording rule names", `instance:timerd_fires:rate5m > 2 * job:x:sum`, []string{"instance:timerd_fires:rate5m", "job:x:sum"}, ""},
		{"numbers, durations, exponent", `a offset 5m > 1e3 and b > 0x1F and c > .5`, []string{"a", "b", "c"}, ""},
		{"subquery", `max_over_time(rate(a[1m])[10m:30s])`, []string{"a"}, ""},
		{"histogram_quantile", `histogram_quantile(0.99, sum by (le) (rate(timerd_fire_lateness_seconds_bucket[5m])))`, []string{"timerd_fire_lateness_seconds_bucket"}, ""},
		{"label_replace strings", `label_replace(a, "dst", "$1", "src", "(.*)")`, []string{"a"}, ""},
		{"escaped quote in a matcher", `a{x="\"}"} + b`, []string{"a", "b"}, ""},
		{"space before a call", `sum without(result) (increase (a[2h]))`, []string{"a"}, ""},
		{"comment", "a # b c\n + d", []string{"a", "d"}, ""},
		{"repeats once", `a + a`, []string{"a"}, ""},
		{"keywords in any case", `a AND b Unless c > Inf`, []string{"a", "b", "c"}, ""},
		{"time and vector are functions", `time() - vector(1)`, nil, ""},
		{"Grafana variable in a matcher", `a{job=~"$job"}`, []string{"a"}, ""},
		{"Grafana variable in a range", `rate(a[$__rate_interval])`, []string{"a"}, ""},
		{"unclosed string", `a{job="x}`, nil, "not closed"},
		{"unclosed brace", `a{job="x"`, nil, "not closed"},
		{"unclosed bracket", `rate(a[5m)`, nil, "not closed"},
		{"brace opened twice", `a{{job="x"}`, nil, "opens again"},
		{"stray close", `a} + b`, nil, "unbalanced"},
		{"Grafana variable outside a matcher", `a > $threshold`, nil, "Grafana variable"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := MetricNames(tc.expr)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("MetricNames(%q) = %v, %v; want an error containing %q", tc.expr, got, err, tc.err)
				}
				return
			}
			if err != nil || !slices.Equal(got, tc.want) {
				t.Errorf("MetricNames(%q) = %q, %v; want %q", tc.expr, got, err, tc.want)
			}
		})
	}
}

func TestInstantiate(t *testing.T) {
	got := Instantiate(`sum by (code) (rate(a{job=~"$job",instance=~"${instance}",x="$unknown"}[$__rate_interval]))`,
		map[string]string{"job": "timerd", "instance": ".*"})
	want := `sum by (code) (rate(a{job=~"timerd",instance=~".*",x="$unknown"}[1m]))`
	if got != want {
		t.Errorf("Instantiate = %s\nwant          %s", got, want)
	}
}

// promtool check rules accepts both rule files.
func TestPromtoolCheckRules(t *testing.T) {
	out, err := runPromtool(t, Dir(), "check", "rules", AlertsFile, RulesFile)
	if err != nil {
		t.Fatalf("promtool check rules %s %s: %v\n%s", AlertsFile, RulesFile, err, out)
	}
	for _, name := range []string{AlertsFile, RulesFile} {
		f, err := LoadRules(name)
		if err != nil {
			t.Fatal(err)
		}
		if want := fmt.Sprintf("SUCCESS: %d rules found", len(f.Rules())); !strings.Contains(out, want) {
			t.Errorf("promtool check rules: output lacks %q for %s:\n%s", want, name, out)
		}
	}
}

// promtool test rules passes tests.yml, and fails it when an alert is broken:
// the tests look at what the alerts do.
func TestPromtoolTestRules(t *testing.T) {
	if out, err := runPromtool(t, Dir(), "test", "rules", TestsFile); err != nil {
		t.Fatalf("promtool test rules %s: %v\n%s", TestsFile, err, out)
	}

	dir := t.TempDir()
	for _, name := range []string{AlertsFile, RulesFile, TestsFile} {
		raw, err := os.ReadFile(filepath.Join(Dir(), name))
		if err != nil {
			t.Fatal(err)
		}
		if name == AlertsFile {
			broken := strings.Replace(string(raw), `expr: timerd_dead_letters > 0`, `expr: timerd_dead_letters > 5`, 1)
			if broken == string(raw) {
				t.Fatalf("%s has no `expr: timerd_dead_letters > 0` to break", AlertsFile)
			}
			raw = []byte(broken)
		}
		if err := os.WriteFile(filepath.Join(dir, name), raw, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	out, err := runPromtool(t, dir, "test", "rules", TestsFile)
	if err == nil || !strings.Contains(out, "TimerdDeadLetters") {
		t.Errorf("promtool test rules with TimerdDeadLetters broken (> 5): %v, want a failure naming it:\n%s", err, out)
	}
}

// unitTests is the part of a promtool test file read here.
type unitTests struct {
	RuleFiles      []string `yaml:"rule_files"`
	GroupEvalOrder []string `yaml:"group_eval_order"`
	Tests          []struct {
		Name          string `yaml:"name"`
		AlertRuleTest []struct {
			EvalTime  string `yaml:"eval_time"`
			Alertname string `yaml:"alertname"`
			ExpAlerts []struct {
				ExpLabels map[string]string `yaml:"exp_labels"`
			} `yaml:"exp_alerts"`
		} `yaml:"alert_rule_test"`
	} `yaml:"tests"`
}

// Every alert of alerts.yml has a unit test where it fires and one where it
// does not; tests.yml tests no alert that does not exist, and loads both files.
func TestEveryAlertIsTestedBothWays(t *testing.T) {
	alerts, err := LoadRules(AlertsFile)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join(Dir(), TestsFile))
	if err != nil {
		t.Fatal(err)
	}
	var ut unitTests
	if err := yaml.Unmarshal(raw, &ut); err != nil {
		t.Fatalf("%s: %v", TestsFile, err)
	}
	if !slices.Contains(ut.RuleFiles, AlertsFile) || !slices.Contains(ut.RuleFiles, RulesFile) {
		t.Errorf("%s: rule_files %v, want %s and %s", TestsFile, ut.RuleFiles, RulesFile, AlertsFile)
	}
	fires, quiet := map[string]int{}, map[string]int{}
	for _, tc := range ut.Tests {
		for _, a := range tc.AlertRuleTest {
			if len(a.ExpAlerts) > 0 {
				fires[a.Alertname]++
			} else {
				quiet[a.Alertname]++
			}
		}
	}
	names := map[string]bool{}
	for _, r := range alerts.Rules() {
		names[r.Alert] = true
		if fires[r.Alert] == 0 {
			t.Errorf("alert %s: no test in %s where it fires", r.Alert, TestsFile)
		}
		if quiet[r.Alert] == 0 {
			t.Errorf("alert %s: no test in %s where it does not fire", r.Alert, TestsFile)
		}
	}
	for name := range fires {
		if !names[name] {
			t.Errorf("%s tests alert %s, which %s lacks", TestsFile, name, AlertsFile)
		}
	}
	for name := range quiet {
		if !names[name] {
			t.Errorf("%s tests alert %s, which %s lacks", TestsFile, name, AlertsFile)
		}
	}
	groups := func(name string) []string {
		f, err := LoadRules(name)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, g := range f.Groups {
			out = append(out, g.Name)
		}
		return out
	}
	// Alerts read recording rules: promtool must evaluate those first.
	if want := append(groups(RulesFile), groups(AlertsFile)...); !slices.Equal(ut.GroupEvalOrder, want) {
		t.Errorf("%s: group_eval_order %v, want %v (recording rules first)", TestsFile, ut.GroupEvalOrder, want)
	}
}

// The alerts the mixin promises (docs/monitoring/README.md and issue 13).
var requiredAlerts = []string{
	"TimerdNodeDown", "TimerdNodeNotReady", "TimerdClusterMembersMissing", "TimerdClusterNoQuorum",
	"TimerdClusterSplit", "TimerdOutboxGrowing", "TimerdOutboxOldest", "TimerdDeadLetters",
	"TimerdFireLatenessHigh", "TimerdMisfires", "TimerdCommitErrors", "TimerdWatermarkSyncFailing",
	"TimerdTokenExpiresSoon", "TimerdTokenExpired", "TimerdTokenRefreshFailing", "TimerdBrokerDisconnected",
}

const runbookBase = "https://github.com/timerd/timerd/blob/main/docs/troubleshooting.md#"

// githubAnchor is the anchor GitHub gives a markdown heading.
func githubAnchor(heading string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(strings.TrimSpace(heading)) {
		switch {
		case r == ' ':
			b.WriteByte('-')
		case r == '-' || r == '_' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9':
			b.WriteRune(r)
		}
	}
	return b.String()
}

// troubleshootingAnchors are the anchors of docs/troubleshooting.md's headings.
func troubleshootingAnchors(t *testing.T) map[string]bool {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(Dir(), "..", "troubleshooting.md"))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for line := range strings.SplitSeq(string(raw), "\n") {
		if h, ok := strings.CutPrefix(line, "#"); ok {
			out[githubAnchor(strings.TrimLeft(h, "#"))] = true
		}
	}
	return out
}

func TestGithubAnchor(t *testing.T) {
	for in, want := range map[string]string{
		" The API token expired, or cannot be refreshed": "the-api-token-expired-or-cannot-be-refreshed",
		"403 for one trigger":                            "403-for-one-trigger",
		"Split cluster":                                  "split-cluster",
	} {
		if got := githubAnchor(in); got != want {
			t.Errorf("githubAnchor(%q) = %q, want %q", in, got, want)
		}
	}
}

// Every alert is complete (a duration, a severity, a summary, a description, a
// runbook that exists), the required ones are there, and no name repeats.
func TestAlertsAreComplete(t *testing.T) {
	f, err := LoadRules(AlertsFile)
	if err != nil {
		t.Fatal(err)
	}
	anchors := troubleshootingAnchors(t)
	seen := map[string]bool{}
	for _, r := range f.Rules() {
		if r.Alert == "" {
			t.Errorf("%s holds a rule that is no alert (record %q): recording rules go in %s", AlertsFile, r.Record, RulesFile)
			continue
		}
		if seen[r.Alert] {
			t.Errorf("alert %s is defined twice", r.Alert)
		}
		seen[r.Alert] = true
		if d, err := time.ParseDuration(r.For); err != nil || d <= 0 {
			t.Errorf("alert %s: for %q, want a positive duration (a blip is no alert)", r.Alert, r.For)
		}
		if s := r.Labels["severity"]; s != "critical" && s != "warning" {
			t.Errorf("alert %s: severity %q, want critical or warning", r.Alert, s)
		}
		if r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
			t.Errorf("alert %s: want a summary and a description", r.Alert)
		}
		anchor, ok := strings.CutPrefix(r.Annotations["runbook_url"], runbookBase)
		if !ok || !anchors[anchor] {
			t.Errorf("alert %s: runbook_url %q, want %s plus the anchor of a heading of docs/troubleshooting.md",
				r.Alert, r.Annotations["runbook_url"], runbookBase)
		}
	}
	for _, name := range requiredAlerts {
		if !seen[name] {
			t.Errorf("%s has no alert %s", AlertsFile, name)
		}
	}
}

var recordName = regexp.MustCompile(`^[a-z_]+:[a-z0-9_]+:[a-z0-9_]+$`)

// Every recording rule used is defined, every one defined is used by an alert
// or the dashboard, and each is named level:metric:operations.
func TestRecordingRulesDefinedAndUsed(t *testing.T) {
	rules, err := LoadRules(RulesFile)
	if err != nil {
		t.Fatal(err)
	}
	defined := map[string]bool{}
	for _, r := range rules.Rules() {
		if r.Record == "" {
			t.Errorf("%s holds an alert (%s): alerts go in %s", RulesFile, r.Alert, AlertsFile)
			continue
		}
		if defined[r.Record] {
			t.Errorf("recording rule %s is defined twice", r.Record)
		}
		defined[r.Record] = true
		if !recordName.MatchString(r.Record) {
			t.Errorf("recording rule %s: want a level:metric:operations name", r.Record)
		}
	}
	queries, err := Queries()
	if err != nil {
		t.Fatal(err)
	}
	// Uses outside rules.yml count; a rule used only by another recording rule counts too.
	used := map[string]bool{}
	for _, q := range queries {
		names, err := MetricNames(q.Expr)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range names {
			if !strings.Contains(n, ":") {
				continue
			}
			used[n] = true
			if !defined[n] {
				t.Errorf("%s uses %s, which %s does not record", q.Where, n, RulesFile)
			}
		}
	}
	for name := range defined {
		if !used[name] {
			t.Errorf("recording rule %s is used by no alert, rule or dashboard panel", name)
		}
	}
}

// The dashboard has a ${datasource} variable that every panel and query uses,
// job and instance variables, unique ids, panels that fit the grid without
// overlapping, and the panels the mixin promises.
func TestDashboard(t *testing.T) {
	d, err := LoadDashboard()
	if err != nil {
		t.Fatal(err)
	}
	if d.UID == "" || d.Title == "" {
		t.Errorf("dashboard uid %q, title %q: want both", d.UID, d.Title)
	}
	vars := map[string]Variable{}
	for _, v := range d.Templating.List {
		vars[v.Name] = v
	}
	if v, ok := vars["datasource"]; !ok || v.Type != "datasource" || v.QueryString() != "prometheus" {
		t.Errorf("want a variable datasource of type datasource, query prometheus; got %+v", v)
	}
	for _, name := range []string{"job", "instance"} {
		if v, ok := vars[name]; !ok || v.Type != "query" || v.Datasource == nil || v.Datasource.UID != "${datasource}" {
			t.Errorf("want a query variable %s on ${datasource}; got %+v", name, v)
		}
	}

	ids := map[int]string{}
	type rect struct {
		title string
		g     GridPos
	}
	var placed []rect
	var titles []string
	for _, p := range d.AllPanels() {
		if prev, ok := ids[p.ID]; ok {
			t.Errorf("panels %q and %q share id %d", prev, p.Title, p.ID)
		}
		ids[p.ID] = p.Title
		titles = append(titles, p.Title)
		g := p.GridPos
		switch {
		case g == nil || g.W <= 0 || g.H <= 0 || g.X < 0 || g.Y < 0 || g.X+g.W > 24:
			t.Errorf("panel %q: gridPos %+v does not fit the 24-column grid", p.Title, g)
		default:
			for _, o := range placed {
				if g.X < o.g.X+o.g.W && o.g.X < g.X+g.W && g.Y < o.g.Y+o.g.H && o.g.Y < g.Y+g.H {
					t.Errorf("panels %q %+v and %q %+v overlap", p.Title, *g, o.title, o.g)
				}
			}
			placed = append(placed, rect{p.Title, *g})
		}
		if p.Type == "row" {
			continue
		}
		if p.Datasource == nil || p.Datasource.UID != "${datasource}" {
			t.Errorf("panel %q: datasource %+v, want uid ${datasource}", p.Title, p.Datasource)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		refs := map[string]bool{}
		for _, q := range p.Targets {
			if q.Datasource == nil || q.Datasource.UID != "${datasource}" {
				t.Errorf("panel %q query %s: datasource %+v, want uid ${datasource}", p.Title, q.RefID, q.Datasource)
			}
			if q.RefID == "" || refs[q.RefID] || strings.TrimSpace(q.Expr) == "" {
				t.Errorf("panel %q: query %q with refId %q: want a query and a refId of its own", p.Title, q.Expr, q.RefID)
			}
			refs[q.RefID] = true
			if strings.Contains(q.Expr, "timerd_") && !strings.Contains(q.Expr, "$job") {
				t.Errorf("panel %q query %s: %q does not select the dashboard's $job", p.Title, q.RefID, q.Expr)
			}
		}
	}
	for _, want := range []string{"Fires/s per node", "Fire lateness per node", "Rules owned per node", "Partitions held per node",
		"Outbox per node", "Deliveries/s by code", "Hand-offs: rules adopted and released", "API token: time to expiry"} {
		if !slices.Contains(titles, want) {
			t.Errorf("the dashboard has no panel %q", want)
		}
	}
}

// Every dashboard query, its Grafana variables filled in, is PromQL that
// Prometheus's own parser takes: promtool checks them as recording rules.
func TestDashboardQueriesParse(t *testing.T) {
	queries, err := Queries()
	if err != nil {
		t.Fatal(err)
	}
	type rule struct {
		Record string `yaml:"record"`
		Expr   string `yaml:"expr"`
	}
	var rules []rule
	for _, q := range queries {
		if !strings.HasPrefix(q.Where, DashboardFile) {
			continue
		}
		rules = append(rules, rule{Record: fmt.Sprintf("dashboard:query:n%d", len(rules)),
			Expr: Instantiate(q.Expr, map[string]string{"job": ".*", "instance": ".*"})})
	}
	raw, err := yaml.Marshal(map[string]any{"groups": []any{map[string]any{"name": "dashboard", "rules": rules}}})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "dashboard-queries.yml"), raw, 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := runPromtool(t, dir, "check", "rules", "dashboard-queries.yml"); err != nil {
		t.Fatalf("promtool check rules of the dashboard's %d queries: %v\n%s\n%s", len(rules), err, out, raw)
	}
	if len(rules) < 20 {
		t.Errorf("the dashboard has %d queries, want the 20 and more it was built with", len(rules))
	}
}

// Every metric the mixin names is timerd's, or Prometheus's own up: a node's
// process_ and go_ metrics are not the mixin's business. (Which timerd_ metrics
// a node really exports: cmd/timerd/node and test/e2e check that.)
func TestMixinNamesOnlyTimerdMetrics(t *testing.T) {
	queries, err := Queries()
	if err != nil {
		t.Fatal(err)
	}
	metrics, _, err := Names(queries)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range metrics {
		if !strings.HasPrefix(m, "timerd_") && !slices.Contains(SyntheticMetrics, m) {
			t.Errorf("the mixin names %s, neither a timerd_ metric nor one of %v", m, SyntheticMetrics)
		}
	}
	if len(metrics) < 30 {
		t.Errorf("the mixin names %d metrics, want the 30 and more it was built with: %v", len(metrics), metrics)
	}
}
