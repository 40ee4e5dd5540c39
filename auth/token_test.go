package auth

import (
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

var (
	testKey  = []byte("0123456789abcdef0123456789abcdef") // 32 bytes
	otherKey = []byte("fedcba9876543210fedcba9876543210")
	t0       = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
)

func fixedNow(t time.Time) func() time.Time { return func() time.Time { return t } }

// sign signs claims with any method and key, for forged and foreign tokens.
func sign(t *testing.T, m jwt.SigningMethod, claims jwt.Claims, key any) string {
	t.Helper()
	tok, err := jwt.NewWithClaims(m, claims).SignedString(key)
	if err != nil {
		t.Fatalf("sign %s: %v", m.Alg(), err)
	}
	return tok
}

func sensorClaims(iat, exp time.Time) Claims {
	return Claims{
		RegisteredClaims: jwt.RegisteredClaims{
			Subject: "7", ID: "jti-1",
			IssuedAt: jwt.NewNumericDate(iat), ExpiresAt: jwt.NewNumericDate(exp),
		},
		IdentityID: "7", IdentityType: IdentityTypeServiceAccount, Scope: ScopeSensor,
		Metadata: Metadata{TriggerTypes: []string{"core.intervaltimer"}},
	}
}

func TestVerifyFailures(t *testing.T) {
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	good := sensorClaims(t0.Add(-time.Hour), t0.Add(time.Hour))
	goodTok := sign(t, jwt.SigningMethodHS256, good, testKey)
	parts := strings.Split(goodTok, ".")
	admin := good
	admin.Scope = ScopeAdmin
	tampered := parts[0] + "." + base64.RawURLEncoding.EncodeToString(mustJSON(t, admin)) + "." + parts[2]
	noExp := good
	noExp.ExpiresAt = nil
	nbfLater := good
	nbfLater.NotBefore = jwt.NewNumericDate(t0.Add(time.Minute))
	revoked := good
	revoked.ID = "jti-revoked"
	storeDown := good
	storeDown.ID = "jti-store-down"
	revokedIdentity := good
	revokedIdentity.IdentityID = "666"

	tests := []struct {
		name    string
		token   string
		leeway  time.Duration
		want    error // nil: valid
		wantSts int
	}{
		{"valid", goodTok, 0, nil, 200},
		{"empty", "", 0, ErrMissingToken, 401},
		{"not a jwt", "abc", 0, ErrMalformed, 401},
		{"garbage segments", "a.b.c", 0, ErrMalformed, 401},
		{"other key", sign(t, jwt.SigningMethodHS256, good, otherKey), 0, ErrBadSignature, 401},
		{"payload tampered", tampered, 0, ErrBadSignature, 401},
		{"alg none", sign(t, jwt.SigningMethodNone, good, jwt.UnsafeAllowNoneSignatureType), 0, ErrBadSignature, 401},
		{"RS256", sign(t, jwt.SigningMethodRS256, good, rsaKey), 0, ErrBadSignature, 401},
		{"HS384 same key", sign(t, jwt.SigningMethodHS384, good, testKey), 0, ErrBadSignature, 401},
		{"HS512 same key", sign(t, jwt.SigningMethodHS512, good, testKey), 0, ErrBadSignature, 401},
		{"expired within leeway", sign(t, jwt.SigningMethodHS256, sensorClaims(t0.Add(-time.Hour), t0.Add(-20*time.Second)), testKey), 0, nil, 200},
		{"expired beyond leeway", sign(t, jwt.SigningMethodHS256, sensorClaims(t0.Add(-time.Hour), t0.Add(-31*time.Second)), testKey), 0, ErrExpired, 401},
		{"expired, no leeway", sign(t, jwt.SigningMethodHS256, sensorClaims(t0.Add(-time.Hour), t0.Add(-time.Second)), testKey), -1, ErrExpired, 401},
		{"missing exp", sign(t, jwt.SigningMethodHS256, noExp, testKey), 0, ErrMalformed, 401},
		{"nbf in the future", sign(t, jwt.SigningMethodHS256, nbfLater, testKey), 0, ErrNotYetValid, 401},
		{"iat in the future", sign(t, jwt.SigningMethodHS256, sensorClaims(t0.Add(time.Hour), t0.Add(2*time.Hour)), testKey), 0, ErrNotYetValid, 401},
		{"revoked jti", sign(t, jwt.SigningMethodHS256, revoked, testKey), 0, ErrRevoked, 401},
		{"revoked identity", sign(t, jwt.SigningMethodHS256, revokedIdentity, testKey), 0, ErrRevoked, 401},
		{"revocation store down", sign(t, jwt.SigningMethodHS256, storeDown, testKey), 0, ErrRevocationCheck, 503},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := &Verifier{Key: testKey, Leeway: tt.leeway, Now: fixedNow(t0),
				Revoked: func(jti, identityID string) (bool, error) {
					if jti == "jti-store-down" {
						return false, errors.New("bolt: database not open")
					}
					return jti == "jti-revoked" || identityID == "666", nil
				}}
			c, err := v.Verify(tt.token)
			if !errors.Is(err, tt.want) || (tt.want == nil && err != nil) {
				t.Fatalf("Verify(%s) error = %v, want %v", tt.name, err, tt.want)
			}
			if got := HTTPStatus(err); got != tt.wantSts {
				t.Errorf("HTTPStatus(%v) = %d, want %d", err, got, tt.wantSts)
			}
			if err != nil && tt.token != "" && strings.Contains(err.Error(), tt.token) {
				t.Errorf("Verify(%s) error %q contains the token", tt.name, err)
			}
			if tt.want == nil && (c.Scope != ScopeSensor || c.IdentityID != "7") {
				t.Errorf("Verify(%s) claims = %+v, want scope sensor, identity 7", tt.name, c)
			}
		})
	}
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestVerifyShortKey(t *testing.T) {
	v := &Verifier{Key: []byte("short")}
	if _, err := v.Verify("a.b.c"); !errors.Is(err, ErrShortKey) || HTTPStatus(err) != 500 {
		t.Errorf("Verify with a 5-byte key: error %v (status %d), want ErrShortKey (500)", err, HTTPStatus(err))
	}
}

func TestScopeChecks(t *testing.T) {
	type check struct {
		name string
		fn   func(Claims) error
	}
	checks := []check{
		{"CreateEvent(core.intervaltimer)", func(c Claims) error { return c.CanCreateEvent("core.intervaltimer") }},
		{"CreateEvent(core.webhook)", func(c Claims) error { return c.CanCreateEvent("core.webhook") }},
		{"ReadRules", Claims.CanReadRules},
		{"WriteRules", Claims.CanWriteRules},
		{"ManageServiceAccounts", Claims.CanManageServiceAccounts},
		{"Refresh", Claims.CanRefresh},
	}
	// want per scope, in the order of checks: "" ok, "S" ErrScope, "T" ErrTriggerNotAllowed
	tests := []struct {
		scope Scope
		want  [6]string
	}{
		{ScopeAdmin, [6]string{"", "", "", "", "", ""}},
		{ScopeUser, [6]string{"S", "S", "", "", "S", ""}},
		{ScopeSensor, [6]string{"", "T", "", "S", "S", ""}},
		{ScopeActionExecution, [6]string{"S", "S", "S", "S", "S", "S"}},
		{ScopeWebhook, [6]string{"", "", "S", "S", "S", ""}},
		{ScopeReadonly, [6]string{"S", "S", "", "S", "S", ""}},
		{"bogus", [6]string{"S", "S", "S", "S", "S", "S"}},
	}
	for _, tt := range tests {
		t.Run(string(tt.scope), func(t *testing.T) {
			c := Claims{Scope: tt.scope, Metadata: Metadata{TriggerTypes: []string{"core.intervaltimer"}}}
			for i, ch := range checks {
				err := ch.fn(c)
				var want error
				switch tt.want[i] {
				case "S":
					want = ErrScope
				case "T":
					want = ErrTriggerNotAllowed
				}
				if (want == nil) != (err == nil) || (want != nil && !errors.Is(err, want)) {
					t.Errorf("scope %s: %s = %v, want %v", tt.scope, ch.name, err, want)
				}
				if want != nil && HTTPStatus(err) != 403 {
					t.Errorf("scope %s: HTTPStatus(%s error) = %d, want 403", tt.scope, ch.name, HTTPStatus(err))
				}
			}
		})
	}
	err := Claims{Scope: ScopeSensor}.CanCreateEvent("core.crontimer")
	if err == nil || !strings.Contains(err.Error(), `"core.crontimer"`) {
		t.Errorf("CanCreateEvent(core.crontimer) = %v, want an error naming the trigger", err)
	}
}

func TestIssueVerifyRoundTrip(t *testing.T) {
	iss := &Issuer{Key: testKey, Now: fixedNow(t0.Add(500 * time.Millisecond))}
	tok, issued, err := iss.Issue(IssueRequest{
		IdentityID: "42", Scope: ScopeSensor, TriggerTypes: []string{"core.intervaltimer", "core.crontimer"},
		TTL: 90 * 24 * time.Hour, Login: "core.timer", TokenType: "sensor",
	})
	if err != nil {
		t.Fatalf("Issue: %v", err)
	}
	v := &Verifier{Key: testKey, Now: fixedNow(t0.Add(time.Hour))}
	got, err := v.Verify(tok)
	if err != nil {
		t.Fatalf("Verify(issued token): %v", err)
	}
	if string(mustJSON(t, got)) != string(mustJSON(t, issued)) {
		t.Errorf("Verify claims = %s, want the issued %s", mustJSON(t, got), mustJSON(t, issued))
	}
	if got.Subject != "42" || got.ID == "" || !got.IssuedAtTime().Equal(t0) || !got.ExpiresAtTime().Equal(t0.Add(90*24*time.Hour)) {
		t.Errorf("claims sub=%q jti=%q iat=%v exp=%v, want sub 42, a jti, iat %v, exp +90d", got.Subject, got.ID, got.IssuedAtTime(), got.ExpiresAtTime(), t0)
	}
	// Attune's spellings on the wire: numeric identity_id, the rest as §5.
	payload, err := base64.RawURLEncoding.DecodeString(strings.Split(tok, ".")[1])
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"identity_id":42`, `"identity_type":"service_account"`, `"scope":"sensor"`,
		`"metadata":{"trigger_types":["core.intervaltimer","core.crontimer"]}`, `"login":"core.timer"`, `"token_type":"sensor"`, `"sub":"42"`} {
		if !strings.Contains(string(payload), want) {
			t.Errorf("payload %s lacks %s", payload, want)
		}
	}
	if _, err := v.Verify(tok); err != nil {
		t.Fatal(err)
	}
	// Reissue keeps identity, scope, metadata and the 90-day lifetime, with a new jti.
	iss.Now = fixedNow(t0.Add(72 * 24 * time.Hour))
	_, next, err := iss.Reissue(got)
	if err != nil {
		t.Fatalf("Reissue: %v", err)
	}
	if next.ID == got.ID || next.IdentityID != "42" || next.Scope != ScopeSensor || len(next.Metadata.TriggerTypes) != 2 ||
		next.ExpiresAtTime().Sub(next.IssuedAtTime()) != 90*24*time.Hour {
		t.Errorf("Reissue = %+v, want same identity/scope/metadata, new jti, 90d lifetime", next)
	}
}

func TestIdentityIDSpellings(t *testing.T) {
	tests := []struct {
		name    string
		raw     any // identity_id value in MapClaims
		want    IdentityID
		wantErr error
	}{
		{"attune number", 42, "42", nil},
		{"string", "sa-7", "sa-7", nil},
		{"numeric string", "42", "42", nil},
		{"null", nil, "", nil},
		{"fraction", 1.5, "", ErrMalformed},
		{"object", map[string]any{"id": 1}, "", ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tok := sign(t, jwt.SigningMethodHS256, jwt.MapClaims{
				"sub": "x", "jti": "j", "iat": t0.Unix(), "exp": t0.Add(time.Hour).Unix(),
				"identity_id": tt.raw, "identity_type": "service_account", "scope": "sensor",
				"metadata": map[string]any{"trigger_types": []string{"core.timer"}}, "login": "core.timer", "token_type": "sensor",
			}, testKey)
			c, err := (&Verifier{Key: testKey, Now: fixedNow(t0)}).Verify(tok)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Errorf("Verify(identity_id %v) error = %v, want %v", tt.raw, err, tt.wantErr)
				}
				return
			}
			if err != nil || c.IdentityID != tt.want || c.Login != "core.timer" || c.TokenType != "sensor" {
				t.Errorf("Verify(identity_id %v) = %q, %q, %q, %v; want %q, core.timer, sensor, nil", tt.raw, c.IdentityID, c.Login, c.TokenType, err, tt.want)
			}
		})
	}
	for id, want := range map[IdentityID]string{"42": "42", "-3": "-3", "007": `"007"`, "sa-7": `"sa-7"`, "99999999999999999999": `"99999999999999999999"`} {
		if got := string(mustJSON(t, id)); got != want {
			t.Errorf("json.Marshal(IdentityID %q) = %s, want %s", id, got, want)
		}
	}
}

func TestIssueRejects(t *testing.T) {
	ok := IssueRequest{Subject: "s", Scope: ScopeAdmin, TTL: time.Hour}
	tests := []struct {
		name    string
		key     []byte
		mutate  func(*IssueRequest)
		wantSub string
	}{
		{"short key", []byte("k"), func(*IssueRequest) {}, "too short"},
		{"no scope", testKey, func(r *IssueRequest) { r.Scope = "" }, "scope"},
		{"unknown scope", testKey, func(r *IssueRequest) { r.Scope = "root" }, "scope"},
		{"zero ttl", testKey, func(r *IssueRequest) { r.TTL = 0 }, "ttl"},
		{"sub-second ttl", testKey, func(r *IssueRequest) { r.TTL = 999 * time.Millisecond }, "ttl"},
		{"ttl beyond 10 years", testKey, func(r *IssueRequest) { r.TTL = MaxTTL + time.Hour }, "ttl"},
		{"no subject", testKey, func(r *IssueRequest) { r.Subject = "" }, "subject"},
		{"sensor without triggers", testKey, func(r *IssueRequest) { r.Scope = ScopeSensor }, "trigger types"},
		{"blank trigger", testKey, func(r *IssueRequest) { r.TriggerTypes = []string{" "} }, "trigger types"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := ok
			tt.mutate(&req)
			_, _, err := (&Issuer{Key: tt.key}).Issue(req)
			if err == nil || !strings.Contains(err.Error(), tt.wantSub) {
				t.Errorf("Issue(%+v) error = %v, want one mentioning %q", req, err, tt.wantSub)
			}
		})
	}
}

func TestBearerToken(t *testing.T) {
	tests := []struct {
		header string
		want   string
		err    error
	}{
		{"", "", ErrMissingToken},
		{"Bearer abc.def.ghi", "abc.def.ghi", nil},
		{"bearer  abc.def.ghi ", "abc.def.ghi", nil},
		{"Bearer ", "", ErrMissingToken},
		{"Basic dXNlcjpwYXNz", "", ErrMalformed},
		{"abc.def.ghi", "", ErrMalformed},
	}
	for _, tt := range tests {
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		if tt.header != "" {
			r.Header.Set("Authorization", tt.header)
		}
		got, err := BearerToken(r)
		if got != tt.want || !errors.Is(err, tt.err) || (tt.err == nil && err != nil) {
			t.Errorf("BearerToken(%q) = %q, %v; want %q, %v", tt.header, got, err, tt.want, tt.err)
		}
	}
}

func TestMask(t *testing.T) {
	tok := sign(t, jwt.SigningMethodHS256, sensorClaims(t0, t0.Add(time.Hour)), testKey)
	m := Mask(tok)
	if strings.Contains(m, tok[4:len(tok)-3]) || !strings.HasPrefix(m, "eyJh") || !strings.Contains(m, "chars") {
		t.Errorf("Mask(token) = %q, want prefix, length and suffix only", m)
	}
	if got := Mask("secret"); got != "…(6 chars)" {
		t.Errorf(`Mask("secret") = %q, want "…(6 chars)"`, got)
	}
}

func TestParseUnverified(t *testing.T) {
	tok := sign(t, jwt.SigningMethodHS256, sensorClaims(t0, t0.Add(time.Hour)), otherKey)
	c, err := ParseUnverified(tok)
	if err != nil || c.Scope != ScopeSensor || !c.ExpiresAtTime().Equal(t0.Add(time.Hour)) {
		t.Errorf("ParseUnverified(foreign token) = %+v, %v; want its claims", c, err)
	}
	if _, err := ParseUnverified("not-a-token"); !errors.Is(err, ErrMalformed) || strings.Contains(err.Error(), "not-a-token") {
		t.Errorf("ParseUnverified(garbage) error = %v, want ErrMalformed without the input", err)
	}
}

func TestKeyFiles(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "key")
	if err := GenerateKeyFile(p); err != nil {
		t.Fatalf("GenerateKeyFile: %v", err)
	}
	if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("key file mode = %v (%v), want 0600", fi.Mode().Perm(), err)
	}
	if err := GenerateKeyFile(p); !errors.Is(err, os.ErrExist) {
		t.Errorf("GenerateKeyFile over an existing file: %v, want ErrExist", err)
	}
	k, err := LoadKey(p, nil)
	if err != nil || len(k) != 64 {
		t.Errorf("LoadKey(generated) = %d bytes, %v; want 64 (hex, newline dropped)", len(k), err)
	}

	write := func(name, content string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	tests := []struct {
		name    string
		path    string
		wantLen int
		wantErr error
	}{
		{"exactly 32 with CRLF", write("crlf", strings.Repeat("x", 32)+"\r\n", 0o600), 32, nil},
		{"31 bytes", write("short", strings.Repeat("x", 31)+"\n", 0o600), 0, ErrShortKey},
		{"keeps inner whitespace", write("spaces", strings.Repeat("x ", 20), 0o600), 40, nil},
		{"missing", filepath.Join(dir, "nope"), 0, os.ErrNotExist},
	}
	for _, tt := range tests {
		k, err := LoadKey(tt.path, nil)
		if len(k) != tt.wantLen || !errors.Is(err, tt.wantErr) || (tt.wantErr == nil && err != nil) {
			t.Errorf("LoadKey(%s) = %d bytes, %v; want %d, %v", tt.name, len(k), err, tt.wantLen, tt.wantErr)
		}
	}
}

func TestRevocationExpired(t *testing.T) {
	r := Revocation{JTI: "j", TokenExp: t0}
	if r.Expired(t0.Add(29*time.Second), DefaultLeeway) || !r.Expired(t0.Add(31*time.Second), DefaultLeeway) {
		t.Errorf("Revocation{TokenExp: t0}.Expired: want false at +29s, true at +31s with 30s leeway")
	}
}
