package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/exporter-toolkit/web"
	"golang.org/x/sync/errgroup"

	"github.com/timerd/timerd/auth"
	"github.com/timerd/timerd/cluster"
	"github.com/timerd/timerd/cluster/protocol"
	"github.com/timerd/timerd/ingest"
	"github.com/timerd/timerd/ingest/attune"
	"github.com/timerd/timerd/scheduler"
	"github.com/timerd/timerd/scheduler/metricset"
	"github.com/timerd/timerd/store"
)

// DefaultDeadLetterRetention is how long a node keeps dead letters.
const DefaultDeadLetterRetention = 7 * 24 * time.Hour

// DefaultCommitFailureLeaveAfter is Config.CommitFailureLeaveAfter's default.
const DefaultCommitFailureLeaveAfter = 30 * time.Second

// fireCoalesce is the scheduler's Coalesce in a node: fires due within 10 ms
// of the last wake that fired are committed together.
const fireCoalesce = 10 * time.Millisecond

// Config is the configuration of one node.
type Config struct {
	DataDir string // required: holds node.db
	APIURL  string // required: Attune's API (events are posted, rules reconciled)

	// Token (ATTUNE_API_TOKEN) or TokenFile (ATTUNE_API_TOKEN_FILE) is the
	// node's API token, a JWT with exp and iat. The node refreshes it
	// through POST {APIURL}/auth/refresh at TokenRefreshAt of its lifetime
	// and on a 401, and rereads TokenFile when it changes. At most one of
	// them, and neither with Tokens.
	Token, TokenFile string
	TokenRefreshAt   float64       // fraction of exp − iat; default 0.8
	TokenRetryMin    time.Duration // first retry of a failed refresh, doubling; default 60s
	TokenRetryMax    time.Duration // default 1h
	TokenFilePoll    time.Duration // default 10s
	// Tokens, if set, hands out the bearer token instead (tests).
	Tokens ingest.TokenSource

	SensorRef string // default "core.timer"
	NodeName  string // default the host name

	// HTTPAddr is where /metrics, /healthz, /readyz, /v1/status and /v1/dead-letters are
	// served; "" serves nothing. Port 0 picks a free port (see HTTPAddr()).
	HTTPAddr string
	// HTTPTokenFile, if set, names the file of a bearer token the operator
	// endpoints (/v1/...) want; /metrics, /healthz and /readyz stay open.
	HTTPTokenFile string
	// HTTPConfigFile, if set, is a Prometheus exporter-toolkit web config
	// (TLS, client certificates, basic auth) for the HTTP server.
	HTTPConfigFile string
	// Pprof serves Go's profiles at /debug/pprof/, an operator endpoint.
	Pprof bool

	// Notify, if set, is told the node's state in systemd's notify protocol
	// (sd_notify(3); SystemdNotifier makes it): READY=1 once /readyz would
	// answer 200, STATUS= lines, STOPPING=1 when shutdown begins, and
	// WATCHDOG=1 every Watchdog/2 while the scheduler engine's loop is alive
	// (sdnotify.go). Watchdog is the unit's WatchdogSec; 0 sends no WATCHDOG=1.
	Notify   func(state string) error
	Watchdog time.Duration

	// Lifecycle delivers rule lifecycle messages in process (timerd dev
	// without a broker). At most one of Lifecycle and MQ; with neither,
	// rules come from reconcile (and StartupRules) only.
	Lifecycle <-chan attune.Message
	// MQ, if set, consumes the node's durable lifecycle queue on RabbitMQ.
	// Queue defaults to attune.QueueName(SensorRef, NodeName); Logger and
	// Registerer are the node's. The queue is declared (retried while the
	// broker is down) before the first reconcile; a message is acked only
	// after its change is committed.
	MQ *ingest.ConsumerConfig
	// IntakeBatch bounds the lifecycle messages applied in one store
	// transaction; default 256. 1 commits each message on its own.
	IntakeBatch int
	// StartupRules are applied at start, before the first reconcile
	// (Attune's ATTUNE_SENSOR_TRIGGERS); the reconcile then has the last
	// word.
	StartupRules []attune.RemoteRule

	// Cluster, if set, makes the node one of a cluster: it joins its peers
	// (see cluster.Config) and fires only the rules it owns, keeping the
	// whole catalogue in its store. NodeName, Logger and Registerer default
	// to the node's. nil: a single node that owns every rule.
	Cluster *cluster.Config

	// DeliveryBudget is the most event POSTs in flight to the API from the
	// whole cluster; the node's ceiling is it over the live members of its
	// view (ingest.DeliveryConfig.Budget). Default 512.
	DeliveryBudget int
	// Workers, if set, also caps this node's POSTs in flight (TIMERD_WORKERS,
	// deprecated). 0: no cap of its own.
	Workers           int
	ReconcileInterval time.Duration // default 5m; negative disables the periodic reconcile
	// ReconcilePageSize is the rules a reconcile asks the rules API for a
	// page; default ingest.DefaultPageSize (ingest.RulesClient.PageSize).
	ReconcilePageSize int
	ShutdownTimeout   time.Duration // bound on the outbox flush at shutdown, default 10s
	MisfireGrace      time.Duration // engine default grace, default 1m
	// RejectRetryWindow is how long a 403 or 404 from the events API is
	// retried before the event is a dead letter; default 10m.
	RejectRetryWindow time.Duration
	// DeadLetterRetention is how long dead letters are kept; default 7d,
	// negative keeps them forever.
	DeadLetterRetention time.Duration
	// CommitFailureLeaveAfter: a node of a cluster whose store has failed its commits
	// for this long steps out of the protocol, so that its peers take its partitions
	// over, and comes back as a new incarnation once a probe commit succeeds
	// (docs/operations.md, "When the disk fills"). Default 30s.
	CommitFailureLeaveAfter time.Duration
	// CatchUpRate is the most catch-up events per second from the whole
	// cluster, divided among the live members (ingest.DeliveryConfig.CatchUpRate);
	// 0: no rate. CatchUpShare is the fraction of the node's POSTs in flight
	// catch-up may take; 0: ingest.DefaultCatchUpShare.
	CatchUpRate, CatchUpShare float64

	Logger   *slog.Logger
	Registry *prometheus.Registry // nil: a registry of the node's own; Close (or a failed New) unregisters the node's metrics
	// Now is the clock of the node's policy: schedules, rule versions,
	// dead-letter retention, how long commits have failed. Time spent (logs,
	// metrics) and the bounds of shutdown's waits read the real clock, as
	// the contexts they go with do; leases read the boot clock (bootclock.go).
	Now func() time.Time // nil: time.Now
}

func (c *Config) setDefaults() {
	if c.SensorRef == "" {
		c.SensorRef = "core.timer"
	}
	if c.NodeName == "" {
		c.NodeName, _ = os.Hostname()
	}
	if c.IntakeBatch == 0 {
		c.IntakeBatch = 256
	}
	if c.ReconcileInterval == 0 {
		c.ReconcileInterval = 5 * time.Minute
	}
	if c.ShutdownTimeout == 0 {
		c.ShutdownTimeout = 10 * time.Second
	}
	if c.DeadLetterRetention == 0 {
		c.DeadLetterRetention = DefaultDeadLetterRetention
	}
	if c.CommitFailureLeaveAfter == 0 {
		c.CommitFailureLeaveAfter = DefaultCommitFailureLeaveAfter
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Registry == nil {
		c.Registry = prometheus.NewRegistry()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

// Validate names the first bad field.
func (c *Config) Validate() error {
	switch {
	case c.DataDir == "":
		return &SettingError{Setting: "TIMERD_DATA_DIR", Err: errors.New("required")}
	case c.APIURL == "":
		return errors.New("api url: required")
	case c.Workers < 0:
		return fmt.Errorf("workers: must be positive, got %d", c.Workers)
	case c.DeliveryBudget < 0:
		return fmt.Errorf("delivery budget: must be positive, got %d", c.DeliveryBudget)
	case c.RejectRetryWindow < 0:
		return fmt.Errorf("reject retry window: must not be negative, got %s", c.RejectRetryWindow)
	case c.ShutdownTimeout < 0:
		return fmt.Errorf("shutdown timeout: must not be negative, got %s", c.ShutdownTimeout)
	case c.CommitFailureLeaveAfter < 0:
		return fmt.Errorf("commit failure leave after: must not be negative, got %s", c.CommitFailureLeaveAfter)
	case c.Watchdog < 0:
		return fmt.Errorf("watchdog: must not be negative, got %s", c.Watchdog)
	case c.Tokens != nil && (c.Token != "" || c.TokenFile != ""):
		return errors.New("tokens: set Token or TokenFile, or Tokens, not both")
	case c.MQ != nil && c.Lifecycle != nil:
		return errors.New("lifecycle: set MQ or Lifecycle, not both")
	case c.IntakeBatch < 0 || c.IntakeBatch > 65535:
		return fmt.Errorf("intake batch: %d is out of range (1 .. 65535)", c.IntakeBatch)
	case c.ReconcilePageSize < 0 || c.ReconcilePageSize > ingest.MaxPageSize:
		return fmt.Errorf("reconcile page size: %d is out of range (1 .. %d)", c.ReconcilePageSize, ingest.MaxPageSize)
	}
	if c.HTTPTokenFile != "" {
		if _, err := ReadHTTPToken(c.HTTPTokenFile); err != nil {
			return fmt.Errorf("http token file: %w", err)
		}
	}
	if c.HTTPConfigFile != "" {
		if err := web.Validate(c.HTTPConfigFile); err != nil {
			return fmt.Errorf("http config file %s: %w", c.HTTPConfigFile, err)
		}
	}
	if c.Cluster != nil {
		if err := c.clusterConfig().Validate(); err != nil {
			return err
		}
	}
	return nil
}

// Node is one running timerd node.
type Node struct {
	cfg      Config
	log      *slog.Logger
	store    *store.Store
	engine   *scheduler.Engine
	delivery *ingest.Delivery
	rules    *ingest.RulesClient
	// applyChunk is the rules a reconcile applies a store transaction
	// (defaultApplyChunk; smaller in tests).
	applyChunk int
	tokens     *auth.Source // nil without Token or TokenFile
	ln         net.Listener
	metrics    *metrics
	missed     *missedMetrics // timerd_missed_slots_total (missed.go)
	manual     *manualMetrics // timerd_manual_events_total (backfill.go)
	// manualMu orders backfills and fires now (backfill.go); lastManual is the
	// time of the last fire now, whose key the next one's must not repeat.
	manualMu   sync.Mutex
	lastManual time.Time
	health     *storeHealth // whether the store takes commits (storehealth.go)
	ready      atomic.Bool  // intake: reconciled (and consuming)
	placed     atomic.Bool  // the node's share of the rules is in the engine
	invalid    invalidRules
	fired      firedLog // the last fires' lateness of the rules fired here (lateness.go)
	// phase is what the node is doing before it is first ready, and when it
	// stops: /readyz and systemd's STATUS= say it.
	phase atomic.Pointer[string]
	// stallLimit: the engine's heartbeat further behind makes /healthz fail
	// and stops the watchdog's pings (engineStallLimit; tests shorten it).
	stallLimit time.Duration
	notifier   *notifier // nil without Config.Notify
	// beforeCommit, if set, is called at the start of each commit of fires:
	// a test makes the engine stall in it.
	beforeCommit func()

	// registered is what the node's parts registered on cfg.Registry,
	// unregistered by Close, or when New fails.
	registered *metricset.Scope

	cl  *cluster.Cluster // nil without Config.Cluster
	drv *driver          // the fire-once protocol (member.go); nil without Config.Cluster
	// ownMu orders the engine changes of the protocol driver and of intake, so
	// that a rule is in the engine exactly when its partition is fired here.
	ownMu   sync.Mutex
	members membersCache

	consumer *ingest.Consumer // nil without Config.MQ
	batches  chan batchReq    // consumer → intake goroutine
	// queueWatch notices a queue that never delivers while reconciles find
	// changes (queuewatch.go); used by the intake goroutine.
	queueWatch *queueWatch

	closers   closers // what New took, for Close (lifecycle.go)
	closeOnce sync.Once
	closeErr  error
	closed    atomic.Bool // Close was called
	ran       atomic.Bool // Run was called
}

// New opens the store, binds the HTTP listener and starts gossip (in a
// cluster); Run starts the node, and Close releases them if Run is never
// called. A bad setting fails New with a *SettingError naming it.
func New(cfg Config) (_ *Node, err error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := auth.PrivateDir(cfg.DataDir, cfg.Logger); err != nil {
		return nil, &SettingError{Setting: "TIMERD_DATA_DIR", Err: fmt.Errorf("%q: %w", cfg.DataDir, err)}
	}
	n := &Node{cfg: cfg, log: cfg.Logger.With("component", "node"), batches: make(chan batchReq), stallLimit: engineStallLimit}
	n.setPhase("starting")
	n.notifier = newNotifier(n)
	// What is open when a later part fails is released here, last first.
	defer func() {
		if err == nil {
			return
		}
		if cerr := n.closers.close(); cerr != nil {
			err = errors.Join(err, cerr)
		}
	}()
	// Every part registers its metrics through reg; they are all unregistered
	// again, last, when a later part fails or by Close, so that the same
	// registry can take a new node. A clash is an error naming the metric.
	reg := metricset.NewScope(cfg.Registry)
	n.registered = reg
	n.closers.push(reg.UnregisterAll)
	if _, err := metricset.Register(reg,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	); err != nil {
		return nil, err
	}
	if n.metrics, err = newMetrics(reg, n); err != nil {
		return nil, err
	}
	if n.missed, err = newMissedMetrics(reg); err != nil {
		return nil, err
	}
	if n.manual, err = newManualMetrics(reg); err != nil {
		return nil, err
	}
	if n.health, err = newStoreHealth(reg, cfg.Now); err != nil {
		return nil, err
	}
	if n.queueWatch, err = newQueueWatch(reg); err != nil {
		return nil, err
	}

	tokens := cfg.Tokens
	src, err := newTokenSource(&cfg, reg)
	if err != nil {
		return nil, err
	}
	if src != nil { // not a nil *auth.Source in the interface
		n.tokens, tokens = src, src
	}

	st, err := store.Open(filepath.Join(cfg.DataDir, "node.db"), store.Options{MmapPopulate: true, Registerer: reg})
	if err != nil {
		return nil, err
	}
	n.store = st
	n.closers.push(st.Close)

	var retryMax time.Duration
	if cfg.Cluster != nil {
		// A commit refused for want of a lease is tried again soon after the
		// lease is back: a lapse is short (a pause, a partition healing).
		retryMax = time.Second
	}
	n.engine, err = scheduler.New(scheduler.Config{
		Commit:              n.commitRecorded, // n.commit, then lateness for describe
		Now:                 cfg.Now,
		DefaultMisfireGrace: cfg.MisfireGrace,
		RetryMax:            retryMax,
		// Every commit of fires costs an fsync and a message to the peers
		// whatever its size: at thousands of fires a second, taking 10 ms of
		// them at once cuts the node's CPU per event (docs/benchmarks.md) for
		// at most 10 ms of lateness.
		Coalesce:   fireCoalesce,
		Logger:     cfg.Logger.With("component", "scheduler"),
		Registerer: reg,
	})
	if err != nil {
		return nil, err
	}
	n.invalid.onInvalid = n.reportInvalid
	n.delivery, err = ingest.NewDelivery(ingest.DeliveryConfig{
		Store:      st,
		APIURL:     cfg.APIURL,
		Tokens:     tokens,
		Workers:    cfg.Workers,
		Budget:     cfg.DeliveryBudget,
		Members:    n.liveMembers,
		AckFailed:  n.health.record,
		Logger:     cfg.Logger,
		Registerer: reg,

		RejectRetryWindow: cfg.RejectRetryWindow,

		// Catch-up (an outage's backlog) is paced: on-time events keep
		// their share, and Attune sees the backlog at the set rate.
		CatchUpRate:  cfg.CatchUpRate,
		CatchUpShare: cfg.CatchUpShare,
	})
	if err != nil {
		return nil, err
	}
	n.rules = &ingest.RulesClient{APIURL: cfg.APIURL, Tokens: tokens, PageSize: cfg.ReconcilePageSize}
	n.applyChunk = defaultApplyChunk

	if cfg.MQ != nil {
		mq := *cfg.MQ
		if mq.Queue == "" {
			mq.Queue = attune.QueueName(cfg.SensorRef, cfg.NodeName)
		}
		if mq.Exchange == "" {
			mq.Exchange = attune.DefaultExchange
		}
		mq.Logger = cfg.Logger
		mq.Registerer = reg
		n.consumer, err = ingest.NewConsumer(mq)
		if err != nil {
			return nil, err
		}
		n.cfg.MQ = &mq
	}

	if cfg.HTTPAddr != "" {
		if n.ln, err = net.Listen("tcp", cfg.HTTPAddr); err != nil {
			return nil, &SettingError{Setting: "TIMERD_HTTP_ADDR", Err: err}
		}
		n.closers.push(closeListener(n.ln))
	}
	if cfg.Cluster != nil {
		// Last: it binds the gossip port and starts gossiping.
		cc := cfg.clusterConfig()
		if cc.HTTPAddr == "" {
			cc.HTTPAddr = n.HTTPAddr() // told to the peers: describe forwards to a rule's owner
		}
		if cfg.Cluster.Registerer == nil {
			cc.Registerer = reg // the node's, undone with the rest
		}
		if n.cl, err = cluster.New(cc); err != nil {
			return nil, gossipError(err)
		}
		n.closers.push(n.cl.Shutdown) // a no-op after Run's Leave
		// A new incarnation of the node starts here, before anything reads it.
		if n.drv, err = newDriver(n); err != nil {
			return nil, err
		}
	}
	return n, nil
}

// gossipError names the setting a failure to start gossip is the fault of.
func gossipError(err error) error {
	switch {
	case errors.Is(err, cluster.ErrAdvertise):
		return &SettingError{Setting: "TIMERD_ADVERTISE_ADDR", Err: err}
	case errors.Is(err, cluster.ErrBind):
		return &SettingError{Setting: "TIMERD_BIND_ADDR", Err: err}
	}
	return err
}

// liveMembers is the members of the node's view, itself included (1 alone,
// or before the protocol has a view): the delivery budget is shared by them.
func (n *Node) liveMembers() int {
	if n.drv == nil {
		return 1
	}
	s := n.drv.snap.Load()
	if s == nil {
		return 1
	}
	return max(1, len(s.status.View))
}

// setPhase notes what the node is doing (Node.phase).
func (n *Node) setPhase(what string) { n.phase.Store(&what) }

// HTTPAddr is the bound address of the node's HTTP endpoints, "" if none.
func (n *Node) HTTPAddr() string {
	if n.ln == nil {
		return ""
	}
	return n.ln.Addr().String()
}

// Run joins the cluster (if any), loads the node's rules, reconciles them
// with the API, then fires and delivers until ctx is done. It then stops
// intake, stops firing, leaves the cluster (handing its rules over with
// their watermarks), flushes the outbox within ShutdownTimeout and closes
// the store. What is not delivered stays in the outbox for the next start.
// Its error joins the failures of stopping (the HTTP server, gossip, the
// store). Run runs once: a second call, or one after Close, is ErrClosed.
func (n *Node) Run(ctx context.Context) (err error) {
	if n.closed.Load() || !n.ran.CompareAndSwap(false, true) {
		return ErrClosed
	}
	// Last: the HTTP port, gossip and the store, released as Close does.
	defer func() {
		if cerr := n.Close(); cerr != nil {
			err = errors.Join(err, cerr)
		}
	}()

	g, gctx := errgroup.WithContext(ctx)
	// Firing and delivery outlive intake: they stop in order at shutdown.
	engineCtx, stopEngine := context.WithCancel(context.WithoutCancel(ctx))
	ownCtx, stopOwn := context.WithCancel(context.WithoutCancel(ctx))
	deliveryCtx, stopDelivery := context.WithCancel(context.WithoutCancel(ctx))
	httpCtx, stopHTTP := context.WithCancel(context.WithoutCancel(ctx))
	// The token is refreshed until the outbox flush at shutdown is over.
	tokensCtx, stopTokens := context.WithCancel(context.WithoutCancel(ctx))
	defer stopEngine()
	defer stopOwn()
	defer stopDelivery()
	defer stopHTTP()
	defer stopTokens()

	// HTTP first: /readyz answers 503 while the node joins and loads.
	if n.ln != nil {
		g.Go(func() error { return n.serveHTTP(httpCtx) })
	}
	g.Go(func() error {
		n.health.run(httpCtx, n.store.Probe)
		return nil
	})
	if n.notifier != nil {
		g.Go(func() error {
			n.notifier.run(httpCtx)
			return nil
		})
	}
	abort := func(err error) error {
		n.notifyStopping("stopping before the node was ready")
		stopHTTP()
		return errors.Join(err, g.Wait())
	}
	if n.cl != nil {
		n.setPhase("joining the cluster")
		// Nothing fires before Join decides: joined (with the peers'
		// recent watermarks merged) or alone after the join timeout.
		res, err := n.cl.Join(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return abort(nil)
			}
			return abort(fmt.Errorf("join cluster: %w", err))
		}
		n.log.Info("cluster decided", "alone", res.Alone, "timed_out", res.TimedOut, "contacted", res.Contacted,
			"gossip", n.cl.LocalAddr())
	}
	n.setPhase("loading the store")
	loaded, err := n.load()
	if err != nil {
		return abort(err)
	}
	n.log.Info("store loaded", "path", n.store.Path(), "rules", loaded, "owned", n.engine.Len())
	n.setPhase("reconciling rules with the API")

	engineDone := make(chan struct{})
	ownDone := make(chan struct{})
	deliveryDone := make(chan struct{})
	intakeDone := make(chan struct{})
	if n.tokens != nil {
		g.Go(func() error { return n.tokens.Run(tokensCtx) })
	}
	g.Go(func() error {
		defer close(engineDone)
		return n.engine.Run(engineCtx)
	})
	g.Go(func() error {
		defer close(ownDone)
		if n.drv == nil {
			return nil
		}
		return n.drv.run(ownCtx)
	})
	g.Go(func() error {
		defer close(deliveryDone)
		return n.delivery.Run(deliveryCtx)
	})
	if n.cfg.DeadLetterRetention > 0 {
		g.Go(func() error { return n.expireDeadLetters(deliveryCtx) })
	}
	g.Go(func() error {
		defer close(intakeDone)
		return n.intake(gctx)
	})
	g.Go(func() error {
		<-gctx.Done()
		n.ready.Store(false)
		n.setPhase("stopping")
		n.log.Info("shutting down: stopping intake and firing, then flushing the outbox", "shutdown_timeout", n.cfg.ShutdownTimeout.String())
		n.notifyStopping("stopping: intake and firing stop")
		<-intakeDone // no rule change reaches the engine from here on
		stopEngine()
		<-engineDone // nothing fires from here on
		if n.drv != nil {
			n.notifyStatus("stopping: handing the partitions over")
			// The peers acquire this node's partitions from it (with its
			// watermarks), then its incarnation retires.
			leaveCtx, cancel := context.WithTimeout(context.Background(), n.cfg.ShutdownTimeout/2)
			n.drv.leave(leaveCtx, n.cfg.ShutdownTimeout/4)
			cancel()
			n.drv.settle(n.cfg.ShutdownTimeout / 4)
		}
		// Flush while delivery runs: stopping it first would cancel POSTs
		// in flight, which the receiver may have stored, and the flush
		// would send them again. In a cluster, what the flush cannot
		// deliver (the API down) is handed to the new holders.
		flushFor := n.cfg.ShutdownTimeout
		if n.drv != nil {
			flushFor /= 2
		}
		flushCtx, cancel := context.WithTimeout(context.Background(), flushFor)
		defer cancel()
		if depth, _ := n.store.OutboxLen(); depth > 0 {
			n.log.Info("flushing the outbox", "events", depth, "within", flushFor.String())
			n.notifyStatus(fmt.Sprintf("stopping: flushing %d events of the outbox (up to %s)", depth, flushFor))
		}
		flushErr := n.delivery.Flush(flushCtx)
		if flushErr != nil && n.drv != nil {
			stopDelivery()
			<-deliveryDone
			hoCtx, cancel := context.WithTimeout(context.Background(), n.cfg.ShutdownTimeout/2)
			handed, err := n.drv.handOver(hoCtx)
			cancel()
			n.log.Info("undelivered events handed to the members that hold their partitions", "events", handed, "err", err)
		}
		stopOwn()
		<-ownDone
		if n.cl != nil {
			n.notifyStatus("stopping: leaving the cluster")
			// Leaves memberlist.
			leaveCtx, cancel := context.WithTimeout(context.Background(), n.cfg.ShutdownTimeout)
			start := time.Now()
			if err := n.cl.Leave(leaveCtx); err != nil {
				n.log.Warn("cluster leave", "err", err)
			}
			cancel()
			n.log.Info("left the cluster", "took", time.Since(start).Round(time.Millisecond).String())
		}
		if left, _ := n.store.OutboxLen(); flushErr != nil && left > 0 {
			n.log.Warn("outbox not flushed at shutdown; kept for the next start", "events", left, "err", flushErr)
		}
		stopDelivery()
		<-deliveryDone
		stopTokens()
		stopHTTP()
		return nil
	})
	err = g.Wait()
	if errors.Is(err, context.Canceled) {
		err = nil
	}
	n.log.Info("node stopped")
	return err
}

// parseStored is the timer of a stored rule, nil when it does not parse: only
// valid rules are stored, so one that no longer does (a newer version wrote
// it) is reported and left unscheduled, not fatal.
func (n *Node) parseStored(r store.Rule) *scheduler.Timer {
	if r.Timer != nil { // the store's binary form of Parse's timer: no JSON to parse
		n.invalid.mark(r.ID, false)
		return r.Timer
	}
	t, err := scheduler.Parse(r.TriggerRef, r.Params, r.ID)
	n.invalid.mark(r.ID, err != nil)
	if err != nil {
		n.log.Error("stored rule does not parse; not scheduled until a valid change", "rule_id", r.ID, "err", err)
		return nil
	}
	return t
}

// invalidRules are the stored rules this node found not to parse (a change
// stopped them, or it loaded them so): timerd_rules_invalid.
type invalidRules struct {
	mu  sync.Mutex
	ids map[int64]struct{}
	// onInvalid, if set, is told of a rule found invalid that was not before
	// (the missed-fire log's invalid_schedule).
	onInvalid func(id int64)
}

func (v *invalidRules) mark(id int64, invalid bool) {
	v.mu.Lock()
	if !invalid {
		delete(v.ids, id)
		v.mu.Unlock()
		return
	}
	if v.ids == nil {
		v.ids = make(map[int64]struct{})
	}
	_, was := v.ids[id]
	v.ids[id] = struct{}{}
	v.mu.Unlock()
	if !was && v.onInvalid != nil {
		v.onInvalid(id)
	}
}

func (v *invalidRules) count() int {
	v.mu.Lock()
	defer v.mu.Unlock()
	return len(v.ids)
}

// load fills the engine from the store on a single node. In a cluster the
// engine gets the rules of each partition the node acquires (member.go).
func (n *Node) load() (int, error) {
	if n.cl != nil {
		return n.store.RuleCount()
	}
	// Straight from the store's scan into the engine: the store's Timer is one
	// scratch value that the engine copies what it keeps of (no Timer, no item
	// slice per rule).
	count, _ := n.store.RuleCount()
	loaded := 0
	err := n.engine.LoadFrom(count, func(add func(scheduler.Item)) error {
		return n.store.ForEachTimer(func(r store.Rule, wm store.Watermark) error {
			if t := n.parseStored(r); t != nil {
				add(scheduler.Item{ID: r.ID, Timer: t, Watermark: scheduler.Watermark(wm)})
				loaded++
			}
			return nil
		})
	})
	if err != nil {
		return 0, fmt.Errorf("load rules: %w", err)
	}
	n.placed.Store(true)
	return loaded, nil
}

// commit durably records fires: their watermarks and outbox entries in one
// transaction, then wakes delivery. In a cluster the fires are those of the
// protocol (docs/protocol.md §6): each rule's partition must be held and the
// lease valid before the commit, and the driver checks both again after it
// (Committed), before the fires are replicated and become deliverable.
func (n *Node) commit(fires []scheduler.Fire, missed []scheduler.Miss) error {
	if n.beforeCommit != nil {
		n.beforeCommit()
	}
	if n.drv != nil {
		refs, ready, err := n.commitFired(fires, missed)
		if err != nil || len(refs) == 0 {
			return err
		}
		if ready {
			// A node alone wrote them deliverable: the protocol has nothing to
			// replicate or decide (its Committed step would only say Deliverable).
			n.delivery.Notify()
			return nil
		}
		n.drv.committed <- refs // outside stepMu: the driver may be waiting for it
		return nil
	}
	recs := make([]store.FireRecord, 0, len(fires))
	for _, f := range fires {
		ev, err := attune.BuildEvent(f, n.cfg.SensorRef)
		if err != nil {
			return fmt.Errorf("build event of rule %d: %w", f.RuleID, err)
		}
		recs = append(recs, store.FireRecord{Watermark: store.Watermark{Slot: f.Slot, Count: f.Count}, Event: ev})
	}
	// The misses (usually none) ride in the fires' transaction.
	ms := missedRecords(missed)
	if _, err := n.store.CommitBatch(recs, ms); err != nil {
		n.health.record(err)
		return err
	}
	n.missed.count(ms)
	n.delivery.Notify()
	return nil
}

// commitFired is the commit of a clustered node: under the driver's stepMu, so that no
// step reads the watermarks between this lease check and this store commit.
// The misses ride in the same transaction, with those of fires decided meanwhile
// (duplicate_guard).
func (n *Node) commitFired(fires []scheduler.Fire, missed []scheduler.Miss) (refs []protocol.EventRef, ready bool, err error) {
	d := n.drv
	ms := missedRecords(missed)
	if len(ms) > 0 {
		// Reads the store: before stepMu, which the member's steps (heartbeats) wait for.
		d.refineOwnerChanging(ms)
	}
	d.stepMu.Lock()
	defer d.stepMu.Unlock()
	if d.offline.Load() {
		return nil, false, errStoreOffline
	}
	snap := d.snap.Load()
	now := bootNow()
	recs := make([]store.FireRecord, 0, len(fires))
	for _, f := range fires {
		if d.decidedMeanwhile(f.RuleID, f.Slot.UnixNano()) {
			// A verdict or a peer's record got there first (as the store checks its own).
			ms = append(ms, store.MissedSlot{RuleID: f.RuleID, From: f.Slot, To: f.Slot, Count: 1,
				Reason: string(scheduler.MissDuplicateGuard), DetectedAt: f.FiredAt, Detail: "decided_meanwhile"})
			continue
		}
		ev, err := attune.BuildEvent(f, n.cfg.SensorRef)
		if err != nil {
			return nil, false, fmt.Errorf("build event of rule %d: %w", f.RuleID, err)
		}
		e, ok := snap.mayFire(d.partitionOf(f.RuleID), now)
		if !ok {
			n.metrics.notFireable.Inc()
			return nil, false, errNotFireable
		}
		// A quorum of one (a node alone) needs nobody's ack: its fire is written
		// deliverable at once, without a second commit for MarkReady. The snapshot
		// is the member's current state: steps publish it under stepMu, held here.
		recs = append(recs, store.FireRecord{Watermark: store.Watermark{Slot: f.Slot, Count: f.Count}, Event: ev,
			Firer: snap.self, Epoch: e, Ready: snap.always})
	}
	if len(recs) == 0 && len(ms) == 0 {
		return nil, false, nil
	}
	refs, err = n.store.CommitBatch(recs, ms)
	n.health.record(err)
	if err == nil {
		n.missed.count(ms)
		if len(refs) < len(recs) {
			n.reportRefused(recs, refs) // the store's own duplicate guard
		}
	}
	return refs, snap.always, err
}

func (n *Node) serveHTTP(ctx context.Context) error {
	srv := &http.Server{
		Handler:           n.handler(),
		ReadHeaderTimeout: 10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute, // a scraper's keep-alive, not an idle socket for ever
		// The server's own complaints (a TLS handshake with a plain HTTP client)
		// go to the node's log, not to stderr unstructured.
		ErrorLog: slog.NewLogLogger(n.log.With("component", "http").Handler(), slog.LevelWarn),
	}
	errc := make(chan error, 1)
	go func() {
		// With HTTPConfigFile: TLS (and the rest of the exporter-toolkit web
		// config, as Prometheus exporters read it); without, plain HTTP.
		cfgFile := n.cfg.HTTPConfigFile
		errc <- web.Serve(n.ln, srv, &web.FlagConfig{WebConfigFile: &cfgFile}, n.log.With("component", "http"))
	}()
	select {
	case err := <-errc:
		return fmt.Errorf("node http: %w", err)
	case <-ctx.Done():
		shutCtx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if err := srv.Shutdown(shutCtx); err != nil {
			_ = srv.Close() // the requests still running are cut
			return fmt.Errorf("node http shutdown: %w", err)
		}
		return nil
	}
}
