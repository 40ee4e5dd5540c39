package e2e

import (
	"bufio"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/timerd/timerd/test/testkit"
)

// soakSetting reads a duration from the environment, for `make soak`.
func soakSetting(t *testing.T, name string, def time.Duration) time.Duration {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		t.Fatalf("%s=%q: %v", name, v, err)
	}
	return d
}

// A node whose sensor token lives a short time keeps delivering for several
// lifetimes: the token is refreshed at 80 % of its TTL, swapped with no
// pause, and no 401 ever becomes a dead letter. `make soak` runs it with the
// issue's figures (a 2-minute token for 10 minutes); make test with a
// 10-second token for 50 seconds (five lifetimes).
func TestDevSensorTokenRefreshesWhileDelivering(t *testing.T) {
	t.Parallel() // single agent, mostly waiting: run beside the others (Makefile: -parallel)
	ttl := soakSetting(t, "TIMERD_SOAK_TOKEN_TTL", 10*time.Second)
	run := soakSetting(t, "TIMERD_SOAK_DURATION", 50*time.Second)

	dir := t.TempDir()
	p := start(t, "dev", "--data-dir", dir, "--api-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0",
		"--log-format", "json", "--sensor-token-ttl", ttl.String())
	d := &dev{proc: p}
	d.apiURL = p.waitOutput(apiURLRe, 30*time.Second)[1]
	d.nodeURL = p.waitOutput(nodeURLRe, 5*time.Second)[1]
	tok, err := os.ReadFile(dir + "/admin.token")
	if err != nil {
		t.Fatal(err)
	}
	d.token = strings.TrimSpace(string(tok))
	waitReady(t, d.nodeURL, 30*time.Second)

	const rules = 5
	for i := range rules {
		d.createRule(t, "soak."+strconv.Itoa(i), "core.intervaltimer", map[string]any{"interval": 1})
	}
	start := time.Now()
	for time.Since(start) < run {
		time.Sleep(time.Second) // the soak itself: let it run
		if st := outboxStatus(t, d.nodeURL); st.DeadLetters != 0 {
			t.Fatalf("after %s: %d dead letters", time.Since(start).Round(time.Second), st.DeadLetters)
		}
	}
	testkit.Eventually(t, 10*time.Second, "outbox drained", func() bool { return outboxStatus(t, d.nodeURL).OutboxDepth == 0 })

	m := metrics(t, d.nodeURL)
	wantRefreshes := int(run/(ttl*8/10)) - 1
	if got := int(m[`timerd_token_refreshes_total{result="ok"}`]); got < wantRefreshes {
		t.Errorf("token refreshes = %d over %s with a %s token, want at least %d", got, run, ttl, wantRefreshes)
	}
	if got := m[`timerd_token_refreshes_total{result="error"}`]; got != 0 {
		t.Errorf("failed token refreshes = %v, want 0", got)
	}
	if got := m[`timerd_deliveries_total{code="401"}`]; got != 0 {
		t.Errorf("%v event POSTs answered 401: a token was used after it expired", got)
	}
	// Every slot of every rule, from its first to its last, is stored once.
	for i := range rules {
		slots := slotsOf(t, d.events(t, "soak."+strconv.Itoa(i)))
		for j := 1; j < len(slots); j++ {
			if gap := slots[j].slot.Sub(slots[j-1].slot); gap != time.Second {
				t.Errorf("soak.%d: slot %s follows %s: a slot is missing", i, slots[j].slot, slots[j-1].slot)
			}
		}
		if span := slots[len(slots)-1].slot.Sub(slots[0].slot); span < run-3*time.Second {
			t.Errorf("soak.%d: events span %s, want about %s", i, span, run)
		}
	}
	t.Logf("%s with a %s token: %v refreshes, %v deliveries", run, ttl,
		m[`timerd_token_refreshes_total{result="ok"}`], m[`timerd_deliveries_total{code="201"}`])
	if err := p.stop(20 * time.Second); err != nil {
		t.Errorf("timerd dev after SIGTERM: %v", err)
	}
	if strings.Contains(p.output(), d.token) {
		t.Error("the admin token appears in the output of timerd dev")
	}
}

type nodeStatusJSON struct {
	OutboxDepth int `json:"outbox_depth"`
	DeadLetters int `json:"dead_letters"`
}

func outboxStatus(t *testing.T, nodeURL string) nodeStatusJSON {
	t.Helper()
	st, err := nodeStatus[nodeStatusJSON](nodeURL)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// metrics reads the node's Prometheus text into "name{labels}" → value.
func metrics(t *testing.T, nodeURL string) map[string]float64 {
	t.Helper()
	return metricsWith(t, nodeURL, "")
}

// apiMetrics reads the metrics of `timerd api` (a's admin token may read them).
func (d *dev) apiMetrics(t *testing.T) map[string]float64 {
	t.Helper()
	return metricsWith(t, d.apiURL, d.token)
}

// metricsWith reads base's /metrics with bearer token ("" for none); any
// answer but 200 fails the test (an empty map would pass checks of zero).
func metricsWith(t *testing.T, base, token string) map[string]float64 {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, base+"/metrics", nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s/metrics: status %d", base, resp.StatusCode)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err == nil {
			out[line[:i]] = v
		}
	}
	return out
}
