package e2e

import (
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/timerd/timerd/test/testkit"
)

const unitDir = "../../docs/deploy/systemd"

// The unit file passes `systemd-analyze verify` with nothing to say (verify
// exits 0 on an unknown key or a bad value, and only prints it), its hardening
// scores as systemd's own services do (`systemd-analyze security`, exposure 2.0
// or less), it gives shutdown more time than timerd may take, and every
// setting it and the example env file name is one timerd reads.
func TestSystemdUnit(t *testing.T) {
	t.Parallel()
	raw, err := os.ReadFile(filepath.Join(unitDir, "timerd.service"))
	if err != nil {
		t.Fatal(err)
	}
	unit := string(raw)
	// verify wants ExecStart's binary to exist: the one under test stands in.
	const execStart = "ExecStart=/usr/local/bin/timerd agent\n"
	if !strings.Contains(unit, execStart) {
		t.Fatalf("the unit has no %q", execStart)
	}
	dir := t.TempDir()
	write := func(name, text string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	path := write("timerd.service", strings.Replace(unit, execStart, "ExecStart="+timerdBin+" agent\n", 1))
	analyze := func(args ...string) (string, error) {
		out, err := exec.Command("systemd-analyze", args...).CombinedOutput()
		return strings.TrimSpace(string(out)), err
	}
	if out, err := analyze("verify", path); err != nil || out != "" {
		t.Errorf("systemd-analyze verify timerd.service: %v\n%s", err, out)
	}
	// The check above sees what verify only prints.
	broken := write("broken.service", strings.Replace(strings.Replace(unit, execStart, "ExecStart="+timerdBin+" agent\n", 1),
		"WatchdogSec=30s", "WatchdogSec=thirty", 1))
	if out, err := analyze("verify", broken); err != nil || !strings.Contains(out, "thirty") {
		t.Errorf("systemd-analyze verify of a unit with a bad WatchdogSec= said %q (%v), want a line quoting the bad value", out, err)
	}
	if out, err := analyze("security", "--offline=yes", "--threshold=20", path); err != nil {
		t.Errorf("systemd-analyze security: exposure above 2.0 (%v):\n%s", err, out)
	}

	directive := func(name string) string {
		m := regexp.MustCompile(`(?m)^` + name + `=(.*)$`).FindStringSubmatch(unit)
		if m == nil {
			t.Fatalf("the unit has no %s=", name)
		}
		return m[1]
	}
	for name, want := range map[string]string{"Type": "notify", "NotifyAccess": "main", "DynamicUser": "yes",
		"StateDirectory": "timerd", "Restart": "on-failure", "EnvironmentFile": "/etc/timerd/timerd.env"} {
		if got := directive(name); got != want {
			t.Errorf("%s=%s, want %s", name, got, want)
		}
	}
	// Shutdown: the hand-over (3/4 of TIMERD_SHUTDOWN_TIMEOUT), the flush (1/2), the
	// hand-over of what it left (1/2), the gossip leave (5 s) and a few seconds more.
	stop, err := time.ParseDuration(directive("TimeoutStopSec"))
	if err != nil {
		t.Fatalf("TimeoutStopSec: %v", err)
	}
	const shutdownTimeout = 10 * time.Second // TIMERD_SHUTDOWN_TIMEOUT's default
	if stop < 3*shutdownTimeout+15*time.Second {
		t.Errorf("TimeoutStopSec=%s, want at least 3 × TIMERD_SHUTDOWN_TIMEOUT's 10s + 15s", stop)
	}
	if wd, err := time.ParseDuration(directive("WatchdogSec")); err != nil || wd < 10*time.Second {
		t.Errorf("WatchdogSec=%s (%v): want 10s or more, so that a slow commit is not a restart", directive("WatchdogSec"), err)
	}

	// Every setting named is one timerd reads (`timerd agent --help` lists them all).
	help := timerdOut(t, "agent", "--help")
	example, err := os.ReadFile(filepath.Join(unitDir, "timerd.env.example"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, m := range regexp.MustCompile(`(?m)^#?([A-Z][A-Z0-9_]*)=`).FindAllStringSubmatch(string(example), -1) {
		names = append(names, m[1])
	}
	for _, m := range regexp.MustCompile(`(?m)^Environment=([A-Z][A-Z0-9_]*)=`).FindAllStringSubmatch(unit, -1) {
		names = append(names, m[1])
	}
	if len(names) < 10 {
		t.Fatalf("found only %v in the unit and the example env file", names)
	}
	for _, name := range names {
		if name == "GOTRACEBACK" { // Go's runtime reads it
			continue
		}
		if !strings.Contains(help, "(env "+name+")") && !strings.Contains(help, "\n  "+name+" ") {
			t.Errorf("%s is set in the unit or the example env file, but timerd agent does not read it", name)
		}
	}
	// The token settings point at the unit's credentials.
	for setting, cred := range map[string]string{"ATTUNE_API_TOKEN_FILE": "attune-token", "TIMERD_HTTP_TOKEN_FILE": "http-token"} {
		if !strings.Contains(unit, "Environment="+setting+"=%d/"+cred+"\n") || !strings.Contains(unit, "LoadCredential="+cred+":") {
			t.Errorf("%s is not the credential %s of a LoadCredential=", setting, cred)
		}
	}
}

// notifySocket is the test's end of NOTIFY_SOCKET: it keeps every state an agent
// sends, one a line of each datagram.
type notifySocket struct {
	path string
	mu   sync.Mutex
	got  []string
}

func listenNotify(t *testing.T) *notifySocket {
	t.Helper()
	s := &notifySocket{path: filepath.Join(t.TempDir(), "notify.sock")}
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: s.path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return
			}
			s.mu.Lock()
			for line := range strings.SplitSeq(string(buf[:n]), "\n") {
				if line != "" {
					s.got = append(s.got, line)
				}
			}
			s.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		conn.Close()
		<-done
	})
	return s
}

func (s *notifySocket) states() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.got)
}

// kinds is states without the STATUS= lines.
func (s *notifySocket) kinds() []string {
	return slices.DeleteFunc(s.states(), func(st string) bool { return strings.HasPrefix(st, "STATUS=") })
}

// hangingFront passes requests on to the API, except that event POSTs hang
// while it is told to: an Attune that stopped answering.
type hangingFront struct {
	srv     *httptest.Server
	mu      sync.Mutex
	hanging bool
	release chan struct{}
}

func newHangingFront(t *testing.T, apiURL string) *hangingFront {
	t.Helper()
	target, err := url.Parse(apiURL)
	if err != nil {
		t.Fatal(err)
	}
	f := &hangingFront{release: make(chan struct{})}
	pass := httputil.NewSingleHostReverseProxy(target)
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		hang := f.hanging
		f.mu.Unlock()
		if hang && r.Method == http.MethodPost && r.URL.Path == "/api/v1/events" {
			select {
			case <-f.release:
			case <-r.Context().Done():
			}
			http.Error(w, "gone", http.StatusServiceUnavailable)
			return
		}
		pass.ServeHTTP(w, r)
	}))
	t.Cleanup(f.srv.Close)
	t.Cleanup(func() { close(f.release) }) // first: Close waits for the handlers
	return f
}

func (f *hangingFront) hang() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.hanging = true
}

// An agent started as systemd starts a Type=notify unit (NOTIFY_SOCKET, and
// WATCHDOG_USEC of 400 ms) sends READY=1 once ready, WATCHDOG=1 every 200 ms
// after it, and STOPPING=1 at SIGTERM, in that order, with no WATCHDOG=1 after
// STOPPING=1. Its shutdown then waits on the outbox flush to an Attune that
// does not answer (half of TIMERD_SHUTDOWN_TIMEOUT=8s, after the hand-over's
// quarter); a second SIGTERM ends it at once, with exit status 143 and a log
// line saying so.
func TestAgentSystemdNotifyAndSecondSignal(t *testing.T) {
	t.Parallel() // single agent, mostly waiting
	b := newBroker(t)
	node := b.node("systemd")
	b.cleanupQueue(t, node)
	api := startAttune(t, b)
	front := newHangingFront(t, api.apiURL)
	sock := listenNotify(t)
	env := append(slices.DeleteFunc(api.agentEnv(b, node, t.TempDir()), func(kv string) bool {
		return strings.HasPrefix(kv, "ATTUNE_API_URL=") || strings.HasPrefix(kv, "NOTIFY_SOCKET=") || strings.HasPrefix(kv, "WATCHDOG_")
	}), "ATTUNE_API_URL="+front.srv.URL, "NOTIFY_SOCKET="+sock.path, "WATCHDOG_USEC=400000",
		"TIMERD_SHUTDOWN_TIMEOUT=8s", "TIMERD_LOG_FORMAT=json")
	ag := startAgent(t, env)

	testkit.EventuallyWhy(t, 10*time.Second, "READY=1, then three WATCHDOG=1", func() (string, bool) {
		k := sock.kinds()
		ready := slices.Index(k, "READY=1")
		return strings.Join(k, " "), ready >= 0 && strings.Count(strings.Join(k[ready:], " "), "WATCHDOG=1") >= 3
	})
	if k := sock.kinds(); k[0] != "READY=1" {
		t.Errorf("states %v: want READY=1 first (no WATCHDOG=1 before the node is ready)", k)
	}
	if !slices.ContainsFunc(sock.states(), func(s string) bool { return strings.HasPrefix(s, "STATUS=ready: ") }) {
		t.Errorf("states %q: no STATUS=ready line", sock.states())
	}

	// A rule fires and is delivered; then Attune stops answering and the outbox fills.
	api.createRule(t, "sd.steady", "core.intervaltimer", map[string]any{"interval": 1})
	testkit.Eventually(t, 10*time.Second, "an event delivered", func() bool { return len(api.events(t, "sd.steady")) >= 1 })
	front.hang()
	testkit.Eventually(t, 10*time.Second, "undelivered events in the outbox", func() bool {
		st, err := getStatus(ag.nodeURL)
		return err == nil && st.OutboxDepth >= 2
	})

	first := time.Now()
	if err := ag.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 10*time.Second, "STOPPING=1 and the outbox flush begun", func() bool {
		return slices.Contains(sock.kinds(), "STOPPING=1") && strings.Contains(ag.output(), "flushing the outbox")
	})
	t.Logf("the outbox flush began %s after the first SIGTERM", time.Since(first).Round(time.Millisecond))
	time.Sleep(500 * time.Millisecond) // the flush goes on (up to 4 s): only the second signal ends it
	select {
	case <-ag.done:
		t.Fatalf("the agent exited (%v) during the outbox flush, before the second SIGTERM", ag.waitErr)
	default:
	}
	second := time.Now()
	if err := ag.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ag.done:
	case <-time.After(5 * time.Second):
		t.Fatal("the agent did not exit within 5s of the second SIGTERM")
	}
	t.Logf("exited %s after the second SIGTERM: %v", time.Since(second).Round(time.Millisecond), ag.waitErr)
	var exit *exec.ExitError
	if !errors.As(ag.waitErr, &exit) || exit.ExitCode() != 128+int(syscall.SIGTERM) {
		t.Errorf("exit after the second SIGTERM: %v, want exit status %d", ag.waitErr, 128+int(syscall.SIGTERM))
	}
	testkit.Eventually(t, 2*time.Second, "the forced exit logged at error level", func() bool { // the last lines may still be in the pipe
		return regexp.MustCompile(`"level":"error","message":"second signal: exiting at once`).MatchString(ag.output())
	})

	k := sock.kinds()
	stopping := slices.Index(k, "STOPPING=1")
	if pings := strings.Count(strings.Join(k[:max(stopping, 0)], " "), "WATCHDOG=1"); stopping < 0 || pings < 3 || slices.Contains(k[stopping:], "WATCHDOG=1") {
		t.Errorf("states %v: want READY=1, WATCHDOG=1 (3 or more), STOPPING=1, and no WATCHDOG=1 after it", k)
	}
	if strings.Contains(ag.output(), api.sensorToken) {
		t.Error("the sensor token appears in the agent's output")
	}
}
