package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io/fs"
	"os"
)

// bbolt's meta page, as laid out by go.etcd.io/bbolt internal/common (native byte order):
// a 16-byte page header, then magic, version, pageSize, flags (uint32 each), root bucket
// (pgid, sequence), freelist pgid, high-water pgid, txid, checksum (FNV-64a of the
// preceding 56 bytes).
const (
	boltMagic      = 0xED0CDAED
	boltVersion    = 2
	metaOffset     = 16
	metaChecksumAt = 56
	metaLen        = 64
)

type boltMeta struct {
	pageSize uint32
	pgid     uint64
	txid     uint64
}

// precheck refuses a file too short for the pages its meta claims. bbolt maps the file
// and would touch those pages while opening: past the end of the file that is SIGBUS,
// which kills the process. Files that are missing, empty or have no valid meta are
// left to bbolt to create or reject.
func precheck(path string) error {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	size := fi.Size()
	if size == 0 || !fi.Mode().IsRegular() {
		return nil
	}

	best := latestMeta(f)
	if best == nil {
		return nil
	}
	if need := int64(best.pgid) * int64(best.pageSize); size < need {
		return fmt.Errorf("%w: file is %d bytes, its meta page needs %d (truncated?)", ErrCorrupt, size, need)
	}
	return nil
}

// latestMeta is the valid meta page with the highest txid, as bbolt would pick, or nil.
func latestMeta(f *os.File) *boltMeta {
	var best *boltMeta
	consider := func(m *boltMeta) {
		if m != nil && (best == nil || m.txid > best.txid) {
			best = m
		}
	}
	m0 := readMeta(f, 0)
	consider(m0)
	if m0 != nil {
		consider(readMeta(f, int64(m0.pageSize)))
	} else {
		// Same probe as bbolt: page sizes 1 KiB … 16 MiB.
		for i := 0; i <= 14 && best == nil; i++ {
			consider(readMeta(f, int64(1024)<<i))
		}
	}
	return best
}

func readMeta(f *os.File, off int64) *boltMeta {
	var buf [metaOffset + metaLen]byte
	if _, err := f.ReadAt(buf[:], off); err != nil {
		return nil // includes a short read: no whole meta here
	}
	m := buf[metaOffset:]
	ne := binary.NativeEndian
	if ne.Uint32(m[0:]) != boltMagic || ne.Uint32(m[4:]) != boltVersion {
		return nil
	}
	h := fnv.New64a()
	h.Write(m[:metaChecksumAt])
	if h.Sum64() != ne.Uint64(m[metaChecksumAt:]) {
		return nil
	}
	if ne.Uint32(m[8:]) < 1024 {
		return nil
	}
	return &boltMeta{pageSize: ne.Uint32(m[8:]), pgid: ne.Uint64(m[40:]), txid: ne.Uint64(m[48:])}
}
