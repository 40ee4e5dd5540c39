package apiserver

import (
	"encoding/json"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"

	bolt "go.etcd.io/bbolt"

	"github.com/timerd/timerd/auth"
)

// account is a service account as stored. Its tokens are never stored: only
// their jti and exp, so that deleting the account can revoke them.
type account struct {
	IdentityID  auth.IdentityID `json:"identity_id"`
	Name        string          `json:"name"`
	Description string          `json:"description"`
	Scope       auth.Scope      `json:"scope"`
	Metadata    auth.Metadata   `json:"metadata"`
	TTLSeconds  int64           `json:"ttl_seconds"`
	Created     time.Time       `json:"created"`
	CreatedBy   string          `json:"created_by,omitempty"`
	// ExpiresAt, when set, is the identity's own expiry: no token of it,
	// first or refreshed, lives past it.
	ExpiresAt *time.Time `json:"identity_expires_at,omitempty"`
	// TokensExpireAt is the latest exp of any token issued to the account:
	// how long a revocation of the whole identity must be kept.
	TokensExpireAt time.Time     `json:"tokens_expire_at"`
	Live           []issuedToken `json:"live_tokens,omitempty"` // newest last, at most maxLiveTokens
}

type issuedToken struct {
	JTI string    `json:"jti"`
	Exp time.Time `json:"exp"`
}

// maxLiveTokens bounds the jtis kept per account against a client that
// refreshes in a loop; the identity-wide revocation covers the rest.
const maxLiveTokens = 100

// accountJSON is an account as served: without the jtis.
type accountJSON struct {
	IdentityID     auth.IdentityID `json:"identity_id"`
	Name           string          `json:"name"`
	Description    string          `json:"description"`
	Scope          auth.Scope      `json:"scope"`
	Metadata       accountMetadata `json:"metadata"`
	TTLSeconds     int64           `json:"ttl_seconds"`
	Created        time.Time       `json:"created"`
	CreatedBy      string          `json:"created_by,omitempty"`
	ExpiresAt      *time.Time      `json:"identity_expires_at,omitempty"`
	TokensExpireAt time.Time       `json:"tokens_expire_at"`
}

type accountMetadata struct {
	TriggerTypes []string `json:"trigger_types"`
}

func (a *account) view() accountJSON {
	tt := a.Metadata.TriggerTypes
	if tt == nil {
		tt = []string{}
	}
	return accountJSON{
		IdentityID: a.IdentityID, Name: a.Name, Description: a.Description, Scope: a.Scope,
		Metadata: accountMetadata{TriggerTypes: tt}, TTLSeconds: a.TTLSeconds, Created: a.Created,
		CreatedBy: a.CreatedBy, ExpiresAt: a.ExpiresAt, TokensExpireAt: a.TokensExpireAt,
	}
}

// DefaultServiceAccountTTL is the lifetime of a service account's tokens
// when the request names none: the seed's 90 days.
const DefaultServiceAccountTTL = 90 * 24 * time.Hour

const maxDescriptionLen = 1024

type newAccount struct {
	name, description string
	scope             auth.Scope
	ttl               time.Duration
	triggerTypes      []string
	expiresAt         *time.Time // the identity's own expiry, if any
}

func parseNewAccount(body []byte) (*newAccount, error) {
	f, err := decodeObject(body)
	if err != nil {
		return nil, err
	}
	na := &newAccount{ttl: DefaultServiceAccountTTL}
	name, err := f.requiredStr("name")
	if err != nil {
		return nil, err
	}
	if err := checkText("name", name, maxRefLen); err != nil {
		return nil, err
	}
	if name == "" {
		return nil, errorf(http.StatusBadRequest, "name: must not be empty")
	}
	na.name = name
	if na.description, _, err = f.str("description"); err != nil {
		return nil, err
	}
	if err := checkText("description", na.description, maxDescriptionLen); err != nil {
		return nil, err
	}
	scope, err := f.requiredStr("scope")
	if err != nil {
		return nil, err
	}
	if na.scope, err = auth.ParseScope(scope); err != nil {
		return nil, errorf(http.StatusBadRequest, "scope: %v", err)
	}
	days, hasDays, err := f.positiveInt("ttl_days")
	if err != nil {
		return nil, err
	}
	hours, hasHours, err := f.positiveInt("ttl_hours")
	if err != nil {
		return nil, err
	}
	switch {
	case hasDays && hasHours:
		return nil, errorf(http.StatusBadRequest, "ttl_days, ttl_hours: give one, not both")
	case hasDays && days <= int64(auth.MaxTTL/(24*time.Hour)):
		na.ttl = time.Duration(days) * 24 * time.Hour
	case hasHours && hours <= int64(auth.MaxTTL/time.Hour):
		na.ttl = time.Duration(hours) * time.Hour
	case hasDays:
		return nil, errorf(http.StatusBadRequest, "ttl_days: at most %d", auth.MaxTTL/(24*time.Hour))
	case hasHours:
		return nil, errorf(http.StatusBadRequest, "ttl_hours: at most %d", auth.MaxTTL/time.Hour)
	}
	if at, ok, err := f.str("identity_expires_at"); err != nil {
		return nil, err
	} else if ok {
		t, err := time.Parse(time.RFC3339, at)
		if err != nil {
			return nil, errorf(http.StatusBadRequest, "identity_expires_at: not an RFC 3339 time")
		}
		t = t.UTC()
		na.expiresAt = &t
	}
	if raw := f.get("metadata"); raw != nil {
		if firstByte(raw) != '{' {
			return nil, errorf(http.StatusBadRequest, "metadata: must be a JSON object")
		}
		var md struct {
			TriggerTypes []string `json:"trigger_types"`
		}
		if err := json.Unmarshal(raw, &md); err != nil {
			return nil, errorf(http.StatusBadRequest, "metadata.trigger_types: must be an array of strings")
		}
		for _, t := range md.TriggerTypes {
			if err := checkName("metadata.trigger_types", t); err != nil {
				return nil, err
			}
			if !slices.Contains(na.triggerTypes, t) {
				na.triggerTypes = append(na.triggerTypes, t)
			}
		}
	}
	if na.scope == auth.ScopeSensor && len(na.triggerTypes) == 0 {
		return nil, errorf(http.StatusBadRequest, "metadata.trigger_types: required for scope sensor (it may post events of those triggers only)")
	}
	return na, nil
}

// checkText bounds a free-text field and refuses control characters (it
// ends up in logs).
func checkText(field, v string, maxLen int) error {
	if len(v) > maxLen {
		return errorf(http.StatusBadRequest, "%s: longer than %d bytes", field, maxLen)
	}
	if strings.ContainsFunc(v, unicode.IsControl) {
		return errorf(http.StatusBadRequest, "%s: control characters are not allowed", field)
	}
	return nil
}

// createServiceAccount is POST /service-accounts (admin): it stores the
// account and returns its first token, the only time it is shown.
func (s *Server) createServiceAccount(w http.ResponseWriter, r *http.Request) {
	caller, body, ok := s.callerAndBody(w, r)
	if !ok {
		return
	}
	na, err := parseNewAccount(body)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.acctMu.Lock()
	defer s.acctMu.Unlock()
	var (
		a   account
		tok string
	)
	err = s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketAccounts)
		if err := b.ForEach(func(_, v []byte) error {
			var other account
			if err := json.Unmarshal(v, &other); err != nil {
				return err
			}
			if other.Name == na.name {
				return errorf(http.StatusConflict, "name: a service account named %q exists (identity_id %s)", na.name, other.IdentityID)
			}
			return nil
		}); err != nil {
			return err
		}
		seq, err := b.NextSequence()
		if err != nil {
			return err
		}
		ttl := na.ttl
		if na.expiresAt != nil {
			left := na.expiresAt.Sub(s.cfg.Now()).Truncate(time.Second)
			if left < time.Second {
				return errorf(http.StatusBadRequest, "identity_expires_at: %s is not in the future", na.expiresAt.Format(time.RFC3339))
			}
			ttl = min(ttl, left)
		}
		req := auth.IssueRequest{
			IdentityID:   auth.IdentityID(strconv.FormatUint(seq, 10)),
			Scope:        na.scope,
			TriggerTypes: na.triggerTypes,
			TTL:          ttl,
			Login:        na.name, // Attune: the sensor ref
		}
		if na.scope == auth.ScopeSensor {
			req.TokenType = "sensor"
		}
		var c auth.Claims
		if tok, c, err = s.issuer.Issue(req); err != nil {
			return errorf(http.StatusBadRequest, "%v", err)
		}
		a = account{
			IdentityID: req.IdentityID, Name: na.name, Description: na.description, Scope: na.scope,
			Metadata: auth.Metadata{TriggerTypes: na.triggerTypes}, TTLSeconds: int64(na.ttl / time.Second),
			Created: s.cfg.Now().UTC(), CreatedBy: caller.Subject, ExpiresAt: na.expiresAt, TokensExpireAt: c.ExpiresAtTime().UTC(),
			Live: []issuedToken{{JTI: c.ID, Exp: c.ExpiresAtTime().UTC()}},
		}
		return putAccount(tx, seq, &a)
	})
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.log.Info("service account created", "identity_id", a.IdentityID, "name", a.Name, "scope", a.Scope,
		"trigger_types", a.Metadata.TriggerTypes, "by", caller.Subject, "expires_at", a.TokensExpireAt)
	writeJSON(w, http.StatusCreated, struct {
		accountJSON
		Token     string `json:"token"`
		ExpiresAt string `json:"expires_at"`
	}{a.view(), tok, formatTime(a.TokensExpireAt)})
}

// accountOf reads the service account of identity id; found is false when id
// names none here.
func (s *Server) accountOf(id auth.IdentityID) (a account, found bool, err error) {
	seq, ok := accountKey(string(id))
	if !ok {
		return account{}, false, nil
	}
	err = s.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketAccounts).Get(idKey(int64(seq)))
		if v == nil {
			return nil
		}
		found = true
		return json.Unmarshal(v, &a)
	})
	return a, found, err
}

func putAccount(tx *bolt.Tx, seq uint64, a *account) error {
	v, err := json.Marshal(a)
	if err != nil {
		return err
	}
	return tx.Bucket(bucketAccounts).Put(idKey(int64(seq)), v)
}

// listServiceAccounts is GET /service-accounts (admin), oldest first. No
// token is ever listed.
func (s *Server) listServiceAccounts(w http.ResponseWriter, r *http.Request) {
	if _, ok := claimsOf(r); !ok {
		s.fail(w, r, errTokensDisabled)
		return
	}
	items := []accountJSON{}
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketAccounts).ForEach(func(_, v []byte) error {
			var a account
			if err := json.Unmarshal(v, &a); err != nil {
				return err
			}
			items = append(items, a.view())
			return nil
		})
	})
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"items": items})
}

// accountKey parses the identity id of a path; ok is false for anything
// that cannot name an account.
func accountKey(id string) (uint64, bool) {
	n, err := strconv.ParseUint(id, 10, 64)
	return n, err == nil && n > 0 && strconv.FormatUint(n, 10) == id
}

// deleteServiceAccount is DELETE /service-accounts/{identity_id} (admin),
// body {"reason"} (optional). It deletes the account and revokes every
// token of the identity: one record for the identity, kept until the
// latest exp of its tokens, plus one per token still live.
func (s *Server) deleteServiceAccount(w http.ResponseWriter, r *http.Request) {
	caller, body, ok := s.callerAndBody(w, r)
	if !ok {
		return
	}
	var reason string
	if len(strings.TrimSpace(string(body))) > 0 {
		f, err := decodeObject(body)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		if reason, _, err = f.str("reason"); err != nil {
			s.fail(w, r, err)
			return
		}
		if err := checkText("reason", reason, maxDescriptionLen); err != nil {
			s.fail(w, r, err)
			return
		}
	}
	id := r.PathValue("identity_id")
	seq, ok := accountKey(id)
	if !ok {
		s.fail(w, r, errorf(http.StatusNotFound, "service account %q not found", id))
		return
	}
	s.acctMu.Lock()
	defer s.acctMu.Unlock()
	now := s.cfg.Now().UTC()
	var (
		a    account
		recs []auth.Revocation
	)
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketAccounts)
		v := b.Get(idKey(int64(seq)))
		if v == nil {
			return errorf(http.StatusNotFound, "service account %q not found", id)
		}
		if err := json.Unmarshal(v, &a); err != nil {
			return err
		}
		rev := auth.Revocation{IdentityID: a.IdentityID, TokenExp: a.TokensExpireAt, RevokedAt: now,
			RevokedBy: caller.Subject, Reason: reason}
		recs = append(recs[:0], rev)
		for _, t := range a.Live {
			if t.Exp.After(now) {
				rev.JTI, rev.TokenExp = t.JTI, t.Exp
				recs = append(recs, rev)
			}
		}
		if err := putRevocations(tx, recs); err != nil {
			return err
		}
		return b.Delete(idKey(int64(seq)))
	})
	if err != nil {
		s.fail(w, r, err)
		return
	}
	for _, rev := range recs {
		s.revs.add(rev)
	}
	s.log.Info("service account deleted; its tokens are revoked", "identity_id", a.IdentityID, "name", a.Name,
		"by", caller.Subject, "reason", reason, "live_tokens", len(recs)-1, "revoked_until", a.TokensExpireAt)
	writeJSON(w, http.StatusOK, map[string]any{"data": map[string]any{
		"identity_id":    a.IdentityID,
		"name":           a.Name,
		"revoked_at":     now,
		"revoked_until":  a.TokensExpireAt,
		"reason":         reason,
		"tokens_revoked": len(recs) - 1,
	}})
}

// trackIssued records a token issued to a service account by refresh: its
// jti (for a revocation per token) and the latest exp (for the identity's).
// Tokens of identities that are not accounts here (issued with `timerd
// token issue`) are not tracked. The caller holds acctMu.
func (s *Server) trackIssued(c auth.Claims) error {
	seq, ok := accountKey(string(c.IdentityID))
	if !ok {
		return nil
	}
	now := s.cfg.Now()
	return s.db.Update(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketAccounts).Get(idKey(int64(seq)))
		if v == nil {
			return nil
		}
		var a account
		if err := json.Unmarshal(v, &a); err != nil {
			return err
		}
		exp := c.ExpiresAtTime().UTC()
		// Keep tokens that could still pass verification (exp + leeway).
		a.Live = slices.DeleteFunc(a.Live, func(t issuedToken) bool {
			return (auth.Revocation{TokenExp: t.Exp}).Expired(now, auth.DefaultLeeway)
		})
		a.Live = append(a.Live, issuedToken{JTI: c.ID, Exp: exp})
		if n := len(a.Live); n > maxLiveTokens {
			a.Live = slices.Delete(a.Live, 0, n-maxLiveTokens)
		}
		if exp.After(a.TokensExpireAt) {
			a.TokensExpireAt = exp
		}
		return putAccount(tx, seq, &a)
	})
}
