package node

import (
	"runtime"
	"strings"
	"testing"
)

// A build without make's -X (go build, go test) says "devel" and still
// gives a revision line, never an empty one.
func TestVersionTextWithoutLdflags(t *testing.T) {
	if v := Version(); v != "devel" {
		t.Errorf("Version() = %q, want devel in a test binary", v)
	}
	lines := strings.Split(strings.TrimSuffix(VersionText(), "\n"), "\n")
	if len(lines) != 5 || lines[0] != "timerd version devel" {
		t.Fatalf("VersionText:\n%s", VersionText())
	}
	for i, prefix := range []string{"  revision:   ", "  build date: ", "  go version: ", "  platform:   "} {
		value, ok := strings.CutPrefix(lines[i+1], prefix)
		if !ok || strings.TrimSpace(value) == "" {
			t.Errorf("line %d %q: want %q and a value", i+2, lines[i+1], prefix)
		}
	}
	if want := "  go version: " + runtime.Version(); lines[3] != want {
		t.Errorf("%q, want %q", lines[3], want)
	}
}
