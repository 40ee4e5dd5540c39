package cluster

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"

	"github.com/hashicorp/memberlist"

	"github.com/timerd/timerd/cluster/protocol"
)

// A node tells its peers where its HTTP endpoints are in its memberlist node meta,
// so that any node can send an operator to, or ask, the node that owns a rule
// (GET /v1/rules/{id}), and the newest protocol wire version it reads, so that a peer
// writes it none newer (a rolling upgrade). The meta is
// [metaVersion][n][n bytes of host:port][wire version]; a meta without the last byte
// is of a build that reads version 1 only, and builds before it ignore the byte.
// Later builds may append fields after these, which this one ignores. An empty host
// (the node's HTTP listens on every address) stands for the IP its gossip is reached
// at; n = 0, no HTTP endpoints.
const (
	metaVersion    = 1
	maxHTTPAddrLen = 255 // fits in the length byte; memberlist allows 512 bytes of meta
)

// encodeMeta is the node meta telling httpAddr ("" for none) and the wire version
// this build reads.
func encodeMeta(httpAddr string) []byte {
	a := ""
	if host, port, err := net.SplitHostPort(httpAddr); err == nil { // else none, or Validate refused it
		if ip, err := netip.ParseAddr(host); host == "" || err == nil && ip.IsUnspecified() {
			host = ""
		}
		if a = net.JoinHostPort(host, port); len(a) > maxHTTPAddrLen {
			a = ""
		}
	}
	return append(append([]byte{metaVersion, byte(len(a))}, a...), protocol.WireVersion)
}

// wireVersionOf is the wire version to write to a node of meta: the lower of this
// build's and the newest the node reads; version 1 for a meta that does not tell.
func wireVersionOf(meta []byte) byte {
	if len(meta) < 2 || meta[0] != metaVersion || len(meta) <= 2+int(meta[1]) {
		return protocol.MinWireVersion
	}
	return max(protocol.MinWireVersion, min(protocol.WireVersion, meta[2+int(meta[1])]))
}

// decodeMeta is the HTTP address of a node whose gossip is at gossipIP, from its
// meta: "" for no meta, a meta of another version, or one that does not hold a
// host:port with a port in 1..65535 and an IP or DNS name as host.
func decodeMeta(meta []byte, gossipIP net.IP) (string, error) {
	switch {
	case len(meta) == 0:
		return "", nil
	case meta[0] != metaVersion:
		return "", fmt.Errorf("node meta of version %d, want %d", meta[0], metaVersion)
	case len(meta) < 2 || len(meta) < 2+int(meta[1]):
		return "", errors.New("node meta shorter than its length says")
	case meta[1] == 0:
		return "", nil // no HTTP endpoints
	}
	a := string(meta[2 : 2+int(meta[1])])
	host, ps, err := net.SplitHostPort(a)
	if err != nil {
		return "", fmt.Errorf("node meta http address: %w", err)
	}
	if p, err := strconv.ParseUint(ps, 10, 16); err != nil || p == 0 {
		return "", fmt.Errorf("node meta http address: port %q: want 1..65535", ps)
	}
	switch {
	case host == "":
		if gossipIP == nil {
			return "", errors.New("node meta http address: no host and no gossip address")
		}
		host = gossipIP.String()
	case net.ParseIP(host) == nil && !isHostName(host):
		return "", fmt.Errorf("node meta http address: host %q is neither an IP nor a DNS name", host)
	}
	return net.JoinHostPort(host, ps), nil
}

func isHostName(s string) bool {
	return s != "" && !strings.ContainsFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '-')
	})
}

// NodeMeta is this node's meta: its HTTP address (meta.go). memberlist panics on
// meta longer than limit, so a longer one is not sent.
func (d *delegate) NodeMeta(limit int) []byte {
	if m := d.c.meta; len(m) <= limit {
		return m
	}
	return nil
}

// httpAddrOf is the HTTP address n's meta tells, "" if none; a meta that does not
// decode is logged once per member change (set) and ignored.
func (c *Cluster) httpAddrOf(n *memberlist.Node) string {
	a, err := decodeMeta(n.Meta, n.Addr)
	if err != nil {
		c.log.Debug("member's node meta ignored", "member", n.Name, "err", err)
	}
	return a
}

// HTTPAddr is host:port of the HTTP endpoints of member name as its node meta
// tells (this node's own from Config.HTTPAddr), "" when unknown: a member that
// is not known, has no HTTP endpoints, or runs a build that does not tell them.
func (c *Cluster) HTTPAddr(name string) string {
	if name == c.cfg.NodeName {
		return c.httpAddrOf(c.ml.LocalNode())
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if m, ok := c.members[name]; ok {
		return m.http
	}
	return ""
}
