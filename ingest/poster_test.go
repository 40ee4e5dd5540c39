package ingest

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"
)

// A keep-alive connection the server closed while it was idle (Node's and
// uvicorn's 5 s, a load balancer's 60 s) is no failed POST: the POST goes on a
// new connection, as net/http's transport does for a request with an
// Idempotency-Key.
func TestPosterRetriesAConnectionClosedWhileIdle(t *testing.T) {
	leakCheck(t)
	var posts atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		posts.Add(1)
		w.WriteHeader(http.StatusCreated)
	}))
	srv.Config.IdleTimeout = 100 * time.Millisecond
	srv.Start()
	defer srv.Close()
	p, err := newPoster(srv.URL+"/api/v1/events", 4)
	if err != nil {
		t.Fatal(err)
	}
	defer p.closeAll()
	for i := range 3 {
		a, err := p.post(time.Now().Add(5*time.Second), "1:1", "", []byte("{}"))
		if err != nil || a.status != http.StatusCreated {
			t.Fatalf("POST %d after the server closed the idle connection = %+v, %v; want 201", i, a, err)
		}
		time.Sleep(300 * time.Millisecond) // the server closes the idle connection
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
