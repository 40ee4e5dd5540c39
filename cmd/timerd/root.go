package main

import (
	"fmt"
	"io"
	"log/slog"
	"os"

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
	root.AddCommand(newRulesCmd())
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

// logFlags are the logging settings every long-running command takes,
// with the agent's variables, handling and schema (newLogger).
type logFlags struct {
	level  string
	format string
	env    *envFlags
}

// register defines --log-level and --log-format on cmd, bound to their
// variables in env (applied by the command before logger).
func (l *logFlags) register(cmd *cobra.Command, env *envFlags, defaultFormat string) {
	cmd.Flags().StringVar(&l.level, "log-level", "info", "log level: debug, info, warn or error")
	cmd.Flags().StringVar(&l.format, "log-format", defaultFormat, "log format: json or text")
	env.bind("log-level", "ATTUNE_LOG_LEVEL")
	env.bind("log-format", "TIMERD_LOG_FORMAT")
	l.env = env
}

// logger logs to w; a bad level or format is a usage error naming where it
// was given.
func (l *logFlags) logger(w io.Writer) (*slog.Logger, error) {
	level, err := parseLogLevel(l.level)
	if err != nil {
		return nil, usagef("%s: %w", l.env.name("log-level"), err)
	}
	format, err := parseLogFormat(l.format)
	if err != nil {
		return nil, usagef("%s: %w", l.env.name("log-format"), err)
	}
	return newLogger(w, level, format), nil
}

func envOr(name, def string) string {
	if v, ok := os.LookupEnv(name); ok && v != "" {
		return v
	}
	return def
}
