package e2e

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/timerd/timerd/store"
	"github.com/timerd/timerd/test/testkit"
)

// A full disk (docs/operations.md, "When the disk fills"): a node's data
// directory on a 64 MiB tmpfs the test mounts and fills. The node turns
// /readyz to 503 and counts the failing commits, /healthz stays 200, and
// once room is back it is ready again and every slot of the outage is
// stored once. The tmpfs needs root.

// mountTmpfs mounts a tmpfs of size under a temporary directory and
// unmounts it when the test ends; it skips the test where it cannot.
func mountTmpfs(t *testing.T, size string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting a tmpfs needs root")
	}
	dir := filepath.Join(t.TempDir(), "tmpfs")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("mount -t tmpfs: %v: %s", err, strings.TrimSpace(string(out)))
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", "-l", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, out)
		}
	})
	return dir
}

// fillDisk writes path until the file system has no room left, and returns
// how many bytes it wrote.
func fillDisk(t *testing.T, path string) int64 {
	t.Helper()
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var n int64
	for _, chunk := range []int{1 << 20, 4 << 10, 512} {
		buf := make([]byte, chunk)
		for {
			w, err := f.Write(buf)
			n += int64(w)
			if errors.Is(err, syscall.ENOSPC) {
				break
			}
			if err != nil {
				t.Fatalf("fill %s: %v", path, err)
			}
		}
	}
	return n
}

// waitEvents waits until each of ids has at least n events stored.
func waitEvents(c *tcluster, ids []int64, n int, within time.Duration) {
	c.t.Helper()
	testkit.Eventually(c.t, within, fmt.Sprintf("%d events of each rule", n), func() bool {
		evs := storedEvents(c)
		for _, id := range ids {
			if len(evs[id]) < n {
				return false
			}
		}
		return true
	})
}

// gateEvents puts a stand-in API in front of node short's recording proxy
// that answers 503 to event POSTs while the returned flag is set: the node's
// outbox grows, and so does its store, which on a full disk needs pages it
// cannot get (a store that only rewrites its pages reuses freed ones and
// goes on committing). Call it before the node starts.
func gateEvents(c *tcluster, short string) *atomic.Bool {
	c.t.Helper()
	target, err := url.Parse(c.proxy(short))
	if err != nil {
		c.t.Fatal(err)
	}
	rp := httputil.NewSingleHostReverseProxy(target)
	down := &atomic.Bool{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if down.Load() && r.Method == http.MethodPost && r.URL.Path == "/api/v1/events" {
			http.Error(w, "stand-in API: events refused", http.StatusServiceUnavailable)
			return
		}
		rp.ServeHTTP(w, r)
	}))
	c.t.Cleanup(srv.Close)
	c.mu.Lock()
	c.proxies[short] = srv.URL
	c.mu.Unlock()
	return down
}

// readyzBody is /readyz's status and body.
func readyzBody(nodeURL string) (int, string) {
	resp, err := shortHTTP.Get(nodeURL + "/readyz")
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(b))
}

func healthz(nodeURL string) int {
	resp, err := shortHTTP.Get(nodeURL + "/healthz")
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// postedTwice lists the idempotency keys posted more than once with a 2xx
// answer (a fire delivered again) by node, or by any node when node is "".
func postedTwice(c *tcluster, node string) []string {
	n := map[string]int{}
	var twice []string
	for _, p := range c.posts.all() {
		if node != "" && p.node != node || p.status/100 != 2 {
			continue
		}
		if n[p.key]++; n[p.key] == 2 {
			twice = append(twice, p.key)
		}
	}
	return twice
}

// A single node (TIMERD_EXPECT=1) with 50 interval rules of 1 s, its store
// on a tmpfs. The stand-in API refuses events (its outbox grows) while the
// tmpfs is filled: /readyz is 503 within 5 s, saying why, and
// timerd_store_commit_failures_total counts; /healthz stays 200. Then the
// API takes events again while the disk is still full (deliveries answered
// 2xx whose acks may not be written). It is restarted (SIGTERM, exit 0) on
// the full disk: it starts and stays up, /healthz 200. Then the fill is removed: /readyz is 200 again within 15 s, every slot from 1 s before the fill to after the
// recovery is stored once, no key is posted twice with a 2xx answer, and the
// store file opens clean afterwards.
func TestDiskFullSingleNode(t *testing.T) {
	fs := mountTmpfs(t, "64m")
	const every = time.Second
	c := newTCluster(t)
	n1 := c.node("n1")
	n1.dir = filepath.Join(fs, "n1")
	apiDown := gateEvents(c, "n1")
	ids := c.createRules("disk", "core.intervaltimer", 50, func(int) map[string]any { return map[string]any{"interval": 1} })
	c.start("n1", nil, true)
	url := n1.ag.nodeURL
	waitEvents(c, ids, 2, 20*time.Second)
	failures0 := c.nodeMetric("n1", "timerd_store_commit_failures_total")

	from := time.Now().Add(-time.Second)
	apiDown.Store(true)
	fill := filepath.Join(fs, "fill")
	filled := fillDisk(t, fill)
	full := time.Now()
	t.Logf("tmpfs filled with %d MiB, the API refusing events", filled>>20)
	var code int
	var body string
	testkit.EventuallyWhy(t, 5*time.Second, "/readyz 503 after the disk filled", func() (string, bool) {
		code, body = readyzBody(url)
		return body, code == http.StatusServiceUnavailable
	})
	notReady := time.Since(full)
	if !strings.Contains(body, "the store cannot commit") {
		t.Errorf("/readyz body %q, want it to say the store cannot commit", body)
	}
	time.Sleep(3 * time.Second)
	apiDown.Store(false) // deliveries answered 2xx while acks may fail
	time.Sleep(4 * time.Second)
	if got := healthz(url); got != http.StatusOK {
		t.Errorf("/healthz with the disk full: %d, want 200 (a restart does not make room)", got)
	}
	m := metrics(t, url)
	if got := metric(m, "timerd_store_commit_failures_total") - failures0; got < 1 {
		t.Errorf("timerd_store_commit_failures_total rose by %v with the disk full, want at least 1", got)
	}
	if got := metric(m, "timerd_store_commit_failing"); got != 1 {
		t.Errorf("timerd_store_commit_failing with the disk full: %v, want 1", got)
	}
	failures := metric(m, "timerd_store_commit_failures_total") - failures0

	// Restarted on the full disk it starts and serves, ready or not as its commits
	// go (its free pages may be enough), and does not exit.
	c.stop("n1")
	c.start("n1", nil, false)
	url = n1.ag.nodeURL
	readyzSeen := map[int]int{}
	for end := time.Now().Add(2 * time.Second); time.Now().Before(end); time.Sleep(200 * time.Millisecond) {
		if got := healthz(url); got != http.StatusOK {
			t.Fatalf("restarted on the full disk: /healthz %d, want 200", got)
		}
		code, _ = readyzBody(url)
		readyzSeen[code]++
	}
	t.Logf("restarted on the full disk: /readyz answered %v (status: times) over 2 s", readyzSeen)

	if err := os.Remove(fill); err != nil {
		t.Fatal(err)
	}
	freed := time.Now()
	testkit.EventuallyWhy(t, 15*time.Second, "/readyz 200 after room came back", func() (string, bool) {
		code, body = readyzBody(url)
		return body, code == http.StatusOK
	})
	ready := time.Since(freed)
	if got := c.nodeMetric("n1", "timerd_store_commit_failing"); got != 0 {
		t.Errorf("timerd_store_commit_failing once ready again: %v, want 0", got)
	}
	chk, settled := everySlotOnce(t, c, ids, every, from, "n1", "interval slots from 1 s before the disk filled to after it had room again")
	t.Logf("%d slots stored once; /readyz 503 %s after the disk filled, 200 %s after room came back (restarted on the full disk meanwhile); events settled %s later; commit failures %v before the restart",
		chk.total, notReady.Round(time.Millisecond), ready.Round(time.Millisecond), settled.Round(time.Millisecond), failures)

	path := filepath.Join(n1.dir, "node.db")
	c.stop("n1")
	st, err := store.Open(path, store.Options{})
	if err != nil {
		t.Fatalf("the store after the full disk: %v", err)
	}
	defer st.Close()
	if n, err := st.RuleCount(); err != nil || n != len(ids) {
		t.Errorf("the store after the full disk: %d rules, %v; want %d", n, err, len(ids))
	}
}

// Three nodes (TIMERD_EXPECT=3) with 60 interval rules of 1 s, n2's store on
// a tmpfs. n2's disk is filled; n2 goes on committing fires into the pages
// its store freed, until the ring changes: n3 is paused (SIGSTOP) for 3 s and
// its partitions move, which n2 must write (promises, holdings) and cannot.
// n2's /readyz is 503 and stays 503 while its disk is full, /healthz 200; n2
// steps out of the protocol and n1 and n3 take every partition over. Once
// the fill is removed n2 comes back as a new incarnation and holds
// partitions again; every slot from 1 s before the fill to after the
// recovery is stored once, and no key is posted twice with a 2xx answer.
func TestDiskFullClusterNodeStepsOut(t *testing.T) {
	fs := mountTmpfs(t, "64m")
	const every = time.Second
	c := newTCluster(t, "TIMERD_EXPECT=3")
	n2 := c.node("n2")
	n2.dir = filepath.Join(fs, "n2")
	ids := c.createRules("diskc", "core.intervaltimer", 60, func(int) map[string]any { return map[string]any{"interval": 1} })
	startThree(c, ids)
	waitEvents(c, ids, 2, 20*time.Second)
	before, err := getFSStatus(n2.ag.nodeURL)
	if err != nil || before.PartitionsHeld == 0 {
		t.Fatalf("n2 before the fill: %+v, %v; want partitions held", before, err)
	}
	failures0 := c.nodeMetric("n2", "timerd_store_commit_failures_total")

	from := time.Now().Add(-time.Second)
	fill := filepath.Join(fs, "fill")
	filled := fillDisk(t, fill)
	full := time.Now()
	t.Logf("n2's tmpfs filled with %d MiB; n2 held %d partitions as %s", filled>>20, before.PartitionsHeld, before.Incarnation)

	pid := c.node("n3").ag.cmd.Process.Pid
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGCONT) })
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatalf("SIGSTOP n3: %v", err)
	}
	time.Sleep(3 * time.Second)
	if err := syscall.Kill(pid, syscall.SIGCONT); err != nil {
		t.Fatalf("SIGCONT n3: %v", err)
	}
	testkit.EventuallyWhy(t, 10*time.Second, "n2's /readyz 503 with its disk full and the ring changing", func() (string, bool) {
		code, body := readyzBody(n2.ag.nodeURL)
		return body, code == http.StatusServiceUnavailable && strings.Contains(body, "the store cannot commit")
	})
	notReady := time.Since(full)
	c.waitHoldAll(20*time.Second, "n1", "n3")
	takeover := time.Since(full)
	t.Logf("n2 not ready %s after the fill; n1 and n3 hold every partition %s after it",
		notReady.Round(time.Millisecond), takeover.Round(time.Millisecond))
	time.Sleep(2 * time.Second)
	if code, body := readyzBody(n2.ag.nodeURL); code != http.StatusServiceUnavailable {
		t.Errorf("n2's /readyz with its disk still full: %d %q, want 503", code, body)
	}
	if got := healthz(n2.ag.nodeURL); got != http.StatusOK {
		t.Errorf("n2's /healthz with its disk full: %d, want 200", got)
	}
	if st, err := getFSStatus(n2.ag.nodeURL); err != nil || st.PartitionsHeld != 0 {
		t.Errorf("n2 with its disk full: %+v, %v; want no partition held", st, err)
	}
	if got := c.nodeMetric("n2", "timerd_store_commit_failures_total") - failures0; got < 1 {
		t.Errorf("n2's timerd_store_commit_failures_total rose by %v with its disk full, want at least 1", got)
	}

	if err := os.Remove(fill); err != nil {
		t.Fatal(err)
	}
	freed := time.Now()
	var after fsStatus
	testkit.EventuallyWhy(t, 30*time.Second, "n2 back as a new incarnation, holding partitions, ready", func() (string, bool) {
		after, err = getFSStatus(n2.ag.nodeURL)
		code, body := readyzBody(n2.ag.nodeURL)
		why := fmt.Sprintf("%+v, %v; /readyz %d %s", after, err, code, body)
		return why, err == nil && after.Incarnation != before.Incarnation && after.PartitionsHeld > 0 && code == http.StatusOK
	})
	back := time.Since(freed)
	chk, settled := everySlotOnce(t, c, ids, every, from, "", "interval slots from 1 s before n2's disk filled to after it had room again")
	t.Logf("%d slots stored once; n2 %s -> %s (%d partitions) ready %s after room came back; events settled %s later; n2's commit failures %v",
		chk.total, before.Incarnation, after.Incarnation, after.PartitionsHeld, back.Round(time.Millisecond),
		settled.Round(time.Millisecond), c.nodeMetric("n2", "timerd_store_commit_failures_total")-failures0)
}

// everySlotOnce waits 3 s, then checks that every interval slot of ids from from
// to a second ago is stored exactly once, that no key is stored twice and that
// no node (or node short, when given) posted a key again after a 2xx.
func everySlotOnce(t *testing.T, c *tcluster, ids []int64, every time.Duration, from time.Time, short, what string) (slotCheck, time.Duration) {
	t.Helper()
	time.Sleep(3 * time.Second)
	to := time.Now().Add(-time.Second)
	var chk slotCheck
	evs, _, settled := storedSettled(c, 20*time.Second, func(evs map[int64][]stored) slotCheck {
		chk = intervalSlotsOnce(evs, ids, every, from, to)
		return chk
	}, noneMissing)
	chk.report(t, what, nil)
	if n := keysTwice(evs); n != 0 {
		t.Errorf("%d idempotency keys are stored more than once", n)
	}
	if twice := postedTwice(c, short); len(twice) > 0 {
		t.Errorf("%d keys were posted again after a 2xx answer: %v", len(twice), twice[:min(10, len(twice))])
	}
	return chk, settled
}
