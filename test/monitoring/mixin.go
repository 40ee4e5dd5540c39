// Package monitoring reads the monitoring mixin of docs/monitoring (alerting
// and recording rules, the Grafana dashboard) for the tests that check it: its
// own (promtool, structure), those of cmd/timerd/node (every metric it names is
// one a node registers) and test/e2e (a real Prometheus scraping real nodes).
package monitoring

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Dir is docs/monitoring of this checkout, found from this file's path so that
// the tests of any package can read the mixin.
func Dir() string {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		panic("monitoring: runtime.Caller failed")
	}
	return filepath.Join(filepath.Dir(file), "..", "..", "docs", "monitoring")
}

// The mixin's files, in Dir.
const (
	AlertsFile    = "alerts.yml"
	RulesFile     = "rules.yml"
	DashboardFile = "dashboard.json"
	TestsFile     = "tests.yml"
)

// Rule is one rule of a Prometheus rule file: an alert or a recording rule.
type Rule struct {
	Alert       string            `yaml:"alert,omitempty"`
	Record      string            `yaml:"record,omitempty"`
	Expr        string            `yaml:"expr"`
	For         string            `yaml:"for,omitempty"`
	Labels      map[string]string `yaml:"labels,omitempty"`
	Annotations map[string]string `yaml:"annotations,omitempty"`
}

// Group is a rule group.
type Group struct {
	Name     string `yaml:"name"`
	Interval string `yaml:"interval,omitempty"`
	Rules    []Rule `yaml:"rules"`
}

// RuleFile is a Prometheus rule file.
type RuleFile struct {
	Groups []Group `yaml:"groups"`
}

// Rules lists the rules of every group of f.
func (f RuleFile) Rules() []Rule {
	var out []Rule
	for _, g := range f.Groups {
		out = append(out, g.Rules...)
	}
	return out
}

// LoadRules reads the rule file name of Dir, refusing keys Prometheus does not know.
func LoadRules(name string) (RuleFile, error) {
	var f RuleFile
	raw, err := os.ReadFile(filepath.Join(Dir(), name))
	if err != nil {
		return f, fmt.Errorf("read rule file: %w", err)
	}
	dec := yaml.NewDecoder(strings.NewReader(string(raw)))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil {
		return f, fmt.Errorf("rule file %s: %w", name, err)
	}
	return f, nil
}

// Dashboard is the part of a Grafana dashboard the tests read.
type Dashboard struct {
	UID        string  `json:"uid"`
	Title      string  `json:"title"`
	Panels     []Panel `json:"panels"`
	Templating struct {
		List []Variable `json:"list"`
	} `json:"templating"`
}

// Panel is a dashboard panel (a row holds panels only when collapsed).
type Panel struct {
	ID         int             `json:"id"`
	Type       string          `json:"type"`
	Title      string          `json:"title"`
	Datasource *DatasourceRef  `json:"datasource"`
	GridPos    *GridPos        `json:"gridPos"`
	Targets    []Target        `json:"targets"`
	Panels     []Panel         `json:"panels"`
	FieldCfg   json.RawMessage `json:"fieldConfig"`
}

// GridPos is where a panel sits.
type GridPos struct {
	H int `json:"h"`
	W int `json:"w"`
	X int `json:"x"`
	Y int `json:"y"`
}

// DatasourceRef names a panel's or a target's data source.
type DatasourceRef struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

// Target is one query of a panel.
type Target struct {
	Expr       string         `json:"expr"`
	RefID      string         `json:"refId"`
	Datasource *DatasourceRef `json:"datasource"`
}

// Variable is a template variable.
type Variable struct {
	Name       string          `json:"name"`
	Type       string          `json:"type"`
	Query      json.RawMessage `json:"query"` // a string, or {"query": "…"} for a query variable
	Datasource *DatasourceRef  `json:"datasource"`
}

// QueryString is the query of a query variable (either of Grafana's two forms).
func (v Variable) QueryString() string {
	var s string
	if json.Unmarshal(v.Query, &s) == nil {
		return s
	}
	var q struct {
		Query string `json:"query"`
	}
	_ = json.Unmarshal(v.Query, &q)
	return q.Query
}

// LoadDashboard reads dashboard.json of Dir.
func LoadDashboard() (Dashboard, error) {
	var d Dashboard
	raw, err := os.ReadFile(filepath.Join(Dir(), DashboardFile))
	if err != nil {
		return d, fmt.Errorf("read dashboard: %w", err)
	}
	if err := json.Unmarshal(raw, &d); err != nil {
		return d, fmt.Errorf("dashboard %s: %w", DashboardFile, err)
	}
	return d, nil
}

// AllPanels is every panel of d, those of collapsed rows included.
func (d Dashboard) AllPanels() []Panel {
	var out []Panel
	var walk func([]Panel)
	walk = func(ps []Panel) {
		for _, p := range ps {
			out = append(out, p)
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	return out
}

// Query is one PromQL expression of the mixin and where it comes from.
type Query struct {
	Where string // "alerts.yml: TimerdNodeDown", "dashboard.json: panel 3 \"Fires/s\" A"
	Expr  string // PromQL; a dashboard's with Grafana's variables left in
}

// Queries lists every expression of the rule files and of the dashboard
// (panel targets, and the selector of each label_values variable).
func Queries() ([]Query, error) {
	var out []Query
	for _, name := range []string{RulesFile, AlertsFile} {
		f, err := LoadRules(name)
		if err != nil {
			return nil, err
		}
		for _, r := range f.Rules() {
			out = append(out, Query{Where: name + ": " + r.Alert + r.Record, Expr: r.Expr})
		}
	}
	d, err := LoadDashboard()
	if err != nil {
		return nil, err
	}
	for _, p := range d.AllPanels() {
		for _, t := range p.Targets {
			out = append(out, Query{Where: fmt.Sprintf("%s: panel %d %q %s", DashboardFile, p.ID, p.Title, t.RefID), Expr: t.Expr})
		}
	}
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		sel, ok := labelValuesSelector(v.QueryString())
		if !ok {
			return nil, fmt.Errorf("%s: variable %s: query %q is not label_values(SELECTOR, LABEL)", DashboardFile, v.Name, v.QueryString())
		}
		out = append(out, Query{Where: fmt.Sprintf("%s: variable %s", DashboardFile, v.Name), Expr: sel})
	}
	return out, nil
}

var labelValuesRe = regexp.MustCompile(`^\s*label_values\(\s*(.+?)\s*,\s*[a-zA-Z_][a-zA-Z0-9_]*\s*\)\s*$`)

// labelValuesSelector is SELECTOR of Grafana's label_values(SELECTOR, LABEL).
func labelValuesSelector(q string) (string, bool) {
	m := labelValuesRe.FindStringSubmatch(q)
	if m == nil {
		return "", false
	}
	return m[1], true
}

// grafanaVars are Grafana's interval variables, which stand where PromQL wants a
// duration; every other variable ($job, ${instance}) stands in a label matcher.
var grafanaVars = regexp.MustCompile(`\$\{?__(rate_interval|interval|range)(_ms|_s)?\}?`)

// Instantiate makes a dashboard expression plain PromQL: Grafana's interval
// variables become 1m and $NAME or ${NAME} becomes vars[NAME] (a regexp the
// expression's =~ matchers take, e.g. ".*").
func Instantiate(expr string, vars map[string]string) string {
	expr = grafanaVars.ReplaceAllString(expr, "1m")
	return regexp.MustCompile(`\$\{?([a-zA-Z_][a-zA-Z0-9_]*)\}?`).ReplaceAllStringFunc(expr, func(v string) string {
		name := strings.Trim(v, "${}")
		if val, ok := vars[name]; ok {
			return val
		}
		return v
	})
}

// SyntheticMetrics are the series Prometheus makes itself for every target: a
// rule may name them, and no node exports them.
var SyntheticMetrics = []string{"up"}

// Names sorts the names that queries select into metrics (as a node exports
// them) and recorded (recording rules' names, level:metric:operations, which
// contain a colon). A query whose names cannot be read is an error naming it.
func Names(queries []Query) (metrics, recorded []string, err error) {
	for _, q := range queries {
		names, err := MetricNames(q.Expr)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", q.Where, err)
		}
		if len(names) == 0 {
			return nil, nil, fmt.Errorf("%s: %q selects no metric", q.Where, q.Expr)
		}
		for _, n := range names {
			if strings.Contains(n, ":") {
				recorded = append(recorded, n)
			} else {
				metrics = append(metrics, n)
			}
		}
	}
	slices.Sort(metrics)
	slices.Sort(recorded)
	return slices.Compact(metrics), slices.Compact(recorded), nil
}

// keywords are PromQL's words that are never metric names: binary operators,
// modifiers and aggregation operators.
var keywords = map[string]bool{
	"and": true, "or": true, "unless": true, "bool": true, "offset": true,
	"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true,
	"inf": true, "nan": true, "atan2": true,
	// aggregation operators, which may take their by or without clause before
	// their arguments: sum by (job) (x)
	"sum": true, "min": true, "max": true, "avg": true, "group": true, "stddev": true, "stdvar": true,
	"count": true, "count_values": true, "bottomk": true, "topk": true, "quantile": true,
	"limitk": true, "limit_ratio": true,
}

// labelListKeywords take a parenthesised list of label names.
var labelListKeywords = map[string]bool{
	"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true,
}

// MetricNames lists the metric names that expr selects, in order of first use,
// without repeats. It is a careful tokenizer of PromQL rather than its parser
// (github.com/prometheus/prometheus would bring its whole module graph and newer
// versions of client_golang and common into go.mod for a test): it skips string
// literals, label matchers {…}, ranges and subqueries […], comments and
// numbers and durations; an identifier followed by "(" is a function or an
// aggregation, one of by/without/on/ignoring/group_left/group_right is followed
// by a label list that is skipped, and every other identifier but a keyword is
// a metric name. Grafana's variables must have been replaced (Instantiate).
// Unbalanced quotes, braces or brackets are an error.
func MetricNames(expr string) ([]string, error) {
	var names []string
	seen := map[string]bool{}
	i := 0
	for i < len(expr) {
		c := expr[i]
		switch {
		case c == '"' || c == '\'' || c == '`':
			end, err := skipString(expr, i)
			if err != nil {
				return nil, err
			}
			i = end
		case c == '{':
			end, err := skipUntil(expr, i, '}')
			if err != nil {
				return nil, err
			}
			i = end
		case c == '[':
			end, err := skipUntil(expr, i, ']')
			if err != nil {
				return nil, err
			}
			i = end
		case c == '}' || c == ']':
			return nil, fmt.Errorf("%q: unbalanced %q at byte %d", expr, c, i)
		case c == '#':
			for i < len(expr) && expr[i] != '\n' {
				i++
			}
		case c >= '0' && c <= '9' || c == '.' && i+1 < len(expr) && expr[i+1] >= '0' && expr[i+1] <= '9':
			for i < len(expr) && (isIdentChar(expr[i]) || expr[i] == '.') {
				i++
			}
		case isIdentStart(c):
			start := i
			for i < len(expr) && isIdentChar(expr[i]) {
				i++
			}
			word := expr[start:i]
			next := i
			for next < len(expr) && strings.IndexByte(" \t\r\n", expr[next]) >= 0 {
				next++
			}
			called := next < len(expr) && expr[next] == '('
			switch {
			case labelListKeywords[strings.ToLower(word)] && called:
				end, err := skipUntil(expr, next, ')')
				if err != nil {
					return nil, err
				}
				i = end
			case called, keywords[strings.ToLower(word)]:
			default:
				if !seen[word] {
					seen[word] = true
					names = append(names, word)
				}
			}
		case c == '$':
			return nil, fmt.Errorf("%q: a Grafana variable at byte %d outside a label matcher", expr, i)
		default:
			i++
		}
	}
	return names, nil
}

func isIdentStart(c byte) bool {
	return c == '_' || c == ':' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
}

func isIdentChar(c byte) bool { return isIdentStart(c) || c >= '0' && c <= '9' }

// skipString returns the index after the string literal that starts at i.
func skipString(s string, i int) (int, error) {
	q := s[i]
	for j := i + 1; j < len(s); j++ {
		switch {
		case s[j] == '\\' && q != '`':
			j++
		case s[j] == q:
			return j + 1, nil
		}
	}
	return 0, fmt.Errorf("%q: string at byte %d is not closed", s, i)
}

// skipUntil returns the index after the close that ends what opens at i,
// skipping strings inside; nothing of the same kind may open again in it.
func skipUntil(s string, i int, close byte) (int, error) {
	open := s[i]
	for j := i + 1; j < len(s); {
		switch s[j] {
		case '"', '\'', '`':
			end, err := skipString(s, j)
			if err != nil {
				return 0, err
			}
			j = end
		case close:
			return j + 1, nil
		case open:
			return 0, fmt.Errorf("%q: %q at byte %d opens again before the %q of byte %d closes", s, open, j, close, i)
		default:
			j++
		}
	}
	return 0, fmt.Errorf("%q: %q at byte %d is not closed", s, open, i)
}
