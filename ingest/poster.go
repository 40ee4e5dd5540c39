package ingest

import (
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttpproxy"
	"golang.org/x/net/http/httpproxy"

	"github.com/timerd/timerd/auth"
)

// poster sends the event POSTs over fasthttp's HostClient. At thousands of
// events a second the HTTP client was most of a node's CPU per event, and
// net/http's Transport costs about three times HostClient's a request: two
// goroutines per connection that hand each request and response over
// channels, header maps, a context per request (docs/benchmarks.md).
//
// What net/http did for delivery, it does too: it never follows a redirect
// (Do does not), never posts twice by itself (RetryIfErr refuses every
// retry), reads HTTP_PROXY, HTTPS_PROXY and NO_PROXY, sends the URL's user
// info as basic auth when there is no token, and keeps a connection alive for
// every POST in flight.
type poster struct {
	hc       *fasthttp.HostClient
	endpoint string
	basic    string // "Basic …" of the URL's user info, "" without
	conns    connSet
}

// idleConnTimeout closes a connection idle this long, before the server does:
// unlike net/http's transport, HostClient does not watch its idle connections,
// and a POST on one the server closed meanwhile fails (it is retried with
// backoff). Servers close idle connections after 5 s (Node, uvicorn), 60 s
// (cloud load balancers) or 75 s (nginx); a new connection costs a round trip
// at the next burst, nothing while events flow.
const idleConnTimeout = 4 * time.Second

// maxResponseHeader bounds an answer's status line and headers.
const maxResponseHeader = 16 << 10

// answer is what delivery needs of a response.
type answer struct {
	status     int
	statusLine string // "503 Service Unavailable"
	retryAfter string
	location   string
	excerpt    []byte // the body's first reasonExcerpt bytes, for a permanent status only
}

// newPoster returns a poster to endpoint (an http or https URL without query,
// checked by eventsURL) that keeps up to maxConns connections.
func newPoster(endpoint string, maxConns int) (*poster, error) {
	u, err := url.Parse(endpoint)
	if err != nil {
		return nil, err
	}
	isTLS := u.Scheme == "https"
	addr := u.Host
	if u.Port() == "" {
		port := "80"
		if isTLS {
			port = "443"
		}
		addr = net.JoinHostPort(u.Hostname(), port)
	}
	p := &poster{endpoint: endpoint}
	if u.User != nil {
		pw, _ := u.User.Password()
		p.basic = "Basic " + base64.StdEncoding.EncodeToString([]byte(u.User.Username()+":"+pw))
		u.User = nil
		p.endpoint = u.String()
	}
	dial, err := dialFunc(u)
	if err != nil {
		return nil, err
	}
	p.hc = &fasthttp.HostClient{
		Addr:  addr,
		Name:  "timerd",
		IsTLS: isTLS,
		Dial: func(addr string) (net.Conn, error) {
			c, err := dial(addr)
			if err != nil {
				return nil, err
			}
			return p.conns.add(c)
		},
		MaxConns:            maxConns,
		MaxIdleConnDuration: idleConnTimeout,
		// A POST waits for a connection rather than failing while all are
		// busy: the limiter keeps the POSTs in flight at most maxConns.
		MaxConnWaitTimeout: DefaultDeliveryTimeout,
		// Enough of a body to read a dead letter's reason and keep the
		// connection; a longer body is cut and its connection closed.
		MaxResponseBodySize: maxDrainedResponse,
		// An answer's status line and headers must fit in the read buffer
		// (fasthttp's default is 4 KiB; net/http allowed 1 MiB): an ingress
		// may add kilobytes of cookies and policies. 16 KiB a connection,
		// 8 MiB at the default budget's 512 connections.
		ReadBufferSize: maxResponseHeader,
		// Every POST is posted once by the client: a retry is delivery's
		// decision (backoff, a new token, a dead letter).
		RetryIfErr: func(*fasthttp.Request, int, error) (bool, bool) { return false, false },
		// The path is sent as ATTUNE_API_URL spells it.
		DisablePathNormalizing: true,
	}
	return p, nil
}

// post sends body with its idempotency key and Authorization value (none if
// ""), waiting until deadline at most.
func (p *poster) post(deadline time.Time, key, authorization string, body []byte) (answer, error) {
	req := fasthttp.AcquireRequest()
	resp := fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.SetRequestURI(p.endpoint)
	req.Header.SetMethod(http.MethodPost)
	req.Header.SetContentType("application/json")
	req.Header.Set("Idempotency-Key", key)
	switch {
	case authorization != "":
		req.Header.Set("Authorization", authorization)
	case p.basic != "":
		req.Header.Set("Authorization", p.basic)
	}
	req.SetBodyRaw(body)

	err := p.hc.DoDeadline(req, resp, deadline)
	if errors.Is(err, fasthttp.ErrBodyTooLarge) {
		// Returned only once the status and headers were read: the body was
		// too long to keep, and the connection is closed. The answer stands.
		err = nil
	}
	if err != nil {
		return answer{}, err
	}
	a := answer{status: resp.StatusCode()}
	if a.status >= 200 && a.status < 300 {
		return a, nil
	}
	msg := string(resp.Header.StatusMessage())
	if msg == "" {
		msg = http.StatusText(a.status)
	}
	a.statusLine = strconv.Itoa(a.status) + " " + msg
	if isPermanent(a.status) {
		b := resp.Body()
		a.excerpt = append([]byte(nil), b[:min(len(b), reasonExcerpt)]...)
	}
	if a.status == http.StatusTooManyRequests || a.status == http.StatusServiceUnavailable {
		a.retryAfter = string(resp.Header.Peek("Retry-After"))
	}
	if a.status >= 300 && a.status < 400 {
		a.location = string(resp.Header.Peek("Location"))
	}
	return a, nil
}

// dialFunc dials the proxy that HTTP_PROXY, HTTPS_PROXY and NO_PROXY name for
// u, or u's host directly (net.Dialer: fasthttp's own dialer keeps a DNS cache
// with a goroutine of its own).
func dialFunc(u *url.URL) (fasthttp.DialFunc, error) {
	const timeout = 5 * time.Second
	proxyURL, err := httpproxy.FromEnvironment().ProxyFunc()(u)
	if err != nil {
		return nil, fmt.Errorf("proxy from the environment: %w", err)
	}
	if proxyURL == nil {
		d := &net.Dialer{Timeout: timeout, KeepAlive: 30 * time.Second}
		return func(addr string) (net.Conn, error) { return d.Dial("tcp", addr) }, nil
	}
	d := &fasthttpproxy.Dialer{Timeout: timeout, ConnectTimeout: timeout, DialDualStack: true}
	d.Config = httpproxy.Config{HTTPProxy: proxyURL.String(), HTTPSProxy: proxyURL.String()}
	dial, err := d.GetDialFuncForTLS(false, u.Scheme == "https")
	if err != nil {
		return nil, fmt.Errorf("proxy %s: %w", proxyURL.Redacted(), err)
	}
	return dial, nil
}

// redirectNote says what a redirect answer asked for, as auth.RedirectNote
// does for net/http's responses.
func (p *poster) redirectNote(a answer) string {
	req, _ := http.NewRequest(http.MethodPost, p.endpoint, nil)
	h := http.Header{}
	if a.location != "" {
		h.Set("Location", a.location)
	}
	return auth.RedirectNote(&http.Response{StatusCode: a.status, Status: a.statusLine, Header: h, Request: req})
}

// closeAll closes every connection, idle or with a POST in flight: those POSTs
// return an error at once, and so does every POST until open. A stopping engine
// calls it so that Run returns without waiting for a receiver that does not
// answer.
func (p *poster) closeAll() {
	p.conns.closeAll()
	p.hc.CloseIdleConnections()
}

// open lets POSTs dial again after closeAll.
func (p *poster) open() {
	p.conns.mu.Lock()
	p.conns.closed = false
	p.conns.mu.Unlock()
}

// connSet is the connections a poster has open.
type connSet struct {
	mu     sync.Mutex
	conns  map[*trackedConn]struct{}
	closed bool // closeAll was called and open not since: dials fail
}

// errPosterClosed fails a dial between an engine's stop and the next start.
var errPosterClosed = errors.New("delivery stopped")

type trackedConn struct {
	net.Conn
	set  *connSet
	once sync.Once
}

func (s *connSet) add(c net.Conn) (net.Conn, error) {
	tc := &trackedConn{Conn: c, set: s}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		_ = c.Close()
		return nil, errPosterClosed
	}
	if s.conns == nil {
		s.conns = map[*trackedConn]struct{}{}
	}
	s.conns[tc] = struct{}{}
	s.mu.Unlock()
	return tc, nil
}

func (c *trackedConn) Close() error {
	c.once.Do(func() {
		c.set.mu.Lock()
		delete(c.set.conns, c)
		c.set.mu.Unlock()
	})
	return c.Conn.Close()
}

func (s *connSet) closeAll() {
	s.mu.Lock()
	s.closed = true
	open := make([]*trackedConn, 0, len(s.conns))
	for c := range s.conns {
		open = append(open, c)
	}
	s.mu.Unlock()
	for _, c := range open {
		_ = c.Close()
	}
}
