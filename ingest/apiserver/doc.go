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
// Events are listed oldest first (by id) and are never deleted.
//
// Authentication is a seam (Config.Authenticate); JWT verification lives in
// package auth.
package apiserver
