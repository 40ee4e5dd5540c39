package attune

import (
	"encoding/json"
	"testing"
	"time"
)

func TestRemoteRuleVersion(t *testing.T) {
	u := time.Date(2026, 1, 27, 12, 34, 56, 789_000_000, time.UTC)
	c := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name    string
		body    string
		updated time.Time
		created time.Time
		version time.Time
	}{
		{"reference API", `{"id":1,"created":"2026-01-01T00:00:00Z","updated":"2026-01-27T12:34:56.789Z"}`, u, c, u},
		{"_at spelling", `{"id":1,"created_at":"2026-01-01T00:00:00Z","updated_at":"2026-01-27T12:34:56.789Z"}`, u, c, u},
		{"offset", `{"id":1,"updated":"2026-01-27T13:34:56.789+01:00"}`, u, time.Time{}, u},
		{"created only", `{"id":1,"created":"2026-01-01T00:00:00Z"}`, time.Time{}, c, c},
		{"neither", `{"id":1}`, time.Time{}, time.Time{}, time.Time{}},
		{"malformed updated: created", `{"id":1,"updated":"yesterday","created":"2026-01-01T00:00:00Z"}`, time.Time{}, c, c},
		{"updated a number, updated_at a time", `{"id":1,"updated":17,"updated_at":"2026-01-27T12:34:56.789Z"}`, u, time.Time{}, u},
		{"null", `{"id":1,"updated":null}`, time.Time{}, time.Time{}, time.Time{}},
	}
	for _, tt := range tests {
		var r RemoteRule
		if err := json.Unmarshal([]byte(tt.body), &r); err != nil {
			t.Errorf("%s: Unmarshal(%s) = %v", tt.name, tt.body, err)
			continue
		}
		if r.ID != 1 || !r.Updated.Equal(tt.updated) || !r.Created.Equal(tt.created) || !r.Version().Equal(tt.version) {
			t.Errorf("%s: Unmarshal(%s) = id %d updated %v created %v version %v; want 1, %v, %v, %v",
				tt.name, tt.body, r.ID, r.Updated, r.Created, r.Version(), tt.updated, tt.created, tt.version)
		}
	}
	var r RemoteRule
	if err := json.Unmarshal([]byte(`{"id":"x"}`), &r); err == nil {
		t.Errorf("Unmarshal of a string id = nil error, want one")
	}
}
