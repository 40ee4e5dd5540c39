package main

import (
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/timerd/timerd/test/internal/benchkit"
)

func TestParseNodes(t *testing.T) {
	got, err := parseNodes("3, 5,10")
	if err != nil || len(got) != 3 || got[0] != 3 || got[1] != 5 || got[2] != 10 {
		t.Errorf("parseNodes(3, 5,10) = %v, %v", got, err)
	}
	for _, bad := range []string{"", "0", "3,x", "51", "-1"} {
		if _, err := parseNodes(bad); err == nil {
			t.Errorf("parseNodes(%q) = nil error, want one", bad)
		}
	}
}

// The counters are read from a /metrics page as the agent serves it: a sum over a
// label's values, a series by its labels, and a build without the byte counter told
// apart from one that counted nothing.
func TestParseMetrics(t *testing.T) {
	page := `# HELP timerd_cluster_network_bytes_total Bytes.
# TYPE timerd_cluster_network_bytes_total counter
timerd_cluster_network_bytes_total{direction="received",transport="tcp"} 100
timerd_cluster_network_bytes_total{direction="received",transport="udp"} 23
timerd_cluster_network_bytes_total{direction="sent",transport="tcp"} 1e+03
timerd_cluster_network_bytes_total{direction="sent",transport="udp"} 5
timerd_cluster_protocol_messages_sent_total{transport="tcp"} 2
timerd_cluster_protocol_messages_sent_total{transport="udp"} 40
timerd_cluster_protocol_messages_sent_totalish 1000
timerd_cluster_members{state="alive"} 3
broken line
`
	raw, err := benchkit.ParseMetrics(strings.NewReader(page))
	m := metrics(raw)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		what      string
		got, want float64
	}{
		{"sent", m.sum(`timerd_cluster_network_bytes_total{direction="sent"`), 1005},
		{"received", m.sum(`timerd_cluster_network_bytes_total{direction="received"`), 123},
		{"messages", m.sum("timerd_cluster_protocol_messages_sent_total"), 42},
		{"alive", m.get(`timerd_cluster_members{state="alive"}`), 3},
	} {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.what, c.got, c.want)
		}
	}
	if !m.has("timerd_cluster_network_bytes_total") || m.has("timerd_cluster_network_bytes") {
		t.Error("has: want the exact metric name only")
	}
}

// The stub lists every rule once over its pages, of the interval trigger only, with
// the totals a complete listing carries, and counts a key posted twice.
func TestStubListsAndCounts(t *testing.T) {
	st, err := startStub(250, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer st.close()
	seen := map[float64]bool{}
	for page := 1; ; page++ {
		var body struct {
			Items      []map[string]any
			Pagination struct {
				TotalItems int  `json:"total_items"`
				HasNext    bool `json:"has_next"`
			}
		}
		resp, err := http.Get(st.url + "/api/v1/rules?trigger_ref=core.intervaltimer&page_size=100&page=" + strconv.Itoa(page))
		if err != nil {
			t.Fatal(err)
		}
		err = json.NewDecoder(resp.Body).Decode(&body)
		resp.Body.Close()
		if err != nil || body.Pagination.TotalItems != 250 {
			t.Fatalf("page %d: %v, total %d", page, err, body.Pagination.TotalItems)
		}
		for _, it := range body.Items {
			seen[it["id"].(float64)] = true
			if p := it["trigger_params"].(map[string]any); p["interval"] != float64(30) {
				t.Fatalf("rule %v params %v, want interval 30", it["id"], p)
			}
		}
		if !body.Pagination.HasNext {
			break
		}
	}
	if len(seen) != 250 {
		t.Errorf("listed %d distinct rules, want 250", len(seen))
	}
	resp, err := http.Get(st.url + "/api/v1/rules?trigger_ref=core.crontimer")
	if err != nil {
		t.Fatal(err)
	}
	var cron struct{ Items []any }
	_ = json.NewDecoder(resp.Body).Decode(&cron)
	resp.Body.Close()
	if len(cron.Items) != 0 {
		t.Errorf("cron rules: %d, want none", len(cron.Items))
	}
	from := time.Now()
	for _, key := range []string{"1:1", "2:1", "1:1"} {
		req, _ := http.NewRequest(http.MethodPost, st.url+"/api/v1/events", strings.NewReader(`{}`))
		req.Header.Set("Idempotency-Key", key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil || resp.StatusCode != http.StatusCreated {
			t.Fatalf("POST event: %v %v", resp, err)
		}
		resp.Body.Close()
	}
	if events, repeated := st.window(from, time.Now().Add(time.Second)); events != 3 || repeated != 1 {
		t.Errorf("window: %d events, %d repeated keys; want 3 and 1", events, repeated)
	}
}

func TestAgentEnvJoinsTheSeed(t *testing.T) {
	env := strings.Join(agentEnv(2, 5, "/d", "127.0.0.1:1", "127.0.0.1:0", "127.0.0.1:7000", "http://api", "tok", "key"), "\n")
	for _, want := range []string{"TIMERD_NODE_NAME=node-02", "TIMERD_EXPECT=5", "TIMERD_JOIN=127.0.0.1:7000", "TIMERD_GOSSIP_KEY=key"} {
		if !strings.Contains(env, want+"\n") && !strings.HasSuffix(env, want) {
			t.Errorf("env lacks %s", want)
		}
	}
	if seed := strings.Join(agentEnv(0, 5, "/d", "a", "b", "", "u", "t", "k"), "\n"); strings.Contains(seed, "TIMERD_JOIN=") {
		t.Error("the seed joins nobody: want no TIMERD_JOIN")
	}
}

// Two builds print side by side with the ratios of this tree to the baseline; a build
// without the byte counter shows none and no ratio of bytes.
func TestPrintResultsRatios(t *testing.T) {
	builds := []benchkit.Build{{Name: "old", Bin: "/x"}, {Name: "this tree", Bin: "/y"}}
	results := map[string][]result{
		"old":       {{Nodes: 3, SentPerSec: perNode{-1, -1}, ReceivedPerSec: perNode{-1, -1}, CPUCores: perNode{0.2, 0.3}, MessagesPerSec: perNode{100, 110}}},
		"this tree": {{Nodes: 3, SentPerSec: perNode{1000, 1200}, ReceivedPerSec: perNode{900, 950}, CPUCores: perNode{0.1, 0.1}, MessagesPerSec: perNode{50, 55}}},
	}
	var b strings.Builder
	printResults(&b, config{Rules: 100, Every: time.Second, Window: time.Second}, builds, results)
	out := b.String()
	for _, want := range []string{"– (no counter)", "1000 (1200)", "0.50×", "ratio this tree / old"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "NaN") || strings.Contains(out, "Inf") || strings.Contains(out, "-1000") {
		t.Errorf("output has a ratio of a missing counter:\n%s", out)
	}
}
