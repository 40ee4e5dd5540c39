package attune

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/timerd/timerd/scheduler"
)

// LifecycleType is the kind of a rule lifecycle message, in its canonical
// (Attune envelope) spelling.
type LifecycleType string

// The four lifecycle types Attune publishes (contract §1).
const (
	RuleCreated  LifecycleType = "RuleCreated"
	RuleEnabled  LifecycleType = "RuleEnabled"
	RuleDisabled LifecycleType = "RuleDisabled"
	RuleDeleted  LifecycleType = "RuleDeleted"
)

// MaxLifecycleBytes bounds the size of one lifecycle message body.
const MaxLifecycleBytes = 1 << 20

// ErrInvalidLifecycle wraps every error ParseLifecycle returns.
var ErrInvalidLifecycle = errors.New("invalid lifecycle message")

// Lifecycle is one parsed rule lifecycle message.
type Lifecycle struct {
	Type       LifecycleType
	RuleID     int64
	RuleRef    string
	TriggerRef string          // trigger_ref, or its alias trigger_type
	Params     json.RawMessage // trigger_params: a JSON object, or nil when absent or null
	Enabled    bool            // absent means true; alias "active"
	Timestamp  time.Time       // zero if absent or not RFC 3339
	MessageID  string

	// Informational fields of the envelope; timerd does not use them.
	TriggerID int64  // 0 if absent or not a positive integer
	ActionRef string // "" if absent
}

// lifecycleError is the error type of ParseLifecycle: "lifecycle: field: why".
type lifecycleError struct{ field, msg string }

func (e *lifecycleError) Error() string {
	if e.field == "" {
		return "lifecycle: " + e.msg
	}
	return "lifecycle: " + e.field + ": " + e.msg
}

func (e *lifecycleError) Unwrap() error { return ErrInvalidLifecycle }

func invalid(field, format string, args ...any) error {
	return &lifecycleError{field: field, msg: fmt.Sprintf(format, args...)}
}

// ParseLifecycle parses a lifecycle message in either shape of contract §1:
// the Attune envelope (message_type + payload) or the flat form (event_type).
// The type may be spelled RuleCreated, rule_created or rule.created; when the
// body carries none, the routing key (rule.created, …) decides.
//
// rule_id must be a positive integer; a JSON string of decimal digits is also
// accepted (some producers stringify 64-bit ids), as is a number with a zero
// fraction up to 2^53. Unknown fields are ignored. Every error wraps
// ErrInvalidLifecycle and names the field.
func ParseLifecycle(body []byte, routingKey string) (Lifecycle, error) {
	var l Lifecycle
	if len(body) > MaxLifecycleBytes {
		return l, invalid("", "body of %d bytes exceeds %d", len(body), MaxLifecycleBytes)
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(body, &top); err != nil {
		return l, invalid("", "body is not a JSON object: %v", err)
	}
	if top == nil {
		return l, invalid("", "body is null")
	}
	// Envelope: fields live under payload. Flat: at the top. Payload wins
	// when a field is in both.
	var payload map[string]json.RawMessage
	if raw, ok := top["payload"]; ok && !isNull(raw) {
		if err := json.Unmarshal(raw, &payload); err != nil {
			return l, invalid("payload", "must be a JSON object")
		}
	}
	get := func(keys ...string) (string, json.RawMessage) {
		for _, m := range []map[string]json.RawMessage{payload, top} {
			for _, k := range keys {
				if v, ok := m[k]; ok && !isNull(v) {
					return k, v
				}
			}
		}
		return "", nil
	}

	// Type.
	typeField, rawType := get("message_type", "event_type")
	if rawType != nil {
		var s string
		if err := json.Unmarshal(rawType, &s); err != nil {
			return l, invalid(typeField, "must be a string")
		}
		t, ok := normalizeLifecycleType(s)
		if !ok {
			return l, invalid(typeField, "unknown type %q", scheduler.Truncate(s, 64))
		}
		l.Type = t
	} else {
		t, ok := normalizeLifecycleType(routingKey)
		if !ok {
			return l, invalid("message_type", "missing, and routing key %q names no type", scheduler.Truncate(routingKey, 64))
		}
		l.Type = t
	}

	// rule_id.
	_, rawID := get("rule_id")
	if rawID == nil {
		return l, invalid("rule_id", "missing")
	}
	id, err := parseLifecycleID(rawID)
	if err != nil {
		return l, invalid("rule_id", "%v", err)
	}
	l.RuleID = id

	// Strings.
	for _, f := range []struct {
		dst  *string
		keys []string
	}{
		{&l.RuleRef, []string{"rule_ref"}},
		{&l.TriggerRef, []string{"trigger_ref", "trigger_type"}},
		{&l.ActionRef, []string{"action_ref"}},
	} {
		k, raw := get(f.keys...)
		if raw == nil {
			continue
		}
		if err := json.Unmarshal(raw, f.dst); err != nil {
			return l, invalid(k, "must be a string")
		}
	}

	// trigger_params: object or null.
	if _, raw := get("trigger_params"); raw != nil {
		if firstByte(raw) != '{' {
			return l, invalid("trigger_params", "must be a JSON object or null")
		}
		l.Params = append(json.RawMessage(nil), raw...)
	}

	// enabled / active: absent or null means true.
	l.Enabled = true
	if k, raw := get("enabled", "active"); raw != nil {
		if err := json.Unmarshal(raw, &l.Enabled); err != nil {
			return l, invalid(k, "must be a boolean")
		}
	}

	// Informational fields never reject a message.
	if _, raw := get("timestamp"); raw != nil {
		var s string
		if json.Unmarshal(raw, &s) == nil {
			if ts, err := time.Parse(time.RFC3339Nano, s); err == nil {
				l.Timestamp = ts
			}
		}
	}
	if raw, ok := top["message_id"]; ok {
		_ = json.Unmarshal(raw, &l.MessageID)
	}
	if _, raw := get("trigger_id"); raw != nil {
		if tid, err := parseLifecycleID(raw); err == nil {
			l.TriggerID = tid
		}
	}
	return l, nil
}

// normalizeLifecycleType maps RuleCreated, rule_created, rule.created (any
// case) to the canonical type.
func normalizeLifecycleType(s string) (LifecycleType, bool) {
	if len(s) > 64 {
		return "", false
	}
	n := strings.ToLower(strings.NewReplacer("_", "", ".", "", "-", "").Replace(s))
	switch n {
	case "rulecreated":
		return RuleCreated, true
	case "ruleenabled":
		return RuleEnabled, true
	case "ruledisabled":
		return RuleDisabled, true
	case "ruledeleted":
		return RuleDeleted, true
	}
	return "", false
}

// parseLifecycleID reads a positive int64 from a JSON number or a JSON string
// of decimal digits.
func parseLifecycleID(raw json.RawMessage) (int64, error) {
	raw = bytes.TrimSpace(raw)
	if firstByte(raw) == '"' {
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return 0, errors.New("must be an integer")
		}
		if s == "" || len(s) > 20 || strings.TrimLeft(s, "0123456789") != "" {
			return 0, fmt.Errorf("string %q is not a decimal integer", scheduler.Truncate(s, 32))
		}
		return positiveID(strconv.ParseInt(s, 10, 64))
	}
	var n json.Number
	if err := json.Unmarshal(raw, &n); err != nil {
		return 0, errors.New("must be an integer")
	}
	s := n.String()
	if !strings.ContainsAny(s, ".eE") {
		return positiveID(strconv.ParseInt(s, 10, 64))
	}
	// 5.0 or 1e3: accept only when exact (|f| ≤ 2^53) and integral.
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || math.IsInf(f, 0) || math.Abs(f) > 1<<53 {
		return 0, fmt.Errorf("%s is out of range", scheduler.Truncate(s, 32))
	}
	if f != math.Trunc(f) {
		return 0, fmt.Errorf("%s is not an integer", scheduler.Truncate(s, 32))
	}
	return positiveID(int64(f), nil)
}

func positiveID(v int64, err error) (int64, error) {
	if err != nil {
		return 0, errors.New("out of int64 range")
	}
	if v <= 0 {
		return 0, fmt.Errorf("%d is not positive", v)
	}
	return v, nil
}

func isNull(raw json.RawMessage) bool {
	return string(bytes.TrimSpace(raw)) == "null"
}

func firstByte(raw json.RawMessage) byte {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 {
		return 0
	}
	return raw[0]
}

// RoutingKey returns the topic routing key Attune uses for t ("rule.created",
// …), or "" for an unknown type.
func RoutingKey(t LifecycleType) string {
	switch t {
	case RuleCreated:
		return "rule.created"
	case RuleEnabled:
		return "rule.enabled"
	case RuleDisabled:
		return "rule.disabled"
	case RuleDeleted:
		return "rule.deleted"
	}
	return ""
}

type envelopeHeaders struct {
	RetryCount    int    `json:"retry_count"`
	SourceService string `json:"source_service"`
}

type envelopePayload struct {
	RuleID        int64           `json:"rule_id"`
	RuleRef       string          `json:"rule_ref"`
	TriggerID     int64           `json:"trigger_id,omitempty"`
	TriggerRef    string          `json:"trigger_ref"`
	ActionRef     string          `json:"action_ref,omitempty"`
	TriggerParams json.RawMessage `json:"trigger_params"`
	Enabled       bool            `json:"enabled"`
}

type envelope struct {
	MessageID     string          `json:"message_id"`
	CorrelationID string          `json:"correlation_id"`
	MessageType   LifecycleType   `json:"message_type"`
	Version       string          `json:"version"`
	Timestamp     string          `json:"timestamp"`
	Headers       envelopeHeaders `json:"headers"`
	Payload       envelopePayload `json:"payload"`
}

// EnvelopeJSON renders l as the envelope Attune's API publishes (contract §1).
// An empty messageID gets a random UUID; the correlation id equals the
// message id. Params that are not valid JSON are written as null.
func EnvelopeJSON(l Lifecycle, messageID string, now time.Time) []byte {
	if messageID == "" {
		messageID = uuid.NewString()
	}
	params := json.RawMessage("null")
	if len(l.Params) > 0 && json.Valid(l.Params) {
		params = l.Params
	}
	e := envelope{
		MessageID:     messageID,
		CorrelationID: messageID,
		MessageType:   l.Type,
		Version:       "1.0",
		Timestamp:     now.UTC().Format("2006-01-02T15:04:05.000Z07:00"),
		Headers:       envelopeHeaders{RetryCount: 0, SourceService: "api-service"},
		Payload: envelopePayload{
			RuleID:        l.RuleID,
			RuleRef:       l.RuleRef,
			TriggerID:     l.TriggerID,
			TriggerRef:    l.TriggerRef,
			ActionRef:     l.ActionRef,
			TriggerParams: params,
			Enabled:       l.Enabled,
		},
	}
	b, err := json.Marshal(e)
	if err != nil {
		// Unreachable: every field is a plain value and params are valid JSON.
		e.Payload.TriggerParams = json.RawMessage("null")
		b, _ = json.Marshal(e)
	}
	return b
}
