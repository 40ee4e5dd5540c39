package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// logLines is a writer that hands each complete line to a channel.
type logLines struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	lines chan string
}

func (l *logLines) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf.Write(p)
	for {
		line, err := l.buf.ReadString('\n')
		if err != nil {
			l.buf.WriteString(line) // not a whole line yet
			return len(p), nil
		}
		select {
		case l.lines <- strings.TrimSuffix(line, "\n"):
		default: // nobody reads any more
		}
	}
}

// logsOf runs the command line in-process until want has seen a log line
// it takes (true), then stops it; it returns the lines seen.
func logsOf(t *testing.T, want func(map[string]any) bool, args ...string) []map[string]any {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w := &logLines{lines: make(chan string, 1000)}
	cmd := newRootCmd()
	cmd.SetOut(io.Discard)
	cmd.SetErr(w)
	cmd.SetArgs(args)
	done := make(chan error, 1)
	go func() { done <- cmd.ExecuteContext(ctx) }()
	var seen []map[string]any
	timeout := time.After(30 * time.Second)
	for {
		select {
		case line := <-w.lines:
			var rec map[string]any
			if err := json.Unmarshal([]byte(line), &rec); err != nil {
				t.Fatalf("timerd %s: log line %q is not JSON: %v", args[0], line, err)
			}
			seen = append(seen, rec)
			if !want(rec) {
				continue
			}
			cancel()
			if err := <-done; err != nil {
				t.Errorf("timerd %s: %v", args[0], err)
			}
			return seen
		case err := <-done:
			t.Fatalf("timerd %v ended (%v) before the log line wanted; lines: %v", args, err, seen)
		case <-timeout:
			t.Fatalf("timerd %v: no log line wanted in 30s; lines: %v", args, seen)
		}
	}
}

// checkSchema checks one log record against the agent's schema:
// timestamp (RFC 3339, UTC), level (lower case), message, and none of
// slog's own names for them.
func checkSchema(t *testing.T, cmd string, rec map[string]any) {
	t.Helper()
	ts, _ := rec["timestamp"].(string)
	if at, err := time.Parse(time.RFC3339Nano, ts); err != nil || !strings.HasSuffix(ts, "Z") || time.Since(at) > time.Minute {
		t.Errorf("timerd %s: timestamp %q is not a recent RFC 3339 UTC time: %v", cmd, ts, rec)
	}
	if l, _ := rec["level"].(string); l != "debug" && l != "info" && l != "warn" && l != "error" {
		t.Errorf("timerd %s: level %q is not debug, info, warn or error: %v", cmd, rec["level"], rec)
	}
	if m, _ := rec["message"].(string); m == "" {
		t.Errorf("timerd %s: no message: %v", cmd, rec)
	}
	for _, k := range []string{"time", "msg"} {
		if _, ok := rec[k]; ok {
			t.Errorf("timerd %s: key %q of slog's default schema: %v", cmd, k, rec)
		}
	}
}

// agent, api and dev log one schema, the agent's: their first lines parse
// as the same JSON, and the lines of a node name its sensor.
func TestLogSchemaIsOne(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	key := filepath.Join(dir, "signing.key")
	if _, code, err := run("token", "keygen", "--out", key); code != 0 {
		t.Fatalf("token keygen: %v", err)
	}
	first := func(map[string]any) bool { return true }
	nodeLine := func(rec map[string]any) bool { return rec["component"] == "node" }

	// The agent's API is a port nobody listens on: its first line comes
	// before the health check.
	cfg := writeConfig(t, "timerd.yaml", "api_url: http://127.0.0.1:1\napi_token: "+testToken(t, time.Hour)+
		"\ndata_dir: "+filepath.Join(dir, "agent")+"\nmq_url: amqp://127.0.0.1:1/\nhttp_addr: 127.0.0.1:0\nbind_addr: 127.0.0.1:0\nnode_name: n1\n")
	agent := logsOf(t, first, "agent", "--config", cfg)
	api := logsOf(t, first, "api", "--data-dir", filepath.Join(dir, "api"), "--key-file", key, "--addr", "127.0.0.1:0")
	dev := logsOf(t, nodeLine, "dev", "--data-dir", filepath.Join(dir, "dev"), "--api-addr", "127.0.0.1:0",
		"--http-addr", "127.0.0.1:0", "--log-format", "json")

	for cmd, rec := range map[string]map[string]any{"agent": agent[0], "api": api[0], "dev": dev[0]} {
		checkSchema(t, cmd, rec)
	}
	if agent[0]["sensor"] != "core.timer" {
		t.Errorf("timerd agent: first line %v has no sensor core.timer", agent[0])
	}
	if last := dev[len(dev)-1]; last["sensor"] != "core.timer" {
		t.Errorf("timerd dev: the node's line %v has no sensor core.timer", last)
	}
}

// --log-level and --log-format, and their variables, are read alike by the
// three commands; a bad value is exit status 2 naming where it was given.
func TestLogFlagsErrors(t *testing.T) {
	for _, c := range []string{"api", "dev"} {
		_, code, err := run(c, "--log-level", "loud")
		if code != 2 || err == nil || err.Error() != `--log-level: "loud" is not debug, info, warn or error` {
			t.Errorf("timerd %s --log-level loud = exit %d, %v; want exit 2 naming --log-level", c, code, err)
		}
		_, code, err = run(c, "--log-format", "xml")
		if code != 2 || err == nil || err.Error() != `--log-format: "xml" is not json or text` {
			t.Errorf("timerd %s --log-format xml = exit %d, %v; want exit 2 naming --log-format", c, code, err)
		}
	}
	_, err := loadFor(t, map[string]string{"ATTUNE_LOG_LEVEL": "loud"}, "")
	if err == nil || !strings.HasPrefix(err.Error(), `ATTUNE_LOG_LEVEL: "loud" is not debug, info, warn or error`) {
		t.Errorf("agent with ATTUNE_LOG_LEVEL=loud: %v; want the same message as api and dev", err)
	}
}

// The log level is read from ATTUNE_LOG_LEVEL by api and dev as by the
// agent, and a flag given wins over it.
func TestLogLevelEnv(t *testing.T) {
	t.Setenv("ATTUNE_LOG_LEVEL", "verbose")
	_, code, err := run("api", "--data-dir", t.TempDir())
	if code != 2 || err == nil || !strings.HasPrefix(err.Error(), `ATTUNE_LOG_LEVEL: "verbose"`) {
		t.Errorf("timerd api with ATTUNE_LOG_LEVEL=verbose = exit %d, %v; want exit 2 naming ATTUNE_LOG_LEVEL", code, err)
	}
	_, code, err = run("api", "--data-dir", t.TempDir(), "--log-level", "WARN")
	if code != 2 || err == nil || !strings.Contains(err.Error(), "--key-file") {
		t.Errorf("timerd api --log-level WARN with ATTUNE_LOG_LEVEL=verbose = exit %d, %v; want the flag to win (then --key-file missing)", code, err)
	}
}
