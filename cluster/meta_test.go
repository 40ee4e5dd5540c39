package cluster

import (
	"errors"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/timerd/timerd/cluster/protocol"
	"github.com/timerd/timerd/test/testkit"
)

func TestMetaRoundTrip(t *testing.T) {
	gossip := net.ParseIP("10.0.0.7")
	tests := []struct {
		name, httpAddr, want string
	}{
		{"ip", "10.0.0.5:8470", "10.0.0.5:8470"},
		{"every v4 address: the gossip IP", "0.0.0.0:8470", "10.0.0.7:8470"},
		{"every v6 address: the gossip IP", "[::]:8470", "10.0.0.7:8470"},
		{"no host: the gossip IP", ":8470", "10.0.0.7:8470"},
		{"v6", "[fd00::1]:8470", "[fd00::1]:8470"},
		{"dns name", "timerd-0.timerd.svc:8470", "timerd-0.timerd.svc:8470"},
		{"none", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			meta := encodeMeta(tt.httpAddr)
			if len(meta) > memberlist.MetaMaxSize {
				t.Fatalf("encodeMeta(%q) is %d bytes, over memberlist's %d", tt.httpAddr, len(meta), memberlist.MetaMaxSize)
			}
			got, err := decodeMeta(meta, gossip)
			if err != nil || got != tt.want {
				t.Errorf("decodeMeta(encodeMeta(%q)) = %q, %v; want %q", tt.httpAddr, got, err, tt.want)
			}
		})
	}
	// A later version may append fields: this one reads its own and ignores the rest.
	ext := append(encodeMeta("10.0.0.5:8470"), 0x02, 'x', 'y')
	if got, err := decodeMeta(ext, gossip); err != nil || got != "10.0.0.5:8470" {
		t.Errorf("decodeMeta(with trailing fields) = %q, %v; want 10.0.0.5:8470", got, err)
	}
	m := encodeMeta("h:" + strings.Repeat("1", 300))
	if got, err := decodeMeta(m, gossip); got != "" || err != nil || wireVersionOf(m) != protocol.WireVersion {
		t.Errorf("encodeMeta(300-byte address) reads as %q, %v, wire version %d; want no address, this build's version",
			got, err, wireVersionOf(m))
	}
}

// TestMetaWireVersion: a peer is written the newest wire version both read: version 1
// for a build whose meta does not tell (efe9e0f's: no last byte, or no meta at all).
func TestMetaWireVersion(t *testing.T) {
	addr := "10.0.0.5:8470"
	before := append([]byte{metaVersion, byte(len(addr))}, addr...) // the meta of a build before wire version 2
	tests := []struct {
		name string
		meta []byte
		want byte
	}{
		{"this build", encodeMeta(addr), protocol.WireVersion},
		{"this build, no HTTP", encodeMeta(""), protocol.WireVersion},
		{"a build before", before, 1},
		{"no meta", nil, 1},
		{"other meta version", append([]byte{2, 0}, 9), 1},
		{"a newer build", append(slices.Clone(before), protocol.WireVersion+5, 'x'), protocol.WireVersion},
		{"version 0", append(slices.Clone(before), 0), 1},
		{"length past the end", []byte{metaVersion, 40, 'a'}, 1},
	}
	for _, tt := range tests {
		if got := wireVersionOf(tt.meta); got != tt.want {
			t.Errorf("%s: wireVersionOf(%x) = %d, want %d", tt.name, tt.meta, got, tt.want)
		}
	}
}

func TestMetaDecodeRefusesGarbage(t *testing.T) {
	gossip := net.ParseIP("10.0.0.7")
	bad := map[string][]byte{
		"other version":        {2, 4, 'a', ':', '8', '0'},
		"length past the end":  {1, 40, 'a', ':', '8'},
		"version only":         {1},
		"no port":              append([]byte{1, 8}, "10.0.0.5"...),
		"port 0":               append([]byte{1, 10}, "10.0.0.5:0"...),
		"port too big":         append([]byte{1, 14}, "10.0.0.5:99999"...),
		"host with a slash":    append([]byte{1, 12}, "evil/x.y:800"...),
		"host with a space":    append([]byte{1, 9}, "a b.c:800"...),
		"host with a newline":  append([]byte{1, 9}, "a\nb.c:800"...),
		"no host, no gossip":   append([]byte{1, 5}, ":8470"...),
		"userinfo in the host": append([]byte{1, 13}, "user@evil:800"...),
	}
	for name, meta := range bad {
		ip := gossip
		if name == "no host, no gossip" {
			ip = nil
		}
		if got, err := decodeMeta(meta, ip); err == nil || got != "" {
			t.Errorf("%s: decodeMeta(%q) = %q, %v; want an error and no address", name, meta, got, err)
		}
	}
	if got, err := decodeMeta(nil, gossip); got != "" || err != nil {
		t.Errorf("decodeMeta(nil) = %q, %v; want none, no error (an older build)", got, err)
	}
}

func TestConfigValidateHTTPAddr(t *testing.T) {
	for _, a := range []string{"8470", "host", "h:0", "h:70000", "h:" + strings.Repeat("1", 300)} {
		err := Config{NodeName: "n", HTTPAddr: a}.Validate()
		var fe *FieldError
		if !errors.As(err, &fe) || fe.Field != "HTTPAddr" {
			t.Errorf("Validate(HTTPAddr %q) = %v, want a FieldError of HTTPAddr", a, err)
		}
	}
	for _, a := range []string{"", "127.0.0.1:8470", ":8470", "[::]:8470"} {
		if err := (Config{NodeName: "n", HTTPAddr: a}).Validate(); err != nil {
			t.Errorf("Validate(HTTPAddr %q) = %v, want nil", a, err)
		}
	}
}

// Two nodes learn each other's HTTP address from the gossip, a wildcard one as the
// gossip IP with the HTTP port, and list it among the members.
func TestMembersTellTheirHTTPAddr(t *testing.T) {
	t.Parallel()
	ca := testConfig("a")
	ca.HTTPAddr = "127.0.0.1:8470"
	a, _ := start(t, ca)
	cb := testConfig("b", a.LocalAddr())
	cb.HTTPAddr = "0.0.0.0:9470"
	b, _ := start(t, cb)
	cc := testConfig("c", a.LocalAddr()) // no HTTP endpoints
	c, _ := start(t, cc)
	testkit.Eventually(t, 10*time.Second, "a, b and c to see each other", func() bool {
		return viewHas(a, 3) && viewHas(b, 3) && viewHas(c, 3)
	})
	for _, n := range []*Cluster{a, b, c} {
		if got := n.HTTPAddr("a"); got != "127.0.0.1:8470" {
			t.Errorf("%s: HTTPAddr(a) = %q, want 127.0.0.1:8470", n.Name(), got)
		}
		if got := n.HTTPAddr("b"); got != "127.0.0.1:9470" {
			t.Errorf("%s: HTTPAddr(b) = %q, want 127.0.0.1:9470 (the gossip IP, the HTTP port)", n.Name(), got)
		}
		if got := n.HTTPAddr("c"); got != "" {
			t.Errorf("%s: HTTPAddr(c) = %q, want none", n.Name(), got)
		}
		if got := n.HTTPAddr("nobody"); got != "" {
			t.Errorf("%s: HTTPAddr(nobody) = %q, want none", n.Name(), got)
		}
	}
	for _, m := range c.Members() {
		if m.Name == "a" && m.HTTPAddr != "127.0.0.1:8470" {
			t.Errorf("c.Members: a's HTTPAddr = %q, want 127.0.0.1:8470", m.HTTPAddr)
		}
	}
}
