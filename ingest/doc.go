// Package ingest is timerd's Attune boundary.
//
// In: rule lifecycle messages (ParseLifecycle; Bus, the in-process stand-in
// for RabbitMQ in dev mode) and the rules API that a node reconciles from
// (RulesClient).
//
// Out: BuildEvent turns a scheduler fire into the event of contract §3 (the
// POST body and its Idempotency-Key, "<rule_id>:<slot unix nanoseconds>"),
// which the scheduler commits to the store's outbox with the rule's
// watermark. Delivery then posts the outbox to POST {api}/api/v1/events with
// bounded concurrency, retries what may succeed later with capped, jittered
// backoff, refreshes the token on 401, and moves what the API refuses for
// good to the dead letters. An entry leaves the outbox only after a 2xx or
// a dead letter, so delivery is at least once; a repeat carries the same
// key.
//
// Sub-package apiserver is the Attune-compatible API used by `timerd api`
// and `timerd dev`.
package ingest
