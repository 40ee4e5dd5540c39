package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/timerd/timerd/ingest/mqtest"
	"github.com/timerd/timerd/test/testkit"
)

// followWithin is how soon a node must follow a rule change (the issue's
// bound).
const followWithin = time.Second

// Rules created, changed, disabled, re-enabled and deleted through the API
// (which publishes to RabbitMQ) are followed by `timerd agent` within 1 s;
// so are messages published by hand in both shapes of contract §1.
func TestAgentFollowsRuleLifecycle(t *testing.T) {
	b := newBroker(t)
	node := b.node("n1")
	b.cleanupQueue(t, node)
	api := startAttune(t, b)
	ag := startAgent(t, api.agentEnv(b, node, t.TempDir()))

	rulesKnown := func(n float64) func(map[string]float64) bool {
		return func(m map[string]float64) bool { return metric(m, "timerd_rules_known") == n }
	}
	applied := func(typ string, n float64) func(map[string]float64) bool {
		return func(m map[string]float64) bool {
			return metric(m, "timerd_lifecycle_messages_total", `type="`+typ+`"`, `result="applied"`) == n
		}
	}
	var worst time.Duration
	check := func(what string, d time.Duration) {
		t.Logf("%-40s followed in %s", what, d.Round(time.Millisecond))
		worst = max(worst, d)
		if d > followWithin {
			t.Errorf("%s: followed in %s, want within %s", what, d, followWithin)
		}
	}

	check("API: create (interval 1h)", ag.follow(t, "create", 5*time.Second, func() {
		api.createRule(t, "e2e.follow", "core.intervaltimer", map[string]any{"interval": 3600})
	}, rulesKnown(1)))
	changed := time.Now()
	check("API: change the interval to 1s (PUT)", ag.follow(t, "change", 5*time.Second, func() {
		if code := api.apiDo(t, http.MethodPut, "/api/v1/rules/e2e.follow", map[string]any{"trigger_params": map[string]any{"interval": 1}}, nil); code != http.StatusOK {
			t.Fatalf("PUT rule: status %d", code)
		}
	}, applied("RuleEnabled", 1)))
	// The new schedule runs: a 1 h timer would not fire now.
	testkit.Eventually(t, 3*time.Second, "first event on the changed schedule", func() bool { return len(api.events(t, "e2e.follow")) > 0 })
	t.Logf("first event on the new schedule %s after the change", time.Since(changed).Round(time.Millisecond))
	check("API: disable", ag.follow(t, "disable", 5*time.Second, func() {
		api.post(t, "/api/v1/rules/e2e.follow/disable", nil)
	}, rulesKnown(0)))
	check("API: re-enable", ag.follow(t, "enable", 5*time.Second, func() {
		api.post(t, "/api/v1/rules/e2e.follow/enable", nil)
	}, rulesKnown(1)))
	check("API: delete", ag.follow(t, "delete", 5*time.Second, func() {
		if code := api.apiDo(t, http.MethodDelete, "/api/v1/rules/e2e.follow", nil, nil); code != http.StatusOK {
			t.Fatalf("DELETE rule: status %d", code)
		}
	}, rulesKnown(0)))

	// By hand, in each shape of contract §1.
	ch := b.channel(t)
	check("hand: flat RuleCreated (trigger_type)", ag.follow(t, "flat create", 5*time.Second, func() {
		b.publish(t, ch, "rule.created", []byte(`{"event_type":"RuleCreated","rule_id":990001,"rule_ref":"hand.flat",
			"trigger_type":"core.timer","trigger_params":{"interval_seconds":3600},"enabled":true,"timestamp":"2025-01-27T12:34:56Z"}`))
	}, rulesKnown(1)))
	check("hand: envelope RuleCreated (message_type)", ag.follow(t, "envelope create", 5*time.Second, func() {
		b.publish(t, ch, "rule.created", []byte(`{"message_id":"m-1","correlation_id":"m-1","message_type":"RuleCreated","version":"1.0",
			"timestamp":"2026-01-27T12:34:56.789Z","headers":{"retry_count":0,"source_service":"api-service"},
			"payload":{"rule_id":990002,"rule_ref":"ops.nightly","trigger_id":7,"trigger_ref":"core.intervaltimer",
			"action_ref":"core.echo","trigger_params":{"interval":5,"unit":"seconds"},"enabled":true}}`))
	}, rulesKnown(2)))
	check("hand: flat rule.deleted spelling", ag.follow(t, "flat delete", 5*time.Second, func() {
		b.publish(t, ch, "rule.deleted", []byte(`{"event_type":"rule.deleted","rule_id":990001,"trigger_type":"core.timer"}`))
	}, rulesKnown(1)))
	check("hand: envelope rule_disabled spelling", ag.follow(t, "envelope disable", 5*time.Second, func() {
		b.publish(t, ch, "rule.disabled", []byte(`{"message_type":"rule_disabled","payload":{"rule_id":990002,"trigger_ref":"core.intervaltimer","enabled":false}}`))
	}, rulesKnown(0)))
	t.Logf("slowest follow: %s", worst.Round(time.Millisecond))

	if err := ag.stop(20 * time.Second); err != nil {
		t.Errorf("timerd agent after SIGTERM: %v, want exit status 0", err)
	}
	if strings.Contains(ag.output(), api.sensorToken) {
		t.Error("the sensor token appears in the agent's output")
	}
	for _, want := range []string{`"timestamp":`, `"level":"info"`, `"sensor":"core.timer"`, `"message":"node ready"`} {
		if !strings.Contains(ag.output(), want) {
			t.Errorf("agent log lacks %s", want)
		}
	}
}

// RabbitMQ is restarted (stop_app, start_app) while the agent runs and a
// rule fires every second; rules are changed once it is back. The agent
// reconnects by itself, follows every change, and no slot is missing.
func TestAgentSurvivesBrokerRestart(t *testing.T) {
	if os.Getenv("TIMERD_TEST_MQ_URL") != "" {
		if _, err := exec.LookPath("rabbitmqctl"); err != nil {
			t.Skip("TIMERD_TEST_MQ_URL names a broker this machine has no rabbitmqctl for; ingest's proxy tests cover the reconnect")
		}
	}
	mqtest.Exclusive(t) // before newBroker: other packages' broker tests wait for the restart
	b := newBroker(t)
	node := b.node("n1")
	b.cleanupQueue(t, node)
	api := startAttune(t, b)
	ag := startAgent(t, api.agentEnv(b, node, t.TempDir()))

	api.createRule(t, "restart.tick", "core.intervaltimer", map[string]any{"interval": 1})
	testkit.Eventually(t, 5*time.Second, "two events of restart.tick", func() bool { return len(api.events(t, "restart.tick")) >= 2 })

	waitBrokerQuiet(t, b.prefix, 60*time.Second)
	startBroker := stopBroker(t)
	stopped := time.Now()
	testkit.Eventually(t, 10*time.Second, "the agent sees the broker gone", func() bool {
		return metric(metrics(t, ag.nodeURL), "timerd_mq_connected") == 0
	})
	// The node keeps firing and delivering while the broker is down.
	during := len(api.events(t, "restart.tick"))
	testkit.Eventually(t, 5*time.Second, "two more events while the broker is down", func() bool {
		return len(api.events(t, "restart.tick")) >= during+2
	})
	startBroker()
	t.Logf("broker down for %s", time.Since(stopped).Round(time.Millisecond))

	// Changes right away: what the agent has not reconnected for yet waits
	// in its durable queue.
	back := time.Now()
	api.createRule(t, "restart.new", "core.crontimer", map[string]any{"expression": "0 0 * * *"})
	api.post(t, "/api/v1/rules/restart.tick/disable", nil)
	disabled := time.Now()
	testkit.Eventually(t, 40*time.Second, "changes after the restart followed", func() bool {
		m := metrics(t, ag.nodeURL)
		return metric(m, "timerd_rules_known") == 1 &&
			metric(m, "timerd_lifecycle_messages_total", `type="RuleCreated"`, `result="applied"`) == 2 &&
			metric(m, "timerd_lifecycle_messages_total", `type="RuleDisabled"`, `result="applied"`) == 1
	})
	t.Logf("changes followed %s after the broker was back", time.Since(back).Round(time.Millisecond))
	m := metrics(t, ag.nodeURL)
	if got := metric(m, "timerd_mq_reconnects_total"); got < 1 {
		t.Errorf("timerd_mq_reconnects_total = %v, want at least 1", got)
	}
	if got := metric(m, "timerd_mq_connected"); got != 1 {
		t.Errorf("timerd_mq_connected = %v after the restart, want 1", got)
	}
	if strings.Contains(api.output(), "publish lifecycle message failed") {
		t.Errorf("the API failed to publish after the broker came back")
	}

	// No fire lost: every slot from the first to the disable, once.
	testkit.Eventually(t, 10*time.Second, "outbox drained", func() bool { return outboxStatus(t, ag.nodeURL).OutboxDepth == 0 })
	slots := slotsOf(t, api.events(t, "restart.tick"))
	for i := 1; i < len(slots); i++ {
		if gap := slots[i].slot.Sub(slots[i-1].slot); gap != time.Second {
			t.Errorf("slot %s follows %s: a slot is missing", slots[i].slot, slots[i-1].slot)
		}
	}
	if last := slots[len(slots)-1].slot; last.Before(disabled.Add(-2 * time.Second)) {
		t.Errorf("last slot %s, disabled at %s: slots are missing at the end", last, disabled)
	}
	t.Logf("restart.tick: %d slots in a row, none missing", len(slots))
}

// Rules changed while the agent is stopped reach it at its next start: the
// API's changes through the reconcile and its durable queue, and a change
// that only the queue knows (published by hand) from the queue alone.
func TestAgentPicksUpChangesMadeWhileStopped(t *testing.T) {
	t.Parallel() // single agent, mostly waiting: run beside the others (Makefile: -parallel)
	b := newBroker(t)
	node := b.node("n1")
	b.cleanupQueue(t, node)
	api := startAttune(t, b)
	env := api.agentEnv(b, node, t.TempDir())
	ag := startAgent(t, env)
	api.createRule(t, "stopped.a", "core.intervaltimer", map[string]any{"interval": 3600})
	testkit.Eventually(t, 5*time.Second, "stopped.a followed", func() bool { return metric(metrics(t, ag.nodeURL), "timerd_rules_known") == 1 })
	if err := ag.stop(20 * time.Second); err != nil {
		t.Fatalf("timerd agent after SIGTERM: %v, want exit status 0", err)
	}

	api.createRule(t, "stopped.b", "core.intervaltimer", map[string]any{"interval": 3600})
	api.post(t, "/api/v1/rules/stopped.a/disable", nil)
	ch := b.channel(t)
	b.publish(t, ch, "rule.created", []byte(`{"event_type":"RuleCreated","rule_id":990100,"rule_ref":"queue.only",
		"trigger_type":"core.timer","trigger_params":{"interval_seconds":3600}}`))
	testkit.Eventually(t, 5*time.Second, "three messages kept in the stopped node's queue", func() bool { return b.depth(t, b.queue(node)) == 3 })

	ag2 := startAgent(t, env)
	testkit.Eventually(t, 5*time.Second, "changes picked up", func() bool {
		m := metrics(t, ag2.nodeURL)
		return metric(m, "timerd_rules_known") == 2 &&
			metric(m, "timerd_lifecycle_messages_total", `type="RuleCreated"`, `result="applied"`) == 1 &&
			metric(m, "timerd_lifecycle_messages_total") == 3
	})
	testkit.Eventually(t, 5*time.Second, "queue drained", func() bool { return b.depth(t, b.queue(node)) == 0 })
}

// 10,000 malformed or hostile messages: the agent keeps running, counts
// every one as invalid or ignored, and no rule changes.
func TestAgentSurvivesHostileMessages(t *testing.T) {
	t.Parallel() // single agent, mostly waiting: run beside the others (Makefile: -parallel)
	b := newBroker(t)
	node := b.node("n1")
	b.cleanupQueue(t, node)
	api := startAttune(t, b)
	ag := startAgent(t, api.agentEnv(b, node, t.TempDir()))
	api.createRule(t, "calm", "core.intervaltimer", map[string]any{"interval": 3600})
	testkit.Eventually(t, 5*time.Second, "calm followed", func() bool { return metric(metrics(t, ag.nodeURL), "timerd_rules_known") == 1 })
	before := outboxStatus(t, ag.nodeURL)

	const total = 10_000
	ch := b.channel(t)
	keys := []string{"rule.created", "rule.enabled", "rule.disabled", "rule.deleted"}
	rng := rand.New(rand.NewPCG(1, 2))
	start := time.Now()
	for i := range total {
		b.publish(t, ch, keys[i%len(keys)], hostile(i, rng))
	}
	t.Logf("published %d hostile messages in %s", total, time.Since(start).Round(time.Millisecond))
	var m map[string]float64
	testkit.Eventually(t, 60*time.Second, "every hostile message counted", func() bool {
		m = metrics(t, ag.nodeURL)
		return metric(m, "timerd_lifecycle_messages_total", `result="invalid"`)+
			metric(m, "timerd_lifecycle_messages_total", `result="ignored"`) >= total
	})
	t.Logf("%d hostile messages counted %s after the first was published", total, time.Since(start).Round(time.Millisecond))
	bad := metric(m, "timerd_lifecycle_messages_total", `result="invalid"`) + metric(m, "timerd_lifecycle_messages_total", `result="ignored"`)
	all := metric(m, "timerd_lifecycle_messages_total")
	if bad != total || all != total+1 { // +1: calm's RuleCreated
		t.Errorf("lifecycle messages: %v invalid|ignored of %v in all, want %d of %d", bad, all, total, total+1)
	}
	if got := metric(m, "timerd_rules_known"); got != 1 {
		t.Errorf("rules known after the hostile messages = %v, want 1", got)
	}
	if after := outboxStatus(t, ag.nodeURL); after != before {
		t.Errorf("node status changed: %+v → %+v", before, after)
	}
	if resp, err := http.Get(ag.nodeURL + "/healthz"); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("/healthz after the hostile messages: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	testkit.Eventually(t, 5*time.Second, "queue drained", func() bool { return b.depth(t, b.queue(node)) == 0 })
	if err := ag.stop(20 * time.Second); err != nil {
		t.Errorf("timerd agent after SIGTERM: %v, want exit status 0", err)
	}
}

// hostile returns message i of the hostile set: each kind must be counted
// invalid or ignored, and none may name a rule that exists.
func hostile(i int, rng *rand.Rand) []byte {
	id := 800_000 + i
	env := func(payload string) []byte {
		return fmt.Appendf(nil, `{"message_id":"h-%d","message_type":"RuleCreated","payload":%s}`, i, payload)
	}
	if i%500 == 0 { // 20 of them: huge params (~100 KB)
		return env(fmt.Sprintf(`{"rule_id":%d,"trigger_ref":"core.intervaltimer","trigger_params":{"interval":5,"pad":"%s"}}`,
			id, strings.Repeat("x", 100<<10)))
	}
	switch i % 20 {
	case 0:
		return []byte(`{"message_type":"RuleCreated","payload":{`) // invalid JSON
	case 1:
		garbage := make([]byte, 1+rng.IntN(512))
		for j := range garbage {
			garbage[j] = byte(rng.UintN(256))
		}
		garbage[0] = 0xff // never valid JSON
		return garbage
	case 2:
		return env(`{"rule_id":"abc","trigger_ref":"core.intervaltimer","trigger_params":{"interval":5}}`)
	case 3:
		return env(fmt.Sprintf(`{"rule_id":%d,"trigger_ref":"core.intervaltimer","trigger_params":"every minute"}`, id))
	case 4:
		return env(fmt.Sprintf(`{"rule_id":%d,"trigger_ref":"core.intervaltimer","trigger_params":{"interval":5},"enabled":"yes"}`, id))
	case 5:
		return env(`{"rule_id":0,"trigger_ref":"core.intervaltimer","trigger_params":{"interval":5}}`)
	case 6:
		return env(`{"rule_id":-7,"trigger_ref":"core.intervaltimer","trigger_params":{"interval":5}}`)
	case 7:
		return env(`{"rule_id":1.5,"trigger_ref":"core.intervaltimer","trigger_params":{"interval":5}}`)
	case 8:
		return env(fmt.Sprintf(`{"rule_id":%d,"trigger_ref":"core.webhook","trigger_params":{"url":"http://x"}}`, id)) // ignored
	case 9:
		return env(fmt.Sprintf(`{"rule_id":%d,"trigger_ref":"core.intervaltimer","trigger_params":{"interval":-5}}`, id))
	case 10:
		return env(fmt.Sprintf(`{"rule_id":%d,"trigger_ref":"core.crontimer","trigger_params":{"expression":"* * * * * * * * *"}}`, id))
	case 11:
		return fmt.Appendf(nil, `{"message_type":"RuleExploded","payload":{"rule_id":%d}}`, id)
	case 12:
		return []byte(`[1,2,3]`)
	case 13:
		return []byte(`null`)
	case 14:
		return []byte{}
	case 15:
		return env(fmt.Sprintf(`{"rule_id":%d,"trigger_ref":"core.datetimetimer","trigger_params":{"fire_at":"tomorrow"}}`, id))
	case 16:
		return fmt.Appendf(nil, `{"event_type":"RuleCreated","rule_id":%d,"trigger_type":"core.timer","trigger_params":{"interval_seconds":-1}}`, id)
	case 17:
		return env(`{"rule_id":1e400,"trigger_ref":"core.intervaltimer","trigger_params":{"interval":5}}`)
	case 18:
		return fmt.Appendf(nil, `{"message_type":"RuleDisabled","payload":{"rule_id":%d,"trigger_ref":"core.webhook"}}`, id) // ignored
	default:
		return env(`{"trigger_ref":"core.intervaltimer","trigger_params":{"interval":5}}`) // no rule_id
	}
}

// `timerd agent` with a missing or malformed setting exits 2 with one line
// naming it, and never prints the token; an unreachable API exits 1 with a
// clear line.
func TestAgentConfigErrorsExit2(t *testing.T) {
	t.Parallel() // single agent, mostly waiting: run beside the others (Makefile: -parallel)
	dir := t.TempDir()
	key := filepath.Join(dir, "key")
	timerdOut(t, "token", "keygen", "--out", key)
	tok := timerdOut(t, "token", "issue", "--key-file", key, "--scope", "sensor", "--sub", "n", "--trigger-types", "core.timer", "--ttl", "1h")
	base := map[string]string{"ATTUNE_API_URL": "http://127.0.0.1:1", "ATTUNE_API_TOKEN": tok,
		"ATTUNE_MQ_URL": "amqp://127.0.0.1:1/", "TIMERD_DATA_DIR": filepath.Join(dir, "data")}
	tests := []struct {
		name  string
		set   map[string]string // "" unsets
		stdin string
		args  []string
		code  int
		want  string // the one line starts with it
	}{
		{"api url missing", map[string]string{"ATTUNE_API_URL": ""}, "", nil, 2, "timerd: ATTUNE_API_URL: required"},
		{"api url not http", map[string]string{"ATTUNE_API_URL": "ftp://x"}, "", nil, 2, `timerd: ATTUNE_API_URL: "ftp://x" is not an http(s) URL`},
		{"token missing", map[string]string{"ATTUNE_API_TOKEN": ""}, "", nil, 2, "timerd: ATTUNE_API_TOKEN: required"},
		{"token malformed", map[string]string{"ATTUNE_API_TOKEN": tok[:len(tok)/2]}, "", nil, 2, "timerd: ATTUNE_API_TOKEN: is not a JWT"},
		{"mq url not amqp", map[string]string{"ATTUNE_MQ_URL": "redis://u:pw@x/"}, "", nil, 2, `timerd: ATTUNE_MQ_URL: scheme "redis"`},
		{"data dir missing", map[string]string{"TIMERD_DATA_DIR": ""}, "", nil, 2, "timerd: TIMERD_DATA_DIR (or --data-dir): required"},
		{"workers not a number", map[string]string{"TIMERD_WORKERS": "-3"}, "", nil, 2, `timerd: TIMERD_WORKERS: "-3"`},
		{"sensor triggers not JSON", map[string]string{"ATTUNE_SENSOR_TRIGGERS": "{oops"}, "", nil, 2, "timerd: ATTUNE_SENSOR_TRIGGERS: is not a JSON array"},
		{"bad flag value", nil, "", []string{"--queue-expires", "forever"}, 2, `timerd: --queue-expires: "forever" is not a duration`},
		{"stdin config bad JSON", nil, `{"api_url":"http://x","api_token":"` + tok + `",}`, []string{"--stdin-config"}, 2,
			"timerd: --stdin-config: stdin is not valid JSON"},
		{"stdin config missing api_url", nil, `{"api_token":"` + tok + `","data_dir":"/tmp/x"}`, []string{"--stdin-config"}, 2,
			`timerd: stdin config "api_url": required`},
		{"api unreachable", nil, "", nil, 1, "timerd: ATTUNE_API_URL: GET http://127.0.0.1:1/health:"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := cleanEnv()
			for k, v := range base {
				if nv, ok := tt.set[k]; ok {
					v = nv
				}
				if v != "" {
					env = append(env, k+"="+v)
				}
			}
			for k, v := range tt.set {
				if _, ok := base[k]; !ok {
					env = append(env, k+"="+v)
				}
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, timerdBin, append([]string{"agent"}, tt.args...)...)
			cmd.Env = env
			cmd.Stdin = strings.NewReader(tt.stdin)
			var stderr strings.Builder
			cmd.Stderr = &stderr
			err := cmd.Run()
			code := cmd.ProcessState.ExitCode()
			if code != tt.code {
				t.Errorf("exit status %d (%v), want %d; stderr:\n%s", code, err, tt.code, stderr.String())
			}
			lines := strings.Split(strings.TrimSpace(stderr.String()), "\n")
			last := lines[len(lines)-1]
			if tt.code == 2 && len(lines) != 1 {
				t.Errorf("stderr has %d lines, want 1:\n%s", len(lines), stderr.String())
			}
			if !strings.HasPrefix(last, tt.want) {
				t.Errorf("last line of stderr = %q, want it to start %q", last, tt.want)
			}
			if strings.Contains(stderr.String(), tok) || strings.Contains(stderr.String(), ":pw@") {
				t.Errorf("stderr holds the token or a password:\n%s", stderr.String())
			}
		})
	}
}

var devLifecycleRe = regexp.MustCompile(`lifecycle: RabbitMQ \(exchange (\S+), queue (\S+)\)`)

// `timerd dev --mq-url` runs the whole path through the broker: a rule
// created through its API fires.
func TestDevOnRabbitMQ(t *testing.T) {
	b := newBroker(t)
	dir := t.TempDir()
	p := start(t, "dev", "--data-dir", dir, "--api-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--log-format", "text",
		"--mq-url", b.url, "--mq-exchange", b.exchange)
	d := &dev{proc: p}
	m := p.waitOutput(devLifecycleRe, 30*time.Second)
	if m[1] != b.exchange {
		t.Errorf("dev's exchange = %s, want %s", m[1], b.exchange)
	}
	mqtest.Cleanup(t, b.url, "", m[2])
	d.apiURL = p.waitOutput(apiURLRe, 5*time.Second)[1]
	d.nodeURL = p.waitOutput(nodeURLRe, 5*time.Second)[1]
	tok, err := os.ReadFile(filepath.Join(dir, "admin.token"))
	if err != nil {
		t.Fatal(err)
	}
	d.token = strings.TrimSpace(string(tok))
	waitReady(t, d.nodeURL, 30*time.Second)

	d.createRule(t, "dev.mq", "core.intervaltimer", map[string]any{"interval": 1})
	testkit.Eventually(t, 3*time.Second, "an event of dev.mq", func() bool { return len(d.events(t, "dev.mq")) > 0 })
	mt := metrics(t, d.nodeURL)
	if metric(mt, "timerd_mq_connected") != 1 || metric(mt, "timerd_mq_published_total", `result="confirmed"`) != 1 {
		t.Errorf("dev on RabbitMQ: mq_connected %v, published confirmed %v; want 1 and 1",
			metric(mt, "timerd_mq_connected"), metric(mt, "timerd_mq_published_total", `result="confirmed"`))
	}
	if err := d.stop(20 * time.Second); err != nil {
		t.Errorf("timerd dev after SIGTERM: %v, want exit status 0", err)
	}
}
