package main

import (
	"fmt"
	"net"
	"os"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"

	"github.com/timerd/timerd/auth"
	"github.com/timerd/timerd/ingest/apiserver"
	"github.com/timerd/timerd/ingest/attune"
	"github.com/timerd/timerd/ingest/pubsub"
	"github.com/timerd/timerd/scheduler/metricset"
)

func newAPICmd() *cobra.Command {
	var (
		addr, dataDir, keyFile string
		mqURL, mqExchange      string
		cleanup                string
		eventRetention         string
		loadRules              string
		logs                   logFlags
	)
	var env *envFlags
	cmd := &cobra.Command{
		Use:   "api",
		Short: "Run the Attune-compatible API server (rules, events, health)",
		Long: `api runs the Attune-compatible API server: rules, events, service accounts,
token refresh and health, in a bbolt database in --data-dir, tokens signed
with the key in --key-file.

Every flag has an environment variable (named in its help): a flag given on
the command line wins over its variable, and the variable over the default
(docs/configuration.md).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := env.apply(os.LookupEnv); err != nil {
				return err
			}
			log, err := logs.logger(cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			if dataDir == "" {
				return usagef("%s: required: the directory of the API's database", env.name("data-dir"))
			}
			retention, err := parseSettingDuration(eventRetention)
			if err == nil && retention < 0 {
				err = fmt.Errorf("%s is negative", eventRetention)
			}
			if err != nil {
				return usagef("%s: %w", env.name("event-retention"), err)
			}
			if keyFile == "" {
				return usagef("%s: required: the HMAC key tokens are signed with; "+
					"create one with: timerd token keygen --out FILE", env.name("key-file"))
			}
			interval, err := parseSettingDuration(cleanup)
			if err == nil && interval <= 0 {
				err = fmt.Errorf("%s is not positive", cleanup)
			}
			if err != nil {
				return usagef("%s: %w", env.name("revocation-cleanup-interval"), err)
			}
			key, err := auth.LoadKey(keyFile, log)
			if err != nil {
				return usagef("%s: %w", env.name("key-file"), err)
			}
			reg := prometheus.NewRegistry()
			if _, err := metricset.Register(reg, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})); err != nil {
				return err
			}
			cfg := apiserver.Config{
				DataDir:                   dataDir,
				SigningKey:                key,
				RevocationCleanupInterval: interval,
				EventRetention:            retention,
				Logger:                    log,
				Registerer:                reg,
				Metrics:                   promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}),
				LoadRulesFile:             loadRules,
			}
			if mqURL != "" {
				if err := checkMQFlags(mqURL, mqExchange, env.name("mq-url"), env.name("mq-exchange")); err != nil {
					return err
				}
				pub, err := pubsub.NewPublisher(pubsub.PublisherConfig{URL: mqURL, Exchange: mqExchange, Logger: log, Registerer: reg})
				if err != nil {
					return usagef("%s: %w", env.name("mq-url"), err)
				}
				defer pub.Close() // after the server: its last writes publish
				cfg.Publisher = pub
				log.Info("rule lifecycle messages published to rabbitmq", "exchange", mqExchange)
			}
			srv, err := apiserver.New(cfg)
			if err != nil {
				return err
			}
			defer srv.Close()
			ln, err := net.Listen("tcp", addr)
			if err != nil {
				return usagef("%s: %q: %w", env.name("addr"), addr, err)
			}
			log.Info("api listening", "url", "http://"+ln.Addr().String(), "data_dir", dataDir)
			if err := srv.Serve(cmd.Context(), ln); err != nil {
				return fmt.Errorf("api server: %w", err)
			}
			return nil
		},
	}
	fs := cmd.Flags()
	env = newEnvFlags(fs)
	fs.StringVar(&addr, "addr", "127.0.0.1:8080", "listen address")
	fs.StringVar(&dataDir, "data-dir", "", "directory of the API's database; required")
	// No back-quotes in a usage: pflag would take the quoted words for the value's name.
	fs.StringVar(&keyFile, "key-file", "", "file holding the HMAC key tokens are signed with, made by timerd token keygen; required")
	fs.StringVar(&mqURL, "mq-url", "", "RabbitMQ URL (amqp:// or amqps://): publish rule lifecycle messages there, as Attune's API does")
	fs.StringVar(&mqExchange, "mq-exchange", attune.DefaultExchange, "topic exchange of the lifecycle messages (with --mq-url)")
	fs.StringVar(&cleanup, "revocation-cleanup-interval", "1h", "how often revocations of expired tokens are deleted")
	fs.StringVar(&eventRetention, "event-retention", "7d", "delete events older than this (like 12h or 30d); 0 keeps them for ever")
	fs.StringVar(&loadRules, "load-rules", "", "before serving, add the rules of this file (one POST /api/v1/rules body a line; all or none; no lifecycle message: tests and operations)")
	for _, f := range []string{"addr", "data-dir", "key-file", "mq-url", "mq-exchange", "revocation-cleanup-interval", "event-retention", "load-rules"} {
		env.bind(f, apiEnv(f))
	}
	logs.register(cmd, env, "json")
	return cmd
}

// apiEnv is the environment variable of a flag of `timerd api`:
// TIMERD_API_ and the flag's name ("mq-url": TIMERD_API_MQ_URL).
func apiEnv(flag string) string {
	return "TIMERD_API_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// checkMQFlags checks --mq-url and --mq-exchange (of api and dev), named
// urlName and exchangeName in an error, without echoing the URL.
func checkMQFlags(mqURL, exchange, urlName, exchangeName string) error {
	if err := checkMQURL(mqURL); err != nil {
		return usagef("%s: %w", urlName, err)
	}
	if exchange == "" {
		return usagef("%s: is empty", exchangeName)
	}
	return nil
}
