// Package protocol owns the decisions of timerd's fire-once protocol
// (docs/protocol.md), as pure functions and state machines: no store, no
// clock, no network, no logging. Time comes in with every call; what to
// store and schedule goes out in the result. The node (cmd/timerd/node) and
// the simulation (test/sim) drive the same code.
//
// It holds the rule book now (book.go, protocol.md §1): per-rule source
// versions and tombstones, which change to a rule wins (I4), and where a new
// or changed schedule starts, its anchor (I5). Leases, fences and partition
// acquisitions (§2–§5) are coming in member.go.
package protocol
