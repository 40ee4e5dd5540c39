package store

import (
	"path/filepath"
	"testing"
	"time"
)

// Handed-over events join the outbox ready, survive a reopen, and an invalid one
// changes nothing.
func TestAppendReady(t *testing.T) {
	path := filepath.Join(t.TempDir(), "node.db")
	s, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	slot := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	evs := []Event{
		{RuleID: 7, Slot: slot, IdempotencyKey: "7:1767225600000000000", Body: []byte(`{"a":1}`)},
		{RuleID: 8, Slot: slot, IdempotencyKey: "8:1767225600000000000", Body: []byte(`{"b":2}`)},
	}
	if err := s.AppendReady(evs); err != nil {
		t.Fatal(err)
	}
	if err := s.AppendReady([]Event{{RuleID: 0, Slot: slot, Body: []byte(`{}`)}}); err == nil {
		t.Error("AppendReady of an event of rule 0: no error")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if s, err = Open(path, Options{}); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got, err := s.Outbox(0, 10)
	if err != nil || len(got) != 2 {
		t.Fatalf("outbox after a reopen: %d entries (%v), want 2", len(got), err)
	}
	for i, e := range got {
		if e.Event.IdempotencyKey != evs[i].IdempotencyKey || string(e.Event.Body) != string(evs[i].Body) || e.Pending {
			t.Errorf("entry %d: %+v, want %+v ready", i, e.Event, evs[i])
		}
	}
	if n, _ := s.OutboxLen(); n != 2 {
		t.Errorf("OutboxLen = %d, want 2", n)
	}
}
