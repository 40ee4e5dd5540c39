package node

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

	"github.com/timerd/timerd/auth"
	"github.com/timerd/timerd/scheduler"
)

// maxClientBody bounds an answer the Client reads: a page of
// MaxDeadLetterPage dead letters with their event bodies fits.
const maxClientBody = 64 << 20

// Client asks a node's HTTP endpoints (handler): what `timerd status` and
// `timerd dead-letters` send. Like every client of timerd it never follows
// a redirect, which would take the operator's token to another host. It
// sets no timeout of its own: the caller bounds each call with its ctx.
type Client struct {
	base    string
	token   string
	http    *http.Client
	header  http.Header // sent with every request (a forward's)
	maxBody int         // 0: maxClientBody
}

// NewClient returns a Client of the node at baseURL (http(s)://host:port,
// with a path prefix if any, no trailing slash), sending token as its bearer
// token ("": none, for a node without TIMERD_HTTP_TOKEN_FILE).
func NewClient(baseURL, token string) *Client {
	return &Client{base: baseURL, token: token, http: auth.NoRedirects(nil)}
}

// StatusError is an answer other than 200 from a node: the request, the
// status and the start of the node's message.
type StatusError struct {
	Method, URL string
	Code        int
	Message     string // trimmed, at most 200 bytes
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("%s %s: status %d: %s", e.Method, e.URL, e.Code, e.Message)
}

// Status reads GET /v1/status: the node's status and the JSON as served.
func (c *Client) Status(ctx context.Context) (Status, []byte, error) {
	var st Status
	raw, err := c.call(ctx, http.MethodGet, "/v1/status", nil, "a timerd status", &st)
	return st, raw, err
}

// DeadLetters reads GET /v1/dead-letters: at most limit dead letters after
// the id after, and the JSON as served.
func (c *Client) DeadLetters(ctx context.Context, after uint64, limit int) (DeadLetterPage, []byte, error) {
	var page DeadLetterPage
	path := fmt.Sprintf("/v1/dead-letters?after=%d&limit=%d", after, limit)
	raw, err := c.call(ctx, http.MethodGet, path, nil, "a dead letter listing", &page)
	return page, raw, err
}

// DescribeRule reads GET /v1/rules/{id}: the rule as its owner describes it
// (the node asked forwards the request), and the JSON as served. A rule no
// node knows is a *StatusError of 404.
func (c *Client) DescribeRule(ctx context.Context, id int64) (RuleDescription, []byte, error) {
	return c.describeRule(ctx, id, "")
}

// DescribeRuleHere is DescribeRule answered by the node asked, from what it knows
// itself, without asking the owner (GET /v1/rules/{id}?here=true): the missed-fire
// log and history of a rule's previous owner, its dead letters.
func (c *Client) DescribeRuleHere(ctx context.Context, id int64) (RuleDescription, []byte, error) {
	return c.describeRule(ctx, id, "?here=true")
}

func (c *Client) describeRule(ctx context.Context, id int64, query string) (RuleDescription, []byte, error) {
	var d RuleDescription
	raw, err := c.call(ctx, http.MethodGet, "/v1/rules/"+strconv.FormatInt(id, 10)+query, nil, "a rule description", &d)
	if err == nil && d.RuleID != id {
		return RuleDescription{}, nil, fmt.Errorf("GET %s/v1/rules/%d: the answer describes rule %d", c.base, id, d.RuleID)
	}
	return d, raw, err
}

// Backfill asks POST /v1/rules/{id}/backfill (the node asked forwards it to the
// rule's owner) and returns its answer and the JSON as served.
func (c *Client) Backfill(ctx context.Context, id int64, req BackfillRequest) (BackfillResult, []byte, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return BackfillResult{}, nil, err
	}
	var res BackfillResult
	raw, err := c.call(ctx, http.MethodPost, "/v1/rules/"+strconv.FormatInt(id, 10)+"/backfill", body, "a backfill result", &res)
	return res, raw, err
}

// FireRule asks POST /v1/rules/{id}/fire: one extra event of the rule now.
func (c *Client) FireRule(ctx context.Context, id int64) (FireResult, []byte, error) {
	var res FireResult
	raw, err := c.call(ctx, http.MethodPost, "/v1/rules/"+strconv.FormatInt(id, 10)+"/fire", []byte("{}"), "a fire result", &res)
	return res, raw, err
}

// Redrive asks POST /v1/dead-letters/redrive to move the dead letters of
// ids back into the outbox; nil ids: every one.
func (c *Client) Redrive(ctx context.Context, ids []uint64) (RedriveResult, error) {
	var body []byte // none: every one
	if ids != nil {
		body, _ = json.Marshal(RedriveRequest{IDs: ids})
	}
	var res RedriveResult
	_, err := c.call(ctx, http.MethodPost, "/v1/dead-letters/redrive", body, "a redrive result", &res)
	return res, err
}

// call sends one request and decodes the body of a 200 into out; what is
// not JSON of that shape is an error saying it is not what (a proxy's page,
// another service). Every error names the method and the URL.
func (c *Client) call(ctx context.Context, method, path string, body []byte, what string, out any) ([]byte, error) {
	u := c.base + path
	raw, err := c.do(ctx, method, u, body)
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(raw, out); err != nil {
		return nil, fmt.Errorf("%s %s: not %s: %w", method, u, what, err)
	}
	return raw, nil
}

// send sends one request with the client's token (and a JSON body's type),
// and returns the answer whatever its status; an error names the method and
// the URL, but not twice.
func (c *Client) send(ctx context.Context, method, u string, body io.Reader) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return nil, err
	}
	for k, v := range c.header {
		req.Header[k] = v
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // it repeats the URL, which the message holds
		}
		return nil, fmt.Errorf("%s %s: %w", method, u, err)
	}
	return resp, nil
}

// do sends one request and returns the body of a 200; any other status is a
// *StatusError holding the node's message.
func (c *Client) do(ctx context.Context, method, u string, body []byte) ([]byte, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	resp, err := c.send(ctx, method, u, rd)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if auth.IsRedirect(resp) {
		return nil, fmt.Errorf("%s %s: %s", method, u, auth.RedirectNote(resp))
	}
	limit := c.maxBody
	if limit <= 0 {
		limit = maxClientBody
	}
	raw, err := io.ReadAll(io.LimitReader(resp.Body, int64(limit)+1))
	switch {
	case err != nil:
		return nil, fmt.Errorf("%s %s: read: %w", method, u, err)
	case len(raw) > limit:
		return nil, fmt.Errorf("%s %s: status %d: the answer is larger than %d bytes", method, u, resp.StatusCode, limit)
	case resp.StatusCode != http.StatusOK:
		return nil, &StatusError{Method: method, URL: u, Code: resp.StatusCode,
			Message: scheduler.Truncate(strings.TrimSpace(string(raw)), 200)}
	}
	return raw, nil
}
