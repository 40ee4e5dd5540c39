package node

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/timerd/timerd/test/testkit"
)

// notifications records what a node tells systemd, one state per entry
// (a message of several lines is several states).
type notifications struct {
	mu     sync.Mutex
	states []string
}

func (r *notifications) notify(msg string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	for line := range strings.SplitSeq(msg, "\n") {
		if line != "" {
			r.states = append(r.states, line)
		}
	}
	return nil
}

func (r *notifications) all() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.states)
}

func (r *notifications) count(state string) int {
	n := 0
	for _, s := range r.all() {
		if s == state {
			n++
		}
	}
	return n
}

// body is the status and body of a GET.
func body(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// A node whose engine stalls in a commit fails /healthz, saying so, and stops
// feeding systemd's watchdog; when the commit returns both come back. Before:
// READY=1 once ready, then WATCHDOG=1; after the stop STOPPING=1 and no
// WATCHDOG=1. A failing store does not fail /healthz (a restart makes no room).
func TestStuckEngineFailsHealthzAndStarvesWatchdog(t *testing.T) {
	sys := startAPI(t, t.TempDir())
	sys.createRule("r1", "core.intervaltimer", `{"interval":1}`)
	rec := &notifications{}
	n, err := New(Config{DataDir: t.TempDir(), APIURL: sys.apiURL, HTTPAddr: "127.0.0.1:0", NodeName: "test",
		ReconcileInterval: -1, Notify: rec.notify, Watchdog: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	n.stallLimit = 500 * time.Millisecond
	var stall atomic.Bool
	release := make(chan struct{})
	n.beforeCommit = func() {
		if stall.Load() {
			<-release
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done, stopped := make(chan error, 1), make(chan struct{})
	go func() {
		defer close(stopped)
		done <- n.Run(ctx)
	}()
	base := "http://" + n.HTTPAddr()
	var releaseOnce sync.Once
	unstall := func() { releaseOnce.Do(func() { close(release) }) }
	t.Cleanup(func() { // a failed test stops the node too
		unstall()
		cancel()
		<-stopped
	})

	testkit.Eventually(t, 10*time.Second, "READY=1 and two WATCHDOG=1", func() bool {
		return rec.count("READY=1") == 1 && rec.count("WATCHDOG=1") >= 2
	})
	if code, b := body(t, base+"/healthz"); code != http.StatusOK {
		t.Fatalf("/healthz of a running engine: %d %q, want 200", code, b)
	}

	// The store fails its commits (a full disk): not ready, still alive.
	n.health.record(errors.New("no space left on device"))
	if code, b := body(t, base+"/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(b, "the store cannot commit") {
		t.Errorf("/readyz with the store failing: %d %q, want 503 saying the store cannot commit", code, b)
	}
	if code, b := body(t, base+"/healthz"); code != http.StatusOK {
		t.Errorf("/healthz with the store failing: %d %q, want 200 (a restart makes no room)", code, b)
	}

	// The next commit does not return.
	stall.Store(true)
	var healthz string
	testkit.EventuallyWhy(t, 5*time.Second, "/healthz 503 with the engine stalled in a commit", func() (string, bool) {
		code, b := body(t, base+"/healthz")
		healthz = b
		return b, code == http.StatusServiceUnavailable
	})
	if !strings.Contains(healthz, "the scheduler engine's loop has been stuck") {
		t.Errorf("/healthz with the engine stalled says %q, want it to name the stuck engine loop", healthz)
	}
	if age := gaugeValue(t, n, "timerd_engine_heartbeat_age_seconds"); age < 0.5 {
		t.Errorf("timerd_engine_heartbeat_age_seconds with the engine stalled = %v, want ≥ 0.5", age)
	}
	time.Sleep(100 * time.Millisecond) // a ping decided just before the limit has gone out
	fed := rec.count("WATCHDOG=1")
	time.Sleep(300 * time.Millisecond) // six watchdog periods
	if now := rec.count("WATCHDOG=1"); now != fed {
		t.Errorf("WATCHDOG=1 sent %d more times with the engine stalled: the watchdog is still fed", now-fed)
	}

	unstall()
	testkit.Eventually(t, 5*time.Second, "/healthz 200 and WATCHDOG=1 again once the commit returned", func() bool {
		code, _ := body(t, base+"/healthz")
		return code == http.StatusOK && rec.count("WATCHDOG=1") > fed
	})

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("node did not stop within 20s")
	}
	states := rec.all()
	ready, stopping := slices.Index(states, "READY=1"), slices.Index(states, "STOPPING=1")
	firstPing, lastPing := slices.Index(states, "WATCHDOG=1"), -1
	for i, s := range states {
		if s == "WATCHDOG=1" {
			lastPing = i
		}
	}
	if ready < 0 || stopping < 0 || firstPing < ready || lastPing > stopping {
		t.Errorf("states %q: want READY=1, then WATCHDOG=1s, then STOPPING=1 with no WATCHDOG=1 after it", states)
	}
	if !slices.ContainsFunc(states, func(s string) bool { return strings.HasPrefix(s, "STATUS=ready: 1 rules owned of 1") }) {
		t.Errorf("states %q: no STATUS= line saying the node is ready with its rule", states)
	}
}

// gauge is the value of an unlabelled gauge of n.
// SystemdNotifier: nothing without NOTIFY_SOCKET; with it, a function that
// reaches the socket, and the watchdog of WATCHDOG_USEC when WATCHDOG_PID is
// unset or this process; a WATCHDOG_USEC that is no number is an error naming
// it, and the notify function is still given.
func TestSystemdNotifier(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()

	tests := []struct {
		name         string
		env          map[string]string
		wantNotify   bool
		wantWatchdog time.Duration
		wantErr      string
	}{
		{name: "no socket", env: map[string]string{"WATCHDOG_USEC": "30000000"}},
		{name: "socket, no watchdog", env: map[string]string{"NOTIFY_SOCKET": sock}, wantNotify: true},
		{name: "watchdog", env: map[string]string{"NOTIFY_SOCKET": sock, "WATCHDOG_USEC": "30000000"},
			wantNotify: true, wantWatchdog: 30 * time.Second},
		{name: "watchdog of this pid", env: map[string]string{"NOTIFY_SOCKET": sock, "WATCHDOG_USEC": "400000", "WATCHDOG_PID": strconv.Itoa(os.Getpid())},
			wantNotify: true, wantWatchdog: 400 * time.Millisecond},
		{name: "watchdog of another pid", env: map[string]string{"NOTIFY_SOCKET": sock, "WATCHDOG_USEC": "400000", "WATCHDOG_PID": "1"},
			wantNotify: true},
		{name: "watchdog not a number", env: map[string]string{"NOTIFY_SOCKET": sock, "WATCHDOG_USEC": "30s"},
			wantNotify: true, wantErr: "WATCHDOG_USEC"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, k := range []string{"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"} {
				t.Setenv(k, tt.env[k])
			}
			notify, watchdog, err := SystemdNotifier()
			if (notify != nil) != tt.wantNotify || watchdog != tt.wantWatchdog ||
				(tt.wantErr == "") != (err == nil) || err != nil && !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("SystemdNotifier() = notify %v, %v, %v; want notify %v, %v, an error naming %q",
					notify != nil, watchdog, err, tt.wantNotify, tt.wantWatchdog, tt.wantErr)
			}
			if notify == nil {
				return
			}
			if err := notify("STATUS=" + tt.name); err != nil {
				t.Fatalf("notify: %v", err)
			}
			_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
			buf := make([]byte, 256)
			n, err := conn.Read(buf)
			if err != nil || string(buf[:n]) != "STATUS="+tt.name {
				t.Errorf("the socket read %q, %v; want %q", buf[:n], err, "STATUS="+tt.name)
			}
		})
	}
}
