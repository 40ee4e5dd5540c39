package main

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/timerd/timerd/cmd/timerd/node"
)

// writeConfig writes content to a file name in a fresh directory of the test.
func writeConfig(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestAgentConfigFile(t *testing.T) {
	tok := testToken(t, time.Hour)
	yamlFile := writeConfig(t, "timerd.yaml", `# the node's settings
api_url: http://file-api:8080/
api_token: `+tok+`
mq_url: amqp://mq/
mq_exchange: attune        # an old broker set-up: still accepted
data_dir: /var/lib/timerd
http_addr: 127.0.0.1:9001
node_name: node-0
expect: 3
join: [timerd-0.timerd:7946, 10.0.0.6]
gossip_key: `+gossipKey+`
gossip_insecure: false
reconcile_interval: 2m
queue_expires: 1d12h
delivery_budget: 256
log_level: DEBUG
sensor_triggers:
  - id: 7
    ref: nightly
    trigger_ref: core.datetimetimer
    config: {fire_at: 2026-06-01T12:00:00+02:00}
`)
	jsonFile := writeConfig(t, "timerd.json", `{"api_url":"http://file-api:8080","api_token":"`+tok+`","data_dir":"/var/lib/timerd",
		"mq_url":"amqp://mq/","expect":"3","join":["p1","p2:7000"],"gossip_key":"`+gossipKey+`","workers":4,"reconcile_interval":"90s"}`)
	// Neither .json nor .yaml: the content decides.
	jsonNoExt := writeConfig(t, "timerd.conf", `{"api_url":"http://x","api_token":"`+tok+`","data_dir":"/j","mq_url":"amqp://mq/"}`)
	yamlNoExt := writeConfig(t, "timerd.conf", "api_url: http://x\napi_token: "+tok+"\ndata_dir: /y\nmq_url: amqp://mq/\n")
	partial := writeConfig(t, "partial.yml", "http_addr: 127.0.0.1:1\nworkers: 4\nreconcile_interval: 1m\nsettle_delay: 2s\nnode_name: null\ncolour: blue\n")
	required := map[string]string{"ATTUNE_API_URL": "http://env-api", "ATTUNE_API_TOKEN": tok, "TIMERD_DATA_DIR": "/env", "ATTUNE_MQ_URL": "amqp://mq/"}
	with := func(m map[string]string, kv ...string) map[string]string {
		out := map[string]string{}
		for k, v := range m {
			out[k] = v
		}
		for i := 0; i < len(kv); i += 2 {
			out[kv[i]] = kv[i+1]
		}
		return out
	}
	tests := []struct {
		name  string
		env   map[string]string
		stdin string
		args  []string
		check func(c *agentConfig) string // "" when right
	}{
		{"YAML", nil, "", []string{"--config", yamlFile}, func(c *agentConfig) string {
			if c.APIURL != "http://file-api:8080" || c.Token != tok || c.MQ.URL != "amqp://mq/" || c.MQ.Exchange != "attune" ||
				c.DataDir != "/var/lib/timerd" || c.HTTPAddr != "127.0.0.1:9001" || c.NodeName != "node-0" || c.Gossip.Expect != 3 ||
				strings.Join(c.Gossip.Join, "|") != "timerd-0.timerd:7946|10.0.0.6" || c.Gossip.GossipKey != gossipKey ||
				c.ReconcileInterval != 2*time.Minute || c.MQ.QueueExpires != 36*time.Hour || c.DeliveryBudget != 256 ||
				c.LogLevel.String() != "DEBUG" || c.ConfigFile != yamlFile || c.UnknownFileKeys != nil {
				return "YAML settings not applied"
			}
			// A YAML timestamp keeps its spelling, offset and all.
			if len(c.StartupRules) != 1 || c.StartupRules[0].ID != 7 || string(c.StartupRules[0].Params) != `{"fire_at":"2026-06-01T12:00:00+02:00"}` {
				return "sensor_triggers not applied as written"
			}
			return ""
		}},
		{"JSON", nil, "", []string{"--config", jsonFile}, func(c *agentConfig) string {
			if c.APIURL != "http://file-api:8080" || c.DataDir != "/var/lib/timerd" || c.Gossip.Expect != 3 || c.Workers != 4 ||
				strings.Join(c.Gossip.Join, "|") != "p1|p2:7000" || c.ReconcileInterval != 90*time.Second || c.MQ.Exchange != "attune.events" {
				return "JSON settings not applied"
			}
			return ""
		}},
		{"JSON by content", nil, "", []string{"--config", jsonNoExt}, func(c *agentConfig) string {
			if c.DataDir != "/j" {
				return "JSON without .json not read"
			}
			return ""
		}},
		{"YAML by content", nil, "", []string{"--config", yamlNoExt}, func(c *agentConfig) string {
			if c.DataDir != "/y" {
				return "YAML without .yaml not read"
			}
			return ""
		}},
		{"TIMERD_CONFIG_FILE", map[string]string{"TIMERD_CONFIG_FILE": yamlFile}, "", nil, func(c *agentConfig) string {
			if c.DataDir != "/var/lib/timerd" || c.ConfigFile != yamlFile {
				return "TIMERD_CONFIG_FILE not read"
			}
			return ""
		}},
		{"--config over TIMERD_CONFIG_FILE", map[string]string{"TIMERD_CONFIG_FILE": yamlFile}, "", []string{"--config", jsonFile}, func(c *agentConfig) string {
			if c.ConfigFile != jsonFile || c.Workers != 4 {
				return "--config did not win"
			}
			return ""
		}},
		{"env over the file, flags over env", with(required, "TIMERD_WORKERS", "8", "TIMERD_NODE_NAME", "env-node"), "",
			[]string{"--config", partial, "--http-addr", "127.0.0.1:3"}, func(c *agentConfig) string {
				switch {
				case c.HTTPAddr != "127.0.0.1:3":
					return "the flag did not win over the file"
				case c.Workers != 8 || c.NodeName != "env-node" || c.APIURL != "http://env-api":
					return "the environment did not win over the file"
				case c.ReconcileInterval != time.Minute:
					return "the file's own setting lost"
				case strings.Join(c.UnknownFileKeys, ",") != "colour":
					return "unknown key not reported"
				case len(c.Retired) != 1 || !strings.HasPrefix(c.Retired[0], partial+": settle_delay is no longer used"):
					return "retired key not named with the file"
				case c.Deprecated == nil || !strings.HasPrefix(c.Deprecated[0], "TIMERD_WORKERS (or --workers, or workers in "+partial+") is deprecated"):
					return "deprecated setting from env named as from the file: " + strings.Join(c.Deprecated, ";")
				}
				return ""
			}},
		{"stdin over the file", required, `{"api_url":"http://stdin","api_token":"` + tok + `","data_dir":"/s","workers":2}`,
			[]string{"--stdin-config", "--config", partial}, func(c *agentConfig) string {
				if c.APIURL != "http://stdin" || c.Workers != 2 || c.ReconcileInterval != time.Minute || c.HTTPAddr != "127.0.0.1:1" {
					return "stdin did not layer over the file"
				}
				return ""
			}},
		{"stdin mode reads no TIMERD_CONFIG_FILE", map[string]string{"TIMERD_CONFIG_FILE": partial},
			`{"api_url":"http://stdin","api_token":"` + tok + `","data_dir":"/s","mq_url":"amqp://mq/"}`, []string{"--stdin-config"}, func(c *agentConfig) string {
				if c.ConfigFile != "" || c.Workers != 0 {
					return "TIMERD_CONFIG_FILE read with --stdin-config"
				}
				return ""
			}},
		{"an empty YAML file sets nothing", required, "", []string{"--config", writeConfig(t, "empty.yaml", "# nothing yet\n")}, func(c *agentConfig) string {
			if c.APIURL != "http://env-api" || c.HTTPAddr != ":8470" {
				return "empty file changed something"
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

func TestAgentConfigFileErrors(t *testing.T) {
	tok := testToken(t, time.Hour)
	required := "api_url: http://x\napi_token: " + tok + "\ndata_dir: /d\nmq_url: amqp://u:pw@mq/\n"
	file := func(name, content string) string { return writeConfig(t, name, content) }
	missing := filepath.Join(t.TempDir(), "timerd.yaml")
	tests := []struct {
		name string
		path string            // the config file, by --config
		env  map[string]string // instead, or besides
		want string            // the error starts with it ("{path}" stands for path)
	}{
		{"missing", missing, nil, `--config: "{path}" cannot be read: no such file or directory`},
		{"missing, from the environment", "", map[string]string{"TIMERD_CONFIG_FILE": missing}, `TIMERD_CONFIG_FILE: "` + missing + `" cannot be read: no such file or directory`},
		{"a directory", t.TempDir(), nil, `--config: "{path}" cannot be read: is a directory`},
		{"malformed YAML", file("t.yaml", "api_token: "+tok+"\n  data_dir: [\n"), nil, "{path}: is not valid YAML: line"},
		{"malformed JSON", file("t.json", `{"api_token": "`+tok+`" "data_dir": "/d"}`), nil, "{path}: is not valid JSON (syntax error at byte"},
		{"empty JSON", file("t.json", ""), nil, "{path}: is empty, want one JSON object"},
		{"JSON array", file("t.json", `["`+tok+`"]`), nil, "{path}: is a JSON array, want one JSON object"},
		{"YAML list", file("t.yaml", "- "+tok+"\n"), nil, "{path}: is a YAML list, want a mapping of settings"},
		{"YAML scalar", file("t.yaml", tok+"\n"), nil, "{path}: is a YAML scalar, want a mapping of settings"},
		{"two YAML documents", file("t.yaml", required+"---\nworkers: 2\n"), nil, "{path}: has more than one YAML document"},
		{"a key twice", file("t.yaml", required+"data_dir: /e\n"), nil, "{path}: data_dir: appears twice"},
		{"a list for a string", file("t.yaml", required+"http_addr: [a, b]\n"), nil, "{path}: http_addr: is a list, want a string, number or boolean"},
		{"a mapping for a string", file("t.yaml", "api_token: {value: "+tok+"}\napi_url: http://x\n"), nil, "{path}: api_token: is an object (a mapping), want a string"},
		{"a mapping for a list", file("t.yaml", required+"join: {a: 1}\n"), nil, "{path}: join: is an object (a mapping), want a list"},
		{"a word for a number", file("t.yaml", required+"expect: three\n"), nil, `{path}: expect: "three" is not a whole number`},
		{"a word for a number, JSON", file("t.json", `{"expect":true}`), nil, `{path}: expect: "true" is not a whole number`},
		{"infinity", file("t.yaml", required+"workers: .inf\n"), nil, "{path}: workers: line 5: is not a value timerd reads"},
		{"a bad value", file("t.yaml", required+"http_addr: 8470\n"), nil, `{path}: http_addr: "8470" is not host:port`},
		{"a bad secret is not echoed", file("t.yaml", "api_url: http://x\ndata_dir: /d\napi_token: secret-not-a-jwt\n"), nil, "{path}: api_token: is not a JWT"},
		{"a bad URL's password is not echoed", file("t.yaml", "api_url: ftp://u:secret@x\n"), nil, `{path}: api_url: "ftp://u:xxxxx@x"`},
		{"a required setting missing", file("t.yaml", "data_dir: /d\n"), nil, "ATTUNE_API_URL (or api_url in {path}): required"},
		{"the file's token and the environment's token file", file("t.yaml", required), map[string]string{"ATTUNE_API_TOKEN_FILE": "config_test.go"},
			"ATTUNE_API_TOKEN_FILE (or api_token_file in {path}): set it or {path}: api_token, not both"},
		{"a cluster without a key, in the file", file("t.yaml", required+"expect: 3\n"), nil, "TIMERD_GOSSIP_KEY (or --gossip-key, or gossip_key in {path}): required in a cluster"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var args []string
			if tt.path != "" {
				args = []string{"--config", tt.path}
			}
			_, err := loadFor(t, tt.env, "", args...)
			want := strings.ReplaceAll(tt.want, "{path}", tt.path)
			if err == nil || !strings.HasPrefix(err.Error(), want) {
				t.Fatalf("loadAgentConfig(%v, env %v) = %v, want an error starting %q", args, tt.env, err, want)
			}
			if msg := err.Error(); strings.Contains(msg, "\n") || strings.Contains(msg, tok) || strings.Contains(msg, "secret") || strings.Contains(msg, ":pw@") {
				t.Errorf("error %q is not one line without secrets", msg)
			}
		})
	}
}

// A bad config file is a usage error: exit status 2, one line naming the
// file, before anything starts.
func TestAgentConfigFileExit2(t *testing.T) {
	p := writeConfig(t, "timerd.yaml", "data_dir: [\n")
	_, code, err := run("agent", "--config", p)
	if code != 2 || err == nil || !strings.HasPrefix(err.Error(), p+": is not valid YAML") {
		t.Errorf("timerd agent --config (malformed) = exit %d, %v; want exit 2 naming %s", code, err, p)
	}
	_, code, err = run("agent", "--config", p+".missing")
	if code != 2 || err == nil || !strings.HasPrefix(err.Error(), "--config: ") {
		t.Errorf("timerd agent --config (missing) = exit %d, %v; want exit 2 naming --config", code, err)
	}
}

// A setting the node refuses at start (a port in use) is named as the
// configuration gave it: the config file's key.
func TestAgentSettingErrorNamesTheFile(t *testing.T) {
	p := writeConfig(t, "timerd.yaml", "api_url: http://x\napi_token: "+testToken(t, time.Hour)+"\ndata_dir: /d\nmq_url: amqp://mq/\nhttp_addr: 127.0.0.1:1\n")
	c, err := loadFor(t, nil, "", "--config", p)
	if err != nil {
		t.Fatal(err)
	}
	err = c.settingUsageError(&node.SettingError{Setting: "TIMERD_HTTP_ADDR", Err: errors.New("address already in use")})
	if want := p + ": http_addr: address already in use"; err == nil || err.Error() != want || exitCode(err) != 2 {
		t.Errorf("settingUsageError = %v (exit %d), want %q (exit 2)", err, exitCode(err), want)
	}
	err = c.settingUsageError(&node.SettingError{Setting: "TIMERD_BIND_ADDR", Err: errors.New("in use")})
	if want := "TIMERD_BIND_ADDR (or --bind-addr, or bind_addr in " + p + "): in use"; err == nil || err.Error() != want {
		t.Errorf("settingUsageError = %v, want %q", err, want)
	}
}

// docs/configuration.md names every variable, key and flag of the agent and
// every variable of `timerd api`, with the defaults a user meets.
func TestConfigurationDocNamesEverySetting(t *testing.T) {
	b, err := os.ReadFile("../../docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	for _, s := range agentSettings {
		names := []string{"`" + s.env + "`", "`" + s.key + "`"}
		if s.flag != "" {
			names = append(names, "`--"+s.flag+"`")
		}
		for _, n := range names {
			if !strings.Contains(doc, n) {
				t.Errorf("docs/configuration.md does not name %s", n)
			}
		}
	}
	api, _, err := newRootCmd().Find([]string{"api"})
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"addr", "data-dir", "key-file", "mq-url", "mq-exchange", "revocation-cleanup-interval"} {
		if env := apiEnv(f); !strings.Contains(doc, "| `"+env+"` | `--"+f+"` |") || !strings.Contains(api.Flags().Lookup(f).Usage, env) {
			t.Errorf("docs/configuration.md or --%s's help lacks %s", f, env)
		}
	}
	for _, n := range []string{"`TIMERD_CONFIG_FILE`", "`--config`", "| `ATTUNE_MQ_EXCHANGE` | — | `mq_exchange` | `attune.events` |"} {
		if !strings.Contains(doc, n) {
			t.Errorf("docs/configuration.md does not have %s", n)
		}
	}
}
