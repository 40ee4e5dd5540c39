package main

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/timerd/timerd/auth"
)

func TestDevCredentials(t *testing.T) {
	dir := t.TempDir()
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))

	c, err := devCredentials(dir, log)
	if err != nil {
		t.Fatalf("devCredentials(new dir) = %v", err)
	}
	if !c.keyCreated || !c.adminNew {
		t.Errorf("devCredentials(new dir): keyCreated %v adminNew %v, want both", c.keyCreated, c.adminNew)
	}
	for _, p := range []string{c.keyPath, c.adminPath} {
		fi, err := os.Stat(p)
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("stat %s = %v, %v; want mode 0600", p, fi.Mode(), err)
		}
	}
	if want := filepath.Join(dir, "admin.token"); c.adminPath != want {
		t.Errorf("admin token path = %q, want %q", c.adminPath, want)
	}
	readToken := func() string {
		b, err := os.ReadFile(c.adminPath)
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(b))
	}
	tok := readToken()
	claims, err := (&auth.Verifier{Key: c.key}).Verify(tok)
	if err != nil || claims.Scope != auth.ScopeAdmin {
		t.Fatalf("admin.token: Verify = %+v, %v; want a valid admin token", claims, err)
	}

	// A restart keeps both.
	c2, err := devCredentials(dir, log)
	if err != nil || c2.keyCreated || c2.adminNew || !bytes.Equal(c2.key, c.key) || readToken() != tok {
		t.Fatalf("devCredentials(again) = %+v, %v; want the same key and token kept", c2, err)
	}

	// Expired, foreign, wrong-scope or garbage tokens are replaced.
	past := func() time.Time { return time.Now().Add(-devAdminTTL - time.Hour) }
	expired, _, _ := (&auth.Issuer{Key: c.key, Now: past}).Issue(auth.IssueRequest{Subject: "a", Scope: auth.ScopeAdmin, TTL: devAdminTTL})
	foreign, _, _ := (&auth.Issuer{Key: []byte("fedcba9876543210fedcba9876543210")}).Issue(auth.IssueRequest{Subject: "a", Scope: auth.ScopeAdmin, TTL: time.Hour * 24})
	readonly, _, _ := (&auth.Issuer{Key: c.key}).Issue(auth.IssueRequest{Subject: "a", Scope: auth.ScopeReadonly, TTL: time.Hour * 24})
	for name, old := range map[string]string{"expired": expired, "foreign key": foreign, "readonly": readonly, "garbage": "garbage-that-is-no-jwt"} {
		if err := os.WriteFile(c.adminPath, []byte(old+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		c3, err := devCredentials(dir, log)
		if err != nil || !c3.adminNew {
			t.Fatalf("devCredentials with a %s admin token = %+v, %v; want a new token", name, c3, err)
		}
		got := readToken()
		if got == old {
			t.Errorf("%s admin token kept, want it replaced", name)
		}
		if _, err := (&auth.Verifier{Key: c.key}).Verify(got); err != nil {
			t.Errorf("replacement of the %s admin token does not verify: %v", name, err)
		}
		if fi, _ := os.Stat(c.adminPath); fi.Mode().Perm() != 0o600 {
			t.Errorf("replaced admin.token mode = %v, want 0600", fi.Mode().Perm())
		}
		if strings.Contains(logs.String(), old) || strings.Contains(logs.String(), got) {
			t.Errorf("log output shows a token: %s", logs.String())
		}
	}
}

func TestAPIRequiresKeyFile(t *testing.T) {
	t.Setenv("TIMERD_API_KEY_FILE", "")
	_, err, code := run("api", "--data-dir", t.TempDir())
	if code != 2 || err == nil || !strings.Contains(err.Error(), "--key-file") || !strings.Contains(err.Error(), "token keygen") {
		t.Errorf("timerd api without --key-file = exit %d, %v; want exit 2 naming --key-file and token keygen", code, err)
	}
	short := filepath.Join(t.TempDir(), "key")
	if err := os.WriteFile(short, []byte("short\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err, code = run("api", "--data-dir", t.TempDir(), "--key-file", short)
	if code != 2 || err == nil || !strings.Contains(err.Error(), "too short") {
		t.Errorf("timerd api --key-file (5 bytes) = exit %d, %v; want exit 2 saying the key is too short", code, err)
	}
}

func TestShellQuote(t *testing.T) {
	for in, want := range map[string]string{
		"/tmp/timerd-dev-1/admin.token": "/tmp/timerd-dev-1/admin.token",
		"/tmp/my dir/admin.token":       "'/tmp/my dir/admin.token'",
		"/tmp/it's/admin.token":         `'/tmp/it'\''s/admin.token'`,
	} {
		if got := shellQuote(in); got != want {
			t.Errorf("shellQuote(%q) = %q, want %q", in, got, want)
		}
	}
}
