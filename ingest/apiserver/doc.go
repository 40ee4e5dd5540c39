// Package apiserver is the Attune-compatible API that `timerd api` and
// `timerd dev` serve: the rules API (contract §4) whose writes publish rule
// lifecycle messages, the events API that timerd nodes post fires to
// (contract §3), and /health.
//
// State lives in one bbolt file, DataDir/api.db. Rules are also kept in
// memory (listing and reconcile never scan bbolt). Events are stored through
// a group-commit goroutine that puts every concurrently waiting insert into
// one transaction; an Idempotency-Key index lives in bbolt, the
// trigger_instance_id and rule_ref indexes in memory (rebuilt at open).
// Events are listed oldest first (by id); with Config.EventRetention a job
// deletes those older than it, with their index entries, in bounded
// transactions (retention.go).
//
// With Config.SigningKey set, every endpoint but /health takes a bearer
// token (package auth), checked in the order of contract §5: signature with
// HS256 pinned, exp, revocation, scope, and for POST events the token's
// metadata.trigger_types (403 naming the trigger). Service accounts
// (/service-accounts, also under /api/v1) and their revocations live in
// api.db too; revocations are also held in memory for the per-request check,
// and a job deletes those whose tokens have all expired. POST /auth/refresh
// (and Attune's /auth/internal/sensor-token) trade a valid token for a new
// one of the same identity, scope and lifetime. Without a key the server is
// open and the token endpoints answer 501.
package apiserver
