package cluster

import (
	"encoding/base64"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/timerd/timerd/test/testkit"
)

var (
	oldKey = base64.StdEncoding.EncodeToString([]byte("0123456789abcdef"))
	newKey = base64.StdEncoding.EncodeToString([]byte("fedcba9876543210fedcba9876543210"))
)

func writeKeyring(t *testing.T, path string, keys ...string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte("# gossip keys, the primary first\n"+strings.Join(keys, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil { // as a Kubernetes secret volume swaps its files
		t.Fatal(err)
	}
}

// The gossip key of a running three-node cluster is rotated by editing each
// node's keyring file, three times over: add the new key, make it primary,
// drop the old one. The cluster stays whole at every step; afterwards a node
// with only the old key cannot join.
func TestGossipKeyRotationWithoutDowntime(t *testing.T) {
	dir := t.TempDir()
	var nodes []*Cluster
	var files []string
	var regs []*prometheus.Registry
	for i, name := range []string{"a", "b", "c"} {
		file := filepath.Join(dir, name+".keys")
		writeKeyring(t, file, oldKey)
		var join []string
		if i > 0 {
			join = []string{nodes[0].LocalAddr()}
		}
		cfg := testConfig(name, join...)
		cfg.GossipKeyringFile, cfg.KeyringReload = file, 50*time.Millisecond
		reg := prometheus.NewRegistry()
		cfg.Registerer = reg
		c, _ := start(t, cfg)
		nodes, files, regs = append(nodes, c), append(files, file), append(regs, reg)
	}
	whole := func(step string) {
		t.Helper()
		testkit.Eventually(t, 20*time.Second, step+": every node sees three", func() bool {
			for _, c := range nodes {
				if !viewHas(c, 3, "a", "b", "c") {
					return false
				}
			}
			return true
		})
	}
	whole("start")
	steps := []struct {
		name string
		keys []string
	}{
		{"add the new key", []string{oldKey, newKey}},
		{"make it primary", []string{newKey, oldKey}},
		{"drop the old key", []string{newKey}},
	}
	for _, st := range steps {
		for i, f := range files {
			writeKeyring(t, f, st.keys...)
			// Node by node, as a rollout goes: the cluster stays whole in between.
			testkit.Eventually(t, 5*time.Second, st.name+" applied on "+nodes[i].Name(), func() bool {
				return len(nodes[i].keyring.GetKeys()) == len(st.keys) &&
					string(nodes[i].keyring.GetPrimaryKey()) == mustDecode(t, st.keys[0])
			})
			// Under the mixed keyrings every node still hears every other: a
			// ping is encrypted with the sender's primary and answered.
			for _, from := range nodes {
				for _, to := range nodes {
					if from == to {
						continue
					}
					addr, err := net.ResolveUDPAddr("udp", to.LocalAddr())
					if err != nil {
						t.Fatal(err)
					}
					if _, err := from.ml.Ping(to.Name(), addr); err != nil {
						t.Fatalf("%s, %s done: %s cannot ping %s: %v", st.name, nodes[i].Name(), from.Name(), to.Name(), err)
					}
				}
			}
		}
		whole(st.name)
	}
	if n := gatheredValue(t, regs[1], "timerd_gossip_keys"); n != 1 {
		t.Errorf("timerd_gossip_keys = %v after the rotation, want 1", n)
	}
	if n := gatheredValue(t, regs[1], "timerd_gossip_keyring_reloads_total", "ok"); n != 3 {
		t.Errorf("keyring reloads ok = %v, want 3", n)
	}

	// A node with only the old key is not heard.
	stale := testConfig("stale", nodes[0].LocalAddr())
	stale.GossipKey, stale.JoinTimeout, stale.RejoinInterval = oldKey, 500*time.Millisecond, -1
	start(t, stale)
	time.Sleep(time.Second)
	if got := len(nodes[0].Members()); got != 3 {
		t.Errorf("a node with the retired key joined: a lists %d members", got)
	}

	// A broken file changes nothing, and says so.
	if err := os.WriteFile(files[0], []byte("not base64!\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 5*time.Second, "the broken file refused", func() bool {
		return gatheredValue(t, regs[0], "timerd_gossip_keyring_reloads_total", "error") >= 1
	})
	if string(nodes[0].keyring.GetPrimaryKey()) != mustDecode(t, newKey) || len(nodes[0].keyring.GetKeys()) != 1 {
		t.Errorf("a broken keyring file changed the keys in use")
	}
}

func mustDecode(t *testing.T, s string) string {
	t.Helper()
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// gatheredValue is the value of the sample of name whose label values include
// every one of labelValues.
func gatheredValue(t *testing.T, reg *prometheus.Registry, name string, labelValues ...string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	sample:
		for _, m := range mf.GetMetric() {
			for _, want := range labelValues {
				found := false
				for _, l := range m.GetLabel() {
					found = found || l.GetValue() == want
				}
				if !found {
					continue sample
				}
			}
			switch {
			case m.GetGauge() != nil:
				return m.GetGauge().GetValue()
			case m.GetCounter() != nil:
				return m.GetCounter().GetValue()
			}
		}
	}
	return -1
}

func TestReadKeyringRejects(t *testing.T) {
	dir := t.TempDir()
	tests := []struct{ name, text, want string }{
		{"empty", "\n# nothing\n", "no key"},
		{"bad base64", "%%%\n", "line 1: not valid base64"},
		{"short key", base64.StdEncoding.EncodeToString([]byte("short")) + "\n", "line 1: 5 bytes"},
		{"twice", oldKey + "\n" + oldKey + "\n", "line 2: the same key twice"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := filepath.Join(dir, tt.name)
			if err := os.WriteFile(p, []byte(tt.text), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := readKeyring(p)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("readKeyring(%q) = %v, want an error containing %q", tt.text, err, tt.want)
			}
			if err != nil && (strings.Contains(err.Error(), oldKey) || strings.Contains(err.Error(), "%%%")) {
				t.Errorf("the error quotes the key: %v", err)
			}
		})
	}
	if err := (Config{NodeName: "n", GossipKey: oldKey, GossipKeyringFile: filepath.Join(dir, "twice")}).Validate(); err == nil {
		t.Errorf("GossipKey with GossipKeyringFile validated")
	}
}
