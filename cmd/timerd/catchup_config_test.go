package main

import (
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/timerd/timerd/ingest"
)

// TIMERD_CATCHUP_RATE and TIMERD_CATCHUP_SHARE: their defaults, each way to
// set them, and the node's config carrying them.
func TestAgentConfigCatchUp(t *testing.T) {
	tok := testToken(t, time.Hour)
	base := map[string]string{"ATTUNE_API_URL": "http://api", "ATTUNE_API_TOKEN": tok, "TIMERD_DATA_DIR": "/d", "ATTUNE_MQ_URL": "amqp://mq/"}
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
	stdin := `{"api_url":"http://x","api_token":"` + tok + `","data_dir":"/d","catchup_rate":250.5,"catchup_share":0.25}`
	for _, tc := range []struct {
		name        string
		env         map[string]string
		stdin       string
		args        []string
		rate, share float64
	}{
		{"defaults", base, "", nil, 0, 0.5},
		{"env", with("TIMERD_CATCHUP_RATE", " 1000 ", "TIMERD_CATCHUP_SHARE", "1"), "", nil, 1000, 1},
		{"flags over env", with("TIMERD_CATCHUP_RATE", "1000"), "", []string{"--catchup-rate", "0.5", "--catchup-share", "0.1"}, 0.5, 0.1},
		{"stdin numbers", base, stdin, []string{"--stdin-config"}, 250.5, 0.25},
		{"auto", with("TIMERD_CATCHUP_RATE", "Auto"), "", nil, 0, 0.5},
		{"off", with("TIMERD_CATCHUP_RATE", "off"), "", nil, ingest.NoCatchUpRate, 0.5},
		{"0 is off", with("TIMERD_CATCHUP_RATE", "0"), "", nil, ingest.NoCatchUpRate, 0.5},
	} {
		c, err := loadFor(t, tc.env, tc.stdin, tc.args...)
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if c.CatchUpRate != tc.rate || c.CatchUpShare != tc.share {
			t.Errorf("%s: rate %v, share %v; want %v, %v", tc.name, c.CatchUpRate, c.CatchUpShare, tc.rate, tc.share)
		}
		if nc := c.nodeConfig(slog.New(slog.DiscardHandler)); nc.CatchUpRate != tc.rate || nc.CatchUpShare != tc.share {
			t.Errorf("%s: node config rate %v, share %v; want %v, %v", tc.name, nc.CatchUpRate, nc.CatchUpShare, tc.rate, tc.share)
		}
	}

	for _, tc := range []struct {
		env  []string
		args []string
		want string
	}{
		{[]string{"TIMERD_CATCHUP_RATE", "-1"}, nil, `TIMERD_CATCHUP_RATE: "-1" is not auto, off or a number of events per second over 0 and at most 1000000`},
		{[]string{"TIMERD_CATCHUP_RATE", "NaN"}, nil, `TIMERD_CATCHUP_RATE: "NaN" is not auto, off or a number`},
		{[]string{"TIMERD_CATCHUP_RATE", "+Inf"}, nil, `TIMERD_CATCHUP_RATE: "+Inf" is not auto, off or a number`},
		{[]string{"TIMERD_CATCHUP_RATE", "2e6"}, nil, `TIMERD_CATCHUP_RATE: "2e6" is not auto, off or a number`},
		{[]string{"TIMERD_CATCHUP_RATE", "fast"}, nil, `TIMERD_CATCHUP_RATE: "fast" is not auto, off or a number`},
		{nil, []string{"--catchup-rate", "100/s"}, `--catchup-rate: "100/s" is not auto, off or a number`},
		{[]string{"TIMERD_CATCHUP_SHARE", "0"}, nil, `TIMERD_CATCHUP_SHARE: "0" is not a fraction over 0 and at most 1 (e.g. 0.5)`},
		{[]string{"TIMERD_CATCHUP_SHARE", "1.5"}, nil, `TIMERD_CATCHUP_SHARE: "1.5" is not a fraction`},
		{[]string{"TIMERD_CATCHUP_SHARE", "50%"}, nil, `TIMERD_CATCHUP_SHARE: "50%" is not a fraction`},
		{[]string{"TIMERD_CATCHUP_SHARE", "NaN"}, nil, `TIMERD_CATCHUP_SHARE: "NaN" is not a fraction`},
		{nil, []string{"--catchup-share", "-0.5"}, `--catchup-share: "-0.5" is not a fraction`},
	} {
		_, err := loadFor(t, with(tc.env...), "", tc.args...)
		if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("%v %v: error %v, want it to start with %q", tc.env, tc.args, err, tc.want)
		}
	}
}
