// Package cluster owns a node's membership (hashicorp/memberlist), the consistent-hash ring
// that says which node owns a rule (buraksezer/consistent, wrapped in Ring), and the
// transport of the fire-once protocol's messages (cluster/protocol), which decides what a
// node fires.
//
// Lifecycle: New (binds, gossips, owns nothing) → Join (joined, or alone after JoinTimeout;
// publishes the first View) → on every membership change a new View (members, quorum) →
// Leave (tell the peers, leave, shut down).
//
// The protocol's messages travel through the same memberlist: Send (UDP when the message
// fits one datagram, else TCP from a bounded queue per peer), Messages (decoded, from live
// members only), Known and KnownChanges (the live members for protocol.Known); PartitionOf
// and RingOf give the protocol its partitions and rings.
//
// memberlist reports its own metrics to hashicorp/go-metrics' global sink, a blackhole by
// default; this package never installs one, so they cost nothing and are not exported.
// What it does count is every byte of the gossip sockets, by wrapping memberlist's network
// transport (netbytes.go: Cluster.NetBytes, timerd_cluster_network_bytes_total).
// Its log goes to the injected slog.Logger.
package cluster
