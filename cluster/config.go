package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/prometheus/client_golang/prometheus"
)

// Defaults of Config.
const (
	DefaultGossipPort     = 7946
	DefaultBindAddr       = "0.0.0.0:7946"
	DefaultJoinTimeout    = 10 * time.Second
	DefaultRejoinInterval = 10 * time.Second
	DefaultLeaveTimeout   = 5 * time.Second
	// MaxExpect bounds Config.Expect.
	MaxExpect = 1000
)

// ErrConfig reports a bad Config field.
var ErrConfig = errors.New("cluster config")

// FieldError is the bad field Validate reports: errors.Is(err, ErrConfig)
// holds, and errors.As gives the field and what is wrong with it apart.
type FieldError struct {
	Field string // the Config field, such as BindAddr
	Err   error  // what is wrong with it
}

func (e *FieldError) Error() string { return ErrConfig.Error() + ": " + e.Field + ": " + e.Err.Error() }

func (e *FieldError) Is(target error) bool { return target == ErrConfig }

func (e *FieldError) Unwrap() error { return e.Err }

// Config of one node's cluster membership. The zero value plus NodeName-or-hostname is a
// valid single-node config.
type Config struct {
	// NodeName is the unique name of this node in the cluster; default the host name.
	NodeName string
	// BindAddr is host:port for gossip (UDP and TCP); port 0 picks a free one.
	BindAddr string
	// AdvertiseAddr is the IP[:port] peers reach this node at; default from BindAddr.
	AdvertiseAddr string
	// Join lists peers as host[:port] (port default the bind port); a DNS name joins every
	// address it resolves to. Empty: this node starts alone at once.
	Join []string
	// JoinTimeout bounds the retries of the first join; then the node decides it is alone.
	JoinTimeout time.Duration
	// RejoinInterval spaces the background joins: every interval, for as long as the node
	// sees fewer members than Expect or than the join list resolves to (itself counted once),
	// it resolves Join again and joins the addresses it does not see as members. So nodes
	// started together, and islands of one cluster, merge. Negative disables.
	RejoinInterval time.Duration
	// Expect is N, the expected number of members: a node fires nothing while its view holds
	// fewer than a quorum, ⌊N/2⌋+1, itself included (View.Quorum). A node that sees more
	// members than Expect takes the most it has seen as N (less those that left gracefully
	// since), so two disjoint halves never both hold a quorum. 1 (the default) requires no
	// quorum: every node fires what its ring gives it, alone too. 1..MaxExpect.
	Expect int
	// Replicas is how many stores, the firer's included, hold a fire before it is
	// delivered, when fewer than a quorum: min(⌊N/2⌋+1, Replicas); 0 (the default) is
	// the quorum. Fewer copies make what each node receives of the others' fires fall as
	// nodes are added, and make a takeover need N − W + 1 members answering
	// (docs/protocol.md §6). The same on every node. 0 or 2..MaxExpect.
	Replicas int
	// Resolve looks up a host name of Join: IP addresses, or IP:port to override the entry's
	// port (an SRV lookup); nil: net.DefaultResolver.LookupHost. A seam for tests.
	Resolve func(ctx context.Context, host string) ([]string, error)
	// GossipKey is a base64 AES key (16, 24 or 32 bytes): gossip is encrypted and a node
	// with another key cannot join. Empty: plain gossip (unless GossipKeyringFile).
	GossipKey string
	// GossipKeyringFile names a file of such keys, one a line, the first the primary; it
	// is read again every KeyringReload and changes are applied without a restart (a key
	// rotation: keyring.go). Exclusive with GossipKey.
	GossipKeyringFile string
	// KeyringReload: how often GossipKeyringFile is read; default DefaultKeyringReload.
	KeyringReload time.Duration
	// LeaveTimeout bounds Leave when its context has no earlier deadline.
	LeaveTimeout time.Duration
	// HTTPAddr is host:port of this node's HTTP endpoints, told to the peers in its
	// memberlist node meta (Cluster.HTTPAddr): a host of 0.0.0.0, :: or none stands for
	// the IP its gossip is reached at. "": the node serves none.
	HTTPAddr string
	// Ring shapes the hash ring; every node must use the same.
	Ring RingConfig
	// MessageBuffer is the capacity of Messages, the protocol messages received and not yet
	// read; default DefaultMessageBuffer.
	MessageBuffer int

	Logger     *slog.Logger          // nil: discard
	Registerer prometheus.Registerer // nil: metrics are not registered
	// Memberlist returns the base memberlist config, a fresh one per call; nil:
	// LANMemberlist. Tests pass memberlist.DefaultLocalConfig. Name, addresses, key, logger
	// and delegates are set over it.
	Memberlist func() *memberlist.Config
}

// LANMemberlist is memberlist's LAN config without its compression. memberlist
// compresses every packet it sends with LZW, a fresh coder each time: a Fired message
// between two nodes cost 238 µs and 177 KB of allocations with it, 99 µs and 40 KB
// without (BenchmarkProtocolFired), and at 1,000,000 rules it was the largest part of a
// starved node's protocol CPU. A node's packets are small (heartbeats, their acks, the
// fires' copies); a batch of records shrinks by half, the others barely. Peers read
// compressed and plain packets alike, so nodes set either way mix.
func LANMemberlist() *memberlist.Config {
	mc := memberlist.DefaultLANConfig()
	mc.EnableCompression = false
	return mc
}

func (c Config) withDefaults() Config {
	if c.NodeName == "" {
		c.NodeName, _ = os.Hostname()
	}
	if c.BindAddr == "" {
		c.BindAddr = DefaultBindAddr
	}
	if c.JoinTimeout == 0 {
		c.JoinTimeout = DefaultJoinTimeout
	}
	if c.RejoinInterval == 0 {
		c.RejoinInterval = DefaultRejoinInterval
	}
	if c.LeaveTimeout == 0 {
		c.LeaveTimeout = DefaultLeaveTimeout
	}
	if c.MessageBuffer == 0 {
		c.MessageBuffer = DefaultMessageBuffer
	}
	if c.KeyringReload == 0 {
		c.KeyringReload = DefaultKeyringReload
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Memberlist == nil {
		c.Memberlist = LANMemberlist
	}
	if c.Expect == 0 {
		c.Expect = 1
	}
	if c.Resolve == nil {
		c.Resolve = net.DefaultResolver.LookupHost
	}
	c.Ring = c.Ring.withDefaults()
	return c
}

// Validate reports the first bad field of c (after defaults).
func (c Config) Validate() error {
	c = c.withDefaults()
	bad := func(field string, format string, args ...any) error {
		return &FieldError{Field: field, Err: fmt.Errorf(format, args...)}
	}
	if c.NodeName == "" {
		return bad("NodeName", "empty and no host name")
	}
	if _, _, err := splitHostPort(c.BindAddr, false); err != nil {
		return bad("BindAddr", "%q: %v", c.BindAddr, err)
	}
	if c.AdvertiseAddr != "" {
		host, _, err := splitHostPort(c.AdvertiseAddr, true)
		if err != nil {
			return bad("AdvertiseAddr", "%q: %v", c.AdvertiseAddr, err)
		}
		if net.ParseIP(host) == nil {
			return bad("AdvertiseAddr", "%q: host must be an IP address", c.AdvertiseAddr)
		}
	}
	for i, j := range c.Join {
		if _, _, err := splitHostPort(j, true); err != nil {
			return bad("Join", "entry %d %q: %v", i, j, err)
		}
	}
	if c.HTTPAddr != "" {
		if _, p, err := splitHostPort(c.HTTPAddr, false); err != nil || p == 0 {
			return bad("HTTPAddr", "%q: want host:port with a port in 1..65535", c.HTTPAddr)
		}
		if len(c.HTTPAddr) > maxHTTPAddrLen {
			return bad("HTTPAddr", "longer than %d bytes", maxHTTPAddrLen)
		}
	}
	if c.JoinTimeout < 0 {
		return bad("JoinTimeout", "%v: must not be negative", c.JoinTimeout)
	}
	if c.Expect < 1 || c.Expect > MaxExpect {
		return bad("Expect", "%d: want 1..%d (the expected number of members)", c.Expect, MaxExpect)
	}
	if c.Replicas != 0 && (c.Replicas < 2 || c.Replicas > MaxExpect) {
		return bad("Replicas", "%d: want 0 (a quorum) or 2..%d", c.Replicas, MaxExpect)
	}
	if c.LeaveTimeout < 0 {
		return bad("LeaveTimeout", "%v: must not be negative", c.LeaveTimeout)
	}
	if _, err := c.gossipKey(); err != nil {
		return bad("GossipKey", "%v", err)
	}
	if c.GossipKeyringFile != "" {
		if c.GossipKey != "" {
			return bad("GossipKeyringFile", "set with GossipKey: use one of them")
		}
		if _, err := readKeyring(c.GossipKeyringFile); err != nil {
			return bad("GossipKeyringFile", "%v", err)
		}
	}
	if c.KeyringReload < 0 {
		return bad("KeyringReload", "%v: must not be negative", c.KeyringReload)
	}
	if err := c.Ring.Validate(); err != nil {
		return bad("Ring", "%v", err)
	}
	if c.MessageBuffer < 1 {
		return bad("MessageBuffer", "%d: must be positive", c.MessageBuffer)
	}
	return nil
}

// gossipKey decodes GossipKey; nil when unset. The error never quotes the key.
func (c Config) gossipKey() ([]byte, error) {
	if c.GossipKey == "" {
		return nil, nil
	}
	return decodeGossipKey(c.GossipKey)
}

// Encrypted reports whether gossip is encrypted (a key or a keyring file).
func (c Config) Encrypted() bool { return c.GossipKey != "" || c.GossipKeyringFile != "" }

// splitHostPort splits host:port; with portOptional a bare host (or [v6]) gives port -1.
func splitHostPort(s string, portOptional bool) (string, int, error) {
	host, ps, err := net.SplitHostPort(s)
	if err != nil {
		if !portOptional {
			return "", 0, err
		}
		h := strings.TrimSuffix(strings.TrimPrefix(s, "["), "]")
		if h == "" || strings.Contains(h, ":") && net.ParseIP(h) == nil {
			return "", 0, err
		}
		return h, -1, nil
	}
	if host == "" && portOptional {
		return "", 0, errors.New("empty host")
	}
	p, err := strconv.ParseUint(ps, 10, 16)
	if err != nil {
		return "", 0, fmt.Errorf("port %q: want 0..65535", ps)
	}
	return host, int(p), nil
}

// memberlistConfig is a fresh memberlist config for c (already defaulted and valid).
// deadNodeReclaimTime: see memberlistConfig.
const deadNodeReclaimTime = time.Millisecond

func (c Config) memberlistConfig(d *delegate) (*memberlist.Config, error) {
	mc := c.Memberlist()
	if mc == nil {
		return nil, fmt.Errorf("%w: Memberlist returned nil", ErrConfig)
	}
	mc.Name = c.NodeName
	host, port, _ := splitHostPort(c.BindAddr, false)
	if host == "" {
		host = "0.0.0.0"
	}
	mc.BindAddr, mc.BindPort = host, port
	mc.AdvertiseAddr, mc.AdvertisePort = "", port
	if c.AdvertiseAddr != "" {
		ah, ap, _ := splitHostPort(c.AdvertiseAddr, true)
		mc.AdvertiseAddr = ah
		if ap >= 0 {
			mc.AdvertisePort = ap
		}
	}
	key, err := c.gossipKey()
	if err != nil {
		return nil, err
	}
	mc.SecretKey, mc.Keyring = key, nil
	if c.GossipKeyringFile != "" {
		keys, err := readKeyring(c.GossipKeyringFile)
		if err != nil {
			return nil, err
		}
		if mc.Keyring, err = memberlist.NewKeyring(keys, keys[0]); err != nil {
			return nil, err
		}
		mc.SecretKey = nil
	}
	// memberlist emits its own metrics through hashicorp/go-metrics' global, whose default
	// sink is a blackhole; we never install one (metrics.NewGlobal), so nothing is kept.
	mc.Logger, mc.LogOutput = newStdLogger(c.Logger.With("lib", "memberlist")), nil
	mc.Delegate, mc.Events = d, d
	mc.Conflict, mc.Merge, mc.Alive, mc.Ping = nil, nil, nil, nil
	// A node that comes back under its name at another address (a pod
	// restarted with a new IP) may take the name over as soon as the old
	// one is dead; memberlist's default 0 refuses it for good, and the
	// returning node would run beside peers that do not list it. (Back
	// before its old self is declared dead, it is accepted at the next
	// push/pull after that.)
	mc.DeadNodeReclaimTime = deadNodeReclaimTime
	return mc, nil
}
