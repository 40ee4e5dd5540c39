//go:build !linux

package store

const mmapPopulate = 0
