package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

func TestAPIRequiresKeyFile(t *testing.T) {
	t.Setenv("TIMERD_API_KEY_FILE", "")
	_, code, err := run("api", "--data-dir", t.TempDir())
	if code != 2 || err == nil || !strings.Contains(err.Error(), "--key-file") || !strings.Contains(err.Error(), "token keygen") {
		t.Errorf("timerd api without --key-file = exit %d, %v; want exit 2 naming --key-file and token keygen", code, err)
	}
	short := filepath.Join(t.TempDir(), "key")
	if err := os.WriteFile(short, []byte("short\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, code, err = run("api", "--data-dir", t.TempDir(), "--key-file", short)
	if code != 2 || err == nil || !strings.Contains(err.Error(), "too short") {
		t.Errorf("timerd api --key-file (5 bytes) = exit %d, %v; want exit 2 saying the key is too short", code, err)
	}
}

// Every flag of `timerd api` has an environment variable, named in its
// help, and the help shows no variable's value as a default.
func TestAPIEveryFlagHasAVariable(t *testing.T) {
	t.Setenv("TIMERD_API_MQ_URL", "amqp://u:hunter2@mq/")
	out, code, err := run("api", "--help")
	if code != 0 {
		t.Fatalf("timerd api --help: exit %d, %v", code, err)
	}
	if strings.Contains(out, "hunter2") {
		t.Errorf("timerd api --help shows the value of TIMERD_API_MQ_URL:\n%s", out)
	}
	want := map[string]string{
		"addr":                        "TIMERD_API_ADDR",
		"data-dir":                    "TIMERD_API_DATA_DIR",
		"key-file":                    "TIMERD_API_KEY_FILE",
		"mq-url":                      "TIMERD_API_MQ_URL",
		"mq-exchange":                 "TIMERD_API_MQ_EXCHANGE",
		"revocation-cleanup-interval": "TIMERD_API_REVOCATION_CLEANUP_INTERVAL",
		"event-retention":             "TIMERD_API_EVENT_RETENTION",
		"load-rules":                  "TIMERD_API_LOAD_RULES",
		"log-level":                   "ATTUNE_LOG_LEVEL",
		"log-format":                  "TIMERD_LOG_FORMAT",
	}
	api, _, err := newRootCmd().Find([]string{"api"})
	if err != nil {
		t.Fatal(err)
	}
	api.Flags().VisitAll(func(f *pflag.Flag) {
		if f.Name == "help" {
			return
		}
		env, ok := want[f.Name]
		if !ok {
			t.Errorf("--%s has no environment variable in this test's list", f.Name)
			return
		}
		if !strings.Contains(f.Usage, "(env "+env+")") {
			t.Errorf("--%s: usage %q does not name %s", f.Name, f.Usage, env)
		}
	})
}

// A variable sets its flag's value; a flag given wins; an error names where
// the bad value came from and never echoes a password.
func TestAPIVariables(t *testing.T) {
	key := filepath.Join(t.TempDir(), "signing.key")
	if _, code, err := run("token", "keygen", "--out", key); code != 0 {
		t.Fatalf("token keygen: %v", err)
	}
	tests := []struct {
		name string
		env  []string // name, value, …
		args []string
		want string // the error starts with it
	}{
		{"data dir from the environment", []string{"TIMERD_API_DATA_DIR", t.TempDir(), "TIMERD_API_KEY_FILE", key, "TIMERD_API_ADDR", "nope"}, nil,
			`TIMERD_API_ADDR: "nope": listen tcp: address nope: missing port in address`},
		{"the flag wins", []string{"TIMERD_API_ADDR", "127.0.0.1:99999"}, []string{"--data-dir", t.TempDir(), "--key-file", key, "--addr", "nope"},
			`--addr: "nope"`},
		{"cleanup interval", []string{"TIMERD_API_REVOCATION_CLEANUP_INTERVAL", "soon"}, []string{"--data-dir", t.TempDir(), "--key-file", key},
			`TIMERD_API_REVOCATION_CLEANUP_INTERVAL: "soon" is not a duration`},
		{"cleanup interval zero", nil, []string{"--data-dir", t.TempDir(), "--key-file", key, "--revocation-cleanup-interval", "0"},
			`--revocation-cleanup-interval: 0 is not positive`},
		{"mq url", []string{"TIMERD_API_MQ_URL", "http://u:hunter2@mq/"}, []string{"--data-dir", t.TempDir(), "--key-file", key},
			`TIMERD_API_MQ_URL: scheme "http" is not amqp or amqps`},
		{"mq exchange empty by flag", []string{"TIMERD_API_MQ_URL", "amqp://u:hunter2@mq/"}, []string{"--data-dir", t.TempDir(), "--key-file", key, "--mq-exchange", ""},
			`--mq-exchange: is empty`},
		{"key file", []string{"TIMERD_API_KEY_FILE", "/nonexistent/key"}, []string{"--data-dir", t.TempDir()}, "TIMERD_API_KEY_FILE: "},
		{"data dir missing", nil, []string{"--key-file", key}, "--data-dir (or TIMERD_API_DATA_DIR): required"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, k := range []string{"TIMERD_API_ADDR", "TIMERD_API_DATA_DIR", "TIMERD_API_KEY_FILE", "TIMERD_API_MQ_URL",
				"TIMERD_API_MQ_EXCHANGE", "TIMERD_API_REVOCATION_CLEANUP_INTERVAL", "ATTUNE_LOG_LEVEL", "TIMERD_LOG_FORMAT"} {
				t.Setenv(k, "")
			}
			for i := 0; i < len(tt.env); i += 2 {
				t.Setenv(tt.env[i], tt.env[i+1])
			}
			_, code, err := run(append([]string{"api"}, tt.args...)...)
			if code != 2 || err == nil || !strings.HasPrefix(err.Error(), tt.want) {
				t.Fatalf("timerd api %v (env %v) = exit %d, %v; want exit 2 and an error starting %q", tt.args, tt.env, code, err, tt.want)
			}
			if strings.Contains(err.Error(), "hunter2") || strings.Contains(err.Error(), "\n") {
				t.Errorf("error %q is not one line without the password", err)
			}
		})
	}
}

// No flag of any command takes a back-quoted word of its usage for its
// value's name (pflag's UnquoteUsage): `timerd api --help` once showed
// "--key-file timerd token keygen".
func TestNoBackQuotesInFlagUsage(t *testing.T) {
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		c.Flags().VisitAll(func(f *pflag.Flag) {
			if strings.Contains(f.Usage, "`") {
				name, _ := pflag.UnquoteUsage(f)
				t.Errorf("timerd %s --%s: the usage has back-quotes; the help shows the value as %q", c.Name(), f.Name, name)
			}
		})
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(newRootCmd())
	out, _, _ := run("api", "--help")
	if !strings.Contains(out, "--key-file string") {
		t.Errorf("timerd api --help does not show --key-file string:\n%s", out)
	}
}
