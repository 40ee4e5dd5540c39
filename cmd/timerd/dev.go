package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"

	"github.com/timerd/timerd/auth"
	"github.com/timerd/timerd/cmd/timerd/node"
	"github.com/timerd/timerd/ingest"
	"github.com/timerd/timerd/ingest/apiserver"
	"github.com/timerd/timerd/ingest/attune"
	"github.com/timerd/timerd/ingest/pubsub"
	"github.com/timerd/timerd/scheduler"
)

func newDevCmd() *cobra.Command {
	var (
		dataDir, apiAddr, httpAddr string
		sensorTTL                  string
		mqURL, mqExchange          string
		logs                       logFlags
	)
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Run all of timerd in one process: the API, a lifecycle bus and one node",
		Long: `dev runs an Attune-compatible API, an in-process rule lifecycle bus and one
timerd node in one process. Rules created through the API are published on
the bus, scheduled by the node, and their fires are posted back to the API as
events. Started again on the same --data-dir, it carries on where it stopped.
With --mq-url the lifecycle messages go through RabbitMQ instead: the API
publishes them to --mq-exchange and the node consumes its own durable queue,
as in production.

Authentication is on, as in production: dev keeps an HS256 key in
DIR/signing.key and an admin token in DIR/admin.token (both mode 0600, kept
across restarts; the token is reissued when it has expired), and its node
posts events with a sensor token dev issues itself and refreshes it through
the API like any node.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := logs.logger()
			if err != nil {
				return err
			}
			sensorTokenTTL, err := parseTTL(sensorTTL)
			if err != nil {
				return usagef("--sensor-token-ttl: %w", err)
			}
			if dataDir == "" {
				dataDir, err = os.MkdirTemp("", "timerd-dev-")
				if err != nil {
					return fmt.Errorf("create data dir: %w", err)
				}
			} else if err := auth.PrivateDir(dataDir, log); err != nil {
				return usagef("--data-dir %q: %w", dataDir, err)
			}

			creds, err := devCredentials(dataDir, log)
			if err != nil {
				return err
			}
			sensorToken, _, err := (&auth.Issuer{Key: creds.key}).Issue(auth.IssueRequest{
				Subject:      "timerd-dev-node",
				IdentityID:   "timerd-dev-node",
				Scope:        auth.ScopeSensor,
				TriggerTypes: scheduler.TimerTriggers(),
				TTL:          sensorTokenTTL,
				Login:        "core.timer",
				TokenType:    "sensor",
			})
			if err != nil {
				return fmt.Errorf("issue the dev node's sensor token: %w", err)
			}

			// One registry: the node's /metrics shows the API's metrics too.
			reg := prometheus.NewRegistry()
			var (
				publisher attune.Publisher
				lifecycle <-chan attune.Message
				mq        *ingest.ConsumerConfig
				via       = "an in-process lifecycle bus"
			)
			if mqURL != "" {
				pub, err := newMQPublisher(mqURL, mqExchange, log, reg)
				if err != nil {
					return err
				}
				defer pub.Close() // after the API, whose last writes publish
				publisher = pub
				// The queue is kept across restarts on the same data dir, and
				// two dev instances on one broker do not share one.
				mq = &ingest.ConsumerConfig{URL: mqURL, Exchange: mqExchange,
					Queue: attune.QueueName("core.timer", devQueueNode(dataDir)), QueueExpires: 24 * time.Hour}
				via = "RabbitMQ (exchange " + mqExchange + ", queue " + mq.Queue + ")"
			} else {
				bus := pubsub.NewBus()
				var unsubscribe func()
				lifecycle, unsubscribe = bus.Subscribe()
				defer unsubscribe()
				publisher = bus
			}
			api, err := apiserver.New(apiserver.Config{DataDir: dataDir, SigningKey: creds.key, Publisher: publisher,
				Logger: log, Registerer: reg})
			if err != nil {
				return err
			}
			defer api.Close()
			apiLn, err := net.Listen("tcp", apiAddr)
			if err != nil {
				return usagef("--api-addr %q: %w", apiAddr, err)
			}
			apiURL := "http://" + apiLn.Addr().String()

			n, err := node.New(node.Config{
				DataDir:   dataDir,
				APIURL:    apiURL,
				NodeName:  "dev",
				HTTPAddr:  httpAddr,
				Lifecycle: lifecycle,
				MQ:        mq,
				Logger:    log,
				Registry:  reg,
				Token:     sensorToken,
				// A short --sensor-token-ttl must not wait a minute to retry.
				TokenRetryMin: min(max(sensorTokenTTL/20, time.Second), time.Minute),
			})
			if err != nil {
				apiLn.Close()
				if isAddrErr(err) {
					return usageError{err}
				}
				return err
			}
			printDevBanner(cmd.OutOrStdout(), dataDir, apiURL, "http://"+n.HTTPAddr(), via, creds)

			// The API outlives the node, so the node can flush its outbox
			// to it at shutdown.
			apiCtx, stopAPI := context.WithCancel(context.WithoutCancel(cmd.Context()))
			defer stopAPI()
			g, gctx := errgroup.WithContext(cmd.Context())
			g.Go(func() error { return serveAPI(apiCtx, api, apiLn) })
			g.Go(func() error {
				defer stopAPI()
				return n.Run(gctx)
			})
			return g.Wait()
		},
	}
	cmd.Flags().StringVar(&dataDir, "data-dir", envOr("TIMERD_DATA_DIR", ""), "data directory; default a fresh temporary directory (env TIMERD_DATA_DIR)")
	cmd.Flags().StringVar(&apiAddr, "api-addr", envOr("TIMERD_API_ADDR", "127.0.0.1:8080"), "listen address of the Attune-compatible API (env TIMERD_API_ADDR)")
	cmd.Flags().StringVar(&httpAddr, "http-addr", envOr("TIMERD_HTTP_ADDR", "127.0.0.1:8470"), "listen address of the node's metrics, health and status (env TIMERD_HTTP_ADDR)")
	cmd.Flags().StringVar(&sensorTTL, "sensor-token-ttl", "24h", "lifetime of the node's sensor token (90d, 1d12h, 2m); it is refreshed at 80 %")
	cmd.Flags().StringVar(&mqURL, "mq-url", "", "RabbitMQ URL (amqp:// or amqps://): carry rule lifecycle messages through the broker instead of the in-process bus")
	cmd.Flags().StringVar(&mqExchange, "mq-exchange", attune.DefaultExchange, "topic exchange of the lifecycle messages (with --mq-url)")
	logs.register(cmd, "text")
	return cmd
}

// devQueueNode names dev's node in its queue name: "dev-" and a hash of
// the data directory.
func devQueueNode(dataDir string) string {
	abs, err := filepath.Abs(dataDir)
	if err != nil {
		abs = dataDir
	}
	sum := sha256.Sum256([]byte(abs))
	return "dev-" + hex.EncodeToString(sum[:4])
}

func isAddrErr(err error) bool {
	var opErr *net.OpError
	return errors.As(err, &opErr)
}

// devAdminTTL is the lifetime of DIR/admin.token; it is reissued when less
// than devAdminMinLeft is left.
const (
	devAdminTTL     = 30 * 24 * time.Hour
	devAdminMinLeft = time.Hour
)

type devCreds struct {
	key                  []byte
	keyPath, adminPath   string
	adminExp             time.Time
	keyCreated, adminNew bool
}

// devCredentials makes sure DIR/signing.key and DIR/admin.token exist, mode
// 0600. Both are kept across restarts; the admin token is reissued when it
// is missing, does not verify with the key, or is (nearly) expired.
func devCredentials(dir string, log *slog.Logger) (*devCreds, error) {
	c := &devCreds{keyPath: filepath.Join(dir, "signing.key"), adminPath: filepath.Join(dir, "admin.token")}
	if _, err := os.Stat(c.keyPath); errors.Is(err, fs.ErrNotExist) {
		if err := auth.GenerateKeyFile(c.keyPath); err != nil {
			return nil, err
		}
		c.keyCreated = true
	}
	var err error
	if c.key, err = auth.LoadKey(c.keyPath, log); err != nil {
		return nil, err
	}
	now := time.Now()
	reason := "missing"
	if b, err := os.ReadFile(c.adminPath); err == nil {
		v := auth.Verifier{Key: c.key, Leeway: -1}
		claims, verr := v.Verify(strings.TrimSpace(string(b)))
		switch {
		case verr != nil:
			reason = verr.Error() // never contains the token
		case claims.Scope != auth.ScopeAdmin:
			reason = "scope " + string(claims.Scope)
		case claims.ExpiresAtTime().Sub(now) < devAdminMinLeft:
			reason = "expires at " + claims.ExpiresAtTime().UTC().Format(time.RFC3339)
		default:
			c.adminExp = claims.ExpiresAtTime()
			return c, os.Chmod(c.adminPath, 0o600)
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("read admin token: %w", err)
	}
	tok, claims, err := (&auth.Issuer{Key: c.key}).Issue(auth.IssueRequest{
		Subject: "timerd-dev-admin", Scope: auth.ScopeAdmin, TTL: devAdminTTL,
	})
	if err != nil {
		return nil, fmt.Errorf("issue admin token: %w", err)
	}
	if err := auth.WriteFileAtomic(c.adminPath, []byte(tok+"\n"), 0o600); err != nil {
		return nil, fmt.Errorf("write admin token: %w", err)
	}
	c.adminExp, c.adminNew = claims.ExpiresAtTime(), true
	log.Info("dev admin token issued", "path", c.adminPath, "reason", reason, "expires_at", c.adminExp)
	return c, nil
}

// shellQuote quotes s for a POSIX shell unless it needs no quoting.
func shellQuote(s string) string {
	if s != "" && !strings.ContainsFunc(s, func(r rune) bool {
		return !(r == '/' || r == '.' || r == '-' || r == '_' || r == ':' || r == '+' || r == '@' || r == '%' ||
			r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9')
	}) {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

func printDevBanner(w io.Writer, dataDir, apiURL, nodeURL, via string, c *devCreds) {
	keyNote, tokNote := "kept", "kept"
	if c.keyCreated {
		keyNote = "new"
	}
	if c.adminNew {
		tokNote = "new"
	}
	fmt.Fprintf(w, `timerd dev: the API and one node in one process (Ctrl-C stops it)
  lifecycle: %[10]s
  data dir:  %[1]s
  API:       %[2]s  (rules %[2]s/api/v1/rules, events %[2]s/api/v1/events, health %[2]s/health)
  node:      %[3]s  (%[3]s/metrics, %[3]s/healthz, %[3]s/readyz, %[3]s/v1/status)
  key:       %[4]s  (HS256 signing key, %[6]s)
  admin:     %[5]s  (admin token, %[7]s, expires %[8]s)

The API wants a bearer token; use the admin token:
  export TOKEN=$(cat %[9]s)
Create a rule that fires every second:
  curl -s -X POST %[2]s/api/v1/rules -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' -d '{"ref":"demo.every_second","trigger_ref":"core.intervaltimer","trigger_params":{"interval":1,"unit":"seconds"}}'
See its events:
  curl -s -H "Authorization: Bearer $TOKEN" '%[2]s/api/v1/events?rule_ref=demo.every_second'
Start again with --data-dir %[1]s to carry on where it stopped.

`, dataDir, apiURL, nodeURL, c.keyPath, c.adminPath, keyNote, tokNote, c.adminExp.UTC().Format(time.RFC3339), shellQuote(c.adminPath), via)
}
