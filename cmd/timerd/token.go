package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/timerd/timerd/auth"
)

func newTokenCmd() *cobra.Command {
	token := &cobra.Command{Use: "token", Short: "Issue, inspect and sign API tokens (HS256 JWTs)"}
	token.AddCommand(newTokenIssueCmd(), newTokenInspectCmd(), newTokenKeygenCmd())
	return token
}

func newTokenIssueCmd() *cobra.Command {
	var (
		keyFile, scope, ttl, sub, identityID, login, tokenType string
		triggerTypes                                           []string
	)
	cmd := &cobra.Command{
		Use:   "issue --key-file F --scope S",
		Short: "Sign a new token and print it",
		Example: `  timerd token issue --key-file key --scope sensor --trigger-types core.intervaltimer,core.crontimer,core.datetimetimer --login core.timer --identity-id 7
  timerd token issue --key-file key --scope admin --sub ops --ttl 12h`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if keyFile == "" {
				return usagef("--key-file: required")
			}
			sc, err := auth.ParseScope(scope)
			if err != nil {
				return usagef("--scope: %w", err)
			}
			d, err := parseTTL(ttl)
			if err != nil {
				return usagef("--ttl: %w", err)
			}
			if tokenType == "" && sc == auth.ScopeSensor {
				tokenType = "sensor" // what Attune's code writes
			}
			key, err := auth.LoadKey(keyFile, slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), nil)))
			if err != nil {
				return usageError{err}
			}
			iss := auth.Issuer{Key: key}
			tok, _, err := iss.Issue(auth.IssueRequest{
				Subject:      sub,
				IdentityID:   auth.IdentityID(identityID),
				Scope:        sc,
				TriggerTypes: triggerTypes,
				TTL:          d,
				Login:        login,
				TokenType:    tokenType,
			})
			if err != nil {
				return usageError{err}
			}
			if identityID == "" {
				msg := "timerd: warning: a token without --identity-id cannot be refreshed (it lives to its --ttl) " +
					"and can be revoked only by its jti (POST /auth/revoke) or by rotating the signing key"
				if sc == auth.ScopeAdmin {
					msg += "; an admin token that leaks is good for its whole --ttl: keep the ttl short"
				}
				fmt.Fprintln(cmd.ErrOrStderr(), msg)
			}
			fmt.Fprintln(cmd.OutOrStdout(), tok)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&keyFile, "key-file", "", "file holding the HMAC signing key (see token keygen)")
	f.StringVar(&scope, "scope", "", "admin, user, sensor, action_execution, webhook or readonly")
	f.StringSliceVar(&triggerTypes, "trigger-types", nil, "comma-separated trigger refs a sensor token may post events for")
	f.StringVar(&ttl, "ttl", "90d", "lifetime: a Go duration, days (90d) or both (1d12h); at most 10 years")
	f.StringVar(&sub, "sub", "", "subject (default: the identity id)")
	f.StringVar(&identityID, "identity-id", "", "identity id; written as a JSON number when it is an integer")
	f.StringVar(&login, "login", "", "login claim (Attune: the sensor ref)")
	f.StringVar(&tokenType, "token-type", "", `token_type claim (default "sensor" for scope sensor)`)
	return cmd
}

// parseTTL reads a token's lifetime, a duration as the agent's settings
// take it (90d, 1d12h, 36h), from 1s to auth.MaxTTL.
func parseTTL(s string) (time.Duration, error) {
	d, err := parseSettingDuration(s)
	if err != nil {
		return 0, err
	}
	if d < time.Second || d > auth.MaxTTL {
		return 0, fmt.Errorf("%q: must be between 1s and %v", truncateSetting(s), auth.MaxTTL)
	}
	return d, nil
}

func newTokenInspectCmd() *cobra.Command {
	var keyFile string
	cmd := &cobra.Command{
		Use:   "inspect [--key-file F] < token",
		Short: "Print a token's claims and time left; verify it when --key-file is given",
		Long: `Reads one token on stdin (a leading "Bearer " is ignored) and prints its claims as JSON
and the time it has left. Without --key-file nothing is verified. With it, the signature,
expiry and validity window are checked: "signature: valid", or exit status 1 with the reason.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var key []byte
			if keyFile != "" {
				var err error
				if key, err = auth.LoadKey(keyFile, slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), nil))); err != nil {
					return usageError{err}
				}
			}
			in, err := io.ReadAll(io.LimitReader(cmd.InOrStdin(), 1<<20))
			if err != nil {
				return fmt.Errorf("read token from stdin: %w", err)
			}
			tok := strings.TrimSpace(string(in))
			if scheme, rest, ok := strings.Cut(tok, " "); ok && strings.EqualFold(scheme, "Bearer") {
				tok = strings.TrimSpace(rest)
			}
			claims, err := auth.ParseUnverified(tok)
			if err != nil {
				return fmt.Errorf("inspect token: %w", err)
			}
			js, err := json.MarshalIndent(claims, "", "  ")
			if err != nil {
				return fmt.Errorf("inspect token: %w", err)
			}
			out := cmd.OutOrStdout()
			fmt.Fprintln(out, string(js))
			now := time.Now()
			if exp := claims.ExpiresAtTime(); exp.IsZero() {
				fmt.Fprintln(out, "time left: never expires (no exp claim; verification refuses it)")
			} else if left := exp.Sub(now).Truncate(time.Second); left > 0 {
				fmt.Fprintf(out, "time left: %s (expires %s)\n", left, exp.UTC().Format(time.RFC3339))
			} else {
				fmt.Fprintf(out, "time left: none, expired %s ago (%s)\n", -left, exp.UTC().Format(time.RFC3339))
			}
			if key == nil {
				return nil
			}
			v := auth.Verifier{Key: key}
			if _, err := v.Verify(tok); err != nil {
				if errors.Is(err, auth.ErrExpired) || errors.Is(err, auth.ErrNotYetValid) {
					fmt.Fprintln(out, "signature: valid") // times are checked after the signature
				}
				return fmt.Errorf("token invalid: %w", err)
			}
			fmt.Fprintln(out, "signature: valid")
			return nil
		},
	}
	cmd.Flags().StringVar(&keyFile, "key-file", "", "verify with the HMAC key in this file")
	return cmd
}

func newTokenKeygenCmd() *cobra.Command {
	var out string
	cmd := &cobra.Command{
		Use:   "keygen --out F",
		Short: "Write a new random HMAC signing key (mode 0600; never overwrites)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if out == "" {
				return usagef("--out: required")
			}
			if err := auth.GenerateKeyFile(out); err != nil {
				return err
			}
			fmt.Fprintln(cmd.ErrOrStderr(), "wrote signing key to", out)
			return nil
		},
	}
	cmd.Flags().StringVar(&out, "out", "", "path of the new key file")
	return cmd
}
