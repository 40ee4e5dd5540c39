package node

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// The node client sends the bearer token, decodes the three answers, never
// follows a redirect (the host it names sees nothing, least of all the
// token), bounds what it reads, and names the method and URL in every error.
func TestClient(t *testing.T) {
	const token = "operator-token-0123456789"
	var (
		mu    sync.Mutex
		calls []string // "METHOD URI BODY AUTH"
	)
	mux := http.NewServeMux()
	record := func(r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		calls = append(calls, r.Method+" "+r.URL.RequestURI()+" "+string(body)+" "+r.Header.Get("Authorization"))
		mu.Unlock()
	}
	mux.HandleFunc("GET /ok/v1/status", func(w http.ResponseWriter, r *http.Request) {
		record(r)
		w.Write([]byte(`{"node":"n1","rules_known":3}`))
	})
	mux.HandleFunc("GET /ok/v1/dead-letters", func(w http.ResponseWriter, r *http.Request) {
		record(r)
		w.Write([]byte(`{"dead_letters":[{"seq":3,"rule_id":7}],"total":5,"next_after":3}`))
	})
	mux.HandleFunc("POST /ok/v1/dead-letters/redrive", func(w http.ResponseWriter, r *http.Request) {
		record(r)
		w.Write([]byte(`{"redriven":[3],"not_found":[99]}`))
	})
	mux.HandleFunc("GET /refused/v1/status", func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "  needs the bearer token "+strings.Repeat("x", 300), http.StatusUnauthorized)
	})
	mux.HandleFunc("GET /html/v1/status", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("<html>")) })
	mux.HandleFunc("GET /huge/v1/status", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.Copy(w, io.LimitReader(zeros{}, maxClientBody+1))
	})
	var elsewhere atomic.Int64
	other := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { elsewhere.Add(1) }))
	defer other.Close()
	mux.HandleFunc("GET /moved/v1/status", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, other.URL+"/v1/status?token=x", http.StatusFound)
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()
	ctx := t.Context()

	c := NewClient(srv.URL+"/ok", token)
	st, raw, err := c.Status(ctx)
	if err != nil || st.Node != "n1" || st.RulesKnown != 3 || string(raw) != `{"node":"n1","rules_known":3}` {
		t.Errorf("Status = %+v, %s, %v; want node n1 with 3 rules and the JSON as served", st, raw, err)
	}
	page, _, err := c.DeadLetters(ctx, 2, 10)
	if err != nil || page.Total != 5 || page.NextAfter != 3 || len(page.DeadLetters) != 1 || page.DeadLetters[0].RuleID != 7 {
		t.Errorf("DeadLetters = %+v, %v; want one of rule 7, 5 in all, next after 3", page, err)
	}
	res, err := c.Redrive(ctx, []uint64{3, 99})
	if err != nil || len(res.Redriven) != 1 || len(res.NotFound) != 1 {
		t.Errorf("Redrive = %+v, %v; want 3 redriven, 99 not found", res, err)
	}
	if _, err := c.Redrive(ctx, nil); err != nil {
		t.Errorf("Redrive(all) = %v", err)
	}
	mu.Lock()
	got := strings.Join(calls, "\n")
	mu.Unlock()
	want := strings.Join([]string{
		"GET /ok/v1/status  Bearer " + token,
		"GET /ok/v1/dead-letters?after=2&limit=10  Bearer " + token,
		`POST /ok/v1/dead-letters/redrive {"ids":[3,99]} Bearer ` + token,
		"POST /ok/v1/dead-letters/redrive  Bearer " + token,
	}, "\n")
	if got != want {
		t.Errorf("the node saw:\n%s\nwant:\n%s", got, want)
	}
	if _, _, err := NewClient(srv.URL+"/ok", "").Status(ctx); err != nil {
		t.Errorf("Status without a token = %v", err)
	}
	mu.Lock()
	if last := calls[len(calls)-1]; strings.Contains(last, "Bearer") {
		t.Errorf("a client without a token sent %q", last)
	}
	mu.Unlock()

	// A refusal is a *StatusError with the request and the start of the message.
	_, _, err = NewClient(srv.URL+"/refused", token).Status(ctx)
	var se *StatusError
	switch {
	case !errors.As(err, &se):
		t.Errorf("Status of a 401 = %v, want a *StatusError", err)
	case se.Method != http.MethodGet || se.URL != srv.URL+"/refused/v1/status" || se.Code != http.StatusUnauthorized ||
		!strings.HasPrefix(se.Message, "needs the bearer token xxx") || len(se.Message) > 200+len("…"):
		t.Errorf("StatusError = %+v, want GET, the URL, 401 and the message trimmed to 200 bytes", se)
	case !strings.HasPrefix(err.Error(), "GET "+srv.URL+"/refused/v1/status: status 401: needs the bearer token"):
		t.Errorf("Status of a 401 = %q", err)
	}

	for _, tc := range []struct{ name, prefix, want string }{
		{"not JSON", "/html", "GET " + srv.URL + "/html/v1/status: not a timerd status: "},
		{"too large", "/huge", "GET " + srv.URL + "/huge/v1/status: status 200: the answer is larger than 67108864 bytes"},
		{"redirect", "/moved", "GET " + srv.URL + "/moved/v1/status: 302 Found: redirect to " + other.URL + "/v1/status not followed"},
		{"nobody listening", "http://127.0.0.1:1", "GET http://127.0.0.1:1/v1/status: dial tcp 127.0.0.1:1: "},
	} {
		base := srv.URL + tc.prefix
		if strings.HasPrefix(tc.prefix, "http") {
			base = tc.prefix
		}
		_, _, err := NewClient(base, token).Status(ctx)
		if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("Status (%s) = %v, want an error starting %q", tc.name, err, tc.want)
		}
		if err != nil && strings.Contains(err.Error(), token) {
			t.Errorf("Status (%s) error %q holds the token", tc.name, err)
		}
	}
	if n := elsewhere.Load(); n != 0 {
		t.Errorf("the host a redirect pointed to got %d requests, want none", n)
	}
}

// zeros reads as endless zero bytes.
type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}
