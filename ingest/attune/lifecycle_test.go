package attune

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestParseLifecycle(t *testing.T) {
	ts := time.Date(2026, 1, 27, 12, 34, 56, 789_000_000, time.UTC)
	tests := []struct {
		name string
		body string
		key  string
		want Lifecycle
	}{
		{
			name: "envelope",
			body: `{"message_id":"m-1","correlation_id":"c-1","message_type":"RuleCreated","version":"1.0",
				"timestamp":"2026-01-27T12:34:56.789Z","headers":{"retry_count":0,"source_service":"api-service"},
				"payload":{"rule_id":123,"rule_ref":"ops.nightly","trigger_id":7,"trigger_ref":"core.intervaltimer",
				"action_ref":"core.echo","trigger_params":{"interval":5,"unit":"seconds"},"enabled":true}}`,
			want: Lifecycle{Type: RuleCreated, RuleID: 123, RuleRef: "ops.nightly", TriggerRef: "core.intervaltimer",
				Params: json.RawMessage(`{"interval":5,"unit":"seconds"}`), Enabled: true, Timestamp: ts,
				MessageID: "m-1", TriggerID: 7, ActionRef: "core.echo"},
		},
		{
			name: "flat with trigger_type alias",
			body: `{"event_type":"RuleCreated","rule_id":123,"rule_ref":"timer_every_5s","trigger_type":"core.timer",
				"trigger_params":{"interval_seconds":5},"enabled":true,"timestamp":"2025-01-27T12:34:56Z"}`,
			want: Lifecycle{Type: RuleCreated, RuleID: 123, RuleRef: "timer_every_5s", TriggerRef: "core.timer",
				Params: json.RawMessage(`{"interval_seconds":5}`), Enabled: true,
				Timestamp: time.Date(2025, 1, 27, 12, 34, 56, 0, time.UTC)},
		},
		{
			name: "snake spelling, enabled absent means true",
			body: `{"event_type":"rule_enabled","rule_id":1,"trigger_ref":"core.crontimer"}`,
			want: Lifecycle{Type: RuleEnabled, RuleID: 1, TriggerRef: "core.crontimer", Enabled: true},
		},
		{
			name: "dotted spelling",
			body: `{"message_type":"rule.disabled","payload":{"rule_id":2}}`,
			want: Lifecycle{Type: RuleDisabled, RuleID: 2, Enabled: true},
		},
		{
			name: "routing key fallback",
			body: `{"payload":{"rule_id":3,"enabled":false}}`,
			key:  "rule.deleted",
			want: Lifecycle{Type: RuleDeleted, RuleID: 3, Enabled: false},
		},
		{
			name: "body type wins over routing key",
			body: `{"event_type":"RuleEnabled","rule_id":3}`,
			key:  "rule.deleted",
			want: Lifecycle{Type: RuleEnabled, RuleID: 3, Enabled: true},
		},
		{
			name: "active alias",
			body: `{"event_type":"RuleEnabled","rule_id":4,"active":false}`,
			want: Lifecycle{Type: RuleEnabled, RuleID: 4, Enabled: false},
		},
		{
			name: "enabled wins over active",
			body: `{"event_type":"RuleEnabled","rule_id":4,"enabled":true,"active":false}`,
			want: Lifecycle{Type: RuleEnabled, RuleID: 4, Enabled: true},
		},
		{
			name: "trigger_ref wins over trigger_type",
			body: `{"event_type":"RuleEnabled","rule_id":4,"trigger_type":"core.timer","trigger_ref":"core.crontimer"}`,
			want: Lifecycle{Type: RuleEnabled, RuleID: 4, TriggerRef: "core.crontimer", Enabled: true},
		},
		{
			name: "null params and null enabled",
			body: `{"event_type":"RuleEnabled","rule_id":5,"trigger_params":null,"enabled":null}`,
			want: Lifecycle{Type: RuleEnabled, RuleID: 5, Enabled: true},
		},
		{
			name: "rule_id as digit string",
			body: `{"event_type":"RuleEnabled","rule_id":"9223372036854775807"}`,
			want: Lifecycle{Type: RuleEnabled, RuleID: 9223372036854775807, Enabled: true},
		},
		{
			name: "rule_id with zero fraction",
			body: `{"event_type":"RuleEnabled","rule_id":12.0}`,
			want: Lifecycle{Type: RuleEnabled, RuleID: 12, Enabled: true},
		},
		{
			name: "rule_id with exponent",
			body: `{"event_type":"RuleEnabled","rule_id":1e3}`,
			want: Lifecycle{Type: RuleEnabled, RuleID: 1000, Enabled: true},
		},
		{
			name: "unknown fields and bad informational fields ignored",
			body: `{"event_type":"RuleDeleted","rule_id":6,"extra":[1,2],"timestamp":"yesterday","trigger_id":"x","message_id":5}`,
			want: Lifecycle{Type: RuleDeleted, RuleID: 6, Enabled: true},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseLifecycle([]byte(tc.body), tc.key)
			if err != nil {
				t.Fatalf("ParseLifecycle(%s, %q): unexpected error %v", tc.body, tc.key, err)
			}
			assertLifecycle(t, got, tc.want)
		})
	}
}

func assertLifecycle(t *testing.T, got, want Lifecycle) {
	t.Helper()
	if !jsonEqual(got.Params, want.Params) {
		t.Errorf("Params = %s, want %s", got.Params, want.Params)
	}
	got.Params, want.Params = nil, nil
	if !got.Timestamp.Equal(want.Timestamp) {
		t.Errorf("Timestamp = %v, want %v", got.Timestamp, want.Timestamp)
	}
	got.Timestamp, want.Timestamp = time.Time{}, time.Time{}
	type cmp struct {
		Type                                   LifecycleType
		RuleID, TriggerID                      int64
		RuleRef, TriggerRef, MessageID, ActRef string
		Enabled                                bool
	}
	g := cmp{got.Type, got.RuleID, got.TriggerID, got.RuleRef, got.TriggerRef, got.MessageID, got.ActionRef, got.Enabled}
	w := cmp{want.Type, want.RuleID, want.TriggerID, want.RuleRef, want.TriggerRef, want.MessageID, want.ActionRef, want.Enabled}
	if g != w {
		t.Errorf("ParseLifecycle = %+v, want %+v", g, w)
	}
}

func jsonEqual(a, b json.RawMessage) bool {
	if len(a) == 0 || len(b) == 0 {
		return len(a) == len(b)
	}
	var x, y bytes.Buffer
	if json.Compact(&x, a) != nil || json.Compact(&y, b) != nil {
		return false
	}
	return x.String() == y.String()
}

func TestParseLifecycleErrors(t *testing.T) {
	tests := []struct {
		name    string
		body    string
		key     string
		wantErr string
	}{
		{"not json", `{`, "", "lifecycle: body is not a JSON object"},
		{"array", `[1]`, "", "lifecycle: body is not a JSON object"},
		{"null body", `null`, "", "lifecycle: body is null"},
		{"no type, no key", `{"rule_id":1}`, "", "lifecycle: message_type: missing"},
		{"no type, unknown key", `{"rule_id":1}`, "rule.updated", "lifecycle: message_type: missing"},
		{"unknown type", `{"event_type":"RuleUpdated","rule_id":1}`, "", `lifecycle: event_type: unknown type "RuleUpdated"`},
		{"type not a string", `{"message_type":3,"payload":{"rule_id":1}}`, "", "lifecycle: message_type: must be a string"},
		{"payload not object", `{"message_type":"RuleCreated","payload":[1]}`, "", "lifecycle: payload: must be a JSON object"},
		{"rule_id missing", `{"event_type":"RuleCreated"}`, "", "lifecycle: rule_id: missing"},
		{"rule_id null", `{"event_type":"RuleCreated","rule_id":null}`, "", "lifecycle: rule_id: missing"},
		{"rule_id zero", `{"event_type":"RuleCreated","rule_id":0}`, "", "lifecycle: rule_id: 0 is not positive"},
		{"rule_id negative", `{"event_type":"RuleCreated","rule_id":-4}`, "", "lifecycle: rule_id: -4 is not positive"},
		{"rule_id fraction", `{"event_type":"RuleCreated","rule_id":1.5}`, "", "lifecycle: rule_id: 1.5 is not an integer"},
		{"rule_id too big", `{"event_type":"RuleCreated","rule_id":9223372036854775808}`, "", "lifecycle: rule_id: out of int64 range"},
		{"rule_id huge exponent", `{"event_type":"RuleCreated","rule_id":1e400}`, "", "lifecycle: rule_id: 1e400 is out of range"},
		{"rule_id bool", `{"event_type":"RuleCreated","rule_id":true}`, "", "lifecycle: rule_id: must be an integer"},
		{"rule_id bad string", `{"event_type":"RuleCreated","rule_id":"12a"}`, "", `lifecycle: rule_id: string "12a" is not a decimal integer`},
		{"rule_id negative string", `{"event_type":"RuleCreated","rule_id":"-1"}`, "", `lifecycle: rule_id: string "-1" is not a decimal integer`},
		{"rule_ref number", `{"event_type":"RuleCreated","rule_id":1,"rule_ref":5}`, "", "lifecycle: rule_ref: must be a string"},
		{"trigger_type number", `{"event_type":"RuleCreated","rule_id":1,"trigger_type":5}`, "", "lifecycle: trigger_type: must be a string"},
		{"params array", `{"event_type":"RuleCreated","rule_id":1,"trigger_params":[1]}`, "", "lifecycle: trigger_params: must be a JSON object or null"},
		{"params string", `{"event_type":"RuleCreated","rule_id":1,"trigger_params":"{}"}`, "", "lifecycle: trigger_params: must be a JSON object or null"},
		{"enabled string", `{"event_type":"RuleCreated","rule_id":1,"enabled":"yes"}`, "", "lifecycle: enabled: must be a boolean"},
		{"active number", `{"event_type":"RuleCreated","rule_id":1,"active":1}`, "", "lifecycle: active: must be a boolean"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseLifecycle([]byte(tc.body), tc.key)
			if err == nil {
				t.Fatalf("ParseLifecycle(%s, %q): no error, want %q", tc.body, tc.key, tc.wantErr)
			}
			if !strings.HasPrefix(err.Error(), tc.wantErr) {
				t.Errorf("ParseLifecycle(%s, %q) error = %q, want prefix %q", tc.body, tc.key, err, tc.wantErr)
			}
			if !errors.Is(err, ErrInvalidLifecycle) {
				t.Errorf("ParseLifecycle(%s) error %v does not wrap ErrInvalidLifecycle", tc.body, err)
			}
		})
	}
}

func TestParseLifecycleTooLarge(t *testing.T) {
	body := []byte(`{"event_type":"RuleCreated","rule_id":1,"pad":"` + strings.Repeat("x", MaxLifecycleBytes) + `"}`)
	_, err := ParseLifecycle(body, "")
	if err == nil || !strings.Contains(err.Error(), "exceeds") {
		t.Fatalf("ParseLifecycle(%d bytes) error = %v, want size error", len(body), err)
	}
	// Exactly at the limit is parsed.
	pre, post := `{"event_type":"RuleCreated","rule_id":1,"pad":"`, `"}`
	body = []byte(pre + strings.Repeat("x", MaxLifecycleBytes-len(pre)-len(post)) + post)
	if _, err := ParseLifecycle(body, ""); err != nil {
		t.Fatalf("ParseLifecycle(%d bytes): %v, want success", len(body), err)
	}
}

func TestEnvelopeJSONRoundTrip(t *testing.T) {
	now := time.Date(2026, 1, 27, 12, 34, 56, 789_000_000, time.FixedZone("X", 3600))
	tests := []Lifecycle{
		{Type: RuleCreated, RuleID: 123, RuleRef: "ops.nightly", TriggerRef: "core.intervaltimer",
			Params: json.RawMessage(`{"interval":5,"unit":"seconds"}`), Enabled: true, TriggerID: 7, ActionRef: "core.echo"},
		{Type: RuleEnabled, RuleID: 1, RuleRef: "a", TriggerRef: "core.crontimer", Params: json.RawMessage(`{}`), Enabled: true},
		{Type: RuleDisabled, RuleID: 2, RuleRef: "b", TriggerRef: "core.crontimer", Enabled: false},
		{Type: RuleDeleted, RuleID: 9223372036854775807, RuleRef: "c", Enabled: false},
	}
	for _, l := range tests {
		t.Run(string(l.Type), func(t *testing.T) {
			b := EnvelopeJSON(l, "msg-1", now)
			got, err := ParseLifecycle(b, "")
			if err != nil {
				t.Fatalf("ParseLifecycle(EnvelopeJSON(%+v)) = %v; body %s", l, err, b)
			}
			want := l
			want.MessageID = "msg-1"
			want.Timestamp = now
			assertLifecycle(t, got, want)

			var m map[string]any
			if err := json.Unmarshal(b, &m); err != nil {
				t.Fatalf("EnvelopeJSON: %v", err)
			}
			for k, v := range map[string]any{"version": "1.0", "correlation_id": "msg-1",
				"timestamp": "2026-01-27T11:34:56.789Z", "message_type": string(l.Type)} {
				if m[k] != v {
					t.Errorf("EnvelopeJSON %s = %v, want %v", k, m[k], v)
				}
			}
			h, _ := m["headers"].(map[string]any)
			if h["source_service"] != "api-service" || h["retry_count"] != float64(0) {
				t.Errorf("EnvelopeJSON headers = %v", h)
			}
			p, _ := m["payload"].(map[string]any)
			if _, ok := p["trigger_params"]; !ok {
				t.Errorf("EnvelopeJSON payload has no trigger_params: %s", b)
			}
			if _, ok := p["trigger_id"]; ok != (l.TriggerID != 0) {
				t.Errorf("EnvelopeJSON payload trigger_id present = %v, want %v", ok, l.TriggerID != 0)
			}
		})
	}
}

func TestEnvelopeJSONDefaults(t *testing.T) {
	b := EnvelopeJSON(Lifecycle{Type: RuleEnabled, RuleID: 1, Params: json.RawMessage(`{bad`)}, "", time.Unix(0, 0))
	var m struct {
		MessageID string `json:"message_id"`
		Payload   struct {
			Params json.RawMessage `json:"trigger_params"`
		} `json:"payload"`
	}
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("EnvelopeJSON with bad params: %v: %s", err, b)
	}
	if len(m.MessageID) != 36 {
		t.Errorf("EnvelopeJSON with empty id: message_id = %q, want a UUID", m.MessageID)
	}
	if string(m.Payload.Params) != "null" {
		t.Errorf("EnvelopeJSON with invalid params: trigger_params = %s, want null", m.Payload.Params)
	}
}

func TestRoutingKey(t *testing.T) {
	for _, tc := range []struct {
		t    LifecycleType
		want string
	}{
		{RuleCreated, "rule.created"}, {RuleEnabled, "rule.enabled"},
		{RuleDisabled, "rule.disabled"}, {RuleDeleted, "rule.deleted"}, {"Other", ""},
	} {
		if got := RoutingKey(tc.t); got != tc.want {
			t.Errorf("RoutingKey(%q) = %q, want %q", tc.t, got, tc.want)
		}
		if tc.want == "" {
			continue
		}
		// The routing key alone must be enough to recover the type.
		l, err := ParseLifecycle([]byte(`{"rule_id":1}`), tc.want)
		if err != nil || l.Type != tc.t {
			t.Errorf("ParseLifecycle with key %q = %q, %v; want %q", tc.want, l.Type, err, tc.t)
		}
	}
}

func FuzzParseLifecycle(f *testing.F) {
	for _, s := range []string{
		`{"message_type":"RuleCreated","payload":{"rule_id":1,"trigger_ref":"core.crontimer","trigger_params":{"expression":"* * * * *"}}}`,
		`{"event_type":"rule.enabled","rule_id":"7","active":false}`,
		`{"event_type":"RuleDeleted","rule_id":1e2}`,
		`{"payload":null,"rule_id":-1}`,
		`[]`, `null`, `"x"`, `{"rule_id":1.0000000001}`,
	} {
		f.Add([]byte(s), "rule.created")
	}
	f.Fuzz(func(t *testing.T, body []byte, key string) {
		l, err := ParseLifecycle(body, key)
		if err != nil {
			if !errors.Is(err, ErrInvalidLifecycle) {
				t.Fatalf("ParseLifecycle(%q) error %v does not wrap ErrInvalidLifecycle", body, err)
			}
			return
		}
		if l.RuleID <= 0 || RoutingKey(l.Type) == "" {
			t.Fatalf("ParseLifecycle(%q) = %+v: accepted an invalid id or type", body, l)
		}
		if l.Params != nil && !json.Valid(l.Params) {
			t.Fatalf("ParseLifecycle(%q) params %q are not valid JSON", body, l.Params)
		}
		// What we accept, we can re-emit and read back the same.
		again, err := ParseLifecycle(EnvelopeJSON(l, l.MessageID, time.Unix(0, 0)), "")
		if err != nil || again.RuleID != l.RuleID || again.Type != l.Type || again.Enabled != l.Enabled ||
			again.TriggerRef != l.TriggerRef || again.RuleRef != l.RuleRef {
			t.Fatalf("round trip of %q: got %+v, %v; want %+v", body, again, err, l)
		}
	})
}
