package attune

import (
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
