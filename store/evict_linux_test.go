package store

import (
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

const canEvict = true

// evict drops the file's pages from the page cache, as after a reboot.
func evict(b *testing.B, path string) {
	f, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		b.Fatal(err)
	}
}
