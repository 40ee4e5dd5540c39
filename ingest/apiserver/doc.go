// Package apiserver is the Attune-compatible API that `timerd api` and
// `timerd dev` serve: the rules API (contract §4) whose writes publish rule
// lifecycle messages, the events API that timerd nodes post fires to
// (contract §3), and /health.
//
// State lives in one bbolt file, DataDir/api.db. Rules are also kept in
// memory (listing and reconcile never scan bbolt); events are stored through
// a group-commit goroutine that puts every concurrently waiting insert into
// one transaction, and are indexed by Idempotency-Key, trigger_instance_id and
// rule_ref. Events are listed oldest first and are never deleted.
//
// Authentication is a seam (Config.Authenticate); JWT verification lives in
// package auth.
package apiserver
