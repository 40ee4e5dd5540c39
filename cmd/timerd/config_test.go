package main

import (
	"bytes"
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/timerd/timerd/auth"
)

func testToken(t *testing.T, ttl time.Duration) string {
	t.Helper()
	tok, _, err := (&auth.Issuer{Key: bytes.Repeat([]byte("k"), 32)}).Issue(auth.IssueRequest{
		Subject: "node", Scope: auth.ScopeSensor, TriggerTypes: []string{"core.timer"}, TTL: ttl})
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// loadFor runs loadAgentConfig with env (a map), stdin and flag args.
func loadFor(t *testing.T, env map[string]string, stdin string, args ...string) (*agentConfig, error) {
	t.Helper()
	fs := pflag.NewFlagSet("agent", pflag.ContinueOnError)
	registerAgentFlags(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatalf("parse %v: %v", args, err)
	}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	return loadAgentConfig(fs, lookup, strings.NewReader(stdin))
}

// gossipKey is a valid TIMERD_GOSSIP_KEY: base64 of 32 bytes.
var gossipKey = base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, 32))

func TestAgentConfigPrecedence(t *testing.T) {
	tok := testToken(t, time.Hour)
	base := map[string]string{"ATTUNE_API_URL": "http://api:8080/", "ATTUNE_API_TOKEN": tok, "TIMERD_DATA_DIR": "/d",
		"ATTUNE_MQ_URL": "amqp://mq/"}
	with := func(kv ...string) map[string]string {
		m := map[string]string{}
		for k, v := range base {
			m[k] = v
		}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	stdin := `{"api_url":"https://stdin-api","api_token":"` + tok + `","data_dir":"/s","http_addr":"127.0.0.1:9000",
		"workers":8,"reconcile_interval":"1m","reconcile_page_size":100,"queue_expires":"2d","mq_exchange":"attune","extra":{"x":1}}`
	tests := []struct {
		name  string
		env   map[string]string
		stdin string
		args  []string
		check func(c *agentConfig) string // "" when right
	}{
		{"defaults", base, "", nil, func(c *agentConfig) string {
			if c.HTTPAddr != ":8470" || c.SensorRef != "core.timer" || c.MQ.Exchange != "attune.events" || c.Workers != 0 || c.DeliveryBudget != 512 ||
				c.ReconcileInterval != 5*time.Minute || c.MQ.QueueExpires != 7*24*time.Hour || c.ShutdownTimeout != 10*time.Second ||
				c.CommitFailureLeaveAfter != 30*time.Second || c.LogFormat != "json" || c.APIURL != "http://api:8080" || c.NodeName == "" ||
				c.RejectRetryWindow != 10*time.Minute || c.DeadLetterRetention != 7*24*time.Hour || c.ReconcilePageSize != 1000 {
				return "not the documented defaults"
			}
			return ""
		}},
		{"env over defaults", with("TIMERD_HTTP_ADDR", "127.0.0.1:1", "TIMERD_WORKERS", "4", "ATTUNE_SENSOR_REF", "my.timer",
			"TIMERD_NODE_NAME", "n1", "ATTUNE_LOG_LEVEL", "DEBUG"), "", nil, func(c *agentConfig) string {
			if c.HTTPAddr != "127.0.0.1:1" || c.Workers != 4 || c.SensorRef != "my.timer" || c.NodeName != "n1" || c.LogLevel.String() != "DEBUG" {
				return "env not applied"
			}
			return ""
		}},
		{"dead letter settings", with("TIMERD_REJECT_RETRY_WINDOW", "30s", "TIMERD_DEAD_LETTER_RETENTION", "0"), "",
			nil, func(c *agentConfig) string {
				if c.RejectRetryWindow != 30*time.Second || c.DeadLetterRetention != 0 {
					return "dead letter settings not applied"
				}
				return ""
			}},
		{"dead letter flags", base, "", []string{"--reject-retry-window", "1h", "--dead-letter-retention", "1d12h"}, func(c *agentConfig) string {
			if c.RejectRetryWindow != time.Hour || c.DeadLetterRetention != 36*time.Hour {
				return "dead letter flags not applied"
			}
			return ""
		}},
		{"flags over env", with("TIMERD_HTTP_ADDR", "127.0.0.1:1", "TIMERD_WORKERS", "4"), "",
			[]string{"--http-addr", "127.0.0.1:2", "--workers", "16", "--data-dir", "/f"}, func(c *agentConfig) string {
				if c.HTTPAddr != "127.0.0.1:2" || c.Workers != 16 || c.DataDir != "/f" {
					return "flags did not win"
				}
				return ""
			}},
		{"stdin replaces env", with("TIMERD_HTTP_ADDR", "127.0.0.1:1"), stdin, []string{"--stdin-config"}, func(c *agentConfig) string {
			if c.APIURL != "https://stdin-api" || c.DataDir != "/s" || c.HTTPAddr != "127.0.0.1:9000" || c.Workers != 8 ||
				c.ReconcileInterval != time.Minute || c.MQ.QueueExpires != 48*time.Hour || c.MQ.Exchange != "attune" || c.MQ.URL != "" ||
				c.ReconcilePageSize != 100 {
				return "stdin config not applied, or env read"
			}
			if len(c.UnknownKeys) != 1 || c.UnknownKeys[0] != "extra" {
				return "unknown keys not reported"
			}
			return ""
		}},
		{"flags over stdin", base, stdin, []string{"--stdin-config", "--workers", "2", "--reconcile-interval", "30s", "--log-format", "text"},
			func(c *agentConfig) string {
				if c.Workers != 2 || c.LogFormat != "text" || c.ReconcileInterval != 30*time.Second || c.DataDir != "/s" {
					return "flags did not win over stdin"
				}
				return ""
			}},
		{"sensor triggers", with("ATTUNE_SENSOR_TRIGGERS", `[{"id":7,"ref":"a","trigger_ref":"core.intervaltimer","config":{"interval":5}},{"id":"8","trigger_ref":"core.webhook","config":null}]`),
			"", nil, func(c *agentConfig) string {
				if len(c.StartupRules) != 2 || c.StartupRules[0].ID != 7 || string(c.StartupRules[0].Params) != `{"interval":5}` ||
					c.StartupRules[1].ID != 8 || c.StartupRules[1].Params != nil {
					return "start-up set not parsed"
				}
				return ""
			}},
		{"cluster defaults", base, "", nil, func(c *agentConfig) string {
			// Alone, gossip binds to loopback: nobody needs to reach it.
			if c.Gossip.BindAddr != "127.0.0.1:7946" || c.Gossip.AdvertiseAddr != "" || c.Gossip.Join != nil || c.Gossip.JoinTimeout != 10*time.Second ||
				c.Gossip.GossipKey != "" || c.Gossip.Expect != 1 || c.Retired != nil || c.GossipInsecure {
				return "not the documented cluster defaults"
			}
			return ""
		}},
		{"a cluster binds every address by default", with("TIMERD_JOIN", "p:7946", "TIMERD_GOSSIP_KEY", gossipKey), "", nil, func(c *agentConfig) string {
			if c.Gossip.BindAddr != "0.0.0.0:7946" {
				return "a node that joins binds " + c.Gossip.BindAddr
			}
			return ""
		}},
		{"alone, a bind address given is kept", with("TIMERD_BIND_ADDR", "0.0.0.0:7000"), "", nil, func(c *agentConfig) string {
			if c.Gossip.BindAddr != "0.0.0.0:7000" {
				return "TIMERD_BIND_ADDR not kept"
			}
			return ""
		}},
		{"unencrypted cluster, said explicitly", with("TIMERD_JOIN", "p:7946", "TIMERD_GOSSIP_INSECURE", "true"), "", nil, func(c *agentConfig) string {
			if !c.GossipInsecure || c.Gossip.GossipKey != "" {
				return "TIMERD_GOSSIP_INSECURE not taken"
			}
			return ""
		}},
		{"keyring file", with("TIMERD_EXPECT", "3", "TIMERD_GOSSIP_KEYRING_FILE", keyringFile(t, gossipKey)), "", nil, func(c *agentConfig) string {
			if c.Gossip.GossipKeyringFile == "" {
				return "TIMERD_GOSSIP_KEYRING_FILE not taken"
			}
			return ""
		}},
		{"cluster env", with("TIMERD_BIND_ADDR", "127.0.0.1:7000", "TIMERD_ADVERTISE_ADDR", "10.0.0.5:7001",
			"TIMERD_JOIN", " timerd-0.timerd:7946, 10.0.0.6 ,[::1]:7946", "TIMERD_JOIN_TIMEOUT", "30s",
			"TIMERD_GOSSIP_KEY", gossipKey, "TIMERD_EXPECT", " 3 "), "", nil, func(c *agentConfig) string {
			if c.Gossip.BindAddr != "127.0.0.1:7000" || c.Gossip.AdvertiseAddr != "10.0.0.5:7001" || c.Gossip.JoinTimeout != 30*time.Second || c.Gossip.Expect != 3 ||
				c.Gossip.GossipKey != gossipKey || strings.Join(c.Gossip.Join, "|") != "timerd-0.timerd:7946|10.0.0.6|[::1]:7946" {
				return "cluster env not applied"
			}
			return ""
		}},
		// A retired setting is accepted with any value, ignored, and noted once.
		{"retired setting in env", with("TIMERD_SETTLE_DELAY", "1h"), "", nil, func(c *agentConfig) string {
			if len(c.Retired) != 1 || !strings.HasPrefix(c.Retired[0], "TIMERD_SETTLE_DELAY (or --settle-delay) is no longer used") ||
				!strings.Contains(c.Retired[0], "docs/protocol.md") {
				return "TIMERD_SETTLE_DELAY not noted as retired"
			}
			return ""
		}},
		{"retired setting as a flag", base, "", []string{"--settle-delay", "3s"}, func(c *agentConfig) string {
			if len(c.Retired) != 1 || !strings.Contains(c.Retired[0], "--settle-delay") {
				return "--settle-delay not noted as retired"
			}
			return ""
		}},
		{"retired setting on stdin", base, `{"api_url":"http://x","api_token":"` + tok + `","data_dir":"/s","mq_url":"amqp://mq/","settle_delay":"2s"}`,
			[]string{"--stdin-config"}, func(c *agentConfig) string {
				if len(c.Retired) != 1 || !strings.HasPrefix(c.Retired[0], `stdin config "settle_delay"`) || c.UnknownKeys != nil {
					return "settle_delay not noted as retired"
				}
				return ""
			}},
		{"cluster flags over env", with("TIMERD_JOIN", "a:1", "TIMERD_BIND_ADDR", "127.0.0.1:7000", "TIMERD_EXPECT", "3", "TIMERD_GOSSIP_KEY", gossipKey), "",
			[]string{"--join", "b:2,c:3", "--bind-addr", ":0", "--join-timeout", "1s", "--expect", "5"}, func(c *agentConfig) string {
				if strings.Join(c.Gossip.Join, "|") != "b:2|c:3" || c.Gossip.BindAddr != ":0" || c.Gossip.JoinTimeout != time.Second || c.Gossip.Expect != 5 {
					return "cluster flags did not win"
				}
				return ""
			}},
		{"cluster stdin, join as an array", base, `{"api_url":"http://x","api_token":"` + tok + `","data_dir":"/s","mq_url":"amqp://mq/",
			"join":["p1:7946","p2"],"gossip_key":"` + gossipKey + `","join_timeout":"5s","expect":3}`, []string{"--stdin-config"}, func(c *agentConfig) string {
			if strings.Join(c.Gossip.Join, "|") != "p1:7946|p2" || c.Gossip.GossipKey != gossipKey || c.Gossip.JoinTimeout != 5*time.Second || c.Gossip.Expect != 3 {
				return "cluster stdin config not applied"
			}
			return ""
		}},
		{"token file instead of token", func() map[string]string {
			m := with("ATTUNE_API_TOKEN_FILE", "config_test.go")
			delete(m, "ATTUNE_API_TOKEN")
			return m
		}(), "", nil, func(c *agentConfig) string {
			if c.TokenFile != "config_test.go" || c.Token != "" {
				return "token file not taken"
			}
			return ""
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := loadFor(t, tt.env, tt.stdin, tt.args...)
			if err != nil {
				t.Fatalf("loadAgentConfig(%v) = %v", tt.args, err)
			}
			if msg := tt.check(c); msg != "" {
				t.Errorf("loadAgentConfig(%v): %s: %+v", tt.args, msg, *c)
			}
		})
	}
}

func TestAgentConfigErrors(t *testing.T) {
	tok := testToken(t, time.Hour)
	expired, _, err := (&auth.Issuer{Key: bytes.Repeat([]byte("k"), 32), Now: func() time.Time { return time.Now().Add(-2 * time.Hour) }}).Issue(
		auth.IssueRequest{Subject: "node", Scope: auth.ScopeSensor, TriggerTypes: []string{"core.timer"}, TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	base := map[string]string{"ATTUNE_API_URL": "http://api", "ATTUNE_API_TOKEN": tok, "TIMERD_DATA_DIR": "/d", "ATTUNE_MQ_URL": "amqp://mq/"}
	with := func(kv ...string) map[string]string {
		m := map[string]string{}
		for k, v := range base {
			m[k] = v
		}
		for i := 0; i < len(kv); i += 2 {
			if kv[i+1] == "<unset>" {
				delete(m, kv[i])
				continue
			}
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	tests := []struct {
		name  string
		env   map[string]string
		stdin string
		args  []string
		want  string // the error starts with it
	}{
		{"api url missing", with("ATTUNE_API_URL", "<unset>"), "", nil, "ATTUNE_API_URL: required"},
		{"api url not http", with("ATTUNE_API_URL", "ftp://x"), "", nil, `ATTUNE_API_URL: "ftp://x" is not an http(s) URL`},
		{"api url password hidden", with("ATTUNE_API_URL", "ftp://u:secret@x"), "", nil, `ATTUNE_API_URL: "ftp://u:xxxxx@x"`},
		{"token missing", with("ATTUNE_API_TOKEN", "<unset>"), "", nil, "ATTUNE_API_TOKEN: required"},
		{"token not a JWT", with("ATTUNE_API_TOKEN", "not-a-jwt"), "", nil, "ATTUNE_API_TOKEN: is not a JWT"},
		{"token expired", with("ATTUNE_API_TOKEN", expired), "", nil, "ATTUNE_API_TOKEN: the token expired at"},
		{"token and token file", with("ATTUNE_API_TOKEN_FILE", "config_test.go"), "", nil, "ATTUNE_API_TOKEN_FILE: set it or ATTUNE_API_TOKEN, not both"},
		{"token file missing", with("ATTUNE_API_TOKEN", "<unset>", "ATTUNE_API_TOKEN_FILE", "/nonexistent/t"), "", nil, `ATTUNE_API_TOKEN_FILE: "/nonexistent/t" cannot be read`},
		{"mq url scheme", with("ATTUNE_MQ_URL", "http://u:pw@mq/"), "", nil, `ATTUNE_MQ_URL: scheme "http" is not amqp or amqps`},
		{"mq url with a space", with("ATTUNE_MQ_URL", "amqp://u:pw@mq/v host"), "", nil, "ATTUNE_MQ_URL: URI must not contain whitespace"},
		{"mq exchange too long", with("ATTUNE_MQ_EXCHANGE", strings.Repeat("x", 256)), "", nil, "ATTUNE_MQ_EXCHANGE:"},
		{"sensor ref", with("ATTUNE_SENSOR_REF", "a b"), "", nil, `ATTUNE_SENSOR_REF: "a b" may hold only`},
		{"log level", with("ATTUNE_LOG_LEVEL", "loud"), "", nil, "ATTUNE_LOG_LEVEL:"},
		{"sensor triggers not JSON", with("ATTUNE_SENSOR_TRIGGERS", "[{"), "", nil, "ATTUNE_SENSOR_TRIGGERS: is not a JSON array"},
		{"sensor triggers bad id", with("ATTUNE_SENSOR_TRIGGERS", `[{"id":-1,"trigger_ref":"core.timer"}]`), "", nil, `ATTUNE_SENSOR_TRIGGERS: [0]: id "-1" is not a positive integer`},
		{"data dir missing", with("TIMERD_DATA_DIR", "<unset>"), "", nil, "TIMERD_DATA_DIR (or --data-dir): required"},
		{"workers", with("TIMERD_WORKERS", "lots"), "", nil, `TIMERD_WORKERS: "lots" is not a whole number`},
		{"http addr", with("TIMERD_HTTP_ADDR", "8470"), "", nil, `TIMERD_HTTP_ADDR: "8470" is not host:port`},
		{"queue expires flag", base, "", []string{"--queue-expires", "90d"}, "--queue-expires: 90d is out of range"},
		{"reconcile interval flag", base, "", []string{"--reconcile-interval", "soon"}, `--reconcile-interval: "soon" is not a duration`},
		{"reconcile page size zero", with("TIMERD_RECONCILE_PAGE_SIZE", "0"), "", nil, `TIMERD_RECONCILE_PAGE_SIZE: "0" is not a whole number in 1..10000`},
		{"reconcile page size too large", base, "", []string{"--reconcile-page-size", "10001"}, `--reconcile-page-size: "10001" is not a whole number in 1..10000`},
		{"reconcile page size not a number", with("TIMERD_RECONCILE_PAGE_SIZE", "lots"), "", nil, `TIMERD_RECONCILE_PAGE_SIZE: "lots" is not a whole number in 1..10000`},
		{"reject retry window too short", with("TIMERD_REJECT_RETRY_WINDOW", "500ms"), "", nil, "TIMERD_REJECT_RETRY_WINDOW: 500ms is out of range (1s .. 7d)"},
		{"reject retry window negative", base, "", []string{"--reject-retry-window", "-1m"}, `--reject-retry-window: "-1m" is negative`},
		{"dead letter retention too short", with("TIMERD_DEAD_LETTER_RETENTION", "30s"), "", nil, "TIMERD_DEAD_LETTER_RETENTION: 30s is less than 1m"},
		{"dead letter retention not a duration", with("TIMERD_DEAD_LETTER_RETENTION", "forever"), "", nil, `TIMERD_DEAD_LETTER_RETENTION: "forever" is not a duration`},
		{"shutdown timeout", with("TIMERD_SHUTDOWN_TIMEOUT", "0"), "", nil, "TIMERD_SHUTDOWN_TIMEOUT: 0 is not positive"},
		{"commit failure leave after", with("TIMERD_COMMIT_FAILURE_LEAVE_AFTER", "0"), "", nil, "TIMERD_COMMIT_FAILURE_LEAVE_AFTER: 0 is out of range (1ms .. 24h)"},
		{"no mq and no reconcile", with("ATTUNE_MQ_URL", "<unset>", "TIMERD_RECONCILE_INTERVAL", "0"), "", nil, "TIMERD_RECONCILE_INTERVAL (or --reconcile-interval): 0"},
		{"node name", with("TIMERD_NODE_NAME", "node/1"), "", nil, `TIMERD_NODE_NAME: "node/1" may hold only`},
		{"bind addr", with("TIMERD_BIND_ADDR", "7946"), "", nil, `TIMERD_BIND_ADDR: "7946": address 7946: missing port in address`},
		{"bind addr port", base, "", []string{"--bind-addr", "0.0.0.0:99999"}, `--bind-addr: "0.0.0.0:99999": port "99999": want 0..65535`},
		{"advertise addr not an IP", with("TIMERD_ADVERTISE_ADDR", "node.example:7946"), "", nil, `TIMERD_ADVERTISE_ADDR: "node.example:7946": host must be an IP address`},
		{"join empty entry", with("TIMERD_JOIN", "a:1,,b:2"), "", nil, "TIMERD_JOIN: entry 1 is empty"},
		{"join bad port", with("TIMERD_JOIN", "a:1,b:x"), "", nil, `TIMERD_JOIN: entry 1 "b:x": port "x": want 0..65535`},
		{"join stdin not strings", base, `{"join":[1,2]}`, []string{"--stdin-config"}, `stdin config "join": is not a JSON array of strings`},
		{"expect zero", with("TIMERD_EXPECT", "0"), "", nil, `TIMERD_EXPECT: "0" is not a whole number in 1..1000`},
		{"expect negative", base, "", []string{"--expect", "-3"}, `--expect: "-3" is not a whole number in 1..1000`},
		{"expect too large", with("TIMERD_EXPECT", "1001"), "", nil, `TIMERD_EXPECT: "1001" is not a whole number in 1..1000`},
		{"expect not a number", base, `{"api_url":"http://x","api_token":"` + tok + `","data_dir":"/d","expect":"three"}`, []string{"--stdin-config"}, `stdin config "expect": "three" is not a whole number`},
		{"expect fraction", base, `{"api_url":"http://x","api_token":"` + tok + `","data_dir":"/d","expect":2.5}`, []string{"--stdin-config"}, `stdin config "expect": "2.5" is not a whole number`},
		{"join timeout zero", with("TIMERD_JOIN_TIMEOUT", "0"), "", nil, "TIMERD_JOIN_TIMEOUT: 0 is out of range"},
		{"join timeout not a duration", base, "", []string{"--join-timeout", "ten"}, `--join-timeout: "ten" is not a duration`},
		{"gossip key not base64", with("TIMERD_GOSSIP_KEY", "secret!!key"), "", nil, "TIMERD_GOSSIP_KEY: not valid base64"},
		{"a cluster without a gossip key", with("TIMERD_JOIN", "p:7946"), "", nil, "TIMERD_GOSSIP_KEY (or --gossip-key): required in a cluster"},
		{"a quorum without a gossip key", with("TIMERD_EXPECT", "3"), "", nil, "TIMERD_GOSSIP_KEY (or --gossip-key): required in a cluster"},
		{"insecure, but not true", with("TIMERD_JOIN", "p:7946", "TIMERD_GOSSIP_INSECURE", "yes please"), "", nil, `TIMERD_GOSSIP_INSECURE: "yes please" is not true or false`},
		{"gossip key and keyring file", with("TIMERD_GOSSIP_KEY", base64.StdEncoding.EncodeToString([]byte("0123456789abcdef")),
			"TIMERD_GOSSIP_KEYRING_FILE", keyringFile(t, base64.StdEncoding.EncodeToString([]byte("0123456789abcdef")))), "", nil,
			"TIMERD_GOSSIP_KEYRING_FILE (or --gossip-keyring-file): set it or TIMERD_GOSSIP_KEY"},
		{"keyring file unreadable", with("TIMERD_GOSSIP_KEYRING_FILE", "/nonexistent/keys"), "", nil, "TIMERD_GOSSIP_KEYRING_FILE: open /nonexistent/keys"},
		{"gossip key wrong length", with("TIMERD_GOSSIP_KEY", base64.StdEncoding.EncodeToString([]byte("sixteen-bytes-k!x"))), "", nil, "TIMERD_GOSSIP_KEY: 17 bytes, want 16, 24 or 32"},
		{"stdin bad JSON", base, `{"api_url": "http://x", "api_token": "` + tok + `"`, []string{"--stdin-config"}, "--stdin-config: stdin ends inside the JSON object"},
		{"stdin syntax error", base, `{"api_token": "` + tok + `" oops}`, []string{"--stdin-config"}, "--stdin-config: stdin is not valid JSON (syntax error at byte"},
		{"stdin empty", base, ``, []string{"--stdin-config"}, "--stdin-config: stdin is empty"},
		{"stdin array", base, `[1]`, []string{"--stdin-config"}, "--stdin-config: stdin is a JSON array"},
		{"stdin two objects", base, `{} {}`, []string{"--stdin-config"}, "--stdin-config: stdin has more"},
		{"stdin bad value", base, `{"api_url":"ftp://x"}`, []string{"--stdin-config"}, `stdin config "api_url": "ftp://x" is not an http(s) URL`},
		{"stdin wrong type", base, `{"api_url":"http://x","api_token":"` + tok + `","data_dir":"/d","workers":"many"}`, []string{"--stdin-config"}, `stdin config "workers": "many"`},
		{"stdin missing api url", base, `{"api_token":"` + tok + `","data_dir":"/d"}`, []string{"--stdin-config"}, `stdin config "api_url": required`},
	}
	// An expired configured token is fine when the node kept a valid newer
	// one at its last refresh (docs/token-rotation.md).
	t.Run("expired token, valid kept token", func(t *testing.T) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "api.token"), []byte(tok+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := loadFor(t, with("ATTUNE_API_TOKEN", expired, "TIMERD_DATA_DIR", dir), ""); err != nil {
			t.Errorf("loadAgentConfig with an expired token and a valid kept one = %v, want nil", err)
		}
	})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := loadFor(t, tt.env, tt.stdin, tt.args...)
			if err == nil || !strings.HasPrefix(err.Error(), tt.want) {
				t.Fatalf("loadAgentConfig(%v) = %v, want an error starting %q", tt.args, err, tt.want)
			}
			if msg := err.Error(); strings.Contains(msg, "\n") || strings.Contains(msg, tok) || strings.Contains(msg, expired) ||
				strings.Contains(msg, "secret") || strings.Contains(msg, ":pw@") ||
				strings.Contains(msg, "c2l4dGVlbi") {
				t.Errorf("error %q is not one line without secrets", msg)
			}
		})
	}
}

// A retired setting's flag is accepted but not shown in the help.
func TestRetiredFlagsHidden(t *testing.T) {
	fs := pflag.NewFlagSet("agent", pflag.ContinueOnError)
	registerAgentFlags(fs)
	for _, s := range agentSettings {
		if s.retired != "" && s.flag != "" && !fs.Lookup(s.flag).Hidden {
			t.Errorf("--%s is retired and shown in the help", s.flag)
		}
	}
}

// keyringFile writes keys to a keyring file of the test.
func keyringFile(t *testing.T, keys ...string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "gossip.keys")
	if err := os.WriteFile(p, []byte(strings.Join(keys, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}
