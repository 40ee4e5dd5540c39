package store

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"testing"
	"time"
)

// openTest opens a new store in t.TempDir(), closed at cleanup.
func openTest(t testing.TB, opts Options) *Store {
	t.Helper()
	s, err := Open(filepath.Join(t.TempDir(), "node.db"), opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func reopen(t testing.TB, s *Store) *Store {
	t.Helper()
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	s2, err := Open(s.Path(), Options{})
	if err != nil {
		t.Fatalf("reopen %s: %v", s.Path(), err)
	}
	t.Cleanup(func() { _ = s2.Close() })
	return s2
}

var t0 = time.Date(2025, 3, 30, 1, 0, 0, 0, time.UTC)

func testRule(id int64) Rule {
	return Rule{
		ID:         id,
		Ref:        fmt.Sprintf("pack.rule_%d", id),
		TriggerRef: "core.intervaltimer",
		Params:     json.RawMessage(fmt.Sprintf(`{"unit":"seconds","delta":%d}`, id%60+1)),
		UpdatedAt:  t0.Add(time.Duration(id) * time.Second),
	}
}

func testFire(id int64, slot time.Time, count uint64) FireRecord {
	return FireRecord{
		Watermark: Watermark{Slot: slot, Count: count},
		Event: Event{
			RuleID:         id,
			Slot:           slot,
			IdempotencyKey: fmt.Sprintf("%d:%d", id, slot.UnixNano()),
			Body:           []byte(fmt.Sprintf(`{"trigger_type":"core.intervaltimer","payload":{"rule_id":%d}}`, id)),
		},
	}
}

func ruleEqual(a, b Rule) bool {
	return a.ID == b.ID && a.Ref == b.Ref && a.TriggerRef == b.TriggerRef &&
		string(a.Params) == string(b.Params) && a.UpdatedAt.Equal(b.UpdatedAt)
}

func wmEqual(a, b Watermark) bool { return a.Slot.Equal(b.Slot) && a.Count == b.Count }

func eventEqual(a, b Event) bool {
	return a.RuleID == b.RuleID && a.Slot.Equal(b.Slot) && a.IdempotencyKey == b.IdempotencyKey &&
		string(a.Body) == string(b.Body)
}
