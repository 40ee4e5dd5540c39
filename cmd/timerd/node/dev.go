package node

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
	"golang.org/x/sync/errgroup"

	"github.com/timerd/timerd/auth"
	"github.com/timerd/timerd/ingest"
	"github.com/timerd/timerd/ingest/apiserver"
	"github.com/timerd/timerd/ingest/attune"
	"github.com/timerd/timerd/ingest/pubsub"
	"github.com/timerd/timerd/scheduler"
)

// DevConfig is the configuration of dev mode (`timerd dev`).
type DevConfig struct {
	// DataDir holds the API's and the node's stores, the signing key and the
	// admin token; "" makes a fresh temporary directory.
	DataDir string
	// APIAddr and HTTPAddr are the listen addresses of the API and of the
	// node's endpoints; port 0 picks a free port (see APIURL and NodeURL).
	APIAddr, HTTPAddr string
	// SensorTokenTTL is the lifetime of the node's sensor token; default 24h.
	SensorTokenTTL time.Duration
	// MQURL, if set, carries the lifecycle messages through RabbitMQ
	// (exchange MQExchange, default attune.DefaultExchange) instead of an
	// in-process bus.
	MQURL, MQExchange string
	Logger            *slog.Logger // nil: discard
}

// Dev is dev mode: an Attune-compatible API, a rule lifecycle bus (in
// process, or RabbitMQ) and one node in one process. Rules created through
// the API reach the node, whose fires are posted back to the API as events.
// NewDev binds its listeners; Run serves until its context is done and
// releases everything.
type Dev struct {
	cfg     DevConfig
	creds   *devCreds
	api     *apiserver.Server
	apiLn   net.Listener
	node    *Node
	queue   string   // the node's RabbitMQ queue; "" on the in-process bus
	closers []func() // run in reverse order once the API and the node are done
}

// NewDev prepares the data directory and its credentials, opens the API and
// the node and binds their listeners. A listen address or data directory
// that cannot be used is a *SettingError (TIMERD_API_ADDR, TIMERD_HTTP_ADDR,
// TIMERD_DATA_DIR).
func NewDev(cfg DevConfig) (_ *Dev, err error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.SensorTokenTTL == 0 {
		cfg.SensorTokenTTL = 24 * time.Hour
	}
	if cfg.MQExchange == "" {
		cfg.MQExchange = attune.DefaultExchange
	}
	log := cfg.Logger
	if cfg.DataDir == "" {
		if cfg.DataDir, err = os.MkdirTemp("", "timerd-dev-"); err != nil {
			return nil, fmt.Errorf("create data dir: %w", err)
		}
	} else if err := auth.PrivateDir(cfg.DataDir, log); err != nil {
		return nil, &SettingError{Setting: "TIMERD_DATA_DIR", Err: fmt.Errorf("%q: %w", cfg.DataDir, err)}
	}
	d := &Dev{cfg: cfg}
	defer func() {
		if err != nil {
			d.close()
		}
	}()

	if d.creds, err = devCredentials(cfg.DataDir, log); err != nil {
		return nil, err
	}
	sensorToken, _, err := (&auth.Issuer{Key: d.creds.key}).Issue(auth.IssueRequest{
		Subject:      "timerd-dev-node",
		IdentityID:   "timerd-dev-node",
		Scope:        auth.ScopeSensor,
		TriggerTypes: scheduler.TimerTriggers(),
		TTL:          cfg.SensorTokenTTL,
		Login:        "core.timer",
		TokenType:    "sensor",
	})
	if err != nil {
		return nil, fmt.Errorf("issue the dev node's sensor token: %w", err)
	}

	// One registry: the node's /metrics shows the API's metrics too.
	reg := prometheus.NewRegistry()
	var (
		publisher attune.Publisher
		lifecycle <-chan attune.Message
		mq        *ingest.ConsumerConfig
	)
	if cfg.MQURL != "" {
		pub, err := pubsub.NewPublisher(pubsub.PublisherConfig{URL: cfg.MQURL, Exchange: cfg.MQExchange, Logger: log, Registerer: reg})
		if err != nil {
			return nil, err
		}
		d.closers = append(d.closers, func() { pub.Close() }) // after the API, whose last writes publish
		publisher = pub
		// The queue is kept across restarts on the same data dir, and two
		// dev instances on one broker do not share one.
		d.queue = attune.QueueName("core.timer", devQueueNode(cfg.DataDir))
		mq = &ingest.ConsumerConfig{URL: cfg.MQURL, Exchange: cfg.MQExchange, Queue: d.queue, QueueExpires: 24 * time.Hour}
	} else {
		bus := pubsub.NewBus()
		var unsubscribe func()
		lifecycle, unsubscribe = bus.Subscribe()
		d.closers = append(d.closers, unsubscribe)
		publisher = bus
	}
	d.api, err = apiserver.New(apiserver.Config{DataDir: cfg.DataDir, SigningKey: d.creds.key, Publisher: publisher,
		Logger: log, Registerer: reg})
	if err != nil {
		return nil, err
	}
	d.closers = append(d.closers, func() { d.api.Close() })
	if d.apiLn, err = net.Listen("tcp", cfg.APIAddr); err != nil {
		return nil, &SettingError{Setting: "TIMERD_API_ADDR", Err: err}
	}
	d.closers = append(d.closers, func() { d.apiLn.Close() }) // a no-op once served

	// Last: a node that New returns is released only by its Run.
	d.node, err = New(Config{
		DataDir:   cfg.DataDir,
		APIURL:    d.APIURL(),
		NodeName:  "dev",
		HTTPAddr:  cfg.HTTPAddr,
		Lifecycle: lifecycle,
		MQ:        mq,
		Logger:    log.With("sensor", "core.timer"), // as the agent's lines
		Registry:  reg,
		Token:     sensorToken,
		// A short sensor token lifetime must not wait a minute to retry.
		TokenRetryMin: min(max(cfg.SensorTokenTTL/20, time.Second), time.Minute),
	})
	if err != nil {
		return nil, err
	}
	return d, nil
}

// Run serves the API and runs the node until ctx is done or one of them
// fails, then releases everything. Call it once, after NewDev.
func (d *Dev) Run(ctx context.Context) error {
	defer d.close()
	// The API outlives the node, so the node can flush its outbox to it at
	// shutdown.
	apiCtx, stopAPI := context.WithCancel(context.WithoutCancel(ctx))
	defer stopAPI()
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		if err := d.api.Serve(apiCtx, d.apiLn); err != nil {
			return fmt.Errorf("api server: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		defer stopAPI()
		return d.node.Run(gctx)
	})
	return g.Wait()
}

func (d *Dev) close() {
	for i := len(d.closers) - 1; i >= 0; i-- {
		d.closers[i]()
	}
	d.closers = nil
}

// APIURL is the base URL of the API, http://host:port.
func (d *Dev) APIURL() string { return "http://" + d.apiLn.Addr().String() }

// NodeURL is the base URL of the node's /metrics, /healthz, /readyz and
// /v1/status.
func (d *Dev) NodeURL() string { return "http://" + d.node.HTTPAddr() }

// DataDir is the data directory, the temporary one when none was given.
func (d *Dev) DataDir() string { return d.cfg.DataDir }

// AdminTokenPath is the file of the admin token the API takes.
func (d *Dev) AdminTokenPath() string { return d.creds.adminPath }

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

// WriteBanner prints where everything is and the curl lines that create a
// rule and show its events (the README's first steps).
func (d *Dev) WriteBanner(w io.Writer) {
	c := d.creds
	keyNote, tokNote := "kept", "kept"
	if c.keyCreated {
		keyNote = "new"
	}
	if c.adminNew {
		tokNote = "new"
	}
	via := "an in-process lifecycle bus"
	if d.queue != "" {
		via = "RabbitMQ (exchange " + d.cfg.MQExchange + ", queue " + d.queue + ")"
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

`, d.cfg.DataDir, d.APIURL(), d.NodeURL(), c.keyPath, c.adminPath, keyNote, tokNote, c.adminExp.UTC().Format(time.RFC3339),
		shellQuote(c.adminPath), via)
}
