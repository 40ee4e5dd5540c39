package node

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/timerd/timerd/cluster"
	"github.com/timerd/timerd/store"
)

// noAdvertiseTransport is a gossip transport with no address to advertise, as
// memberlist's own is when bound to 0.0.0.0 on a host without a private IP.
type noAdvertiseTransport struct{ memberlist.Transport }

func (noAdvertiseTransport) FinalAdvertiseAddr(string, int) (net.IP, int, error) {
	return nil, 0, errors.New("no private IP address found, and explicit IP not provided")
}

// takenPort is a TCP address in use until the test ends.
func takenPort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln.Addr().String()
}

// New names the setting at fault with a *SettingError, which errors.As finds
// without reading the message.
func TestNewNamesTheBadSetting(t *testing.T) {
	a := startAuthAPI(t, slog.New(slog.DiscardHandler))
	good := a.sensorToken(time.Hour)
	aFile := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(aFile, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		mod     func(*Config)
		setting string
	}{
		{"no data dir", func(c *Config) { c.DataDir = "" }, "TIMERD_DATA_DIR"},
		{"data dir is a file", func(c *Config) { c.DataDir = aFile }, "TIMERD_DATA_DIR"},
		{"http addr in use", func(c *Config) { c.HTTPAddr = takenPort(t) }, "TIMERD_HTTP_ADDR"},
		{"http addr bad port", func(c *Config) { c.HTTPAddr = "127.0.0.1:99999" }, "TIMERD_HTTP_ADDR"},
		{"token not a jwt", func(c *Config) { c.Token = "secret-but-not-a-jwt" }, "ATTUNE_API_TOKEN"},
		{"token file missing", func(c *Config) { c.TokenFile = filepath.Join(t.TempDir(), "none") }, "ATTUNE_API_TOKEN_FILE"},
		{"token and token file", func(c *Config) { c.Token = good; c.TokenFile = "/nonexistent" }, "ATTUNE_API_TOKEN_FILE"},
		{"gossip port in use", func(c *Config) {
			c.Cluster = clusterConfig()
			c.Cluster.BindAddr = takenPort(t)
		}, "TIMERD_BIND_ADDR"},
		{"no address to advertise", func(c *Config) {
			c.Cluster = clusterConfig()
			c.Cluster.Memberlist = func() *memberlist.Config {
				mc := localMemberlist()
				mc.Transport = noAdvertiseTransport{}
				return mc
			}
		}, "TIMERD_ADVERTISE_ADDR"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := Config{DataDir: t.TempDir(), APIURL: a.url, NodeName: "bad"}
			tt.mod(&cfg)
			n, err := New(cfg)
			if err == nil {
				n.Close()
				t.Fatalf("New(%s) = nil error, want a *SettingError for %s", tt.name, tt.setting)
			}
			var se *SettingError
			if !errors.As(err, &se) || se.Setting != tt.setting {
				t.Fatalf("New(%s) = %v, want a *SettingError for %s", tt.name, err, tt.setting)
			}
			if se.Err == nil || !strings.HasPrefix(err.Error(), tt.setting+": ") {
				t.Errorf("New(%s) = %q (cause %v), want it to start %q and keep its cause", tt.name, err, se.Err, tt.setting+": ")
			}
			if strings.Contains(err.Error(), good) || strings.Contains(err.Error(), "secret-but-not-a-jwt") {
				t.Errorf("New(%s) error shows the token: %v", tt.name, err)
			}
		})
	}
	// Gossip's own wording is not needed to tell the two gossip settings apart.
	_, err := New(Config{DataDir: t.TempDir(), APIURL: a.url, Cluster: &cluster.Config{BindAddr: takenPort(t), Memberlist: localMemberlist}})
	if !errors.Is(err, cluster.ErrBind) {
		t.Errorf("New on a gossip port in use = %v, want it to wrap cluster.ErrBind", err)
	}
}

// reopen checks that what a node took is free again: its HTTP port, its gossip
// port and its store file, which would be locked while the node held it.
func reopen(t *testing.T, dataDir, httpAddr, gossipAddr string) {
	t.Helper()
	st, err := store.Open(filepath.Join(dataDir, "node.db"), store.Options{Timeout: 100 * time.Millisecond})
	if err != nil {
		t.Errorf("store reopened: %v, want it free", err)
	} else {
		st.Close()
	}
	for _, addr := range []string{httpAddr, gossipAddr} {
		if addr == "" {
			continue
		}
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			t.Errorf("listen on %s again: %v, want it free", addr, err)
			continue
		}
		ln.Close()
	}
}

// New then Close, without Run, releases the HTTP port, the gossip port and the
// store; Close is idempotent, and the node does not run after it.
func TestNewThenCloseReleasesEverything(t *testing.T) {
	dir := t.TempDir()
	n, err := New(Config{DataDir: dir, APIURL: "http://127.0.0.1:1", HTTPAddr: "127.0.0.1:0", NodeName: "closed",
		Cluster: clusterConfig()})
	if err != nil {
		t.Fatal(err)
	}
	httpAddr, gossipAddr := n.HTTPAddr(), n.GossipAddr()
	if err := n.Close(); err != nil {
		t.Fatalf("Close = %v", err)
	}
	reopen(t, dir, httpAddr, gossipAddr)
	if err := n.Close(); err != nil {
		t.Errorf("second Close = %v, want nil", err)
	}
	if err := n.Run(context.Background()); !errors.Is(err, ErrClosed) {
		t.Errorf("Run after Close = %v, want ErrClosed", err)
	}
}

// A New that fails after the store opened leaves nothing open: the store file
// can be opened again at once.
func TestNewFailingHalfwayReleasesWhatItOpened(t *testing.T) {
	dir := t.TempDir()
	_, err := New(Config{DataDir: dir, APIURL: "http://127.0.0.1:1", HTTPAddr: takenPort(t)})
	var se *SettingError
	if !errors.As(err, &se) || se.Setting != "TIMERD_HTTP_ADDR" {
		t.Fatalf("New = %v, want a *SettingError for TIMERD_HTTP_ADDR", err)
	}
	if _, statErr := os.Stat(filepath.Join(dir, "node.db")); statErr != nil {
		t.Fatalf("the store was not opened before the HTTP port: %v", statErr)
	}
	reopen(t, dir, "", "")

	// Gossip failing last releases the HTTP port and the store taken before it.
	dir = t.TempDir()
	httpAddr := freeAddr(t)
	cc := clusterConfig()
	cc.BindAddr = takenPort(t)
	_, err = New(Config{DataDir: dir, APIURL: "http://127.0.0.1:1", HTTPAddr: httpAddr, Cluster: cc})
	if !errors.As(err, &se) || se.Setting != "TIMERD_BIND_ADDR" {
		t.Fatalf("New = %v, want a *SettingError for TIMERD_BIND_ADDR", err)
	}
	reopen(t, dir, httpAddr, "")
}

// freeAddr is a TCP address free a moment ago, for New to bind.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// After Run returns, Close is safe (and nil): Run released everything itself.
func TestCloseAfterRun(t *testing.T) {
	s := startAPI(t, t.TempDir())
	dir := t.TempDir()
	rn := s.startNode(dir, false)
	httpAddr := rn.HTTPAddr()
	rn.stop(t)
	if err := rn.Close(); err != nil {
		t.Errorf("Close after Run = %v, want nil", err)
	}
	reopen(t, dir, httpAddr, "")
	if err := rn.Run(context.Background()); !errors.Is(err, ErrClosed) {
		t.Errorf("a second Run = %v, want ErrClosed", err)
	}
}
