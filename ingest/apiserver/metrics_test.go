package apiserver

import (
	"errors"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/timerd/timerd/scheduler/metricset"
)

// A second server on a registry already holding the metrics of one is an
// error naming them, not a panic, and leaves its store closed and the
// registry as it was.
func TestNewOnARegistryInUse(t *testing.T) {
	reg := prometheus.NewRegistry()
	first, err := New(Config{DataDir: t.TempDir(), SigningKey: testKey, Registerer: reg})
	if err != nil {
		t.Fatalf("first New: %v", err)
	}
	defer first.Close()
	before, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()
	_, err = New(Config{DataDir: dir, SigningKey: testKey, Registerer: reg})
	var re *metricset.RegisterError
	if !errors.As(err, &re) || !strings.Contains(err.Error(), "timerd_api_requests_total") {
		t.Fatalf("second New on the same registry = %v, want a *metricset.RegisterError naming timerd_api_requests_total", err)
	}
	after, err := reg.Gather()
	if err != nil || len(after) != len(before) {
		t.Errorf("registry exports %d families after the failed New (%v), want %d as before", len(after), err, len(before))
	}
	// The store of the failed New is closed: a third New on that directory
	// (with a registry of its own) opens it without waiting for the lock.
	third, err := New(Config{DataDir: dir, Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatalf("New on the data dir of the failed New: %v", err)
	}
	third.Close()
}
