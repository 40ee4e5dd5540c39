package cluster

import (
	"context"
	"log"
	"log/slog"
	"strings"
)

// slogWriter carries memberlist's log lines ("[LEVEL] memberlist: msg") into slog at the
// matching level.
type slogWriter struct{ l *slog.Logger }

func newStdLogger(l *slog.Logger) *log.Logger { return log.New(slogWriter{l}, "", 0) }

func (w slogWriter) Write(p []byte) (int, error) {
	msg := strings.TrimSpace(string(p))
	level := slog.LevelInfo
	for _, lv := range []struct {
		prefix string
		level  slog.Level
	}{
		{"[DEBUG]", slog.LevelDebug}, {"[INFO]", slog.LevelInfo}, {"[WARN]", slog.LevelWarn},
		{"[ERR]", slog.LevelError}, {"[ERROR]", slog.LevelError},
	} {
		if rest, ok := strings.CutPrefix(msg, lv.prefix); ok {
			msg, level = strings.TrimSpace(rest), lv.level
			break
		}
	}
	msg = strings.TrimPrefix(msg, "memberlist: ")
	w.l.Log(context.Background(), level, msg)
	return len(p), nil
}
