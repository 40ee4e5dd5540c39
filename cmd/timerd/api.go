package main

import (
	"context"
	"fmt"
	"net"

	"github.com/spf13/cobra"

	"github.com/timerd/timerd/ingest/apiserver"
)

func newAPICmd() *cobra.Command {
	var (
		addr, dataDir string
		logs          logFlags
	)
	cmd := &cobra.Command{
		Use:   "api",
		Short: "Run the Attune-compatible API server (rules, events, health)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if dataDir == "" {
				return usagef("--data-dir: required")
			}
			log, err := logs.logger()
			if err != nil {
				return err
			}
			srv, err := apiserver.New(apiserver.Config{DataDir: dataDir, Logger: log.With("component", "api")})
			if err != nil {
				return err
			}
			defer srv.Close()
			ln, err := net.Listen("tcp", addr)
			if err != nil {
				return usagef("--addr %q: %w", addr, err)
			}
			log.Info("api listening", "url", "http://"+ln.Addr().String(), "data_dir", dataDir)
			return serveAPI(cmd.Context(), srv, ln)
		},
	}
	cmd.Flags().StringVar(&addr, "addr", envOr("TIMERD_API_ADDR", "127.0.0.1:8080"), "listen address (env TIMERD_API_ADDR)")
	cmd.Flags().StringVar(&dataDir, "data-dir", envOr("TIMERD_API_DATA_DIR", ""), "directory of the API's database (env TIMERD_API_DATA_DIR)")
	logs.register(cmd, "json")
	return cmd
}

func serveAPI(ctx context.Context, srv *apiserver.Server, ln net.Listener) error {
	if err := srv.Serve(ctx, ln); err != nil {
		return fmt.Errorf("api server: %w", err)
	}
	return nil
}
