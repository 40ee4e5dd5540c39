// Package node wires one timerd node: the store, the scheduler engine, the
// delivery worker, the lifecycle consumer and reconcile, and the node's HTTP
// endpoints (/metrics, /healthz, /readyz, /v1/status, /v1/dead-letters),
// and Client, what `timerd status` and `timerd dead-letters` ask those
// endpoints with. It lives outside package main so tests can start nodes in
// one process.
package node
