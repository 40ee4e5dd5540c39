package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"

	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"

	"github.com/timerd/timerd/cmd/timerd/node"
	"github.com/timerd/timerd/ingest"
	"github.com/timerd/timerd/ingest/apiserver"
)

func newDevCmd() *cobra.Command {
	var (
		dataDir, apiAddr, httpAddr string
		logs                       logFlags
	)
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Run all of timerd in one process: the API, a lifecycle bus and one node",
		Long: `dev runs an Attune-compatible API, an in-process rule lifecycle bus and one
timerd node in one process. Rules created through the API are published on
the bus, scheduled by the node, and their fires are posted back to the API as
events. Started again on the same --data-dir, it carries on where it stopped.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := logs.logger()
			if err != nil {
				return err
			}
			if dataDir == "" {
				dataDir, err = os.MkdirTemp("", "timerd-dev-")
				if err != nil {
					return fmt.Errorf("create data dir: %w", err)
				}
			} else if err := os.MkdirAll(dataDir, 0o700); err != nil {
				return usagef("--data-dir %q: %w", dataDir, err)
			}

			bus := ingest.NewBus()
			lifecycle, unsubscribe := bus.Subscribe()
			defer unsubscribe()
			api, err := apiserver.New(apiserver.Config{DataDir: dataDir, Publisher: bus, Logger: log.With("component", "api")})
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
				Logger:    log,
			})
			if err != nil {
				apiLn.Close()
				if isAddrErr(err) {
					return usageError{err}
				}
				return err
			}
			printDevBanner(cmd.OutOrStdout(), dataDir, apiURL, "http://"+n.HTTPAddr())

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
	logs.register(cmd, "text")
	return cmd
}

func isAddrErr(err error) bool {
	var opErr *net.OpError
	return errors.As(err, &opErr)
}

func printDevBanner(w io.Writer, dataDir, apiURL, nodeURL string) {
	fmt.Fprintf(w, `timerd dev: the API, a lifecycle bus and one node in one process (Ctrl-C stops it)
  data dir:  %[1]s
  API:       %[2]s  (rules %[2]s/api/v1/rules, events %[2]s/api/v1/events, health %[2]s/health)
  node:      %[3]s  (%[3]s/metrics, %[3]s/healthz, %[3]s/readyz, %[3]s/v1/status)

Create a rule that fires every second:
  curl -s -X POST %[2]s/api/v1/rules -H 'Content-Type: application/json' -d '{"ref":"demo.every_second","trigger_ref":"core.intervaltimer","trigger_params":{"interval":1,"unit":"seconds"}}'
See its events:
  curl -s '%[2]s/api/v1/events?rule_ref=demo.every_second'
Start again with --data-dir %[1]s to carry on where it stopped.

`, dataDir, apiURL, nodeURL)
}
