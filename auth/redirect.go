package auth

import (
	"fmt"
	"net/http"
)

// NoRedirects returns a copy of c (nil: a default client) that never follows a
// redirect: the 3xx itself is the answer, for the caller to treat as a failure. Every
// client of timerd that sends a token uses it (docs/security.md): a redirected POST is
// sent again as a GET, whose 200 would count as delivered while the event went
// nowhere, and the token would go along to whatever host the Location names.
func NoRedirects(c *http.Client) *http.Client {
	var cp http.Client
	if c != nil {
		cp = *c
	}
	cp.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return &cp
}

// IsRedirect reports whether resp is a redirect that was not followed.
func IsRedirect(resp *http.Response) bool {
	return resp.StatusCode >= 300 && resp.StatusCode < 400
}

// RedirectNote says what a redirect asked for: "302 Found: redirect to
// https://api.example/api/v1/events not followed". The Location is cut at 200
// bytes and its query left out (a token could ride in it).
func RedirectNote(resp *http.Response) string {
	loc := resp.Header.Get("Location")
	if u, err := resp.Location(); err == nil {
		u.RawQuery, u.Fragment, u.User = "", "", nil
		loc = u.String()
	}
	if len(loc) > 200 {
		loc = loc[:200]
	}
	if loc == "" {
		loc = "(no Location)"
	}
	return fmt.Sprintf("%s: redirect to %s not followed", resp.Status, loc)
}
