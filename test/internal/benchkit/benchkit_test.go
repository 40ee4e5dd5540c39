package benchkit

import (
	"strings"
	"testing"
)

// A TailBuffer keeps the last 64 KiB: the end of a long output, not its start.
func TestTailBufferKeepsTheEnd(t *testing.T) {
	var b TailBuffer
	for i := range 3 {
		if n, err := b.Write([]byte(strings.Repeat(string(rune('a'+i)), 40<<10))); n != 40<<10 || err != nil {
			t.Fatalf("Write = %d, %v", n, err)
		}
	}
	s := b.String()
	if len(s) != 64<<10 || !strings.HasSuffix(s, strings.Repeat("c", 40<<10)) || strings.Contains(s, "a") {
		t.Errorf("kept %d bytes, starting %q; want the last 64 KiB: 24 KiB of b, 40 KiB of c", len(s), s[:4])
	}
}
