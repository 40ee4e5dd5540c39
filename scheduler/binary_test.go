package scheduler

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

// agree fails t unless decoded has the schedule, policies and slots of parsed: Equal,
// the same location and the same Next and Last from a spread of instants.
func agree(t *testing.T, in string, parsed, decoded *Timer) {
	t.Helper()
	if !parsed.Equal(decoded) {
		t.Fatalf("%s: DecodeTimer(AppendBinary(Parse)) = %+v, want %+v", in, *decoded, *parsed)
	}
	if parsed.Location != decoded.Location || parsed.Anchor.Location() != decoded.Anchor.Location() ||
		parsed.FireAt.Location() != decoded.FireAt.Location() || parsed.shape() != decoded.shape() {
		t.Fatalf("%s: decoded locations or shape differ: %+v, want %+v", in, *decoded, *parsed)
	}
	base := time.Date(2026, 3, 29, 0, 30, 0, 0, time.UTC)
	for _, after := range []time.Time{{}, time.Unix(0, 0).UTC(), base, base.Add(-7 * time.Hour), base.Add(7*24*time.Hour + 1234567), time.Date(2027, 10, 31, 1, 0, 0, 0, time.UTC)} {
		pn, pok := parsed.Next(after)
		dn, dok := decoded.Next(after)
		if pok != dok || !pn.Equal(dn) || pn.Location() != dn.Location() {
			t.Fatalf("%s: Next(%v): decoded %v %v, parsed %v %v", in, after, dn, dok, pn, pok)
		}
		notAfter := after.Add(90 * 24 * time.Hour)
		pl, pok := parsed.Last(after, notAfter)
		dl, dok := decoded.Last(after, notAfter)
		if pok != dok || !pl.Equal(dl) || pl.Location() != dl.Location() {
			t.Fatalf("%s: Last(%v, %v): decoded %v %v, parsed %v %v", in, after, notAfter, dl, dok, pl, pok)
		}
	}
}

// roundTrip parses (ref, params); for a valid timer it checks that its binary form
// decodes to a timer that agrees with it. It reports whether params parsed.
func roundTrip(t *testing.T, ref string, params []byte, id int64) bool {
	t.Helper()
	parsed, err := Parse(ref, params, id)
	if err != nil {
		return false
	}
	in := fmt.Sprintf("Parse(%q, %s, %d)", ref, params, id)
	b, err := parsed.AppendBinary(nil)
	if err != nil {
		t.Fatalf("%s: AppendBinary: %v", in, err)
	}
	decoded, err := DecodeTimer(b)
	if err != nil {
		t.Fatalf("%s: DecodeTimer(%x): %v", in, b, err)
	}
	agree(t, in, parsed, decoded)
	// Into a used Timer (a load's scratch), the same timer: every field overwritten.
	scratch := usedTimer(t)
	if err := DecodeTimerInto(b, scratch); err != nil || *scratch != *decoded {
		t.Fatalf("%s: DecodeTimerInto(%x, used) = %+v, %v; want %+v", in, b, *scratch, err, *decoded)
	}
	return true
}

// usedTimer is a Timer with every field set, as a scratch Timer is after a decode
// of another rule.
func usedTimer(t testing.TB) *Timer {
	t.Helper()
	tm, err := Parse(refCron, []byte(`{"expression":"*/5 * * * *","timezone":"Europe/Berlin","misfire":"fire_all","misfire_grace":"3s","dst_gap":"skip","dst_overlap":"twice"}`), 1)
	if err != nil {
		t.Fatal(err)
	}
	tm.Interval, tm.TriggerRef = time.Hour, "x.y"
	tm.Anchor, tm.FireAt = time.Unix(1, 2), time.Unix(3, 4)
	return tm
}

// randomParams builds trigger params from the keys every kind reads, with valid and
// invalid values mixed, so that both the accepted space and its edges are covered.
func randomParams(r *rand.Rand) (ref string, params []byte) {
	pick := func(vs ...string) string { return vs[r.IntN(len(vs))] }
	refs := TimerTriggers()
	ref = refs[r.IntN(len(refs))]
	var kv []string
	add := func(p float64, key, value string) {
		if r.Float64() < p {
			kv = append(kv, fmt.Sprintf("%q:%s", key, value))
		}
	}
	add(0.3, "type", pick(`"interval"`, `"cron"`, `"datetime"`, `"date_time"`, `"one_shot"`, `"bogus"`))
	add(0.5, "interval", pick(fmt.Sprint(1+r.IntN(100000)), "0", "-3", `"5"`, "1e3"))
	add(0.1, "interval_seconds", fmt.Sprint(1+r.IntN(1000)))
	add(0.4, "unit", pick(`"seconds"`, `"minutes"`, `"h"`, `"days"`, `"fortnights"`))
	add(0.5, "expression", pick(`"0 */5 * * * *"`, `"*/7 * * * *"`, `"30 2 * * *"`, `"0 30 1 * * 0 *"`, `"@daily"`, `"@hourly"`,
		`"@every 90s"`, `"@every 1h30m"`, `"0 0 29 2 *"`, `"15 10 L * ?"`, `"0 0 1 1 * * 2000"`, `"bad"`))
	add(0.4, "timezone", pick(`"UTC"`, `"Europe/Berlin"`, `"America/New_York"`, `"Australia/Lord_Howe"`, `"Asia/Kolkata"`, `""`, `"Mars/Olympus"`))
	add(0.4, "fire_at", pick(`"2027-01-01T00:00:00Z"`, `"2026-03-29T02:30:00+02:00"`, `"2026-11-01T01:30:00.123456789-04:00"`,
		fmt.Sprintf(`"%s"`, time.Unix(r.Int64N(4e9), r.Int64N(1e9)).UTC().Format(time.RFC3339Nano)), `"yesterday"`))
	add(0.3, "start_at", pick(`"2026-01-01T00:00:07Z"`, `"2025-06-01T12:00:00+05:30"`,
		fmt.Sprintf(`"%s"`, time.Unix(r.Int64N(4e9), r.Int64N(1e9)).UTC().Format(time.RFC3339Nano))))
	add(0.3, "misfire", pick(`"fire_once"`, `"fire_all"`, `"skip"`, `"never"`))
	add(0.3, "misfire_grace", pick(`"0s"`, `"30s"`, `"1h"`, `"-1s"`))
	add(0.2, "dst_gap", pick(`"shift"`, `"skip"`))
	add(0.2, "dst_overlap", pick(`"once"`, `"twice"`))
	r.Shuffle(len(kv), func(i, j int) { kv[i], kv[j] = kv[j], kv[i] })
	return ref, []byte("{" + strings.Join(kv, ",") + "}")
}

func TestBinaryAgreesWithParse(t *testing.T) {
	r := rand.New(rand.NewPCG(11, 5))
	valid := map[Kind]int{}
	for i := range 20000 {
		ref, params := randomParams(r)
		if roundTrip(t, ref, params, int64(i)-100) {
			p, _ := Parse(ref, params, int64(i)-100)
			valid[p.Kind]++
		}
	}
	// The generator must reach every kind, or the test proves little.
	for _, k := range []Kind{KindInterval, KindCron, KindDatetime} {
		if valid[k] < 200 {
			t.Errorf("only %d valid %s timers among 20000 random inputs: %v", valid[k], k, valid)
		}
	}
}

// A cron timer decoded shares the compiled schedule of any other timer of the same
// expression, zone and policies: one per distinct schedule, not one per rule.
func TestDecodeTimerSharesSchedules(t *testing.T) {
	p := []byte(`{"expression":"0 */5 * * * *","timezone":"Europe/Berlin"}`)
	a, err := Parse(refCron, p, 1)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := a.AppendBinary(nil)
	d, err := DecodeTimer(b)
	if err != nil {
		t.Fatal(err)
	}
	if d.cron == nil || d.cron != a.cron {
		t.Errorf("DecodeTimer: schedule %p, want Parse's %p", d.cron, a.cron)
	}
}

func TestDecodeTimerRefusesBadForms(t *testing.T) {
	good, err := Parse(refCron, []byte(`{"expression":"0 */5 * * * *","timezone":"Europe/Berlin"}`), 1)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := good.AppendBinary(nil)
	for name, form := range map[string][]byte{
		"empty":      nil,
		"version":    append([]byte{9}, b[1:]...),
		"truncated":  b[:len(b)-3],
		"trailing":   append(append([]byte(nil), b...), 0),
		"kind 0":     append(append([]byte(nil), b[:2]...), append([]byte{0}, b[3:]...)...),
		"kind 9":     append(append([]byte(nil), b[:2]...), append([]byte{9}, b[3:]...)...),
		"no period":  mustForm(t, &Timer{TriggerRef: refInterval, Kind: KindInterval}),
		"no fire_at": mustForm(t, &Timer{TriggerRef: refDatetime, Kind: KindDatetime}),
	} {
		if tm, err := DecodeTimer(form); !errors.Is(err, ErrTimerForm) {
			t.Errorf("DecodeTimer(%s %x) = %+v, %v; want an error wrapping ErrTimerForm", name, form, tm, err)
		}
	}
	// Sound forms of what this build cannot load: Parse's error, not a bad form.
	for name, form := range map[string][]byte{
		"unknown zone":   mustForm(t, &Timer{TriggerRef: refCron, Kind: KindCron, Expression: "@daily", Timezone: "Mars/Olympus"}),
		"bad expression": mustForm(t, &Timer{TriggerRef: refCron, Kind: KindCron, Expression: "61 * * * *", Timezone: "UTC"}),
	} {
		var se *SpecError
		if tm, err := DecodeTimer(form); !errors.As(err, &se) || errors.Is(err, ErrTimerForm) {
			t.Errorf("DecodeTimer(%s %x) = %+v, %v; want a *SpecError", name, form, tm, err)
		}
	}
	if _, err := (&Timer{Kind: "weekly"}).AppendBinary(nil); err == nil {
		t.Error("AppendBinary of kind weekly: no error")
	}
}

func mustForm(t *testing.T, tm *Timer) []byte {
	t.Helper()
	b, err := tm.AppendBinary(nil)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// FuzzBinaryAgreesWithParse: for any input Parse accepts, the binary form decodes to
// a timer with the same slots.
func FuzzBinaryAgreesWithParse(f *testing.F) {
	r := rand.New(rand.NewPCG(2, 9))
	for range 50 {
		ref, p := randomParams(r)
		f.Add(ref, string(p), int64(r.IntN(1000)))
	}
	f.Fuzz(func(t *testing.T, ref, params string, id int64) {
		roundTrip(t, ref, []byte(params), id)
	})
}

// FuzzDecodeTimer: any bytes decode to a timer or an error, never a panic; a timer
// decoded encodes again to a form that decodes to an Equal timer.
func FuzzDecodeTimer(f *testing.F) {
	r := rand.New(rand.NewPCG(4, 1))
	for range 50 {
		ref, p := randomParams(r)
		if tm, err := Parse(ref, p, 7); err == nil {
			b, _ := tm.AppendBinary(nil)
			f.Add(b)
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		tm, err := DecodeTimer(b)
		scratch := usedTimer(t)
		if errInto := DecodeTimerInto(b, scratch); (errInto == nil) != (err == nil) || err == nil && *scratch != *tm {
			t.Fatalf("DecodeTimerInto(%x, used) = %+v, %v; DecodeTimer = %+v, %v", b, *scratch, errInto, tm, err)
		}
		if err != nil {
			return
		}
		again, err := tm.AppendBinary(nil)
		if err != nil {
			t.Fatalf("AppendBinary(DecodeTimer(%x)): %v", b, err)
		}
		back, err := DecodeTimer(again)
		if err != nil || !back.Equal(tm) {
			t.Fatalf("DecodeTimer(%x) = %+v, %v; want %+v", again, back, err, tm)
		}
	})
}
