// Package deploy checks the deployment files of docs/deploy: that the Kubernetes
// manifests decode strictly into the Kubernetes API types, that the kustomization lists
// exactly them, and that they set only settings timerd reads, on the ports it listens on,
// with the probes, grace period, secrets and cluster size its shutdown and gossip need.
// It has only tests; they read the files and timerd's settings table
// (cmd/timerd/config.go), and start nothing.
package deploy
