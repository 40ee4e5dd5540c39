package node

import (
	"errors"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/timerd/timerd/ingest"
	"github.com/timerd/timerd/scheduler/metricset"
)

// fullConfig is a node with every part that has metrics: a token source, an
// MQ consumer (not connected before Run) and a cluster.
func fullConfig(t *testing.T, reg *prometheus.Registry) Config {
	t.Helper()
	a := startAuthAPI(t, slog.New(slog.DiscardHandler))
	return Config{DataDir: t.TempDir(), APIURL: a.url, NodeName: "full", Registry: reg,
		Token: a.sensorToken(time.Hour), HTTPAddr: "127.0.0.1:0",
		MQ:      &ingest.ConsumerConfig{URL: "amqp://127.0.0.1:1/", Exchange: "timerd-test", Queue: "q"},
		Cluster: clusterConfig()}
}

// timerdNames is the timerd_ metrics of names.
func timerdNames(names []string) []string {
	return slices.DeleteFunc(slices.Clone(names), func(n string) bool { return !strings.HasPrefix(n, "timerd_") })
}

// Every metric a node exports, as operators' dashboards and docs/monitoring
// know them: a name missing or added here is a change to the documented
// metrics (docs/operations.md).
func TestNodeExportsEveryMetric(t *testing.T) {
	want := []string{
		"timerd_build_info",
		"timerd_cluster_clock_skew_seconds",
		"timerd_cluster_expected_members",
		"timerd_cluster_future_watermarks_refused_total",
		"timerd_cluster_members",
		"timerd_cluster_network_bytes_total",
		"timerd_cluster_protocol_messages_dropped_total",
		"timerd_cluster_protocol_messages_received_total",
		"timerd_cluster_protocol_messages_sent_total",
		"timerd_cluster_quorum",
		"timerd_commits_not_fireable_total",
		"timerd_dead_letters",
		"timerd_dead_letters_expired_total",
		"timerd_dead_letters_total",
		"timerd_deliveries_total",
		"timerd_delivery_catchup_posts_total",
		"timerd_delivery_catchup_rate",
		"timerd_delivery_catchup_rate_limited_total",
		"timerd_delivery_concurrency_ceiling",
		"timerd_delivery_concurrency_decreases_total",
		"timerd_delivery_concurrency_limit",
		"timerd_delivery_in_flight",
		"timerd_delivery_rule_pauses_total",
		"timerd_delivery_rules_paused",
		"timerd_delivery_seconds",
		"timerd_engine_heartbeat_age_seconds",
		"timerd_fire_lateness_seconds",
		"timerd_fires_fenced_total",
		"timerd_fires_total",
		"timerd_gossip_keyring_reloads_total",
		"timerd_gossip_keys",
		"timerd_http_unauthorized_total",
		"timerd_incarnations_fenced_total",
		"timerd_lease",
		"timerd_lifecycle_messages_total",
		"timerd_lifecycle_queue_silent",
		"timerd_manual_events_total",
		"timerd_misfires_total",
		"timerd_missed_slots_total",
		"timerd_mq_connected",
		"timerd_mq_reconnects_total",
		"timerd_mq_requeued_total",
		"timerd_outbox_ack_failures_total",
		"timerd_outbox_entries",
		"timerd_outbox_oldest_age_seconds",
		"timerd_outbox_pending_events",
		"timerd_partitions_held",
		"timerd_ready",
		"timerd_reconcile_refused_total",
		"timerd_reconciles_total",
		"timerd_ring_changes_total",
		"timerd_rules_adopted_total",
		"timerd_rules_invalid",
		"timerd_rules_known",
		"timerd_rules_released_total",
		"timerd_scheduler_batch_fires",
		"timerd_scheduler_commit_errors_total",
		"timerd_scheduler_commit_seconds",
		"timerd_scheduler_rules",
		"timerd_store_commit_failing",
		"timerd_store_commit_failing_seconds",
		"timerd_store_commit_failures_total",
		"timerd_store_commit_seconds",
		"timerd_store_fold_errors_total",
		"timerd_token_expiry_timestamp_seconds",
		"timerd_token_refreshes_total",
	}
	n, err := New(fullConfig(t, prometheus.NewRegistry()))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	defer n.Close()
	got := n.registered.Names()
	if diff := timerdNames(got); !slices.Equal(diff, want) {
		for _, name := range want {
			if !slices.Contains(diff, name) {
				t.Errorf("the node does not export %s", name)
			}
		}
		for _, name := range diff {
			if !slices.Contains(want, name) {
				t.Errorf("the node exports %s, which the list lacks", name)
			}
		}
	}
	for _, prefix := range []string{"go_", "process_"} {
		if !slices.ContainsFunc(got, func(n string) bool { return strings.HasPrefix(n, prefix) }) {
			t.Errorf("the node exports no %s* metric", prefix)
		}
	}
}

// gatheredNames is what reg exports now.
func gatheredNames(t *testing.T, reg *prometheus.Registry) []string {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("Gather: %v", err)
	}
	var names []string
	for _, mf := range mfs {
		names = append(names, mf.GetName())
	}
	return names
}

// A New that fails halfway (gossip, its last part, cannot bind) unregisters
// what its parts registered, so that a New retried on the same registry
// works; so does Close, for a node restarted in one process.
func TestNewFailingHalfwayThenAgainOnTheSameRegistry(t *testing.T) {
	reg := prometheus.NewRegistry()
	cfg := fullConfig(t, reg)
	cfg.Cluster.BindAddr = takenPort(t)
	_, err := New(cfg)
	var se *SettingError
	if !errors.As(err, &se) || se.Setting != "TIMERD_BIND_ADDR" {
		t.Fatalf("New with the gossip port taken = %v, want a *SettingError for TIMERD_BIND_ADDR", err)
	}
	if got := gatheredNames(t, reg); len(got) != 0 {
		t.Errorf("after a failed New the registry exports %v, want nothing", got)
	}

	cfg.Cluster = clusterConfig()
	n, err := New(cfg)
	if err != nil {
		t.Fatalf("New again on the same registry: %v", err)
	}
	if got := gatheredNames(t, reg); !slices.Contains(got, "timerd_ready") {
		t.Errorf("after New the registry exports %v, want timerd_ready among them", got)
	}
	if err := n.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if got := gatheredNames(t, reg); len(got) != 0 {
		t.Errorf("after Close the registry exports %v, want nothing", got)
	}
	cfg.Cluster = clusterConfig()
	n, err = New(cfg)
	if err != nil {
		t.Fatalf("New after Close on the same registry: %v", err)
	}
	n.Close()
}

// Two nodes on one registry clash: the second New is an error naming the
// metrics, not a panic, and leaves the first node's metrics in place.
func TestTwoNodesOnOneRegistryIsAnError(t *testing.T) {
	reg := prometheus.NewRegistry()
	first, err := New(fullConfig(t, reg))
	if err != nil {
		t.Fatalf("first New: %v", err)
	}
	defer first.Close()
	before := gatheredNames(t, reg)

	second := fullConfig(t, reg)
	n, err := New(second)
	if err == nil {
		n.Close()
		t.Fatal("second New on the registry of a live node = nil error, want a registration error")
	}
	var re *metricset.RegisterError
	if !errors.As(err, &re) || !strings.Contains(err.Error(), "go_") {
		t.Errorf("second New = %v, want a *metricset.RegisterError naming the go_ metrics registered first", err)
	}
	if got := gatheredNames(t, reg); !slices.Equal(got, before) {
		t.Errorf("after the failed second New the registry exports %v, want %v as before", got, before)
	}
	reopen(t, second.DataDir, "", "")
}
