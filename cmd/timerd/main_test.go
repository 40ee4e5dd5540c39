package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// run runs the command line in-process; code is the exit status main
// would use.
func run(args ...string) (stdout string, code int, err error) {
	var out bytes.Buffer
	cmd := newRootCmd()
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs(args)
	err = cmd.ExecuteContext(context.Background())
	return out.String(), exitCode(err), err
}

func TestScheduleNext(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string // stdout
	}{
		{
			name: "cron across the spring-forward gap in Berlin",
			args: []string{"--trigger", "core.crontimer", "--params", `{"expression":"0 30 2 * * *","timezone":"Europe/Berlin"}`,
				"--from", "2026-03-28T00:00:00Z", "--count", "3"},
			// 02:30 does not exist on 2026-03-29: shifted by the gap to 03:30 CEST = 01:30Z.
			want: "2026-03-28T01:30:00Z\n2026-03-29T01:30:00Z\n2026-03-30T00:30:00Z\n",
		},
		{
			name: "interval pinned by start_at",
			args: []string{"--trigger", "core.intervaltimer", "--params", `{"interval":90,"unit":"minutes","start_at":"2026-01-01T00:00:00Z"}`,
				"--from", "2026-01-01T00:00:00Z", "--count", "2"},
			want: "2026-01-01T01:30:00Z\n2026-01-01T03:00:00Z\n",
		},
		{
			name: "datetime has one slot",
			args: []string{"--trigger", "core.datetimetimer", "--params", `{"fire_at":"2026-06-01T12:00:00+02:00"}`,
				"--from", "2026-01-01T00:00:00Z", "--count", "5"},
			want: "2026-06-01T10:00:00Z\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, code, err := run(append([]string{"schedule", "next"}, tt.args...)...)
			if code != 0 || got != tt.want {
				t.Errorf("schedule next %v = %q (exit %d, %v), want %q (exit 0)", tt.args, got, code, err, tt.want)
			}
		})
	}
}

func TestScheduleNextErrorsExit2(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		wantErr string
	}{
		{"negative interval", []string{"--trigger", "core.intervaltimer", "--params", `{"interval":-5}`}, "interval"},
		{"nine cron fields", []string{"--trigger", "core.crontimer", "--params", `{"expression":"* * * * * * * * *"}`}, "expression"},
		{"unknown zone", []string{"--trigger", "core.crontimer", "--params", `{"expression":"* * * * *","timezone":"Mars/Base"}`}, "timezone"},
		{"not a timer", []string{"--trigger", "core.webhook", "--params", `{}`}, "trigger"},
		{"bad from", []string{"--trigger", "core.intervaltimer", "--params", `{"interval":5}`, "--from", "yesterday"}, "--from"},
		{"missing trigger", []string{"--params", `{"interval":5}`}, "--trigger"},
		{"bad json", []string{"--trigger", "core.intervaltimer", "--params", `{"interval":`}, "trigger_params"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, code, err := run(append([]string{"schedule", "next"}, tt.args...)...)
			if code != 2 {
				t.Errorf("schedule next %v: exit %d, want 2", tt.args, code)
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("schedule next %v: error %v, want one naming %q", tt.args, err, tt.wantErr)
			}
			if strings.TrimSpace(out) != "" {
				t.Errorf("schedule next %v printed %q on stdout, want nothing", tt.args, out)
			}
		})
	}
}

// schedule next warns on standard error about what the schedule likely does not
// mean, and prints the slots all the same; --lint prints only the findings and
// exits 1 when there is one, 0 with "no findings".
func TestScheduleNextLint(t *testing.T) {
	runSplit := func(args ...string) (stdout, stderr string, code int) {
		var out, errOut bytes.Buffer
		cmd := newRootCmd()
		cmd.SetOut(&out)
		cmd.SetErr(&errOut)
		cmd.SetArgs(append([]string{"schedule", "next"}, args...))
		code = exitCode(cmd.ExecuteContext(context.Background()))
		return out.String(), errOut.String(), code
	}
	skip := []string{"--trigger", "core.crontimer", "--params", `{"expression":"0 30 2 * * *","timezone":"Europe/Berlin","dst_gap":"skip"}`,
		"--from", "2026-03-28T00:00:00Z", "--count", "2"}
	out, errOut, code := runSplit(skip...)
	if code != 0 || out != "2026-03-28T01:30:00Z\n2026-03-30T00:30:00Z\n" {
		t.Errorf("schedule next: %q (exit %d), want the two slots around the skipped day", out, code)
	}
	// The year ahead holds two springs.
	if !strings.HasPrefix(errOut, "warning: dst: 2026-03-29: Europe/Berlin moves its clocks from 02:00 to 03:00") ||
		!strings.Contains(errOut, "\nwarning: dst: 2027-03-28: ") || strings.Count(errOut, "\n") != 2 {
		t.Errorf("schedule next: stderr %q, want DST warnings for 2026-03-29 and 2027-03-28", errOut)
	}

	out, errOut, code = runSplit(append(skip, "--lint")...)
	if code != 1 || !strings.HasPrefix(out, "dst: 2026-03-29: ") || strings.Count(out, "\n") != 2 || errOut != "" {
		t.Errorf("schedule next --lint: %q, stderr %q (exit %d), want two DST findings and exit 1", out, errOut, code)
	}
	out, _, code = runSplit("--lint", "--trigger", "core.crontimer", "--params", `{"expression":"* 5 * * * *"}`)
	if code != 1 || !strings.Contains(out, `too_often: "* 5 * * * *" fires every second of minute 5`) {
		t.Errorf("schedule next --lint of every second of minute 5: %q (exit %d)", out, code)
	}
	out, _, code = runSplit("--lint", "--trigger", "core.crontimer", "--params", `{"expression":"0 0 12 * * *","timezone":"Europe/Berlin"}`)
	if code != 0 || out != "no findings\n" {
		t.Errorf("schedule next --lint of a noon cron: %q (exit %d), want no findings and exit 0", out, code)
	}
}
