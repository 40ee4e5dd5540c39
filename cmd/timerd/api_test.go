package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestAPIRequiresKeyFile(t *testing.T) {
	t.Setenv("TIMERD_API_KEY_FILE", "")
	_, code, err := run("api", "--data-dir", t.TempDir())
	if code != 2 || err == nil || !strings.Contains(err.Error(), "--key-file") || !strings.Contains(err.Error(), "token keygen") {
		t.Errorf("timerd api without --key-file = exit %d, %v; want exit 2 naming --key-file and token keygen", code, err)
	}
	short := filepath.Join(t.TempDir(), "key")
	if err := os.WriteFile(short, []byte("short\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, code, err = run("api", "--data-dir", t.TempDir(), "--key-file", short)
	if code != 2 || err == nil || !strings.Contains(err.Error(), "too short") {
		t.Errorf("timerd api --key-file (5 bytes) = exit %d, %v; want exit 2 saying the key is too short", code, err)
	}
}
