// Package ingest is the node's side of timerd's Attune boundary. The wire
// contract both sides share (lifecycle messages, the event body, the rules
// listing) is package attune; the transports of lifecycle messages are
// package pubsub.
//
// In: rule lifecycle messages from the node's durable RabbitMQ queue
// (Consumer), and the rules API that a node reconciles from (RulesClient);
// at start the agent waits for the API's GET /health (WaitAPIHealthy).
//
// Out: attune.BuildEvent turns a scheduler fire into the event of contract
// §3, which the scheduler commits to the store's outbox with the rule's
// watermark. Delivery then posts the outbox to POST {api}/api/v1/events with
// bounded concurrency, retries what may succeed later with capped, jittered
// backoff, refreshes the token on 401, and moves what the API refuses for
// good to the dead letters. An entry leaves the outbox only after a 2xx or
// a dead letter, so delivery is at least once; a repeat carries the same
// key.
//
// Sub-package apiserver is the Attune-compatible API used by `timerd api`
// and `timerd dev`; it imports attune, never this package.
package ingest
