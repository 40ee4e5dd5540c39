package protocol

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"testing"
	"time"
)

func TestSnapshotChanges(t *testing.T) {
	r1, r2 := interval(1, `{"interval":5}`), interval(2, `{"interval":7}`)
	updated := ago(time.Hour)
	tests := []struct {
		name string
		s    Snapshot
		want []time.Time // the version of each change
	}{
		{name: "the listing's versions",
			s:    Snapshot{Rules: []Listed{{r1, updated}, {r2, ago(2 * time.Hour)}}, Started: now},
			want: []time.Time{updated, ago(2 * time.Hour)}},
		{name: "a rule without a version is as old as the listing's start",
			s:    Snapshot{Rules: []Listed{{r1, updated}, {Rule: r2}}, Started: now},
			want: []time.Time{updated, now}},
		{name: "the start-up set is older than anything held",
			s:    Snapshot{Rules: []Listed{{Rule: r1}, {r2, updated}}},
			want: []time.Time{StartupVersion, updated}},
		{name: "nothing listed", s: Snapshot{Started: now}},
	}
	for _, tt := range tests {
		got := tt.s.Changes()
		if len(got) != len(tt.want) {
			t.Fatalf("%s: %d changes, want %d", tt.name, len(got), len(tt.want))
		}
		for i, c := range got {
			if !c.Enabled || c.Rule.ID != tt.s.Rules[i].Rule.ID || !c.Version.Equal(tt.want[i]) {
				t.Errorf("%s: change %d = %+v, want rule %d enabled at %v", tt.name, i, c, tt.s.Rules[i].Rule.ID, tt.want[i])
			}
		}
	}
	// The start-up set's version loses to anything held: it changes nothing
	// a node has seen.
	held := live(r1, ago(time.Hour), wm(ago(time.Second), 1))
	c := Snapshot{Rules: []Listed{{Rule: interval(1, `{"interval":9}`)}}}.Changes()[0]
	if d := (Book{}).Apply(held, c, now); d.Result != Stale {
		t.Errorf("start-up change of a held rule: %s, want stale", d.Result)
	}
}

func TestPruneSnapshot(t *testing.T) {
	old := ago(time.Hour) // older than any listing here
	rec := func(id int64) Record { return live(interval(id, `{"interval":5}`), old, wm(ago(time.Second), 1)) }
	gone := Answer{}
	enabled := func(id int64) Answer { return Answer{Found: true, Enabled: true, Rule: interval(id, `{"interval":5}`)} }
	failed := Answer{Err: errors.New("503")}
	tests := []struct {
		name    string
		s       Snapshot
		held    map[int64]Record
		answers map[int64]Answer // by the rule asked; gone when absent
		max     int
		readErr int64 // record fails for this id

		pruned     []int64
		asked      []int64
		refused    map[string]int
		kept       []string // Kept reasons, in order
		incomplete string
		wantErr    bool
	}{
		{name: "complete listing: rules it lacks are re-checked and pruned",
			s:      Snapshot{Rules: []Listed{{Rule: interval(2, `{}`)}}, Started: now},
			held:   map[int64]Record{1: rec(1), 2: rec(2), 3: rec(3)},
			pruned: []int64{1, 3}, asked: []int64{1, 3}},
		{name: "the start-up set prunes nothing",
			s:    Snapshot{Rules: []Listed{{Rule: interval(2, `{}`)}}},
			held: map[int64]Record{1: rec(1), 2: rec(2)}},
		{name: "incomplete listing prunes nothing, counted once by its reason",
			s:       Snapshot{Started: now, Incomplete: "count_mismatch"},
			held:    map[int64]Record{1: rec(1), 2: rec(2), 3: rec(3)},
			refused: map[string]int{"count_mismatch": 1}, incomplete: "count_mismatch"},
		{name: "incomplete listing that lacks nothing counts nothing",
			s:    Snapshot{Rules: []Listed{{Rule: interval(1, `{}`)}}, Started: now, Incomplete: "no_totals"},
			held: map[int64]Record{1: rec(1)}},
		{name: "a rule changed after the listing began is neither re-checked nor pruned",
			s:      Snapshot{Started: now},
			held:   map[int64]Record{1: live(interval(1, `{}`), now.Add(time.Second), wm(now, 0)), 2: rec(2)},
			pruned: []int64{2}, asked: []int64{2},
			refused: map[string]int{RefusedChanged: 1}},
		{name: "a rule changed within the skew of the listing's start is not pruned",
			s:       Snapshot{Started: now},
			held:    map[int64]Record{1: live(interval(1, `{}`), ago(30*time.Second), wm(now, 0))},
			refused: map[string]int{RefusedChanged: 1}},
		{name: "a rule the re-check finds enabled is not pruned",
			s:       Snapshot{Started: now},
			held:    map[int64]Record{1: rec(1), 2: rec(2)},
			answers: map[int64]Answer{1: enabled(1)},
			pruned:  []int64{2}, asked: []int64{1, 2},
			refused: map[string]int{RefusedStillEnabled: 1}, kept: []string{RefusedStillEnabled}},
		{name: "disabled, another rule under the ref, another trigger: pruned",
			s:    Snapshot{Started: now},
			held: map[int64]Record{1: rec(1), 2: rec(2), 3: rec(3)},
			answers: map[int64]Answer{
				1: {Found: true, Enabled: false, Rule: interval(1, `{}`)},
				2: enabled(9),
				3: {Found: true, Enabled: true, Rule: Rule{ID: 3, Ref: "r3", TriggerRef: "core.crontimer"}},
			},
			pruned: []int64{1, 2, 3}, asked: []int64{1, 2, 3}},
		{name: "re-check budget: the rest are deferred",
			s:      Snapshot{Started: now},
			held:   map[int64]Record{4: rec(4), 1: rec(1), 3: rec(3), 2: rec(2)},
			max:    2,
			pruned: []int64{1, 2}, asked: []int64{1, 2},
			refused: map[string]int{RefusedDeferred: 2}},
		{name: "rules kept by the re-check use the budget too",
			s:       Snapshot{Started: now},
			held:    map[int64]Record{1: rec(1), 2: rec(2), 3: rec(3)},
			answers: map[int64]Answer{1: enabled(1)},
			max:     2,
			pruned:  []int64{2}, asked: []int64{1, 2},
			refused: map[string]int{RefusedStillEnabled: 1, RefusedDeferred: 1}, kept: []string{RefusedStillEnabled}},
		{name: "a failed re-check stops the others",
			s:       Snapshot{Started: now},
			held:    map[int64]Record{1: rec(1), 2: rec(2), 3: rec(3)},
			answers: map[int64]Answer{2: failed},
			pruned:  []int64{1}, asked: []int64{1, 2},
			refused: map[string]int{RefusedRecheck: 1, RefusedDeferred: 1}, kept: []string{RefusedRecheck}},
		{name: "a rule changed since the listing is counted even after a failed re-check",
			s: Snapshot{Started: now},
			held: map[int64]Record{1: rec(1), 2: live(interval(2, `{}`), now, wm(now, 0)),
				3: rec(3)},
			answers: map[int64]Answer{1: failed},
			asked:   []int64{1},
			refused: map[string]int{RefusedRecheck: 1, RefusedChanged: 1, RefusedDeferred: 1}, kept: []string{RefusedRecheck}},
		{name: "a failed read ends it with what was decided",
			s:       Snapshot{Started: now},
			held:    map[int64]Record{1: rec(1), 2: rec(2), 3: rec(3)},
			answers: map[int64]Answer{1: enabled(1)},
			readErr: 2,
			asked:   []int64{1},
			refused: map[string]int{RefusedStillEnabled: 1}, kept: []string{RefusedStillEnabled}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var asked []int64
			record := func(id int64) (Record, error) {
				if id == tt.readErr {
					return Record{}, fmt.Errorf("rule %d: store down", id)
				}
				return tt.held[id], nil
			}
			recheck := func(r Rule) Answer {
				asked = append(asked, r.ID)
				if a, ok := tt.answers[r.ID]; ok {
					return a
				}
				return gone
			}
			ids := slices.Collect(maps.Keys(tt.held))
			p, err := Book{MaxRechecks: tt.max}.PruneSnapshot(tt.s, ids, record, recheck)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, want error %v", err, tt.wantErr)
			}
			var pruned []int64
			for _, pr := range p.Prunes {
				pruned = append(pruned, pr.ID)
				want := tombstone(tt.s.Started.Add(-SkewAllowance))
				if pr.Decision.Result != Applied || !pr.Decision.Write || !sameRecord(pr.Decision.Record, want) {
					t.Errorf("rule %d: decision %+v, want a tombstone %+v", pr.ID, pr.Decision, want)
				}
			}
			if !slices.Equal(pruned, tt.pruned) {
				t.Errorf("pruned %v, want %v", pruned, tt.pruned)
			}
			if !slices.Equal(asked, tt.asked) {
				t.Errorf("re-checked %v, want %v", asked, tt.asked)
			}
			if tt.refused == nil {
				tt.refused = map[string]int{}
			}
			if !maps.Equal(p.Refused, tt.refused) {
				t.Errorf("refused %v, want %v", p.Refused, tt.refused)
			}
			var kept []string
			for _, k := range p.Kept {
				kept = append(kept, k.Reason)
				if (k.Err != nil) != (k.Reason == RefusedRecheck) {
					t.Errorf("kept rule %d for %s with error %v", k.Rule.ID, k.Reason, k.Err)
				}
			}
			if !slices.Equal(kept, tt.kept) {
				t.Errorf("kept for %v, want %v", kept, tt.kept)
			}
			if p.Incomplete != tt.incomplete {
				t.Errorf("incomplete %q, want %q", p.Incomplete, tt.incomplete)
			}
			if tt.incomplete != "" && p.NotListed != len(tt.held)-len(tt.s.Rules) {
				t.Errorf("not listed %d, want %d", p.NotListed, len(tt.held)-len(tt.s.Rules))
			}
		})
	}
}

// The default budget is DefaultMaxRechecks a snapshot.
func TestPruneSnapshotDefaultBudget(t *testing.T) {
	held := make([]int64, DefaultMaxRechecks+3)
	for i := range held {
		held[i] = int64(i + 1)
	}
	asked := 0
	p, err := Book{}.PruneSnapshot(Snapshot{Started: now}, held,
		func(id int64) (Record, error) {
			return live(interval(id, `{"interval":5}`), ago(time.Hour), wm(ago(time.Second), 1)), nil
		},
		func(Rule) Answer { asked++; return Answer{} })
	if err != nil {
		t.Fatal(err)
	}
	if asked != DefaultMaxRechecks || len(p.Prunes) != DefaultMaxRechecks || p.Refused[RefusedDeferred] != 3 {
		t.Errorf("asked %d, pruned %d, deferred %d; want %d, %d, 3", asked, len(p.Prunes), p.Refused[RefusedDeferred],
			DefaultMaxRechecks, DefaultMaxRechecks)
	}
}
