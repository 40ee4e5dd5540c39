package ingest

import (
	"context"
	"errors"
	"fmt"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/timerd/timerd/ingest/attune"
	"github.com/timerd/timerd/ingest/backoff"
)

// A batch closes when no delivery followed the last one within batchGap,
// or batchWindow after it opened: a lone message waits batchGap at most.
const (
	batchGap    = 500 * time.Microsecond
	batchWindow = 10 * time.Millisecond
)

// BatchHandler is what RunBatch calls.
type BatchHandler struct {
	// Handle is called with one or more messages in queue order: every
	// message that has already arrived, up to Max. They are acked together
	// after it returns nil, so a caller can commit them in one transaction.
	// An error requeues all of them (see Run).
	Handle func([]attune.Message) error
	// Max bounds a batch; default (0) the consumer's Prefetch.
	Max int
	// Consuming, if set, is called with true when a consume session has
	// started (the queue is declared and bound and deliveries flow) and
	// with false when it ended. It must not block.
	Consuming func(bool)
}

// RunBatch is Run with batches: when several messages wait in the
// prefetch buffer, the handler gets them in one call, so applying them
// costs one store commit rather than one per message. Ordering, ack after a
// nil return, requeue on error and reconnects are as in Run.
func (c *Consumer) RunBatch(ctx context.Context, h BatchHandler) error {
	if h.Handle == nil {
		return errors.New("mq consumer: RunBatch: Handle is nil")
	}
	if h.Max <= 0 {
		h.Max = c.cfg.Prefetch
	}
	defer c.Close()
	attempt := 0
	for {
		if ctx.Err() != nil {
			return nil
		}
		c.mu.Lock()
		conn := c.conn
		c.mu.Unlock()
		if conn == nil || conn.IsClosed() {
			var err error
			conn, err = c.connect(ctx)
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				attempt++
				wait := backoff.Delay(attempt, c.cfg.ReconnectMin, c.cfg.ReconnectMax)
				c.log.Warn("rabbitmq connect failed; retrying", "err", err, "retry_in", wait)
				if !backoff.Sleep(ctx, wait) {
					return nil
				}
				continue
			}
			c.mu.Lock()
			c.conn = conn
			c.mu.Unlock()
		}
		ch, err := c.openChannel(conn)
		if err == nil {
			attempt = 0
			err = c.consumeBatch(ctx, conn, ch, h)
			_ = ch.Close()
		}
		c.metrics.connected.Set(0)
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, errRequeued) && !conn.IsClosed() {
			continue // a fresh channel on the same connection
		}
		_ = c.Close()
		attempt++
		wait := backoff.Delay(attempt, c.cfg.ReconnectMin, c.cfg.ReconnectMax)
		c.log.Warn("rabbitmq session ended; reconnecting", "err", err, "retry_in", wait)
		if !backoff.Sleep(ctx, wait) {
			return nil
		}
	}
}

func (c *Consumer) consumeBatch(ctx context.Context, conn *amqp.Connection, ch *amqp.Channel, h BatchHandler) error {
	chClosed := ch.NotifyClose(make(chan *amqp.Error, 1))
	connClosed := conn.NotifyClose(make(chan *amqp.Error, 1))
	deliveries, err := ch.Consume(c.cfg.Queue, "", false, false, false, false, nil)
	if err != nil {
		return fmt.Errorf("consume %q: %w", c.cfg.Queue, err)
	}
	c.metrics.connected.Set(1)
	if h.Consuming != nil {
		h.Consuming(true)
		defer h.Consuming(false)
	}
	var gap *time.Timer
	batch := make([]amqp.Delivery, 0, h.Max)
	msgs := make([]attune.Message, 0, h.Max)
	for {
		batch, msgs = batch[:0], msgs[:0]
		select {
		case <-ctx.Done():
			return nil
		case e := <-chClosed:
			return closeErr("channel", e)
		case e := <-connClosed:
			return closeErr("connection", e)
		case d, ok := <-deliveries:
			if !ok {
				return errors.New("delivery channel closed")
			}
			batch = append(batch, d)
		}
		// Take what follows closely. amqp091 hands deliveries over one at
		// a time through a goroutine, so a plain non-blocking receive
		// mostly finds nothing even when the prefetch buffer is full: wait
		// a short gap for the next one instead.
		if len(batch) < h.Max {
			if gap == nil {
				gap = time.NewTimer(batchGap)
			} else {
				gap.Reset(batchGap)
			}
			deadline := time.Now().Add(batchWindow)
		fill:
			for len(batch) < h.Max {
				select {
				case d, ok := <-deliveries:
					if !ok {
						break fill
					}
					batch = append(batch, d)
					if time.Now().After(deadline) {
						break fill
					}
					gap.Reset(batchGap)
				case <-gap.C:
					break fill
				}
			}
			gap.Stop()
		}
		for _, d := range batch {
			msgs = append(msgs, attune.Message{RoutingKey: d.RoutingKey, Body: d.Body})
		}
		last := batch[len(batch)-1]
		if err := h.Handle(msgs); err != nil {
			c.metrics.requeued.Add(float64(len(batch)))
			c.log.Warn("lifecycle messages not applied; requeueing",
				"messages", len(batch), "first_message_id", batch[0].MessageId, "err", err, "retry_in", c.cfg.RequeueDelay)
			if !backoff.Sleep(ctx, c.cfg.RequeueDelay) {
				return nil // closing the channel requeues them
			}
			if err := last.Nack(true, true); err != nil {
				return fmt.Errorf("nack: %w", err)
			}
			return errRequeued
		}
		// One ack for the whole batch: multiple=true covers every earlier
		// delivery of this channel not acked yet.
		if err := last.Ack(true); err != nil {
			return fmt.Errorf("ack: %w", err)
		}
	}
}
