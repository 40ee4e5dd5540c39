package main

import (
	"testing"
	"time"
)

func TestParseWhen(t *testing.T) {
	now := time.Date(2026, 12, 7, 1, 2, 3, 456_000_000, time.UTC)
	for in, want := range map[string]time.Time{
		"now":                         now.Truncate(time.Second),
		"-90m":                        now.Truncate(time.Second).Add(-90 * time.Minute),
		"2026-12-06T00:00:00Z":        time.Date(2026, 12, 6, 0, 0, 0, 0, time.UTC),
		"2026-12-06T01:00:00.5+01:00": time.Date(2026, 12, 6, 0, 0, 0, 500_000_000, time.UTC),
	} {
		got, err := parseWhen("--from", in, now)
		if err != nil || !got.Equal(want) {
			t.Errorf("parseWhen(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "yesterday", "-", "-2x", "2026-12-06", "+2h"} {
		if _, err := parseWhen("--from", bad, now); err == nil {
			t.Errorf("parseWhen(%q): no error", bad)
		}
	}
}
