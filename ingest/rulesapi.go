package ingest

import (
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
)

// RemoteRule is a rule as Attune's rules API lists it; only the fields a
// timer sensor needs.
type RemoteRule struct {
	ID         int64           `json:"id"`
	Ref        string          `json:"ref"`
	TriggerRef string          `json:"trigger_ref"`
	Params     json.RawMessage `json:"trigger_params"`
	Enabled    *bool           `json:"enabled"`
	// Updated and Created are when Attune last changed and created the rule
	// (also spelled updated_at, created_at); zero when absent or not RFC 3339:
	// a malformed time does not fail the listing.
	Updated time.Time `json:"updated"`
	Created time.Time `json:"created"`
}

// Version is the rule's source version (docs/protocol.md §1): Updated, else
// Created; zero if the listing has neither.
func (r RemoteRule) Version() time.Time {
	if !r.Updated.IsZero() {
		return r.Updated
	}
	return r.Created
}

// UnmarshalJSON reads a listed rule, accepting both spellings of its times
// and ignoring a time that does not parse.
func (r *RemoteRule) UnmarshalJSON(b []byte) error {
	type fields struct {
		ID         int64           `json:"id"`
		Ref        string          `json:"ref"`
		TriggerRef string          `json:"trigger_ref"`
		Params     json.RawMessage `json:"trigger_params"`
		Enabled    *bool           `json:"enabled"`
		Updated    json.RawMessage `json:"updated"`
		Created    json.RawMessage `json:"created"`
		UpdatedAt  json.RawMessage `json:"updated_at"`
		CreatedAt  json.RawMessage `json:"created_at"`
	}
	var f fields
	if err := json.Unmarshal(b, &f); err != nil {
		return err
	}
	*r = RemoteRule{ID: f.ID, Ref: f.Ref, TriggerRef: f.TriggerRef, Params: f.Params, Enabled: f.Enabled,
		Updated: firstTime(f.Updated, f.UpdatedAt), Created: firstTime(f.Created, f.CreatedAt)}
	return nil
}

// firstTime is the first of raws that is an RFC 3339 JSON string, zero if none.
func firstTime(raws ...json.RawMessage) time.Time {
	for _, raw := range raws {
		var s string
		if len(raw) == 0 || json.Unmarshal(raw, &s) != nil {
			continue
		}
		if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
			return t
		}
	}
	return time.Time{}
}

// RulesClient pages through Attune's rules API (contract §4).
type RulesClient struct {
	APIURL string       // http(s)://host[:port][/prefix]
	Client *http.Client // nil: a client with a 30 s timeout
	Tokens TokenSource  // nil: no Authorization header
}

// maxRulePages bounds a reconcile against a server whose has_next never ends.
const maxRulePages = 100_000

// EnabledRules returns every enabled rule of triggerRef, following
// pagination.has_next. It accepts "items" or "data" as the list key.
func (c *RulesClient) EnabledRules(ctx context.Context, triggerRef string) ([]RemoteRule, error) {
	client := c.Client
	if client == nil {
		client = &http.Client{Timeout: 30 * time.Second}
	}
	client = auth.NoRedirects(client)
	base := strings.TrimRight(c.APIURL, "/") + "/api/v1/rules"
	var all []RemoteRule
	for page := 1; page <= maxRulePages; page++ {
		q := url.Values{}
		q.Set("trigger_ref", triggerRef)
		q.Set("enabled", "true")
		q.Set("page", strconv.Itoa(page))
		q.Set("page_size", "100")
		var body rulesPage
		if err := c.get(ctx, client, base+"?"+q.Encode(), &body); err != nil {
			return nil, fmt.Errorf("list rules of %s, page %d: %w", triggerRef, page, err)
		}
		items := body.Items
		if items == nil {
			items = body.Data
		}
		for _, r := range items {
			// The server filters, but a server that ignores the filter must
			// not make us schedule another trigger's rules.
			if r.TriggerRef == triggerRef && (r.Enabled == nil || *r.Enabled) {
				all = append(all, r)
			}
		}
		if body.Pagination == nil || !body.Pagination.HasNext {
			return all, nil
		}
	}
	return nil, fmt.Errorf("list rules of %s: more than %d pages", triggerRef, maxRulePages)
}

type rulesPage struct {
	Items      []RemoteRule `json:"items"`
	Data       []RemoteRule `json:"data"`
	Pagination *struct {
		HasNext bool `json:"has_next"`
	} `json:"pagination"`
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
		excerpt, _ := io.ReadAll(io.LimitReader(resp.Body, 200))
		return fmt.Errorf("status %d: %s", resp.StatusCode, strings.TrimSpace(string(excerpt)))
	}
	dec := json.NewDecoder(io.LimitReader(resp.Body, 64<<20))
	if err := dec.Decode(out); err != nil {
		return errors.Join(errors.New("decode response"), err)
	}
	return nil
}
