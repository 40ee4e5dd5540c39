package main

import (
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"
)

// newLogger is the one log schema of timerd's long-running commands (agent,
// api, dev), the fields the sensor interface asks for: timestamp (UTC,
// RFC 3339 with nanoseconds), level (lower case), message, then the
// record's attributes. format is "json" (one object a line) or "text".
func newLogger(w io.Writer, level slog.Level, format string) *slog.Logger {
	opts := &slog.HandlerOptions{
		Level: level,
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if len(groups) > 0 {
				return a
			}
			switch a.Key {
			case slog.TimeKey:
				a.Key = "timestamp"
				a.Value = slog.StringValue(a.Value.Time().UTC().Format(time.RFC3339Nano))
			case slog.MessageKey:
				a.Key = "message"
			case slog.LevelKey:
				a.Value = slog.StringValue(strings.ToLower(a.Value.String()))
			}
			return a
		},
	}
	if format == "text" {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}

// agentLogger is the agent's logger: every line names the sensor.
func agentLogger(w io.Writer, cfg *agentConfig) *slog.Logger {
	return newLogger(w, cfg.LogLevel, cfg.LogFormat).With("sensor", cfg.SensorRef)
}

// parseLogLevel reads ATTUNE_LOG_LEVEL (--log-level): debug, info, warn or
// error, in any case.
func parseLogLevel(v string) (slog.Level, error) {
	switch strings.ToLower(strings.TrimSpace(v)) {
	case "debug":
		return slog.LevelDebug, nil
	case "info":
		return slog.LevelInfo, nil
	case "warn", "warning":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	}
	return slog.LevelInfo, fmt.Errorf("%q is not debug, info, warn or error", truncateSetting(v))
}

// parseLogFormat reads TIMERD_LOG_FORMAT (--log-format): json or text.
func parseLogFormat(v string) (string, error) {
	switch f := strings.ToLower(strings.TrimSpace(v)); f {
	case "json", "text":
		return f, nil
	}
	return "", fmt.Errorf("%q is not json or text", truncateSetting(v))
}
