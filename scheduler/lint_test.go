package scheduler

import (
	"runtime"
	"strings"
	"testing"
	"time"
)

// Europe/Berlin changes its clocks on 2027-03-28 (02:00 → 03:00) and 2027-10-31
// (03:00 → 02:00); from 2027-01-01 the year ahead holds both and those of 2028
// up to the first of January.
var lintFrom = time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)

func TestLintDST(t *testing.T) {
	cases := []struct {
		name, params string
		want         []string // the dates with a finding, in order
		fires        []string // a fragment of each finding's message
	}{
		{"02:30 skipped in spring", `{"expression":"0 30 2 * * *","timezone":"Europe/Berlin","dst_gap":"skip"}`,
			[]string{"2027-03-28"}, []string{"fires 0 times"}},
		{"02:30 shifted in spring: once, later", `{"expression":"0 30 2 * * *","timezone":"Europe/Berlin"}`, nil, nil},
		{"02:30 twice in autumn", `{"expression":"0 30 2 * * *","timezone":"Europe/Berlin","dst_overlap":"twice"}`,
			[]string{"2027-10-31"}, []string{"fires 2 times"}},
		{"02:30 once in autumn", `{"expression":"0 30 2 * * *","timezone":"Europe/Berlin"}`, nil, nil},
		{"hourly: the shifted 02:00 meets 03:00; the repeated 02:00 fires once", `{"expression":"0 0 * * * *","timezone":"Europe/Berlin"}`,
			[]string{"2027-03-28"}, []string{"fires 6 times from 23:00 to 06:00 local time"}},
		{"hourly, twice in autumn", `{"expression":"0 0 * * * *","timezone":"Europe/Berlin","dst_overlap":"twice"}`,
			[]string{"2027-03-28", "2027-10-31"}, []string{"without the change fires 7 (", "02:00:00 +02:00, 02:00:00 +01:00"}},
		{"noon is far from the changes", `{"expression":"0 0 12 * * *","timezone":"Europe/Berlin","dst_gap":"skip","dst_overlap":"twice"}`, nil, nil},
		{"UTC has no changes", `{"expression":"0 30 2 * * *","dst_gap":"skip"}`, nil, nil},
		{"every second changes by design: not counted", `{"expression":"* * * * * *","timezone":"Europe/Berlin","dst_gap":"skip"}`, nil, nil},
		{"New York skips 02:30 on its own day", `{"expression":"30 2 * * *","timezone":"America/New_York","dst_gap":"skip"}`,
			[]string{"2027-03-14"}, []string{"fires 0 times"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			fs := Lint(mustParse(t, "core.crontimer", c.params, 7), lintFrom)
			var got []string
			for _, f := range fs {
				if f.Kind != FindingDST {
					t.Errorf("unexpected finding %s: %s", f.Kind, f.Message)
					continue
				}
				got = append(got, f.Message[:len("2006-01-02")])
			}
			if strings.Join(got, ",") != strings.Join(c.want, ",") {
				t.Fatalf("DST findings on %v, want %v:\n%v", got, c.want, fs)
			}
			for i, frag := range c.fires {
				if !strings.Contains(fs[i].Message, frag) {
					t.Errorf("finding %d: %q lacks %q", i, fs[i].Message, frag)
				}
			}
		})
	}
}

func TestLintDSTMessage(t *testing.T) {
	fs := Lint(mustParse(t, "core.crontimer", `{"expression":"0 30 2 * * *","timezone":"Europe/Berlin","dst_gap":"skip"}`, 7), lintFrom)
	if len(fs) != 1 {
		t.Fatalf("findings %v, want one", fs)
	}
	want := "2027-03-28: Europe/Berlin moves its clocks from 02:00 to 03:00 (+01:00 → +02:00); the schedule fires 0 times " +
		"from 23:00 to 06:00 local time (none), where a day without the change fires 1 (02:30:00 +01:00); dst_gap is skip, dst_overlap is once"
	if fs[0].Message != want {
		t.Errorf("message\n got %s\nwant %s", fs[0].Message, want)
	}
	if want := time.Date(2027, 3, 28, 1, 0, 0, 0, time.UTC); !fs[0].At.Equal(want) {
		t.Errorf("At = %s, want %s", fs[0].At, want)
	}
}

func TestLintNeverFires(t *testing.T) {
	cases := []struct{ ref, params, want string }{
		{"core.datetimetimer", `{"fire_at":"2026-06-01T00:00:00Z"}`, `fire_at 2026-06-01T00:00:00Z is past`},
		{"core.crontimer", `{"expression":"0 0 0 1 1 * 2020"}`, `the expression "0 0 0 1 1 * 2020" matches no time`},
	}
	for _, c := range cases {
		fs := Lint(mustParse(t, c.ref, c.params, 7), lintFrom)
		if len(fs) != 1 || fs[0].Kind != FindingNeverFires || !strings.Contains(fs[0].Message, c.want) ||
			!strings.Contains(fs[0].Message, "never fires after 2027-01-01T00:00:00Z") {
			t.Errorf("%s %s: findings %v, want one never_fires naming %q", c.ref, c.params, fs, c.want)
		}
	}
	for _, p := range []string{`{"interval":5}`} {
		if fs := Lint(mustParse(t, "core.intervaltimer", p, 7), lintFrom); len(fs) != 0 {
			t.Errorf("interval %s: findings %v, want none", p, fs)
		}
	}
	if fs := Lint(mustParse(t, "core.datetimetimer", `{"fire_at":"2027-06-01T00:00:00Z"}`, 7), lintFrom); len(fs) != 0 {
		t.Errorf("a datetime to come: findings %v, want none", fs)
	}
}

func TestLintFrequency(t *testing.T) {
	cases := []struct{ expr, want string }{
		{"* 5 * * * *", `"* 5 * * * *" fires every second of minute 5 (60 times in a row), as its second field is *; to fire once then, write "0 5 * * * *"`},
		{"* * 5 * * *", `"* * 5 * * *" fires every second of hour 5 (3,600 times in a row), as its second field is *; to fire once then, write "0 0 5 * * *"`},
		{"0 * 5 * * *", `"0 * 5 * * *" fires every minute of hour 5 (60 times in a row), as its minute field is *; to fire once then, write "0 0 5 * * *"`},
		{"* 5 * * *", `"* 5 * * *" fires every minute of hour 5 (60 times in a row), as its minute field is *; to fire once then, write "0 5 * * *"`},
		{"* */15 5 * * *", `"* */15 5 * * *" fires every second of hour 5, as its second field is *; to fire once then, write "0 */15 5 * * *"`},
		{"* 5 * * * * 2030", `"* 5 * * * * 2030" fires every second of minute 5 (60 times in a row), as its second field is *; to fire once then, write "0 5 * * * * 2030"`},
		// What its author meant, most likely.
		{"* * * * * *", ""},
		{"*/10 5 * * * *", ""},
		{"0 5 * * * *", ""},
		{"0 0 5 * * *", ""},
		{"*/5 * * * *", ""},
		{"0 9-17 * * *", ""},
		{"@hourly", ""},
		{"@every 5m", ""},
	}
	for _, c := range cases {
		t.Run(c.expr, func(t *testing.T) {
			tm := mustParse(t, "core.crontimer", `{"expression":"`+c.expr+`"}`, 7)
			var got []string
			for _, f := range Lint(tm, lintFrom) {
				if f.Kind == FindingTooOften {
					got = append(got, f.Message)
				}
			}
			switch {
			case c.want == "" && len(got) != 0:
				t.Errorf("findings %q, want none", got)
			case c.want != "" && (len(got) != 1 || got[0] != c.want):
				t.Errorf("findings %q\nwant %q", got, c.want)
			}
		})
	}
}

// Lint runs on every create: bounded however often the schedule fires. A
// per-second cron lists at most maxDSTFires slots a window (64 KB, BenchmarkLint);
// one that listed the whole window would hold 21,600 slots a change (about 1 MB).
func TestLintCost(t *testing.T) {
	tm := mustParse(t, "core.crontimer", `{"expression":"* * * * * *","timezone":"Europe/Berlin","dst_overlap":"twice"}`, 7)
	Lint(tm, lintFrom) // compile and cache first
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for range 5 {
		Lint(tm, lintFrom)
	}
	runtime.ReadMemStats(&after)
	if per := (after.TotalAlloc - before.TotalAlloc) / 5; per > 256<<10 {
		t.Errorf("Lint of a per-second cron allocates %d bytes, want the bounded ~64 KB", per)
	}
}

func BenchmarkLint(b *testing.B) {
	for _, expr := range []string{"0 30 2 * * *", "0 */5 * * * *", "* * * * * *"} {
		tm, err := Parse("core.crontimer", []byte(`{"expression":"`+expr+`","timezone":"Europe/Berlin"}`), 1)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(expr, func(b *testing.B) {
			for b.Loop() {
				Lint(tm, lintFrom)
			}
		})
	}
}
