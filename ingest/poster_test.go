package ingest

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// HostClient does not watch its idle connections as net/http's transport
// does: a POST on one the server closed meanwhile would fail. The poster
// closes them first, after idleConnTimeout, shorter than the 5 s after which
// Node or uvicorn close theirs.
func TestPosterClosesIdleConnectionsBeforeTheServer(t *testing.T) {
	leakCheck(t)
	var posts atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		posts.Add(1)
		w.WriteHeader(http.StatusCreated)
	}))
	srv.Config.IdleTimeout = idleConnTimeout + time.Second
	srv.Start()
	defer srv.Close()
	p, err := newPoster(srv.URL+"/api/v1/events", 4)
	if err != nil {
		t.Fatal(err)
	}
	defer p.closeAll()
	for i := range 3 {
		if i > 0 {
			time.Sleep(idleConnTimeout + 1500*time.Millisecond) // the server's idle timeout has passed
		}
		a, err := p.post(time.Now().Add(5*time.Second), "1:1", "", []byte("{}"))
		if err != nil || a.status != http.StatusCreated {
			t.Fatalf("POST %d after the server's idle timeout = %+v, %v; want 201", i, a, err)
		}
	}
	if n := posts.Load(); n != 3 {
		t.Errorf("the server saw %d POSTs, want 3", n)
	}
}

// An answer too long to keep still counts: a 201 with a body over
// maxDrainedResponse is delivered (not retried, which would post it twice),
// and a 400's reason keeps the body's start.
func TestPosterLongAnswer(t *testing.T) {
	leakCheck(t)
	status := http.StatusCreated
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(status)
		_, _ = w.Write(bytes.Repeat([]byte("x"), 4*maxDrainedResponse))
	}))
	defer srv.Close()
	p, err := newPoster(srv.URL+"/api/v1/events", 4)
	if err != nil {
		t.Fatal(err)
	}
	defer p.closeAll()
	if a, err := p.post(time.Now().Add(5*time.Second), "1:1", "", []byte("{}")); err != nil || a.status != http.StatusCreated {
		t.Errorf("201 with a %d-byte body = %+v, %v; want 201", 4*maxDrainedResponse, a, err)
	}
	status = http.StatusBadRequest
	a, err := p.post(time.Now().Add(5*time.Second), "1:1", "", []byte("{}"))
	if err != nil || a.status != http.StatusBadRequest || a.statusLine != "400 Bad Request" {
		t.Errorf("400 with a long body = %d %q, %v; want 400 Bad Request", a.status, a.statusLine, err)
	}
}

// An ingress may add kilobytes of headers to the API's answer: they are read,
// up to maxResponseHeader, and the answer counts.
func TestPosterLongHeaders(t *testing.T) {
	leakCheck(t)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Security-Policy", strings.Repeat("a", maxResponseHeader/2))
		w.Header().Set("Set-Cookie", strings.Repeat("b", maxResponseHeader/4))
		w.WriteHeader(http.StatusCreated)
	}))
	defer srv.Close()
	p, err := newPoster(srv.URL+"/api/v1/events", 4)
	if err != nil {
		t.Fatal(err)
	}
	defer p.closeAll()
	if a, err := p.post(time.Now().Add(5*time.Second), "1:1", "", []byte("{}")); err != nil || a.status != http.StatusCreated {
		t.Errorf("201 with %d bytes of headers = %+v, %v; want 201", 3*maxResponseHeader/4, a, err)
	}
}

// The URL's user info is sent as basic auth when there is no token, and
// never in the request line.
func TestPosterBasicAuthFromURL(t *testing.T) {
	leakCheck(t)
	var got, uri atomic.Value
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got.Store(r.Header.Get("Authorization"))
		uri.Store(r.RequestURI)
		w.WriteHeader(http.StatusCreated)
	}))
	defer srv.Close()
	p, err := newPoster("http://sensor:pa%20ss@"+srv.Listener.Addr().String()+"/api/v1/events", 4)
	if err != nil {
		t.Fatal(err)
	}
	defer p.closeAll()
	if _, err := p.post(time.Now().Add(5*time.Second), "1:1", "", []byte("{}")); err != nil {
		t.Fatal(err)
	}
	if a := got.Load(); a != "Basic c2Vuc29yOnBhIHNz" { // sensor:pa ss
		t.Errorf("Authorization = %q, want the URL's user info as basic auth", a)
	}
	if u := uri.Load(); u != "/api/v1/events" {
		t.Errorf("request URI = %q, want /api/v1/events", u)
	}
	if _, err := p.post(time.Now().Add(5*time.Second), "1:1", "Bearer tok", []byte("{}")); err != nil {
		t.Fatal(err)
	}
	if a := got.Load(); a != "Bearer tok" {
		t.Errorf("Authorization with a token = %q, want the token", a)
	}
}

// HTTP_PROXY is honoured, as net/http's transport did: the POST goes through
// the proxy (a CONNECT tunnel), which alone can reach the API's host name.
func TestPosterUsesTheProxyFromTheEnvironment(t *testing.T) {
	leakCheck(t)
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusCreated) }))
	defer api.Close()
	_, port, _ := net.SplitHostPort(api.Listener.Addr().String())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var tunnels atomic.Int64
	var wg sync.WaitGroup
	defer func() { _ = ln.Close(); wg.Wait() }()
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() { proxyConnect(t, c, "attune.invalid:"+port, api.Listener.Addr().String(), &tunnels) })
		}
	})
	t.Setenv("HTTP_PROXY", "http://"+ln.Addr().String())
	t.Setenv("NO_PROXY", "")
	p, err := newPoster("http://attune.invalid:"+port+"/api/v1/events", 4)
	if err != nil {
		t.Fatal(err)
	}
	a, err := p.post(time.Now().Add(5*time.Second), "1:1", "", []byte("{}"))
	p.closeAll()
	if err != nil || a.status != http.StatusCreated {
		t.Fatalf("POST through the proxy = %+v, %v; want 201", a, err)
	}
	if n := tunnels.Load(); n != 1 {
		t.Errorf("the proxy opened %d tunnels, want 1", n)
	}
}

// proxyConnect serves one CONNECT to want by a tunnel to addr.
func proxyConnect(t *testing.T, c net.Conn, want, addr string, tunnels *atomic.Int64) {
	defer c.Close()
	req, err := http.ReadRequest(bufio.NewReader(c))
	if err != nil || req.Method != http.MethodConnect || req.Host != want {
		t.Errorf("the proxy got %v %v, want CONNECT %s", req, err, want)
		return
	}
	up, err := net.Dial("tcp", addr)
	if err != nil {
		t.Errorf("proxy dial: %v", err)
		return
	}
	defer up.Close()
	tunnels.Add(1)
	if _, err := c.Write([]byte("HTTP/1.1 200 Connection established\r\n\r\n")); err != nil {
		return
	}
	go func() { _, _ = io.Copy(up, c); _ = up.Close() }()
	_, _ = io.Copy(c, up)
}
