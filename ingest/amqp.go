package ingest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/timerd/timerd/ingest/attune"
	"github.com/timerd/timerd/ingest/pubsub"
	"github.com/timerd/timerd/scheduler/metricset"
)

// ConsumerConfig configures a Consumer.
type ConsumerConfig struct {
	URL          string        // amqp:// or amqps://, required
	Exchange     string        // topic, durable; default attune.DefaultExchange
	Queue        string        // required; see attune.QueueName
	QueueExpires time.Duration // x-expires of the queue; default 7 days
	Prefetch     int           // unacked deliveries in flight; default 256
	// Reconnect backoff after the connection or channel drops: doubles from
	// ReconnectMin up to ReconnectMax, with jitter. Defaults 500ms and 30s.
	ReconnectMin, ReconnectMax time.Duration
	// RequeueDelay is how long a message whose handler failed waits before
	// it goes back to the queue, so a failing store is not hammered.
	// Default 1s.
	RequeueDelay time.Duration
	Logger       *slog.Logger
	Registerer   prometheus.Registerer // nil: metrics are not registered
}

func (c *ConsumerConfig) setDefaults() {
	if c.Exchange == "" {
		c.Exchange = attune.DefaultExchange
	}
	if c.QueueExpires == 0 {
		c.QueueExpires = 7 * 24 * time.Hour
	}
	if c.Prefetch == 0 {
		c.Prefetch = 256
	}
	if c.ReconnectMin == 0 {
		c.ReconnectMin = 500 * time.Millisecond
	}
	if c.ReconnectMax == 0 {
		c.ReconnectMax = 30 * time.Second
	}
	if c.RequeueDelay == 0 {
		c.RequeueDelay = time.Second
	}
}

// Validate reports the first bad field, after defaults are applied.
func (c ConsumerConfig) Validate() error {
	c.setDefaults()
	if err := pubsub.ValidateURL(c.URL); err != nil {
		return err
	}
	switch {
	case c.Queue == "":
		return errors.New("mq consumer: Queue is required")
	case len(c.Queue) > 255:
		return fmt.Errorf("mq consumer: Queue: %d bytes, at most 255", len(c.Queue))
	case len(c.Exchange) > 255:
		return fmt.Errorf("mq consumer: Exchange: %d bytes, at most 255", len(c.Exchange))
	case c.QueueExpires < time.Millisecond || c.QueueExpires.Milliseconds() > 1<<31-1:
		return fmt.Errorf("mq consumer: QueueExpires: %v is out of range (1ms .. ~24 days)", c.QueueExpires)
	case c.Prefetch < 0 || c.Prefetch > 65535:
		return fmt.Errorf("mq consumer: Prefetch: %d is out of range (1 .. 65535)", c.Prefetch)
	case c.ReconnectMin < 0:
		return fmt.Errorf("mq consumer: ReconnectMin: %v is negative", c.ReconnectMin)
	case c.ReconnectMax < c.ReconnectMin:
		return fmt.Errorf("mq consumer: ReconnectMax: %v is less than ReconnectMin %v", c.ReconnectMax, c.ReconnectMin)
	case c.RequeueDelay < 0:
		return fmt.Errorf("mq consumer: RequeueDelay: %v is negative", c.RequeueDelay)
	}
	return nil
}

// Consumer reads rule lifecycle messages from a node's durable queue on
// RabbitMQ. Each message is acked only after its handler returned nil, so a
// change is in the store before the broker forgets it; delivery is at least
// once and handlers must be idempotent (Attune's duplicates are normal).
type Consumer struct {
	cfg     ConsumerConfig
	log     *slog.Logger
	metrics consumerMetrics

	mu   sync.Mutex
	conn *amqp.Connection // set by Declare, taken over by Run

	everConnected atomic.Bool // a connection has been made before
}

type consumerMetrics struct {
	connected  prometheus.Gauge
	reconnects prometheus.Counter
	requeued   prometheus.Counter
}

// NewConsumer checks cfg and returns a Consumer that has not connected yet.
func NewConsumer(cfg ConsumerConfig) (*Consumer, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &Consumer{
		cfg: cfg,
		log: log.With("component", "mq-consumer", "queue", cfg.Queue),
		metrics: consumerMetrics{
			connected: prometheus.NewGauge(prometheus.GaugeOpts{
				Name: "timerd_mq_connected",
				Help: "1 while the lifecycle consumer has a live RabbitMQ connection and channel, else 0.",
			}),
			reconnects: prometheus.NewCounter(prometheus.CounterOpts{
				Name: "timerd_mq_reconnects_total",
				Help: "RabbitMQ connections the lifecycle consumer made after its first one.",
			}),
			requeued: prometheus.NewCounter(prometheus.CounterOpts{
				Name: "timerd_mq_requeued_total",
				Help: "Lifecycle messages returned to the queue because their handler failed.",
			}),
		},
	}
	if _, err := metricset.Register(cfg.Registerer, c.metrics.connected, c.metrics.reconnects, c.metrics.requeued); err != nil {
		return nil, fmt.Errorf("mq consumer: %w", err)
	}
	return c, nil
}

// Declare connects and declares the topology: the exchange (topic,
// durable), the node's queue (durable, x-expires) and its bindings to the
// four rule.* keys. From then on the broker keeps every lifecycle message
// for this node, so a node calls Declare before its first reconcile and
// nothing slips between the snapshot and the stream. Run then consumes on
// the same connection. Declare is not safe to call concurrently with Run.
func (c *Consumer) Declare(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn != nil && !c.conn.IsClosed() {
		ch, err := c.openChannel(c.conn)
		if err != nil {
			return err
		}
		return ch.Close()
	}
	conn, err := c.connect(ctx)
	if err != nil {
		return err
	}
	ch, err := c.openChannel(conn)
	if err != nil {
		_ = conn.Close()
		return err
	}
	_ = ch.Close()
	c.conn = conn
	return nil
}

// Close drops the connection Declare made, when Run is not going to. It is
// idempotent; Run closes its own connection when it returns.
func (c *Consumer) Close() error {
	c.mu.Lock()
	conn := c.conn
	c.conn = nil
	c.mu.Unlock()
	c.metrics.connected.Set(0)
	if conn == nil || conn.IsClosed() {
		return nil
	}
	return conn.Close()
}

// errRequeued ends a consume session after a failed handler: the session's
// channel is closed so that the message and the ones prefetched behind it
// return to the queue in their order.
var errRequeued = errors.New("handler failed; message requeued")

// Run consumes the queue until ctx is done, calling handle for each message,
// synchronously and in queue order. A message is acked after handle returns
// nil. When handle returns an error (the store failed), the message goes
// back to the queue after RequeueDelay and comes again; a message the node
// cannot use is its handle's business and must return nil, or it would
// loop. When the connection or the channel drops, Run reconnects with
// capped, jittered backoff and declares the topology again. Run returns nil
// when ctx is done.
func (c *Consumer) Run(ctx context.Context, handle func(attune.Message) error) error {
	if handle == nil {
		return errors.New("mq consumer: Run: handle is nil")
	}
	return c.RunBatch(ctx, BatchHandler{Max: 1, Handle: func(ms []attune.Message) error { return handle(ms[0]) }})
}

func closeErr(what string, e *amqp.Error) error {
	if e == nil {
		return fmt.Errorf("%s closed", what)
	}
	return fmt.Errorf("%s closed: %w", what, e)
}

// connect dials the broker; the context bounds the TCP connect, pubsub.Dial
// the handshake.
func (c *Consumer) connect(ctx context.Context) (*amqp.Connection, error) {
	conn, err := pubsub.Dial(ctx, c.cfg.URL, "timerd consumer "+c.cfg.Queue)
	if err != nil {
		return nil, err
	}
	if c.everConnected.Swap(true) {
		c.metrics.reconnects.Inc()
	}
	c.log.Info("rabbitmq connected")
	return conn, nil
}

// openChannel opens a channel, sets the prefetch and declares the topology.
func (c *Consumer) openChannel(conn *amqp.Connection) (*amqp.Channel, error) {
	ch, err := conn.Channel()
	if err != nil {
		return nil, fmt.Errorf("open channel: %w", err)
	}
	if ch, err = ensureExchange(conn, ch, c.cfg.Exchange); err != nil {
		return nil, err
	}
	if err := declareTopology(ch, c.cfg); err != nil {
		_ = ch.Close()
		return nil, err
	}
	if err := ch.Qos(c.cfg.Prefetch, 0, false); err != nil {
		_ = ch.Close()
		return nil, fmt.Errorf("set prefetch %d: %w", c.cfg.Prefetch, err)
	}
	return ch, nil
}

// declareTopology declares the node's queue and binds it to the exchange:
// configure and write on the queue, read on the exchange (docs/security.md).
func declareTopology(ch *amqp.Channel, cfg ConsumerConfig) error {
	args := amqp.Table{"x-expires": cfg.QueueExpires.Milliseconds()}
	if _, err := ch.QueueDeclare(cfg.Queue, true, false, false, false, args); err != nil {
		return fmt.Errorf("declare queue %q: %w", cfg.Queue, err)
	}
	for _, key := range attune.LifecycleRoutingKeys {
		if err := ch.QueueBind(cfg.Queue, key, cfg.Exchange, false, nil); err != nil {
			return fmt.Errorf("bind queue %q to %q with %q: %w", cfg.Queue, cfg.Exchange, key, err)
		}
	}
	return nil
}

// ensureExchange makes sure the exchange exists on ch. A passive declare needs no
// permission; only when the exchange is missing does the node declare it, which
// needs configure on it: a node with the least permissions relies on Attune's API
// to have declared it, and retries until it has. A refused declare closes the
// channel: the one returned is the one to use (nil with an error).
func ensureExchange(conn *amqp.Connection, ch *amqp.Channel, exchange string) (*amqp.Channel, error) {
	err := ch.ExchangeDeclarePassive(exchange, "topic", true, false, false, false, nil)
	if err == nil {
		return ch, nil
	}
	var ae *amqp.Error
	if !errors.As(err, &ae) || ae.Code != amqp.NotFound {
		_ = ch.Close()
		return nil, fmt.Errorf("check exchange %q: %w", exchange, err)
	}
	if ch, err = conn.Channel(); err != nil {
		return nil, fmt.Errorf("open channel: %w", err)
	}
	if err := pubsub.DeclareExchange(ch, exchange); err != nil {
		_ = ch.Close()
		return nil, fmt.Errorf("%w (the exchange does not exist yet: Attune's API declares it when it starts)", err)
	}
	return ch, nil
}
