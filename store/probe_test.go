package store

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// mountTmpfs mounts a tmpfs of size for the test (root only; skipped otherwise).
func mountTmpfs(t *testing.T, size string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting a tmpfs needs root")
	}
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("mount -t tmpfs: %v: %s", err, strings.TrimSpace(string(out)))
	}
	t.Cleanup(func() { _ = exec.Command("umount", "-l", dir).Run() })
	return dir
}

// fill writes path until the file system has no room left.
func fill(t *testing.T, path string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, n := range []int{1 << 20, 4 << 10, 512} {
		buf := make([]byte, n)
		for {
			if _, err := f.Write(buf); errors.Is(err, syscall.ENOSPC) {
				break
			} else if err != nil {
				t.Fatal(err)
			}
		}
	}
}

func TestProbe(t *testing.T) {
	s := openTest(t, Options{})
	if err := s.Probe(); err != nil {
		t.Errorf("Probe of a store with room: %v, want nil", err)
	}
}

// On a full disk the store's commits fail with ENOSPC once it needs fresh pages,
// Probe says ErrNoRoom, nothing committed is lost and the file reopens clean; with
// room again Probe and commits succeed.
func TestFullDisk(t *testing.T) {
	dir := mountTmpfs(t, "8m")
	s, err := Open(filepath.Join(dir, "node.db"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	fill(t, filepath.Join(dir, "fill"))
	if err := s.Probe(); !errors.Is(err, ErrNoRoom) {
		t.Errorf("Probe on a full disk: %v, want ErrNoRoom", err)
	}
	committed := 0
	var commitErr error
	for i := range 100_000 {
		slot := t0.Add(time.Duration(i) * time.Second)
		if commitErr = s.CommitFires([]FireRecord{testFire(int64(i%50+1), slot, uint64(i/50+1))}); commitErr != nil {
			break
		}
		committed++
	}
	if !errors.Is(commitErr, syscall.ENOSPC) {
		t.Fatalf("CommitFires on a full disk after %d commits: %v, want ENOSPC", committed, commitErr)
	}
	s = reopen(t, s)
	if n, err := s.OutboxLen(); err != nil || n != committed {
		t.Errorf("outbox after reopening: %d, %v; want the %d events committed", n, err, committed)
	}
	if err := os.Remove(filepath.Join(dir, "fill")); err != nil {
		t.Fatal(err)
	}
	if err := s.Probe(); err != nil {
		t.Errorf("Probe with room again: %v, want nil", err)
	}
	if err := s.CommitFires([]FireRecord{testFire(1, t0.Add(-time.Hour), 1)}); err != nil {
		t.Errorf("CommitFires with room again: %v", err)
	}
}
