package node

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/timerd/timerd/ingest"
	"github.com/timerd/timerd/ingest/apiserver"
	"github.com/timerd/timerd/ingest/attune"
	"github.com/timerd/timerd/ingest/mqtest"
	"github.com/timerd/timerd/ingest/pubsub"
	"github.com/timerd/timerd/test/testkit"
)

// mqSystem is an API server publishing to a test exchange on the real
// broker.
type mqSystem struct {
	*system
	brokerURL, exchange, queue string
}

func startMQSystem(t testing.TB) *mqSystem {
	t.Helper()
	url := mqtest.URL(t)
	p := mqtest.Prefix(t)
	s := &mqSystem{brokerURL: url, exchange: p + ".x", queue: p + ".q"}
	mqtest.Cleanup(t, url, s.exchange, s.queue)
	pub, err := pubsub.NewPublisher(pubsub.PublisherConfig{URL: url, Exchange: s.exchange})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pub.Close() }) // after the server stops: cleanups run last-in first
	apiURL := serveAPI(t, apiserver.Config{DataDir: t.TempDir(), Publisher: pub})
	tt, _ := t.(*testing.T)
	s.system = &system{t: tt, apiURL: apiURL}
	return s
}

func (s *mqSystem) mqConfig(brokerURL string) *ingest.ConsumerConfig {
	return &ingest.ConsumerConfig{URL: brokerURL, Exchange: s.exchange, Queue: s.queue, QueueExpires: 10 * time.Minute,
		ReconnectMin: 10 * time.Millisecond, ReconnectMax: 200 * time.Millisecond, RequeueDelay: 10 * time.Millisecond}
}

// runNode starts cfg's node and stops it when the test ends.
func runNode(t testing.TB, cfg Config) *Node {
	t.Helper()
	n, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("node Run: %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("node did not stop within 20s")
		}
	})
	return n
}

// On RabbitMQ: not ready while the broker cannot be reached (the queue is
// not declared), ready once it is; rules written through the API are
// followed and acked; a cut connection is survived.
func TestNodeFollowsRabbitMQ(t *testing.T) {
	s := startMQSystem(t)
	proxy := mqtest.NewProxy(t, s.brokerURL)
	proxy.Down(true)
	n := runNode(t, Config{DataDir: t.TempDir(), APIURL: s.apiURL, HTTPAddr: "127.0.0.1:0", NodeName: "mq",
		ReconcileInterval: -1, MQ: s.mqConfig(proxy.URL())})
	readyz := "http://" + n.HTTPAddr() + "/readyz"

	testkit.Eventually(t, 10*time.Second, "two declare attempts", func() bool { return proxy.Accepted() >= 2 })
	if code := get(t, readyz); code != 503 {
		t.Errorf("/readyz while the broker is down = %d, want 503", code)
	}
	proxy.Down(false)
	testkit.Eventually(t, 10*time.Second, "ready once the broker answers", func() bool { return get(t, readyz) == 200 })

	s.createRule("a", "core.intervaltimer", `{"interval":3600}`)
	testkit.Eventually(t, 5*time.Second, "rule a followed", func() bool { return n.engine.Len() == 1 })
	s.post("/api/v1/rules/a/disable")
	testkit.Eventually(t, 5*time.Second, "rule a disabled", func() bool { return n.engine.Len() == 0 })

	proxy.Cut()
	s.createRule("b", "core.crontimer", `{"expression":"0 0 * * *"}`)
	testkit.Eventually(t, 10*time.Second, "rule b followed after the cut", func() bool { return n.engine.Len() == 1 })
	testkit.Eventually(t, 5*time.Second, "queue drained and acked", func() bool { return mqtest.QueueDepth(t, s.brokerURL, s.queue) == 0 })

	counts := lifecycleCounts(t, n.cfg.Registry)
	if counts["RuleCreated/applied"] != 2 || counts["RuleDisabled/applied"] != 1 {
		t.Errorf("lifecycle counts = %v, want 2 RuleCreated/applied and 1 RuleDisabled/applied", counts)
	}
}

// BenchmarkIntakeRabbitMQ: 50,000 rule creations wait in the node's queue;
// how fast does a node apply them, one commit per message (batch 1) or
// per batch? Run with -benchtime=1x (each iteration is the whole queue).
func BenchmarkIntakeRabbitMQ(b *testing.B) {
	const msgs = 50_000
	for _, batch := range []int{1, 256} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			for range b.N {
				benchIntake(b, msgs, batch)
			}
		})
	}
}

func benchIntake(b *testing.B, msgs, batch int) {
	b.StopTimer()
	url := mqtest.URL(b)
	p := mqtest.Prefix(b)
	exchange, queue := p+".x", p+".q"
	mqtest.Cleanup(b, url, exchange, queue)
	// A rules API with no rules, for the reconcile.
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Write([]byte(`{"items":[],"pagination":{"has_next":false}}`))
	}))
	b.Cleanup(api.Close)

	// Declare the queue, then fill it.
	c, err := ingest.NewConsumer(ingest.ConsumerConfig{URL: url, Exchange: exchange, Queue: queue, QueueExpires: 10 * time.Minute})
	if err != nil {
		b.Fatal(err)
	}
	if err := c.Declare(context.Background()); err != nil {
		b.Fatal(err)
	}
	c.Close()
	conn, err := amqp.Dial(url)
	if err != nil {
		b.Fatal(err)
	}
	ch, _ := conn.Channel()
	for i := 1; i <= msgs; i++ {
		l := attune.Lifecycle{Type: attune.RuleCreated, RuleID: int64(i), RuleRef: fmt.Sprintf("r%d", i),
			TriggerRef: "core.intervaltimer", Params: json.RawMessage(`{"interval":3600}`), Enabled: true}
		if err := ch.PublishWithContext(context.Background(), exchange, "rule.created", false, false,
			amqp.Publishing{DeliveryMode: amqp.Persistent, Body: attune.EnvelopeJSON(l, "", time.Now())}); err != nil {
			b.Fatal(err)
		}
	}
	conn.Close()
	testkit.Eventually(b, time.Minute, "queue filled", func() bool { return mqtest.QueueDepth(b, url, queue) >= msgs })

	b.StartTimer()
	start := time.Now()
	n := runNode(b, Config{DataDir: b.TempDir(), APIURL: api.URL, NodeName: "bench", ReconcileInterval: -1, IntakeBatch: batch,
		MQ: &ingest.ConsumerConfig{URL: url, Exchange: exchange, Queue: queue, QueueExpires: 10 * time.Minute}})
	testkit.Eventually(b, 5*time.Minute, "every message applied", func() bool {
		c, _ := n.store.RuleCount()
		return c == msgs
	})
	el := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(msgs)/el.Seconds(), "msgs/s")
}
