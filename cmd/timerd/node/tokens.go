package node

import (
	"errors"
	"path/filepath"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/timerd/timerd/auth"
	"github.com/timerd/timerd/scheduler/metricset"
)

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
		StateFile:  filepath.Join(cfg.DataDir, "api.token"),
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
