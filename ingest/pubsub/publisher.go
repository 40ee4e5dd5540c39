package pubsub

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/timerd/timerd/ingest/attune"
	"github.com/timerd/timerd/ingest/backoff"
	"github.com/timerd/timerd/scheduler/metricset"
)

// ErrMQUnavailable is returned by AMQPPublisher.Publish while the broker is
// unreachable and the next reconnect attempt is not due yet.
var ErrMQUnavailable = errors.New("rabbitmq unavailable")

// ErrPublisherClosed is returned by Publish after Close.
var ErrPublisherClosed = errors.New("publisher closed")

// PublisherConfig configures an AMQPPublisher.
type PublisherConfig struct {
	URL      string // amqp:// or amqps://, required
	Exchange string // topic, durable, declared on connect; default attune.DefaultExchange
	// ConfirmTimeout bounds the wait for the broker's confirm of one
	// message (the caller's context may cut it shorter). Default 5s.
	ConfirmTimeout time.Duration
	// After a failed connect, Publish fails fast with ErrMQUnavailable until
	// the next attempt is due: ReconnectMin doubling to ReconnectMax, with
	// jitter. Defaults 500ms and 30s.
	ReconnectMin, ReconnectMax time.Duration
	Logger                     *slog.Logger
	Registerer                 prometheus.Registerer // nil: metrics are not registered
}

func (c *PublisherConfig) setDefaults() {
	if c.Exchange == "" {
		c.Exchange = attune.DefaultExchange
	}
	if c.ConfirmTimeout == 0 {
		c.ConfirmTimeout = 5 * time.Second
	}
	if c.ReconnectMin == 0 {
		c.ReconnectMin = 500 * time.Millisecond
	}
	if c.ReconnectMax == 0 {
		c.ReconnectMax = 30 * time.Second
	}
}

// Validate reports the first bad field, after defaults are applied.
func (c PublisherConfig) Validate() error {
	c.setDefaults()
	if err := ValidateURL(c.URL); err != nil {
		return err
	}
	switch {
	case len(c.Exchange) > 255:
		return fmt.Errorf("mq publisher: Exchange: %d bytes, at most 255", len(c.Exchange))
	case c.ConfirmTimeout < 0:
		return fmt.Errorf("mq publisher: ConfirmTimeout: %v is negative", c.ConfirmTimeout)
	case c.ReconnectMin < 0:
		return fmt.Errorf("mq publisher: ReconnectMin: %v is negative", c.ReconnectMin)
	case c.ReconnectMax < c.ReconnectMin:
		return fmt.Errorf("mq publisher: ReconnectMax: %v is less than ReconnectMin %v", c.ReconnectMax, c.ReconnectMin)
	}
	return nil
}

// AMQPPublisher publishes lifecycle messages to RabbitMQ: persistent,
// application/json, with the envelope's message_id as the message ID, each
// one confirmed by the broker before Publish returns nil. It connects on the
// first Publish and again after a failure.
//
// Sends are serialised (messages leave in the order of the calls); the waits
// for the broker's confirms are not: concurrent Publish calls, or Send calls
// whose confirms are awaited later, have their messages in flight together,
// and the broker confirms them together (one fsync of each queue for many
// messages, where waiting for each confirm before the next send paid one
// fsync round a message, times every node's queue).
type AMQPPublisher struct {
	cfg PublisherConfig
	log *slog.Logger

	mu        sync.Mutex
	conn      *amqp.Connection
	ch        *amqp.Channel
	closed    bool
	failures  int       // consecutive failed connects
	nextDial  time.Time // no connect attempt before this
	lastError error     // of the last failed connect

	connected prometheus.Gauge
	published *prometheus.CounterVec
}

var _ attune.Publisher = (*AMQPPublisher)(nil)

// NewPublisher checks cfg and returns a publisher; it connects lazily, so a
// broker that is down at start-up does not stop the API.
func NewPublisher(cfg PublisherConfig) (*AMQPPublisher, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	p := &AMQPPublisher{
		cfg: cfg,
		log: log.With("component", "mq-publisher", "exchange", cfg.Exchange),
		connected: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "timerd_mq_publisher_connected",
			Help: "1 while the lifecycle publisher has a live RabbitMQ channel, else 0.",
		}),
		published: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "timerd_mq_published_total",
			Help: "Lifecycle messages published to RabbitMQ, by result (confirmed, nacked, error).",
		}, []string{"result"}),
	}
	for _, r := range []string{"confirmed", "nacked", "error"} {
		p.published.WithLabelValues(r)
	}
	if _, err := metricset.Register(cfg.Registerer, p.connected, p.published); err != nil {
		return nil, fmt.Errorf("mq publisher: %w", err)
	}
	return p, nil
}

// Publish sends m to the exchange with m.RoutingKey and waits for the
// broker's confirm. An error means the message may not have been stored;
// the caller decides (the API counts it; nodes reconcile).
func (p *AMQPPublisher) Publish(ctx context.Context, m attune.Message) error {
	c, err := p.Send(ctx, m)
	if err != nil {
		return err
	}
	return c.Wait(ctx)
}

// Confirm is the broker's answer to one sent message, awaited by Wait.
type Confirm struct {
	p    *AMQPPublisher
	ch   *amqp.Channel
	conf *amqp.DeferredConfirmation
	msg  attune.Message
	sent time.Time
	// reused: ch was open before this send, so a connection that died
	// since the last one may only show now, after the send (see wait).
	reused bool
	once   sync.Once
	err    error
}

// Send publishes m, in order after every earlier Send or Publish, and
// returns without waiting for the broker's confirm: Wait on the result does.
// An error means m was not sent (it is counted); nil means it is on its way,
// and only Wait's nil means the broker has stored it.
func (p *AMQPPublisher) Send(ctx context.Context, m attune.Message) (*Confirm, error) {
	c, err := p.send(ctx, m)
	if err != nil {
		p.count(err)
		return nil, err
	}
	return c, nil
}

// Wait waits for the confirm of the message: nil once the broker acked it;
// an error when it nacked it (errNacked), when the channel or the connection
// closed before the confirm (the broker may or may not have it), when ctx
// ended, or after PublisherConfig.ConfirmTimeout from the send. Every
// outcome is counted once; calling Wait again returns the same result.
func (c *Confirm) Wait(ctx context.Context) error {
	c.once.Do(func() {
		c.err = c.wait(ctx)
		if errors.Is(c.err, errChannelLost) && c.reused {
			// The connection died before this send reached the broker
			// or before its confirm came back: the send went to a
			// connection that was already dead, as far as this
			// publisher can tell. Once more on a fresh one (Publish did
			// so before confirms were pipelined); a duplicate is
			// harmless, and nodes apply changes by their time, not by
			// their arrival.
			c.p.log.Info("rabbitmq channel lost before a confirm; publishing again on a new connection", "err", c.err)
			c.err = c.resend(ctx)
		}
		c.p.count(c.err)
	})
	return c.err
}

// resend sends the message again, on a fresh channel if need be, and waits
// for that confirm.
func (c *Confirm) resend(ctx context.Context) error {
	again, err := c.p.send(ctx, c.msg)
	if err != nil {
		return err
	}
	again.reused = false // no third try
	return again.wait(ctx)
}

func (p *AMQPPublisher) count(err error) {
	switch {
	case err == nil:
		p.published.WithLabelValues("confirmed").Inc()
	case errors.Is(err, errNacked):
		p.published.WithLabelValues("nacked").Inc()
	default:
		p.published.WithLabelValues("error").Inc()
	}
}

var errNacked = errors.New("rabbitmq nacked the message")

// errChannelLost marks a publish that failed because the channel or the
// connection went away under it.
var errChannelLost = errors.New("channel lost")

func (p *AMQPPublisher) send(ctx context.Context, m attune.Message) (*Confirm, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, ErrPublisherClosed
	}
	for try := 0; ; try++ {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		reused := p.ch != nil && try == 0
		ch, err := p.channel(ctx)
		if err != nil {
			return nil, err
		}
		c, err := p.sendOn(ctx, ch, m)
		// A connection that died since the last send is only noticed
		// now: try once more on a fresh one. A duplicate is harmless
		// (lifecycle messages are idempotent).
		if errors.Is(err, errChannelLost) && reused {
			p.log.Info("rabbitmq channel lost; publishing again on a new connection", "err", err)
			continue
		}
		if c != nil {
			c.reused = reused
		}
		return c, err
	}
}

// sendOn publishes m on ch. p.mu is held.
func (p *AMQPPublisher) sendOn(ctx context.Context, ch *amqp.Channel, m attune.Message) (*Confirm, error) {
	msg := amqp.Publishing{
		ContentType:  "application/json",
		DeliveryMode: amqp.Persistent,
		MessageId:    envelopeMessageID(m.Body),
		Timestamp:    time.Now().UTC(),
		AppId:        "timerd",
		Body:         m.Body,
	}
	conf, err := ch.PublishWithDeferredConfirmWithContext(ctx, p.cfg.Exchange, m.RoutingKey, false, false, msg)
	if err != nil {
		p.dropLocked()
		return nil, fmt.Errorf("publish %q: %w: %w", m.RoutingKey, errChannelLost, err)
	}
	return &Confirm{p: p, ch: ch, conf: conf, msg: m, sent: time.Now()}, nil
}

func (c *Confirm) wait(ctx context.Context) error {
	timer := time.NewTimer(time.Until(c.sent.Add(c.p.cfg.ConfirmTimeout)))
	defer timer.Stop()
	select {
	case <-c.conf.Done():
	case <-ctx.Done():
		// The channel's confirm sequence is now uncertain: start afresh.
		// (The messages sent after this one on the channel get an error
		// too: a confirm missing for one is a broker in trouble.)
		c.p.drop(c.ch)
		return fmt.Errorf("publish %q: waiting for confirm: %w", c.msg.RoutingKey, ctx.Err())
	case <-timer.C:
		c.p.drop(c.ch)
		return fmt.Errorf("publish %q: no confirm within %v", c.msg.RoutingKey, c.p.cfg.ConfirmTimeout)
	}
	if c.conf.Acked() {
		return nil
	}
	// A closed channel nacks what it had pending; a real nack keeps it.
	if c.ch.IsClosed() {
		c.p.drop(c.ch)
		return fmt.Errorf("publish %q: %w before its confirm", c.msg.RoutingKey, errChannelLost)
	}
	return fmt.Errorf("publish %q: %w", c.msg.RoutingKey, errNacked)
}

// drop closes the connection of ch if ch is still the current channel: a
// Wait that failed on a channel already replaced leaves the new one alone.
func (p *AMQPPublisher) drop(ch *amqp.Channel) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ch == ch {
		p.dropLocked()
	}
}

// channel returns the live confirm-mode channel, connecting when there is
// none and a connect is due. p.mu is held.
func (p *AMQPPublisher) channel(ctx context.Context) (*amqp.Channel, error) {
	if p.ch != nil && !p.ch.IsClosed() && !p.conn.IsClosed() {
		return p.ch, nil
	}
	p.dropLocked()
	if now := time.Now(); now.Before(p.nextDial) {
		return nil, fmt.Errorf("%w (last error: %v; next attempt in %v)", ErrMQUnavailable, p.lastError, p.nextDial.Sub(now).Round(time.Millisecond))
	}
	conn, ch, err := p.connect(ctx)
	if err != nil {
		p.failures++
		p.lastError = err
		p.nextDial = time.Now().Add(backoff.Delay(p.failures, p.cfg.ReconnectMin, p.cfg.ReconnectMax))
		p.log.Warn("rabbitmq connect failed", "err", err, "failures", p.failures)
		return nil, fmt.Errorf("%w: %w", ErrMQUnavailable, err)
	}
	if p.failures > 0 {
		p.log.Info("rabbitmq reconnected", "after_failures", p.failures)
	}
	p.failures, p.lastError, p.nextDial = 0, nil, time.Time{}
	p.conn, p.ch = conn, ch
	p.connected.Set(1)
	return ch, nil
}

func (p *AMQPPublisher) connect(ctx context.Context) (*amqp.Connection, *amqp.Channel, error) {
	conn, err := Dial(ctx, p.cfg.URL, "timerd publisher "+p.cfg.Exchange)
	if err != nil {
		return nil, nil, err
	}
	ch, err := conn.Channel()
	if err == nil {
		err = DeclareExchange(ch, p.cfg.Exchange)
	}
	if err == nil {
		if err = ch.Confirm(false); err != nil {
			err = fmt.Errorf("enable publisher confirms: %w", err)
		}
	}
	if err != nil {
		_ = conn.Close()
		return nil, nil, err
	}
	return conn, ch, nil
}

// dropLocked closes the current connection, if any. p.mu is held.
func (p *AMQPPublisher) dropLocked() {
	if p.conn != nil {
		_ = p.conn.Close()
	}
	p.conn, p.ch = nil, nil
	p.connected.Set(0)
}

// Close closes the connection; later Publish calls fail with
// ErrPublisherClosed. It is idempotent.
func (p *AMQPPublisher) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	p.dropLocked()
	return nil
}

// envelopeMessageID is the top-level message_id of an envelope body, or "".
func envelopeMessageID(body []byte) string {
	var e struct {
		MessageID string `json:"message_id"`
	}
	if json.Unmarshal(body, &e) != nil || len(e.MessageID) > 255 {
		return ""
	}
	return e.MessageID
}
