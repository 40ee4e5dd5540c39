package ingest_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/goleak"

	"github.com/timerd/timerd/ingest"
	"github.com/timerd/timerd/ingest/attune"
	"github.com/timerd/timerd/ingest/mqtest"
	"github.com/timerd/timerd/test/testkit"
)

// mqEnv is one test's broker, exchange and queue, deleted at the end.
type mqEnv struct {
	url, exchange, queue string
}

func newMQEnv(t *testing.T) mqEnv {
	t.Helper()
	t.Cleanup(func() { goleak.VerifyNone(t, ingest.IgnoreFasthttp...) }) // runs last
	url := mqtest.URL(t)
	p := mqtest.Prefix(t)
	e := mqEnv{url: url, exchange: p + ".x", queue: p + ".q"}
	mqtest.Cleanup(t, url, e.exchange, e.queue)
	return e
}

func (e mqEnv) consumerConfig(url string, reg prometheus.Registerer) ingest.ConsumerConfig {
	return ingest.ConsumerConfig{
		URL:          url,
		Exchange:     e.exchange,
		Queue:        e.queue,
		QueueExpires: 10 * time.Minute, // what a crashed run leaves goes away
		ReconnectMin: 10 * time.Millisecond,
		ReconnectMax: 100 * time.Millisecond,
		RequeueDelay: 10 * time.Millisecond,
		Registerer:   reg,
	}
}

// rawChannel opens a plain amqp091 channel for the test's own publishing
// and inspection.
func rawChannel(t *testing.T, url string) *amqp.Channel {
	t.Helper()
	conn, err := amqp.Dial(url)
	if err != nil {
		t.Fatalf("amqp.Dial: %v", err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	ch, err := conn.Channel()
	if err != nil {
		t.Fatalf("Channel: %v", err)
	}
	return ch
}

func publishRaw(t *testing.T, ch *amqp.Channel, exchange, key string, body []byte) {
	t.Helper()
	err := ch.PublishWithContext(context.Background(), exchange, key, false, false,
		amqp.Publishing{DeliveryMode: amqp.Persistent, ContentType: "application/json", Body: body})
	if err != nil {
		t.Fatalf("publish %s: %v", key, err)
	}
}

// mqMetric is the value of the unlabelled gauge or counter name in reg.
func mqMetric(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("Gather: %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name || len(mf.GetMetric()) != 1 {
			continue
		}
		m := mf.GetMetric()[0]
		if g := m.GetGauge(); g != nil {
			return g.GetValue()
		}
		return m.GetCounter().GetValue()
	}
	t.Fatalf("metric %s not registered", name)
	return 0
}

// recorder is a handle func that keeps what it was given.
type recorder struct {
	mu   sync.Mutex
	msgs []attune.Message
	fail func(m attune.Message, seen int) error // optional
}

func (r *recorder) handle(m attune.Message) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fail != nil {
		if err := r.fail(m, len(r.msgs)); err != nil {
			return err
		}
	}
	r.msgs = append(r.msgs, m)
	return nil
}

func (r *recorder) got() []attune.Message {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]attune.Message(nil), r.msgs...)
}

func (r *recorder) waitN(t *testing.T, n int) []attune.Message {
	t.Helper()
	testkit.Eventually(t, 10*time.Second, fmt.Sprintf("%d messages handled", n), func() bool { return len(r.got()) >= n })
	return r.got()
}

// startRun runs c.Run in the background; the returned stop cancels it and
// checks that Run returned nil. t.Cleanup stops it too.
func startRun(t *testing.T, c *ingest.Consumer, handle func(attune.Message) error) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx, handle) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Consumer.Run returned %v after cancel, want nil", err)
				}
			case <-time.After(10 * time.Second):
				t.Errorf("Consumer.Run did not return within 10s of cancel")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// lifecycleBody is message i in the envelope shape (even i) or the flat
// shape (odd i); both carry rule id i+1.
func lifecycleBody(i int) (key string, body []byte) {
	types := []attune.LifecycleType{attune.RuleCreated, attune.RuleEnabled, attune.RuleDisabled, attune.RuleDeleted}
	typ := types[i%len(types)]
	id := int64(i + 1)
	if i%2 == 0 {
		l := attune.Lifecycle{Type: typ, RuleID: id, RuleRef: fmt.Sprintf("r%d", id), TriggerRef: "core.intervaltimer",
			Params: json.RawMessage(`{"interval":5,"unit":"seconds"}`), Enabled: true}
		return attune.RoutingKey(typ), attune.EnvelopeJSON(l, fmt.Sprintf("msg-%d", id), time.Date(2026, 1, 27, 12, 34, 56, 0, time.UTC))
	}
	return attune.RoutingKey(typ), fmt.Appendf(nil,
		`{"event_type":%q,"rule_id":%d,"rule_ref":"r%d","trigger_type":"core.timer","trigger_params":{"interval_seconds":5},"enabled":true}`,
		typ, id, id)
}

// checkSequence fails unless got holds the lifecycle messages from..to-1 in
// order, each parsing to its rule id.
func checkSequence(t *testing.T, got []attune.Message, from, to int) {
	t.Helper()
	if len(got) != to-from {
		t.Fatalf("handled %d messages, want %d", len(got), to-from)
	}
	for i, m := range got {
		wantKey, wantBody := lifecycleBody(from + i)
		if m.RoutingKey != wantKey || string(m.Body) != string(wantBody) {
			t.Fatalf("message %d = %s %s, want %s %s", i, m.RoutingKey, m.Body, wantKey, wantBody)
		}
		l, err := attune.ParseLifecycle(m.Body, m.RoutingKey)
		if err != nil || l.RuleID != int64(from+i+1) {
			t.Fatalf("ParseLifecycle(message %d) = rule %d, %v; want rule %d, nil", i, l.RuleID, err, from+i+1)
		}
	}
}

func TestConsumerConfigValidate(t *testing.T) {
	ok := ingest.ConsumerConfig{URL: "amqp://guest:guest@127.0.0.1:5672/", Queue: "q"}
	tests := []struct {
		name   string
		mutate func(*ingest.ConsumerConfig)
		field  string // "" means valid
	}{
		{"defaults", func(*ingest.ConsumerConfig) {}, ""},
		{"amqps", func(c *ingest.ConsumerConfig) { c.URL = "amqps://u:p@mq.example:5671/vh" }, ""},
		{"missing URL", func(c *ingest.ConsumerConfig) { c.URL = "" }, "URL"},
		{"http URL", func(c *ingest.ConsumerConfig) { c.URL = "http://127.0.0.1:5672/" }, "URL"},
		{"missing queue", func(c *ingest.ConsumerConfig) { c.Queue = "" }, "Queue"},
		{"long queue", func(c *ingest.ConsumerConfig) { c.Queue = strings.Repeat("q", 256) }, "Queue"},
		{"negative expires", func(c *ingest.ConsumerConfig) { c.QueueExpires = -time.Second }, "QueueExpires"},
		{"huge expires", func(c *ingest.ConsumerConfig) { c.QueueExpires = 100 * 24 * time.Hour }, "QueueExpires"},
		{"negative prefetch", func(c *ingest.ConsumerConfig) { c.Prefetch = -1 }, "Prefetch"},
		{"negative reconnect", func(c *ingest.ConsumerConfig) { c.ReconnectMin = -time.Second }, "ReconnectMin"},
		{"max below min", func(c *ingest.ConsumerConfig) { c.ReconnectMin, c.ReconnectMax = time.Minute, time.Second }, "ReconnectMax"},
		{"negative requeue delay", func(c *ingest.ConsumerConfig) { c.RequeueDelay = -1 }, "RequeueDelay"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := ok
			tc.mutate(&cfg)
			err := cfg.Validate()
			_, nerr := ingest.NewConsumer(cfg)
			if tc.field == "" {
				if err != nil || nerr != nil {
					t.Fatalf("Validate() = %v, NewConsumer() = %v; want nil, nil", err, nerr)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.field) {
				t.Errorf("Validate() = %v, want an error naming %s", err, tc.field)
			}
			if nerr == nil {
				t.Errorf("NewConsumer() = nil error, want one naming %s", tc.field)
			}
			if err != nil && strings.Contains(err.Error(), "guest:guest") {
				t.Errorf("Validate() = %v, leaks the URL's password", err)
			}
		})
	}
}

// Declare makes the exchange, the durable queue with x-expires and the four
// bindings; what is published after it waits in the queue for Run.
func TestConsumerDeclare(t *testing.T) {
	e := newMQEnv(t)
	cfg := e.consumerConfig(e.url, nil)
	cfg.QueueExpires = time.Hour
	c, err := ingest.NewConsumer(cfg)
	if err != nil {
		t.Fatalf("NewConsumer: %v", err)
	}
	defer c.Close()
	if err := c.Declare(context.Background()); err != nil {
		t.Fatalf("Declare: %v", err)
	}
	if err := c.Declare(context.Background()); err != nil {
		t.Fatalf("Declare again: %v", err)
	}

	// Redeclaring with other properties fails with 406 when they differ, so
	// each case proves one property of what Declare made.
	probes := []struct {
		name    string
		declare func(ch *amqp.Channel) error
		wantOK  bool
	}{
		{"exchange topic durable", func(ch *amqp.Channel) error {
			return ch.ExchangeDeclare(e.exchange, "topic", true, false, false, false, nil)
		}, true},
		{"exchange not durable", func(ch *amqp.Channel) error {
			return ch.ExchangeDeclare(e.exchange, "topic", false, false, false, false, nil)
		}, false},
		{"exchange direct", func(ch *amqp.Channel) error {
			return ch.ExchangeDeclare(e.exchange, "direct", true, false, false, false, nil)
		}, false},
		{"queue durable x-expires 1h", func(ch *amqp.Channel) error {
			_, err := ch.QueueDeclare(e.queue, true, false, false, false, amqp.Table{"x-expires": int64(3600000)})
			return err
		}, true},
		{"queue other x-expires", func(ch *amqp.Channel) error {
			_, err := ch.QueueDeclare(e.queue, true, false, false, false, amqp.Table{"x-expires": int64(7200000)})
			return err
		}, false},
		{"queue without x-expires", func(ch *amqp.Channel) error {
			_, err := ch.QueueDeclare(e.queue, true, false, false, false, nil)
			return err
		}, false},
		{"queue not durable", func(ch *amqp.Channel) error {
			_, err := ch.QueueDeclare(e.queue, false, false, false, false, amqp.Table{"x-expires": int64(3600000)})
			return err
		}, false},
	}
	for _, p := range probes {
		ch := rawChannel(t, e.url) // a failed declare closes its channel
		err := p.declare(ch)
		if p.wantOK && err != nil {
			t.Errorf("%s: redeclare = %v, want nil", p.name, err)
		}
		if !p.wantOK && err == nil {
			t.Errorf("%s: redeclare = nil, want a 406 precondition failure", p.name)
		}
	}

	// Bound to the four rule.* keys and nothing else: the unbound keys go
	// first, so had they been routed they would come before the last one.
	ch := rawChannel(t, e.url)
	for _, key := range append([]string{"rule.updated", "trigger.created", "rule"}, attune.LifecycleRoutingKeys...) {
		publishRaw(t, ch, e.exchange, key, []byte(`{}`))
	}
	testkit.Eventually(t, 5*time.Second, "4 messages in the queue", func() bool { return mqtest.QueueDepth(t, e.url, e.queue) == 4 })

	// Run consumes them on Declare's connection.
	var r recorder
	stop := startRun(t, c, r.handle)
	got := r.waitN(t, 4)
	stop()
	var keys []string
	for _, m := range got {
		keys = append(keys, m.RoutingKey)
	}
	if strings.Join(keys, " ") != strings.Join(attune.LifecycleRoutingKeys, " ") {
		t.Errorf("routing keys consumed = %v, want %v", keys, attune.LifecycleRoutingKeys)
	}
}

func TestConsumerDeliversBothShapesInOrderAndAcks(t *testing.T) {
	e := newMQEnv(t)
	reg := prometheus.NewRegistry()
	c, err := ingest.NewConsumer(e.consumerConfig(e.url, reg))
	if err != nil {
		t.Fatalf("NewConsumer: %v", err)
	}
	if err := c.Declare(context.Background()); err != nil {
		t.Fatalf("Declare: %v", err)
	}
	const n = 300 // more than the prefetch of 256
	ch := rawChannel(t, e.url)
	for i := range n / 2 {
		key, body := lifecycleBody(i)
		publishRaw(t, ch, e.exchange, key, body)
	}
	var r recorder
	stop := startRun(t, c, r.handle)
	for i := n / 2; i < n; i++ {
		key, body := lifecycleBody(i)
		publishRaw(t, ch, e.exchange, key, body)
	}
	checkSequence(t, r.waitN(t, n), 0, n)
	if got := mqMetric(t, reg, "timerd_mq_connected"); got != 1 {
		t.Errorf("timerd_mq_connected while running = %v, want 1", got)
	}
	stop()
	if got := mqMetric(t, reg, "timerd_mq_connected"); got != 0 {
		t.Errorf("timerd_mq_connected after Run returned = %v, want 0", got)
	}
	// Everything was acked: nothing comes back to the queue.
	if d := mqtest.QueueDepth(t, e.url, e.queue); d != 0 {
		t.Errorf("queue depth after consuming all = %d, want 0 (all acked)", d)
	}
}

// A message is acked only after handle returns: when the connection dies
// while handle runs, the message comes again.
func TestConsumerAcksAfterHandle(t *testing.T) {
	e := newMQEnv(t)
	proxy := mqtest.NewProxy(t, e.url)
	c, err := ingest.NewConsumer(e.consumerConfig(proxy.URL(), nil))
	if err != nil {
		t.Fatalf("NewConsumer: %v", err)
	}
	if err := c.Declare(context.Background()); err != nil {
		t.Fatalf("Declare: %v", err)
	}
	ch := rawChannel(t, e.url)
	for i := range 2 {
		key, body := lifecycleBody(i)
		publishRaw(t, ch, e.exchange, key, body)
	}
	var r recorder
	r.fail = func(m attune.Message, seen int) error {
		if seen == 0 {
			proxy.Cut() // the ack of this first message cannot reach the broker
		}
		return nil
	}
	startRun(t, c, r.handle)
	// Message 0 comes again (its ack was lost), followed by message 1. The
	// client may also have handled message 1 before it saw the cut; that
	// one comes again too.
	var ids []int64
	testkit.Eventually(t, 10*time.Second, "message 0 redelivered, then message 1", func() bool {
		ids = ids[:0]
		for _, m := range r.got() {
			l, _ := attune.ParseLifecycle(m.Body, m.RoutingKey)
			ids = append(ids, l.RuleID)
		}
		n := len(ids)
		return n >= 3 && ids[n-2] == 1 && ids[n-1] == 2
	})
	if ids[0] != 1 || (len(ids) != 3 && len(ids) != 4) {
		t.Errorf("rule ids handled = %v, want [1 1 2] or [1 2 1 2]", ids)
	}
}

// A handle error requeues the message after RequeueDelay; it comes again
// before the messages behind it.
func TestConsumerRequeuesOnHandleError(t *testing.T) {
	e := newMQEnv(t)
	reg := prometheus.NewRegistry()
	c, err := ingest.NewConsumer(e.consumerConfig(e.url, reg))
	if err != nil {
		t.Fatalf("NewConsumer: %v", err)
	}
	if err := c.Declare(context.Background()); err != nil {
		t.Fatalf("Declare: %v", err)
	}
	ch := rawChannel(t, e.url)
	const n = 10
	for i := range n {
		key, body := lifecycleBody(i)
		publishRaw(t, ch, e.exchange, key, body)
	}
	var r recorder
	failures := 0
	r.fail = func(m attune.Message, seen int) error {
		if seen == 3 && failures < 2 { // the 4th message fails twice
			failures++
			return errors.New("store: disk full")
		}
		return nil
	}
	startRun(t, c, r.handle)
	checkSequence(t, r.waitN(t, n), 0, n)
	if got := mqMetric(t, reg, "timerd_mq_requeued_total"); got != 2 {
		t.Errorf("timerd_mq_requeued_total = %v, want 2", got)
	}
	if got := mqMetric(t, reg, "timerd_mq_reconnects_total"); got != 0 {
		t.Errorf("timerd_mq_reconnects_total = %v, want 0 (a requeue reuses the connection)", got)
	}
}

// A network failure drops the connection: the consumer reconnects by itself,
// re-declares, and loses nothing published during the outage.
func TestConsumerReconnectsAfterNetworkFailure(t *testing.T) {
	e := newMQEnv(t)
	proxy := mqtest.NewProxy(t, e.url)
	reg := prometheus.NewRegistry()
	c, err := ingest.NewConsumer(e.consumerConfig(proxy.URL(), reg))
	if err != nil {
		t.Fatalf("NewConsumer: %v", err)
	}
	if err := c.Declare(context.Background()); err != nil {
		t.Fatalf("Declare: %v", err)
	}
	ch := rawChannel(t, e.url)
	var r recorder
	startRun(t, c, r.handle)
	connected := func() float64 { return mqMetric(t, reg, "timerd_mq_connected") }
	for i := range 5 {
		key, body := lifecycleBody(i)
		publishRaw(t, ch, e.exchange, key, body)
	}
	r.waitN(t, 5)

	proxy.Down(true)
	proxy.Cut()
	testkit.Eventually(t, 5*time.Second, "timerd_mq_connected = 0", func() bool { return connected() == 0 })
	for i := 5; i < 10; i++ {
		key, body := lifecycleBody(i)
		publishRaw(t, ch, e.exchange, key, body)
	}
	proxy.Down(false)
	checkSequence(t, r.waitN(t, 10), 0, 10)
	testkit.Eventually(t, 5*time.Second, "timerd_mq_connected = 1", func() bool { return connected() == 1 })
	if got := mqMetric(t, reg, "timerd_mq_reconnects_total"); got < 1 {
		t.Errorf("timerd_mq_reconnects_total = %v, want >= 1", got)
	}
}

// The broker itself closes the connection (rabbitmqctl close_connection, as
// an operator or a broker shutdown would) while handle runs: the consumer
// comes back by itself, and the message being handled comes again because
// it was not acked before handle returned.
func TestConsumerReconnectsAfterBrokerClosesConnection(t *testing.T) {
	if os.Getenv("TIMERD_TEST_MQ_URL") != "" {
		if _, err := exec.LookPath("rabbitmqctl"); err != nil {
			t.Skip("TIMERD_TEST_MQ_URL names a broker this machine has no rabbitmqctl for; TestConsumerReconnectsAfterNetworkFailure covers the reconnect")
		}
	}
	e := newMQEnv(t)
	reg := prometheus.NewRegistry()
	c, err := ingest.NewConsumer(e.consumerConfig(e.url, reg))
	if err != nil {
		t.Fatalf("NewConsumer: %v", err)
	}
	if err := c.Declare(context.Background()); err != nil {
		t.Fatalf("Declare: %v", err)
	}
	ch := rawChannel(t, e.url)
	for i := range 3 {
		key, body := lifecycleBody(i)
		publishRaw(t, ch, e.exchange, key, body)
	}
	var r recorder
	closeErr := make(chan error, 1)
	r.fail = func(m attune.Message, seen int) error {
		if seen == 0 {
			// rabbitmqctl takes a while: an ack sent before handle would
			// long have reached the broker.
			n, err := mqtest.CloseConnections(e.queue)
			if err == nil && n != 1 {
				err = fmt.Errorf("rabbitmqctl closed %d connections named after %s, want 1", n, e.queue)
			}
			closeErr <- err
		}
		return nil
	}
	startRun(t, c, r.handle)
	var ids []int64
	testkit.Eventually(t, 10*time.Second, "message 0 again, then messages 1 and 2", func() bool {
		ids = ids[:0]
		second := -1
		for i, m := range r.got() {
			l, _ := attune.ParseLifecycle(m.Body, m.RoutingKey)
			ids = append(ids, l.RuleID)
			if l.RuleID == 1 && i > 0 && second < 0 {
				second = i
			}
		}
		return second > 0 && len(ids)-second == 3 && ids[second+1] == 2 && ids[second+2] == 3
	})
	if err := <-closeErr; err != nil {
		t.Fatalf("close the connection: %v", err)
	}
	if got := mqMetric(t, reg, "timerd_mq_reconnects_total"); got != 1 {
		t.Errorf("timerd_mq_reconnects_total = %v, want 1", got)
	}
	if d := mqtest.QueueDepth(t, e.url, e.queue); d != 0 {
		t.Errorf("queue depth after the redelivery = %d, want 0", d)
	}
}

// The queue is durable: what is published while no consumer runs waits for
// the next one, in order.
func TestConsumerQueueSurvivesRestart(t *testing.T) {
	e := newMQEnv(t)
	ch := rawChannel(t, e.url)
	var r1 recorder
	reg := prometheus.NewRegistry()
	c1, err := ingest.NewConsumer(e.consumerConfig(e.url, reg))
	if err != nil {
		t.Fatalf("NewConsumer: %v", err)
	}
	stop := startRun(t, c1, r1.handle)
	// Connected means declared and bound.
	testkit.Eventually(t, 5*time.Second, "timerd_mq_connected = 1", func() bool { return mqMetric(t, reg, "timerd_mq_connected") == 1 })
	key, body := lifecycleBody(0)
	publishRaw(t, ch, e.exchange, key, body)
	checkSequence(t, r1.waitN(t, 1), 0, 1)
	stop()

	for i := 1; i < 6; i++ {
		key, body := lifecycleBody(i)
		publishRaw(t, ch, e.exchange, key, body)
	}
	testkit.Eventually(t, 5*time.Second, "5 messages waiting", func() bool { return mqtest.QueueDepth(t, e.url, e.queue) == 5 })

	var r2 recorder
	c2, err := ingest.NewConsumer(e.consumerConfig(e.url, nil))
	if err != nil {
		t.Fatalf("NewConsumer: %v", err)
	}
	if err := c2.Declare(context.Background()); err != nil {
		t.Fatalf("Declare: %v", err)
	}
	startRun(t, c2, r2.handle)
	checkSequence(t, r2.waitN(t, 5), 1, 6)
}

// With no broker, Declare fails and Run keeps retrying until ctx is done.
func TestConsumerBrokerDown(t *testing.T) {
	e := newMQEnv(t)
	proxy := mqtest.NewProxy(t, e.url)
	proxy.Down(true)
	reg := prometheus.NewRegistry()
	c, err := ingest.NewConsumer(e.consumerConfig(proxy.URL(), reg))
	if err != nil {
		t.Fatalf("NewConsumer: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.Declare(ctx); err == nil {
		t.Fatalf("Declare with the broker down = nil, want an error")
	}
	var r recorder
	stop := startRun(t, c, r.handle)
	testkit.Eventually(t, 5*time.Second, "3 connect attempts", func() bool { return proxy.Accepted() >= 3 })
	if got := mqMetric(t, reg, "timerd_mq_connected"); got != 0 {
		t.Errorf("timerd_mq_connected with the broker down = %v, want 0", got)
	}
	// It connects once the broker is back.
	proxy.Down(false)
	ch := rawChannel(t, e.url)
	// Connected means declared and bound.
	testkit.Eventually(t, 5*time.Second, "timerd_mq_connected = 1", func() bool { return mqMetric(t, reg, "timerd_mq_connected") == 1 })
	key, body := lifecycleBody(0)
	publishRaw(t, ch, e.exchange, key, body)
	checkSequence(t, r.waitN(t, 1), 0, 1)
	stop()
}

func TestConsumerMetricsRegistered(t *testing.T) {
	reg := prometheus.NewRegistry()
	cfg := ingest.ConsumerConfig{URL: "amqp://127.0.0.1/", Queue: "q", Registerer: reg}
	if _, err := ingest.NewConsumer(cfg); err != nil {
		t.Fatalf("NewConsumer: %v", err)
	}
	if _, err := ingest.NewConsumer(cfg); err == nil || !strings.Contains(err.Error(), "timerd_mq_connected") {
		t.Errorf("second NewConsumer on the same registry = %v, want a duplicate registration error naming timerd_mq_connected", err)
	}
	n, err := testutil.GatherAndCount(reg, "timerd_mq_connected", "timerd_mq_reconnects_total", "timerd_mq_requeued_total")
	if err != nil || n != 3 {
		t.Errorf("gathered %d consumer metrics (err %v), want 3", n, err)
	}
}
