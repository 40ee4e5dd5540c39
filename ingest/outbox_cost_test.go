package ingest

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/timerd/timerd/store"
)

// What an outbox costs on disk while Attune is down: 50,000 interval events committed
// and not delivered, as a node piles them up in an outage (docs/operations.md quotes
// the figure). The bound asserted is loose; the log line is the measurement.
func TestOutboxDiskCostPer1000Events(t *testing.T) {
	if testing.Short() {
		t.Skip("commits 50,000 events")
	}
	path := filepath.Join(t.TempDir(), "timerd.db")
	st, err := store.Open(path, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	size := func() int64 {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		return fi.Size()
	}
	empty := size()
	const n = 50_000
	evs := commitEvents(t, st, 42, n, slot0)
	full := size()
	perK := float64(full-empty) / (n / 1000)
	t.Logf("%d undelivered events (bodies of %d bytes): the store file grew from %d KiB to %d KiB, %.0f KiB per 1,000 events",
		n, len(evs[0].Body), empty>>10, full>>10, perK/1024)
	if perK > 2<<20 {
		t.Errorf("%.0f KiB per 1,000 events, want under 2 MiB", perK/1024)
	}
}
