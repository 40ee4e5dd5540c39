// Package attune is the wire contract timerd speaks with Attune (the
// "contract §n" of comments), as data both sides share: the API that
// publishes and the node that consumes.
//
// Rule lifecycle (contract §1): Lifecycle and its four types, ParseLifecycle
// for both message shapes, EnvelopeJSON for the envelope Attune's API
// publishes, RoutingKey and LifecycleRoutingKeys, DefaultExchange, QueueName,
// and Message and Publisher, what travels on the exchange and who sends it.
//
// Events (contract §3): BuildEvent, the POST body of a fire with the payload
// keys of its timer's kind, and IdempotencyKey, "<rule_id>:<slot unix
// nanoseconds>".
//
// Rules API (contract §4): RemoteRule, a rule as the listing shows it.
//
// The package does no I/O and starts no goroutine: transports live in
// package pubsub (RabbitMQ, and the in-process bus of dev mode), the node's side
// in package ingest, the API's in package apiserver.
package attune
