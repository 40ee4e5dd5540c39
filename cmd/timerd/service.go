package main

// How the process meets its service manager: shutdown signals, and systemd's
// notify protocol for the agent.

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"

	"github.com/timerd/timerd/cmd/timerd/node"
)

// signalLog is the logger of the running command (the agent stores its own),
// for the lines shutdown signals write; nil: a plain line on stderr.
var signalLog atomic.Pointer[slog.Logger]

// shutdownContext is cancelled by the first of sigs, which starts a graceful
// shutdown. A second one during it calls exit at once with 128 + the signal's
// number, as a shell reports a process a signal ended (130 for Ctrl-C, 143 for
// SIGTERM): an operator who will not wait for the outbox flush or the leave
// need not reach for SIGKILL. What is not delivered stays in the outbox, and
// the store is crash-safe. stop releases the signals.
func shutdownContext(parent context.Context, exit func(code int), sigs ...os.Signal) (ctx context.Context, stop func()) {
	ctx, cancel := context.WithCancel(parent)
	c := make(chan os.Signal, 2)
	signal.Notify(c, sigs...)
	stopped := make(chan struct{})
	go func() {
		select {
		case sig := <-c:
			if log := signalLog.Load(); log != nil {
				log.Info("signal received: shutting down; a second one exits at once", "signal", sig.String())
			}
			cancel()
		case <-stopped:
			return
		}
		select {
		case sig := <-c:
			code := 1
			if s, ok := sig.(syscall.Signal); ok {
				code = 128 + int(s)
			}
			msg := "second signal: exiting at once without finishing the shutdown; what is not delivered stays in the outbox for the next start"
			if log := signalLog.Load(); log != nil {
				log.Error(msg, "signal", sig.String(), "exit_code", code)
			} else {
				fmt.Fprintf(os.Stderr, "timerd: %s: %s (exit status %d)\n", sig, msg, code)
			}
			exit(code)
		case <-stopped:
		}
	}()
	return ctx, func() {
		signal.Stop(c)
		close(stopped)
		cancel()
	}
}

// withSystemd has the node speak systemd's notify protocol when systemd started
// it with Type=notify (NOTIFY_SOCKET set): docs/deploy/systemd.
func withSystemd(nc *node.Config, log *slog.Logger) error {
	notify, watchdog, err := node.SystemdNotifier()
	if notify == nil {
		return err
	}
	nc.Notify, nc.Watchdog = notify, watchdog
	log.Info("systemd notify socket set: READY=1 once ready, STOPPING=1 at shutdown, WATCHDOG=1 while the engine runs",
		"watchdog", watchdog.String())
	return err
}
