// Package store owns a timerd node's bbolt file: the rule catalogue, each rule's fire
// watermark, the outbox of events not yet delivered and the dead letters.
//
// A fire is durable once [Store.CommitFires] returns: the rule's watermark and the
// outbox entry of its event are written in one transaction, and many fires share one
// fsync. The package knows nothing of scheduling; it stores what it is given.
//
// Layout (schema version 2), all keys 8-byte big-endian:
//
//	meta         format marker, schema_version, created_at, outbox/dead-letter counters
//	rules        rule id → rule (binary, see codec.go)
//	tombstones   rule id → the source version of its removal (since schema version 2)
//	watermarks   rule id → slot unix nanos (int64) + fire count (uint64)
//	wmjournal    sequence → the watermarks of one commit, folded into watermarks in bulk (journal.go)
//	outbox       sequence → event
//	deadletters  outbox sequence → event + reason, status, time
package store
