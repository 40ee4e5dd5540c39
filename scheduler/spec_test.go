package scheduler

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

func TestParseForms(t *testing.T) {
	berlin, err := time.LoadLocation("Europe/Berlin")
	if err != nil {
		t.Fatal(err)
	}
	fireAt := time.Date(2026, 2, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name, ref, params string
		want              Timer // Anchor is not compared unless wantAnchor is set
		wantAnchor        time.Time
	}{
		{"intervaltimer default unit", "core.intervaltimer", `{"interval":5}`,
			Timer{Kind: KindInterval, Interval: 5 * time.Second}, time.Time{}},
		{"intervaltimer minutes", "core.intervaltimer", `{"interval":5,"unit":"minutes"}`,
			Timer{Kind: KindInterval, Interval: 5 * time.Minute}, time.Time{}},
		{"intervaltimer hours", "core.intervaltimer", `{"interval":2,"unit":"hours"}`,
			Timer{Kind: KindInterval, Interval: 2 * time.Hour}, time.Time{}},
		{"intervaltimer days", "core.intervaltimer", `{"interval":3,"unit":"days","extra":{"ignored":true}}`,
			Timer{Kind: KindInterval, Interval: 72 * time.Hour}, time.Time{}},
		{"intervaltimer singular unit", "core.intervaltimer", `{"interval":1,"unit":"Minute"}`,
			Timer{Kind: KindInterval, Interval: time.Minute}, time.Time{}},
		{"intervaltimer start_at", "core.intervaltimer", `{"interval":10,"start_at":"2026-01-01T00:00:03+01:00"}`,
			Timer{Kind: KindInterval, Interval: 10 * time.Second}, time.Date(2025, 12, 31, 23, 0, 3, 0, time.UTC)},
		{"crontimer default zone", "core.crontimer", `{"expression":"0 */5 * * * *"}`,
			Timer{Kind: KindCron, Expression: "0 */5 * * * *", Timezone: "UTC", Location: time.UTC}, time.Time{}},
		{"crontimer zone", "core.crontimer", `{"expression":"0 9 * * MON-FRI","timezone":"Europe/Berlin","dst_gap":"skip","dst_overlap":"twice"}`,
			Timer{Kind: KindCron, Expression: "0 9 * * MON-FRI", Timezone: "Europe/Berlin", Location: berlin, DSTGap: GapSkip, DSTOverlap: OverlapTwice}, time.Time{}},
		{"crontimer null timezone", "core.crontimer", `{"expression":"@daily","timezone":null}`,
			Timer{Kind: KindCron, Expression: "@daily", Timezone: "UTC", Location: time.UTC}, time.Time{}},
		{"crontimer @every", "core.crontimer", `{"expression":"@every 1h30m","start_at":"2026-01-01T00:00:00Z"}`,
			Timer{Kind: KindCron, Expression: "@every 1h30m", Timezone: "UTC", Location: time.UTC, Interval: 90 * time.Minute}, time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)},
		{"datetimetimer", "core.datetimetimer", `{"fire_at":"2026-02-01T13:00:00+01:00","timezone":"Europe/Berlin"}`,
			Timer{Kind: KindDatetime, FireAt: fireAt, Timezone: "Europe/Berlin", MisfireGrace: UnlimitedGrace}, time.Time{}},
		{"datetimetimer informational zone kept as is", "core.datetimetimer", `{"fire_at":"2026-02-01T12:00:00Z","timezone":"CET-ish"}`,
			Timer{Kind: KindDatetime, FireAt: fireAt, Timezone: "CET-ish", MisfireGrace: UnlimitedGrace}, time.Time{}},
		{"timer seed interval_seconds", "core.timer", `{"interval_seconds":5}`,
			Timer{Kind: KindInterval, Interval: 5 * time.Second}, time.Time{}},
		{"timer tagged interval", "core.timer", `{"type":"interval","interval":2,"unit":"minutes"}`,
			Timer{Kind: KindInterval, Interval: 2 * time.Minute}, time.Time{}},
		{"timer tagged date_time", "core.timer", `{"type":"date_time","fire_at":"2026-02-01T12:00:00Z"}`,
			Timer{Kind: KindDatetime, FireAt: fireAt, Timezone: "UTC", MisfireGrace: UnlimitedGrace}, time.Time{}},
		{"timer tagged datetime", "core.timer", `{"type":"datetime","fire_at":"2026-02-01T12:00:00Z"}`,
			Timer{Kind: KindDatetime, FireAt: fireAt, Timezone: "UTC", MisfireGrace: UnlimitedGrace}, time.Time{}},
		{"timer tagged cron", "core.timer", `{"type":"cron","expression":"0 0 * * *","timezone":"Europe/Berlin"}`,
			Timer{Kind: KindCron, Expression: "0 0 * * *", Timezone: "Europe/Berlin", Location: berlin}, time.Time{}},
		{"timer inferred interval", "core.timer", `{"interval":7}`,
			Timer{Kind: KindInterval, Interval: 7 * time.Second}, time.Time{}},
		{"timer inferred cron", "core.timer", `{"expression":"@hourly"}`,
			Timer{Kind: KindCron, Expression: "@hourly", Timezone: "UTC", Location: time.UTC}, time.Time{}},
		{"timer inferred datetime", "core.timer", `{"fire_at":"2026-02-01T12:00:00Z"}`,
			Timer{Kind: KindDatetime, FireAt: fireAt, Timezone: "UTC", MisfireGrace: UnlimitedGrace}, time.Time{}},
		{"misfire policies", "core.intervaltimer", `{"interval":5,"misfire":"fire_all","misfire_grace":"90s"}`,
			Timer{Kind: KindInterval, Interval: 5 * time.Second, Misfire: FireAll, MisfireGrace: 90 * time.Second}, time.Time{}},
		{"datetime with skip keeps the engine default grace", "core.datetimetimer", `{"fire_at":"2026-02-01T12:00:00Z","misfire":"skip"}`,
			Timer{Kind: KindDatetime, FireAt: fireAt, Timezone: "UTC", Misfire: Skip}, time.Time{}},
		{"datetime with explicit grace", "core.datetimetimer", `{"fire_at":"2026-02-01T12:00:00Z","misfire_grace":"0s"}`,
			Timer{Kind: KindDatetime, FireAt: fireAt, Timezone: "UTC"}, time.Time{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse(tt.ref, []byte(tt.params), 42)
			if err != nil {
				t.Fatalf("Parse(%q, %s): %v", tt.ref, tt.params, err)
			}
			want := tt.want
			want.TriggerRef = tt.ref
			if want.Misfire == "" {
				want.Misfire = FireOnce
			}
			if want.DSTGap == "" {
				want.DSTGap, want.DSTOverlap = GapShift, OverlapOnce
			}
			if got.Kind == KindInterval || got.Interval > 0 {
				want.Anchor = got.Anchor
				if !tt.wantAnchor.IsZero() && !got.Anchor.Equal(tt.wantAnchor) {
					t.Errorf("Parse(%q, %s).Anchor = %v, want %v", tt.ref, tt.params, got.Anchor, tt.wantAnchor)
				}
			}
			if !got.Equal(&want) || got.Location.String() != want.Location.String() {
				t.Errorf("Parse(%q, %s) =\n%+v\nwant\n%+v", tt.ref, tt.params, *got, want)
			}
			if _, ok := got.Next(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)); !ok {
				t.Errorf("Parse(%q, %s): no slot after 2026-01-01", tt.ref, tt.params)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name, ref, params string
		field, reason     string // reason: a substring of the message
	}{
		{"not a timer", "core.webhook", `{}`, "trigger_ref", `"core.webhook" is not a timer trigger`},
		{"rrule not served yet", "core.rruletimer", `{}`, "trigger_ref", "not a timer trigger"},
		{"null params", "core.intervaltimer", `null`, "trigger_params", "required"},
		{"empty params", "core.crontimer", ``, "trigger_params", "required"},
		{"array params", "core.crontimer", `[1]`, "trigger_params", "must be a JSON object"},
		{"broken JSON", "core.crontimer", `{"expression":`, "trigger_params", "invalid JSON"},
		{"huge params", "core.crontimer", `{"expression":"` + strings.Repeat("*", 10<<20) + `"}`, "trigger_params", "limit"},
		{"interval missing", "core.intervaltimer", `{}`, "trigger_params.interval", "required"},
		{"interval negative", "core.intervaltimer", `{"interval":-5}`, "trigger_params.interval", "must be a positive integer, got -5"},
		{"interval zero", "core.intervaltimer", `{"interval":0}`, "trigger_params.interval", "got 0"},
		{"interval fraction", "core.intervaltimer", `{"interval":2.5}`, "trigger_params.interval", "got 2.5"},
		{"interval string", "core.intervaltimer", `{"interval":"5"}`, "trigger_params.interval", `got string "5"`},
		{"interval null", "core.intervaltimer", `{"interval":null}`, "trigger_params.interval", "got null"},
		{"interval huge", "core.intervaltimer", `{"interval":1e30}`, "trigger_params.interval", "got 1e30"},
		{"interval overflows int64", "core.intervaltimer", `{"interval":99999999999999999999}`, "trigger_params.interval", "positive integer"},
		{"interval too long", "core.intervaltimer", `{"interval":36501,"unit":"days"}`, "trigger_params.interval", "longer than the limit"},
		{"interval_seconds too long", "core.timer", `{"interval_seconds":9223372036}`, "trigger_params.interval_seconds", "longer than the limit"},
		{"unit unknown", "core.intervaltimer", `{"interval":5,"unit":"weeks"}`, "trigger_params.unit", `got "weeks"`},
		{"unit not a string", "core.intervaltimer", `{"interval":5,"unit":5}`, "trigger_params.unit", "must be a string"},
		{"expression missing", "core.crontimer", `{}`, "trigger_params.expression", "required"},
		{"expression blank", "core.crontimer", `{"expression":"  "}`, "trigger_params.expression", "required"},
		{"expression not a string", "core.crontimer", `{"expression":5}`, "trigger_params.expression", "must be a string"},
		{"expression 9 fields", "core.crontimer", `{"expression":"1 2 3 4 5 6 7 8 9"}`, "trigger_params.expression", "9 fields, want 5, 6 or 7"},
		{"expression 4 fields", "core.crontimer", `{"expression":"* * * *"}`, "trigger_params.expression", "4 fields, want 5, 6 or 7"},
		{"expression bad minute", "core.crontimer", `{"expression":"61 * * * *"}`, "trigger_params.expression", "minute"},
		{"expression reversed range", "core.crontimer", `{"expression":"5-2 * * * *"}`, "trigger_params.expression", "matches no value"},
		{"expression reversed month range", "core.crontimer", `{"expression":"0 0 1 DEC-JAN *"}`, "trigger_params.expression", "month field"},
		{"expression Feb 30", "core.crontimer", `{"expression":"0 0 30 2 *"}`, "trigger_params.expression", "matches no time"},
		{"expression year out of range", "core.crontimer", `{"expression":"0 0 0 1 1 ? 2200"}`, "trigger_params.expression", "year"},
		{"expression too long", "core.crontimer", `{"expression":"` + strings.Repeat("1,", 600) + `1 * * * *"}`, "trigger_params.expression", "limit"},
		{"expression unknown descriptor", "core.crontimer", `{"expression":"@fortnightly"}`, "trigger_params.expression", "unknown descriptor"},
		{"expression descriptor inside", "core.crontimer", `{"expression":"0 @hourly * * *"}`, "trigger_params.expression", "'@'"},
		{"expression @every below 1s", "core.crontimer", `{"expression":"@every 500ms"}`, "trigger_params.expression", "at least 1s"},
		{"expression @every negative", "core.crontimer", `{"expression":"@every -5s"}`, "trigger_params.expression", "at least 1s"},
		{"expression @every garbage", "core.crontimer", `{"expression":"@every soon"}`, "trigger_params.expression", "not a Go duration"},
		{"expression @every empty", "core.crontimer", `{"expression":"@every"}`, "trigger_params.expression", "@every <duration>"},
		{"expression @everyday", "core.crontimer", `{"expression":"@everyday"}`, "trigger_params.expression", "@every <duration>"},
		{"expression @every too long", "core.crontimer", `{"expression":"@every 900000h"}`, "trigger_params.expression", "longer than the limit"},
		{"timezone unknown", "core.crontimer", `{"expression":"@daily","timezone":"Mars/Base"}`, "trigger_params.timezone", `unknown time zone "Mars/Base"`},
		{"timezone Local", "core.crontimer", `{"expression":"@daily","timezone":"Local"}`, "trigger_params.timezone", "unknown time zone"},
		{"timezone path", "core.crontimer", `{"expression":"@daily","timezone":"../../etc/passwd"}`, "trigger_params.timezone", "unknown time zone"},
		{"timezone not a string", "core.crontimer", `{"expression":"@daily","timezone":1}`, "trigger_params.timezone", "must be a string"},
		{"fire_at missing", "core.datetimetimer", `{"timezone":"UTC"}`, "trigger_params.fire_at", "required"},
		{"fire_at without offset", "core.datetimetimer", `{"fire_at":"2026-02-01T12:00:00"}`, "trigger_params.fire_at", "RFC 3339"},
		{"fire_at a number", "core.datetimetimer", `{"fire_at":1767225600}`, "trigger_params.fire_at", "must be a string"},
		{"fire_at before 1678", "core.datetimetimer", `{"fire_at":"1600-01-01T00:00:00Z"}`, "trigger_params.fire_at", "between the years 1678 and 2262"},
		{"fire_at after 2262", "core.datetimetimer", `{"fire_at":"2300-01-01T00:00:00Z"}`, "trigger_params.fire_at", "between the years 1678 and 2262"},
		{"start_at after 2262", "core.intervaltimer", `{"interval":5,"start_at":"2263-01-01T00:00:00Z"}`, "trigger_params.start_at", "between the years 1678 and 2262"},
		{"timer kind unknown", "core.timer", `{"foo":1}`, "trigger_params", "cannot tell the timer kind"},
		{"timer kind ambiguous", "core.timer", `{"interval_seconds":5,"expression":"@daily"}`, "trigger_params", "ambiguous"},
		{"timer type unknown", "core.timer", `{"type":"rrule"}`, "trigger_params.type", `got "rrule"`},
		{"timer seed bad value", "core.timer", `{"interval_seconds":"5"}`, "trigger_params.interval_seconds", "positive integer"},
		{"misfire unknown", "core.intervaltimer", `{"interval":5,"misfire":"later"}`, "trigger_params.misfire", `got "later"`},
		{"misfire_grace negative", "core.intervaltimer", `{"interval":5,"misfire_grace":"-1s"}`, "trigger_params.misfire_grace", "≥ 0"},
		{"misfire_grace a number", "core.intervaltimer", `{"interval":5,"misfire_grace":30}`, "trigger_params.misfire_grace", "must be a string"},
		{"start_at bad", "core.intervaltimer", `{"interval":5,"start_at":"tomorrow"}`, "trigger_params.start_at", "RFC 3339"},
		{"dst_gap unknown", "core.crontimer", `{"expression":"@daily","dst_gap":"later"}`, "trigger_params.dst_gap", "shift or skip"},
		{"dst_overlap unknown", "core.crontimer", `{"expression":"@daily","dst_overlap":"thrice"}`, "trigger_params.dst_overlap", "once or twice"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tm, err := Parse(tt.ref, []byte(tt.params), 1)
			var se *SpecError
			if !errors.As(err, &se) {
				t.Fatalf("Parse(%q, %s) = %+v, %v; want a *SpecError", tt.ref, shorten(tt.params), tm, err)
			}
			if se.Field != tt.field || !strings.Contains(err.Error(), tt.reason) || !strings.HasPrefix(err.Error(), tt.field+": ") {
				t.Errorf("Parse(%q, %s) error %q (field %q); want field %q and %q", tt.ref, shorten(tt.params), err, se.Field, tt.field, tt.reason)
			}
			if len(err.Error()) > 400 {
				t.Errorf("Parse(%q, %s) error is %d bytes; want a short message", tt.ref, shorten(tt.params), len(err.Error()))
			}
		})
	}
}

func TestSpecErrorMessage(t *testing.T) {
	err := error(&SpecError{Field: "trigger_params.interval", Reason: "must be a positive integer"})
	if got, want := err.Error(), "trigger_params.interval: must be a positive integer"; got != want {
		t.Errorf("SpecError.Error() = %q, want %q", got, want)
	}
}

func TestIsTimerTrigger(t *testing.T) {
	for ref, want := range map[string]bool{
		"core.intervaltimer": true, "core.crontimer": true, "core.datetimetimer": true, "core.timer": true,
		"core.webhook": false, "": false, "core.Timer": false, "core.rruletimer": false,
	} {
		if got := IsTimerTrigger(ref); got != want {
			t.Errorf("IsTimerTrigger(%q) = %v, want %v", ref, got, want)
		}
	}
}

func TestEqual(t *testing.T) {
	base := func() *Timer {
		return mustParse(t, "core.crontimer", `{"expression":"0 0 * * *","timezone":"Europe/Berlin","misfire":"fire_all"}`, 1)
	}
	if a, b := base(), base(); !a.Equal(b) {
		t.Errorf("the same params parsed twice are not Equal:\n%+v\n%+v", a, b)
	}
	// Key order and extra keys do not matter.
	a := mustParse(t, "core.intervaltimer", `{"interval":60,"unit":"seconds","note":"x"}`, 9)
	b := mustParse(t, "core.intervaltimer", `{"unit":"minutes","interval":1}`, 9)
	if !a.Equal(b) {
		t.Errorf("60 seconds and 1 minute for the same rule are not Equal")
	}
	differ := []struct{ name, ref, params string }{
		{"expression", "core.crontimer", `{"expression":"0 0 0 * * *","timezone":"Europe/Berlin","misfire":"fire_all"}`},
		{"timezone", "core.crontimer", `{"expression":"0 0 * * *","timezone":"Europe/Paris","misfire":"fire_all"}`},
		{"misfire", "core.crontimer", `{"expression":"0 0 * * *","timezone":"Europe/Berlin"}`},
		{"grace", "core.crontimer", `{"expression":"0 0 * * *","timezone":"Europe/Berlin","misfire":"fire_all","misfire_grace":"1m"}`},
		{"dst_gap", "core.crontimer", `{"expression":"0 0 * * *","timezone":"Europe/Berlin","misfire":"fire_all","dst_gap":"skip"}`},
		{"dst_overlap", "core.crontimer", `{"expression":"0 0 * * *","timezone":"Europe/Berlin","misfire":"fire_all","dst_overlap":"twice"}`},
		{"trigger_ref", "core.timer", `{"type":"cron","expression":"0 0 * * *","timezone":"Europe/Berlin","misfire":"fire_all"}`},
	}
	for _, d := range differ {
		if o := mustParse(t, d.ref, d.params, 1); base().Equal(o) {
			t.Errorf("timers differing in %s are Equal", d.name)
		}
	}
	if x, y := mustParse(t, "core.intervaltimer", `{"interval":60}`, 1), mustParse(t, "core.intervaltimer", `{"interval":60}`, 2); x.Equal(y) {
		t.Errorf("interval timers of different rules (different phase) are Equal")
	}
	if x, y := mustParse(t, "core.intervaltimer", `{"interval":60}`, 1), mustParse(t, "core.intervaltimer", `{"interval":61}`, 1); x.Equal(y) {
		t.Errorf("interval timers of 60s and 61s are Equal")
	}
	if x, y := mustParse(t, "core.datetimetimer", `{"fire_at":"2026-02-01T12:00:00Z"}`, 1), mustParse(t, "core.datetimetimer", `{"fire_at":"2026-02-01T13:00:00+01:00"}`, 1); !x.Equal(y) {
		t.Errorf("datetime timers of the same instant are not Equal")
	}
	var nilTimer *Timer
	if !nilTimer.Equal(nil) || nilTimer.Equal(base()) || base().Equal(nil) {
		t.Errorf("Equal with nil timers is wrong")
	}
}

func TestDatetimeNextLast(t *testing.T) {
	tm := mustParse(t, "core.datetimetimer", `{"fire_at":"2026-02-01T12:00:00Z"}`, 1)
	at := ts(t, "2026-02-01T12:00:00Z")
	if got, ok := tm.Next(at.Add(-time.Nanosecond)); !ok || !got.Equal(at) {
		t.Errorf("Next just before fire_at = %v, %v; want %v", got, ok, at)
	}
	if _, ok := tm.Next(at); ok {
		t.Errorf("Next at fire_at: got a slot, want none")
	}
	if got, ok := tm.Last(at.Add(-time.Hour), at); !ok || !got.Equal(at) {
		t.Errorf("Last(…, fire_at) = %v, %v; want %v", got, ok, at)
	}
	if _, ok := tm.Last(at, at.Add(time.Hour)); ok {
		t.Errorf("Last(fire_at, …): got a slot, want none")
	}
}

// The engine's tests may build Timers by hand; they must still work.
func TestHandBuiltTimer(t *testing.T) {
	anchor := ts(t, "2026-01-01T00:00:00Z")
	iv := &Timer{Kind: KindInterval, Interval: time.Minute, Anchor: anchor}
	if got, ok := iv.Next(anchor.Add(90 * time.Second)); !ok || !got.Equal(anchor.Add(2*time.Minute)) {
		t.Errorf("hand-built interval Next = %v, %v; want %v", got, ok, anchor.Add(2*time.Minute))
	}
	dt := &Timer{Kind: KindDatetime, FireAt: anchor}
	if got, ok := dt.Next(anchor.Add(-time.Second)); !ok || !got.Equal(anchor) {
		t.Errorf("hand-built datetime Next = %v, %v; want %v", got, ok, anchor)
	}
	cr := &Timer{Kind: KindCron, Expression: "0 0 * * *"}
	if got, ok := cr.Next(anchor); !ok || !got.Equal(anchor.Add(24*time.Hour)) {
		t.Errorf("hand-built cron Next = %v, %v; want %v", got, ok, anchor.Add(24*time.Hour))
	}
	if _, ok := (&Timer{}).Next(anchor); ok {
		t.Errorf("empty Timer has a slot")
	}
}

func TestPreview(t *testing.T) {
	from := ts(t, "2026-01-01T00:00:00Z")
	got, err := Preview("core.crontimer", []byte(`{"expression":"0 */5 * * * *"}`), 1, from, 3)
	want := []time.Time{from.Add(5 * time.Minute), from.Add(10 * time.Minute), from.Add(15 * time.Minute)}
	if err != nil || fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("Preview = %v, %v; want %v", got, err, want)
	}
	got, err = Preview("core.datetimetimer", []byte(`{"fire_at":"2026-02-01T12:00:00Z"}`), 1, from, 10)
	if err != nil || len(got) != 1 {
		t.Errorf("Preview of a datetime = %v, %v; want one slot", got, err)
	}
	if got, err := Preview("core.intervaltimer", []byte(`{"interval":1}`), 1, from, MaxPreview); err != nil || len(got) != MaxPreview {
		t.Errorf("Preview(count %d) = %d slots, %v", MaxPreview, len(got), err)
	}
	for _, n := range []int{0, -1, MaxPreview + 1} {
		if _, err := Preview("core.intervaltimer", []byte(`{"interval":1}`), 1, from, n); err == nil || !strings.HasPrefix(err.Error(), "count:") {
			t.Errorf("Preview(count %d) error = %v, want a count error", n, err)
		}
	}
	if _, err := Preview("core.webhook", []byte(`{}`), 1, from, 1); err == nil {
		t.Errorf("Preview of a webhook trigger: no error")
	}
}

// randomTimer returns a random timer of any kind, with its params.
func randomTimer(t *testing.T, r *rand.Rand) (*Timer, string) {
	zones := []string{"UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata"}
	exprs := []string{
		"*/7 * * * * *", "0 */13 * * * *", "30 2 * * *", "0,30 1-3 * * *", "0 0 13 * FRI", "0 0 L * ?",
		"15 10 ? * 6L", "0 0 0 29 2 ?", "@hourly", "@daily", "59 59 23 31 12 ? *", "0 0 9-17/2 ? * MON-FRI",
	}
	var ref, params string
	switch r.IntN(4) {
	case 0:
		ref = "core.intervaltimer"
		units := []string{"seconds", "minutes", "hours", "days"}
		params = fmt.Sprintf(`{"interval":%d,"unit":%q}`, 1+r.IntN(120), units[r.IntN(len(units))])
	case 1:
		ref = "core.crontimer"
		params = fmt.Sprintf(`{"expression":"@every %dms","start_at":"2026-03-01T00:00:%02d.%03dZ"}`, 1000+r.IntN(7200000), r.IntN(60), r.IntN(1000))
	case 2:
		ref = "core.crontimer"
		gap, overlap := []string{"shift", "skip"}[r.IntN(2)], []string{"once", "twice"}[r.IntN(2)]
		params = fmt.Sprintf(`{"expression":%q,"timezone":%q,"dst_gap":%q,"dst_overlap":%q}`,
			exprs[r.IntN(len(exprs))], zones[r.IntN(len(zones))], gap, overlap)
	default:
		ref = "core.datetimetimer"
		params = fmt.Sprintf(`{"fire_at":%q}`, time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC).Add(time.Duration(r.Int64N(int64(365*24*time.Hour)))).Format(time.RFC3339Nano))
	}
	return mustParse(t, ref, params, r.Int64()), ref + " " + params
}

// Last must equal the last slot found by walking Next, for any timer and
// any window.
func TestLastMatchesBruteForce(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	base := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	checked := 0
	for i := 0; i < 600; i++ {
		tm, desc := randomTimer(t, r)
		after := base.Add(time.Duration(r.Int64N(int64(300 * 24 * time.Hour))))
		span := time.Duration(r.Int64N(int64(time.Second) << r.IntN(26)))
		notAfter := after.Add(span)
		var want time.Time
		wantOK, steps := false, 0
		for s, ok := tm.Next(after); ok && !s.After(notAfter) && steps < 5000; s, ok = tm.Next(s) {
			want, wantOK, steps = s, true, steps+1
		}
		if steps == 5000 {
			continue // too dense for brute force
		}
		checked++
		got, ok := tm.Last(after, notAfter)
		if ok != wantOK || ok && !got.Equal(want) {
			t.Errorf("%s: Last(%v, %v) = %v, %v; want %v, %v", desc, after, notAfter, got, ok, want, wantOK)
		}
	}
	if checked < 400 {
		t.Errorf("only %d of 600 random cases were checked", checked)
	}
}

func FuzzParse(f *testing.F) {
	seeds := []struct {
		ref, params string
	}{
		{"core.intervaltimer", `{"interval":5,"unit":"minutes"}`},
		{"core.crontimer", `{"expression":"0 */5 * * * *","timezone":"Europe/Berlin"}`},
		{"core.crontimer", `{"expression":"30 2 * * *","timezone":"Australia/Lord_Howe","dst_overlap":"twice"}`},
		{"core.crontimer", `{"expression":"0 0 ? * 5L 2030"}`},
		{"core.crontimer", `{"expression":"0 0 15W,L * ?"}`},
		{"core.crontimer", `{"expression":"@every 1m30s"}`},
		{"core.crontimer", `{"expression":"0 0 * * FRI-SUN/2"}`},
		{"core.datetimetimer", `{"fire_at":"2026-02-01T12:00:00+01:00"}`},
		{"core.timer", `{"interval_seconds":5,"misfire":"fire_all","misfire_grace":"1m"}`},
		{"core.timer", `{"type":"cron","expression":"@weekly"}`},
	}
	for i, s := range seeds {
		f.Add(s.ref, []byte(s.params), int64(i), int64(1767225600+i*7919))
	}
	f.Fuzz(func(t *testing.T, ref string, params []byte, ruleID, afterUnix int64) {
		tm, err := Parse(ref, params, ruleID)
		if err != nil {
			var se *SpecError
			if !errors.As(err, &se) || se.Field == "" {
				t.Fatalf("Parse error %v is not a *SpecError with a field", err)
			}
			return
		}
		again, err := Parse(ref, params, ruleID)
		if err != nil || !tm.Equal(again) {
			t.Fatalf("Parse is not deterministic: %v", err)
		}
		after := time.Unix(afterUnix%(200*365*24*3600), 0)
		prev := after
		for range 5 {
			n, ok := tm.Next(prev)
			if !ok {
				break
			}
			if !n.After(prev) {
				t.Fatalf("Next(%v) = %v, not after", prev, n)
			}
			if l, ok := tm.Last(prev, n); !ok || !l.Equal(n) {
				t.Fatalf("Last(%v, %v) = %v, %v; want the slot %v", prev, n, l, ok, n)
			}
			prev = n
		}
	})
}

func BenchmarkParse(b *testing.B) {
	for _, c := range []struct{ name, ref, params string }{
		{"interval", "core.intervaltimer", `{"interval":5,"unit":"minutes"}`},
		{"cron_5field", "core.crontimer", `{"expression":"*/5 9-17 * * MON-FRI","timezone":"Europe/Berlin"}`},
		{"cron_descriptor", "core.crontimer", `{"expression":"@daily"}`},
		{"datetime", "core.datetimetimer", `{"fire_at":"2026-02-01T12:00:00Z"}`},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := Parse(c.ref, []byte(c.params), 1); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func TestTruncate(t *testing.T) {
	tests := []struct {
		name string
		s    string
		n    int
		want string
	}{
		{"short", "abc", 3, "abc"},
		{"empty", "", 0, ""},
		{"cut", "abcdef", 3, "abc…"},
		{"zero", "abc", 0, "…"},
		{"negative", "abc", -1, "…"},
		{"rune split", "aé", 2, "a…"}, // é is 2 bytes: the half is dropped
		{"rune whole", "aéb", 3, "aé…"},
		{"invalid before the cut", "a\xffbc", 3, "ab…"},
	}
	for _, tc := range tests {
		if got := Truncate(tc.s, tc.n); got != tc.want {
			t.Errorf("%s: Truncate(%q, %d) = %q, want %q", tc.name, tc.s, tc.n, got, tc.want)
		}
	}
}
