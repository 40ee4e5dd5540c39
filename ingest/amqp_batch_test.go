package ingest_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/timerd/timerd/ingest"
	"github.com/timerd/timerd/ingest/attune"
	"github.com/timerd/timerd/ingest/mqtest"
	"github.com/timerd/timerd/test/testkit"
)

// Messages waiting in the queue come in batches, in order, each batch acked
// as a whole; a failed batch comes again, whole and in order.
func TestConsumerRunBatch(t *testing.T) {
	e := newMQEnv(t)
	reg := prometheus.NewRegistry()
	c, err := ingest.NewConsumer(e.consumerConfig(e.url, reg))
	if err != nil {
		t.Fatalf("NewConsumer: %v", err)
	}
	if err := c.Declare(context.Background()); err != nil {
		t.Fatalf("Declare: %v", err)
	}
	const n = 300
	ch := rawChannel(t, e.url)
	for i := range n {
		key, body := lifecycleBody(i)
		publishRaw(t, ch, e.exchange, key, body)
	}
	testkit.Eventually(t, 5*time.Second, "messages queued", func() bool { return mqtest.QueueDepth(t, e.url, e.queue) == n })

	var (
		mu       sync.Mutex
		got      []attune.Message
		sizes    []int
		failed   bool
		sessions int
	)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- c.RunBatch(ctx, ingest.BatchHandler{
			Max: 100,
			Handle: func(msgs []attune.Message) error {
				mu.Lock()
				defer mu.Unlock()
				if !failed && len(got) > 0 {
					failed = true // the second batch fails once
					return errors.New("store down")
				}
				sizes = append(sizes, len(msgs))
				for _, m := range msgs {
					got = append(got, attune.Message{RoutingKey: m.RoutingKey, Body: append([]byte(nil), m.Body...)})
				}
				return nil
			},
			Consuming: func(on bool) {
				if on {
					mu.Lock()
					sessions++
					mu.Unlock()
				}
			},
		})
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("RunBatch = %v after cancel, want nil", err)
		}
	}()
	testkit.Eventually(t, 10*time.Second, "every message handled", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(got) >= n
	})
	mu.Lock()
	checkSequence(t, got, 0, n)
	biggest := 0
	for _, s := range sizes {
		if s > 100 {
			t.Errorf("a batch of %d messages, want at most Max 100", s)
		}
		biggest = max(biggest, s)
	}
	if biggest < 2 {
		t.Errorf("batch sizes %v: want batches of more than one message when the queue is full", sizes)
	}
	if sessions != 2 {
		t.Errorf("consume sessions = %d, want 2 (one more after the failed batch)", sessions)
	}
	mu.Unlock()
	testkit.Eventually(t, 5*time.Second, "queue empty (acked)", func() bool { return mqtest.QueueDepth(t, e.url, e.queue) == 0 })
	if got := mqMetric(t, reg, "timerd_mq_requeued_total"); got < 1 {
		t.Errorf("timerd_mq_requeued_total = %v, want at least 1", got)
	}
}
