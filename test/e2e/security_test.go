package e2e

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/timerd/timerd/test/testkit"
)

// A real agent whose ATTUNE_API_URL carries a password and whose operator
// endpoints want TIMERD_HTTP_TOKEN_FILE's token: the password is never
// logged or shown (/v1/status shows xxxxx), /v1/status refuses a caller
// without the token and `timerd status --token-file` reads it, probes and
// scrapes stay open, and events still flow through the URL.
func TestAgentHidesSecrets(t *testing.T) {
	t.Parallel() // single agent, mostly waiting: run beside the others (Makefile: -parallel)
	b := newBroker(t)
	node := b.node("secrets")
	b.cleanupQueue(t, node)
	api := startAttune(t, b)
	const password = "hunter2-s3cret"
	withUser := strings.Replace(api.apiURL, "http://", "http://timerd:"+password+"@", 1)
	tokFile := filepath.Join(t.TempDir(), "http.token")
	const opToken = "operator-token-e2e-0123456789"
	if err := os.WriteFile(tokFile, []byte(opToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	env := api.agentEnv(b, node, t.TempDir())
	env = append(slices.DeleteFunc(env, func(kv string) bool { return strings.HasPrefix(kv, "ATTUNE_API_URL=") }),
		"ATTUNE_API_URL="+withUser, "TIMERD_HTTP_TOKEN_FILE="+tokFile)
	ag := startAgent(t, env)

	api.createRule(t, "secret.steady", "core.intervaltimer", map[string]any{"interval": 1})
	testkit.Eventually(t, 10*time.Second, "an event through the URL with a password", func() bool { return len(api.events(t, "secret.steady")) > 0 })

	for _, open := range []string{"/metrics", "/healthz", "/readyz"} {
		resp, err := http.Get(ag.nodeURL + open)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("GET %s without a token = %d, want 200", open, resp.StatusCode)
		}
	}
	resp, err := http.Get(ag.nodeURL + "/v1/status")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("GET /v1/status without the token = %d, want 401", resp.StatusCode)
	}
	cmd := exec.Command(timerdBin, "status", "--json", "--addr", ag.nodeURL, "--token-file", tokFile)
	cmd.Env = cleanEnv()
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("timerd status --token-file: %v", err)
	}
	var st struct {
		APIURL string `json:"api_url"`
	}
	if err := json.Unmarshal(out, &st); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(out), password) || !strings.Contains(st.APIURL, "timerd:xxxxx@") {
		t.Errorf("/v1/status api_url = %q, want the password as xxxxx", st.APIURL)
	}
	if err := ag.stop(20 * time.Second); err != nil {
		t.Errorf("agent after SIGTERM: %v", err)
	}
	for what, secret := range map[string]string{"the API URL's password": password, "the operator token": opToken, "the sensor token": api.sensorToken} {
		if strings.Contains(ag.output(), secret) {
			t.Errorf("%s appears in the agent's output", what)
		}
	}
	if !strings.Contains(ag.output(), "timerd:xxxxx@") {
		t.Errorf("the agent's start log does not show the API URL redacted")
	}
}

// mqUser creates a RabbitMQ user of the local broker with the given
// permissions on vhost / (configure, write, read regular expressions) and
// returns its URL; the user is deleted when the test ends.
func mqUser(t *testing.T, b *broker, name string, configure, write, read string) string {
	t.Helper()
	if os.Getenv("TIMERD_TEST_MQ_URL") != "" {
		if _, err := exec.LookPath("rabbitmqctl"); err != nil {
			t.Skip("TIMERD_TEST_MQ_URL names a broker this machine has no rabbitmqctl for: users cannot be made")
		}
	}
	const password = "least-privilege-pw"
	if out, err := rabbitmqctl("add_user", name, password); err != nil {
		t.Fatalf("rabbitmqctl add_user: %v: %s", err, out)
	}
	t.Cleanup(func() { _, _ = rabbitmqctl("delete_user", name) })
	if out, err := rabbitmqctl("set_permissions", "-p", "/", name, configure, write, read); err != nil {
		t.Fatalf("rabbitmqctl set_permissions: %v: %s", err, out)
	}
	u, err := url.Parse(b.url)
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.UserPassword(name, password)
	return u.String()
}

// A node and the API work with exactly the RabbitMQ permissions
// docs/security.md gives them, and no more: the node follows a rule made
// through the API, and cannot publish a lifecycle message itself (it could
// otherwise delete rules on every node).
func TestLeastRabbitMQPermissions(t *testing.T) {
	t.Parallel() // single agent, mostly waiting: run beside the others (Makefile: -parallel)
	b := newBroker(t)
	node := b.node("least")
	b.cleanupQueue(t, node)
	q, x := regexp.QuoteMeta(b.queue(node)), regexp.QuoteMeta(b.exchange)
	apiUser := &broker{url: mqUser(t, b, node+"-api", "^"+x+"$", "^"+x+"$", "^$"), prefix: b.prefix, exchange: b.exchange}
	nodeURL := mqUser(t, b, node+"-node", "^"+q+"$", "^"+q+"$", "^("+q+"|"+x+")$")
	api := startAttune(t, apiUser)
	// The API declares the exchange when it first publishes; a node may not.
	api.createRule(t, "least.first", "core.intervaltimer", map[string]any{"interval": 3600})
	env := append(api.agentEnv(b, node, t.TempDir()), "ATTUNE_MQ_URL="+nodeURL)
	ag := startAgent(t, env)
	ag.follow(t, "a rule made through the API, over RabbitMQ", 10*time.Second, func() {
		api.createRule(t, "least.rule", "core.intervaltimer", map[string]any{"interval": 3600})
	}, func(m map[string]float64) bool {
		return metric(m, "timerd_rules_known") == 2 && metric(m, "timerd_lifecycle_messages_total", `result="applied"`) >= 1
	})

	// The node's user may not publish to the exchange.
	conn, err := amqp.Dial(nodeURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	closed := ch.NotifyClose(make(chan *amqp.Error, 1))
	_ = ch.PublishWithContext(context.Background(), b.exchange, "rule.deleted", false, false,
		amqp.Publishing{Body: []byte(`{"event_type":"RuleDeleted","rule_id":1,"trigger_type":"core.intervaltimer"}`)})
	select {
	case e := <-closed:
		if e == nil || e.Code != amqp.AccessRefused {
			t.Errorf("publishing with the node's user closed the channel with %v, want 403 ACCESS_REFUSED", e)
		}
	case <-time.After(5 * time.Second):
		t.Errorf("the node's user published to the exchange: it could delete rules on every node")
	}
	time.Sleep(500 * time.Millisecond)
	if known := metric(metrics(t, ag.nodeURL), "timerd_rules_known"); known != 2 {
		t.Errorf("timerd_rules_known = %v after the refused publish, want 2", known)
	}
}
