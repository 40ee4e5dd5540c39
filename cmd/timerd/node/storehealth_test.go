package node

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/timerd/timerd/test/testkit"
)

// A failed commit makes the store failing until a probe succeeds: commits that
// succeed meanwhile do not clear it, failed probes count as failures.
func TestStoreHealthClearsOnlyOnAProbe(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h, err := newStoreHealth(prometheus.NewRegistry(), time.Now)
		if err != nil {
			t.Fatalf("newStoreHealth: %v", err)
		}
		full := errors.New("write node.db: no space left on device")
		probes := 0
		probe := func() error {
			if probes++; probes <= 2 {
				return full
			}
			return nil
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); h.run(ctx, probe) }()

		time.Sleep(3 * probeEvery)
		synctest.Wait()
		if probes != 0 {
			t.Errorf("probes while commits succeed: %d, want 0", probes)
		}
		h.record(full)
		h.record(nil)                                                // a small commit that found a freed page
		if _, err, failing := h.failing(); !failing || err != full { //nolint:errorlint // the recorded error itself
			t.Fatalf("failing() after a failed commit then a good one: %v, %v; want true, %v", failing, err, full)
		}
		time.Sleep(2*probeEvery + probeEvery/2)
		synctest.Wait()
		if got := h.failingFor(); got != 2*probeEvery+probeEvery/2 {
			t.Errorf("failingFor after two failed probes: %v, want %v", got, 2*probeEvery+probeEvery/2)
		}
		time.Sleep(probeEvery)
		synctest.Wait()
		if _, _, failing := h.failing(); failing || probes != 3 {
			t.Errorf("after a good probe: failing %v after %d probes; want false after 3", failing, probes)
		}
		if got := testutil.ToFloat64(h.failures); got != 3 {
			t.Errorf("timerd_store_commit_failures_total: %v, want 3 (a commit and two probes)", got)
		}
		cancel()
		<-done
	})
}

// A single node whose store failed a commit answers /readyz 503 saying why and
// /healthz 200, exports the failure, and is ready again once its probe commit
// succeeds (here the disk has room: within a probe interval or two).
func TestReadyzSaysTheStoreCannotCommit(t *testing.T) {
	s := startAPI(t, t.TempDir())
	rn := s.startNode(t.TempDir(), false)
	base := "http://" + rn.HTTPAddr()
	rn.health.record(errors.New("write node.db: no space left on device"))

	code, body := getBody(t, base+"/readyz")
	const want = "not ready: the store cannot commit: write node.db: no space left on device"
	if code != http.StatusServiceUnavailable || !strings.Contains(body, want) {
		t.Errorf("/readyz: %d %q, want 503 %q", code, body, want)
	}
	if code := get(t, base+"/healthz"); code != http.StatusOK {
		t.Errorf("/healthz: %d, want 200", code)
	}
	if got := gaugeValue(t, rn.Node, "timerd_store_commit_failing"); got != 1 {
		t.Errorf("timerd_store_commit_failing: %v, want 1", got)
	}
	if got := gaugeValue(t, rn.Node, "timerd_ready"); got != 0 {
		t.Errorf("timerd_ready: %v, want 0", got)
	}
	testkit.Eventually(t, 5*time.Second, "ready again after a probe", func() bool { return get(t, base+"/readyz") == http.StatusOK })
	if got := gaugeValue(t, rn.Node, "timerd_store_commit_failing"); got != 0 {
		t.Errorf("timerd_store_commit_failing after the probe: %v, want 0", got)
	}
}

func getBody(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}
