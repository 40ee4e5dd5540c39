package ingest

import (
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/timerd/timerd/scheduler"
)

func TestBuildEvent(t *testing.T) {
	paris, err := time.LoadLocation("Europe/Paris")
	if err != nil {
		t.Fatalf("load Europe/Paris: %v", err)
	}
	slot := time.Date(2026, 1, 27, 12, 34, 55, 0, time.UTC)
	fireAt := time.Date(2026, 2, 1, 9, 0, 0, 0, paris) // 08:00 UTC
	cronSlot := time.Date(2026, 3, 1, 7, 5, 0, 0, paris)

	tests := []struct {
		name    string
		fire    scheduler.Fire
		wantKey string
		want    string
	}{
		{
			name: "interval",
			fire: scheduler.Fire{
				RuleID: 123, Slot: slot, FiredAt: slot.Add(1234567 * time.Nanosecond), Count: 42,
				Next:  slot.Add(5 * time.Second),
				Timer: &scheduler.Timer{TriggerRef: "core.intervaltimer", Kind: scheduler.KindInterval, Interval: 5 * time.Second},
			},
			wantKey: "123:1769517295000000000",
			want: `{"trigger_ref":"core.intervaltimer","trigger_instance_id":"rule_123","payload":{` +
				`"type":"interval","interval_seconds":5,"fired_at":"2026-01-27T12:34:55.001234567Z",` +
				`"scheduled_at":"2026-01-27T12:34:55Z","execution_count":42,"sensor_ref":"core.timer"}}`,
		},
		{
			name: "interval below a second, core.timer kept as given, local times in UTC",
			fire: scheduler.Fire{
				RuleID: 7, Slot: slot.In(paris), FiredAt: slot.In(paris), Count: 1,
				Timer: &scheduler.Timer{TriggerRef: "core.timer", Kind: scheduler.KindInterval, Interval: 1500 * time.Millisecond},
			},
			wantKey: "7:1769517295000000000",
			want: `{"trigger_ref":"core.timer","trigger_instance_id":"rule_7","payload":{` +
				`"type":"interval","interval_seconds":1.5,"fired_at":"2026-01-27T12:34:55Z",` +
				`"scheduled_at":"2026-01-27T12:34:55Z","execution_count":1,"sensor_ref":"core.timer"}}`,
		},
		{
			name: "cron",
			fire: scheduler.Fire{
				RuleID: 9000000000, Slot: cronSlot, FiredAt: cronSlot.Add(2 * time.Millisecond), Count: 3,
				Next: cronSlot.Add(5 * time.Minute),
				Timer: &scheduler.Timer{TriggerRef: "core.crontimer", Kind: scheduler.KindCron,
					Expression: "0 */5 * * * *", Timezone: "Europe/Paris", Location: paris},
			},
			wantKey: "9000000000:1772345100000000000",
			want: `{"trigger_ref":"core.crontimer","trigger_instance_id":"rule_9000000000","payload":{` +
				`"type":"cron","fired_at":"2026-03-01T06:05:00.002Z","scheduled_at":"2026-03-01T06:05:00Z",` +
				`"expression":"0 */5 * * * *","timezone":"Europe/Paris","next_fire_at":"2026-03-01T06:10:00Z",` +
				`"execution_count":3,"sensor_ref":"my.sensor"}}`,
		},
		{
			name: "cron without a next slot",
			fire: scheduler.Fire{
				RuleID: 5, Slot: cronSlot, FiredAt: cronSlot, Count: 1,
				Timer: &scheduler.Timer{TriggerRef: "core.crontimer", Kind: scheduler.KindCron,
					Expression: "@hourly", Timezone: "UTC"},
			},
			wantKey: "5:1772345100000000000",
			want: `{"trigger_ref":"core.crontimer","trigger_instance_id":"rule_5","payload":{` +
				`"type":"cron","fired_at":"2026-03-01T06:05:00Z","scheduled_at":"2026-03-01T06:05:00Z",` +
				`"expression":"@hourly","timezone":"UTC","next_fire_at":null,` +
				`"execution_count":1,"sensor_ref":"my.sensor"}}`,
		},
		{
			name: "datetime fired late",
			fire: scheduler.Fire{
				RuleID: 42, Slot: fireAt, FiredAt: fireAt.Add(1500 * time.Millisecond), Count: 1, CatchUp: true,
				Timer: &scheduler.Timer{TriggerRef: "core.datetimetimer", Kind: scheduler.KindDatetime,
					FireAt: fireAt, Timezone: "Europe/Paris"},
			},
			wantKey: "42:1769932800000000000",
			want: `{"trigger_ref":"core.datetimetimer","trigger_instance_id":"rule_42","payload":{` +
				`"type":"one_shot","fire_at":"2026-02-01T08:00:00Z","fired_at":"2026-02-01T08:00:01.5Z",` +
				`"scheduled_at":"2026-02-01T08:00:00Z","timezone":"Europe/Paris","delay_ms":1500,` +
				`"execution_count":1,"sensor_ref":"core.timer"}}`,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sensor := "core.timer"
			if tc.fire.Timer.Kind == scheduler.KindCron {
				sensor = "my.sensor"
			}
			ev, err := BuildEvent(tc.fire, sensor)
			if err != nil {
				t.Fatalf("BuildEvent(%s): %v", tc.name, err)
			}
			if got := string(ev.Body); got != tc.want {
				t.Errorf("BuildEvent(%s) body:\n got %s\nwant %s", tc.name, got, tc.want)
			}
			if ev.IdempotencyKey != tc.wantKey {
				t.Errorf("BuildEvent(%s) key = %q, want %q", tc.name, ev.IdempotencyKey, tc.wantKey)
			}
			if ev.RuleID != tc.fire.RuleID || !ev.Slot.Equal(tc.fire.Slot) {
				t.Errorf("BuildEvent(%s) rule, slot = %d, %v; want %d, %v", tc.name, ev.RuleID, ev.Slot, tc.fire.RuleID, tc.fire.Slot)
			}
			if !json.Valid(ev.Body) {
				t.Errorf("BuildEvent(%s) body is not valid JSON", tc.name)
			}
		})
	}
}

func TestBuildEventRejects(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	interval := &scheduler.Timer{TriggerRef: "core.intervaltimer", Kind: scheduler.KindInterval, Interval: time.Second}
	tests := []struct {
		name string
		fire scheduler.Fire
	}{
		{"no timer", scheduler.Fire{RuleID: 1, Slot: now, FiredAt: now}},
		{"unknown kind", scheduler.Fire{RuleID: 1, Slot: now, FiredAt: now, Timer: &scheduler.Timer{Kind: "rrule"}}},
		{"rule id zero", scheduler.Fire{RuleID: 0, Slot: now, FiredAt: now, Timer: interval}},
		{"negative rule id", scheduler.Fire{RuleID: -4, Slot: now, FiredAt: now, Timer: interval}},
		{"zero slot", scheduler.Fire{RuleID: 1, FiredAt: now, Timer: interval}},
		{"slot after 2262", scheduler.Fire{RuleID: 1, Slot: time.Date(2300, 1, 1, 0, 0, 0, 0, time.UTC), FiredAt: now, Timer: interval}},
		{"zero fired_at", scheduler.Fire{RuleID: 1, Slot: now, Timer: interval}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ev, err := BuildEvent(tc.fire, "core.timer")
			if !errors.Is(err, ErrBadFire) {
				t.Errorf("BuildEvent(%s) = %+v, %v; want an error wrapping ErrBadFire", tc.name, ev, err)
			}
		})
	}
}

func BenchmarkBuildEvent(b *testing.B) {
	slot := time.Date(2026, 1, 27, 12, 34, 55, 0, time.UTC)
	kinds := map[string]*scheduler.Timer{
		"interval": {TriggerRef: "core.intervaltimer", Kind: scheduler.KindInterval, Interval: 5 * time.Second},
		"cron":     {TriggerRef: "core.crontimer", Kind: scheduler.KindCron, Expression: "0 */5 * * * *", Timezone: "UTC"},
		"datetime": {TriggerRef: "core.datetimetimer", Kind: scheduler.KindDatetime, FireAt: slot, Timezone: "UTC"},
	}
	for name, timer := range kinds {
		b.Run(name, func(b *testing.B) {
			f := scheduler.Fire{RuleID: 123, Slot: slot, FiredAt: slot.Add(time.Millisecond), Count: 42,
				Next: slot.Add(5 * time.Minute), Timer: timer}
			b.ReportAllocs()
			for b.Loop() {
				if _, err := BuildEvent(f, "core.timer"); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
