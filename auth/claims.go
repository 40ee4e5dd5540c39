package auth

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Scope is what a token may do (contract §5).
type Scope string

// The scopes Attune knows.
const (
	ScopeAdmin           Scope = "admin"
	ScopeUser            Scope = "user"
	ScopeSensor          Scope = "sensor"
	ScopeActionExecution Scope = "action_execution"
	ScopeWebhook         Scope = "webhook"
	ScopeReadonly        Scope = "readonly"
)

var scopes = []Scope{ScopeAdmin, ScopeUser, ScopeSensor, ScopeActionExecution, ScopeWebhook, ScopeReadonly}

// ParseScope returns the scope named s, or an error listing the valid ones.
func ParseScope(s string) (Scope, error) {
	if sc := Scope(s); slices.Contains(scopes, sc) {
		return sc, nil
	}
	names := make([]string, len(scopes))
	for i, sc := range scopes {
		names[i] = string(sc)
	}
	return "", fmt.Errorf("scope %q is not one of %s", s, strings.Join(names, ", "))
}

// IdentityID is the id of the identity (service account) a token belongs to.
//
// Attune's code issues numeric ids while other issuers use strings, so it
// unmarshals from a JSON number or a string. It marshals as a JSON number when
// it is a canonical decimal int64 (what Attune's own verifier expects) and as
// a string otherwise.
type IdentityID string

// MarshalJSON writes a canonical int64 as a number, anything else as a string.
func (id IdentityID) MarshalJSON() ([]byte, error) {
	if n, err := strconv.ParseInt(string(id), 10, 64); err == nil && strconv.FormatInt(n, 10) == string(id) {
		return []byte(string(id)), nil
	}
	return json.Marshal(string(id))
}

// UnmarshalJSON accepts an integer, a string or null.
func (id *IdentityID) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	switch {
	case bytes.Equal(b, []byte("null")):
		*id = ""
		return nil
	case len(b) > 0 && b[0] == '"':
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return fmt.Errorf("identity_id: %w", err)
		}
		*id = IdentityID(s)
		return nil
	}
	var n json.Number
	if err := json.Unmarshal(b, &n); err != nil {
		return fmt.Errorf("identity_id: not a number or string")
	}
	if _, err := strconv.ParseInt(n.String(), 10, 64); err != nil {
		return fmt.Errorf("identity_id: %s is not an integer", n)
	}
	*id = IdentityID(n.String())
	return nil
}

// Metadata is the token's metadata claim.
type Metadata struct {
	// TriggerTypes are the trigger refs a sensor token may create events for.
	TriggerTypes []string `json:"trigger_types,omitempty"`
}

// Claims are the claims of a timerd / Attune token: the contract §5 set plus
// login and token_type, which Attune's code issues.
type Claims struct {
	jwt.RegisteredClaims // sub, jti, iat, exp (required), nbf optional

	IdentityID   IdentityID `json:"identity_id,omitempty"`
	IdentityType string     `json:"identity_type,omitempty"` // "service_account"
	Scope        Scope      `json:"scope"`
	Metadata     Metadata   `json:"metadata"`
	Login        string     `json:"login,omitempty"`      // Attune: the sensor ref
	TokenType    string     `json:"token_type,omitempty"` // Attune: "sensor"
}

// IssuedAtTime is the iat claim, zero when absent.
func (c Claims) IssuedAtTime() time.Time { return numericTime(c.IssuedAt) }

// ExpiresAtTime is the exp claim, zero when absent.
func (c Claims) ExpiresAtTime() time.Time { return numericTime(c.ExpiresAt) }

func numericTime(d *jwt.NumericDate) time.Time {
	if d == nil {
		return time.Time{}
	}
	return d.Time
}

// Require returns nil when the token's scope is admin or one of allowed,
// else an error wrapping ErrScope.
func (c Claims) Require(allowed ...Scope) error {
	if c.Scope == ScopeAdmin || slices.Contains(allowed, c.Scope) {
		return nil
	}
	return fmt.Errorf("%w: scope %q, need one of %v", ErrScope, c.Scope, append([]Scope{ScopeAdmin}, allowed...))
}

// CanCreateEvent says whether the token may post an event of triggerRef:
// admin and webhook may post any; sensor only those in metadata.trigger_types
// (else ErrTriggerNotAllowed); every other scope gets ErrScope.
func (c Claims) CanCreateEvent(triggerRef string) error {
	if err := c.Require(ScopeWebhook, ScopeSensor); err != nil {
		return err
	}
	if c.Scope == ScopeSensor && !slices.Contains(c.Metadata.TriggerTypes, triggerRef) {
		return fmt.Errorf("%w: %q is not in the token's trigger_types", ErrTriggerNotAllowed, triggerRef)
	}
	return nil
}

// CanReadRules: admin, user, sensor, readonly.
func (c Claims) CanReadRules() error {
	return c.Require(ScopeUser, ScopeSensor, ScopeReadonly)
}

// CanWriteRules: admin, user.
func (c Claims) CanWriteRules() error { return c.Require(ScopeUser) }

// CanManageServiceAccounts: admin only.
func (c Claims) CanManageServiceAccounts() error { return c.Require() }

// CanRefresh: every scope but action_execution, whose tokens live exactly as
// long as their execution's timeout and must not be extended.
func (c Claims) CanRefresh() error {
	return c.Require(ScopeUser, ScopeSensor, ScopeWebhook, ScopeReadonly)
}
