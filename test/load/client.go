package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/timerd/timerd/ingest/backoff"
)

// client talks to the API and the node of one `timerd dev`.
type client struct {
	http    *http.Client
	apiURL  string
	nodeURL string
	token   string // bearer token for the API; "" for none
}

func newClient(apiURL, nodeURL string, conns int) *client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConns = conns + 16
	tr.MaxIdleConnsPerHost = conns + 16 // the default of 2 churns connections
	return &client{http: &http.Client{Transport: tr, Timeout: 60 * time.Second}, apiURL: apiURL, nodeURL: nodeURL}
}

func (c *client) close() { c.http.CloseIdleConnections() }

// statusError is an HTTP answer other than the one wanted.
type statusError struct {
	method, url string
	code        int
	body        string
}

func (e *statusError) Error() string {
	return fmt.Sprintf("%s %s: status %d: %s", e.method, e.url, e.code, e.body)
}

// do sends a request and decodes a JSON answer into out when the status is
// one of want.
func (c *client) do(ctx context.Context, method, u string, body, out any, want ...int) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return fmt.Errorf("encode %s %s: %w", method, u, err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" && strings.HasPrefix(u, c.apiURL) {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("%s %s: read body: %w", method, u, err)
	}
	ok := false
	for _, w := range want {
		ok = ok || resp.StatusCode == w
	}
	if !ok {
		if len(raw) > 300 {
			raw = raw[:300]
		}
		return &statusError{method, u, resp.StatusCode, string(bytes.TrimSpace(raw))}
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			return fmt.Errorf("%s %s: decode answer: %w", method, u, err)
		}
	}
	return nil
}

// retryable says whether a failed request may succeed when sent again.
func retryable(err error) bool {
	var se *statusError
	if errors.As(err, &se) {
		return se.code == http.StatusTooManyRequests || se.code >= 500
	}
	return !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded)
}

// createRule creates an enabled interval rule and returns its id.
func (c *client) createRule(ctx context.Context, ref string, intervalSec int64) (int64, error) {
	body := map[string]any{
		"ref":            ref,
		"trigger_ref":    "core.intervaltimer",
		"trigger_params": map[string]any{"interval": intervalSec, "unit": "seconds"},
		"enabled":        true,
	}
	var out struct {
		Data struct {
			ID json.Number `json:"id"`
		} `json:"data"`
	}
	var err error
	for attempt := range 6 {
		if attempt > 0 && !backoff.Sleep(ctx, backoff.Delay(attempt, 100*time.Millisecond, 1600*time.Millisecond)) {
			return 0, ctx.Err()
		}
		err = c.do(ctx, http.MethodPost, c.apiURL+"/api/v1/rules", body, &out, http.StatusCreated, http.StatusOK)
		if err == nil {
			id, perr := out.Data.ID.Int64()
			if perr != nil {
				return 0, fmt.Errorf("create rule %s: id %q: %w", ref, out.Data.ID, perr)
			}
			return id, nil
		}
		if !retryable(err) {
			break
		}
	}
	return 0, fmt.Errorf("create rule %s: %w", ref, err)
}

// nodeStatus is the part of the node's /v1/status the load reads.
type nodeStatus struct {
	Ready       bool `json:"ready"`
	RulesKnown  int  `json:"rules_known"`
	RulesOwned  int  `json:"rules_owned"`
	OutboxDepth int  `json:"outbox_depth"`
	DeadLetters int  `json:"dead_letters"`
}

func (c *client) status(ctx context.Context) (nodeStatus, error) {
	var s nodeStatus
	err := c.do(ctx, http.MethodGet, c.nodeURL+"/v1/status", nil, &s, http.StatusOK)
	return s, err
}

func (c *client) ready(ctx context.Context) bool {
	return c.do(ctx, http.MethodGet, c.nodeURL+"/readyz", nil, nil, http.StatusOK) == nil
}

// scrape reads a /metrics page; a missing page (404) gives nil, nil.
func (c *client) scrape(ctx context.Context, base string) (samples, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	if c.token != "" && base == c.apiURL {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("scrape %s/metrics: %w", base, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil, nil
	}
	s, err := parseProm(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("scrape %s/metrics: %w", base, err)
	}
	return s, nil
}

// eventPage is one page of GET /api/v1/events.
type eventPage struct {
	Items      []event `json:"items"`
	Data       []event `json:"data"` // some versions answer data instead of items
	Pagination struct {
		Page       int  `json:"page"`
		PageSize   int  `json:"page_size"`
		TotalItems int  `json:"total_items"`
		TotalPages int  `json:"total_pages"`
		HasNext    bool `json:"has_next"`
	} `json:"pagination"`
}

func (c *client) events(ctx context.Context, q url.Values, page, size int) (eventPage, error) {
	q2 := url.Values{}
	for k, v := range q {
		q2[k] = v
	}
	q2.Set("page", strconv.Itoa(page))
	q2.Set("page_size", strconv.Itoa(size))
	u := c.apiURL + "/api/v1/events?" + q2.Encode()
	var p eventPage
	var err error
	for attempt := range 4 {
		if attempt > 0 && !backoff.Sleep(ctx, backoff.Delay(attempt, 200*time.Millisecond, 800*time.Millisecond)) {
			return p, ctx.Err()
		}
		p = eventPage{}
		if err = c.do(ctx, http.MethodGet, u, nil, &p, http.StatusOK); err == nil || !retryable(err) {
			break
		}
	}
	if p.Items == nil {
		p.Items = p.Data
	}
	return p, err
}
