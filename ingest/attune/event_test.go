package attune

import (
	"encoding/json"
	"errors"
	"strconv"
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

// The encoding/json body BuildEvent wrote before it appended the body itself: the
// reference its output is checked against, byte for byte.
type refBody[P any] struct {
	TriggerRef        string `json:"trigger_ref"`
	TriggerInstanceID string `json:"trigger_instance_id"`
	Payload           P      `json:"payload"`
}

type refInterval struct {
	Type            string  `json:"type"`
	IntervalSeconds float64 `json:"interval_seconds"`
	FiredAt         string  `json:"fired_at"`
	ScheduledAt     string  `json:"scheduled_at"`
	ExecutionCount  uint64  `json:"execution_count"`
	SensorRef       string  `json:"sensor_ref"`
}

type refCron struct {
	Type           string  `json:"type"`
	FiredAt        string  `json:"fired_at"`
	ScheduledAt    string  `json:"scheduled_at"`
	Expression     string  `json:"expression"`
	Timezone       string  `json:"timezone"`
	NextFireAt     *string `json:"next_fire_at"`
	ExecutionCount uint64  `json:"execution_count"`
	SensorRef      string  `json:"sensor_ref"`
}

type refDatetime struct {
	Type           string `json:"type"`
	FireAt         string `json:"fire_at"`
	FiredAt        string `json:"fired_at"`
	ScheduledAt    string `json:"scheduled_at"`
	Timezone       string `json:"timezone"`
	DelayMS        int64  `json:"delay_ms"`
	ExecutionCount uint64 `json:"execution_count"`
	SensorRef      string `json:"sensor_ref"`
}

func refEncode(t testing.TB, f scheduler.Fire, sensorRef string) string {
	t.Helper()
	tm := f.Timer
	ft := func(x time.Time) string { return x.UTC().Format(time.RFC3339Nano) }
	instance := "rule_" + strconv.FormatInt(f.RuleID, 10)
	var v any
	switch tm.Kind {
	case scheduler.KindInterval:
		v = refBody[refInterval]{tm.TriggerRef, instance, refInterval{"interval", tm.Interval.Seconds(),
			ft(f.FiredAt), ft(f.Slot), f.Count, sensorRef}}
	case scheduler.KindCron:
		var next *string
		if !f.Next.IsZero() {
			s := ft(f.Next)
			next = &s
		}
		v = refBody[refCron]{tm.TriggerRef, instance, refCron{"cron", ft(f.FiredAt), ft(f.Slot),
			tm.Expression, tm.Timezone, next, f.Count, sensorRef}}
	case scheduler.KindDatetime:
		fireAt := tm.FireAt
		if fireAt.IsZero() {
			fireAt = f.Slot
		}
		v = refBody[refDatetime]{tm.TriggerRef, instance, refDatetime{"one_shot", ft(fireAt), ft(f.FiredAt),
			ft(f.Slot), tm.Timezone, f.FiredAt.Sub(fireAt).Milliseconds(), f.Count, sensorRef}}
	}
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// Strings that encoding/json escapes, each way it does.
var escapeCases = []string{
	"", "core.timer", `quote " and backslash \`, "<script>&amp;</script>", "\b\f\n\r\t",
	"\x00\x01\x1f\x7f", "line\u2028para\u2029end", "invalid \xff\xfe utf-8 \xc3", "truncated \xe2\x82",
	"émoji 🕐 and 中文", "Europe/Paris", "0 */5 * * * *", "@every 1h30m", "tab\tin\texpr",
}

// BuildEvent writes exactly what encoding/json wrote for every kind, string and
// interval, escaping included.
func TestBuildEventMatchesEncodingJSON(t *testing.T) {
	slot := time.Date(2026, 1, 27, 12, 34, 55, 123456789, time.UTC)
	paris, err := time.LoadLocation("Europe/Paris")
	if err != nil {
		t.Fatal(err)
	}
	intervals := []time.Duration{time.Nanosecond, 999 * time.Nanosecond, time.Microsecond, 1500 * time.Microsecond,
		time.Second, 1500 * time.Millisecond, 10 * time.Second, 24 * time.Hour, 1<<63 - 1}
	fires := []scheduler.Fire{}
	for i, s := range escapeCases {
		for _, iv := range intervals {
			fires = append(fires, scheduler.Fire{RuleID: int64(i + 1), Slot: slot, FiredAt: slot.Add(iv / 3), Count: uint64(i),
				Timer: &scheduler.Timer{TriggerRef: s, Kind: scheduler.KindInterval, Interval: iv}})
		}
		fires = append(fires,
			scheduler.Fire{RuleID: 1 << 62, Slot: slot.In(paris), FiredAt: slot, Count: 1 << 63, Next: slot.Add(time.Hour),
				Timer: &scheduler.Timer{TriggerRef: "core.crontimer", Kind: scheduler.KindCron, Expression: s, Timezone: s}},
			scheduler.Fire{RuleID: 3, Slot: slot, FiredAt: slot, Timer: &scheduler.Timer{TriggerRef: s, Kind: scheduler.KindCron,
				Expression: "@hourly", Timezone: "UTC"}},
			scheduler.Fire{RuleID: 4, Slot: slot, FiredAt: slot.Add(-time.Minute), Timer: &scheduler.Timer{TriggerRef: s,
				Kind: scheduler.KindDatetime, FireAt: slot.Add(time.Second), Timezone: s}},
			scheduler.Fire{RuleID: 5, Slot: slot, FiredAt: slot.Add(time.Hour), Timer: &scheduler.Timer{TriggerRef: s,
				Kind: scheduler.KindDatetime, Timezone: s}},
		)
	}
	for _, f := range fires {
		for _, sensor := range []string{"core.timer", "sensor<&>\"\x01"} {
			ev, err := BuildEvent(f, sensor)
			if err != nil {
				t.Fatalf("BuildEvent(%+v): %v", f, err)
			}
			if want := refEncode(t, f, sensor); string(ev.Body) != want {
				t.Errorf("BuildEvent(rule %d, kind %s, timer %+v) body:\n got %s\nwant %s", f.RuleID, f.Timer.Kind, f.Timer, ev.Body, want)
			}
		}
	}
}

func FuzzBuildEventMatchesEncodingJSON(f *testing.F) {
	for _, s := range escapeCases {
		f.Add(s, s, int64(1500*time.Millisecond))
	}
	slot := time.Date(2026, 1, 27, 12, 34, 55, 0, time.UTC)
	f.Fuzz(func(t *testing.T, ref, tz string, interval int64) {
		for _, fire := range []scheduler.Fire{
			{RuleID: 1, Slot: slot, FiredAt: slot, Timer: &scheduler.Timer{TriggerRef: ref, Kind: scheduler.KindInterval,
				Interval: time.Duration(interval)}},
			{RuleID: 2, Slot: slot, FiredAt: slot, Next: slot.Add(time.Minute), Timer: &scheduler.Timer{TriggerRef: ref,
				Kind: scheduler.KindCron, Expression: ref, Timezone: tz}},
			{RuleID: 3, Slot: slot, FiredAt: slot, Timer: &scheduler.Timer{TriggerRef: ref, Kind: scheduler.KindDatetime, Timezone: tz}},
		} {
			ev, err := BuildEvent(fire, tz)
			if err != nil {
				t.Fatal(err)
			}
			if want := refEncode(t, fire, tz); string(ev.Body) != want {
				t.Errorf("BuildEvent(%q, %q, %d):\n got %s\nwant %s", ref, tz, interval, ev.Body, want)
			}
		}
	})
}
