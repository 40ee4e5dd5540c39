//go:build !linux

package store

import "testing"

const canEvict = false

func evict(b *testing.B, path string) {}
