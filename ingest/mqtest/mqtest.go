// Package mqtest gives tests a real RabbitMQ broker: its URL, a unique name
// prefix per test, clean-up of what a test declared, and a TCP proxy whose
// connections a test can cut to simulate a broker outage.
//
// The broker is TIMERD_TEST_MQ_URL, or amqp://guest:guest@127.0.0.1:5672/
// (test/mq/ensure-rabbitmq.sh, which `make test` runs, starts one there).
// A test that needs the broker fails when it does not answer: it never skips.
package mqtest

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// DefaultURL is the broker tests use when TIMERD_TEST_MQ_URL is not set.
const DefaultURL = "amqp://guest:guest@127.0.0.1:5672/"

// The shared broker is used by the tests of several packages at once (go
// test runs packages in parallel). A test that stops it takes an exclusive
// lock on lockPath; every other test holds a shared one while it runs, so a
// restart never pulls the broker from under another package's test.
var (
	lockPath  = filepath.Join(os.TempDir(), "timerd-test-broker.lock")
	exclusive sync.Mutex // held by this process's exclusive holder, if any
	exclHeld  bool
)

// Exclusive gives t the broker to itself until it ends: it waits until no
// test of any package holds the broker, and keeps others waiting. Call it
// before URL in a test that stops or restarts the broker.
func Exclusive(t testing.TB) {
	t.Helper()
	f := lockBroker(t, syscall.LOCK_EX)
	exclusive.Lock()
	exclHeld = true
	exclusive.Unlock()
	t.Cleanup(func() {
		exclusive.Lock()
		exclHeld = false
		exclusive.Unlock()
		f.Close()
	})
}

// lockBroker takes a flock of kind how on lockPath, released when the file
// is closed.
func lockBroker(t testing.TB, how int) *os.File {
	t.Helper()
	f, err := os.OpenFile(lockPath, os.O_CREATE|os.O_RDWR, 0o666)
	if err != nil {
		t.Fatalf("broker lock %s: %v", lockPath, err)
	}
	if err := syscall.Flock(int(f.Fd()), how); err != nil {
		f.Close()
		t.Fatalf("broker lock %s: %v", lockPath, err)
	}
	return f
}

// URL returns the test broker's URL, failing t when nothing answers AMQP
// there. t holds the broker (shared) until it ends; see Exclusive.
func URL(t testing.TB) string {
	t.Helper()
	exclusive.Lock()
	mine := exclHeld
	exclusive.Unlock()
	if !mine {
		f := lockBroker(t, syscall.LOCK_SH)
		t.Cleanup(func() { f.Close() })
	}
	u := os.Getenv("TIMERD_TEST_MQ_URL")
	if u == "" {
		u = DefaultURL
	}
	conn, err := amqp.DialConfig(u, amqp.Config{Dial: amqp.DefaultDial(5 * time.Second)})
	if err != nil {
		t.Fatalf("no RabbitMQ broker at %s: %v (run test/mq/ensure-rabbitmq.sh, as `make test` does, or set TIMERD_TEST_MQ_URL)", redact(u), err)
	}
	_ = conn.Close()
	return u
}

// Prefix returns a name prefix unique to this test run and test, such as
// "timerd-test.TestConsumer.1a2b3c4d", for exchanges and queues.
func Prefix(t testing.TB) string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	name := strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '-' {
			return r
		}
		return '_'
	}, t.Name())
	if len(name) > 80 {
		name = name[:80]
	}
	return "timerd-test." + name + "." + hex.EncodeToString(b[:])
}

// Cleanup deletes the named exchange and queues when t ends (missing ones
// are fine).
func Cleanup(t testing.TB, brokerURL, exchange string, queues ...string) {
	t.Helper()
	t.Cleanup(func() {
		conn, err := amqp.DialConfig(brokerURL, amqp.Config{Dial: amqp.DefaultDial(5 * time.Second)})
		if err != nil {
			t.Errorf("mqtest cleanup: dial: %v", err)
			return
		}
		defer conn.Close()
		for _, q := range queues {
			// A failed delete closes the channel: one channel per delete.
			if ch, err := conn.Channel(); err == nil {
				_, _ = ch.QueueDelete(q, false, false, false)
				_ = ch.Close()
			}
		}
		if exchange != "" {
			if ch, err := conn.Channel(); err == nil {
				_ = ch.ExchangeDelete(exchange, false, false)
				_ = ch.Close()
			}
		}
	})
}

// QueueDepth is the number of ready messages in queue, read over a connection of its own.
func QueueDepth(t testing.TB, brokerURL, queue string) int {
	t.Helper()
	conn, err := amqp.DialConfig(brokerURL, amqp.Config{Dial: amqp.DefaultDial(5 * time.Second)})
	if err != nil {
		t.Fatalf("mqtest: dial %s: %v", redact(brokerURL), err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatalf("mqtest: channel: %v", err)
	}
	q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
	if err != nil {
		t.Fatalf("mqtest: queue %s: %v", queue, err)
	}
	return q.Messages
}

// CloseConnections makes the broker itself close every client connection
// whose name (the connection_name client property) contains name, with
// `rabbitmqctl close_connection`, and returns how many it closed. It needs
// the local broker's rabbitmqctl (run as root or the rabbitmq user). It
// takes no testing.TB so that a handler running outside the test goroutine
// can call it.
func CloseConnections(name string) (int, error) {
	ctl, err := exec.LookPath("rabbitmqctl")
	if err != nil {
		if _, statErr := os.Stat("/usr/sbin/rabbitmqctl"); statErr != nil {
			return 0, fmt.Errorf("rabbitmqctl not found: %w", err)
		}
		ctl = "/usr/sbin/rabbitmqctl"
	}
	out, err := exec.Command(ctl, "-q", "list_connections", "pid", "client_properties").CombinedOutput()
	if err != nil {
		return 0, fmt.Errorf("rabbitmqctl list_connections: %w: %s", err, out)
	}
	n := 0
	for line := range strings.SplitSeq(string(out), "\n") {
		// client_properties prints as [{"connection_name","…"},…].
		pid, props, ok := strings.Cut(strings.TrimSpace(line), "\t")
		if !ok || !strings.Contains(props, `{"connection_name","`) || !strings.Contains(props, name) {
			continue
		}
		if o, err := exec.Command(ctl, "-q", "close_connection", pid, "mqtest").CombinedOutput(); err != nil {
			return n, fmt.Errorf("rabbitmqctl close_connection %s: %w: %s", pid, err, o)
		}
		n++
	}
	return n, nil
}

// Proxy is a TCP proxy on 127.0.0.1 in front of the broker. Cut drops every
// connection through it and Down refuses new ones, so a test can simulate a
// network failure or an outage without touching the shared broker.
type Proxy struct {
	ln     net.Listener
	target string
	url    string

	mu       sync.Mutex
	down     bool
	closed   bool
	accepted int // connections accepted, refused ones included
	conns    map[net.Conn]struct{}
	wg       sync.WaitGroup
}

// NewProxy starts a proxy to the broker of brokerURL and stops it when t
// ends.
func NewProxy(t testing.TB, brokerURL string) *Proxy {
	t.Helper()
	u, err := url.Parse(brokerURL)
	if err != nil {
		t.Fatalf("mqtest: parse broker URL: %v", err)
	}
	target := u.Host
	if u.Port() == "" {
		target = net.JoinHostPort(u.Hostname(), "5672")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("mqtest: proxy listen: %v", err)
	}
	proxied := *u
	proxied.Host = ln.Addr().String()
	p := &Proxy{ln: ln, target: target, url: proxied.String(), conns: make(map[net.Conn]struct{})}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.Close)
	return p
}

// URL is the broker URL through the proxy.
func (p *Proxy) URL() string { return p.url }

// Cut closes every connection through the proxy.
func (p *Proxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		_ = c.Close()
	}
}

// Down sets whether the proxy refuses new connections (it accepts and closes
// them at once, as a broker that is starting up would).
func (p *Proxy) Down(down bool) {
	p.mu.Lock()
	p.down = down
	p.mu.Unlock()
}

// Accepted is the number of connections clients made to the proxy,
// refused ones included.
func (p *Proxy) Accepted() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.accepted
}

// Close stops the proxy and drops its connections.
func (p *Proxy) Close() {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	_ = p.ln.Close()
	p.Cut()
	p.wg.Wait()
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		down := p.down
		p.accepted++
		p.mu.Unlock()
		if down {
			_ = c.Close()
			continue
		}
		up, err := net.DialTimeout("tcp", p.target, 5*time.Second)
		if err != nil {
			_ = c.Close()
			continue
		}
		if !p.track(c, up) {
			continue
		}
		p.wg.Add(2)
		go p.pipe(c, up)
		go p.pipe(up, c)
	}
}

// track registers a pair, or closes it when the listener is already closed.
func (p *Proxy) track(a, b net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		_ = a.Close()
		_ = b.Close()
		return false
	}
	p.conns[a] = struct{}{}
	p.conns[b] = struct{}{}
	return true
}

func (p *Proxy) pipe(dst, src net.Conn) {
	defer p.wg.Done()
	_, _ = io.Copy(dst, src)
	_ = dst.Close()
	_ = src.Close()
	p.mu.Lock()
	delete(p.conns, dst)
	delete(p.conns, src)
	p.mu.Unlock()
}

func redact(u string) string {
	if pu, err := url.Parse(u); err == nil {
		return pu.Redacted()
	}
	return "(unparsable URL)"
}
