package cluster

import (
	"errors"
	"net"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/timerd/timerd/scheduler/metricset"
)

// A second cluster on a registry holding the metrics of one is an error
// naming them, not a panic: the registry is as it was and the second's
// gossip port is released.
func TestNewOnARegistryInUse(t *testing.T) {
	reg := prometheus.NewRegistry()
	first := testConfig("first")
	first.Registerer = reg
	start(t, first)
	before, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}

	addr := freeTCPAddr(t)
	second := testConfig("second")
	second.BindAddr, second.Registerer = addr, reg
	c, err := New(second)
	if err == nil {
		_ = c.Shutdown()
		t.Fatal("second New on the same registry = nil error, want a registration error")
	}
	var re *metricset.RegisterError
	if !errors.As(err, &re) || !strings.Contains(err.Error(), "timerd_ring_changes_total") {
		t.Errorf("second New = %v, want a *metricset.RegisterError naming timerd_ring_changes_total", err)
	}
	if after, err := reg.Gather(); err != nil || len(after) != len(before) {
		t.Errorf("registry exports %d families after the failed New (%v), want %d as before", len(after), err, len(before))
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Errorf("the failed New's gossip port %s: %v, want it released", addr, err)
	} else {
		ln.Close()
	}
}

// freeTCPAddr is a loopback address whose TCP port was free a moment ago.
func freeTCPAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}
