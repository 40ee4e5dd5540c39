package e2e

import (
	"context"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/timerd/timerd/ingest/mqtest"
	"github.com/timerd/timerd/test/testkit"
)

// broker is the test's RabbitMQ: its URL and a name prefix unique to the
// test; the exchange and the node queues named after it are deleted when
// the test ends.
type broker struct {
	url, prefix, exchange string
}

func newBroker(t *testing.T) *broker {
	t.Helper()
	b := &broker{url: mqtest.URL(t), prefix: mqtest.Prefix(t)}
	b.exchange = b.prefix + ".x"
	mqtest.Cleanup(t, b.url, b.exchange)
	return b
}

// cleanupQueue deletes node's queue when the test ends (after the agents
// started later are stopped).
func (b *broker) cleanupQueue(t *testing.T, node string) {
	t.Helper()
	mqtest.Cleanup(t, b.url, "", b.queue(node))
}

// node is a node name unique to the test; queue is its queue.
func (b *broker) node(name string) string  { return b.prefix + "." + name }
func (b *broker) queue(node string) string { return "sensor.core.timer." + node }

// channel is a plain amqp091 channel for publishing by hand.
func (b *broker) channel(t *testing.T) *amqp.Channel {
	t.Helper()
	conn, err := amqp.Dial(b.url)
	if err != nil {
		t.Fatalf("amqp.Dial: %v", err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	ch, err := conn.Channel()
	if err != nil {
		t.Fatalf("amqp Channel: %v", err)
	}
	return ch
}

func (b *broker) publish(t *testing.T, ch *amqp.Channel, key string, body []byte) {
	t.Helper()
	err := ch.PublishWithContext(context.Background(), b.exchange, key, false, false,
		amqp.Publishing{DeliveryMode: amqp.Persistent, ContentType: "application/json", Body: body})
	if err != nil {
		t.Fatalf("publish %s: %v", key, err)
	}
}

// depth is the number of ready messages in queue.
func (b *broker) depth(t *testing.T, queue string) int { return mqtest.QueueDepth(t, b.url, queue) }

// attune is `timerd api --mq-url` with authentication: an admin token for
// the test's rule writes and a sensor token for the agent. Its dev methods
// (apiDo, createRule, events) act as admin.
type attune struct {
	*dev
	sensorToken string
}

var apiListenRe = regexp.MustCompile(`"url":"(http://127\.0\.0\.1:\d+)"`)

func startAttune(t *testing.T, b *broker) *attune {
	t.Helper()
	dir := t.TempDir()
	key := filepath.Join(dir, "signing.key")
	timerdOut(t, "token", "keygen", "--out", key)
	admin := timerdOut(t, "token", "issue", "--key-file", key, "--scope", "admin", "--sub", "e2e-admin", "--ttl", "2h")
	sensor := timerdOut(t, "token", "issue", "--key-file", key, "--scope", "sensor", "--sub", "e2e-node", "--login", "core.timer",
		"--trigger-types", "core.intervaltimer,core.crontimer,core.datetimetimer,core.timer", "--ttl", "2h")
	p := start(t, "api", "--addr", "127.0.0.1:0", "--data-dir", filepath.Join(dir, "api"), "--key-file", key,
		"--mq-url", b.url, "--mq-exchange", b.exchange)
	a := &attune{dev: &dev{proc: p, token: admin}, sensorToken: sensor}
	a.apiURL = p.waitOutput(apiListenRe, 30*time.Second)[1]
	return a
}

// timerdOut runs a short timerd command and returns its trimmed stdout.
func timerdOut(t *testing.T, args ...string) string {
	t.Helper()
	cmd := exec.Command(timerdBin, args...)
	cmd.Stderr = nil
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("timerd %v: %v", args[:2], err)
	}
	return strings.TrimSpace(string(out))
}

// cleanEnv is the test process's environment without ATTUNE_* and
// TIMERD_* variables.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "ATTUNE_") && !strings.HasPrefix(kv, "TIMERD_") {
			env = append(env, kv)
		}
	}
	return env
}

// agentEnv is the environment of an agent of a on b, as node, in dataDir.
func (a *attune) agentEnv(b *broker, node, dataDir string) []string {
	return append(cleanEnv(),
		"ATTUNE_API_URL="+a.apiURL,
		"ATTUNE_API_TOKEN="+a.sensorToken,
		"ATTUNE_MQ_URL="+b.url,
		"ATTUNE_MQ_EXCHANGE="+b.exchange,
		"TIMERD_DATA_DIR="+dataDir,
		"TIMERD_HTTP_ADDR=127.0.0.1:0",
		"TIMERD_BIND_ADDR=127.0.0.1:0", // gossip: agents of one test must not share 7946
		"TIMERD_NODE_NAME="+node,
		"TIMERD_QUEUE_EXPIRES=10m", // what a crashed run leaves goes away
	)
}

// agent is a running `timerd agent`.
type agent struct {
	*proc
	nodeURL string
}

var agentHTTPRe = regexp.MustCompile(`"http":"(http://127\.0\.0\.1:\d+)"`)

func startAgent(t *testing.T, env []string, args ...string) *agent {
	t.Helper()
	cmd := exec.Command(timerdBin, append([]string{"agent"}, args...)...)
	cmd.Env = env
	p := startCmd(t, cmd)
	ag := &agent{proc: p}
	ag.nodeURL = p.waitOutput(agentHTTPRe, 30*time.Second)[1]
	waitReady(t, ag.nodeURL, 30*time.Second)
	return ag
}

// metric sums the samples of name whose labels contain every one of
// labels (e.g. `result="applied"`).
func metric(m map[string]float64, name string, labels ...string) float64 {
	var sum float64
	for k, v := range m {
		if k != name && !strings.HasPrefix(k, name+"{") {
			continue
		}
		ok := true
		for _, l := range labels {
			if !strings.Contains(k, l) {
				ok = false
				break
			}
		}
		if ok {
			sum += v
		}
	}
	return sum
}

// follow runs act, then polls the node's metrics until cond holds, and
// returns how long that took; it fails the test after within.
func (ag *agent) follow(t *testing.T, what string, within time.Duration, act func(), cond func(m map[string]float64) bool) time.Duration {
	t.Helper()
	act()
	start := time.Now()
	testkit.Eventually(t, within, what+" followed", func() bool { return cond(metrics(t, ag.nodeURL)) })
	return time.Since(start)
}

func (a *attune) post(t *testing.T, path string, body any) {
	t.Helper()
	if code := a.apiDo(t, http.MethodPost, path, body, nil); code != http.StatusOK && code != http.StatusCreated {
		t.Fatalf("POST %s: status %d", path, code)
	}
}

// rabbitmqctl runs the local broker's rabbitmqctl.
func rabbitmqctl(args ...string) (string, error) {
	ctl, err := exec.LookPath("rabbitmqctl")
	if err != nil {
		ctl = "/usr/sbin/rabbitmqctl"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, ctl, args...).CombinedOutput()
	return string(out), err
}

// waitBrokerQuiet waits (up to within) until every client connection of the
// shared broker belongs to this test (its name holds mine), so that a
// restart does not pull the rug from under other packages' tests running
// at the same time.
func waitBrokerQuiet(t *testing.T, mine string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		out, err := rabbitmqctl("-q", "list_connections", "client_properties")
		if err != nil {
			t.Fatalf("rabbitmqctl list_connections: %v: %s", err, out)
		}
		foreign := 0
		for line := range strings.SplitSeq(strings.TrimSpace(out), "\n") {
			if line != "" && !strings.HasPrefix(line, "client_properties") && !strings.Contains(line, mine) {
				foreign++
			}
		}
		if foreign == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Logf("restarting the broker with %d other client connections open", foreign)
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// stopBroker stops the local broker's application (the Erlang node stays)
// and makes sure it is started again when the test ends, pass or fail.
// start starts it and waits until it is up.
func stopBroker(t *testing.T) (start func()) {
	t.Helper()
	started := false
	start = func() {
		if started {
			return
		}
		started = true
		if out, err := rabbitmqctl("-q", "start_app"); err != nil {
			t.Errorf("rabbitmqctl start_app: %v: %s", err, out)
		}
		if out, err := rabbitmqctl("-q", "await_startup"); err != nil {
			t.Errorf("rabbitmqctl await_startup: %v: %s", err, out)
		}
	}
	t.Cleanup(start)
	if out, err := rabbitmqctl("-q", "stop_app"); err != nil {
		t.Fatalf("rabbitmqctl stop_app: %v: %s", err, out)
	}
	return start
}
