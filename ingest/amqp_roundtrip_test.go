package ingest_test

// The API's side of the lifecycle wire (pubsub.AMQPPublisher) against the
// node's (Consumer), over a real broker: what one publishes the other reads,
// in order. They live here, beside the consumer's broker harness; the
// publisher's own checks are in package pubsub.

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/timerd/timerd/ingest"
	"github.com/timerd/timerd/ingest/attune"
	"github.com/timerd/timerd/ingest/mqtest"
	"github.com/timerd/timerd/ingest/pubsub"
	"github.com/timerd/timerd/test/testkit"
)

func (e mqEnv) publisherConfig(url string, reg prometheus.Registerer) pubsub.PublisherConfig {
	return pubsub.PublisherConfig{
		URL:            url,
		Exchange:       e.exchange,
		ConfirmTimeout: 5 * time.Second,
		ReconnectMin:   10 * time.Millisecond,
		ReconnectMax:   50 * time.Millisecond,
		Registerer:     reg,
	}
}

// publishedCount is timerd_mq_published_total{result}.
func publishedCount(t *testing.T, reg *prometheus.Registry, result string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("Gather: %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "timerd_mq_published_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == "result" && lp.GetValue() == result {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	t.Fatalf("timerd_mq_published_total{result=%q} not found", result)
	return 0
}

// What the publisher sends is persistent JSON with the envelope's message
// id, and a node's Consumer receives it in order.
func TestPublisherToConsumer(t *testing.T) {
	e := newMQEnv(t)
	reg := prometheus.NewRegistry()
	c, err := ingest.NewConsumer(e.consumerConfig(e.url, nil))
	if err != nil {
		t.Fatalf("NewConsumer: %v", err)
	}
	if err := c.Declare(context.Background()); err != nil {
		t.Fatalf("Declare: %v", err)
	}
	// A second queue, bound by the test, to read the message properties.
	inspect := e.queue + ".inspect"
	mqtest.Cleanup(t, e.url, "", inspect)
	ch := rawChannel(t, e.url)
	if _, err := ch.QueueDeclare(inspect, false, false, false, false, nil); err != nil {
		t.Fatalf("QueueDeclare(%s): %v", inspect, err)
	}
	if err := ch.QueueBind(inspect, "rule.#", e.exchange, false, nil); err != nil {
		t.Fatalf("QueueBind(%s): %v", inspect, err)
	}

	p, err := pubsub.NewPublisher(e.publisherConfig(e.url, reg))
	if err != nil {
		t.Fatalf("NewPublisher: %v", err)
	}
	defer p.Close()
	const n = 20
	for i := range n {
		key, body := lifecycleBody(i)
		if err := p.Publish(context.Background(), attune.Message{RoutingKey: key, Body: body}); err != nil {
			t.Fatalf("Publish(message %d): %v", i, err)
		}
	}
	if got := publishedCount(t, reg, "confirmed"); got != n {
		t.Errorf("timerd_mq_published_total{result=confirmed} = %v, want %d", got, n)
	}
	if got := mqMetric(t, reg, "timerd_mq_publisher_connected"); got != 1 {
		t.Errorf("timerd_mq_publisher_connected = %v, want 1", got)
	}

	// Confirmed means stored: every message is already in the queue.
	if d := mqtest.QueueDepth(t, e.url, inspect); d != n {
		t.Fatalf("inspect queue depth after %d confirmed publishes = %d, want %d", n, d, n)
	}
	for i := range 2 { // one envelope, one flat message
		d, ok, err := ch.Get(inspect, true)
		if err != nil || !ok {
			t.Fatalf("Get(%s) = ok %v, err %v; want a message", inspect, ok, err)
		}
		wantID := ""
		if i%2 == 0 {
			wantID = "msg-1"
		}
		if d.DeliveryMode != amqp.Persistent || d.ContentType != "application/json" || d.MessageId != wantID {
			t.Errorf("message %d: delivery mode %d, content type %q, message id %q; want %d, application/json, %q",
				i, d.DeliveryMode, d.ContentType, d.MessageId, amqp.Persistent, wantID)
		}
	}

	var r recorder
	startRun(t, c, r.handle)
	checkSequence(t, r.waitN(t, n), 0, n)

	if err := p.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if err := p.Close(); err != nil {
		t.Errorf("Close again: %v", err)
	}
	if got := mqMetric(t, reg, "timerd_mq_publisher_connected"); got != 0 {
		t.Errorf("timerd_mq_publisher_connected after Close = %v, want 0", got)
	}
	if err := p.Publish(context.Background(), attune.Message{RoutingKey: "rule.created", Body: []byte(`{}`)}); !errors.Is(err, pubsub.ErrPublisherClosed) {
		t.Errorf("Publish after Close = %v, want ErrPublisherClosed", err)
	}
}

// During an outage Publish fails (fast, with ErrMQUnavailable until the next
// attempt is due); once the broker is back it reconnects and delivers.
func TestPublisherOutage(t *testing.T) {
	e := newMQEnv(t)
	proxy := mqtest.NewProxy(t, e.url)
	reg := prometheus.NewRegistry()
	c, err := ingest.NewConsumer(e.consumerConfig(e.url, nil))
	if err != nil {
		t.Fatalf("NewConsumer: %v", err)
	}
	if err := c.Declare(context.Background()); err != nil {
		t.Fatalf("Declare: %v", err)
	}
	cfg := e.publisherConfig(proxy.URL(), reg)
	cfg.ReconnectMin, cfg.ReconnectMax = time.Hour, time.Hour // the second attempt is not due within the test
	p, err := pubsub.NewPublisher(cfg)
	if err != nil {
		t.Fatalf("NewPublisher: %v", err)
	}
	defer p.Close()
	publish := func(i int) error {
		key, body := lifecycleBody(i)
		return p.Publish(context.Background(), attune.Message{RoutingKey: key, Body: body})
	}
	if err := publish(0); err != nil {
		t.Fatalf("Publish(0) with the broker up: %v", err)
	}

	proxy.Down(true)
	proxy.Cut()
	if err := publish(1); err == nil {
		t.Fatalf("Publish(1) during the outage = nil, want an error")
	}
	if err := publish(1); !errors.Is(err, pubsub.ErrMQUnavailable) {
		t.Fatalf("Publish(1) again before the next attempt is due = %v, want ErrMQUnavailable", err)
	}
	if got := publishedCount(t, reg, "error"); got != 2 {
		t.Errorf("timerd_mq_published_total{result=error} = %v, want 2", got)
	}
	if got := mqMetric(t, reg, "timerd_mq_publisher_connected"); got != 0 {
		t.Errorf("timerd_mq_publisher_connected during the outage = %v, want 0", got)
	}
	proxy.Down(false)
	if err := p.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}

	// A publisher with a short backoff gets through once the attempt is due.
	p2, err := pubsub.NewPublisher(e.publisherConfig(proxy.URL(), nil))
	if err != nil {
		t.Fatalf("NewPublisher: %v", err)
	}
	defer p2.Close()
	proxy.Down(true)
	if err := p2.Publish(context.Background(), attune.Message{RoutingKey: "rule.enabled", Body: []byte(`{}`)}); err == nil {
		t.Fatalf("Publish with the broker down = nil, want an error")
	}
	proxy.Down(false)
	key, body := lifecycleBody(1)
	testkit.Eventually(t, 5*time.Second, "Publish to succeed after the outage", func() bool {
		return p2.Publish(context.Background(), attune.Message{RoutingKey: key, Body: body}) == nil
	})

	var r recorder
	startRun(t, c, r.handle)
	checkSequence(t, r.waitN(t, 2), 0, 2)
}

// A connection that dropped between two publishes is noticed by the next
// Publish, which goes out on a new connection without an error.
func TestPublisherRecoversDroppedConnection(t *testing.T) {
	e := newMQEnv(t)
	proxy := mqtest.NewProxy(t, e.url)
	c, err := ingest.NewConsumer(e.consumerConfig(e.url, nil))
	if err != nil {
		t.Fatalf("NewConsumer: %v", err)
	}
	if err := c.Declare(context.Background()); err != nil {
		t.Fatalf("Declare: %v", err)
	}
	p, err := pubsub.NewPublisher(e.publisherConfig(proxy.URL(), nil))
	if err != nil {
		t.Fatalf("NewPublisher: %v", err)
	}
	defer p.Close()
	for i := range 6 {
		if i%2 == 1 {
			proxy.Cut()
		}
		key, body := lifecycleBody(i)
		if err := p.Publish(context.Background(), attune.Message{RoutingKey: key, Body: body}); err != nil {
			t.Fatalf("Publish(%d) after a dropped connection: %v", i, err)
		}
	}
	if n := proxy.Accepted(); n != 4 {
		t.Errorf("connections made = %d, want 4 (one, then one after each of 3 cuts)", n)
	}
	var r recorder
	startRun(t, c, r.handle)
	checkSequence(t, r.waitN(t, 6), 0, 6)
}

func TestPublisherCanceledContext(t *testing.T) {
	e := newMQEnv(t)
	p, err := pubsub.NewPublisher(e.publisherConfig(e.url, nil))
	if err != nil {
		t.Fatalf("NewPublisher: %v", err)
	}
	defer p.Close()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := p.Publish(ctx, attune.Message{RoutingKey: "rule.created", Body: []byte(`{}`)}); !errors.Is(err, context.Canceled) {
		t.Errorf("Publish(canceled ctx) = %v, want context.Canceled", err)
	}
}
