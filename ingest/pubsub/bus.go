package pubsub

import (
	"context"
	"errors"
	"sync"

	"github.com/timerd/timerd/ingest/attune"
)

// ErrBusClosed is returned by Publish and Subscribe after Close.
var ErrBusClosed = errors.New("bus closed")

// Bus is an in-process lifecycle bus, used by `timerd dev` in place of
// RabbitMQ. Every subscriber gets every message published after it
// subscribed, in publish order. Publish never blocks: each subscriber has an
// unbounded queue drained by its own goroutine into its channel, so a slow
// subscriber costs memory, never the publisher's progress. Rule lifecycle
// traffic is small (one message per rule write), so the bound is left to the
// callers.
type Bus struct {
	mu     sync.Mutex
	subs   map[*busSub]struct{}
	closed bool
}

type busSub struct {
	mu     sync.Mutex
	queue  []attune.Message
	notify chan struct{} // capacity 1: "queue is not empty"
	done   chan struct{} // closed on unsubscribe
	exited chan struct{} // closed when the pump goroutine returns
	out    chan attune.Message
	once   sync.Once
}

var _ attune.Publisher = (*Bus)(nil)

// subBuffer is the capacity of a subscriber's channel. A reader that takes
// what is waiting without blocking (the node's intake, to commit it in one
// batch) finds at most one message in an unbuffered channel, since the pump
// hands them over one at a time: a burst of creates became one store commit
// each. Buffered, a batch takes whatever the pump has moved meanwhile.
const subBuffer = 4096

// NewBus returns an empty bus.
func NewBus() *Bus {
	return &Bus{subs: make(map[*busSub]struct{})}
}

// Publish queues m for every current subscriber. The body is copied once, so
// the caller may reuse its buffer; subscribers share the copy and must not
// modify it.
func (b *Bus) Publish(ctx context.Context, m attune.Message) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.Body = append([]byte(nil), m.Body...)
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return ErrBusClosed
	}
	for s := range b.subs {
		s.mu.Lock()
		s.queue = append(s.queue, m)
		s.mu.Unlock()
		select {
		case s.notify <- struct{}{}:
		default:
		}
	}
	return nil
}

// Subscribe returns a channel that receives every message published from now
// on, and a cancel func that unsubscribes, drops what is still queued, and
// closes the channel (what its buffer already holds is still received
// before the close). Cancel is idempotent and safe to call concurrently with
// Publish. On a closed bus the channel is already closed.
func (b *Bus) Subscribe() (<-chan attune.Message, func()) {
	s := &busSub{
		notify: make(chan struct{}, 1),
		done:   make(chan struct{}),
		exited: make(chan struct{}),
		out:    make(chan attune.Message, subBuffer),
	}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		close(s.out)
		return s.out, func() {}
	}
	b.subs[s] = struct{}{}
	b.mu.Unlock()
	go s.pump()
	cancel := func() {
		b.mu.Lock()
		delete(b.subs, s)
		b.mu.Unlock()
		s.stop()
	}
	return s.out, cancel
}

// Close unsubscribes everyone (closing their channels) and makes later
// Publish calls fail with ErrBusClosed. It is idempotent.
func (b *Bus) Close() {
	b.mu.Lock()
	b.closed = true
	subs := b.subs
	b.subs = make(map[*busSub]struct{})
	b.mu.Unlock()
	for s := range subs {
		s.stop()
	}
}

func (s *busSub) stop() {
	s.once.Do(func() {
		close(s.done)
		<-s.exited
		close(s.out)
	})
}

// pump moves queued messages to out, one at a time, in order.
func (s *busSub) pump() {
	defer close(s.exited)
	for {
		select {
		case <-s.done:
			return
		case <-s.notify:
		}
		for {
			s.mu.Lock()
			batch := s.queue
			s.queue = nil
			s.mu.Unlock()
			if len(batch) == 0 {
				break
			}
			for i := range batch {
				select {
				case s.out <- batch[i]:
				case <-s.done:
					return
				}
			}
		}
	}
}
