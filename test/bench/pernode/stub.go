package main

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// stub is a null Attune for a cluster: it lists the rules (interval rules of one
// period, ids 1..rules) and takes every event, counting them and the keys seen twice.
type stub struct {
	url     string
	srv     *http.Server
	rules   int
	every   time.Duration
	created time.Time

	mu     sync.Mutex
	events []time.Time // receipt times
	keys   map[string]int
}

func startStub(rules int, every time.Duration) (*stub, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &stub{url: "http://" + ln.Addr().String(), rules: rules, every: every, created: time.Now().UTC(), keys: map[string]int{}}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte(`{"status":"ok"}`)) })
	mux.HandleFunc("GET /api/v1/rules", s.list)
	mux.HandleFunc("GET /api/v1/rules/{ref}", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusNotFound)
		_, _ = w.Write([]byte(`{"error":"not found"}`))
	})
	mux.HandleFunc("POST /auth/refresh", func(w http.ResponseWriter, r *http.Request) {
		tok, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		_ = json.NewEncoder(w).Encode(map[string]string{"token": tok, "expires_at": time.Now().Add(24 * time.Hour).Format(time.RFC3339)})
	})
	mux.HandleFunc("POST /api/v1/events", s.event)
	s.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = s.srv.Serve(ln) }() // returns at close
	return s, nil
}

func (s *stub) close() { _ = s.srv.Close() }

// list is GET /api/v1/rules?trigger_ref=&page=&page_size=: the interval rules, none of
// another trigger.
func (s *stub) list(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	page, _ := strconv.Atoi(q.Get("page"))
	size, _ := strconv.Atoi(q.Get("page_size"))
	page, size = max(page, 1), min(max(size, 1), 1000)
	total := 0
	if q.Get("trigger_ref") == "core.intervaltimer" {
		total = s.rules
	}
	from := min((page-1)*size, total)
	to := min(from+size, total)
	items := make([]map[string]any, 0, to-from)
	for id := from + 1; id <= to; id++ {
		items = append(items, map[string]any{"id": id, "ref": fmt.Sprintf("bench.%d", id), "trigger_ref": "core.intervaltimer",
			"trigger_params": map[string]any{"interval": int(s.every / time.Second)}, "enabled": true,
			"updated": s.updated(id).Format(time.RFC3339Nano)})
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{"items": items, "pagination": map[string]any{
		"page": page, "page_size": size, "total_items": total, "has_next": to < total}})
}

// updated is rule id's version, its interval's anchor: spread over the period before
// the stub started, so that the rules' fires spread over the period too instead of all
// falling on one instant.
func (s *stub) updated(id int) time.Time {
	return s.created.Add(-time.Duration(id) * s.every / time.Duration(s.rules+1))
}

// event is POST /api/v1/events: counted, answered 201.
func (s *stub) event(w http.ResponseWriter, r *http.Request) {
	key := r.Header.Get("Idempotency-Key")
	s.mu.Lock()
	s.events = append(s.events, time.Now())
	s.keys[key]++
	id := len(s.events)
	s.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated)
	_, _ = fmt.Fprintf(w, `{"data":{"id":%d}}`, id)
}

// window is the events received in [from, to), and the keys received more than once
// over the whole run.
func (s *stub) window(from, to time.Time) (events, repeated int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, at := range s.events {
		if !at.Before(from) && at.Before(to) {
			events++
		}
	}
	for _, n := range s.keys {
		if n > 1 {
			repeated++
		}
	}
	return events, repeated
}
