// Package build tests the release build: the binary `make build` makes (the
// target the Dockerfile runs), alone in an empty root as in a scratch or
// distroless image, and the Dockerfile against what that binary reads.
package build
