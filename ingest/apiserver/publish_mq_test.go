package apiserver

import (
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/timerd/timerd/ingest/attune"
	"github.com/timerd/timerd/ingest/mqtest"
	"github.com/timerd/timerd/ingest/pubsub"
)

// mqInspect is a queue of the test's own bound to every lifecycle key of
// exchange, read over a plain channel.
type mqInspect struct {
	t     *testing.T
	queue string
	ch    *amqp.Channel
}

func newMQInspect(t *testing.T, url, exchange string) *mqInspect {
	t.Helper()
	q := exchange + ".inspect"
	mqtest.Cleanup(t, url, exchange, q)
	conn, err := amqp.Dial(url)
	if err != nil {
		t.Fatalf("amqp.Dial: %v", err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	ch, err := conn.Channel()
	if err == nil {
		err = pubsub.DeclareExchange(ch, exchange)
	}
	if err == nil {
		_, err = ch.QueueDeclare(q, false, false, false, false, nil)
	}
	if err == nil {
		err = ch.QueueBind(q, "rule.#", exchange, false, nil)
	}
	if err != nil {
		t.Fatalf("inspect queue: %v", err)
	}
	return &mqInspect{t: t, queue: q, ch: ch}
}

// drain returns the lifecycle messages in the queue, in order, removing them.
func (m *mqInspect) drain() []attune.Lifecycle {
	m.t.Helper()
	var out []attune.Lifecycle
	for {
		d, ok, err := m.ch.Get(m.queue, true)
		if err != nil {
			m.t.Fatalf("Get(%s): %v", m.queue, err)
		}
		if !ok {
			return out
		}
		l, err := attune.ParseLifecycle(d.Body, d.RoutingKey)
		if err != nil {
			m.t.Fatalf("message %s: %v", d.Body, err)
		}
		out = append(out, l)
	}
}

// With RabbitMQ behind the API, a write is answered once its lifecycle
// message is confirmed: when concurrent creates, an update and a delete have
// their answers, every message is already in the queue (no waiting), in
// commit order. When the broker is gone, the write stands and the failure
// is counted (publishing is best-effort, as in Attune), and nothing is
// counted as published that the queue does not hold.
func TestWritesAnsweredAfterTheirConfirm(t *testing.T) {
	url := mqtest.URL(t)
	exchange := mqtest.Prefix(t) + ".x"
	inspect := newMQInspect(t, url, exchange)
	proxy := mqtest.NewProxy(t, url)
	pub, err := pubsub.NewPublisher(pubsub.PublisherConfig{URL: proxy.URL(), Exchange: exchange,
		ReconnectMin: time.Hour, ReconnectMax: time.Hour})
	if err != nil {
		t.Fatalf("NewPublisher: %v", err)
	}
	t.Cleanup(func() { _ = pub.Close() }) // after the server's own clean-up
	e := newEnv(t, func(c *Config) { c.Publisher = pub })

	const n = 64
	var wg sync.WaitGroup
	codes := make(chan int, n)
	for i := range n {
		wg.Go(func() {
			body := fmt.Sprintf(`{"ref":"r%d","trigger_ref":"core.intervaltimer","trigger_params":{"interval":60}}`, i)
			resp, err := e.ts.Client().Post(e.ts.URL+"/api/v1/rules", "application/json", strings.NewReader(body))
			if err != nil {
				codes <- 0
				return
			}
			resp.Body.Close()
			codes <- resp.StatusCode
		})
	}
	wg.Wait()
	close(codes)
	for c := range codes {
		if c != http.StatusCreated {
			t.Fatalf("a concurrent create answered %d, want 201", c)
		}
	}
	msgs := inspect.drain()
	if len(msgs) != n {
		t.Fatalf("the queue holds %d messages once %d creates were answered, want %d", len(msgs), n, n)
	}
	for i, l := range msgs {
		if l.Type != attune.RuleCreated || l.RuleID != int64(i+1) {
			t.Fatalf("message %d: %s of rule %d, want RuleCreated of rule %d (commit order)", i, l.Type, l.RuleID, i+1)
		}
	}
	e.must(http.StatusOK, nil, "POST", "/api/v1/rules/r3/disable", "")
	e.must(http.StatusOK, nil, "DELETE", "/api/v1/rules/r4", "")
	if msgs := inspect.drain(); len(msgs) != 2 || msgs[0].Type != attune.RuleDisabled || msgs[0].RuleRef != "r3" ||
		msgs[1].Type != attune.RuleDeleted || msgs[1].RuleRef != "r4" {
		t.Fatalf("after a disable and a delete were answered the queue holds %+v, want RuleDisabled r3, RuleDeleted r4", msgs)
	}
	if got := e.counter("timerd_api_publish_errors_total"); got != 0 {
		t.Errorf("timerd_api_publish_errors_total = %v, want 0", got)
	}

	proxy.Down(true)
	proxy.Cut()
	e.must(http.StatusCreated, nil, "POST", "/api/v1/rules", `{"ref":"late","trigger_ref":"core.intervaltimer","trigger_params":{"interval":60}}`)
	e.must(http.StatusOK, nil, "POST", "/api/v1/rules/r5/disable", "")
	if got := e.counter("timerd_api_publish_errors_total"); got != 2 {
		t.Errorf("timerd_api_publish_errors_total with the broker gone = %v, want 2", got)
	}
	if msgs := inspect.drain(); len(msgs) != 0 {
		t.Errorf("the queue holds %+v though the broker was unreachable", msgs)
	}
	e.must(http.StatusOK, nil, "GET", "/api/v1/rules/late", "")
}
