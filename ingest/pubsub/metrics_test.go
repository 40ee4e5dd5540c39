package pubsub

import (
	"errors"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/timerd/timerd/scheduler/metricset"
)

// A second publisher on one registry is an error naming the metrics, not a
// panic; the first keeps its series.
func TestNewPublisherOnARegistryInUse(t *testing.T) {
	reg := prometheus.NewRegistry()
	cfg := PublisherConfig{URL: "amqp://127.0.0.1:1/", Registerer: reg}
	first, err := NewPublisher(cfg)
	if err != nil {
		t.Fatalf("first NewPublisher: %v", err)
	}
	defer first.Close()
	_, err = NewPublisher(cfg)
	var re *metricset.RegisterError
	if !errors.As(err, &re) || !strings.Contains(err.Error(), "timerd_mq_publisher_connected") {
		t.Errorf("second NewPublisher on the same registry = %v, want a *metricset.RegisterError naming timerd_mq_publisher_connected", err)
	}
	if mfs, err := reg.Gather(); err != nil || len(mfs) != 2 {
		t.Errorf("registry exports %d families (%v), want the first publisher's 2", len(mfs), err)
	}
}
