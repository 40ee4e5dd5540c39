package main

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttpadaptor"
)

// stub is a null Attune: it lists cfg.Rules timer rules and takes every event.
type stub struct {
	cfg  config
	url  string
	srv  *fasthttp.Server
	base time.Time        // datetime rules fire from here over the warm-up's second half and the window
	ids  map[string][]int // rule ids by trigger
	// created is the rules' updated time: they start with the stub, with no
	// slots to catch up (an older one would anchor them in the past).
	created time.Time

	mu     sync.Mutex
	events []received
	keys   map[string]int
	nextID atomic.Int64
}

type received struct {
	received, scheduled time.Time
}

func startStub(cfg config) (*stub, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &stub{cfg: cfg, url: "http://" + ln.Addr().String(), keys: map[string]int{},
		base: time.Now().Add(cfg.Warmup / 2), created: time.Now().UTC(), ids: map[string][]int{}}
	for id := 1; id <= cfg.Rules; id++ {
		k := s.kindOf(id)
		s.ids[k] = append(s.ids[k], id)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte(`{"status":"ok"}`)) })
	mux.HandleFunc("GET /api/v1/rules", s.list)
	mux.HandleFunc("GET /api/v1/rules/{ref}", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusNotFound)
		w.Write([]byte(`{"error":"not found"}`))
	})
	mux.HandleFunc("POST /auth/refresh", func(w http.ResponseWriter, r *http.Request) {
		// The token lives 24 h: a run never needs a new one; answer with the same.
		tok, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		_ = json.NewEncoder(w).Encode(map[string]string{"token": tok, "expires_at": time.Now().Add(24 * time.Hour).Format(time.RFC3339)})
	})
	// The event POSTs, thousands a second, are served by fasthttp: the stub
	// shares the machine with the agent it measures, and net/http's server
	// took about as much CPU a request as the agent. The rest goes through
	// net/http's mux.
	rest := fasthttpadaptor.NewFastHTTPHandler(mux)
	s.srv = &fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) {
		if ctx.IsPost() && string(ctx.Path()) == "/api/v1/events" {
			s.event(ctx)
			return
		}
		rest(ctx)
	}}
	go func() { _ = s.srv.Serve(ln) }() // returns when the run ends
	return s, nil
}

func (s *stub) close() { _ = s.srv.Shutdown() }

// kindOf is rule id's trigger, by the mix's shares (every 1000 ids repeat the pattern).
func (s *stub) kindOf(id int) string {
	m := s.cfg.Mix
	sum := m.Interval + m.Cron + m.Datetime
	switch f := float64(id%1000) / 1000 * sum; {
	case f < m.Interval:
		return "core.intervaltimer"
	case f < m.Interval+m.Cron:
		return "core.crontimer"
	}
	return "core.datetimetimer"
}

func (s *stub) params(id int, kind string) any {
	secs := int(s.cfg.Every / time.Second)
	switch kind {
	case "core.intervaltimer":
		return s.withMisfire(map[string]any{"interval": secs})
	case "core.crontimer":
		return s.withMisfire(map[string]any{"expression": fmt.Sprintf("*/%d * * * * *", secs)})
	}
	spread := s.cfg.Warmup/2 + s.cfg.Window
	at := s.base.Add(time.Duration(id*7919) * time.Millisecond % spread)
	return map[string]any{"fire_at": at.UTC().Format(time.RFC3339Nano)}
}

// list is GET /api/v1/rules?trigger_ref=&page=&page_size=: the rules of one
// trigger, with the pagination totals a complete listing carries.
func (s *stub) list(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	trig := q.Get("trigger_ref")
	page, _ := strconv.Atoi(q.Get("page"))
	size, _ := strconv.Atoi(q.Get("page_size"))
	page, size = max(page, 1), min(max(size, 1), 1000)
	ids := s.ids[trig]
	from := min((page-1)*size, len(ids))
	to := min(from+size, len(ids))
	items := make([]map[string]any, 0, to-from)
	for _, id := range ids[from:to] {
		items = append(items, map[string]any{"id": id, "ref": fmt.Sprintf("bench.%d", id), "trigger_ref": trig,
			"trigger_params": s.params(id, trig), "enabled": true, "updated": s.created.Format(time.RFC3339Nano)})
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{"items": items, "pagination": map[string]any{
		"page": page, "page_size": size, "total_items": len(ids), "has_next": to < len(ids)}})
}

// event is POST /api/v1/events: recorded with its receipt time, answered
// 201 after cfg.Delay.
func (s *stub) event(ctx *fasthttp.RequestCtx) {
	now := time.Now()
	at, err := scheduledAt(ctx.PostBody())
	if err != nil {
		ctx.Error("no scheduled_at: "+err.Error(), http.StatusBadRequest)
		return
	}
	key := string(ctx.Request.Header.Peek("Idempotency-Key"))
	s.mu.Lock()
	s.events = append(s.events, received{received: now, scheduled: at})
	s.keys[key]++
	s.mu.Unlock()
	if s.cfg.Delay > 0 {
		time.Sleep(s.cfg.Delay)
	}
	ctx.SetContentType("application/json")
	ctx.SetStatusCode(http.StatusCreated)
	ctx.SetBodyString(`{"data":{"id":` + strconv.FormatInt(s.nextID.Add(1), 10) + `}}`)
}

// window is the events received in [from, to), and the keys received more
// than once over the whole run.
func (s *stub) window(from, to time.Time) ([]received, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []received
	for _, e := range s.events {
		if !e.received.Before(from) && e.received.Before(to) {
			out = append(out, e)
		}
	}
	dups := 0
	for _, n := range s.keys {
		if n > 1 {
			dups++
		}
	}
	return out, dups
}

// withMisfire adds the run's misfire policy, if any, to a rule's parameters.
func (s *stub) withMisfire(params map[string]any) map[string]any {
	if s.cfg.Misfire != "" {
		params["misfire"] = s.cfg.Misfire
	}
	return params
}
