package main

import (
	"fmt"
	"log/slog"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/timerd/timerd/cmd/timerd/node"
)

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "timerd",
		Short:         "A horizontally sharded timer service for Attune's timer triggers",
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       node.VersionText(), // --version prints it as `timerd version` does
	}
	root.SetVersionTemplate("{{.Version}}")
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	root.AddCommand(newDevCmd(), newAPICmd(), newScheduleCmd(), newTokenCmd(), newVersionCmd(), newStatusCmd(), newDeadLettersCmd())
	root.AddCommand(newAgentCmd())
	root.AddCommand(newStoreCmd())
	return root
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print timerd's version, revision, build date and Go version",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) {
			fmt.Fprint(cmd.OutOrStdout(), node.VersionText())
		},
	}
}

// logFlags are the logging settings every long-running command takes.
type logFlags struct {
	level  string
	format string
}

func (l *logFlags) register(cmd *cobra.Command, defaultFormat string) {
	cmd.Flags().StringVar(&l.level, "log-level", envOr("ATTUNE_LOG_LEVEL", "info"), "log level: debug, info, warn, error (env ATTUNE_LOG_LEVEL)")
	cmd.Flags().StringVar(&l.format, "log-format", envOr("TIMERD_LOG_FORMAT", defaultFormat), "log format: json or text (env TIMERD_LOG_FORMAT)")
}

func (l *logFlags) logger() (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(l.level)); err != nil {
		return nil, usagef("log level: %q is not one of debug, info, warn, error", l.level)
	}
	opts := &slog.HandlerOptions{Level: level}
	switch strings.ToLower(l.format) {
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, opts)), nil
	case "text":
		return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
	}
	return nil, usagef("log format: %q is not json or text", l.format)
}

func envOr(name, def string) string {
	if v, ok := os.LookupEnv(name); ok && v != "" {
		return v
	}
	return def
}
