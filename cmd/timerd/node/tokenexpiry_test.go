package node

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/timerd/timerd/auth"
)

// CheckTokenExpiry lets an expired configured token through only when the
// token kept in the data dir at the last refresh is valid; its error says
// when the token expired and where it looked, and never holds a token.
func TestCheckTokenExpiry(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	issue := func(at time.Time, ttl time.Duration) string {
		t.Helper()
		tok, _, err := (&auth.Issuer{Key: testKey, Now: func() time.Time { return at }}).Issue(auth.IssueRequest{
			Subject: "node", Scope: auth.ScopeSensor, TriggerTypes: []string{"core.timer"}, TTL: ttl})
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	valid := issue(now.Add(-time.Minute), time.Hour)
	expired := issue(now.Add(-2*time.Hour), time.Hour) // expired at now-1h
	alsoExpired := issue(now.Add(-90*time.Minute), time.Hour)
	tests := []struct {
		name    string
		token   string
		kept    *string // DATA_DIR/api.token; nil: none
		wantErr bool
	}{
		{"valid, nothing kept", valid, nil, false},
		{"valid, an expired one kept", valid, &alsoExpired, false},
		{"not a JWT: not this check's", "not-a-jwt", nil, false},
		{"expired, nothing kept", expired, nil, true},
		{"expired, a valid one kept", expired, &valid, false},
		{"expired, a valid one kept with blank lines", expired, ptr("\n" + valid + "\n\n"), false},
		{"expired, an expired one kept", expired, &alsoExpired, true},
		{"expired, garbage kept", expired, ptr("garbage"), true},
		{"expired, an empty file kept", expired, ptr(""), true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if tc.kept != nil {
				if err := os.WriteFile(filepath.Join(dir, TokenStateFile), []byte(*tc.kept), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			err := CheckTokenExpiry(tc.token, dir, now)
			if tc.wantErr != (err != nil) {
				t.Fatalf("CheckTokenExpiry = %v, want an error: %v", err, tc.wantErr)
			}
			if err == nil {
				return
			}
			want := "the token expired at 2026-03-01T11:00:00Z and " + filepath.Join(dir, "api.token") + " holds no valid newer one"
			if err.Error() != want || !errors.Is(err, ErrTokenExpired) {
				t.Errorf("CheckTokenExpiry = %q, want %q wrapping ErrTokenExpired", err, want)
			}
			for _, tok := range []string{valid, expired, alsoExpired} {
				if strings.Contains(err.Error(), tok) {
					t.Errorf("CheckTokenExpiry error %q holds a token", err)
				}
			}
		})
	}
	// A data dir that cannot be read is no kept token, not a crash.
	if err := CheckTokenExpiry(expired, "/nonexistent/dir", now); !errors.Is(err, ErrTokenExpired) {
		t.Errorf("CheckTokenExpiry(no data dir) = %v, want ErrTokenExpired", err)
	}
}

func ptr(s string) *string { return &s }
