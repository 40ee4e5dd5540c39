package main

import (
	"os"

	"github.com/spf13/cobra"

	"github.com/timerd/timerd/cmd/timerd/node"
	"github.com/timerd/timerd/ingest/attune"
)

func newDevCmd() *cobra.Command {
	var (
		cfg       node.DevConfig
		sensorTTL string
		logs      logFlags
	)
	var env *envFlags
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
			if err := env.apply(os.LookupEnv); err != nil {
				return err
			}
			var err error
			if cfg.Logger, err = logs.logger(cmd.ErrOrStderr()); err != nil {
				return err
			}
			if cfg.SensorTokenTTL, err = parseTTL(sensorTTL); err != nil {
				return usagef("--sensor-token-ttl: %w", err)
			}
			if cfg.MQURL != "" {
				if err := checkMQFlags(cfg.MQURL, cfg.MQExchange, "--mq-url", "--mq-exchange"); err != nil {
					return err
				}
			}
			d, err := node.NewDev(cfg)
			if err != nil {
				return settingUsageError(err)
			}
			d.WriteBanner(cmd.OutOrStdout())
			return d.Run(cmd.Context())
		},
	}
	env = newEnvFlags(cmd.Flags())
	cmd.Flags().StringVar(&cfg.DataDir, "data-dir", "", "data directory; default a fresh temporary directory")
	cmd.Flags().StringVar(&cfg.APIAddr, "api-addr", "127.0.0.1:8080", "listen address of the Attune-compatible API")
	cmd.Flags().StringVar(&cfg.HTTPAddr, "http-addr", "127.0.0.1:8470", "listen address of the node's metrics, health and status")
	env.bind("data-dir", "TIMERD_DATA_DIR")
	env.bind("api-addr", "TIMERD_API_ADDR")
	env.bind("http-addr", "TIMERD_HTTP_ADDR")
	cmd.Flags().StringVar(&sensorTTL, "sensor-token-ttl", "24h", "lifetime of the node's sensor token (90d, 1d12h, 2m); it is refreshed at 80 %")
	cmd.Flags().StringVar(&cfg.MQURL, "mq-url", "", "RabbitMQ URL (amqp:// or amqps://): carry rule lifecycle messages through the broker instead of the in-process bus")
	cmd.Flags().StringVar(&cfg.MQExchange, "mq-exchange", attune.DefaultExchange, "topic exchange of the lifecycle messages (with --mq-url)")
	logs.register(cmd, env, "text")
	return cmd
}
