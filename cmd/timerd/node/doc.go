// Package node wires one timerd node: the store, the scheduler engine, the
// delivery worker, the lifecycle consumer and reconcile, and the node's HTTP
// endpoints (/metrics, /healthz, /readyz, /v1/status). It lives outside
// package main so tests can start nodes in one process.
package node
