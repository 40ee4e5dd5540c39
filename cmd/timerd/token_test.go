package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
)

// runTokenCmd runs `timerd token …` in-process with stdin; code is the exit
// status main would use. It builds its own root so it does not depend on
// root.go registering the command.
func runTokenCmd(stdin string, args ...string) (stdout, stderr string, code int, err error) {
	var out, errOut bytes.Buffer
	root := &cobra.Command{Use: "timerd", SilenceUsage: true, SilenceErrors: true}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	root.AddCommand(newTokenCmd())
	root.SetIn(strings.NewReader(stdin))
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetArgs(append([]string{"token"}, args...))
	err = root.ExecuteContext(context.Background())
	if err != nil {
		code = 1
		var ue usageError
		if errors.As(err, &ue) {
			code = 2
		}
	}
	return out.String(), errOut.String(), code, err
}

func TestTokenIssueInspect(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "key")
	if _, _, code, err := runTokenCmd("", "keygen", "--out", key); code != 0 {
		t.Fatalf("token keygen: exit %d, %v", code, err)
	}
	if fi, err := os.Stat(key); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v, %v; want mode 0600", fi, err)
	}
	if _, _, code, err := runTokenCmd("", "keygen", "--out", key); code != 1 || err == nil {
		t.Errorf("token keygen over an existing key: exit %d, want 1", code)
	}

	tok, _, code, err := runTokenCmd("", "issue", "--key-file", key, "--scope", "sensor",
		"--trigger-types", "core.intervaltimer,core.crontimer", "--ttl", "1d12h", "--identity-id", "42", "--login", "core.timer")
	tok = strings.TrimSpace(tok)
	if code != 0 || strings.Count(tok, ".") != 2 {
		t.Fatalf("token issue: %q, exit %d, %v; want a JWT", tok, code, err)
	}

	// With an identity no warning; without one, a warning (the token lives to
	// its ttl), louder for an admin token.
	if _, stderr, _, _ := runTokenCmd("", "issue", "--key-file", key, "--scope", "readonly", "--identity-id", "43"); stderr != "" {
		t.Errorf("token issue --identity-id warned: %s", stderr)
	}
	if _, stderr, code, _ := runTokenCmd("", "issue", "--key-file", key, "--scope", "admin", "--sub", "ops"); code != 0 ||
		!strings.Contains(stderr, "cannot be refreshed") || !strings.Contains(stderr, "rotating the signing key") ||
		!strings.Contains(stderr, "admin token") {
		t.Errorf("token issue of an identity-less admin token: exit %d, stderr %q; want the warning", code, stderr)
	}

	out, _, code, err := runTokenCmd("Bearer "+tok+"\n", "inspect", "--key-file", key)
	if code != 0 {
		t.Fatalf("token inspect --key-file: exit %d, %v; output %s", code, err, out)
	}
	jsonEnd := strings.LastIndex(out, "}\n")
	var claims map[string]any
	if err := json.Unmarshal([]byte(out[:jsonEnd+1]), &claims); err != nil {
		t.Fatalf("inspect output does not start with JSON claims: %v\n%s", err, out)
	}
	for k, want := range map[string]any{"identity_id": 42.0, "sub": "42", "scope": "sensor", "login": "core.timer",
		"token_type": "sensor", "identity_type": "service_account"} {
		if claims[k] != want {
			t.Errorf("inspect claims[%q] = %v, want %v", k, claims[k], want)
		}
	}
	if exp, iat := claims["exp"].(float64), claims["iat"].(float64); time.Duration(exp-iat)*time.Second != 36*time.Hour {
		t.Errorf("exp − iat = %vs, want 36h from --ttl 1d12h", exp-iat)
	}
	if !strings.Contains(out, "time left: 35h") && !strings.Contains(out, "time left: 36h") {
		t.Errorf("inspect output lacks the time left:\n%s", out)
	}
	if !strings.Contains(out, "signature: valid") {
		t.Errorf("inspect --key-file output lacks \"signature: valid\":\n%s", out)
	}

	// Without a key: claims only, nothing verified.
	if out, _, code, _ := runTokenCmd(tok, "inspect"); code != 0 || strings.Contains(out, "signature") {
		t.Errorf("token inspect without a key: exit %d, output %q; want 0 and no signature line", code, out)
	}
	// With another key: exit 1 and the reason, never the token.
	other := filepath.Join(dir, "other")
	if _, _, code, err = runTokenCmd("", "keygen", "--out", other); code != 0 {
		t.Fatalf("keygen --out %s: exit %d: %v", other, code, err)
	}
	_, _, code, err = runTokenCmd(tok, "inspect", "--key-file", other)
	if code != 1 || err == nil || !strings.Contains(err.Error(), "signature") || strings.Contains(err.Error(), tok) {
		t.Errorf("token inspect with the wrong key: exit %d, %v; want 1 and a signature reason", code, err)
	}
}

func TestTokenCmdErrors(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "key")
	if err := os.WriteFile(key, []byte(strings.Repeat("k", 32)), 0o600); err != nil {
		t.Fatal(err)
	}
	short := filepath.Join(dir, "short")
	if err := os.WriteFile(short, []byte("k"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		stdin    string
		args     []string
		wantCode int
		wantErr  string
	}{
		{"issue without key", "", []string{"issue", "--scope", "admin", "--sub", "x"}, 2, "--key-file"},
		{"bad scope", "", []string{"issue", "--key-file", key, "--scope", "root", "--sub", "x"}, 2, "--scope"},
		{"bad ttl", "", []string{"issue", "--key-file", key, "--scope", "admin", "--sub", "x", "--ttl", "ninety"}, 2, "--ttl"},
		{"ttl beyond 10 years", "", []string{"issue", "--key-file", key, "--scope", "admin", "--sub", "x", "--ttl", "3700d"}, 2, "--ttl"},
		{"short key", "", []string{"issue", "--key-file", short, "--scope", "admin", "--sub", "x"}, 2, "too short"},
		{"sensor without triggers", "", []string{"issue", "--key-file", key, "--scope", "sensor", "--sub", "x"}, 2, "trigger types"},
		{"no subject", "", []string{"issue", "--key-file", key, "--scope", "admin"}, 2, "subject"},
		{"inspect garbage", "hello", []string{"inspect"}, 1, "malformed"},
		{"inspect nothing", "", []string{"inspect"}, 1, "missing"},
		{"keygen without out", "", []string{"keygen"}, 2, "--out"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, code, err := runTokenCmd(tt.stdin, tt.args...)
			if code != tt.wantCode || err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("token %v: exit %d, %v; want exit %d and an error mentioning %q", tt.args, code, err, tt.wantCode, tt.wantErr)
			}
		})
	}
}

func TestParseTTL(t *testing.T) {
	tests := []struct {
		in   string
		want time.Duration
	}{
		{"90d", 90 * 24 * time.Hour}, {"1d12h", 36 * time.Hour}, {"36h", 36 * time.Hour}, {"90m", 90 * time.Minute}, {"500ms", 0},
		{"0d", 0}, {"-1h", 0}, {"d", 0}, {"", 0}, {"1d-30h", 0},
	}
	for _, tt := range tests {
		got, err := parseTTL(tt.in)
		if got != tt.want || (tt.want == 0) != (err != nil) {
			t.Errorf("parseTTL(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
		}
	}
}
