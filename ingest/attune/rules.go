package attune

import (
	"bytes"
	"encoding/json"
	"time"
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
	var j RuleJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	*r = j.Remote()
	return nil
}

// RuleJSON is a listed rule as the JSON holds it: the fields of RemoteRule, both
// spellings of its times. A page decoded into RuleJSON values is parsed once;
// RemoteRule's own UnmarshalJSON parses each rule twice (the page's decoder scans
// it, then json.Unmarshal again), a third of a reconcile round's CPU at 100,000
// rules.
type RuleJSON struct {
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

// Remote is j as a RemoteRule: a time that is not an RFC 3339 string is ignored.
func (j *RuleJSON) Remote() RemoteRule {
	return RemoteRule{ID: j.ID, Ref: j.Ref, TriggerRef: j.TriggerRef, Params: j.Params, Enabled: j.Enabled,
		Updated: firstTime(j.Updated, j.UpdatedAt), Created: firstTime(j.Created, j.CreatedAt)}
}

// firstTime is the first of raws that is an RFC 3339 JSON string, zero if none.
func firstTime(raws ...json.RawMessage) time.Time {
	for _, raw := range raws {
		var s string
		switch {
		case len(raw) < 2 || raw[0] != '"':
			continue
		case bytes.IndexByte(raw, '\\') < 0 && bytes.IndexByte(raw[1:], '"') == len(raw)-2:
			s = string(raw[1 : len(raw)-1]) // the usual time: no escapes to undo
		case json.Unmarshal(raw, &s) != nil:
			continue
		}
		if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
			return t
		}
	}
	return time.Time{}
}
