package auth

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/timerd/timerd/ingest/backoff"
	"github.com/timerd/timerd/scheduler/metricset"
)

// SourceConfig configures a Source. Zero values take the defaults named on
// each field.
type SourceConfig struct {
	// Token is the initial token (ATTUNE_API_TOKEN). Exactly one of Token and
	// TokenFile is required.
	Token string
	// TokenFile (ATTUNE_API_TOKEN_FILE) is read at start and polled every
	// FilePoll; a changed, valid content replaces the current token (k8s
	// secrets are updated by a symlink swap, so the content is compared).
	TokenFile string
	FilePoll  time.Duration // default 10s
	// Refresh trades the current token for a new one, e.g. HTTPRefresher.
	// Nil: never refresh (the token file is then the only way to rotate).
	Refresh func(ctx context.Context, current string) (string, error)
	// RefreshAt is the fraction of exp − iat after which to refresh, in (0, 1);
	// default 0.8.
	RefreshAt float64
	// RetryMin is the delay after a first failed refresh; after the n-th the
	// delay is jittered between RetryMin and RetryMin·2^(n−1), capped at
	// RetryMax (ingest/backoff.Delay), so that the nodes a refused refresh
	// stopped together do not retry together; defaults 60s and 1h.
	RetryMin, RetryMax time.Duration
	// StateFile, if set, keeps the token in use (mode 0600): every refresh
	// writes it, and at start the more recently issued of it and the
	// configured token is used. Without it a node restarted after its
	// configured token expired could not authenticate, though it had
	// refreshed that token long before.
	StateFile  string
	Now        func() time.Time // default time.Now
	Logger     *slog.Logger     // default discard
	Registerer prometheus.Registerer
}

// Validate names the first bad field.
func (c *SourceConfig) Validate() error {
	switch {
	case c.Token == "" && c.TokenFile == "":
		return errors.New("token source config: Token: one of Token or TokenFile is required")
	case c.Token != "" && c.TokenFile != "":
		return errors.New("token source config: TokenFile: set Token or TokenFile, not both")
	case c.FilePoll < 0:
		return fmt.Errorf("token source config: FilePoll: %v is negative", c.FilePoll)
	case !(c.RefreshAt >= 0 && c.RefreshAt < 1): // also NaN
		return fmt.Errorf("token source config: RefreshAt: %v is not in (0, 1)", c.RefreshAt)
	case c.RetryMin < 0:
		return fmt.Errorf("token source config: RetryMin: %v is negative", c.RetryMin)
	case c.RetryMax < 0:
		return fmt.Errorf("token source config: RetryMax: %v is negative", c.RetryMax)
	case c.RetryMax != 0 && c.RetryMax < c.RetryMin:
		return fmt.Errorf("token source config: RetryMax: %v is less than RetryMin %v", c.RetryMax, c.RetryMin)
	}
	return nil
}

func (c *SourceConfig) setDefaults() {
	if c.FilePoll == 0 {
		c.FilePoll = 10 * time.Second
	}
	if c.RefreshAt == 0 {
		c.RefreshAt = 0.8
	}
	if c.RetryMin == 0 {
		c.RetryMin = time.Minute
	}
	if c.RetryMax == 0 {
		c.RetryMax = max(time.Hour, c.RetryMin)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// refreshTimeout bounds one call of Refresh.
const refreshTimeout = 30 * time.Second

// minRefreshGap keeps a server that hands out nearly expired tokens from
// spinning the loop.
const minRefreshGap = time.Second

// Source hands out a node's bearer token and keeps it fresh: it refreshes at
// RefreshAt of the token's lifetime, at once when the API rejects the token
// (Invalidate), and picks up a rotated token file. It satisfies
// ingest.TokenSource. Refreshes happen only while Run runs.
type Source struct {
	cfg  SourceConfig
	log  *slog.Logger
	cur  atomic.Pointer[current]
	wake chan struct{} // cap 1: an Invalidate is waiting for Run

	mu          sync.Mutex
	invalidated string // the last token passed to Invalidate that was current

	fileContent []byte // last TokenFile content seen; owned by Run after NewSource

	expiry    prometheus.Gauge
	refreshOK prometheus.Counter
	refreshKO prometheus.Counter
}

type current struct {
	token    string
	iat, exp time.Time
}

// NewSource checks cfg and the initial token (a JWT with exp and iat).
func NewSource(cfg SourceConfig) (*Source, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	s := &Source{
		cfg:  cfg,
		log:  cfg.Logger.With("component", "auth"),
		wake: make(chan struct{}, 1),
		expiry: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "timerd_token_expiry_timestamp_seconds",
			Help: "Expiry (exp claim) of the API token in use, as a Unix time.",
		}),
	}
	refreshes := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "timerd_token_refreshes_total",
		Help: "API token refresh attempts by result (ok, error).",
	}, []string{"result"})
	s.refreshOK = refreshes.WithLabelValues("ok")
	s.refreshKO = refreshes.WithLabelValues("error")

	tok := cfg.Token
	if cfg.TokenFile != "" {
		b, err := os.ReadFile(cfg.TokenFile)
		if err != nil {
			return nil, fmt.Errorf("token source: read TokenFile %q: %w", cfg.TokenFile, err)
		}
		s.fileContent = b
		tok = string(bytes.TrimSpace(b))
	}
	c, err := parseForSource(tok)
	if err != nil {
		if cfg.TokenFile != "" {
			return nil, fmt.Errorf("token source: TokenFile %q: %w", cfg.TokenFile, err)
		}
		return nil, fmt.Errorf("token source: Token: %w", err)
	}
	if _, err := metricset.Register(cfg.Registerer, s.expiry, refreshes); err != nil {
		return nil, fmt.Errorf("token source: %w", err)
	}
	if saved := s.loadState(); saved != nil && saved.iat.After(c.iat) && cfg.Now().Before(saved.exp) {
		s.log.Info("resuming with the refreshed API token kept in the state file", "path", cfg.StateFile,
			"token", Mask(saved.token), "expires_at", saved.exp)
		c = saved
	}
	s.swap(c)
	if !cfg.Now().Before(c.exp) {
		s.log.Warn("API token has expired", "token", Mask(c.token), "expires_at", c.exp)
	}
	return s, nil
}

// loadState returns the token kept in StateFile, nil if there is none or it
// is unusable (then the configured token is used and the file rewritten at
// the next refresh).
func (s *Source) loadState() *current {
	if s.cfg.StateFile == "" {
		return nil
	}
	b, err := os.ReadFile(s.cfg.StateFile)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		s.log.Warn("read API token state file; using the configured token", "path", s.cfg.StateFile, "err", err)
		return nil
	}
	tok := string(bytes.TrimSpace(b))
	c, err := parseForSource(tok)
	if err != nil {
		s.log.Warn("API token state file holds no usable token; using the configured token",
			"path", s.cfg.StateFile, "err", redact(err, tok))
		return nil
	}
	return c
}

// saveState writes tok to StateFile atomically (a temporary file renamed
// over it). A failure is logged: the node keeps running on the token it has.
func (s *Source) saveState(tok string) {
	if s.cfg.StateFile == "" {
		return
	}
	if err := WriteFileAtomic(s.cfg.StateFile, []byte(tok+"\n"), 0o600); err != nil {
		s.log.Warn("keep the refreshed API token in the state file", "path", s.cfg.StateFile, "err", redact(err, tok))
	}
}

// parseForSource decodes a token the client must be able to schedule.
func parseForSource(tok string) (*current, error) {
	if tok == "" {
		return nil, ErrMissingToken
	}
	c, err := ParseUnverified(tok)
	if err != nil {
		return nil, err
	}
	if c.ExpiresAt == nil || c.IssuedAt == nil {
		return nil, fmt.Errorf("%w: exp and iat claims are required", ErrMalformed)
	}
	if !c.IssuedAtTime().Before(c.ExpiresAtTime()) {
		return nil, fmt.Errorf("%w: iat %s is not before exp %s", ErrMalformed,
			c.IssuedAtTime().UTC().Format(time.RFC3339), c.ExpiresAtTime().UTC().Format(time.RFC3339))
	}
	return &current{token: tok, iat: c.IssuedAtTime(), exp: c.ExpiresAtTime()}, nil
}

func (s *Source) swap(c *current) {
	s.cur.Store(c)
	s.expiry.Set(float64(c.exp.UnixNano()) / 1e9)
}

// Token returns the current token.
func (s *Source) Token() string { return s.cur.Load().token }

// Expiry returns the exp of the current token.
func (s *Source) Expiry() time.Time { return s.cur.Load().exp }

// Invalidate reports that the API answered 401 to token. If token is still
// the current one, Run refreshes at once; this happens once per token however
// many callers report it. It does not block.
func (s *Source) Invalidate(token string) {
	if token == "" || s.cur.Load().token != token {
		return // already replaced
	}
	s.mu.Lock()
	first := s.invalidated != token
	s.invalidated = token
	s.mu.Unlock()
	if first {
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}
}

func (s *Source) isInvalidated(token string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.invalidated == token
}

// dueAt is when to refresh c: iat + RefreshAt·(exp − iat).
func (s *Source) dueAt(c *current) time.Time {
	return c.iat.Add(time.Duration(s.cfg.RefreshAt * float64(c.exp.Sub(c.iat))))
}

// Run refreshes the token until ctx is done, then returns nil. A failed
// refresh is retried with jittered backoff from RetryMin up to RetryMax.
func (s *Source) Run(ctx context.Context) error {
	var (
		failures  int
		retryAt   time.Time // set while failures > 0
		notBefore time.Time // minRefreshGap after the last success
		nextPoll  = s.cfg.Now().Add(s.cfg.FilePoll)
	)
	for {
		cur := s.cur.Load()
		var due time.Time // zero: never
		if s.cfg.Refresh != nil {
			due = s.dueAt(cur)
			if failures > 0 {
				due = retryAt
			}
			if due.Before(notBefore) {
				due = notBefore
			}
		}
		wakeAt := due
		if s.cfg.TokenFile != "" && (wakeAt.IsZero() || nextPoll.Before(wakeAt)) {
			wakeAt = nextPoll
		}
		var timerC <-chan time.Time
		var timer *time.Timer
		if !wakeAt.IsZero() {
			timer = time.NewTimer(max(wakeAt.Sub(s.cfg.Now()), 0))
			timerC = timer.C
		}
		invalidated, done := false, false
		select {
		case <-ctx.Done():
			done = true
		case <-s.wake:
			invalidated = s.cfg.Refresh != nil && s.isInvalidated(cur.token)
		case <-timerC:
		}
		if timer != nil {
			timer.Stop()
		}
		if done {
			return nil
		}

		now := s.cfg.Now()
		if s.cfg.TokenFile != "" && !now.Before(nextPoll) {
			nextPoll = now.Add(s.cfg.FilePoll)
			if s.pollFile() {
				failures = 0
				continue
			}
		}
		if !invalidated && (due.IsZero() || now.Before(due)) {
			continue
		}
		reason := "schedule"
		if invalidated {
			reason = "rejected"
		}
		err := s.refresh(ctx, cur, reason)
		if ctx.Err() != nil {
			return nil
		}
		now = s.cfg.Now()
		if err != nil {
			failures++
			delay := backoff.Delay(failures, s.cfg.RetryMin, s.cfg.RetryMax)
			retryAt = now.Add(delay)
			s.log.Warn("API token refresh failed", "err", err, "reason", reason, "attempt", failures,
				"retry_in", delay, "token", Mask(cur.token), "expires_at", cur.exp)
			continue
		}
		failures = 0
		notBefore = now.Add(minRefreshGap)
	}
}

// refresh trades cur for a new token and installs it.
func (s *Source) refresh(ctx context.Context, cur *current, reason string) error {
	ctx, cancel := context.WithTimeout(ctx, refreshTimeout)
	defer cancel()
	tok, err := s.cfg.Refresh(ctx, cur.token)
	if err == nil {
		tok = strings.TrimSpace(tok)
		var c *current
		if c, err = parseForSource(tok); err == nil {
			if !c.exp.After(s.cfg.Now()) {
				err = fmt.Errorf("refreshed token expired at %s", c.exp.UTC().Format(time.RFC3339))
			} else {
				s.swap(c)
				s.saveState(tok)
				s.refreshOK.Inc()
				s.log.Info("API token refreshed", "reason", reason, "token", Mask(tok), "expires_at", c.exp)
				return nil
			}
		} else {
			err = fmt.Errorf("refreshed token: %w", err)
		}
		err = redact(err, tok)
	}
	if ctx.Err() == nil {
		s.refreshKO.Inc()
	}
	return redact(err, cur.token)
}

// pollFile reads TokenFile and installs its token if the content changed and
// is valid. It reports whether it installed one.
func (s *Source) pollFile() bool {
	b, err := os.ReadFile(s.cfg.TokenFile)
	if err != nil {
		s.log.Warn("read API token file", "path", s.cfg.TokenFile, "err", err)
		return false
	}
	if bytes.Equal(b, s.fileContent) {
		return false
	}
	s.fileContent = b
	tok := string(bytes.TrimSpace(b))
	if tok == s.cur.Load().token {
		return false
	}
	c, err := parseForSource(tok)
	if err != nil {
		s.log.Warn("API token file holds no usable token; keeping the current one", "path", s.cfg.TokenFile,
			"err", redact(err, tok))
		return false
	}
	s.swap(c)
	s.saveState(tok)
	s.log.Info("API token reloaded from file", "path", s.cfg.TokenFile, "token", Mask(tok), "expires_at", c.exp)
	return true
}

// redact masks token in err's message, in case a Refresh implementation or a
// server echoed it.
func redact(err error, token string) error {
	if err == nil || token == "" || !strings.Contains(err.Error(), token) {
		return err
	}
	return redactedError{msg: strings.ReplaceAll(err.Error(), token, Mask(token)), err: err}
}

type redactedError struct {
	msg string
	err error
}

func (e redactedError) Error() string { return e.msg }
func (e redactedError) Unwrap() error { return e.err }

// HTTPRefresher returns a Refresh for SourceConfig that POSTs {} to
// {apiURL}/auth/refresh with the current token as bearer and reads
// {"token","expires_at"}. If that path answers 404 or 405 it tries Attune's
// alias /auth/internal/sensor-token, whose answer is wrapped in {"data":…}.
// A nil client means one with a 30s timeout.
func HTTPRefresher(apiURL string, client *http.Client) func(ctx context.Context, current string) (string, error) {
	if client == nil {
		client = &http.Client{Timeout: refreshTimeout}
	}
	client = NoRedirects(client)
	base := strings.TrimRight(apiURL, "/")
	return func(ctx context.Context, current string) (string, error) {
		tok, status, err := postRefresh(ctx, client, base+"/auth/refresh", current)
		if status == http.StatusNotFound || status == http.StatusMethodNotAllowed {
			tok, _, err = postRefresh(ctx, client, base+"/auth/internal/sensor-token", current)
		}
		return tok, err
	}
}

func postRefresh(ctx context.Context, client *http.Client, url, current string) (string, int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader("{}"))
	if err != nil {
		return "", 0, fmt.Errorf("refresh token: %w", err)
	}
	req.Header.Set("Authorization", "Bearer "+current)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return "", 0, fmt.Errorf("refresh token: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return "", resp.StatusCode, fmt.Errorf("refresh token: POST %s: read body: %w", url, err)
	}
	if IsRedirect(resp) {
		return "", resp.StatusCode, fmt.Errorf("refresh token: POST %s: %s", url, RedirectNote(resp))
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		// The body is left out: a confused server might echo the token.
		return "", resp.StatusCode, fmt.Errorf("refresh token: POST %s: status %d", url, resp.StatusCode)
	}
	var r struct {
		Token string `json:"token"`
		Data  *struct {
			Token string `json:"token"`
		} `json:"data"`
	}
	if err := json.Unmarshal(body, &r); err != nil {
		return "", resp.StatusCode, fmt.Errorf("refresh token: POST %s: response is not JSON", url)
	}
	tok := r.Token
	if tok == "" && r.Data != nil {
		tok = r.Data.Token
	}
	if tok == "" {
		return "", resp.StatusCode, fmt.Errorf("refresh token: POST %s: response has no token", url)
	}
	return tok, resp.StatusCode, nil
}
