package main

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/timerd/timerd/test/internal/benchkit"
)

// A smoke run of the benchmark: 300 rules of 1 s (interval, cron and
// datetime) through a real agent against the stub for 3 s. The figures are
// the benchmark's business; here every due event must arrive, once.
func TestSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("builds timerd and runs an agent for ~10 s")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	dir := t.TempDir()
	bin := filepath.Join(dir, "timerd")
	if err := benchkit.GoBuild(ctx, "../../..", bin); err != nil {
		t.Fatal(err)
	}
	cfg := config{Rules: 300, Every: time.Second, Mix: mix{Interval: 0.8, Cron: 0.1, Datetime: 0.1},
		Warmup: 4 * time.Second, Window: 3 * time.Second}
	res, err := measure(ctx, cfg, bin, filepath.Join(dir, "data"), "smoke")
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	res.Name = "smoke"
	printResults(&out, cfg, []result{res})
	t.Logf("\n%s", out.String())
	// 270 rules of 1 s are due 270 times a second; the datetime rules add a few.
	if res.PerSec < 0.9*cfg.due() || res.Duplicates != 0 || res.Lateness.N == 0 {
		t.Errorf("%.0f events/s received (%.0f due), %d keys twice", res.PerSec, cfg.due(), res.Duplicates)
	}
	if res.CPUPerEvent <= 0 || res.RSSMaxMiB <= 0 {
		t.Errorf("no CPU or RSS figures: %+v", res)
	}
}

func TestMixFlag(t *testing.T) {
	var m mix
	if err := m.Set("interval=0.8,cron=0.1,datetime=0.1"); err != nil || m.String() != "interval=0.8,cron=0.1,datetime=0.1" {
		t.Errorf("Set = %v, %v", err, m)
	}
	for _, bad := range []string{"", "interval", "interval=-1", "hourly=1", "interval=0"} {
		if err := m.Set(bad); err == nil {
			t.Errorf("Set(%q) = nil, want an error", bad)
		}
	}
}
