package store

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/timerd/timerd/scheduler/metricset"
)

// A second store on a registry holding the metrics of an open one is an
// error naming them, and its file is closed again.
func TestOpenOnARegistryInUse(t *testing.T) {
	reg := prometheus.NewRegistry()
	first, err := Open(filepath.Join(t.TempDir(), "a.db"), Options{NoSync: true, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()

	path := filepath.Join(t.TempDir(), "b.db")
	_, err = Open(path, Options{NoSync: true, Registerer: reg})
	var re *metricset.RegisterError
	if !errors.As(err, &re) || !strings.Contains(err.Error(), "timerd_store_commit_seconds") {
		t.Fatalf("second Open on the same registry = %v, want a *metricset.RegisterError naming timerd_store_commit_seconds", err)
	}
	again, err := Open(path, Options{NoSync: true, Timeout: 100 * time.Millisecond})
	if err != nil {
		t.Fatalf("Open of the failed Open's file: %v, want it unlocked", err)
	}
	again.Close()
}
