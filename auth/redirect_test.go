package auth

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
)

// A token refresh answered by a redirect fails, and the token never reaches the
// redirect's host (127.0.0.2 here), even when that host would answer with a token.
func TestHTTPRefresherNeverFollowsRedirects(t *testing.T) {
	var mu sync.Mutex
	var leaked []string
	ln, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		t.Fatal(err)
	}
	other := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		leaked = append(leaked, r.Method+" "+r.URL.Path+" "+r.Header.Get("Authorization"))
		mu.Unlock()
		w.Write([]byte(`{"token":"from-elsewhere","expires_at":"2030-01-01T00:00:00Z"}`))
	}))
	other.Listener.Close()
	other.Listener = ln
	other.Start()
	defer other.Close()
	for _, code := range []int{http.StatusFound, http.StatusTemporaryRedirect, http.StatusPermanentRedirect} {
		api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, other.URL+r.URL.Path, code)
		}))
		got, err := HTTPRefresher(api.URL, nil)(context.Background(), "s3cret-token")
		api.Close()
		if err == nil || got != "" || !strings.Contains(err.Error(), "not followed") {
			t.Errorf("%d: refresh = %q, %v; want an error naming the redirect", code, got, err)
		}
		if err != nil && strings.Contains(err.Error(), "s3cret-token") {
			t.Errorf("%d: the token is in the error: %v", code, err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(leaked) != 0 {
		t.Errorf("the redirect's host got %q, want nothing", leaked)
	}
}

// NoRedirects keeps the client's settings and leaves the client given untouched.
func TestNoRedirectsCopiesTheClient(t *testing.T) {
	c := &http.Client{Timeout: 7}
	n := NoRedirects(c)
	if n == c || n.Timeout != 7 || n.CheckRedirect == nil || c.CheckRedirect != nil {
		t.Errorf("NoRedirects(%+v) = %+v", c, n)
	}
}
