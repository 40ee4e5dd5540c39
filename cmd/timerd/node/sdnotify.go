package node

import (
	"context"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
)

// engineStallLimit is how long the scheduler engine's loop may be at one piece
// of work (taking the due slots, one commit) before the node counts it stuck:
// /healthz answers 503 and systemd's watchdog is no longer fed, so that the
// unit (or the pod) is restarted. Work takes milliseconds, a second or two on
// a slow disk; a commit that fails is not stuck (the engine waits between
// attempts), and neither is a full disk.
const engineStallLimit = 20 * time.Second

// notifyEvery is how often the node's readiness and status are looked at for
// the service manager: READY=1 follows /readyz within it.
const notifyEvery = 250 * time.Millisecond

// SystemdNotifier returns Config.Notify and Config.Watchdog for a process
// that systemd started with Type=notify (docs/deploy/systemd): a function that
// sends a state to $NOTIFY_SOCKET through go-systemd's daemon package, and the
// unit's WatchdogSec (WATCHDOG_USEC, when WATCHDOG_PID is unset or this
// process). Without NOTIFY_SOCKET it returns nil and 0: nothing is sent. An
// unreadable WATCHDOG_USEC is an error; the notify function is returned still.
func SystemdNotifier() (notify func(state string) error, watchdog time.Duration, err error) {
	if os.Getenv("NOTIFY_SOCKET") == "" {
		return nil, 0, nil
	}
	notify = func(state string) error {
		_, err := daemon.SdNotify(false, state)
		return err
	}
	watchdog, err = daemon.SdWatchdogEnabled(false)
	if err != nil {
		return notify, 0, fmt.Errorf("systemd watchdog: %w", err)
	}
	return notify, watchdog, nil
}

// engineBehind is how far the engine's heartbeat is behind, and whether that is
// past the stall limit.
func (n *Node) engineBehind() (time.Duration, bool) {
	behind := max(0, time.Since(n.engine.Heartbeat()))
	return behind, behind > n.stallLimit
}

// notifier tells the service manager (Config.Notify) the node's state, in
// systemd's notify protocol (sd_notify(3)): READY=1 once the node is ready
// (/readyz answers 200), STATUS= as the node starts, runs and stops,
// WATCHDOG=1 every half of Config.Watchdog from READY=1 on while the engine's
// loop is alive, and STOPPING=1 when shutdown begins, after which no WATCHDOG=1
// follows. A failed send is logged once; the node runs on.
type notifier struct {
	n        *Node
	send     func(string) error
	watchdog time.Duration

	mu       sync.Mutex // orders the sends: no WATCHDOG=1 before READY=1 or after STOPPING=1
	ready    bool       // READY=1 sent
	stopping bool       // STOPPING=1 sent
	status   string     // the last STATUS= sent
	stalled  bool       // the engine was found stuck: logged once per stall
	failed   bool       // a send failed: logged once
}

func newNotifier(n *Node) *notifier {
	if n.cfg.Notify == nil {
		return nil
	}
	return &notifier{n: n, send: n.cfg.Notify, watchdog: n.cfg.Watchdog}
}

// run sends READY=1, STATUS= and WATCHDOG=1 until ctx ends.
func (s *notifier) run(ctx context.Context) {
	poll := time.NewTicker(notifyEvery)
	defer poll.Stop()
	var feed <-chan time.Time
	if s.watchdog > 0 {
		// Half the timeout, as sd_watchdog_enabled(3) advises: one late ping is no restart.
		t := time.NewTicker(s.watchdog / 2)
		defer t.Stop()
		feed = t.C
	}
	s.update()
	for {
		select {
		case <-ctx.Done():
			return
		case <-poll.C:
			s.update()
		case <-feed:
			s.feedWatchdog()
		}
	}
}

// update sends READY=1 the first time the node is ready, and STATUS= when it
// changed.
func (s *notifier) update() {
	ready := s.n.isReady()
	status := s.n.serviceStatus(ready)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopping {
		return
	}
	var msg string
	if !s.ready && ready {
		s.ready = true
		msg = daemon.SdNotifyReady + "\n"
		s.n.log.Info("told systemd the node is ready (READY=1)")
	}
	if status != s.status {
		s.status = status
		msg += "STATUS=" + status
	}
	s.sendLocked(msg)
}

// feedWatchdog sends WATCHDOG=1 while the engine's loop is alive, once the node
// was ready and until it stops.
func (s *notifier) feedWatchdog() {
	behind, stuck := s.n.engineBehind()
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.ready || s.stopping {
		return
	}
	if stuck {
		if !s.stalled {
			s.stalled = true
			s.n.log.Error("the scheduler engine's loop is stuck: systemd's watchdog is no longer fed and will restart the node",
				"behind", behind.Round(time.Millisecond).String(), "limit", s.n.stallLimit.String(), "watchdog", s.watchdog.String())
		}
		return
	}
	if s.stalled {
		s.stalled = false
		s.n.log.Info("the scheduler engine's loop is alive again; feeding systemd's watchdog")
	}
	s.sendLocked(daemon.SdNotifyWatchdog)
}

// stop sends STOPPING=1 and what the node is doing now; nothing but STATUS=
// follows it.
func (s *notifier) stop(status string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopping {
		return
	}
	s.stopping = true
	s.status = status
	s.sendLocked(daemon.SdNotifyStopping + "\nSTATUS=" + status)
}

// say sends STATUS= during shutdown.
func (s *notifier) say(status string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if status != s.status {
		s.status = status
		s.sendLocked("STATUS=" + status)
	}
}

func (s *notifier) sendLocked(msg string) {
	if msg == "" {
		return
	}
	if err := s.send(msg); err != nil && !s.failed {
		s.failed = true
		s.n.log.Warn("cannot notify systemd (NOTIFY_SOCKET): it may never see the node ready, and its watchdog may restart it", "err", err)
	}
}

// serviceStatus is the one line systemctl status shows for the node.
func (n *Node) serviceStatus(ready bool) string {
	if !ready {
		return "not ready: " + n.notReadyReason()
	}
	s := fmt.Sprintf("ready: %d rules owned", n.engine.Len())
	if known, err := n.store.RuleCount(); err == nil {
		s += fmt.Sprintf(" of %d", known)
	}
	if n.drv != nil {
		var st Status
		n.quorumStatus(&st)
		s += fmt.Sprintf(", %d of %d members seen", st.SeenMembers, st.ExpectedMembers)
	}
	if depth, err := n.store.OutboxLen(); err == nil {
		s += fmt.Sprintf(", outbox %d", depth)
	}
	return s
}

// notify* are the notifier's calls from Run; without Config.Notify they do nothing.
func (n *Node) notifyStopping(status string) {
	if n.notifier != nil {
		n.notifier.stop(status)
	}
}

func (n *Node) notifyStatus(status string) {
	if n.notifier != nil {
		n.notifier.say(status)
	}
}
