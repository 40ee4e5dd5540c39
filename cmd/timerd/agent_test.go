package main

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/timerd/timerd/cmd/timerd/node"
)

// A *node.SettingError from node.New or node.NewDev exits 2 with one line
// naming the setting and its flag; other errors exit 1 as they are.
func TestSettingUsageError(t *testing.T) {
	listen := &net.OpError{Op: "listen", Net: "tcp", Err: errors.New("bind: address already in use")}
	tests := []struct {
		name string
		err  error
		code int
		want string
	}{
		{"http addr", &node.SettingError{Setting: "TIMERD_HTTP_ADDR", Err: listen}, 2,
			"TIMERD_HTTP_ADDR (or --http-addr): listen tcp: bind: address already in use"},
		{"bind addr", &node.SettingError{Setting: "TIMERD_BIND_ADDR", Err: errors.New("start gossip on 0.0.0.0:7946: in use")}, 2,
			"TIMERD_BIND_ADDR (or --bind-addr): start gossip on 0.0.0.0:7946: in use"},
		{"advertise addr", &node.SettingError{Setting: "TIMERD_ADVERTISE_ADDR", Err: errors.New("no private IP")}, 2,
			"TIMERD_ADVERTISE_ADDR (or --advertise-addr): no private IP"},
		{"data dir", &node.SettingError{Setting: "TIMERD_DATA_DIR", Err: fs.ErrPermission}, 2,
			"TIMERD_DATA_DIR (or --data-dir): permission denied"},
		{"api token, no flag", &node.SettingError{Setting: "ATTUNE_API_TOKEN", Err: errors.New("the token expired")}, 2,
			"ATTUNE_API_TOKEN: the token expired"},
		{"api token file, no flag", &node.SettingError{Setting: "ATTUNE_API_TOKEN_FILE", Err: errors.New("is empty")}, 2,
			"ATTUNE_API_TOKEN_FILE: is empty"},
		{"dev's api addr", &node.SettingError{Setting: "TIMERD_API_ADDR", Err: listen}, 2,
			"TIMERD_API_ADDR (or --api-addr): listen tcp: bind: address already in use"},
		{"wrapped", fmt.Errorf("start: %w", &node.SettingError{Setting: "TIMERD_HTTP_ADDR", Err: listen}), 2,
			"TIMERD_HTTP_ADDR (or --http-addr): listen tcp: bind: address already in use"},
		{"not a setting", errors.New("open store: disk on fire"), 1, "open store: disk on fire"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := settingUsageError(tt.err)
			if code := exitCode(got); code != tt.code || got.Error() != tt.want {
				t.Errorf("settingUsageError(%v) = %q, exit %d; want %q, exit %d", tt.err, got, code, tt.want, tt.code)
			}
		})
	}
	// The cause stays reachable.
	if err := settingUsageError(&node.SettingError{Setting: "TIMERD_DATA_DIR", Err: fs.ErrPermission}); !errors.Is(err, fs.ErrPermission) {
		t.Errorf("settingUsageError(data dir: permission denied) = %v, want it to wrap fs.ErrPermission", err)
	}
}

// Every setting whose environment name node.SettingError may carry is
// named with the agent's flag for it.
func TestSettingNameHasTheFlag(t *testing.T) {
	for env, want := range map[string]string{
		"TIMERD_HTTP_ADDR":      "TIMERD_HTTP_ADDR (or --http-addr)",
		"TIMERD_BIND_ADDR":      "TIMERD_BIND_ADDR (or --bind-addr)",
		"TIMERD_ADVERTISE_ADDR": "TIMERD_ADVERTISE_ADDR (or --advertise-addr)",
		"TIMERD_DATA_DIR":       "TIMERD_DATA_DIR (or --data-dir)",
		"ATTUNE_API_TOKEN":      "ATTUNE_API_TOKEN",
		"ATTUNE_API_TOKEN_FILE": "ATTUNE_API_TOKEN_FILE",
		"TIMERD_API_ADDR":       "TIMERD_API_ADDR (or --api-addr)",
	} {
		if got := settingName(env, false); got != want {
			t.Errorf("settingName(%s) = %q, want %q", env, got, want)
		}
	}
	if got, want := settingName("TIMERD_HTTP_ADDR", true), `stdin config "http_addr" (or --http-addr)`; got != want {
		t.Errorf("settingName(TIMERD_HTTP_ADDR, stdin) = %q, want %q", got, want)
	}
}

// The agent's settings become the node's Config in one place: 0 turns the
// periodic reconcile off and keeps dead letters forever, as the node says
// it with a negative value; the cluster is always on; no MQ URL, no MQ.
func TestAgentNodeConfig(t *testing.T) {
	tok := testToken(t, time.Hour)
	base := map[string]string{"ATTUNE_API_URL": "http://api:8080/", "ATTUNE_API_TOKEN": tok, "TIMERD_DATA_DIR": "/d",
		"ATTUNE_MQ_URL": "amqp://mq/", "TIMERD_NODE_NAME": "n1", "TIMERD_RECONCILE_INTERVAL": "0",
		"TIMERD_DEAD_LETTER_RETENTION": "0", "TIMERD_WORKERS": "3", "TIMERD_JOIN": "p:7946", "TIMERD_GOSSIP_KEY": gossipKey}
	c, err := loadFor(t, base, "")
	if err != nil {
		t.Fatal(err)
	}
	nc := c.nodeConfig(nil)
	switch {
	case nc.ReconcileInterval >= 0 || nc.DeadLetterRetention >= 0:
		t.Errorf("node config: ReconcileInterval %v, DeadLetterRetention %v; want both negative (off, forever)",
			nc.ReconcileInterval, nc.DeadLetterRetention)
	case nc.MQ == nil || nc.MQ.URL != "amqp://mq/" || nc.MQ.Queue != "sensor.core.timer.n1" || nc.MQ.Exchange != "attune.events":
		t.Errorf("node config: MQ %+v, want the URL, exchange attune and queue sensor.core.timer.n1", nc.MQ)
	case nc.Cluster == nil:
		t.Errorf("node config: no Cluster, want one (the agent always runs it)")
	case strings.Join(nc.Cluster.Join, ",") != "p:7946" || nc.Cluster.GossipKey != gossipKey:
		t.Errorf("node config: Cluster join %v, gossip key kept %v; want the join list and gossip key", nc.Cluster.Join, nc.Cluster.GossipKey == gossipKey)
	case nc.Token != tok || nc.APIURL != "http://api:8080" || nc.DataDir != "/d" || nc.NodeName != "n1" || nc.Workers != 3 ||
		nc.DeliveryBudget != 512:
		t.Errorf("node config: APIURL %q, DataDir %q, NodeName %q, Workers %d, DeliveryBudget %d, token kept %v; want the settings",
			nc.APIURL, nc.DataDir, nc.NodeName, nc.Workers, nc.DeliveryBudget, nc.Token == tok)
	}
	// The agent's own copy is not changed by nodeConfig.
	if c.ReconcileInterval != 0 || c.DeadLetterRetention != 0 || c.Config.MQ != nil || c.Config.Cluster != nil {
		t.Errorf("agent config changed by nodeConfig: ReconcileInterval %v, DeadLetterRetention %v, MQ %v, Cluster %v",
			c.ReconcileInterval, c.DeadLetterRetention, c.Config.MQ, c.Config.Cluster)
	}

	delete(base, "ATTUNE_MQ_URL")
	base["TIMERD_RECONCILE_INTERVAL"] = "1m"
	c, err = loadFor(t, base, "")
	if err != nil {
		t.Fatal(err)
	}
	if nc := c.nodeConfig(nil); nc.MQ != nil || nc.ReconcileInterval != time.Minute {
		t.Errorf("node config without ATTUNE_MQ_URL: MQ %+v, ReconcileInterval %v; want no MQ and 1m", nc.MQ, nc.ReconcileInterval)
	}
}
