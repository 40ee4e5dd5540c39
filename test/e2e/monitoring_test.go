package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/timerd/timerd/test/monitoring"
	"github.com/timerd/timerd/test/testkit"
)

// promServer is a real Prometheus (Debian's package) run by a test.
type promServer struct {
	t   *testing.T
	url string
	mu  sync.Mutex
	out bytes.Buffer
}

// lockedWriter lets exec write the process's output while the test reads it.
type lockedWriter struct{ p *promServer }

func (w lockedWriter) Write(b []byte) (int, error) {
	w.p.mu.Lock()
	defer w.p.mu.Unlock()
	return w.p.out.Write(b)
}

// startPrometheus runs prometheus with the mixin's recording rules and its alerts,
// every `for:` cut to 1 s, scraping targets (host:port) as job "timerd" every
// second and evaluating every second. It fails, not skips, without prometheus:
// `make test` installs it (`make prometheus`).
func startPrometheus(t *testing.T, targets []string) *promServer {
	t.Helper()
	bin, err := exec.LookPath("prometheus")
	if err != nil {
		t.Fatalf("prometheus is not installed: `make prometheus` installs Debian's package (make test runs it first): %v", err)
	}
	dir := t.TempDir()
	rules, err := os.ReadFile(filepath.Join(monitoring.Dir(), monitoring.RulesFile))
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, monitoring.RulesFile), rules)
	writeFile(t, filepath.Join(dir, monitoring.AlertsFile), shortFor(t))
	cfg, err := yaml.Marshal(map[string]any{
		"global":     map[string]any{"scrape_interval": "1s", "scrape_timeout": "900ms", "evaluation_interval": "1s"},
		"rule_files": []string{monitoring.RulesFile, monitoring.AlertsFile},
		"scrape_configs": []any{map[string]any{
			"job_name":       "timerd",
			"static_configs": []any{map[string]any{"targets": targets}},
		}},
	})
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "prometheus.yml"), cfg)
	addr := closedAddr(t)
	p := &promServer{t: t, url: "http://" + addr}
	cmd := exec.Command(bin, "--config.file="+filepath.Join(dir, "prometheus.yml"),
		"--storage.tsdb.path="+filepath.Join(dir, "data"), "--web.listen-address="+addr)
	cmd.Stdout, cmd.Stderr = lockedWriter{p}, lockedWriter{p}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start prometheus: %v", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-done
		if t.Failed() {
			p.mu.Lock()
			t.Logf("output of prometheus:\n%s", p.out.String())
			p.mu.Unlock()
		}
	})
	testkit.Eventually(t, 30*time.Second, "prometheus answers /-/ready", func() bool {
		select {
		case <-done:
			t.Fatalf("prometheus exited before it was ready")
		default:
		}
		resp, err := shortHTTP.Get(p.url + "/-/ready")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return p
}

func writeFile(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// shortFor is alerts.yml with every alert's `for:` cut to 1 s, so that a test
// sees in seconds what takes minutes in production.
func shortFor(t *testing.T) []byte {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(monitoring.Dir(), monitoring.AlertsFile))
	if err != nil {
		t.Fatal(err)
	}
	var f monitoring.RuleFile
	if err := yaml.Unmarshal(raw, &f); err != nil {
		t.Fatal(err)
	}
	for i := range f.Groups {
		for j := range f.Groups[i].Rules {
			f.Groups[i].Rules[j].For = "1s"
		}
	}
	out, err := yaml.Marshal(f)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// api GETs path of Prometheus's HTTP API into data (the "data" of its answer).
func (p *promServer) api(path string, data any) error {
	resp, err := shortHTTP.Get(p.url + path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var body struct {
		Status string          `json:"status"`
		Error  string          `json:"error"`
		Data   json.RawMessage `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return fmt.Errorf("GET %s: %w", path, err)
	}
	if body.Status != "success" {
		return fmt.Errorf("GET %s: %s: %s", path, body.Status, body.Error)
	}
	return json.Unmarshal(body.Data, data)
}

// promAlert is an alert of /api/v1/alerts.
type promAlert struct {
	Labels      map[string]string `json:"labels"`
	Annotations map[string]string `json:"annotations"`
	State       string            `json:"state"` // pending or firing
}

func (a promAlert) String() string {
	return fmt.Sprintf("%s %s instance=%s job=%s", a.Labels["alertname"], a.State, a.Labels["instance"], a.Labels["job"])
}

func (p *promServer) alerts() ([]promAlert, error) {
	var data struct {
		Alerts []promAlert `json:"alerts"`
	}
	err := p.api("/api/v1/alerts", &data)
	return data.Alerts, err
}

// samples is how many series the instant query q returns.
func (p *promServer) samples(q string) (int, error) {
	var data struct {
		Result []json.RawMessage `json:"result"`
	}
	err := p.api("/api/v1/query?query="+url.QueryEscape(q), &data)
	return len(data.Result), err
}

// ruleHealth lists the rules Prometheus has not evaluated yet, or evaluated with
// an error (a many-to-many match, say): what promtool's series cannot show.
func (p *promServer) ruleHealth() ([]string, error) {
	var data struct {
		Groups []struct {
			Name  string `json:"name"`
			Rules []struct {
				Name      string `json:"name"`
				Health    string `json:"health"`
				LastError string `json:"lastError"`
			} `json:"rules"`
		} `json:"groups"`
	}
	if err := p.api("/api/v1/rules", &data); err != nil {
		return nil, err
	}
	var bad []string
	n := 0
	for _, g := range data.Groups {
		for _, r := range g.Rules {
			n++
			if r.Health != "ok" {
				bad = append(bad, fmt.Sprintf("%s %s: %s %s", g.Name, r.Name, r.Health, r.LastError))
			}
		}
	}
	if n == 0 {
		return []string{"no rules loaded"}, nil
	}
	return bad, nil
}

// exportedNames is the metric names on a node's /metrics: those of its
// # TYPE lines (histograms by their base name) and of its series (a
// histogram's _bucket, _sum and _count).
func exportedNames(nodeURL string) (map[string]bool, error) {
	resp, err := shortHTTP.Get(nodeURL + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s/metrics: status %d", nodeURL, resp.StatusCode)
	}
	out := map[string]bool{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if rest, ok := strings.CutPrefix(line, "# TYPE "); ok {
			out[strings.Fields(rest)[0]] = true
			continue
		}
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if i := strings.IndexAny(line, "{ "); i > 0 {
			out[line[:i]] = true
		}
	}
	return out, sc.Err()
}

// A real Prometheus loads the mixin (docs/monitoring) and scrapes a three-node
// cluster: every metric the rules and the dashboard name is on the nodes'
// /metrics, every rule evaluates without error, every dashboard query returns
// data and no alert fires while the cluster is healthy (every `for:` cut to
// 1 s); then one node is killed and TimerdNodeDown fires for it, and for it
// alone, through Prometheus's own API, and its peers' TimerdClusterMembersMissing
// follows once they have declared it dead.
func TestMonitoringNodeDownAlert(t *testing.T) {
	t.Parallel() // few nodes, no slot timing: beside the agent tests (Makefile: -parallel)
	began := time.Now()
	c := newTCluster(t, "TIMERD_EXPECT=3")
	every := func(int) map[string]any { return map[string]any{"interval": 1} }
	c.createRules("mon", "core.intervaltimer", 1, every)
	c.start("n1", nil, false) // alone it has no quorum: not ready
	c.startJoining(c.peers("n2"), "n2", "n3")
	c.waitStable("3 nodes", 60*time.Second, nil)
	// A rule created now reaches the nodes as a lifecycle message: its metrics
	// have series from then on.
	c.createRules("mon-live", "core.intervaltimer", 1, every)
	formed := time.Now()

	queries, err := monitoring.Queries()
	if err != nil {
		t.Fatal(err)
	}
	names, _, err := monitoring.Names(queries)
	if err != nil {
		t.Fatal(err)
	}
	shorts := []string{"n1", "n2", "n3"}
	testkit.EventuallyWhy(t, 30*time.Second, "every metric the mixin names on the nodes' /metrics", func() (string, bool) {
		exported := map[string]bool{}
		for _, s := range shorts {
			got, err := exportedNames(c.node(s).ag.nodeURL)
			if err != nil {
				return err.Error(), false
			}
			for n := range got {
				exported[n] = true
			}
		}
		var missing []string
		for _, n := range names {
			if !exported[n] && !slices.Contains(monitoring.SyntheticMetrics, n) {
				missing = append(missing, n)
			}
		}
		return fmt.Sprintf("missing %v", missing), len(missing) == 0
	})

	target := map[string]string{} // host:port by short name: Prometheus's instance label
	var targets []string
	for _, s := range shorts {
		target[s] = strings.TrimPrefix(c.node(s).ag.nodeURL, "http://")
		targets = append(targets, target[s])
	}
	p := startPrometheus(t, targets)

	var dashboard []monitoring.Query
	for _, q := range queries {
		if strings.HasPrefix(q.Where, monitoring.DashboardFile) {
			dashboard = append(dashboard, q)
		}
	}
	testkit.EventuallyWhy(t, 30*time.Second, "every rule evaluated and every dashboard query answered with data", func() (string, bool) {
		if bad, err := p.ruleHealth(); err != nil || len(bad) > 0 {
			return fmt.Sprintf("rules: %v %v", err, bad), false
		}
		for _, q := range dashboard {
			expr := monitoring.Instantiate(q.Expr, map[string]string{"job": "timerd", "instance": ".*"})
			if n, err := p.samples(expr); err != nil || n == 0 {
				return fmt.Sprintf("%s: %s: %d series, %v", q.Where, expr, n, err), false
			}
		}
		return "", true
	})
	// Sums over the nodes (partitions held) are read from scrapes a second apart:
	// a hand-off between two scrapes shows for an evaluation or two, which the
	// alerts' real `for:` absorbs. A false alarm lasts.
	c.waitHoldAll(30*time.Second, shorts...)
	testkit.EventuallyWhy(t, 15*time.Second, "no alert pending or firing in the healthy cluster", func() (string, bool) {
		alerts, err := p.alerts()
		return fmt.Sprintf("alerts %v %v", alerts, err), err == nil && len(alerts) == 0
	})
	ready := time.Now()

	c.kill("n2")
	killed := time.Now()
	var firing []promAlert
	testkit.EventuallyWhy(t, 30*time.Second, "TimerdNodeDown fires for n2", func() (string, bool) {
		alerts, err := p.alerts()
		if err != nil {
			return err.Error(), false
		}
		firing = nil
		for _, a := range alerts {
			if a.Labels["alertname"] == "TimerdNodeDown" && a.State == "firing" {
				firing = append(firing, a)
			}
		}
		return fmt.Sprintf("alerts %v", alerts), len(firing) > 0
	})
	down := time.Since(killed)
	if len(firing) != 1 || firing[0].Labels["instance"] != target["n2"] || firing[0].Labels["job"] != "timerd" ||
		firing[0].Labels["severity"] != "critical" {
		t.Errorf("TimerdNodeDown firing for %v, want it for n2 (instance %s, job timerd, severity critical) alone", firing, target["n2"])
	} else if summary := firing[0].Annotations["summary"]; !strings.Contains(summary, target["n2"]) {
		t.Errorf("TimerdNodeDown's summary %q does not name n2 (%s)", summary, target["n2"])
	}

	testkit.EventuallyWhy(t, 30*time.Second, "TimerdClusterMembersMissing fires for n1 and n3", func() (string, bool) {
		alerts, err := p.alerts()
		if err != nil {
			return err.Error(), false
		}
		var got []string
		for _, a := range alerts {
			if a.Labels["alertname"] == "TimerdClusterMembersMissing" && a.State == "firing" {
				got = append(got, a.Labels["instance"])
			}
		}
		slices.Sort(got)
		want := []string{target["n1"], target["n3"]}
		slices.Sort(want)
		return fmt.Sprintf("firing for %v", got), slices.Equal(got, want)
	})
	t.Logf("cluster formed in %s, Prometheus ready and every query answered %s later; TimerdNodeDown firing %s after the kill, TimerdClusterMembersMissing %s after it; %s in all",
		formed.Sub(began).Round(time.Millisecond), ready.Sub(formed).Round(time.Millisecond), down.Round(time.Millisecond),
		time.Since(killed).Round(time.Millisecond), time.Since(began).Round(time.Millisecond))
}
