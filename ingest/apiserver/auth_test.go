package apiserver

import (
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/golang-jwt/jwt/v5"
	bolt "go.etcd.io/bbolt"

	"github.com/timerd/timerd/auth"
)

var (
	testKey  = []byte("0123456789abcdef0123456789abcdef")
	otherKey = []byte("fedcba9876543210fedcba9876543210")
)

func withKey(c *Config) { c.SigningKey = testKey }

// issue signs a token with testKey (or iss's clock).
func issue(t *testing.T, iss *auth.Issuer, req auth.IssueRequest) (string, auth.Claims) {
	t.Helper()
	if iss == nil {
		iss = &auth.Issuer{Key: testKey}
	}
	if req.TTL == 0 {
		req.TTL = time.Hour
	}
	if req.Subject == "" && req.IdentityID == "" {
		req.Subject = "test-" + string(req.Scope)
	}
	tok, c, err := iss.Issue(req)
	if err != nil {
		t.Fatalf("Issue(%+v) = %v", req, err)
	}
	return tok, c
}

func scopeToken(t *testing.T, sc auth.Scope, triggers ...string) string {
	t.Helper()
	tok, _ := issue(t, nil, auth.IssueRequest{Scope: sc, TriggerTypes: triggers})
	return tok
}

func bearer(tok string) []string { return []string{"Authorization", "Bearer " + tok} }

// call sends a request with tok as bearer ("" for none), checks the status
// and that the answer never echoes the token, and decodes into out.
func (e *testEnv) call(tok string, want int, out any, method, path, body string) []byte {
	e.t.Helper()
	var hdr []string
	if tok != "" {
		hdr = bearer(tok)
	}
	code, b := e.do(method, path, body, hdr...)
	if code != want {
		e.t.Fatalf("%s %s (token %s) = %d %s, want %d", method, path, auth.Mask(tok), code, b, want)
	}
	if tok != "" && strings.Contains(string(b), tok) && !strings.Contains(path, "service-accounts") {
		e.t.Errorf("%s %s: the answer echoes the token: %s", method, path, b)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			e.t.Fatalf("%s %s: decode %s: %v", method, path, b, err)
		}
	}
	return b
}

func TestVerificationFailures(t *testing.T) {
	e := newEnv(t, withKey)
	admin := scopeToken(t, auth.ScopeAdmin)
	e.call(admin, http.StatusCreated, nil, "POST", "/api/v1/rules", `{"ref":"r","trigger_ref":"core.intervaltimer","trigger_params":{"interval":5}}`)

	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	claims := auth.Claims{
		RegisteredClaims: jwt.RegisteredClaims{Subject: "x", ID: "j", IssuedAt: jwt.NewNumericDate(now),
			ExpiresAt: jwt.NewNumericDate(now.Add(time.Hour))},
		Scope: auth.ScopeAdmin,
	}
	sign := func(m jwt.SigningMethod, key any) string {
		tok, err := jwt.NewWithClaims(m, claims).SignedString(key)
		if err != nil {
			t.Fatalf("sign %s: %v", m.Alg(), err)
		}
		return tok
	}
	expired, _ := issue(t, &auth.Issuer{Key: testKey, Now: func() time.Time { return now.Add(-2 * time.Hour) }},
		auth.IssueRequest{Scope: auth.ScopeAdmin})
	noExp := claims
	noExp.ExpiresAt = nil
	noExpTok, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, noExp).SignedString(testKey)

	sensor := scopeToken(t, auth.ScopeSensor, "core.intervaltimer")
	event := func(trigger string) string {
		return fmt.Sprintf(`{"trigger_ref":%q,"trigger_instance_id":"rule_1","payload":{}}`, trigger)
	}
	tests := []struct {
		name         string
		header       string // Authorization
		method, path string
		body         string
		want         int
		wantErr      string // in the JSON error
	}{
		{"no token", "", "GET", "/api/v1/rules", "", 401, "missing bearer token"},
		{"basic auth", "Basic dXNlcjpwYXNz", "GET", "/api/v1/rules", "", 401, "malformed"},
		{"not a jwt", "Bearer not-a-jwt", "GET", "/api/v1/rules", "", 401, "malformed"},
		{"bad signature", "Bearer " + sign(jwt.SigningMethodHS256, otherKey), "GET", "/api/v1/rules", "", 401, "signature"},
		{"alg none", "Bearer " + sign(jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType), "GET", "/api/v1/rules", "", 401, "signature"},
		{"wrong alg HS384", "Bearer " + sign(jwt.SigningMethodHS384, testKey), "GET", "/api/v1/rules", "", 401, "signature"},
		{"wrong alg RS256", "Bearer " + sign(jwt.SigningMethodRS256, rsaKey), "GET", "/api/v1/rules", "", 401, "signature"},
		{"expired", "Bearer " + expired, "GET", "/api/v1/rules", "", 401, "expired"},
		{"no exp", "Bearer " + noExpTok, "GET", "/api/v1/rules", "", 401, "malformed"},
		{"expired on events", "Bearer " + expired, "POST", "/api/v1/events", event("core.intervaltimer"), 401, "expired"},
		{"readonly writes a rule", "Bearer " + scopeToken(t, auth.ScopeReadonly), "POST", "/api/v1/rules/r/disable", "", 403, "scope"},
		{"sensor writes a rule", "Bearer " + sensor, "DELETE", "/api/v1/rules/r", "", 403, "scope"},
		{"sensor reads events", "Bearer " + sensor, "GET", "/api/v1/events", "", 403, "scope"},
		{"webhook reads rules", "Bearer " + scopeToken(t, auth.ScopeWebhook), "GET", "/api/v1/rules", "", 403, "scope"},
		{"user posts an event", "Bearer " + scopeToken(t, auth.ScopeUser), "POST", "/events", event("core.intervaltimer"), 403, "scope"},
		{"action_execution reads rules", "Bearer " + scopeToken(t, auth.ScopeActionExecution), "GET", "/api/v1/rules", "", 403, "scope"},
		{"user manages service accounts", "Bearer " + scopeToken(t, auth.ScopeUser), "GET", "/service-accounts", "", 403, "scope"},
		{"sensor posts another trigger", "Bearer " + sensor, "POST", "/api/v1/events", event("core.crontimer"), 403, `"core.crontimer"`},
		{"sensor posts another trigger, old path", "Bearer " + sensor, "POST", "/events", event("core.webhook"), 403, `"core.webhook"`},

		{"health is open", "", "GET", "/health", "", 200, ""},
		{"sensor posts its trigger", "Bearer " + sensor, "POST", "/api/v1/events", event("core.intervaltimer"), 201, ""},
		{"sensor reads rules", "Bearer " + sensor, "GET", "/api/v1/rules?trigger_ref=core.intervaltimer", "", 200, ""},
		{"webhook posts any trigger", "Bearer " + scopeToken(t, auth.ScopeWebhook), "POST", "/events", event("core.webhook"), 201, ""},
		{"readonly reads events", "Bearer " + scopeToken(t, auth.ScopeReadonly), "GET", "/api/v1/events", "", 200, ""},
		{"user writes a rule", "Bearer " + scopeToken(t, auth.ScopeUser), "POST", "/api/v1/rules/r/enable", "", 200, ""},
		{"admin posts any trigger but a timer", "Bearer " + admin, "POST", "/api/v1/events", event("core.webhook"), 201, ""},
		{"bearer is case-insensitive", "bearer " + admin, "GET", "/api/v1/rules/r", "", 200, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var hdr []string
			if tc.header != "" {
				hdr = []string{"Authorization", tc.header}
			}
			code, b := e.do(tc.method, tc.path, tc.body, hdr...)
			if code != tc.want {
				t.Fatalf("%s %s = %d %s, want %d", tc.method, tc.path, code, b, tc.want)
			}
			if tok, ok := strings.CutPrefix(tc.header, "Bearer "); ok && strings.Contains(string(b), tok) {
				t.Errorf("%s %s: the answer echoes the token: %s", tc.method, tc.path, b)
			}
			if tc.wantErr == "" {
				return
			}
			var got apiError
			if err := json.Unmarshal(b, &got); err != nil || !strings.Contains(got.Error, tc.wantErr) {
				t.Errorf("%s %s: error %q (decode err %v), want it to contain %q", tc.method, tc.path, got.Error, err, tc.wantErr)
			}
		})
	}
	// The 401s say how to authenticate.
	req, _ := http.NewRequest(http.MethodGet, e.ts.URL+"/api/v1/rules", nil)
	resp, err := e.ts.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if got := resp.Header.Get("WWW-Authenticate"); !strings.HasPrefix(got, "Bearer") {
		t.Errorf("401 WWW-Authenticate = %q, want a Bearer challenge", got)
	}
}

type createdAccount struct {
	IdentityID auth.IdentityID `json:"identity_id"`
	Name       string          `json:"name"`
	Scope      auth.Scope      `json:"scope"`
	Token      string          `json:"token"`
	ExpiresAt  time.Time       `json:"expires_at"`
	Metadata   struct {
		TriggerTypes []string `json:"trigger_types"`
	} `json:"metadata"`
}

func TestServiceAccounts(t *testing.T) {
	e := newEnv(t, withKey)
	admin := scopeToken(t, auth.ScopeAdmin)

	var sa createdAccount
	before := time.Now().Truncate(time.Second)
	e.call(admin, http.StatusCreated, &sa, "POST", "/service-accounts",
		`{"name":"core.timer","description":"timerd","scope":"sensor","ttl_hours":2,"metadata":{"trigger_types":["core.intervaltimer","core.crontimer"]}}`)
	if sa.IdentityID == "" || sa.Name != "core.timer" || sa.Scope != auth.ScopeSensor || sa.Token == "" {
		t.Fatalf("POST /service-accounts = %+v, want identity, name core.timer, scope sensor and a token", sa)
	}
	if d := sa.ExpiresAt.Sub(before); d < 2*time.Hour || d > 2*time.Hour+5*time.Second {
		t.Errorf("expires_at %v is %v after the request, want 2h", sa.ExpiresAt, d)
	}
	c, err := auth.ParseUnverified(sa.Token)
	if err != nil {
		t.Fatal(err)
	}
	if c.IdentityID != sa.IdentityID || c.Scope != auth.ScopeSensor || c.Login != "core.timer" || c.TokenType != "sensor" ||
		strings.Join(c.Metadata.TriggerTypes, ",") != "core.intervaltimer,core.crontimer" || c.ID == "" {
		t.Errorf("claims of the account's token = %+v, want its identity, scope, login, trigger types and a jti", c)
	}
	var other createdAccount
	e.call(admin, http.StatusCreated, &other, "POST", "/api/v1/service-accounts", `{"name":"ops","scope":"readonly","ttl_days":1}`)

	// Listed under both paths, never with a token.
	for _, path := range []string{"/service-accounts", "/api/v1/service-accounts"} {
		var list struct {
			Items []createdAccount `json:"items"`
		}
		raw := e.call(admin, http.StatusOK, &list, "GET", path, "")
		if len(list.Items) != 2 || list.Items[0].Name != "core.timer" || list.Items[1].Name != "ops" ||
			list.Items[0].Metadata.TriggerTypes[1] != "core.crontimer" {
			t.Errorf("GET %s = %s, want core.timer and ops", path, raw)
		}
		if strings.Contains(string(raw), sa.Token) || strings.Contains(string(raw), other.Token) || strings.Contains(string(raw), `"token"`) {
			t.Errorf("GET %s lists a token: %s", path, raw)
		}
	}

	// The account's token works, and so does a refreshed one.
	ev := `{"trigger_ref":"core.intervaltimer","trigger_instance_id":"rule_1","payload":{}}`
	e.call(sa.Token, http.StatusCreated, nil, "POST", "/api/v1/events", ev)
	var ref struct{ Token string }
	e.call(sa.Token, http.StatusOK, &ref, "POST", "/auth/refresh", `{}`)
	e.call(ref.Token, http.StatusCreated, nil, "POST", "/api/v1/events", ev)
	e.call(other.Token, http.StatusOK, nil, "GET", "/api/v1/rules", "")

	var del struct {
		Data struct {
			Reason        string `json:"reason"`
			TokensRevoked int    `json:"tokens_revoked"`
		} `json:"data"`
	}
	e.call(admin, http.StatusOK, &del, "DELETE", "/service-accounts/"+string(sa.IdentityID), `{"reason":"rotated"}`)
	if del.Data.Reason != "rotated" || del.Data.TokensRevoked != 2 {
		t.Errorf("DELETE = %+v, want reason rotated and 2 tokens revoked", del.Data)
	}
	for _, tok := range []string{sa.Token, ref.Token} {
		b := e.call(tok, http.StatusUnauthorized, nil, "POST", "/api/v1/events", ev)
		if !strings.Contains(string(b), "revoked") {
			t.Errorf("POST event with a revoked token: %s, want an error saying revoked", b)
		}
		e.call(tok, http.StatusUnauthorized, nil, "POST", "/auth/refresh", `{}`)
		e.call(tok, http.StatusUnauthorized, nil, "POST", "/auth/internal/sensor-token", `{}`)
	}
	e.call(other.Token, http.StatusOK, nil, "GET", "/api/v1/rules", "") // another identity is untouched
	e.call(admin, http.StatusNotFound, nil, "DELETE", "/api/v1/service-accounts/"+string(sa.IdentityID), "")

	// Revocations survive a restart; the deleted account is gone.
	e.restart()
	e.call(ref.Token, http.StatusUnauthorized, nil, "GET", "/api/v1/rules", "")
	var list struct {
		Items []createdAccount `json:"items"`
	}
	e.call(admin, http.StatusOK, &list, "GET", "/service-accounts", "")
	if len(list.Items) != 1 || list.Items[0].Name != "ops" {
		t.Errorf("accounts after delete and restart = %+v, want only ops", list.Items)
	}
	// A name is free again once its account is deleted; ids are not reused.
	var again createdAccount
	e.call(admin, http.StatusCreated, &again, "POST", "/service-accounts", `{"name":"core.timer","scope":"sensor","metadata":{"trigger_types":["core.timer"]}}`)
	if again.IdentityID == sa.IdentityID {
		t.Errorf("a new account reused identity_id %s", sa.IdentityID)
	}
	if d := time.Until(again.ExpiresAt); d < DefaultServiceAccountTTL-time.Minute {
		t.Errorf("default ttl: token expires in %v, want %v", d, DefaultServiceAccountTTL)
	}
	e.call(again.Token, http.StatusCreated, nil, "POST", "/events", `{"trigger_ref":"core.timer"}`)
}

func TestServiceAccountCreateRejects(t *testing.T) {
	e := newEnv(t, withKey)
	admin := scopeToken(t, auth.ScopeAdmin)
	e.call(admin, http.StatusCreated, nil, "POST", "/service-accounts", `{"name":"taken","scope":"admin"}`)
	tests := []struct {
		name, body string
		want       int
		wantErr    string
	}{
		{"no name", `{"scope":"admin"}`, 400, "name"},
		{"empty name", `{"name":"","scope":"admin"}`, 400, "name"},
		{"control char in name", `{"name":"a\nb","scope":"admin"}`, 400, "name"},
		{"no scope", `{"name":"a"}`, 400, "scope"},
		{"bad scope", `{"name":"a","scope":"root"}`, 400, "scope"},
		{"both ttls", `{"name":"a","scope":"admin","ttl_days":1,"ttl_hours":1}`, 400, "ttl"},
		{"zero ttl", `{"name":"a","scope":"admin","ttl_days":0}`, 400, "ttl_days"},
		{"huge ttl", `{"name":"a","scope":"admin","ttl_days":100000}`, 400, "ttl_days"},
		{"sensor without triggers", `{"name":"a","scope":"sensor"}`, 400, "trigger_types"},
		{"triggers not strings", `{"name":"a","scope":"sensor","metadata":{"trigger_types":[1]}}`, 400, "trigger_types"},
		{"metadata not an object", `{"name":"a","scope":"sensor","metadata":[]}`, 400, "metadata"},
		{"duplicate name", `{"name":"taken","scope":"admin"}`, 409, "taken"},
		{"not json", `name=a`, 400, "JSON"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var got apiError
			e.call(admin, tc.want, &got, "POST", "/service-accounts", tc.body)
			if !strings.Contains(got.Error, tc.wantErr) {
				t.Errorf("POST /service-accounts %s: error %q, want it to mention %q", tc.body, got.Error, tc.wantErr)
			}
		})
	}
	for _, id := range []string{"0", "x", "01", "999", "-1"} {
		e.call(admin, http.StatusNotFound, nil, "DELETE", "/service-accounts/"+id, "")
	}
	e.call(admin, http.StatusBadRequest, nil, "DELETE", "/service-accounts/1", `{"reason":5}`)
}

func TestRefresh(t *testing.T) {
	e := newEnv(t, withKey)
	tok, old := issue(t, nil, auth.IssueRequest{IdentityID: "42", Subject: "sensor-7", Scope: auth.ScopeSensor,
		TriggerTypes: []string{"core.intervaltimer", "core.timer"}, TTL: 3 * time.Hour, Login: "core.timer", TokenType: "sensor"})

	var got struct {
		Token     string    `json:"token"`
		ExpiresAt time.Time `json:"expires_at"`
	}
	e.call(tok, http.StatusOK, &got, "POST", "/auth/refresh", `{}`)
	c, err := auth.ParseUnverified(got.Token)
	if err != nil {
		t.Fatal(err)
	}
	if c.ID == old.ID || c.IdentityID != "42" || c.Subject != "sensor-7" || c.Scope != auth.ScopeSensor ||
		c.Login != "core.timer" || c.TokenType != "sensor" || strings.Join(c.Metadata.TriggerTypes, ",") != "core.intervaltimer,core.timer" {
		t.Errorf("refreshed claims = %+v, want those of %+v with a new jti", c, old)
	}
	if life := c.ExpiresAtTime().Sub(c.IssuedAtTime()); life != 3*time.Hour {
		t.Errorf("refreshed lifetime = %v, want 3h", life)
	}
	if !got.ExpiresAt.Equal(c.ExpiresAtTime()) {
		t.Errorf("expires_at = %v, want the token's exp %v", got.ExpiresAt, c.ExpiresAtTime())
	}
	// The old token stays valid; the new one refreshes too.
	e.call(tok, http.StatusOK, nil, "GET", "/api/v1/rules", "")
	e.call(got.Token, http.StatusOK, nil, "POST", "/auth/refresh", "")

	var alias struct {
		Data struct {
			Token        string          `json:"token"`
			ExpiresAt    time.Time       `json:"expires_at"`
			IdentityID   json.RawMessage `json:"identity_id"`
			SensorRef    string          `json:"sensor_ref"`
			TriggerTypes []string        `json:"trigger_types"`
		} `json:"data"`
	}
	e.call(tok, http.StatusOK, &alias, "POST", "/auth/internal/sensor-token", `{}`)
	if alias.Data.Token == "" || alias.Data.ExpiresAt.IsZero() || string(alias.Data.IdentityID) != "42" ||
		alias.Data.SensorRef != "core.timer" || len(alias.Data.TriggerTypes) != 2 {
		t.Errorf("POST /auth/internal/sensor-token = %+v, want token, expires_at, identity_id 42, sensor_ref core.timer, 2 trigger types", alias.Data)
	}

	expired, _ := issue(t, &auth.Issuer{Key: testKey, Now: func() time.Time { return time.Now().Add(-time.Hour) }},
		auth.IssueRequest{IdentityID: "42", Scope: auth.ScopeSensor, TriggerTypes: []string{"core.timer"}, TTL: time.Minute})
	e.call(expired, http.StatusUnauthorized, nil, "POST", "/auth/refresh", `{}`)
	e.call(scopeToken(t, auth.ScopeActionExecution), http.StatusForbidden, nil, "POST", "/auth/refresh", `{}`)
	e.call("", http.StatusUnauthorized, nil, "POST", "/auth/refresh", `{}`)
	readonly, _ := issue(t, nil, auth.IssueRequest{IdentityID: "43", Scope: auth.ScopeReadonly})
	e.call(readonly, http.StatusOK, nil, "POST", "/auth/refresh", `{}`)
	// A token without an identity lives to its exp and no further.
	for _, sc := range []auth.Scope{auth.ScopeAdmin, auth.ScopeReadonly, auth.ScopeSensor} {
		b := e.call(scopeToken(t, sc, "core.timer"), http.StatusForbidden, nil, "POST", "/auth/refresh", `{}`)
		if !strings.Contains(string(b), "no identity_id") {
			t.Errorf("refresh of an identity-less %s token: %s, want it to say why", sc, b)
		}
	}
}

// Without a key the server is open and the token endpoints say why they
// cannot work.
func TestNoKeyIsOpen(t *testing.T) {
	e := newEnv(t)
	e.call("", http.StatusOK, nil, "GET", "/api/v1/rules", "")
	e.call("", http.StatusCreated, nil, "POST", "/events", `{"trigger_ref":"x"}`)
	for _, p := range []struct{ method, path string }{
		{"POST", "/auth/refresh"}, {"POST", "/auth/internal/sensor-token"}, {"GET", "/service-accounts"},
		{"POST", "/api/v1/service-accounts"}, {"DELETE", "/service-accounts/1"},
	} {
		var got apiError
		e.call("", http.StatusNotImplemented, &got, p.method, p.path, `{}`)
		if !strings.Contains(got.Error, "signing key") {
			t.Errorf("%s %s without a key: error %q, want it to mention the signing key", p.method, p.path, got.Error)
		}
	}
	if _, err := New(Config{DataDir: t.TempDir(), SigningKey: []byte("short")}); err == nil || !strings.Contains(err.Error(), "SigningKey") {
		t.Errorf("New(SigningKey 5 bytes) = %v, want an error naming SigningKey", err)
	}
	if _, err := New(Config{DataDir: t.TempDir(), RevocationCleanupInterval: -time.Second}); err == nil ||
		!strings.Contains(err.Error(), "RevocationCleanupInterval") {
		t.Errorf("New(RevocationCleanupInterval -1s) = %v, want an error naming it", err)
	}
}

// clock is a settable time source.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) set(t time.Time) {
	c.mu.Lock()
	c.now = t
	c.mu.Unlock()
}

func revocationCount(t *testing.T, s *Server) int {
	t.Helper()
	n := 0
	if err := s.db.View(func(tx *bolt.Tx) error { n = tx.Bucket(bucketRevoked).Stats().KeyN; return nil }); err != nil {
		t.Fatal(err)
	}
	if mem := s.revs.len(); mem != n {
		t.Errorf("revocations: %d in bbolt, %d in memory", n, mem)
	}
	return n
}

// The cleanup deletes exactly the records whose tokens have all expired
// (plus the verifier's leeway), and a revoked token stays refused until then.
func TestRevocationCleanup(t *testing.T) {
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	clk := &clock{now: t0}
	e := newEnv(t, withKey, func(c *Config) { c.Now = clk.Now })
	admin, _ := issue(t, &auth.Issuer{Key: testKey, Now: clk.Now}, auth.IssueRequest{Scope: auth.ScopeAdmin, TTL: 24 * time.Hour})

	var short, long createdAccount
	e.call(admin, http.StatusCreated, &short, "POST", "/service-accounts", `{"name":"short","scope":"readonly","ttl_hours":1}`)
	e.call(admin, http.StatusCreated, &long, "POST", "/service-accounts", `{"name":"long","scope":"readonly","ttl_hours":3}`)
	// A refresh half an hour later pushes the identity's latest exp to 1h30.
	clk.set(t0.Add(30 * time.Minute))
	var ref struct{ Token string }
	e.call(short.Token, http.StatusOK, &ref, "POST", "/auth/refresh", `{}`)
	e.call(admin, http.StatusOK, nil, "DELETE", "/service-accounts/"+string(short.IdentityID), "")
	e.call(admin, http.StatusOK, nil, "DELETE", "/service-accounts/"+string(long.IdentityID), "")
	// short: identity (exp 1h30) + 2 tokens (1h, 1h30); long: identity + 1 token (3h).
	if n := revocationCount(t, e.srv); n != 5 {
		t.Fatalf("revocations after two deletes = %d, want 5", n)
	}

	leeway := auth.DefaultLeeway
	steps := []struct {
		at       time.Duration // after t0
		deleted  int
		left     int
		refused  []string // still 401 (revoked or expired)
		revokedK string   // a token that must still be refused as revoked, not expired
	}{
		{at: time.Hour + leeway, deleted: 0, left: 5, revokedK: ref.Token},                     // at exp+leeway: not yet
		{at: time.Hour + leeway + time.Second, deleted: 1, left: 4, revokedK: ref.Token},       // short's first token
		{at: 90*time.Minute + leeway + time.Second, deleted: 2, left: 2, revokedK: long.Token}, // short's identity and refresh
		{at: 3*time.Hour + leeway + time.Second, deleted: 2, left: 0},                          // long's
	}
	for _, st := range steps {
		now := t0.Add(st.at)
		clk.set(now)
		got, err := e.srv.cleanupRevocations(now)
		if err != nil || got != st.deleted {
			t.Fatalf("cleanupRevocations(t0+%v) = %d, %v, want %d deleted", st.at, got, err, st.deleted)
		}
		if n := revocationCount(t, e.srv); n != st.left {
			t.Errorf("after cleanup at t0+%v: %d revocations, want %d", st.at, n, st.left)
		}
		if st.revokedK != "" {
			b := e.call(st.revokedK, http.StatusUnauthorized, nil, "GET", "/api/v1/rules", "")
			if !strings.Contains(string(b), "revoked") {
				t.Errorf("at t0+%v: %s, want the token refused as revoked", st.at, b)
			}
		}
	}
}

// The cleanup job runs every RevocationCleanupInterval (fake time in a
// bubble) and deletes only what has expired.
func TestRevocationCleanupJob(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv, err := New(Config{DataDir: t.TempDir(), SigningKey: testKey, RevocationCleanupInterval: 10 * time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		defer srv.Close()
		now := time.Now()
		recs := []auth.Revocation{
			{JTI: "a", IdentityID: "1", TokenExp: now.Add(5 * time.Minute), RevokedAt: now},
			{IdentityID: "1", TokenExp: now.Add(15 * time.Minute), RevokedAt: now},
			{JTI: "b", IdentityID: "2", TokenExp: now.Add(time.Hour), RevokedAt: now},
		}
		if err := srv.db.Update(func(tx *bolt.Tx) error { return putRevocations(tx, recs) }); err != nil {
			t.Fatal(err)
		}
		for _, r := range recs {
			srv.revs.add(r)
		}
		want := []struct {
			at   time.Duration
			left int
		}{
			{10*time.Minute - time.Second, 3}, // before the first run
			{10 * time.Minute, 2},             // a (exp 5m) gone
			{20 * time.Minute, 1},             // identity 1 (exp 15m) gone
			{50 * time.Minute, 1},             // b expires at 60m
			{70 * time.Minute, 0},
		}
		for _, w := range want {
			time.Sleep(time.Until(now.Add(w.at)))
			synctest.Wait()
			if n := revocationCount(t, srv); n != w.left {
				t.Errorf("at +%v: %d revocations, want %d", w.at, n, w.left)
			}
		}
		revoked, _ := srv.revs.revoked("b", "")
		if revoked {
			t.Error("jti b still revoked in memory after its record was deleted")
		}
	})
}

// Timer event keys are predictable (rule_id:slot, `timerd schedule next`
// prints them). An attacker with a webhook, admin or another trigger's sensor
// token posts a future slot's key first: refused, so the real fire is stored
// when it comes. A second node's sensor token repeating a fire is answered as
// the duplicate it is, with the original's id and nothing else.
func TestTimerKeysCannotBeSquatted(t *testing.T) {
	e := newEnv(t, withKey)
	const key = "1:1772352000000000000"
	fire := `{"trigger_ref":"core.intervaltimer","trigger_instance_id":"rule_1","payload":{"type":"interval"}}`
	squatters := map[string]string{
		"webhook":              scopeToken(t, auth.ScopeWebhook),
		"admin":                scopeToken(t, auth.ScopeAdmin),
		"sensor of crontimers": scopeToken(t, auth.ScopeSensor, "core.crontimer"),
	}
	for who, tok := range squatters {
		code, b := e.do("POST", "/api/v1/events", `{"trigger_ref":"core.intervaltimer","trigger_instance_id":"rule_1","payload":{"forged":true}}`,
			append(bearer(tok), "Idempotency-Key", key)...)
		if code != http.StatusForbidden {
			t.Errorf("%s posted a timer event: %d %s, want 403", who, code, b)
		}
	}
	node1 := scopeToken(t, auth.ScopeSensor, "core.intervaltimer")
	node2, _ := issue(t, nil, auth.IssueRequest{Scope: auth.ScopeSensor, Subject: "node-2", TriggerTypes: []string{"core.intervaltimer"}})
	var first eventData
	e.must(http.StatusCreated, &first, "POST", "/api/v1/events", fire, append(bearer(node1), "Idempotency-Key", key)...)
	if strings.Contains(string(first.Data.Payload), "forged") {
		t.Fatalf("the stored fire is the squatter's: %s", first.Data.Payload)
	}
	code, b := e.do("POST", "/api/v1/events", fire, append(bearer(node2), "Idempotency-Key", key)...)
	if want := fmt.Sprintf(`{"data":{"id":%d}}`, first.Data.ID); code != http.StatusOK || strings.TrimSpace(string(b)) != want {
		t.Errorf("node 2's repeat = %d %s, want 200 %s", code, b, want)
	}
	// The same key for another rule is that rule's event, not a repeat.
	e.must(http.StatusCreated, nil, "POST", "/api/v1/events",
		`{"trigger_ref":"core.intervaltimer","trigger_instance_id":"rule_2"}`, append(bearer(node1), "Idempotency-Key", key)...)
}

// A file written before keys were scoped is re-indexed at open: a repeat of
// an event stored then is still a repeat.
func TestIdempotencyIndexMigrated(t *testing.T) {
	e := newEnv(t)
	var first eventData
	body := `{"trigger_ref":"core.crontimer","trigger_instance_id":"rule_3"}`
	e.must(http.StatusCreated, &first, "POST", "/api/v1/events", body, "Idempotency-Key", "3:42")
	e.stop()
	db, err := bolt.Open(filepath.Join(e.dir, "api.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		if err := tx.DeleteBucket(bucketEventIdem); err != nil {
			return err
		}
		if _, err := tx.CreateBucket(bucketEventIdem); err != nil {
			return err
		}
		old, err := tx.CreateBucket(bucketEventIdemV1)
		if err != nil {
			return err
		}
		return old.Put([]byte("3:42"), idKey(first.Data.ID))
	}); err != nil {
		t.Fatal(err)
	}
	db.Close()
	e.start(e.opt...)
	code, b := e.do("POST", "/api/v1/events", body, "Idempotency-Key", "3:42")
	if want := fmt.Sprintf(`{"data":{"id":%d}}`, first.Data.ID); code != http.StatusOK || strings.TrimSpace(string(b)) != want {
		t.Errorf("repeat after the migration = %d %s, want 200 %s", code, b, want)
	}
}

// One token can be revoked: by itself, or by an admin by its jti; an admin
// also revokes every token of an identity. Nobody else revokes another's
// token. Revocations outlive a restart.
func TestRevokeOneToken(t *testing.T) {
	e := newEnv(t, withKey)
	admin := scopeToken(t, auth.ScopeAdmin)
	self := scopeToken(t, auth.ScopeUser)
	e.call(self, http.StatusOK, nil, "GET", "/api/v1/rules", "")
	e.call(self, http.StatusOK, nil, "POST", "/auth/revoke", `{"reason":"leaving"}`)
	e.call(self, http.StatusUnauthorized, nil, "GET", "/api/v1/rules", "")

	c1, c1Claims := issue(t, nil, auth.IssueRequest{IdentityID: "77", Scope: auth.ScopeReadonly})
	c2, _ := issue(t, nil, auth.IssueRequest{IdentityID: "77", Scope: auth.ScopeReadonly})
	other := scopeToken(t, auth.ScopeUser)
	e.call(other, http.StatusForbidden, nil, "POST", "/auth/revoke", `{"jti":"`+c1Claims.ID+`"}`)
	e.call(other, http.StatusForbidden, nil, "POST", "/auth/revoke", `{"identity_id":"77"}`)
	e.call(c1, http.StatusOK, nil, "GET", "/api/v1/rules", "")
	for _, bad := range []string{`{"jti":"a","identity_id":"77"}`, `{"jti":5}`, `[]`, `{"reason":"` + strings.Repeat("r", 2000) + `"}`} {
		e.call(admin, http.StatusBadRequest, nil, "POST", "/auth/revoke", bad)
	}
	e.call(admin, http.StatusOK, nil, "POST", "/auth/revoke", `{"jti":"`+c1Claims.ID+`"}`)
	e.call(c1, http.StatusUnauthorized, nil, "GET", "/api/v1/rules", "")
	e.call(c2, http.StatusOK, nil, "GET", "/api/v1/rules", "") // the same identity, another token
	e.call(admin, http.StatusOK, nil, "POST", "/auth/revoke", `{"identity_id":"77"}`)
	e.call(c2, http.StatusUnauthorized, nil, "GET", "/api/v1/rules", "")

	e.restart()
	for _, tok := range []string{self, c1, c2} {
		e.call(tok, http.StatusUnauthorized, nil, "GET", "/api/v1/rules", "")
	}
	e.call(other, http.StatusOK, nil, "GET", "/api/v1/rules", "")
}

// A service account created with expires_at gets no token, first or
// refreshed, that lives past it; at it, a refresh is refused.
func TestServiceAccountExpiryBoundsRefresh(t *testing.T) {
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	clk := &clock{now: t0}
	e := newEnv(t, withKey, func(c *Config) { c.Now = clk.Now })
	admin, _ := issue(t, &auth.Issuer{Key: testKey, Now: clk.Now}, auth.IssueRequest{Scope: auth.ScopeAdmin, TTL: 24 * time.Hour})
	until := t0.Add(3 * time.Hour)
	var acct createdAccount
	e.call(admin, http.StatusCreated, &acct, "POST", "/service-accounts",
		`{"name":"temp","scope":"readonly","ttl_hours":2,"identity_expires_at":"`+until.Format(time.RFC3339)+`"}`)
	exp := func(tok string) time.Time {
		c, err := auth.ParseUnverified(tok)
		if err != nil {
			t.Fatal(err)
		}
		return c.ExpiresAtTime()
	}
	if got := exp(acct.Token); !got.Equal(t0.Add(2 * time.Hour)) {
		t.Errorf("first token expires %v, want its 2 h lifetime", got)
	}
	clk.set(t0.Add(90 * time.Minute))
	var ref struct{ Token string }
	e.call(acct.Token, http.StatusOK, &ref, "POST", "/auth/refresh", `{}`)
	if got := exp(ref.Token); !got.Equal(until) {
		t.Errorf("refreshed token expires %v, want the identity's expiry %v", got, until)
	}
	clk.set(until.Add(-time.Second / 2))
	b := e.call(ref.Token, http.StatusUnauthorized, nil, "POST", "/auth/refresh", `{}`)
	if !strings.Contains(string(b), "identity expired") {
		t.Errorf("refresh at the identity's expiry: %s, want it to say the identity expired", b)
	}
	clk.set(t0.Add(4 * time.Hour))
	e.call(admin, http.StatusBadRequest, nil, "POST", "/service-accounts",
		`{"name":"late","scope":"readonly","identity_expires_at":"`+until.Format(time.RFC3339)+`"}`)
	e.call(admin, http.StatusBadRequest, nil, "POST", "/service-accounts", `{"name":"bad","scope":"readonly","identity_expires_at":"tomorrow"}`)
}

// A token verified once is taken from the cache of verified tokens until
// its expiry only: within the leeway after it the full check still lets it
// in, past the leeway it is refused; and a cached token that is revoked is
// refused at once.
func TestVerifiedTokenCacheKeepsExpiryAndRevocation(t *testing.T) {
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	clk := &clock{now: t0}
	e := newEnv(t, withKey, func(c *Config) { c.Now = clk.Now })
	iss := &auth.Issuer{Key: testKey, Now: clk.Now}
	tok, _ := issue(t, iss, auth.IssueRequest{IdentityID: "5", Scope: auth.ScopeReadonly, TTL: time.Hour})
	for range 3 { // cached from the first
		e.call(tok, http.StatusOK, nil, "GET", "/api/v1/rules", "")
	}
	clk.set(t0.Add(time.Hour + auth.DefaultLeeway - time.Second))
	e.call(tok, http.StatusOK, nil, "GET", "/api/v1/rules", "")
	clk.set(t0.Add(time.Hour + auth.DefaultLeeway + time.Second))
	if b := e.call(tok, http.StatusUnauthorized, nil, "GET", "/api/v1/rules", ""); !strings.Contains(string(b), "expired") {
		t.Errorf("an expired token that was cached: %s, want it refused as expired", b)
	}

	clk.set(t0)
	self, _ := issue(t, iss, auth.IssueRequest{IdentityID: "6", Scope: auth.ScopeUser, TTL: time.Hour})
	e.call(self, http.StatusOK, nil, "GET", "/api/v1/rules", "")
	e.call(self, http.StatusOK, nil, "POST", "/auth/revoke", `{}`)
	if b := e.call(self, http.StatusUnauthorized, nil, "GET", "/api/v1/rules", ""); !strings.Contains(string(b), "revoked") {
		t.Errorf("a revoked token that was cached: %s, want it refused as revoked", b)
	}
}
