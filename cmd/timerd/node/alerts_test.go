package node

import (
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

// ruleFile is the shape of a Prometheus rule file.
type ruleFile struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []struct {
			Alert       string            `yaml:"alert"`
			Expr        string            `yaml:"expr"`
			For         string            `yaml:"for"`
			Labels      map[string]string `yaml:"labels"`
			Annotations map[string]string `yaml:"annotations"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

var metricName = regexp.MustCompile(`\btimerd_[a-z0-9_]+\b`)

// docs/alerts.yml is a rule file whose every alert is complete and names only
// metrics a node exports.
func TestAlertRulesUseExportedMetrics(t *testing.T) {
	raw, err := os.ReadFile("../../../docs/alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	var rf ruleFile
	dec := yaml.NewDecoder(strings.NewReader(string(raw)))
	dec.KnownFields(true)
	if err := dec.Decode(&rf); err != nil {
		t.Fatalf("docs/alerts.yml: %v", err)
	}

	n := newIdleNode(t)
	srv := httptest.NewServer(n.handler())
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	exposition, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	exported := map[string]bool{}
	for line := range strings.SplitSeq(string(exposition), "\n") {
		if name, ok := strings.CutPrefix(line, "# TYPE "); ok {
			exported[strings.Fields(name)[0]] = true
		}
	}

	alerts := map[string]bool{}
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			alerts[r.Alert] = true
			if _, err := time.ParseDuration(r.For); err != nil || r.Labels["severity"] == "" ||
				r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
				t.Errorf("alert %q: want a for duration (got %q), a severity, a summary and a description", r.Alert, r.For)
			}
			names := metricName.FindAllString(r.Expr, -1)
			if len(names) == 0 {
				t.Errorf("alert %q: expr %q names no timerd metric", r.Alert, r.Expr)
			}
			for _, m := range names {
				if !exported[m] {
					t.Errorf("alert %q: expr %q names %s, which a node does not export", r.Alert, r.Expr, m)
				}
			}
		}
	}
	for _, want := range []string{"TimerdDeadLetters", "TimerdDeliveryRulesPaused", "TimerdOutboxOldest"} {
		if !alerts[want] {
			t.Errorf("docs/alerts.yml has no alert %s", want)
		}
	}
}

// With promtool installed, docs/alerts.yml passes `promtool check rules`
// and a node's /metrics passes `promtool check metrics`.
func TestAlertRulesPromtool(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("promtool is not installed (Debian: apt-get install prometheus); TestAlertRulesUseExportedMetrics checks the metric names")
	}
	if out, err := exec.Command(promtool, "check", "rules", "../../../docs/alerts.yml").CombinedOutput(); err != nil {
		t.Errorf("promtool check rules docs/alerts.yml: %v\n%s", err, out)
	}
	n := newIdleNode(t)
	srv := httptest.NewServer(n.handler())
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = resp.Body
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("promtool check metrics of a node's /metrics: %v\n%s", err, out)
	}
}
