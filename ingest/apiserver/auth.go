package apiserver

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/timerd/timerd/auth"
	"github.com/timerd/timerd/scheduler"
)

type claimsKey struct{}

// claimsOf returns the verified claims of r's token; ok is false when the
// server runs without authentication.
func claimsOf(r *http.Request) (auth.Claims, bool) {
	c, ok := r.Context().Value(claimsKey{}).(auth.Claims)
	return c, ok
}

// initAuth sets up the issuer and verifier and loads the revocations,
// dropping those already past their tokens' expiry.
func (s *Server) initAuth() error {
	s.issuer = &auth.Issuer{Key: s.cfg.SigningKey, Now: s.cfg.Now}
	revs, err := loadRevocations(s.db)
	if err != nil {
		return err
	}
	s.revs = revs
	s.verifier = &auth.Verifier{Key: s.cfg.SigningKey, Now: s.cfg.Now, Revoked: revs.revoked}
	s.tokCache = make(map[string]auth.Claims)
	if _, err := s.cleanupRevocations(s.cfg.Now()); err != nil {
		return err
	}
	return nil
}

// guard verifies the bearer token in the order of contract §5 (signature,
// exp, revocation), then checks its scope with allow, and hands the claims
// to h. Without a signing key it lets everything through.
func (s *Server) guard(allow func(auth.Claims) error, h http.HandlerFunc) http.Handler {
	if s.verifier == nil {
		return h
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tok, err := auth.BearerToken(r)
		var c auth.Claims
		if err == nil {
			c, err = s.verify(tok)
		}
		if err == nil {
			err = allow(c)
		}
		if err != nil {
			s.refuse(w, r, err)
			return
		}
		h(w, r.WithContext(context.WithValue(r.Context(), claimsKey{}, c)))
	})
}

// verify is s.verifier.Verify with the signature check of a token already
// verified skipped: a node posts every event with the same token, and the
// JWT parse and HMAC were 12 % of the CPU per event of BenchmarkPostEvents.
// A cached token is used only before its expiry (Verify's leeway is left to
// Verify) and its revocation is checked every time, as Verify does.
func (s *Server) verify(tok string) (auth.Claims, error) {
	s.tokMu.Lock()
	c, ok := s.tokCache[tok]
	s.tokMu.Unlock()
	if !ok || !s.cfg.Now().Before(c.ExpiresAtTime()) {
		c, err := s.verifier.Verify(tok)
		if err == nil {
			s.tokMu.Lock()
			if len(s.tokCache) >= maxTokenCache {
				clear(s.tokCache) // many tokens: a fresh start is cheap and bounds the memory
			}
			s.tokCache[tok] = c
			s.tokMu.Unlock()
		}
		return c, err
	}
	revoked, err := s.verifier.Revoked(c.ID, string(c.IdentityID))
	if err != nil {
		return auth.Claims{}, fmt.Errorf("%w: %w", auth.ErrRevocationCheck, err)
	}
	if revoked {
		return auth.Claims{}, fmt.Errorf("%w: jti %q of identity %q", auth.ErrRevoked, c.ID, c.IdentityID)
	}
	return c, nil
}

// maxTokenCache bounds the verified tokens verify keeps.
const maxTokenCache = 1024

// refuse answers an auth error: 401 (with WWW-Authenticate), 403 or 503.
// auth's errors never contain the token, so they are safe to send and log.
func (s *Server) refuse(w http.ResponseWriter, r *http.Request, err error) {
	code := auth.HTTPStatus(err)
	switch code {
	case http.StatusUnauthorized:
		w.Header().Set("WWW-Authenticate", `Bearer realm="timerd", error="invalid_token"`)
	case http.StatusForbidden:
		w.Header().Set("WWW-Authenticate", `Bearer realm="timerd", error="insufficient_scope"`)
	case http.StatusOK, http.StatusInternalServerError:
		s.log.Error("token check failed", "method", r.Method, "path", r.URL.Path, "err", err)
		writeError(w, http.StatusInternalServerError, "internal error")
		return
	}
	s.log.Debug("request refused", "method", r.Method, "path", r.URL.Path, "status", code, "err", err)
	writeError(w, code, "%v", err)
}

// callerAndBody is the start of every token endpoint: the caller's claims and
// the request body; false when it answered the request with an error.
func (s *Server) callerAndBody(w http.ResponseWriter, r *http.Request) (auth.Claims, []byte, bool) {
	caller, ok := claimsOf(r)
	if !ok {
		s.fail(w, r, errTokensDisabled)
		return auth.Claims{}, nil, false
	}
	body, err := readBody(w, r)
	if err != nil {
		s.fail(w, r, err)
		return auth.Claims{}, nil, false
	}
	return caller, body, true
}

// errTokensDisabled answers the token endpoints of a server without a key.
var errTokensDisabled = errorf(http.StatusNotImplemented,
	"token authentication is disabled on this server: it was started without a signing key")

// refreshToken is POST /auth/refresh: the bearer's successor, with the same
// identity, scope, trigger types and lifetime. The old token stays valid.
func (s *Server) refreshToken(w http.ResponseWriter, r *http.Request) {
	tok, c, err := s.reissue(w, r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"token": tok, "expires_at": formatTime(c.ExpiresAtTime())})
}

// refreshSensorToken is Attune's alias of refreshToken, in its envelope.
func (s *Server) refreshSensorToken(w http.ResponseWriter, r *http.Request) {
	tok, c, err := s.reissue(w, r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	tt := c.Metadata.TriggerTypes
	if tt == nil {
		tt = []string{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"data": map[string]any{
		"token":         tok,
		"expires_at":    formatTime(c.ExpiresAtTime()),
		"identity_id":   c.IdentityID,
		"sensor_ref":    c.Login,
		"trigger_types": tt,
	}})
}

func (s *Server) reissue(w http.ResponseWriter, r *http.Request) (string, auth.Claims, error) {
	if _, err := readBody(w, r); err != nil { // {} by contract; ignored
		return "", auth.Claims{}, err
	}
	old, ok := claimsOf(r)
	if !ok {
		return "", auth.Claims{}, errTokensDisabled
	}
	s.acctMu.Lock()
	defer s.acctMu.Unlock()
	// The account may have been deleted since the token was verified.
	if revoked, _ := s.revs.revoked(old.ID, string(old.IdentityID)); revoked {
		return "", auth.Claims{}, errorf(http.StatusUnauthorized, "%v", auth.ErrRevoked)
	}
	// A token without an identity could only be revoked one jti at a time,
	// and would renew itself for ever: it lives to its exp and no further.
	if old.IdentityID == "" {
		return "", auth.Claims{}, errorf(http.StatusForbidden,
			"this token has no identity_id: it cannot be refreshed; issue a new one, or use a service account's token")
	}
	// A service account's tokens never outlive its expires_at. (A deleted
	// account's identity is revoked above; an identity that names no account
	// here, as `timerd token issue --identity-id` writes, is revoked with
	// POST /auth/revoke.)
	var notAfter time.Time
	a, found, err := s.accountOf(old.IdentityID)
	switch {
	case err != nil:
		return "", auth.Claims{}, err
	case found && a.ExpiresAt != nil:
		notAfter = *a.ExpiresAt
	}
	tok, c, err := s.issuer.ReissueBefore(old, notAfter)
	if err != nil {
		return "", auth.Claims{}, errorf(http.StatusUnauthorized, "%v", err)
	}
	if err := s.trackIssued(c); err != nil {
		return "", auth.Claims{}, err
	}
	s.log.Info("token refreshed", "identity_id", c.IdentityID, "sub", c.Subject, "scope", c.Scope,
		"old_jti", old.ID, "jti", c.ID, "expires_at", c.ExpiresAtTime())
	return tok, c, nil
}

func formatTime(t time.Time) string { return t.UTC().Format(time.RFC3339) }

// checkEventTrigger is the last step of verification for POST events: a
// sensor token may post only its metadata.trigger_types.
func checkEventTrigger(r *http.Request, triggerRef string) error {
	c, ok := claimsOf(r)
	if !ok {
		return nil
	}
	if err := c.CanCreateEvent(triggerRef); err != nil {
		code := auth.HTTPStatus(err)
		if errors.Is(err, auth.ErrTriggerNotAllowed) {
			return errorf(code, "trigger_ref: %v", err)
		}
		return errorf(code, "%v", err)
	}
	// A timer's events come from the timer sensor alone: a webhook or an admin
	// token could otherwise post a future slot's key first (keys are
	// predictable) and the real fire would be dropped as its repeat.
	if scheduler.IsTimerTrigger(triggerRef) && c.Scope != auth.ScopeSensor {
		return errorf(http.StatusForbidden, "trigger_ref: %q is a timer trigger: only a sensor token that lists it may post its events", triggerRef)
	}
	return nil
}
