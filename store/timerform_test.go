package store

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/timerd/timerd/scheduler"
)

// encodeRuleV3 is a rule value as schema versions 1–4 wrote it: ver | updated_at | ref |
// trigger_ref | params, with a checksum when ver is sealedV3 (codec v1 and v2 have the
// same layout without one).
func encodeRuleV3(r Rule, ver byte) []byte {
	b := []byte{ver}
	b = appendTime(b, r.UpdatedAt)
	b = appendString(b, r.Ref)
	b = appendString(b, r.TriggerRef)
	b = append(b, r.Params...)
	if ver == sealedV3 {
		b = seal(b)
	}
	return b
}

// timerRules are rules of every kind, an "@every" cron, a time zone, policies and
// one whose params do not parse.
func timerRules() []Rule {
	rs := []Rule{
		{TriggerRef: "core.intervaltimer", Params: json.RawMessage(`{"interval":30,"unit":"seconds"}`)},
		{TriggerRef: "core.intervaltimer", Params: json.RawMessage(`{"interval":2,"unit":"hours","start_at":"2026-01-01T00:00:07+01:00","misfire":"fire_all"}`)},
		{TriggerRef: "core.crontimer", Params: json.RawMessage(`{"expression":"30 2 * * *","timezone":"Europe/Berlin","dst_gap":"skip","dst_overlap":"twice"}`)},
		{TriggerRef: "core.crontimer", Params: json.RawMessage(`{"expression":"@every 90s","misfire_grace":"5s"}`)},
		{TriggerRef: "core.datetimetimer", Params: json.RawMessage(`{"fire_at":"2027-03-01T12:00:00.5-05:00","timezone":"America/New_York"}`)},
		{TriggerRef: "core.timer", Params: json.RawMessage(`{"type":"cron","expression":"0 */5 * * * *","misfire":"skip"}`)},
		{TriggerRef: "core.intervaltimer", Params: json.RawMessage(`{"unit":"seconds"}`)}, // no interval: invalid
	}
	for i := range rs {
		rs[i].ID = int64(i + 1)
		rs[i].Ref = fmt.Sprintf("pack.timer_%d", i+1)
		rs[i].UpdatedAt = t0.Add(time.Duration(i) * time.Minute)
	}
	return rs
}

// checkTimer fails t unless r.Timer is what Parse gives for r's params: Equal, with
// the same next slots; nil when they do not parse.
func checkTimer(t *testing.T, how string, r Rule) {
	t.Helper()
	want, err := scheduler.Parse(r.TriggerRef, r.Params, r.ID)
	if err != nil {
		if r.Timer != nil {
			t.Errorf("%s: rule %d (%s) has timer %+v, want none (%v)", how, r.ID, r.Params, *r.Timer, err)
		}
		return
	}
	if r.Timer == nil || !r.Timer.Equal(want) {
		t.Errorf("%s: rule %d timer = %+v, want Parse's %+v", how, r.ID, r.Timer, *want)
		return
	}
	for _, after := range []time.Time{t0, t0.Add(400 * 24 * time.Hour)} {
		got, gok := r.Timer.Next(after)
		exp, eok := want.Next(after)
		if gok != eok || !got.Equal(exp) {
			t.Errorf("%s: rule %d Next(%v) = %v, %v; want %v, %v", how, r.ID, after, got, gok, exp, eok)
		}
	}
}

func TestRuleTimerIsStored(t *testing.T) {
	s := openTest(t, Options{NoSync: true})
	rs := timerRules()
	// The caller's timer for one rule, the store's own Parse for the others.
	given, err := scheduler.Parse(rs[2].TriggerRef, rs[2].Params, rs[2].ID)
	if err != nil {
		t.Fatal(err)
	}
	rs[2].Timer = given
	if err := s.PutRules(rs, nil); err != nil {
		t.Fatal(err)
	}
	s = reopen(t, s)
	for _, want := range rs {
		r, _, ok, err := s.Rule(want.ID)
		if err != nil || !ok || !ruleEqual(r, want) {
			t.Fatalf("Rule(%d) = %+v, %v, %v; want %+v", want.ID, r, ok, err, want)
		}
		checkTimer(t, "Rule", r)
	}
	n := 0
	if err := s.ForEachRule(func(r Rule, _ Watermark) error {
		n++
		checkTimer(t, "ForEachRule", r)
		return nil
	}); err != nil || n != len(rs) {
		t.Fatalf("ForEachRule: %d rules, %v; want %d", n, err, len(rs))
	}
}

// ForEachTimer gives a rule with a timer as its id and timer only, and one without
// (params that do not parse) whole, so that the caller can report it.
func TestForEachTimer(t *testing.T) {
	s := openTest(t, Options{NoSync: true})
	rs := timerRules()
	if err := s.PutRules(rs, nil); err != nil {
		t.Fatal(err)
	}
	i := 0
	if err := s.ForEachTimer(func(r Rule, _ Watermark) error {
		want := rs[i]
		i++
		switch {
		case r.ID != want.ID:
			t.Errorf("ForEachTimer: rule %d, want %d", r.ID, want.ID)
		case r.Timer != nil && (r.Ref != "" || r.TriggerRef != "" || r.Params != nil):
			t.Errorf("ForEachTimer: rule %d has a timer and %q %q %s, want only the timer", r.ID, r.Ref, r.TriggerRef, r.Params)
		case r.Timer == nil && !ruleEqual(r, want):
			t.Errorf("ForEachTimer: rule %d without a timer = %+v, want it whole: %+v", r.ID, r, want)
		}
		if r.Timer != nil {
			want.Timer = r.Timer
			checkTimer(t, "ForEachTimer", want)
		}
		return nil
	}); err != nil || i != len(rs) {
		t.Fatalf("ForEachTimer: %d rules, %v; want %d", i, err, len(rs))
	}
}

// A file of schema version 4 (rule values without a binary timer) opens: every rule
// value is rewritten with its timer, parsed once, the file's version is raised, and
// the rules, their timers and their watermarks read as before.
func TestOpenSchema4File(t *testing.T) {
	s := openTest(t, Options{NoSync: true})
	rs := timerRules()
	wms := make([]*Watermark, len(rs))
	for i := range wms {
		wms[i] = &Watermark{Slot: t0.Add(time.Duration(i) * time.Second), Count: uint64(i)}
	}
	if err := s.PutRules(rs, wms); err != nil {
		t.Fatal(err)
	}
	p := s.Path()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	editStore(t, p, func(tx *bolt.Tx) error {
		rb := tx.Bucket(bucketRules)
		for _, r := range rs {
			if err := rb.Put(idKey(r.ID), encodeRuleV3(r, sealedV3)); err != nil {
				return err
			}
		}
		return tx.Bucket(bucketMeta).Put(keySchemaVersion, []byte("4"))
	})
	s, err := Open(p, Options{NoSync: true})
	if err != nil {
		t.Fatalf("Open(schema 4 file) = %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	_ = s.db.View(func(tx *bolt.Tx) error {
		if v, want := string(tx.Bucket(bucketMeta).Get(keySchemaVersion)), strconv.Itoa(SchemaVersion); v != want {
			t.Errorf("schema_version after the upgrade = %q, want %s", v, want)
		}
		return tx.Bucket(bucketRules).ForEach(func(k, v []byte) error {
			if _, err := unseal(v); err != nil || v[0] != ruleV4 {
				t.Errorf("rule %x after the upgrade: version %d, checksum %v; want %d with a checksum", k, v[0], err, ruleV4)
			}
			return nil
		})
	})
	i := 0
	if err := s.ForEachRule(func(r Rule, wm Watermark) error {
		if !ruleEqual(r, rs[i]) || !wmEqual(wm, *wms[i]) {
			t.Errorf("ForEachRule after the upgrade: %+v %+v, want %+v %+v", r, wm, rs[i], *wms[i])
		}
		checkTimer(t, "upgraded", r)
		i++
		return nil
	}); err != nil || i != len(rs) {
		t.Fatalf("ForEachRule after the upgrade: %d rules, %v; want %d", i, err, len(rs))
	}
	// Reopened, nothing is left to rewrite and everything reads the same.
	s = reopen(t, s)
	for _, want := range rs {
		r, _, ok, err := s.Rule(want.ID)
		if err != nil || !ok || !ruleEqual(r, want) {
			t.Fatalf("Rule(%d) after reopen = %+v, %v, %v", want.ID, r, ok, err)
		}
		checkTimer(t, "reopened", r)
	}
}

// A rule value whose checksum holds but whose binary timer does not decode (written
// by a broken build) is an error naming the rule, never a different schedule; a sound
// form naming a time zone this build does not know reads as no timer, so that the
// caller's Parse reports the rule, as it would without the form.
func TestBadTimerForm(t *testing.T) {
	r := timerRules()[2] // a cron timer in Europe/Berlin
	tm, err := scheduler.Parse(r.TriggerRef, r.Params, r.ID)
	if err != nil {
		t.Fatal(err)
	}
	form, err := tm.AppendBinary(nil)
	if err != nil {
		t.Fatal(err)
	}
	// value is r's record with form in place of its timer's, sealed.
	value := func(form []byte) []byte {
		b := []byte{ruleV4}
		b = appendTime(b, r.UpdatedAt)
		b = appendString(b, r.Ref)
		b = appendString(b, r.TriggerRef)
		b = binary.AppendUvarint(b, uint64(len(form)))
		b = append(b, form...)
		return seal(append(b, r.Params...))
	}
	if got, err := decodeRule(r.ID, value(form)); err != nil || !got.Timer.Equal(tm) {
		t.Fatalf("decodeRule(the form of Parse) = %+v, %v", got, err)
	}
	bad := bytes.Clone(form)
	bad[2] = 99 // kind
	mars := *tm
	mars.Timezone = "Mars/Olympus"
	marsForm, err := mars.AppendBinary(nil)
	if err != nil {
		t.Fatal(err)
	}
	s := openTest(t, Options{NoSync: true})
	if err := s.PutRule(r, nil); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name string
		form []byte
		want string // in the error; "" for none
	}{
		{"bad kind", bad, "rule 3: corrupt"},
		{"truncated", form[:len(form)-2], "rule 3: corrupt"},
		{"unknown zone", marsForm, ""},
	} {
		if err := s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketRules).Put(idKey(r.ID), value(tt.form)) }); err != nil {
			t.Fatal(err)
		}
		got, _, _, err := s.Rule(r.ID)
		werr := s.ForEachRule(func(Rule, Watermark) error { return nil })
		switch {
		case tt.want == "" && (err != nil || werr != nil || got.Timer != nil || string(got.Params) != string(r.Params)):
			t.Errorf("%s: Rule = %+v, %v; ForEachRule: %v; want the rule without a timer", tt.name, got, err, werr)
		case tt.want != "" && (!errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), tt.want) ||
			!errors.Is(werr, ErrCorrupt) || !strings.Contains(werr.Error(), tt.want)):
			t.Errorf("%s: Rule: %v; ForEachRule: %v; want ErrCorrupt naming %q", tt.name, err, werr, tt.want)
		}
	}
}

// ForEachTimer decodes every timer into one scratch Timer: a scan of many rules
// allocates nothing per rule (a restart of a million rules, docs/benchmarks.md).
func TestForEachTimerAllocatesNoTimerPerRule(t *testing.T) {
	s := openTest(t, Options{NoSync: true})
	kinds := timerRules()[:6] // the valid ones
	const n = 600
	rs := make([]Rule, n)
	for i := range rs {
		rs[i] = kinds[i%len(kinds)]
		rs[i].ID = int64(i + 1)
	}
	if err := s.PutRules(rs, nil); err != nil {
		t.Fatal(err)
	}
	var first *scheduler.Timer
	count := func() {
		first = nil
		if err := s.ForEachTimer(func(r Rule, _ Watermark) error {
			switch {
			case r.Timer == nil:
				t.Fatalf("rule %d without a timer", r.ID)
			case first == nil:
				first = r.Timer
			case r.Timer != first:
				t.Fatalf("rule %d: timer %p, want the scratch %p", r.ID, r.Timer, first)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	if allocs := testing.AllocsPerRun(5, count); allocs >= n/10 {
		t.Errorf("ForEachTimer of %d rules: %.0f allocations, want fewer than %d", n, allocs, n/10)
	}
}
