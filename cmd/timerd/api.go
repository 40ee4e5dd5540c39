package main

import (
	"fmt"
	"log/slog"
	"net"
	"time"

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
		eventRetention         string
		cleanup                time.Duration
		logs                   logFlags
	)
	cmd := &cobra.Command{
		Use:   "api",
		Short: "Run the Attune-compatible API server (rules, events, health)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if dataDir == "" {
				return usagef("--data-dir: required")
			}
			retention, err := parseSettingDuration(eventRetention)
			if err != nil {
				return usagef("--event-retention: %w", err)
			}
			if keyFile == "" {
				return usagef("--key-file: required (env TIMERD_API_KEY_FILE): the HMAC key tokens are signed with; " +
					"create one with `timerd token keygen --out FILE`")
			}
			log, err := logs.logger()
			if err != nil {
				return err
			}
			key, err := auth.LoadKey(keyFile, log)
			if err != nil {
				return usagef("--key-file: %w", err)
			}
			reg := prometheus.NewRegistry()
			if _, err := metricset.Register(reg, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})); err != nil {
				return err
			}
			cfg := apiserver.Config{
				DataDir:                   dataDir,
				SigningKey:                key,
				RevocationCleanupInterval: cleanup,
				EventRetention:            retention,
				Logger:                    log,
				Registerer:                reg,
				Metrics:                   promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}),
			}
			if mqURL != "" {
				pub, err := newMQPublisher(mqURL, mqExchange, log, reg)
				if err != nil {
					return err
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
				return usagef("--addr %q: %w", addr, err)
			}
			log.Info("api listening", "url", "http://"+ln.Addr().String(), "data_dir", dataDir)
			if err := srv.Serve(cmd.Context(), ln); err != nil {
				return fmt.Errorf("api server: %w", err)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&addr, "addr", envOr("TIMERD_API_ADDR", "127.0.0.1:8080"), "listen address (env TIMERD_API_ADDR)")
	cmd.Flags().StringVar(&dataDir, "data-dir", envOr("TIMERD_API_DATA_DIR", ""), "directory of the API's database (env TIMERD_API_DATA_DIR)")
	cmd.Flags().StringVar(&keyFile, "key-file", envOr("TIMERD_API_KEY_FILE", ""), "file holding the HMAC key tokens are signed with; required (env TIMERD_API_KEY_FILE; see `timerd token keygen`)")
	cmd.Flags().StringVar(&mqURL, "mq-url", "", "RabbitMQ URL (amqp:// or amqps://): publish rule lifecycle messages there, as Attune's API does")
	cmd.Flags().StringVar(&mqExchange, "mq-exchange", attune.DefaultExchange, "topic exchange of the lifecycle messages (with --mq-url)")
	cmd.Flags().StringVar(&eventRetention, "event-retention", envOr("TIMERD_API_EVENT_RETENTION", "7d"), "delete events older than this (like 12h or 30d); 0 keeps them for ever (env TIMERD_API_EVENT_RETENTION)")
	cmd.Flags().DurationVar(&cleanup, "revocation-cleanup-interval", time.Hour, "how often revocations of expired tokens are deleted")
	logs.register(cmd, "json")
	return cmd
}

// newMQPublisher is the API's lifecycle publisher for --mq-url; errors
// name the flag and never echo the URL (it may hold a password).
func newMQPublisher(mqURL, exchange string, log *slog.Logger, reg prometheus.Registerer) (*pubsub.AMQPPublisher, error) {
	if err := checkMQFlags(mqURL, exchange); err != nil {
		return nil, err
	}
	pub, err := pubsub.NewPublisher(pubsub.PublisherConfig{URL: mqURL, Exchange: exchange, Logger: log, Registerer: reg})
	if err != nil {
		return nil, usagef("--mq-url: %w", err)
	}
	return pub, nil
}

// checkMQFlags checks --mq-url and --mq-exchange (of api and dev) without
// echoing the URL.
func checkMQFlags(mqURL, exchange string) error {
	if err := checkMQURL(mqURL); err != nil {
		return usagef("--mq-url: %w", err)
	}
	if exchange == "" {
		return usagef("--mq-exchange: is empty")
	}
	return nil
}
