package ingest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"time"

	"github.com/timerd/timerd/auth"
	"github.com/timerd/timerd/ingest/backoff"
	"github.com/timerd/timerd/scheduler"
)

// healthTimeout bounds one GET /health.
const healthTimeout = 5 * time.Second

// WaitAPIHealthy calls GET {apiURL}/health, as Attune's sensor does at start,
// trying up to attempts times (at least once): the wait before try i+1 is
// backoff.Delay(i), jittered between firstWait and firstWait·2^(i-1). It
// returns nil once the API answers 2xx; ctx's error when ctx ends during a
// wait; else "GET {url}: {last error} ({attempts} attempts)". A redirect is a
// failure, not followed. The URL in logs and errors has its password hidden.
func WaitAPIHealthy(ctx context.Context, apiURL string, attempts int, firstWait time.Duration, log *slog.Logger) error {
	attempts = max(attempts, 1)
	client := auth.NoRedirects(&http.Client{Timeout: healthTimeout})
	u := apiURL + "/health"
	shown := scheduler.Truncate(RedactURL(u), 80)
	var err error
	for i := 1; i <= attempts; i++ {
		err = getHealth(ctx, client, u)
		if err == nil {
			log.Info("api healthy", "url", shown)
			return nil
		}
		if i == attempts || ctx.Err() != nil {
			break
		}
		wait := backoff.Delay(i, firstWait, firstWait<<(attempts-2)) // the cap: the last wait's ceiling
		log.Warn("api health check failed; retrying", "url", shown, "err", err, "attempt", i, "retry_in", wait.String())
		if !backoff.Sleep(ctx, wait) {
			return ctx.Err()
		}
	}
	return fmt.Errorf("GET %s: %w (%d attempts)", shown, err, attempts)
}

// getHealth is one GET of u: nil for a 2xx.
func getHealth(ctx context.Context, client *http.Client, u string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // it repeats the URL, which the caller's message holds
		}
		return err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
	if auth.IsRedirect(resp) {
		return errors.New(auth.RedirectNote(resp))
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	return nil
}
