package ingest_test

// The API's side of the lifecycle wire (pubsub.AMQPPublisher) against the
// node's (Consumer), over a real broker: what one publishes the other reads,
// in order. They live here, beside the consumer's broker harness; the
// publisher's own checks are in package pubsub.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
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

// inspectQueue declares a queue of the test's own, bound to every lifecycle
// key of the exchange, with args, and returns its name and a channel to
// read it.
func inspectQueue(t *testing.T, e mqEnv, name string, args amqp.Table) (string, *amqp.Channel) {
	t.Helper()
	q := e.queue + "." + name
	mqtest.Cleanup(t, e.url, "", q)
	ch := rawChannel(t, e.url)
	if err := ch.ExchangeDeclare(e.exchange, "topic", true, false, false, false, nil); err != nil {
		t.Fatalf("ExchangeDeclare: %v", err)
	}
	if _, err := ch.QueueDeclare(q, false, false, false, false, args); err != nil {
		t.Fatalf("QueueDeclare(%s): %v", q, err)
	}
	if err := ch.QueueBind(q, "rule.#", e.exchange, false, nil); err != nil {
		t.Fatalf("QueueBind(%s): %v", q, err)
	}
	return q, ch
}

// drainIDs reads every message of queue and returns their message ids in order.
func drainIDs(t *testing.T, ch *amqp.Channel, queue string) []string {
	t.Helper()
	var ids []string
	for {
		d, ok, err := ch.Get(queue, true)
		if err != nil {
			t.Fatalf("Get(%s): %v", queue, err)
		}
		if !ok {
			return ids
		}
		ids = append(ids, d.MessageId)
	}
}

func envelope(i int) attune.Message {
	l := attune.Lifecycle{Type: attune.RuleCreated, RuleID: int64(i + 1), RuleRef: fmt.Sprintf("r%d", i+1),
		TriggerRef: "core.intervaltimer", Params: json.RawMessage(`{"interval":5}`), Enabled: true}
	return attune.Message{RoutingKey: attune.RoutingKey(l.Type),
		Body: attune.EnvelopeJSON(l, fmt.Sprintf("m%d", i), time.Date(2026, 1, 27, 12, 0, 0, 0, time.UTC))}
}

// Sends do not wait for confirms: many are in flight at once, they leave in
// the order of the sends, and each Wait says the broker has its message.
// Concurrent Publish calls pipeline alike.
func TestPublisherPipelinesConfirms(t *testing.T) {
	e := newMQEnv(t)
	q, ch := inspectQueue(t, e, "inspect", nil)
	reg := prometheus.NewRegistry()
	p, err := pubsub.NewPublisher(e.publisherConfig(e.url, reg))
	if err != nil {
		t.Fatalf("NewPublisher: %v", err)
	}
	defer p.Close()
	const n = 300
	confs := make([]*pubsub.Confirm, n)
	for i := range n {
		if confs[i], err = p.Send(context.Background(), envelope(i)); err != nil {
			t.Fatalf("Send(%d): %v", i, err)
		}
	}
	for i, c := range confs {
		if err := c.Wait(context.Background()); err != nil {
			t.Fatalf("Wait(%d): %v", i, err)
		}
		if err := c.Wait(context.Background()); err != nil { // the same answer, counted once
			t.Fatalf("Wait(%d) again: %v", i, err)
		}
	}
	if got := publishedCount(t, reg, "confirmed"); got != n {
		t.Errorf("timerd_mq_published_total{result=confirmed} = %v, want %d", got, n)
	}
	ids := drainIDs(t, ch, q)
	if len(ids) != n {
		t.Fatalf("queue holds %d messages after %d confirmed sends", len(ids), n)
	}
	for i, id := range ids {
		if id != fmt.Sprintf("m%d", i) {
			t.Fatalf("message %d has id %q, want m%d: out of order", i, id, i)
		}
	}

	var wg sync.WaitGroup
	errs := make(chan error, n)
	for g := range 30 {
		wg.Go(func() {
			for i := range 10 {
				errs <- p.Publish(context.Background(), envelope(n+g*10+i))
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("concurrent Publish: %v", err)
		}
	}
	if got := len(drainIDs(t, ch, q)); got != 300 {
		t.Errorf("queue holds %d messages after 300 concurrent confirmed publishes", got)
	}
}

// A message the broker refuses (a full queue that rejects publishes) is an
// error, counted as nacked, for Publish and for a pipelined Send alike; the
// channel stays usable.
func TestPublisherNackIsAnError(t *testing.T) {
	e := newMQEnv(t)
	q, ch := inspectQueue(t, e, "full", amqp.Table{"x-max-length": int32(2), "x-overflow": "reject-publish"})
	reg := prometheus.NewRegistry()
	p, err := pubsub.NewPublisher(e.publisherConfig(e.url, reg))
	if err != nil {
		t.Fatalf("NewPublisher: %v", err)
	}
	defer p.Close()
	confs := make([]*pubsub.Confirm, 5)
	for i := range confs {
		if confs[i], err = p.Send(context.Background(), envelope(i)); err != nil {
			t.Fatalf("Send(%d): %v", i, err)
		}
	}
	for i, c := range confs {
		err := c.Wait(context.Background())
		if i < 2 && err != nil {
			t.Errorf("Wait(%d) with room in the queue = %v, want nil", i, err)
		}
		if i >= 2 && (err == nil || !strings.Contains(err.Error(), "nacked")) {
			t.Errorf("Wait(%d) on a full queue = %v, want a nack", i, err)
		}
	}
	if err := p.Publish(context.Background(), envelope(5)); err == nil || !strings.Contains(err.Error(), "nacked") {
		t.Errorf("Publish on a full queue = %v, want a nack", err)
	}
	if got := publishedCount(t, reg, "nacked"); got != 4 {
		t.Errorf("timerd_mq_published_total{result=nacked} = %v, want 4", got)
	}
	if ids := drainIDs(t, ch, q); len(ids) != 2 || ids[0] != "m0" || ids[1] != "m1" {
		t.Fatalf("queue holds %v, want [m0 m1]", ids)
	}
	if err := p.Publish(context.Background(), envelope(6)); err != nil {
		t.Errorf("Publish after the queue drained = %v, want nil (the channel survives a nack)", err)
	}
}

// A connection lost with confirms pending never turns into a silent loss:
// every Wait that returned nil has its message in the queue, and every
// other one returned an error. With the broker unreachable afterwards,
// nothing is confirmed at all.
func TestPublisherLostConnectionIsNeverSilent(t *testing.T) {
	e := newMQEnv(t)
	q, ch := inspectQueue(t, e, "inspect", nil)
	proxy := mqtest.NewProxy(t, e.url)
	reg := prometheus.NewRegistry()
	cfg := e.publisherConfig(proxy.URL(), reg)
	cfg.ReconnectMin, cfg.ReconnectMax = time.Hour, time.Hour // no second connection within the test
	p, err := pubsub.NewPublisher(cfg)
	if err != nil {
		t.Fatalf("NewPublisher: %v", err)
	}
	defer p.Close()
	if err := p.Publish(context.Background(), envelope(0)); err != nil {
		t.Fatalf("Publish(0): %v", err)
	}
	// Cut the connection while sends and confirms are under way.
	const n = 400
	confs := make([]*pubsub.Confirm, n)
	sendErrs := 0
	for i := 1; i < n; i++ {
		if i == n/2 {
			proxy.Down(true)
			proxy.Cut()
		}
		if confs[i], err = p.Send(context.Background(), envelope(i)); err != nil {
			sendErrs++
		}
	}
	confirmed := map[string]bool{"m0": true}
	waitErrs := 0
	for i, c := range confs {
		if c == nil {
			continue
		}
		if err := c.Wait(context.Background()); err != nil {
			waitErrs++
			continue
		}
		confirmed[fmt.Sprintf("m%d", i)] = true
	}
	stored := map[string]bool{}
	for _, id := range drainIDs(t, ch, q) {
		stored[id] = true
	}
	for id := range confirmed {
		if !stored[id] {
			t.Errorf("message %s was confirmed but is not in the queue", id)
		}
	}
	t.Logf("%d confirmed, %d send errors, %d wait errors", len(confirmed), sendErrs, waitErrs)
	if len(confirmed) >= n/2+1 {
		t.Errorf("%d of %d messages confirmed, though the connection was cut after the first %d were sent", len(confirmed), n, n/2)
	}
	if got := sendErrs + waitErrs; got != n-len(confirmed) {
		t.Errorf("%d errors (%d at send, %d at wait) for %d unconfirmed messages", got, sendErrs, waitErrs, n-len(confirmed))
	}
	if got := publishedCount(t, reg, "confirmed") + publishedCount(t, reg, "error"); got != n {
		t.Errorf("timerd_mq_published_total confirmed + error = %v, want %d", got, n)
	}
}
