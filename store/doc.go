// Package store owns a timerd node's bbolt file: the rule catalogue, each rule's fire
// watermark, the outbox of events not yet delivered and the dead letters.
//
// A fire is durable once [Store.CommitFires] returns: the rule's watermark and the
// outbox entry of its event are written in one transaction, and many fires share one
// fsync. The package knows nothing of scheduling; it stores what it is given.
//
// For the fire-once protocol (docs/protocol.md) it also keeps each watermark's fire
// chain, the fire each outbox event stands for, the events not yet deliverable
// (pending), and what protocol.Member needs across restarts (incarnation, holdings,
// promised epochs, fences); *Store is a protocol.Store.
//
// Housekeeping (maintenance.go): [Store.WriteBackup] streams a consistent snapshot of an
// open store (a node's GET /v1/backup); [Backup], [Compact] and [Verify] work on the file
// of a node that is not running (`timerd store`), and refuse one a process holds.
//
// Layout (schema version 3), keys 8-byte big-endian unless said:
//
//	meta         format marker, schema_version, created_at, outbox/dead-letter/pending counters
//	rules        rule id → rule (binary, see codec.go)
//	tombstones   rule id → the source version of its removal (since schema version 2)
//	watermarks   rule id → slot unix nanos (int64) + fire count (uint64) [+ fire chain]
//	wmjournal    sequence → the watermarks of one commit, folded into watermarks in bulk (journal.go)
//	outbox       sequence → event (ready: deliverable)
//	pending      rule id, slot, firer → event not deliverable yet (pending.go; since schema version 3)
//	protocol     incarnation, held/, epochs/, fences/ (protocol.go; since schema version 3)
//	deadletters  outbox sequence → event + reason, status, time
//	missed       rule id, sequence → a run of slots that did not fire on time, why, when (missed.go;
//	             created at Open when missing, outside the schema version)
package store
