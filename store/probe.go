package store

import (
	bolt "go.etcd.io/bbolt"
)

// probeSize is the value a probe writes: large enough that bbolt needs fresh pages
// for it (a small commit can succeed on a full disk by reusing freed pages, then the
// next fire's commit fails), small enough to cost nothing.
const probeSize = 64 << 10

var keyProbe = []byte("probe")

// Probe commits a write of probeSize bytes and then its removal: nil when the store
// takes commits again (the disk has room). It changes nothing a reader sees.
func (s *Store) Probe() error {
	err := s.update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketMeta).Put(keyProbe, make([]byte, probeSize))
	})
	if err != nil {
		return s.wrap("probe", err)
	}
	return s.wrap("probe", s.update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketMeta).Delete(keyProbe)
	}))
}
