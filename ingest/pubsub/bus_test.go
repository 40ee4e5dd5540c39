package pubsub

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/timerd/timerd/ingest/attune"
)

func recvN(t *testing.T, ch <-chan attune.Message, n int) []attune.Message {
	t.Helper()
	var got []attune.Message
	deadline := time.After(10 * time.Second)
	for len(got) < n {
		select {
		case m, ok := <-ch:
			if !ok {
				t.Fatalf("channel closed after %d of %d messages", len(got), n)
			}
			got = append(got, m)
		case <-deadline:
			t.Fatalf("received %d of %d messages before the deadline", len(got), n)
		}
	}
	return got
}

func TestBusFanOutInOrder(t *testing.T) {
	defer goleak.VerifyNone(t)
	b := NewBus()
	defer b.Close()
	ctx := context.Background()
	const subs, n = 3, 1000
	var chans []<-chan attune.Message
	for range subs {
		ch, cancel := b.Subscribe()
		defer cancel()
		chans = append(chans, ch)
	}
	buf := make([]byte, 0, 16)
	for i := range n {
		buf = fmt.Appendf(buf[:0], "%d", i) // reused: Publish must copy
		if err := b.Publish(ctx, attune.Message{RoutingKey: "rule.created", Body: buf}); err != nil {
			t.Fatalf("Publish(%d) = %v", i, err)
		}
	}
	for s, ch := range chans {
		got := recvN(t, ch, n)
		for i, m := range got {
			if want := fmt.Sprint(i); string(m.Body) != want || m.RoutingKey != "rule.created" {
				t.Fatalf("subscriber %d message %d = %q/%q, want %q/rule.created", s, i, m.RoutingKey, m.Body, want)
			}
		}
	}
}

// A subscriber that never reads must not block the publisher or the others.
func TestBusSlowSubscriberDoesNotBlock(t *testing.T) {
	defer goleak.VerifyNone(t)
	b := NewBus()
	defer b.Close()
	_, cancelStuck := b.Subscribe()
	defer cancelStuck()
	ch, cancel := b.Subscribe()
	defer cancel()

	const n = 10_000
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range n {
			if err := b.Publish(context.Background(), attune.Message{Body: []byte{byte(i)}}); err != nil {
				t.Errorf("Publish = %v", err)
				return
			}
		}
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Publish blocked behind a subscriber that does not read")
	}
	recvN(t, ch, n)
}

func TestBusCancel(t *testing.T) {
	defer goleak.VerifyNone(t)
	b := NewBus()
	ch, cancel := b.Subscribe()
	if err := b.Publish(context.Background(), attune.Message{Body: []byte("queued")}); err != nil {
		t.Fatalf("Publish = %v", err)
	}
	cancel()
	cancel() // idempotent
	// The channel is closed; a queued message may or may not have been handed over.
	for range ch {
	}
	// Publishing after a cancel reaches nobody and does not fail.
	if err := b.Publish(context.Background(), attune.Message{}); err != nil {
		t.Fatalf("Publish after cancel = %v", err)
	}
	b.Close()
	b.Close()
	if err := b.Publish(context.Background(), attune.Message{}); !errors.Is(err, ErrBusClosed) {
		t.Fatalf("Publish after Close = %v, want ErrBusClosed", err)
	}
	ch2, cancel2 := b.Subscribe()
	defer cancel2()
	if _, ok := <-ch2; ok {
		t.Fatal("Subscribe after Close: channel is open, want closed")
	}
}

func TestBusCloseClosesSubscribers(t *testing.T) {
	defer goleak.VerifyNone(t)
	b := NewBus()
	ch, cancel := b.Subscribe()
	b.Close()
	cancel()
	select {
	case _, ok := <-ch:
		if ok {
			t.Fatal("after Close: received a message, want closed channel")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("after Close: channel not closed")
	}
}

func TestBusPublishCanceledContext(t *testing.T) {
	b := NewBus()
	defer b.Close()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := b.Publish(ctx, attune.Message{}); !errors.Is(err, context.Canceled) {
		t.Fatalf("Publish(canceled ctx) = %v, want context.Canceled", err)
	}
}

func TestBusConcurrent(t *testing.T) {
	defer goleak.VerifyNone(t)
	b := NewBus()
	defer b.Close()
	ch, cancel := b.Subscribe()
	defer cancel()
	const writers, per = 8, 500
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range per {
				_ = b.Publish(context.Background(), attune.Message{RoutingKey: fmt.Sprint(w), Body: fmt.Appendf(nil, "%d", i)})
				if i%50 == 0 { // churn subscriptions meanwhile
					_, c := b.Subscribe()
					c()
				}
			}
		})
	}
	got := recvN(t, ch, writers*per)
	wg.Wait()
	// Per publisher, order is kept.
	next := map[string]int{}
	for _, m := range got {
		if want := fmt.Sprint(next[m.RoutingKey]); string(m.Body) != want {
			t.Fatalf("publisher %s: got %s, want %s", m.RoutingKey, m.Body, want)
		}
		next[m.RoutingKey]++
	}
}
