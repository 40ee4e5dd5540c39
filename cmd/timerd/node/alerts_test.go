package node

import (
	"net/http"
	"net/http/httptest"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/timerd/timerd/test/monitoring"
)

// exportedAs is the name under which a node registers the series name: a
// histogram's _bucket, _sum and _count series belong to its base name.
func exportedAs(name string, registered, histograms []string) (string, bool) {
	if slices.Contains(registered, name) {
		return name, true
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		if base, ok := strings.CutSuffix(name, suffix); ok && slices.Contains(histograms, base) {
			return base, true
		}
	}
	return "", false
}

// histogramNames is the histograms and summaries reg exports now.
func histogramNames(t *testing.T, reg *prometheus.Registry) []string {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("Gather: %v", err)
	}
	var out []string
	for _, mf := range mfs {
		if mf.GetType() == dto.MetricType_HISTOGRAM || mf.GetType() == dto.MetricType_SUMMARY {
			out = append(out, mf.GetName())
		}
	}
	return out
}

// Every metric the monitoring mixin (docs/monitoring: alerts, recording rules,
// dashboard) names is one a node with every part registers, label vectors with
// no series yet included; test/e2e checks the same on a running cluster's
// /metrics.
func TestMixinNamesOnlyMetricsANodeRegisters(t *testing.T) {
	queries, err := monitoring.Queries()
	if err != nil {
		t.Fatal(err)
	}
	names, _, err := monitoring.Names(queries)
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	n, err := New(fullConfig(t, reg))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	defer n.Close()
	registered, histograms := n.registered.Names(), histogramNames(t, reg)
	for _, name := range names {
		if _, ok := exportedAs(name, registered, histograms); !ok && !slices.Contains(monitoring.SyntheticMetrics, name) {
			t.Errorf("the monitoring mixin names %s, which a node does not export", name)
		}
	}
}

func TestExportedAs(t *testing.T) {
	registered := []string{"timerd_fire_lateness_seconds", "timerd_ready"}
	histograms := []string{"timerd_fire_lateness_seconds"}
	for name, want := range map[string]string{
		"timerd_ready":                        "timerd_ready",
		"timerd_fire_lateness_seconds_bucket": "timerd_fire_lateness_seconds",
		"timerd_fire_lateness_seconds_count":  "timerd_fire_lateness_seconds",
		"timerd_ready_count":                  "",
		"timerd_fire_lateness":                "",
	} {
		if got, _ := exportedAs(name, registered, histograms); got != want {
			t.Errorf("exportedAs(%q) = %q, want %q", name, got, want)
		}
	}
}

// A node's /metrics passes `promtool check metrics` (Prometheus's naming
// conventions). Without promtool the test fails: `make test` installs it
// (`make prometheus`).
func TestNodeMetricsPassPromtool(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatalf("promtool is not installed: `make prometheus` installs Debian's prometheus package (make test runs it first): %v", err)
	}
	n, err := New(fullConfig(t, prometheus.NewRegistry()))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	defer n.Close()
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
