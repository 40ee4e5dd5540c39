package node

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/timerd/timerd/auth"
	"github.com/timerd/timerd/scheduler/metricset"
)

// TokenStateFile is the file in the data directory where the node keeps the
// API token in use (auth.SourceConfig.StateFile): every refresh rewrites it.
const TokenStateFile = "api.token"

// newTokenSource builds the node's token source from cfg.Token or
// cfg.TokenFile, refreshed through the API's POST /auth/refresh; nil when
// neither is set. The token in use is kept in DataDir/api.token, so a
// restart resumes with the last refreshed token. Its metrics (timerd_token_*) go to reg.
// A token that cannot be used is a *SettingError naming the setting it came from.
func newTokenSource(cfg *Config, reg prometheus.Registerer) (*auth.Source, error) {
	if cfg.Token == "" && cfg.TokenFile == "" {
		return nil, nil
	}
	src, err := auth.NewSource(auth.SourceConfig{
		Token:      cfg.Token,
		TokenFile:  cfg.TokenFile,
		FilePoll:   cfg.TokenFilePoll,
		Refresh:    auth.HTTPRefresher(cfg.APIURL, nil),
		RefreshAt:  cfg.TokenRefreshAt,
		RetryMin:   cfg.TokenRetryMin,
		RetryMax:   cfg.TokenRetryMax,
		StateFile:  filepath.Join(cfg.DataDir, TokenStateFile),
		Logger:     cfg.Logger,
		Registerer: reg,
	})
	var clash *metricset.RegisterError
	if errors.As(err, &clash) {
		return nil, err // the registry's fault, not the token's
	}
	if err != nil {
		setting := "ATTUNE_API_TOKEN"
		if cfg.TokenFile != "" {
			setting = "ATTUNE_API_TOKEN_FILE"
		}
		return nil, &SettingError{Setting: setting, Err: err}
	}
	return src, nil
}

// ErrTokenExpired marks a configured token that has expired: usable only
// when the node kept a newer one in its data dir.
var ErrTokenExpired = errors.New("the token expired")

// CheckTokenExpiry reports an expired configured token unless the token the
// node kept at its last refresh (dataDir/TokenStateFile, see
// docs/token-rotation.md) is still valid at now: a node restarted after its
// configured token expired resumes with the one it refreshed. A token that
// is not a JWT is not its to report (nil). Errors never contain a token.
func CheckTokenExpiry(token, dataDir string, now time.Time) error {
	claims, err := auth.ParseUnverified(token)
	if err != nil {
		return nil // the caller's check of the token's form reports it
	}
	exp := claims.ExpiresAtTime()
	if exp.After(now) {
		return nil
	}
	kept := filepath.Join(dataDir, TokenStateFile)
	if b, err := os.ReadFile(kept); err == nil {
		if c, err := auth.ParseUnverified(strings.TrimSpace(string(b))); err == nil && c.ExpiresAtTime().After(now) {
			return nil
		}
	}
	return fmt.Errorf("%w at %s and %s holds no valid newer one", ErrTokenExpired, exp.UTC().Format(time.RFC3339), kept)
}
