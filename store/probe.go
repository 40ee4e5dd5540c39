package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"
)

// ProbeRoom is the free space a probe wants on the store's file system. A probe
// commit alone proves little on a full disk: bbolt reuses the pages it freed, so one
// commit succeeds and the next, which needs a fresh page, fails.
const ProbeRoom = 1 << 20

// ErrNoRoom: the file system holding the store has less than ProbeRoom free.
var ErrNoRoom = errors.New("no room on the store's file system")

var keyProbe = []byte("probe")

// Probe reports whether the store takes commits again: its file system has
// ProbeRoom free (for an unprivileged user) and a small commit succeeds. The
// commit writes a key of the meta bucket that nothing reads.
func (s *Store) Probe() error {
	free, err := freeBytes(filepath.Dir(s.path))
	if err != nil {
		return s.wrap("probe", err)
	}
	if free < ProbeRoom {
		return s.wrap("probe", fmt.Errorf("%w: %d bytes free, want %d", ErrNoRoom, free, ProbeRoom))
	}
	return s.wrap("probe", s.update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketMeta).Put(keyProbe, binary.BigEndian.AppendUint64(nil, uint64(time.Now().UnixNano())))
	}))
}
