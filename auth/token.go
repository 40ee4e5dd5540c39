package auth

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/google/uuid"
)

// Verification and permission failures. Their messages never contain the
// token. HTTPStatus maps them to 401 or 403.
var (
	ErrMissingToken      = errors.New("missing bearer token")
	ErrMalformed         = errors.New("malformed token")
	ErrBadSignature      = errors.New("invalid token signature")
	ErrExpired           = errors.New("token expired")
	ErrNotYetValid       = errors.New("token not valid yet")
	ErrRevoked           = errors.New("token revoked")
	ErrScope             = errors.New("token scope does not allow this")
	ErrTriggerNotAllowed = errors.New("trigger type not allowed for this token")
	// ErrRevocationCheck wraps a failure of the Revoked hook: the token is
	// refused (fail closed) but the client should retry (503).
	ErrRevocationCheck = errors.New("revocation check failed")
)

// HTTPStatus is the status an API answers for a Verify or Can… error:
// 200 for nil, 401 when the token is missing, malformed, badly signed,
// expired, not yet valid or revoked, 403 for scope and trigger refusals,
// 503 when the revocation store failed, 500 for anything else.
func HTTPStatus(err error) int {
	switch {
	case err == nil:
		return http.StatusOK
	case errors.Is(err, ErrScope), errors.Is(err, ErrTriggerNotAllowed):
		return http.StatusForbidden
	case errors.Is(err, ErrMissingToken), errors.Is(err, ErrMalformed), errors.Is(err, ErrBadSignature),
		errors.Is(err, ErrExpired), errors.Is(err, ErrNotYetValid), errors.Is(err, ErrRevoked):
		return http.StatusUnauthorized
	case errors.Is(err, ErrRevocationCheck):
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}

// MaxTTL is the longest lifetime Issue grants: every token expires.
const MaxTTL = 10 * 365 * 24 * time.Hour

// IdentityTypeServiceAccount is the identity_type of service-account tokens.
const IdentityTypeServiceAccount = "service_account"

// IssueRequest describes a token to issue.
type IssueRequest struct {
	Subject      string     // sub; default IdentityID; one of them is required
	IdentityID   IdentityID // identity_id
	Scope        Scope      // required
	TriggerTypes []string   // metadata.trigger_types; required for scope sensor
	TTL          time.Duration
	Login        string // Attune: the sensor ref
	TokenType    string // Attune: "sensor"
}

// Issuer signs tokens with an HS256 key.
type Issuer struct {
	Key []byte           // at least MinKeyLen bytes
	Now func() time.Time // default time.Now
}

// Issue signs a new token for req with a random jti (a UUID). iat is now and
// exp is iat + TTL, both in whole seconds as the token carries them.
func (i *Issuer) Issue(req IssueRequest) (string, Claims, error) {
	if len(i.Key) < MinKeyLen {
		return "", Claims{}, fmt.Errorf("issue token: %w: %d bytes, need at least %d", ErrShortKey, len(i.Key), MinKeyLen)
	}
	if _, err := ParseScope(string(req.Scope)); err != nil {
		return "", Claims{}, fmt.Errorf("issue token: %w", err)
	}
	if req.TTL < time.Second || req.TTL > MaxTTL {
		return "", Claims{}, fmt.Errorf("issue token: ttl %v: must be between 1s and %v", req.TTL, MaxTTL)
	}
	if req.Subject == "" {
		req.Subject = string(req.IdentityID)
	}
	if req.Subject == "" {
		return "", Claims{}, errors.New("issue token: subject: required (or an identity id)")
	}
	for _, t := range req.TriggerTypes {
		if strings.TrimSpace(t) == "" {
			return "", Claims{}, errors.New("issue token: trigger types: empty entry")
		}
	}
	if req.Scope == ScopeSensor && len(req.TriggerTypes) == 0 {
		return "", Claims{}, errors.New("issue token: trigger types: required for scope sensor (it may post only those)")
	}
	now := time.Now
	if i.Now != nil {
		now = i.Now
	}
	iat := now().Truncate(time.Second)
	c := Claims{
		RegisteredClaims: jwt.RegisteredClaims{
			Subject:   req.Subject,
			ID:        uuid.NewString(),
			IssuedAt:  jwt.NewNumericDate(iat),
			ExpiresAt: jwt.NewNumericDate(iat.Add(req.TTL).Truncate(time.Second)),
		},
		IdentityID:   req.IdentityID,
		IdentityType: IdentityTypeServiceAccount,
		Scope:        req.Scope,
		Metadata:     Metadata{TriggerTypes: append([]string(nil), req.TriggerTypes...)},
		Login:        req.Login,
		TokenType:    req.TokenType,
	}
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, c).SignedString(i.Key)
	if err != nil {
		return "", Claims{}, fmt.Errorf("issue token: sign: %w", err)
	}
	return tok, c, nil
}

// Reissue signs a successor of a verified token for POST /auth/refresh: same
// subject, identity, scope, metadata, login and token type, a new jti, and the
// same lifetime (exp − iat) starting now. The old token stays valid until it
// expires.
func (i *Issuer) Reissue(old Claims) (string, Claims, error) {
	return i.ReissueBefore(old, time.Time{})
}

// ErrIdentityExpired: a token may not be reissued past its identity's expiry.
var ErrIdentityExpired = errors.New("the identity expired")

// ReissueBefore is Reissue with the new token's exp at notAfter at the latest
// (its identity's own expiry); zero: no bound.
func (i *Issuer) ReissueBefore(old Claims, notAfter time.Time) (string, Claims, error) {
	ttl := old.ExpiresAtTime().Sub(old.IssuedAtTime())
	if old.IssuedAt == nil || old.ExpiresAt == nil || ttl <= 0 {
		return "", Claims{}, fmt.Errorf("reissue token: %w: needs iat before exp", ErrMalformed)
	}
	if !notAfter.IsZero() {
		now := time.Now
		if i.Now != nil {
			now = i.Now
		}
		left := notAfter.Sub(now()).Truncate(time.Second)
		if left < time.Second {
			return "", Claims{}, fmt.Errorf("reissue token: %w at %s", ErrIdentityExpired, notAfter.UTC().Format(time.RFC3339))
		}
		ttl = min(ttl, left)
	}
	return i.Issue(IssueRequest{
		Subject:      old.Subject,
		IdentityID:   old.IdentityID,
		Scope:        old.Scope,
		TriggerTypes: old.Metadata.TriggerTypes,
		TTL:          min(ttl, MaxTTL),
		Login:        old.Login,
		TokenType:    old.TokenType,
	})
}

// DefaultLeeway is the clock skew Verify tolerates on exp, nbf and iat.
const DefaultLeeway = 30 * time.Second

// Verifier checks tokens signed with Key. The zero Leeway means
// DefaultLeeway; a negative one means none.
type Verifier struct {
	Key    []byte
	Leeway time.Duration
	Now    func() time.Time // default time.Now
	// Revoked, if set, reports whether the token's jti or its whole identity
	// has been revoked. An error refuses the token with ErrRevocationCheck.
	Revoked func(jti, identityID string) (bool, error)
}

// Verify checks token in the order of contract §5: signature with the
// algorithm pinned to HS256 (none, RS256, HS384 and the rest are refused),
// then exp (required; nbf and iat too when present), then revocation. Scope
// and trigger checks are the caller's, with the Can… methods of the claims.
func (v *Verifier) Verify(token string) (Claims, error) {
	if token == "" {
		return Claims{}, ErrMissingToken
	}
	if len(v.Key) < MinKeyLen {
		return Claims{}, fmt.Errorf("verify token: %w: %d bytes, need at least %d", ErrShortKey, len(v.Key), MinKeyLen)
	}
	leeway := v.Leeway
	if leeway == 0 {
		leeway = DefaultLeeway
	}
	leeway = max(leeway, 0)
	now := time.Now
	if v.Now != nil {
		now = v.Now
	}
	p := jwt.NewParser(
		jwt.WithValidMethods([]string{jwt.SigningMethodHS256.Alg()}),
		jwt.WithExpirationRequired(),
		jwt.WithIssuedAt(),
		jwt.WithLeeway(leeway),
		jwt.WithTimeFunc(now),
	)
	var c Claims
	_, err := p.ParseWithClaims(token, &c, func(t *jwt.Token) (any, error) {
		if t.Method != jwt.SigningMethodHS256 { // belt and braces with WithValidMethods
			return nil, fmt.Errorf("algorithm %v is not HS256", t.Method.Alg())
		}
		return v.Key, nil
	})
	if err != nil {
		return Claims{}, classify(err)
	}
	if v.Revoked != nil {
		revoked, err := v.Revoked(c.ID, string(c.IdentityID))
		if err != nil {
			return Claims{}, fmt.Errorf("%w: %w", ErrRevocationCheck, err)
		}
		if revoked {
			return Claims{}, fmt.Errorf("%w: jti %q of identity %q", ErrRevoked, c.ID, c.IdentityID)
		}
	}
	return c, nil
}

// classify maps a jwt error onto our sentinels. jwt's messages name the
// failing part, never the token's text.
func classify(err error) error {
	switch {
	case errors.Is(err, jwt.ErrTokenMalformed):
		return fmt.Errorf("%w: %v", ErrMalformed, err)
	case errors.Is(err, jwt.ErrTokenSignatureInvalid), errors.Is(err, jwt.ErrTokenUnverifiable):
		return fmt.Errorf("%w: %v", ErrBadSignature, err)
	case errors.Is(err, jwt.ErrTokenRequiredClaimMissing):
		return fmt.Errorf("%w: %v", ErrMalformed, err)
	case errors.Is(err, jwt.ErrTokenExpired):
		return fmt.Errorf("%w: %v", ErrExpired, err)
	case errors.Is(err, jwt.ErrTokenNotValidYet), errors.Is(err, jwt.ErrTokenUsedBeforeIssued):
		return fmt.Errorf("%w: %v", ErrNotYetValid, err)
	}
	return fmt.Errorf("%w: %v", ErrMalformed, err)
}

// ParseUnverified decodes a token's claims without checking its signature
// or times: for the client side (when to refresh) and `timerd token inspect`.
// Never authorize anything with its result.
func ParseUnverified(token string) (Claims, error) {
	if token == "" {
		return Claims{}, ErrMissingToken
	}
	var c Claims
	if _, _, err := jwt.NewParser().ParseUnverified(token, &c); err != nil {
		return Claims{}, classify(err)
	}
	return c, nil
}

// BearerToken returns the token of r's "Authorization: Bearer …" header:
// ErrMissingToken without one, ErrMalformed for another scheme.
func BearerToken(r *http.Request) (string, error) {
	h := strings.TrimSpace(r.Header.Get("Authorization"))
	if h == "" {
		return "", ErrMissingToken
	}
	scheme, tok, _ := strings.Cut(h, " ")
	if !strings.EqualFold(scheme, "Bearer") {
		return "", fmt.Errorf("%w: authorization header is not a bearer token", ErrMalformed)
	}
	tok = strings.TrimSpace(tok)
	if tok == "" {
		return "", ErrMissingToken
	}
	return tok, nil
}

// Mask stands for a token in logs and tests: a 4-character prefix, the
// length and a 3-character suffix ("eyJh…(312 chars)…x9Q"); short strings
// show only their length.
func Mask(token string) string {
	n := len(token)
	if n < 16 {
		return fmt.Sprintf("…(%d chars)", n)
	}
	return fmt.Sprintf("%s…(%d chars)…%s", token[:4], n, token[n-3:])
}

// Revocation is the record of a revoked token (JTI set) or of every token of
// an identity (JTI empty) — contract §5. The API server stores these and
// answers Verifier.Revoked from them.
type Revocation struct {
	JTI        string     `json:"jti,omitempty"`
	IdentityID IdentityID `json:"identity_id,omitempty"`
	// TokenExp is when the revoked token expires; for an identity, the latest
	// expiry of any token it holds (RevokedAt + MaxTTL when unknown).
	TokenExp  time.Time `json:"token_exp"`
	RevokedAt time.Time `json:"revoked_at"`
	RevokedBy string    `json:"revoked_by,omitempty"`
	Reason    string    `json:"reason,omitempty"`
}

// Expired says whether the record can be deleted at now: no token it covers
// can pass a Verifier with that leeway any more.
func (r Revocation) Expired(now time.Time, leeway time.Duration) bool {
	return now.After(r.TokenExp.Add(max(leeway, 0)))
}
