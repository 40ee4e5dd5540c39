package ingest

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"time"

	"github.com/timerd/timerd/scheduler"
	"github.com/timerd/timerd/store"
)

// ErrBadFire is returned by BuildEvent for a fire that cannot become an event.
var ErrBadFire = errors.New("bad fire")

// Bounds of time.Time.UnixNano; a slot outside them has no idempotency key.
var (
	minUnixNano = time.Unix(0, math.MinInt64)
	maxUnixNano = time.Unix(0, math.MaxInt64)
)

// eventBody is the POST body of contract §3. The payload is typed per kind so
// that the key order is fixed and encoding needs no map.
type eventBody[P any] struct {
	TriggerRef        string `json:"trigger_ref"`
	TriggerInstanceID string `json:"trigger_instance_id"`
	Payload           P      `json:"payload"`
}

type intervalPayload struct {
	Type            string  `json:"type"`
	IntervalSeconds float64 `json:"interval_seconds"`
	FiredAt         string  `json:"fired_at"`
	ScheduledAt     string  `json:"scheduled_at"`
	ExecutionCount  uint64  `json:"execution_count"`
	SensorRef       string  `json:"sensor_ref"`
}

type cronPayload struct {
	Type           string  `json:"type"`
	FiredAt        string  `json:"fired_at"`
	ScheduledAt    string  `json:"scheduled_at"`
	Expression     string  `json:"expression"`
	Timezone       string  `json:"timezone"`
	NextFireAt     *string `json:"next_fire_at"` // null when the rule has no next slot
	ExecutionCount uint64  `json:"execution_count"`
	SensorRef      string  `json:"sensor_ref"`
}

type datetimePayload struct {
	Type           string `json:"type"`
	FireAt         string `json:"fire_at"`
	FiredAt        string `json:"fired_at"`
	ScheduledAt    string `json:"scheduled_at"`
	Timezone       string `json:"timezone"`
	DelayMS        int64  `json:"delay_ms"`
	ExecutionCount uint64 `json:"execution_count"`
	SensorRef      string `json:"sensor_ref"`
}

// BuildEvent turns a fire into the event posted to Attune (contract §3): the
// JSON body with the payload keys of the timer's kind, and the idempotency
// key "<rule_id>:<slot as unix nanoseconds>". trigger_ref is the rule's
// trigger_ref as given. Times are RFC 3339 with nanoseconds, in UTC.
func BuildEvent(f scheduler.Fire, sensorRef string) (store.Event, error) {
	switch {
	case f.Timer == nil:
		return store.Event{}, fmt.Errorf("build event for rule %d: %w: no timer", f.RuleID, ErrBadFire)
	case f.RuleID <= 0:
		return store.Event{}, fmt.Errorf("build event: %w: rule id %d is not positive", ErrBadFire, f.RuleID)
	case f.Slot.Before(minUnixNano) || f.Slot.After(maxUnixNano):
		return store.Event{}, fmt.Errorf("build event for rule %d: %w: slot %v out of range", f.RuleID, ErrBadFire, f.Slot)
	case f.FiredAt.IsZero():
		return store.Event{}, fmt.Errorf("build event for rule %d: %w: fired_at is zero", f.RuleID, ErrBadFire)
	}
	t := f.Timer
	firedAt, scheduledAt := formatTime(f.FiredAt), formatTime(f.Slot)
	instance := "rule_" + strconv.FormatInt(f.RuleID, 10)

	var body []byte
	var err error
	switch t.Kind {
	case scheduler.KindInterval:
		body, err = json.Marshal(eventBody[intervalPayload]{
			TriggerRef: t.TriggerRef, TriggerInstanceID: instance,
			Payload: intervalPayload{
				Type:            "interval",
				IntervalSeconds: t.Interval.Seconds(),
				FiredAt:         firedAt,
				ScheduledAt:     scheduledAt,
				ExecutionCount:  f.Count,
				SensorRef:       sensorRef,
			},
		})
	case scheduler.KindCron:
		var next *string
		if !f.Next.IsZero() {
			s := formatTime(f.Next)
			next = &s
		}
		body, err = json.Marshal(eventBody[cronPayload]{
			TriggerRef: t.TriggerRef, TriggerInstanceID: instance,
			Payload: cronPayload{
				Type:           "cron",
				FiredAt:        firedAt,
				ScheduledAt:    scheduledAt,
				Expression:     t.Expression,
				Timezone:       t.Timezone,
				NextFireAt:     next,
				ExecutionCount: f.Count,
				SensorRef:      sensorRef,
			},
		})
	case scheduler.KindDatetime:
		fireAt := t.FireAt
		if fireAt.IsZero() {
			fireAt = f.Slot
		}
		body, err = json.Marshal(eventBody[datetimePayload]{
			TriggerRef: t.TriggerRef, TriggerInstanceID: instance,
			Payload: datetimePayload{
				Type:           "one_shot",
				FireAt:         formatTime(fireAt),
				FiredAt:        firedAt,
				ScheduledAt:    scheduledAt,
				Timezone:       t.Timezone,
				DelayMS:        f.FiredAt.Sub(fireAt).Milliseconds(),
				ExecutionCount: f.Count,
				SensorRef:      sensorRef,
			},
		})
	default:
		return store.Event{}, fmt.Errorf("build event for rule %d: %w: unknown timer kind %q", f.RuleID, ErrBadFire, t.Kind)
	}
	if err != nil {
		// Only strings and numbers are encoded: this cannot happen.
		return store.Event{}, fmt.Errorf("build event for rule %d: %w", f.RuleID, err)
	}
	return store.Event{
		RuleID:         f.RuleID,
		Slot:           f.Slot,
		IdempotencyKey: IdempotencyKey(f.RuleID, f.Slot),
		Body:           body,
	}, nil
}

// IdempotencyKey is the Idempotency-Key of a rule's slot:
// "<rule_id>:<slot as unix nanoseconds>".
func IdempotencyKey(ruleID int64, slot time.Time) string {
	b := make([]byte, 0, 40)
	b = strconv.AppendInt(b, ruleID, 10)
	b = append(b, ':')
	b = strconv.AppendInt(b, slot.UnixNano(), 10)
	return string(b)
}

func formatTime(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }
