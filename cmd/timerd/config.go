package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/exporter-toolkit/web"
	"github.com/spf13/pflag"
	"go.yaml.in/yaml/v3"

	"github.com/timerd/timerd/auth"
	"github.com/timerd/timerd/cluster"
	"github.com/timerd/timerd/cmd/timerd/node"
	"github.com/timerd/timerd/ingest"
	"github.com/timerd/timerd/ingest/attune"
	"github.com/timerd/timerd/ingest/pubsub"
	"github.com/timerd/timerd/scheduler"
)

// agentConfig is the configuration of `timerd agent` (docs/configuration.md):
// the node's own Config, set field by field from the settings, and what
// only the command uses. nodeConfig turns it into what node.New takes.
type agentConfig struct {
	// node.Config's fields are set as the settings name them, with two
	// differences nodeConfig resolves: ReconcileInterval 0 turns the periodic
	// reconcile off and DeadLetterRetention 0 keeps dead letters forever.
	// Its Cluster and MQ are nil here: Gossip and MQ below are the settings.
	node.Config

	// Gossip is the cluster (docs/configuration.md, "Cluster"). The agent
	// always runs it: with no Join it is alone at once and owns every rule.
	// Its NodeName is the node's.
	Gossip cluster.Config
	// GossipInsecure: a cluster may gossip unencrypted (TIMERD_GOSSIP_INSECURE).
	GossipInsecure bool

	// MQ is RabbitMQ (URL, Exchange, QueueExpires); no URL: no lifecycle
	// messages. The URL may carry a password: never printed.
	MQ ingest.ConsumerConfig

	LogLevel  slog.Level
	LogFormat string

	// UnknownKeys are stdin-config keys timerd does not know (ignored, as
	// Attune may send more than a timer sensor reads).
	UnknownKeys []string
	// ConfigFile is the --config file read, "" for none; UnknownFileKeys
	// are its keys timerd does not know (ignored with a warning, as on stdin).
	ConfigFile      string
	UnknownFileKeys []string
	// nameSetting names a setting by its environment name in a message, as
	// the configuration gave it (loadAgentConfig's name).
	nameSetting func(env string) string
	// Retired says, for each retired setting given, that it is ignored and
	// why; the agent logs each once at start.
	Retired []string
	// Deprecated says, for each deprecated setting given, what to use instead;
	// the agent logs each once at start.
	Deprecated []string
}

// nodeConfig is the configuration node.New takes, the node logging to log.
func (c *agentConfig) nodeConfig(log *slog.Logger) node.Config {
	nc := c.Config
	nc.Logger = log
	if nc.ReconcileInterval == 0 {
		nc.ReconcileInterval = -1 // the node's "off"
	}
	if nc.DeadLetterRetention == 0 {
		nc.DeadLetterRetention = -1 // the node's "forever"
	}
	if c.MQ.URL != "" {
		mq := c.MQ
		mq.Queue = attune.QueueName(c.SensorRef, c.NodeName)
		nc.MQ = &mq
	}
	gossip := c.Gossip
	nc.Cluster = &gossip
	return nc
}

// agentSetting is one setting: where it is read from and how it is parsed.
type agentSetting struct {
	env   string // environment variable
	key   string // key of the --stdin-config object
	flag  string // flag name, "" for none
	def   string // default, "" for none
	usage string
	set   func(c *agentConfig, v string) error // parses and checks v; the error omits the value when it is secret
	// structured: in the stdin config or a config file the value may be a
	// JSON array (a YAML list), handed to set as its JSON; any other setting
	// takes a string, number or boolean there.
	structured bool
	// retired, when set, says why the setting no longer does anything: it is
	// accepted with any value (an existing configuration still starts),
	// ignored, and hidden from the help.
	retired string
}

// maxCatchUpRate bounds TIMERD_CATCHUP_RATE: far above what one Attune takes.
const maxCatchUpRate = 1_000_000

// agentSettings lists every setting of `timerd agent`, in the order of
// docs/configuration.md.
var agentSettings = []agentSetting{
	{env: "ATTUNE_API_URL", key: "api_url", usage: "Attune's API, http(s); required", set: func(c *agentConfig, v string) error {
		u, err := checkHTTPURL(v)
		c.APIURL = u
		return err
	}},
	{env: "ATTUNE_API_TOKEN", key: "api_token", usage: "the node's API token (a sensor JWT); required unless ATTUNE_API_TOKEN_FILE", set: func(c *agentConfig, v string) error {
		v = strings.TrimSpace(v)
		if err := checkToken(v); err != nil {
			return err
		}
		c.Token = v
		return nil
	}},
	{env: "ATTUNE_API_TOKEN_FILE", key: "api_token_file", usage: "file holding the API token, reread when it changes", set: func(c *agentConfig, v string) error {
		f, err := os.Open(v)
		if err != nil {
			return fmt.Errorf("%q cannot be read: %w", v, unwrapPathErr(err))
		}
		f.Close()
		c.TokenFile = v
		return nil
	}},
	{env: "ATTUNE_SENSOR_REF", key: "sensor_ref", def: "core.timer", usage: "the sensor's ref: names the queue and every event", set: func(c *agentConfig, v string) error {
		if err := checkName(v, 128); err != nil {
			return err
		}
		c.SensorRef = v
		return nil
	}},
	{env: "ATTUNE_MQ_URL", key: "mq_url", usage: "RabbitMQ, amqp(s)://; without it rules follow the rules API only", set: func(c *agentConfig, v string) error {
		if err := checkMQURL(v); err != nil {
			return err
		}
		c.MQ.URL = v
		return nil
	}},
	{env: "ATTUNE_MQ_EXCHANGE", key: "mq_exchange", def: attune.DefaultExchange, usage: "the topic exchange rule lifecycle messages are published to", set: func(c *agentConfig, v string) error {
		if v == "" || len(v) > 255 || strings.ContainsFunc(v, func(r rune) bool { return r < ' ' || r == 0x7f }) {
			return fmt.Errorf("%q is not an exchange name (1 to 255 printable bytes)", truncateSetting(v))
		}
		c.MQ.Exchange = v
		return nil
	}},
	{env: "ATTUNE_LOG_LEVEL", key: "log_level", flag: "log-level", def: "info", usage: "debug, info, warn or error", set: func(c *agentConfig, v string) error {
		l, err := parseLogLevel(v)
		c.LogLevel = l
		return err
	}},
	{env: "ATTUNE_SENSOR_TRIGGERS", key: "sensor_triggers", structured: true, usage: `start-up rules, a JSON array of {"id","ref","trigger_ref","config"}`, set: func(c *agentConfig, v string) error {
		rs, err := parseSensorTriggers(v)
		c.StartupRules = rs
		return err
	}},
	{env: "TIMERD_DATA_DIR", key: "data_dir", flag: "data-dir", usage: "directory of the node's store (node.db); required", set: func(c *agentConfig, v string) error {
		if v == "" {
			return errors.New("is empty")
		}
		c.DataDir = v
		return nil
	}},
	{env: "TIMERD_HTTP_ADDR", key: "http_addr", flag: "http-addr", def: ":8470", usage: "listen address of /metrics, /healthz, /readyz, /v1/status and /v1/dead-letters", set: func(c *agentConfig, v string) error {
		if _, port, err := net.SplitHostPort(v); err != nil {
			return fmt.Errorf("%q is not host:port", truncateSetting(v))
		} else if p, err := strconv.Atoi(port); err != nil || p < 0 || p > 65535 {
			return fmt.Errorf("%q: port %q is not a number in 0..65535", truncateSetting(v), truncateSetting(port))
		}
		c.HTTPAddr = v
		return nil
	}},
	{env: "TIMERD_HTTP_TOKEN_FILE", key: "http_token_file", flag: "http-token-file", usage: "file of a bearer token (16 bytes or more) that /v1/status and /v1/dead-letters want; /metrics, /healthz and /readyz stay open (default: no token)", set: func(c *agentConfig, v string) error {
		if _, err := node.ReadHTTPToken(v); err != nil {
			return err // never quotes the token
		}
		c.HTTPTokenFile = v
		return nil
	}},
	{env: "TIMERD_HTTP_CONFIG_FILE", key: "http_config_file", flag: "http-config-file", usage: "Prometheus exporter-toolkit web config (TLS, client certificates) for the HTTP server (default: plain HTTP)", set: func(c *agentConfig, v string) error {
		if err := web.Validate(v); err != nil {
			return fmt.Errorf("%s: %w", v, err)
		}
		c.HTTPConfigFile = v
		return nil
	}},
	{env: "TIMERD_NODE_NAME", key: "node_name", flag: "node-name", usage: "this node's name, unique per sensor: names its queue (default: the host name)", set: func(c *agentConfig, v string) error {
		if err := checkName(v, 128); err != nil {
			return err
		}
		c.NodeName = v
		return nil
	}},
	{env: "TIMERD_BIND_ADDR", key: "bind_addr", flag: "bind-addr", def: cluster.DefaultBindAddr, usage: "host:port of the cluster gossip (UDP and TCP)", set: func(c *agentConfig, v string) error {
		if err := checkClusterField(cluster.Config{BindAddr: v}); err != nil {
			return err
		}
		c.Gossip.BindAddr = v
		return nil
	}},
	{env: "TIMERD_ADVERTISE_ADDR", key: "advertise_addr", flag: "advertise-addr", usage: "IP[:port] peers reach this node's gossip at (default: from the bind address)", set: func(c *agentConfig, v string) error {
		if err := checkClusterField(cluster.Config{AdvertiseAddr: v}); err != nil {
			return err
		}
		c.Gossip.AdvertiseAddr = v
		return nil
	}},
	{env: "TIMERD_JOIN", key: "join", flag: "join", structured: true, usage: "peers to join, comma-separated host[:port]; a DNS name joins every address it resolves to (none: run alone)", set: func(c *agentConfig, v string) error {
		var peers []string
		list := strings.Split(v, ",")
		if t := strings.TrimSpace(v); strings.HasPrefix(t, "[") { // a JSON array in the stdin config
			if err := json.Unmarshal([]byte(t), &list); err != nil {
				return errors.New("is not a JSON array of strings or a comma-separated list")
			}
		}
		for i, p := range list {
			p = strings.TrimSpace(p)
			if p == "" {
				if strings.TrimSpace(v) == "" {
					break // set empty: no peers
				}
				return fmt.Errorf("entry %d is empty", i)
			}
			peers = append(peers, p)
		}
		if err := checkClusterField(cluster.Config{Join: peers}); err != nil {
			return err
		}
		c.Gossip.Join = peers
		return nil
	}},
	{env: "TIMERD_EXPECT", key: "expect", flag: "expect", def: "1", usage: "expected number of nodes N: a node fires nothing unless it sees N/2+1 of them, itself included (1: no quorum, every node fires its share even alone)", set: func(c *agentConfig, v string) error {
		n, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil || n < 1 || n > cluster.MaxExpect {
			return fmt.Errorf("%q is not a whole number in 1..%d (the number of nodes)", truncateSetting(v), cluster.MaxExpect)
		}
		c.Gossip.Expect = n
		return nil
	}},
	{env: "TIMERD_REPLICAS", key: "replicas", flag: "replicas", def: "majority", usage: "stores that hold a fire before it is delivered, the firer's included, when fewer than a quorum: 2 or more, or majority (a quorum of TIMERD_EXPECT); the same on every node", set: func(c *agentConfig, v string) error {
		v = strings.TrimSpace(v)
		if v == "majority" {
			c.Gossip.Replicas = 0
			return nil
		}
		n, err := strconv.Atoi(v)
		if err != nil || n < 2 || n > cluster.MaxExpect {
			return fmt.Errorf("%q is neither majority nor a whole number in 2..%d (copies of each fire)", truncateSetting(v), cluster.MaxExpect)
		}
		c.Gossip.Replicas = n
		return nil
	}},
	{env: "TIMERD_JOIN_TIMEOUT", key: "join_timeout", flag: "join-timeout", def: cluster.DefaultJoinTimeout.String(), usage: "how long to try the peers at start before running alone (logged loudly)", set: func(c *agentConfig, v string) error {
		d, err := parseSettingDuration(v)
		if err == nil && (d <= 0 || d > time.Hour) {
			err = fmt.Errorf("%s is out of range (1ms .. 1h)", v)
		}
		c.Gossip.JoinTimeout = d
		return err
	}},
	{env: "TIMERD_GOSSIP_KEY", key: "gossip_key", flag: "gossip-key", usage: "base64 AES key (16, 24 or 32 bytes) encrypting gossip; every node needs the same (default: plain gossip)", set: func(c *agentConfig, v string) error {
		v = strings.TrimSpace(v)
		if err := checkClusterField(cluster.Config{GossipKey: v}); err != nil {
			return err // never quotes the key
		}
		c.Gossip.GossipKey = v
		return nil
	}},
	{env: "TIMERD_GOSSIP_KEYRING_FILE", key: "gossip_keyring_file", flag: "gossip-keyring-file", usage: "file of base64 gossip keys, one a line, the first encrypting: re-read every 5s, so a key is rotated without a restart (docs/security.md); instead of TIMERD_GOSSIP_KEY", set: func(c *agentConfig, v string) error {
		if err := checkClusterField(cluster.Config{GossipKeyringFile: v}); err != nil {
			return err // never quotes a key
		}
		c.Gossip.GossipKeyringFile = v
		return nil
	}},
	{env: "TIMERD_GOSSIP_INSECURE", key: "gossip_insecure", flag: "gossip-insecure", def: "false", usage: "true lets a cluster (TIMERD_JOIN, or TIMERD_EXPECT above 1) gossip unencrypted: anyone who reaches the gossip port can then change what the nodes fire", set: func(c *agentConfig, v string) error {
		b, err := strconv.ParseBool(strings.TrimSpace(v))
		if err != nil {
			return fmt.Errorf("%q is not true or false", truncateSetting(v))
		}
		c.GossipInsecure = b
		return nil
	}},
	{env: "TIMERD_SETTLE_DELAY", key: "settle_delay", flag: "settle-delay", usage: "no longer used; ignored",
		retired: "leases and acquisitions replaced it (docs/protocol.md)", set: func(*agentConfig, string) error { return nil }},
	{env: "TIMERD_QUEUE_EXPIRES", key: "queue_expires", flag: "queue-expires", def: "7d", usage: "x-expires of the node's queue: the broker drops it after this long unused (1s..24d)", set: func(c *agentConfig, v string) error {
		d, err := parseSettingDuration(v)
		if err == nil && (d < time.Second || d.Milliseconds() > 1<<31-1) {
			err = fmt.Errorf("%s is out of range (1s .. 24d)", v)
		}
		c.MQ.QueueExpires = d
		return err
	}},
	{env: "TIMERD_RECONCILE_INTERVAL", key: "reconcile_interval", flag: "reconcile-interval", def: "5m", usage: "how often rules are reconciled with the rules API; 0 only at start", set: func(c *agentConfig, v string) error {
		d, err := parseSettingDuration(v)
		if err == nil && d != 0 && d < time.Second {
			err = fmt.Errorf("%s is less than 1s (0 turns the periodic reconcile off)", v)
		}
		c.ReconcileInterval = d
		return err
	}},
	{env: "TIMERD_RECONCILE_PAGE_SIZE", key: "reconcile_page_size", flag: "reconcile-page-size", def: strconv.Itoa(ingest.DefaultPageSize), usage: "rules a reconcile asks the rules API for a page (1..10000); a server that serves fewer (Attune: 100) makes the node ask 100", set: func(c *agentConfig, v string) error {
		n, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil || n < 1 || n > ingest.MaxPageSize {
			return fmt.Errorf("%q is not a whole number in 1..%d", truncateSetting(v), ingest.MaxPageSize)
		}
		c.ReconcilePageSize = n
		return nil
	}},
	{env: "TIMERD_SHUTDOWN_TIMEOUT", key: "shutdown_timeout", flag: "shutdown-timeout", def: "10s", usage: "bound on delivering the outbox at shutdown; what is left stays for the next start", set: func(c *agentConfig, v string) error {
		d, err := parseSettingDuration(v)
		if err == nil && d <= 0 {
			err = fmt.Errorf("%s is not positive", v)
		}
		c.ShutdownTimeout = d
		return err
	}},
	{env: "TIMERD_COMMIT_FAILURE_LEAVE_AFTER", key: "commit_failure_leave_after", flag: "commit-failure-leave-after", def: node.DefaultCommitFailureLeaveAfter.String(), usage: "how long the store may fail its commits (a full disk) before the node steps out of the cluster so that its share fires elsewhere; it rejoins once a probe commit succeeds", set: func(c *agentConfig, v string) error {
		d, err := parseSettingDuration(v)
		if err == nil && (d <= 0 || d > 24*time.Hour) {
			err = fmt.Errorf("%s is out of range (1ms .. 24h)", v)
		}
		c.CommitFailureLeaveAfter = d
		return err
	}},
	{env: "TIMERD_DELIVERY_BUDGET", key: "delivery_budget", flag: "delivery-budget", def: strconv.Itoa(ingest.DefaultDeliveryBudget), usage: "the most event POSTs in flight to Attune from the whole cluster: each node's ceiling is it divided by the live members; below it delivery adapts to the backlog and to Attune's latency (1..65536)", set: func(c *agentConfig, v string) error {
		n, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil || n < 1 || n > 65536 {
			return fmt.Errorf("%q is not a whole number in 1..65536", truncateSetting(v))
		}
		c.DeliveryBudget = n
		return nil
	}},
	{env: "TIMERD_WORKERS", key: "workers", flag: "workers", usage: "deprecated: caps this node's event POSTs in flight below its share of TIMERD_DELIVERY_BUDGET (1..4096); unset: no cap of its own", set: func(c *agentConfig, v string) error {
		n, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil || n < 1 || n > 4096 {
			return fmt.Errorf("%q is not a whole number in 1..4096", truncateSetting(v))
		}
		c.Workers = n
		return nil
	}},
	{env: "TIMERD_CATCHUP_RATE", key: "catchup_rate", flag: "catchup-rate", def: "auto", usage: "the most catch-up events per second (slots more than 30s old: an outage's backlog): auto, each node at the rate it posted on-time events over the last minute (at least 50/s); a number over 0, for the whole cluster, divided among the live members (at most 1000000); or off, only TIMERD_CATCHUP_SHARE bounds them", set: func(c *agentConfig, v string) error {
		switch v = strings.TrimSpace(v); strings.ToLower(v) {
		case "auto":
			c.CatchUpRate = 0
			return nil
		case "off", "0":
			c.CatchUpRate = ingest.NoCatchUpRate
			return nil
		}
		r, err := strconv.ParseFloat(v, 64)
		if err != nil || !(r > 0 && r <= maxCatchUpRate) { // NaN fails both
			return fmt.Errorf("%q is not auto, off or a number of events per second over 0 and at most %d", truncateSetting(v), maxCatchUpRate)
		}
		c.CatchUpRate = r
		return nil
	}},
	{env: "TIMERD_CATCHUP_SHARE", key: "catchup_share", flag: "catchup-share", def: strconv.FormatFloat(ingest.DefaultCatchUpShare, 'g', -1, 64), usage: "the fraction of this node's event POSTs in flight that catch-up may take, the rest kept for on-time events (over 0, at most 1)", set: func(c *agentConfig, v string) error {
		f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
		if err != nil || !(f > 0 && f <= 1) {
			return fmt.Errorf("%q is not a fraction over 0 and at most 1 (e.g. 0.5)", truncateSetting(v))
		}
		c.CatchUpShare = f
		return nil
	}},
	{env: "TIMERD_PPROF", key: "pprof", flag: "pprof", def: "false", usage: "true serves Go's profiles at /debug/pprof/ on the HTTP address, behind TIMERD_HTTP_TOKEN_FILE's token when set", set: func(c *agentConfig, v string) error {
		b, err := strconv.ParseBool(strings.TrimSpace(v))
		if err != nil {
			return fmt.Errorf("%q is not true or false", truncateSetting(v))
		}
		c.Pprof = b
		return nil
	}},
	{env: "TIMERD_REJECT_RETRY_WINDOW", key: "reject_retry_window", flag: "reject-retry-window", def: "10m", usage: "how long an event answered 403 or 404 is retried, from its first such answer, before it is a dead letter (1s..7d)", set: func(c *agentConfig, v string) error {
		d, err := parseSettingDuration(v)
		if err == nil && (d < time.Second || d > 7*24*time.Hour) {
			err = fmt.Errorf("%s is out of range (1s .. 7d)", v)
		}
		c.RejectRetryWindow = d
		return err
	}},
	{env: "TIMERD_DEAD_LETTER_RETENTION", key: "dead_letter_retention", flag: "dead-letter-retention", def: "7d", usage: "dead letters older than this are deleted; 0 keeps them forever", set: func(c *agentConfig, v string) error {
		d, err := parseSettingDuration(v)
		if err == nil && d != 0 && d < time.Minute {
			err = fmt.Errorf("%s is less than 1m (0 keeps dead letters forever)", v)
		}
		c.DeadLetterRetention = d
		return err
	}},
	{env: "TIMERD_LOG_FORMAT", key: "log_format", flag: "log-format", def: "json", usage: "json or text", set: func(c *agentConfig, v string) error {
		f, err := parseLogFormat(v)
		c.LogFormat = f
		return err
	}},
}

// registerAgentFlags defines the flags of the settings that have one. Their
// defaults are shown in the help; only flags given on the command line
// override the environment, the stdin config or the config file.
func registerAgentFlags(fs *pflag.FlagSet) {
	for _, s := range agentSettings {
		if s.flag == "" {
			continue
		}
		fs.String(s.flag, s.def, s.usage+" (env "+s.env+")")
		if s.retired != "" {
			_ = fs.MarkHidden(s.flag) // defined just above: no error
		}
	}
	fs.Bool("stdin-config", false, "read the configuration as one JSON object from stdin instead of the environment")
	fs.String("config", "", "a YAML or JSON file of settings, keyed as the stdin config; the environment (or the stdin config) and flags override it (env "+configFileEnv+")")
}

// configFileEnv names the config file when --config is not given (not read
// with --stdin-config, which reads no environment).
const configFileEnv = "TIMERD_CONFIG_FILE"

// loadAgentConfig builds the configuration, lowest precedence first:
// defaults, then the config file (--config or TIMERD_CONFIG_FILE), then the
// stdin config (with --stdin-config) or the environment, then flags given
// on the command line. The first bad or missing setting is an error naming
// it and where it was given; no error holds a secret.
func loadAgentConfig(fs *pflag.FlagSet, lookupEnv func(string) (string, bool), stdin io.Reader) (*agentConfig, error) {
	c := &agentConfig{}
	for _, s := range agentSettings {
		if s.def != "" {
			if err := s.set(c, s.def); err != nil {
				return nil, fmt.Errorf("default of %s: %w", s.env, err) // a bug
			}
		}
	}
	stdinMode, _ := fs.GetBool("stdin-config")
	given := map[string]bool{}    // settings given by any source but the defaults
	fromFile := map[string]bool{} // settings whose value is the config file's
	path, pathSource := fs.Lookup("config").Value.String(), "--config"
	if !fs.Changed("config") && !stdinMode {
		path, _ = lookupEnv(configFileEnv)
		pathSource = configFileEnv
	}
	if path != "" {
		obj, err := readConfigFile(path, pathSource)
		if err != nil {
			return nil, err
		}
		c.ConfigFile = path
		set, unknown, err := applyObject(c, obj, func(key string) string { return path + ": " + key })
		if err != nil {
			return nil, err
		}
		c.UnknownFileKeys = unknown
		for _, env := range set {
			given[env], fromFile[env] = true, true
		}
	}
	if stdinMode {
		obj, err := readStdinConfig(stdin)
		if err != nil {
			return nil, err
		}
		set, unknown, err := applyObject(c, obj, func(key string) string { return fmt.Sprintf("stdin config %q", key) })
		if err != nil {
			return nil, err
		}
		c.UnknownKeys = unknown
		for _, env := range set {
			given[env], fromFile[env] = true, false
		}
	} else {
		for _, s := range agentSettings {
			v, ok := lookupEnv(s.env)
			if !ok || v == "" {
				continue
			}
			if err := s.set(c, v); err != nil {
				return nil, fmt.Errorf("%s: %w", s.env, err)
			}
			given[s.env], fromFile[s.env] = true, false
		}
	}
	for _, s := range agentSettings {
		if s.flag == "" || !fs.Changed(s.flag) {
			continue
		}
		v := fs.Lookup(s.flag).Value.String()
		if err := s.set(c, v); err != nil {
			return nil, fmt.Errorf("--%s: %w", s.flag, err)
		}
		given[s.env], fromFile[s.env] = true, false
	}

	// name names a setting in a message: where its value came from when
	// that was the config file, else every place it can be given.
	name := func(env string) string {
		if fromFile[env] {
			return path + ": " + settingKey(env)
		}
		return settingNameIn(env, stdinMode, path)
	}
	c.nameSetting = name
	for _, s := range agentSettings {
		if s.retired != "" && given[s.env] {
			c.Retired = append(c.Retired, fmt.Sprintf("%s is no longer used and is ignored: %s", name(s.env), s.retired))
		}
	}
	if given["TIMERD_WORKERS"] {
		c.Deprecated = append(c.Deprecated, fmt.Sprintf("%s is deprecated: delivery adapts the POSTs in flight by itself, "+
			"up to this node's share of TIMERD_DELIVERY_BUDGET; %d still caps them on this node (docs/configuration.md)", name("TIMERD_WORKERS"), c.Workers))
	}
	switch {
	case !given["ATTUNE_API_URL"]:
		return nil, fmt.Errorf("%s: required: Attune's API URL, http(s)://host[:port]", name("ATTUNE_API_URL"))
	case given["ATTUNE_API_TOKEN"] && given["ATTUNE_API_TOKEN_FILE"]:
		return nil, fmt.Errorf("%s: set it or %s, not both", name("ATTUNE_API_TOKEN_FILE"), name("ATTUNE_API_TOKEN"))
	case !given["ATTUNE_API_TOKEN"] && !given["ATTUNE_API_TOKEN_FILE"]:
		return nil, fmt.Errorf("%s: required (or %s): the node's sensor token", name("ATTUNE_API_TOKEN"), name("ATTUNE_API_TOKEN_FILE"))
	case !given["TIMERD_DATA_DIR"]:
		return nil, fmt.Errorf("%s: required: the directory of the node's store", name("TIMERD_DATA_DIR"))
	}
	if c.Token != "" {
		if err := node.CheckTokenExpiry(c.Token, c.DataDir, time.Now()); err != nil {
			return nil, fmt.Errorf("%s: %w", name("ATTUNE_API_TOKEN"), err)
		}
	}
	inCluster := len(c.Gossip.Join) > 0 || c.Gossip.Expect > 1
	switch {
	case given["TIMERD_GOSSIP_KEY"] && given["TIMERD_GOSSIP_KEYRING_FILE"]:
		return nil, fmt.Errorf("%s: set it or %s, not both", name("TIMERD_GOSSIP_KEYRING_FILE"), name("TIMERD_GOSSIP_KEY"))
	case inCluster && c.Gossip.GossipKey == "" && c.Gossip.GossipKeyringFile == "" && !c.GossipInsecure:
		return nil, fmt.Errorf("%s: required in a cluster (or %s): unencrypted gossip lets anyone who reaches the gossip port "+
			"change what the nodes fire; set %s=true to run so anyway", name("TIMERD_GOSSIP_KEY"), name("TIMERD_GOSSIP_KEYRING_FILE"),
			name("TIMERD_GOSSIP_INSECURE"))
	case !inCluster && !given["TIMERD_BIND_ADDR"]:
		// Alone, nobody needs to reach the gossip port.
		c.Gossip.BindAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(cluster.DefaultGossipPort))
	}
	if c.MQ.URL == "" && c.ReconcileInterval == 0 {
		return nil, fmt.Errorf("%s: 0 (no periodic reconcile) without ATTUNE_MQ_URL: the node would never see a rule change",
			name("TIMERD_RECONCILE_INTERVAL"))
	}
	if c.NodeName == "" {
		host, err := os.Hostname()
		if err != nil || checkName(host, 128) != nil {
			return nil, fmt.Errorf("%s: required: the host name %q cannot name a queue", name("TIMERD_NODE_NAME"), truncateSetting(host))
		}
		c.NodeName = host
	}
	if q := attune.QueueName(c.SensorRef, c.NodeName); len(q) > 255 {
		return nil, fmt.Errorf("%s: the queue name %q is longer than 255 bytes", name("TIMERD_NODE_NAME"), truncateSetting(q))
	}
	return c, nil
}

// applyObject sets the settings obj holds (the stdin config or a config
// file), naming each in an error with name(key); null counts as unset. It
// returns the settings it set (by their environment names) and the keys it
// does not know, sorted.
func applyObject(c *agentConfig, obj map[string]json.RawMessage, name func(key string) string) (set, unknown []string, err error) {
	for _, s := range agentSettings {
		raw, ok := obj[s.key]
		if !ok {
			continue
		}
		delete(obj, s.key)
		v, isNull, err := objectValue(raw, s.structured)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", name(s.key), err)
		}
		if isNull {
			continue
		}
		if err := s.set(c, v); err != nil {
			return nil, nil, fmt.Errorf("%s: %w", name(s.key), err)
		}
		set = append(set, s.env)
	}
	for k := range obj {
		unknown = append(unknown, truncateSetting(k))
	}
	slices.Sort(unknown)
	return set, unknown, nil
}

// settingName names a setting in a message: its environment name, or its
// stdin-config key when the configuration came from stdin, and its flag when
// it has one ("TIMERD_HTTP_ADDR (or --http-addr)").
func settingName(env string, stdinMode bool) string { return settingNameIn(env, stdinMode, "") }

// settingNameIn is settingName for a configuration that also read the
// config file file (none when ""): the file's key is one more place to give
// the setting ("TIMERD_DATA_DIR (or --data-dir, or data_dir in timerd.yaml)").
func settingNameIn(env string, stdinMode bool, file string) string {
	n, alt := env, []string{}
	if f := devFlags[env]; f != "" {
		alt = append(alt, "--"+f)
	}
	for _, s := range agentSettings {
		if s.env != env {
			continue
		}
		if stdinMode {
			n = fmt.Sprintf("stdin config %q", s.key)
		}
		if s.flag != "" {
			alt = append(alt, "--"+s.flag)
		}
		if file != "" {
			alt = append(alt, s.key+" in "+file)
		}
		break
	}
	if len(alt) > 0 {
		n += " (or " + strings.Join(alt, ", or ") + ")"
	}
	return n
}

// settingKey is the stdin-config (and config file) key of the setting env.
func settingKey(env string) string {
	for _, s := range agentSettings {
		if s.env == env {
			return s.key
		}
	}
	return env
}

// devFlags are the flags of the settings `timerd dev` has and the agent has
// not.
var devFlags = map[string]string{"TIMERD_API_ADDR": "api-addr"}

// settingUsageError turns a *node.SettingError in err into the usage error
// (exit status 2) that names the setting and its flag, as a bad setting is
// named at start; other errors are returned as they are.
func settingUsageError(err error) error {
	return namedSettingError(err, func(env string) string { return settingName(env, false) })
}

// settingUsageError is settingUsageError naming the setting where this
// configuration took it from (the config file's key, the stdin config's).
func (c *agentConfig) settingUsageError(err error) error {
	if c.nameSetting == nil {
		return settingUsageError(err)
	}
	return namedSettingError(err, c.nameSetting)
}

func namedSettingError(err error, name func(env string) string) error {
	var se *node.SettingError
	if !errors.As(err, &se) {
		return err
	}
	return usagef("%s: %w", name(se.Setting), se.Err)
}

// checkClusterField checks the one field set in cc as the cluster would,
// without the "cluster config: Field:" of its message (the caller names the
// setting). The other fields are valid defaults.
func checkClusterField(cc cluster.Config) error {
	if cc.NodeName == "" {
		cc.NodeName = "n" // the host name is checked elsewhere
	}
	err := cc.Validate()
	var fe *cluster.FieldError
	if errors.As(err, &fe) {
		return fe.Err
	}
	return err
}

// maxConfigBytes bounds what the stdin config and a config file may hold.
const maxConfigBytes = 16 << 20

// readStdinConfig reads exactly one JSON object.
func readStdinConfig(r io.Reader) (map[string]json.RawMessage, error) {
	if r == nil {
		return nil, errors.New("--stdin-config: no stdin")
	}
	b, err := io.ReadAll(io.LimitReader(r, maxConfigBytes))
	if err != nil {
		return nil, fmt.Errorf("--stdin-config: read stdin: %w", err)
	}
	return decodeJSONObject(b, "--stdin-config: stdin ")
}

// decodeJSONObject decodes b, exactly one JSON object; an error starts
// with what (a name and a space, or "name: ") and says where the JSON broke,
// never what it holds (it may hold the token).
func decodeJSONObject(b []byte, what string) (map[string]json.RawMessage, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	var obj map[string]json.RawMessage
	if err := dec.Decode(&obj); err != nil {
		var se *json.SyntaxError
		var te *json.UnmarshalTypeError
		switch {
		case errors.Is(err, io.EOF):
			return nil, errors.New(what + "is empty, want one JSON object")
		case errors.As(err, &se):
			return nil, fmt.Errorf("%sis not valid JSON (syntax error at byte %d)", what, se.Offset)
		case errors.As(err, &te):
			return nil, fmt.Errorf("%sis a JSON %s, want one JSON object", what, te.Value)
		case errors.Is(err, io.ErrUnexpectedEOF):
			return nil, errors.New(what + "ends inside the JSON object")
		}
		return nil, errors.New(what + "is not one JSON object")
	}
	if obj == nil {
		return nil, errors.New(what + "is null, want one JSON object")
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, errors.New(what + "has more after the JSON object, want exactly one")
	}
	return obj, nil
}

// readConfigFile reads the config file path (named by source, --config or
// TIMERD_CONFIG_FILE): JSON when its name ends in .json, YAML when in .yaml
// or .yml, else JSON when it starts with '{' and YAML otherwise. Its values
// come back as JSON, as the stdin config's: one reader of values for both.
// Errors name the file and where it broke, never what it holds.
func readConfigFile(path, source string) (map[string]json.RawMessage, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("%s: %q cannot be read: %w", source, truncateSetting(path), unwrapPathErr(err))
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxConfigBytes+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %q cannot be read: %w", source, truncateSetting(path), unwrapPathErr(err))
	}
	if len(b) > maxConfigBytes {
		return nil, fmt.Errorf("%s: is larger than %d MiB", path, maxConfigBytes>>20)
	}
	isJSON := bytes.HasPrefix(bytes.TrimSpace(b), []byte("{"))
	switch strings.ToLower(filepath.Ext(path)) {
	case ".json":
		isJSON = true
	case ".yaml", ".yml":
		isJSON = false
	}
	if isJSON {
		return decodeJSONObject(b, path+": ")
	}
	return decodeYAMLObject(b, path)
}

// decodeYAMLObject decodes b, one YAML mapping of settings (a file with no
// document, or only comments, sets nothing), each value turned into JSON.
func decodeYAMLObject(b []byte, path string) (map[string]json.RawMessage, error) {
	dec := yaml.NewDecoder(bytes.NewReader(b))
	var doc yaml.Node
	if err := dec.Decode(&doc); errors.Is(err, io.EOF) {
		return map[string]json.RawMessage{}, nil
	} else if err != nil {
		return nil, fmt.Errorf("%s: is not valid YAML: %s", path, strings.TrimPrefix(err.Error(), "yaml: "))
	}
	var more yaml.Node
	if err := dec.Decode(&more); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%s: has more than one YAML document, want one mapping of settings", path)
	}
	root := &doc
	if root.Kind == yaml.DocumentNode && len(root.Content) == 1 {
		root = root.Content[0]
	}
	switch {
	case root.Kind == yaml.ScalarNode && root.ShortTag() == "!!null":
		return map[string]json.RawMessage{}, nil
	case root.Kind != yaml.MappingNode:
		return nil, fmt.Errorf("%s: is a YAML %s, want a mapping of settings (key: value)", path, yamlKind(root))
	}
	obj := make(map[string]json.RawMessage, len(root.Content)/2)
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, v := root.Content[i], root.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			return nil, fmt.Errorf("%s: line %d: a key is a YAML %s, want a setting's name", path, k.Line, yamlKind(k))
		}
		key := k.Value
		if _, dup := obj[key]; dup {
			return nil, fmt.Errorf("%s: %s: appears twice (line %d)", path, truncateSetting(key), k.Line)
		}
		budget := maxYAMLNodes
		val, err := yamlValue(v, &budget)
		var raw []byte
		if err == nil {
			raw, err = json.Marshal(val)
		}
		if err != nil {
			// Never the value: it may be a secret.
			return nil, fmt.Errorf("%s: %s: line %d: is not a value timerd reads (a string, number, boolean or list)", path, truncateSetting(key), v.Line)
		}
		obj[key] = raw
	}
	return obj, nil
}

// maxYAMLNodes bounds the nodes one value may expand to through aliases.
const maxYAMLNodes = 100_000

// yamlValue is the value of n as JSON would hold it. A string, a timestamp
// or binary is the text written (a time keeps its spelling); numbers,
// booleans and null are YAML's; mapping keys must be scalars.
func yamlValue(n *yaml.Node, budget *int) (any, error) {
	if *budget--; *budget < 0 {
		return nil, errors.New("too many nodes")
	}
	switch n.Kind {
	case yaml.AliasNode:
		return yamlValue(n.Alias, budget)
	case yaml.SequenceNode:
		list := make([]any, 0, len(n.Content))
		for _, e := range n.Content {
			v, err := yamlValue(e, budget)
			if err != nil {
				return nil, err
			}
			list = append(list, v)
		}
		return list, nil
	case yaml.MappingNode:
		m := make(map[string]any, len(n.Content)/2)
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Kind != yaml.ScalarNode {
				return nil, errors.New("a mapping key is not a scalar")
			}
			v, err := yamlValue(n.Content[i+1], budget)
			if err != nil {
				return nil, err
			}
			m[n.Content[i].Value] = v
		}
		return m, nil
	case yaml.ScalarNode:
		switch n.ShortTag() {
		case "!!str", "!!timestamp", "!!binary":
			return n.Value, nil
		case "!!null":
			return nil, nil
		}
		var v any
		if err := n.Decode(&v); err != nil {
			return nil, err
		}
		return v, nil
	}
	return nil, errors.New("not a value")
}

// yamlKind names a node's kind in a message.
func yamlKind(n *yaml.Node) string {
	switch n.Kind {
	case yaml.SequenceNode:
		return "list"
	case yaml.MappingNode:
		return "mapping"
	case yaml.AliasNode:
		return "alias"
	}
	return "scalar"
}

// objectValue turns a value of the stdin config or a config file into the
// text a setting parses: a string as it is, a number or boolean as written,
// and, for a structured setting only, an array as its JSON. No setting
// takes an object.
func objectValue(raw json.RawMessage, structured bool) (v string, isNull bool, err error) {
	raw = bytes.TrimSpace(raw)
	switch {
	case len(raw) == 0 || string(raw) == "null":
		return "", true, nil
	case raw[0] == '"':
		if err := json.Unmarshal(raw, &v); err != nil {
			return "", false, errors.New("is not a valid JSON string")
		}
		return v, false, nil
	case !structured && raw[0] == '[':
		return "", false, errors.New("is a list, want a string, number or boolean")
	case raw[0] == '{' && structured:
		return "", false, errors.New("is an object (a mapping), want a list")
	case raw[0] == '{':
		return "", false, errors.New("is an object (a mapping), want a string, number or boolean")
	}
	return string(raw), false, nil
}

// checkHTTPURL returns u without a trailing slash if it is an absolute
// http(s) URL with a host.
func checkHTTPURL(v string) (string, error) {
	u, err := url.Parse(v)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", fmt.Errorf("%q is not an http(s) URL", redactURL(v))
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return "", fmt.Errorf("%q: want no query or fragment", redactURL(v))
	}
	return strings.TrimRight(v, "/"), nil
}

// checkMQURL checks an amqp(s) URL without echoing it: it may carry a
// password.
func checkMQURL(v string) error {
	u, err := url.Parse(v)
	if err != nil {
		return errors.New("is not a URL")
	}
	if u.Scheme != "amqp" && u.Scheme != "amqps" {
		return fmt.Errorf("scheme %q is not amqp or amqps", truncateSetting(u.Scheme))
	}
	err = pubsub.ValidateURL(v)
	var ue *pubsub.URLError
	if errors.As(err, &ue) {
		return ue.Err // without "mq: URL:": the caller names the setting
	}
	return err
}

// checkToken checks that v looks like a usable JWT, with exp and iat (its
// expiry is node.CheckTokenExpiry's, which knows the data dir). Errors never
// contain the token.
func checkToken(v string) error {
	if v == "" {
		return errors.New("is empty")
	}
	claims, err := auth.ParseUnverified(v)
	if err != nil {
		return errors.New("is not a JWT")
	}
	exp := claims.ExpiresAtTime()
	switch {
	case exp.IsZero():
		return errors.New("the token has no exp claim")
	case claims.IssuedAt == nil:
		return errors.New("the token has no iat claim")
	}
	return nil
}

// checkName accepts refs and node names: letters, digits, '.', '_', '-',
// ':' and '@'.
func checkName(v string, max int) error {
	if v == "" {
		return errors.New("is empty")
	}
	if len(v) > max {
		return fmt.Errorf("%q is longer than %d bytes", truncateSetting(v), max)
	}
	if strings.ContainsFunc(v, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' ||
			r == '.' || r == '_' || r == '-' || r == ':' || r == '@')
	}) {
		return fmt.Errorf("%q may hold only letters, digits and . _ - : @", truncateSetting(v))
	}
	return nil
}

var durationDays = regexp.MustCompile(`^(\d+)d(.*)$`)

// parseSettingDuration reads a Go duration, optionally led by whole days
// (7d, 1d12h); a bare 0 is zero.
func parseSettingDuration(v string) (time.Duration, error) {
	v = strings.TrimSpace(v)
	if v == "0" {
		return 0, nil
	}
	var days time.Duration
	rest := v
	if m := durationDays.FindStringSubmatch(v); m != nil {
		n, err := strconv.ParseInt(m[1], 10, 64)
		if err != nil || n > 100_000 {
			return 0, fmt.Errorf("%q: too many days", truncateSetting(v))
		}
		days, rest = time.Duration(n)*24*time.Hour, m[2]
	}
	var d time.Duration
	if rest != "" {
		var err error
		if d, err = time.ParseDuration(rest); err != nil {
			return 0, fmt.Errorf("%q is not a duration like 90s, 5m, 12h or 7d", truncateSetting(v))
		}
	}
	if d < 0 {
		return 0, fmt.Errorf("%q is negative", truncateSetting(v))
	}
	return days + d, nil
}

// sensorTrigger is one element of ATTUNE_SENSOR_TRIGGERS.
type sensorTrigger struct {
	ID         json.Number     `json:"id"`
	Ref        string          `json:"ref"`
	TriggerRef string          `json:"trigger_ref"`
	Config     json.RawMessage `json:"config"`
}

// parseSensorTriggers reads Attune's start-up set: a JSON array of
// {"id","ref","trigger_ref","config"}, config being the trigger's
// parameters. Its shape must be right; a timer whose parameters do not
// parse is reported when it is applied, as a rule from the API would be.
func parseSensorTriggers(v string) ([]attune.RemoteRule, error) {
	var items []json.RawMessage
	if err := json.Unmarshal([]byte(v), &items); err != nil {
		return nil, errors.New("is not a JSON array")
	}
	out := make([]attune.RemoteRule, 0, len(items))
	seen := map[int64]bool{}
	for i, raw := range items {
		var st sensorTrigger
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.UseNumber()
		if err := dec.Decode(&st); err != nil || bytes.TrimSpace(raw)[0] != '{' {
			return nil, fmt.Errorf("[%d]: not an object with id, ref, trigger_ref and config", i)
		}
		id, err := strconv.ParseInt(st.ID.String(), 10, 64)
		if err != nil || id <= 0 {
			return nil, fmt.Errorf("[%d]: id %q is not a positive integer", i, truncateSetting(st.ID.String()))
		}
		if seen[id] {
			return nil, fmt.Errorf("[%d]: id %d appears twice", i, id)
		}
		seen[id] = true
		if st.TriggerRef == "" {
			return nil, fmt.Errorf("[%d] (id %d): trigger_ref is missing", i, id)
		}
		cfg := bytes.TrimSpace(st.Config)
		if string(cfg) == "null" {
			cfg = nil
		}
		if len(cfg) > 0 && cfg[0] != '{' {
			return nil, fmt.Errorf("[%d] (id %d): config is not a JSON object", i, id)
		}
		out = append(out, attune.RemoteRule{ID: id, Ref: st.Ref, TriggerRef: st.TriggerRef, Params: json.RawMessage(cfg)})
	}
	return out, nil
}

// redactURL hides a password in v (ingest.RedactURL) and truncates it for a message.
func redactURL(v string) string { return truncateSetting(ingest.RedactURL(v)) }

// truncateSetting shortens a setting's value for a message.
func truncateSetting(s string) string { return scheduler.Truncate(s, 80) }

func unwrapPathErr(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}
