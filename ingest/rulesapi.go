package ingest

import (
	"cmp"
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

	"github.com/timerd/timerd/auth"
	"github.com/timerd/timerd/ingest/attune"
	"github.com/timerd/timerd/scheduler"
)

// RulesClient pages through Attune's rules API (contract §4).
type RulesClient struct {
	APIURL string       // http(s)://host[:port][/prefix]
	Client *http.Client // nil: a client with a 30 s timeout
	Tokens TokenSource  // nil: no Authorization header
}

// maxRulePages bounds a reconcile against a server whose has_next never ends.
const maxRulePages = 100_000

// ErrMalformedListing: a page of the rules listing has neither "items" nor
// "data" (a `200 {}` from a proxy or a broken server). It proves nothing, so
// the reconcile applies nothing of it.
var ErrMalformedListing = errors.New("malformed rules listing: no items")

// Why a listing is not complete: the reason label of
// timerd_reconcile_refused_total when it would have pruned.
const (
	IncompleteNoTotals      = "no_totals"      // a page lacks pagination.total_items
	IncompleteTotalsChanged = "totals_changed" // total_items changed while paging
	IncompleteCountMismatch = "count_mismatch" // the distinct rules read are not total_items
)

// Listing is the enabled rules of one trigger as the rules API listed them.
type Listing struct {
	Rules []attune.RemoteRule
	// Incomplete is "" when the listing proved itself complete: every page
	// carried pagination.total_items, it did not change while paging, and
	// the distinct rules read match it. Else it says why (Incomplete*).
	// Only a complete listing may prune the rules it lacks.
	Incomplete string
}

// EnabledRules lists every enabled rule of triggerRef, following
// pagination.has_next. It accepts "items" or "data" as the list key.
func (c *RulesClient) EnabledRules(ctx context.Context, triggerRef string) (Listing, error) {
	client := c.client()
	base := strings.TrimRight(c.APIURL, "/") + "/api/v1/rules"
	var (
		l     Listing
		seen  = map[int64]bool{}
		total = int64(-1)
	)
	for page := 1; page <= maxRulePages; page++ {
		q := url.Values{}
		q.Set("trigger_ref", triggerRef)
		q.Set("enabled", "true")
		q.Set("page", strconv.Itoa(page))
		q.Set("page_size", "100")
		var body rulesPage
		if err := c.get(ctx, client, base+"?"+q.Encode(), &body); err != nil {
			return Listing{}, fmt.Errorf("list rules of %s, page %d: %w", triggerRef, page, err)
		}
		items := body.Items
		if items == nil {
			items = body.Data
		}
		if items == nil {
			return Listing{}, fmt.Errorf("list rules of %s, page %d: %w", triggerRef, page, ErrMalformedListing)
		}
		for _, r := range items {
			seen[r.ID] = true
			// The server filters, but a server that ignores the filter must
			// not make us schedule another trigger's rules.
			if r.TriggerRef == triggerRef && (r.Enabled == nil || *r.Enabled) {
				l.Rules = append(l.Rules, r)
			}
		}
		switch p := body.Pagination; {
		case p == nil || p.TotalItems == nil:
			l.Incomplete = cmp.Or(l.Incomplete, IncompleteNoTotals)
		case total >= 0 && *p.TotalItems != total:
			l.Incomplete = cmp.Or(l.Incomplete, IncompleteTotalsChanged)
		default:
			total = *p.TotalItems
		}
		if body.Pagination == nil || !body.Pagination.HasNext {
			if l.Incomplete == "" && int64(len(seen)) != total {
				l.Incomplete = IncompleteCountMismatch
			}
			return l, nil
		}
	}
	return Listing{}, fmt.Errorf("list rules of %s: more than %d pages", triggerRef, maxRulePages)
}

type rulesPage struct {
	Items      []attune.RemoteRule `json:"items"`
	Data       []attune.RemoteRule `json:"data"`
	Pagination *struct {
		HasNext    bool   `json:"has_next"`
		TotalItems *int64 `json:"total_items"`
	} `json:"pagination"`
}

// Rule reads one rule by ref (GET /api/v1/rules/{ref}); found is false
// only when the API answers 404 with a JSON body, as Attune does for a rule
// it does not have: an ingress's 404 page, a redirect or any other answer
// is an error, so that a re-check before a removal removes nothing on doubt.
func (c *RulesClient) Rule(ctx context.Context, ref string) (r attune.RemoteRule, found bool, err error) {
	if ref == "" {
		return attune.RemoteRule{}, false, errors.New("rule has no ref")
	}
	u := strings.TrimRight(c.APIURL, "/") + "/api/v1/rules/" + url.PathEscape(ref)
	var body struct {
		Data  *attune.RemoteRule `json:"data"`
		Error json.RawMessage    `json:"error"`
	}
	err = c.get(ctx, c.client(), u, &body)
	var se *StatusError
	switch {
	case errors.As(err, &se) && se.Code == http.StatusNotFound && se.JSON:
		return attune.RemoteRule{}, false, nil
	case err != nil:
		return attune.RemoteRule{}, false, fmt.Errorf("get rule %q: %w", ref, err)
	case body.Data == nil:
		return attune.RemoteRule{}, false, fmt.Errorf("get rule %q: %w", ref, errors.New("answer has no data"))
	}
	return *body.Data, true, nil
}

func (c *RulesClient) client() *http.Client {
	client := c.Client
	if client == nil {
		client = &http.Client{Timeout: 30 * time.Second}
	}
	return auth.NoRedirects(client)
}

// StatusError is an answer other than 200 from the rules API.
type StatusError struct {
	Code    int
	JSON    bool   // the body is a JSON object (an API's error, not a proxy's page)
	Excerpt string // the start of the body
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("status %d: %s", e.Code, e.Excerpt)
}

func (c *RulesClient) get(ctx context.Context, client *http.Client, u string, out any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	tok := ""
	if c.Tokens != nil {
		tok = c.Tokens.Token()
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusUnauthorized && c.Tokens != nil && tok != "" {
		c.Tokens.Invalidate(tok)
	}
	if auth.IsRedirect(resp) {
		return errors.New(auth.RedirectNote(resp))
	}
	if resp.StatusCode != http.StatusOK {
		head, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		var obj map[string]json.RawMessage
		return &StatusError{Code: resp.StatusCode, JSON: json.Unmarshal(head, &obj) == nil,
			Excerpt: scheduler.Truncate(strings.TrimSpace(redact(string(head), tok)), 200)}
	}
	dec := json.NewDecoder(io.LimitReader(resp.Body, 64<<20))
	if err := dec.Decode(out); err != nil {
		return errors.Join(errors.New("decode response"), err)
	}
	return nil
}

// RedactURL is s with the password of its user info replaced by "xxxxx", as
// every URL timerd logs or shows is; s as it is when it has none or does not parse.
func RedactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil || u.User == nil {
		return s
	}
	return u.Redacted()
}
