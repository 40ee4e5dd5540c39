package auth

import (
	"bytes"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A signing key its group or others may read is refused, not warned about:
// whoever reads it can sign any token.
func TestLoadKeyRefusesAReadableKey(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "key")
	if err := GenerateKeyFile(path); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadKey(path, nil); err != nil {
		t.Fatalf("LoadKey of a 0600 key: %v", err)
	}
	for _, mode := range []os.FileMode{0o640, 0o604, 0o644} {
		if err := os.Chmod(path, mode); err != nil {
			t.Fatal(err)
		}
		_, err := LoadKey(path, nil)
		if !errors.Is(err, ErrKeyReadable) || !strings.Contains(err.Error(), "chmod 600") {
			t.Errorf("LoadKey of a %v key = %v, want ErrKeyReadable saying chmod 600", mode, err)
		}
	}
}

// WriteFileAtomic leaves the file with its mode and content and no
// temporary file beside it; PrivateDir makes a 0700 directory and warns of
// an open one.
func TestWriteFileAtomicAndPrivateDir(t *testing.T) {
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	dir := filepath.Join(t.TempDir(), "data")
	if err := PrivateDir(dir, log); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(dir); fi.Mode().Perm() != 0o700 || logs.Len() != 0 {
		t.Errorf("new data dir mode %v, log %q; want 0700 and no warning", fi.Mode().Perm(), logs.String())
	}
	path := filepath.Join(dir, "api.token")
	for _, content := range []string{"one\n", "two\n"} {
		if err := WriteFileAtomic(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		b, _ := os.ReadFile(path)
		fi, _ := os.Stat(path)
		if string(b) != content || fi.Mode().Perm() != 0o600 {
			t.Errorf("after writing %q: %q, mode %v", content, b, fi.Mode().Perm())
		}
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("the directory holds %d files after two atomic writes, want 1", len(entries))
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := PrivateDir(dir, log); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logs.String(), "chmod 700") {
		t.Errorf("an existing 0755 data dir was not warned about: %q", logs.String())
	}
}
