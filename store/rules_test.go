package store

import (
	"encoding/json"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestRuleRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		rule Rule
		wm   *Watermark
	}{
		{"full", testRule(7), &Watermark{Slot: t0, Count: 42}},
		{"no watermark", testRule(8), nil},
		{"zero times and empty fields", Rule{ID: 9}, &Watermark{}},
		{"epoch watermark", testRule(10), &Watermark{Slot: time.Unix(0, 0), Count: 1}},
		{"unicode and long params", Rule{
			ID: 1<<62 + 3, Ref: "päck.règle ✓", TriggerRef: "core.crontimer",
			Params:    json.RawMessage(`{"expression":"0 0 * * * *","timezone":"Europe/Paris","pad":"` + strings.Repeat("x", 5000) + `"}`),
			UpdatedAt: time.Date(2262, 1, 1, 0, 0, 0, 0, time.UTC),
		}, &Watermark{Slot: time.Date(1700, 1, 1, 0, 0, 0, 0, time.UTC), Count: 1 << 63}},
	}
	s := openTest(t, Options{NoSync: true})
	for _, tc := range tests {
		if err := s.PutRule(tc.rule, tc.wm); err != nil {
			t.Fatalf("%s: PutRule(%d): %v", tc.name, tc.rule.ID, err)
		}
	}
	for pass := range 2 {
		st := s
		if pass == 1 {
			st = reopen(t, s)
		}
		for _, tc := range tests {
			r, wm, ok, err := st.Rule(tc.rule.ID)
			if err != nil || !ok {
				t.Fatalf("pass %d %s: Rule(%d) = ok %v, err %v; want found", pass, tc.name, tc.rule.ID, ok, err)
			}
			if !ruleEqual(r, tc.rule) {
				t.Errorf("pass %d %s: Rule(%d) = %+v, want %+v", pass, tc.name, tc.rule.ID, r, tc.rule)
			}
			want := Watermark{}
			if tc.wm != nil {
				want = *tc.wm
			}
			if !wmEqual(wm, want) {
				t.Errorf("pass %d %s: Rule(%d) watermark = %+v, want %+v", pass, tc.name, tc.rule.ID, wm, want)
			}
		}
	}
}

func TestPutRuleUpsertKeepsWatermark(t *testing.T) {
	s := openTest(t, Options{NoSync: true})
	r := testRule(1)
	wm := Watermark{Slot: t0, Count: 3}
	if err := s.PutRule(r, &wm); err != nil {
		t.Fatal(err)
	}
	r.Ref, r.Params = "renamed", json.RawMessage(`{"unit":"minutes","delta":5}`)
	if err := s.PutRule(r, nil); err != nil {
		t.Fatal(err)
	}
	got, gotWM, ok, err := s.Rule(1)
	if err != nil || !ok || !ruleEqual(got, r) || !wmEqual(gotWM, wm) {
		t.Errorf("Rule(1) after upsert with nil wm = %+v %+v %v %v; want %+v %+v", got, gotWM, ok, err, r, wm)
	}
	if n, err := s.RuleCount(); err != nil || n != 1 {
		t.Errorf("RuleCount() = %d, %v; want 1", n, err)
	}
}

func TestPutRulesInvalidWritesNothing(t *testing.T) {
	tests := []struct {
		name string
		rs   []Rule
		wms  []*Watermark
		want string
	}{
		{"zero id", []Rule{testRule(1), {ID: 0}}, nil, "id 0"},
		{"negative id", []Rule{{ID: -5}}, nil, "id -5"},
		{"bad params", []Rule{testRule(1), {ID: 2, Params: json.RawMessage(`{"a":`)}}, nil, "not valid JSON"},
		{"watermark count mismatch", []Rule{testRule(1), testRule(2)}, []*Watermark{nil}, "1 watermarks for 2 rules"},
		{"time out of range", []Rule{{ID: 3, UpdatedAt: time.Date(3000, 1, 1, 0, 0, 0, 0, time.UTC)}}, nil, "1678"},
	}
	s := openTest(t, Options{NoSync: true})
	for _, tc := range tests {
		err := s.PutRules(tc.rs, tc.wms)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), s.Path()) {
			t.Errorf("%s: PutRules err = %v, want one containing %q and the path", tc.name, err, tc.want)
		}
		if n, _ := s.RuleCount(); n != 0 {
			t.Errorf("%s: RuleCount() after failed PutRules = %d, want 0", tc.name, n)
		}
	}
}

func TestPutRulesDuplicateLaterWins(t *testing.T) {
	s := openTest(t, Options{NoSync: true})
	a, b := testRule(5), testRule(5)
	b.Ref = "later"
	if err := s.PutRules([]Rule{testRule(9), a, b, testRule(1)}, []*Watermark{nil, {Count: 1}, {Count: 2}, nil}); err != nil {
		t.Fatal(err)
	}
	r, wm, _, err := s.Rule(5)
	if err != nil || r.Ref != "later" || wm.Count != 2 {
		t.Errorf("Rule(5) = %q count %d err %v; want ref %q count 2", r.Ref, wm.Count, err, "later")
	}
}

func TestDeleteRule(t *testing.T) {
	s := openTest(t, Options{NoSync: true})
	if err := s.PutRule(testRule(1), &Watermark{Slot: t0, Count: 1}); err != nil {
		t.Fatal(err)
	}
	if err := s.CommitFires([]FireRecord{testFire(1, t0.Add(time.Minute), 2)}); err != nil {
		t.Fatal(err)
	}
	for i := range 2 { // the second time the rule is absent: still no error
		if err := s.DeleteRule(1); err != nil {
			t.Fatalf("DeleteRule(1) #%d: %v", i, err)
		}
	}
	if _, _, ok, err := s.Rule(1); ok || err != nil {
		t.Errorf("Rule(1) after delete: ok %v err %v; want absent", ok, err)
	}
	// A rule put again under the same id starts without the old watermark.
	if err := s.PutRule(testRule(1), nil); err != nil {
		t.Fatal(err)
	}
	if _, wm, _, _ := s.Rule(1); !wmEqual(wm, Watermark{}) {
		t.Errorf("watermark of re-created rule 1 = %+v, want zero", wm)
	}
	if n, _ := s.OutboxLen(); n != 1 {
		t.Errorf("OutboxLen() after DeleteRule = %d, want 1 (fired events stay)", n)
	}
}

func TestForEachRule(t *testing.T) {
	s := openTest(t, Options{NoSync: true})
	// Ids out of order, every third rule without a watermark, and an orphan
	// watermark-free rule at the end.
	ids := []int64{50, 3, 1 << 40, 7, 1, 99}
	var rs []Rule
	var wms []*Watermark
	for _, id := range ids {
		rs = append(rs, testRule(id))
		if id%3 == 0 {
			wms = append(wms, nil)
		} else {
			wms = append(wms, &Watermark{Slot: t0.Add(time.Duration(id)), Count: uint64(id)})
		}
	}
	if err := s.PutRules(rs, wms); err != nil {
		t.Fatal(err)
	}
	var got []int64
	err := s.ForEachRule(func(r Rule, wm Watermark) error {
		got = append(got, r.ID)
		if !ruleEqual(r, testRule(r.ID)) {
			t.Errorf("ForEachRule rule %d = %+v, want %+v", r.ID, r, testRule(r.ID))
		}
		want := Watermark{}
		if r.ID%3 != 0 {
			want = Watermark{Slot: t0.Add(time.Duration(r.ID)), Count: uint64(r.ID)}
		}
		if !wmEqual(wm, want) {
			t.Errorf("ForEachRule rule %d watermark = %+v, want %+v", r.ID, wm, want)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []int64{1, 3, 7, 50, 99, 1 << 40}
	if len(got) != len(want) {
		t.Fatalf("ForEachRule ids = %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("ForEachRule ids = %v, want %v", got, want)
		}
	}
}

func TestForEachRuleCallbackErrorAndPanic(t *testing.T) {
	s := openTest(t, Options{NoSync: true})
	if err := s.PutRules([]Rule{testRule(1), testRule(2), testRule(3)}, nil); err != nil {
		t.Fatal(err)
	}
	stop := errors.New("stop")
	calls := 0
	err := s.ForEachRule(func(Rule, Watermark) error { calls++; return stop })
	if err != stop || calls != 1 { //nolint:errorlint // the fn's very error, unwrapped
		t.Errorf("ForEachRule with fn error: err %v after %d calls; want the fn's own error after 1", err, calls)
	}

	func() {
		defer func() {
			if r := recover(); r != "boom" {
				t.Errorf("ForEachRule with panicking fn: recovered %v, want the fn's panic %q", r, "boom")
			}
		}()
		_ = s.ForEachRule(func(Rule, Watermark) error { panic("boom") })
	}()
	// The read transaction was rolled back: writes still work.
	if err := s.PutRule(testRule(4), nil); err != nil {
		t.Errorf("PutRule after a panicking ForEachRule: %v", err)
	}
}

func TestForEachRule100k(t *testing.T) {
	const n = 100_000
	s := openTest(t, Options{NoSync: true})
	rs := make([]Rule, n)
	wms := make([]*Watermark, n)
	for i := range rs {
		rs[i] = testRule(int64(n - i)) // descending: PutRules sorts
		wms[i] = &Watermark{Slot: t0, Count: uint64(n - i)}
	}
	if err := s.PutRules(rs, wms); err != nil {
		t.Fatal(err)
	}
	s = reopen(t, s)
	next := int64(1)
	err := s.ForEachRule(func(r Rule, wm Watermark) error {
		if r.ID != next || wm.Count != uint64(r.ID) || r.Ref != testRule(r.ID).Ref {
			t.Fatalf("ForEachRule: got rule %d (%q) count %d, want rule %d with count %d", r.ID, r.Ref, wm.Count, next, next)
		}
		next++
		return nil
	})
	if err != nil || next != n+1 {
		t.Fatalf("ForEachRule visited %d rules, err %v; want %d", next-1, err, n)
	}
	if c, err := s.RuleCount(); err != nil || c != n {
		t.Errorf("RuleCount() = %d, %v; want %d", c, err, n)
	}
}

// RuleCount is a counter kept by the writers; it must agree with a scan
// after inserts, overwrites, deletes of present and absent rules, and a reopen.
func TestRuleCountFollowsWrites(t *testing.T) {
	p := filepath.Join(t.TempDir(), "node.db")
	s, err := Open(p, Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	put := func(ids ...int64) {
		var rs []Rule
		for _, id := range ids {
			rs = append(rs, Rule{ID: id, TriggerRef: "core.intervaltimer", Params: []byte(`{"interval":1}`)})
		}
		if err := s.PutRules(rs, nil); err != nil {
			t.Fatal(err)
		}
	}
	check := func(s *Store, want int) {
		t.Helper()
		scanned := 0
		if err := s.ForEachRule(func(Rule, Watermark) error { scanned++; return nil }); err != nil {
			t.Fatal(err)
		}
		if got, _ := s.RuleCount(); got != want || scanned != want {
			t.Errorf("RuleCount = %d, scan = %d, want %d", got, scanned, want)
		}
	}
	put(1, 2, 3)
	check(s, 3)
	put(2, 3, 4, 4) // two overwrites, one new id given twice
	check(s, 4)
	for _, id := range []int64{2, 2, 99} { // a repeat and an absent id change nothing
		if err := s.DeleteRule(id); err != nil {
			t.Fatal(err)
		}
	}
	check(s, 3)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2, err := Open(p, Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	check(s2, 3)
}
