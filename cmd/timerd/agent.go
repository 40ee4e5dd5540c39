package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/timerd/timerd/cmd/timerd/node"
	"github.com/timerd/timerd/ingest"
)

func newAgentCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run one timerd node against Attune: rules from RabbitMQ and the rules API, events to the API",
		Long: `agent runs one production node. It keeps its rules in a bbolt store in the
data directory, follows rule lifecycle messages on its own durable RabbitMQ
queue (sensor.{sensor_ref}.{node_name}), reconciles with Attune's rules API
at start and periodically, fires its timers and posts their events to
Attune's API with its sensor token.

Configuration (docs/configuration.md), lowest precedence first: defaults,
then a YAML or JSON file (--config FILE or TIMERD_CONFIG_FILE, keyed as the
stdin config), then the environment (ATTUNE_*, TIMERD_*) or, with
--stdin-config, one JSON object on stdin, then flags given on the command
line. A bad or missing setting stops start-up with exit status 2 and one
line naming it and where it was given.

Settings without a flag (environment variable / stdin-config key):
` + envOnlySettings(),
		Example: `  ATTUNE_API_URL=http://attune:8080 ATTUNE_API_TOKEN_FILE=/run/secrets/timerd.token \
  ATTUNE_MQ_URL=amqp://guest:guest@rabbitmq:5672/ timerd agent --data-dir /var/lib/timerd

  echo '{"api_url":"http://attune:8080","api_token":"…","mq_url":"amqp://rabbitmq/","data_dir":"/var/lib/timerd"}' |
    timerd agent --stdin-config

  ATTUNE_API_TOKEN_FILE=/run/secrets/timerd.token timerd agent --config /etc/timerd/timerd.yaml`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadAgentConfig(cmd.Flags(), os.LookupEnv, cmd.InOrStdin())
			if err != nil {
				return usageError{err}
			}
			return runAgent(cmd.Context(), cfg, agentLogger(cmd.ErrOrStderr(), cfg))
		},
	}
	registerAgentFlags(cmd.Flags())
	return cmd
}

// envOnlySettings lists the settings that have no flag, for --help.
func envOnlySettings() string {
	var b strings.Builder
	for _, s := range agentSettings {
		if s.flag == "" {
			fmt.Fprintf(&b, "  %-24s %-16s %s", s.env, s.key, s.usage)
			if s.def != "" {
				fmt.Fprintf(&b, " (default %q)", s.def)
			}
			b.WriteByte('\n')
		}
	}
	return strings.TrimRight(b.String(), "\n")
}

func runAgent(ctx context.Context, cfg *agentConfig, log *slog.Logger) error {
	if len(cfg.UnknownKeys) > 0 {
		log.Warn("stdin config: keys timerd does not know are ignored", "keys", cfg.UnknownKeys)
	}
	if len(cfg.UnknownFileKeys) > 0 {
		log.Warn("config file: keys timerd does not know are ignored", "file", cfg.ConfigFile, "keys", cfg.UnknownFileKeys)
	}
	for _, r := range cfg.Retired {
		log.Warn(r)
	}
	for _, r := range cfg.Deprecated {
		log.Warn(r)
	}
	signalLog.Store(log)
	nc := cfg.nodeConfig(log)
	if err := withSystemd(&nc, log); err != nil {
		log.Warn("systemd watchdog not used", "err", err)
	}
	log.Info("timerd agent starting", "version", node.Version(), "node", nc.NodeName, "api_url", redactURL(nc.APIURL),
		"data_dir", nc.DataDir, "startup_rules", len(nc.StartupRules))
	if nc.MQ != nil {
		log.Info("rule lifecycle from rabbitmq", "exchange", nc.MQ.Exchange, "queue", nc.MQ.Queue, "queue_expires", nc.MQ.QueueExpires.String())
	} else {
		log.Warn("ATTUNE_MQ_URL IS NOT SET: no rule lifecycle messages are consumed; rule changes reach this node "+
			"only through the reconcile with the rules API, every reconcile_interval", "reconcile_interval", cfg.ReconcileInterval.String())
	}

	gossip := nc.Cluster
	if cfg.GossipInsecure && gossip.GossipKey == "" && gossip.GossipKeyringFile == "" && (len(gossip.Join) > 0 || gossip.Expect > 1) {
		log.Warn("GOSSIP IS NOT ENCRYPTED (TIMERD_GOSSIP_INSECURE=true): anyone who reaches the gossip port can change "+
			"what this cluster fires; set TIMERD_GOSSIP_KEY or TIMERD_GOSSIP_KEYRING_FILE", "bind_addr", gossip.BindAddr)
	}
	switch {
	case len(gossip.Join) == 0 && gossip.Expect == 1:
		log.Info("no peers to join (TIMERD_JOIN): this node runs alone and owns every rule until a peer joins it",
			"bind_addr", gossip.BindAddr)
	case len(gossip.Join) == 0:
		log.Warn("no peers to join (TIMERD_JOIN): this node fires nothing until peers join it and make a quorum",
			"bind_addr", gossip.BindAddr, "expect", gossip.Expect, "quorum", gossip.Expect/2+1)
	default:
		log.Info("cluster", "join", gossip.Join, "expect", gossip.Expect, "quorum", gossip.Expect/2+1, "bind_addr", gossip.BindAddr,
			"join_timeout", gossip.JoinTimeout.String(), "gossip_encrypted", gossip.GossipKey != "" || gossip.GossipKeyringFile != "")
	}

	if err := ingest.WaitAPIHealthy(ctx, nc.APIURL, 5, 500*time.Millisecond, log); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("ATTUNE_API_URL: %w", err)
	}

	n, err := node.New(nc)
	if err != nil {
		return cfg.settingUsageError(err)
	}
	log.Info("node http listening", "http", "http://"+n.HTTPAddr(), "gossip", n.GossipAddr(),
		"endpoints", "/metrics /healthz /readyz /v1/status")
	return n.Run(ctx)
}
