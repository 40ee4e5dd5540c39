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
	"sync/atomic"
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
	// PageSize is the page_size a listing asks for: 0 means
	// DefaultPageSize. A server that serves smaller pages makes the client
	// ask FallbackPageSize from then on (EnabledRules).
	PageSize int

	// small: a server served a smaller page than asked, or refused the
	// size; every later listing asks FallbackPageSize.
	small atomic.Bool
	// maxBodyBytes bounds an answer's body; 0 means 64 MiB (tests set less).
	maxBodyBytes int64
}

func (c *RulesClient) maxBody() int64 { return cmp.Or(c.maxBodyBytes, 64<<20) }

// Page sizes of a listing. Attune serves at most 100 rules a page whatever
// it is asked (its RuleListParams.limit), yet answers with the page_size
// asked, and counts its offset and has_next from it: asked 1,000 it skips
// 900 rules a page. So a short page, not the answer's page_size, is what
// gives a smaller server away.
const (
	DefaultPageSize  = 1000 // timerd api's bound (apiserver's pageParams)
	FallbackPageSize = 100  // contract §4's size: every Attune serves it
	MaxPageSize      = 10_000
)

// maxRulePages bounds a reconcile against a server whose has_next never ends.
const maxRulePages = 100_000

// ErrMalformedListing: a page of the rules listing has neither "items" nor
// "data" (a `200 {}` from a proxy or a broken server). It proves nothing, so
// the reconcile applies nothing of it and removes nothing.
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
	// What the listing cost: the pages asked for (a restart at the
	// fallback size included), the bytes of their bodies, and the page
	// size it ended with.
	Requests int
	Bytes    int64
	PageSize int
	// FellBack says why the listing fell back to FallbackPageSize ("" if
	// it did not): the client asks that size from now on.
	FellBack string
}

// pageSize is the page_size the next listing asks for.
func (c *RulesClient) pageSize() int {
	if c.small.Load() {
		return FallbackPageSize
	}
	if c.PageSize > 0 {
		return min(c.PageSize, MaxPageSize)
	}
	return DefaultPageSize
}

// EnabledRules lists every enabled rule of triggerRef, following
// pagination.has_next. It accepts "items" or "data" as the list key. It
// asks PageSize rules a page; when the server serves fewer (a page short of
// the size while more rules remain, a smaller pagination.page_size) or
// answers 400, it starts again at FallbackPageSize, which it asks from then
// on: page offsets follow the size, so pages of two sizes do not mix.
func (c *RulesClient) EnabledRules(ctx context.Context, triggerRef string) (Listing, error) {
	var rules []attune.RemoteRule
	l, err := c.EachEnabledRule(ctx, triggerRef, func(page []attune.RemoteRule) error {
		rules = append(rules, page...)
		return nil
	})
	l.Rules = rules
	return l, err
}

// EachEnabledRule is EnabledRules handing each page's rules to each as it
// comes instead of holding the listing (Listing.Rules is nil): a reconcile
// of a million rules holds a page, not the catalogue. A listing that starts
// again at FallbackPageSize hands the rules of its first pages again. The
// slice is the listing's own, reused for the next page: each copies what it
// keeps. An error from each ends the listing and is returned.
func (c *RulesClient) EachEnabledRule(ctx context.Context, triggerRef string, each func([]attune.RemoteRule) error) (Listing, error) {
	var cost Listing
	for {
		size := c.pageSize()
		l, smaller, err := c.enabledRules(ctx, triggerRef, size, each)
		cost.Requests += l.Requests
		cost.Bytes += l.Bytes
		if smaller == "" || size <= FallbackPageSize {
			l.Requests, l.Bytes, l.FellBack = cost.Requests, cost.Bytes, cost.FellBack
			return l, err
		}
		c.small.Store(true)
		cost.FellBack = smaller
	}
}

// enabledRules is one listing at page size size. smaller is not "" when the
// server showed it serves smaller pages (then the listing is to start again
// at a smaller size, and l counts only its cost).
func (c *RulesClient) enabledRules(ctx context.Context, triggerRef string, size int,
	each func([]attune.RemoteRule) error) (l Listing, smaller string, err error) {
	client := c.client()
	base := strings.TrimRight(c.APIURL, "/") + "/api/v1/rules"
	var (
		seen  = map[int64]struct{}{}
		total = int64(-1)
		read  int64 // items read, duplicates too: where the next page starts
		rules []attune.RemoteRule
	)
	l.PageSize = size
	for page := 1; page <= maxRulePages; page++ {
		q := url.Values{}
		q.Set("trigger_ref", triggerRef)
		q.Set("enabled", "true")
		q.Set("page", strconv.Itoa(page))
		q.Set("page_size", strconv.Itoa(size))
		var body rulesPage
		n, err := c.get(ctx, client, base+"?"+q.Encode(), &body)
		l.Requests++
		l.Bytes += n
		var se *StatusError
		switch {
		case size <= FallbackPageSize:
		case errors.As(err, &se) && se.Code == http.StatusBadRequest:
			return l, fmt.Sprintf("page_size %d refused: %v", size, err), nil
		case err != nil && n >= c.maxBody():
			// Rules with large params: a page of 1,000 can pass the bound
			// that 100 keep well within.
			return l, fmt.Sprintf("a page of %d rules is larger than %d bytes", size, c.maxBody()), nil
		}
		if err != nil {
			return l, "", fmt.Errorf("list rules of %s, page %d: %w", triggerRef, page, err)
		}
		items := body.Items
		if items == nil {
			items = body.Data
		}
		if items == nil {
			return l, "", fmt.Errorf("list rules of %s, page %d: %w", triggerRef, page, ErrMalformedListing)
		}
		if why := shortPage(body.Pagination, len(items), size, read); why != "" && size > FallbackPageSize {
			return l, why, nil
		}
		read += int64(len(items))
		rules = rules[:0]
		for i := range items {
			r := &items[i]
			seen[r.ID] = struct{}{}
			// The server filters, but a server that ignores the filter must
			// not make us schedule another trigger's rules.
			if r.TriggerRef == triggerRef && (r.Enabled == nil || *r.Enabled) {
				rules = append(rules, r.Remote())
			}
		}
		if err := each(rules); err != nil {
			return l, "", err
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
			return l, "", nil
		}
	}
	return l, "", fmt.Errorf("list rules of %s: more than %d pages", triggerRef, maxRulePages)
}

// shortPage says how a page of n items, asked size and starting after read
// items, shows a server that serves smaller pages than asked; "" if it does
// not. A short last page is no sign; a short page while has_next, or while
// total_items says more remain, is (Attune asked 1,000 serves 100 and says
// has_next by 1,000s).
func shortPage(p *pagination, n, size int, read int64) string {
	switch {
	case p == nil:
		return ""
	case p.PageSize > 0 && p.PageSize < size:
		return fmt.Sprintf("asked page_size %d, the answer says %d", size, p.PageSize)
	case n >= size:
		return ""
	case p.HasNext:
		return fmt.Sprintf("asked page_size %d, got %d rules and has_next", size, n)
	case p.TotalItems != nil && read+int64(n) < *p.TotalItems:
		return fmt.Sprintf("asked page_size %d, got %d rules of %d", size, n, *p.TotalItems)
	}
	return ""
}

type rulesPage struct {
	Items      []attune.RuleJSON `json:"items"`
	Data       []attune.RuleJSON `json:"data"`
	Pagination *pagination       `json:"pagination"`
}

type pagination struct {
	HasNext    bool   `json:"has_next"`
	TotalItems *int64 `json:"total_items"`
	PageSize   int    `json:"page_size"`
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
	_, err = c.get(ctx, c.client(), u, &body)
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

// get GETs u into out; n is the bytes of the body read.
func (c *RulesClient) get(ctx context.Context, client *http.Client, u string, out any) (n int64, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return 0, err
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
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusUnauthorized && c.Tokens != nil && tok != "" {
		c.Tokens.Invalidate(tok)
	}
	if auth.IsRedirect(resp) {
		return 0, errors.New(auth.RedirectNote(resp))
	}
	if resp.StatusCode != http.StatusOK {
		head, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		var obj map[string]json.RawMessage
		return int64(len(head)), &StatusError{Code: resp.StatusCode, JSON: json.Unmarshal(head, &obj) == nil,
			Excerpt: scheduler.Truncate(strings.TrimSpace(redact(string(head), tok)), 200)}
	}
	body := &countingReader{r: io.LimitReader(resp.Body, c.maxBody())}
	if err := json.NewDecoder(body).Decode(out); err != nil {
		return body.n, errors.Join(errors.New("decode response"), err)
	}
	return body.n, nil
}

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
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
