package auth

import (
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
)

// WriteFileAtomic writes data to a new file next to path with mode perm,
// syncs it, renames it over path and syncs the directory: a reader never
// sees half a file, and a crash leaves the old one or the new one.
func WriteFileAtomic(path string, data []byte, perm fs.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	err = f.Chmod(perm)
	if err == nil {
		_, err = f.Write(data)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		_ = d.Sync() // the rename itself; not every file system can
		d.Close()
	}
	return nil
}

// PrivateDir creates dir with mode 0700 if it does not exist, and warns when
// an existing one lets its group or others in: it holds keys, tokens and
// the stores.
func PrivateDir(dir string, log *slog.Logger) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return err
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 && log != nil {
		log.Warn("data directory is open to its group or others; chmod 700 it", "path", dir, "mode", perm.String())
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s is not a directory", dir)
	}
	return nil
}
