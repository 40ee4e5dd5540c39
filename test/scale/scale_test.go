package main

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/timerd/timerd/ingest/apiserver"
)

func TestMixFiresWhatTwoCoresCarry(t *testing.T) {
	m := mix{Rules: 1_000_000, Probes: 1000, ProbeEvery: 5 * time.Second}
	c := m.counts()
	if c.Probes+c.Interval+c.Cron+c.Datetime != m.Rules || c.Interval < 690_000 || c.Cron < 190_000 || c.Datetime < 90_000 {
		t.Errorf("counts of 1,000,000 = %+v, want 1,000 probes then 7:2:1 interval, cron, datetime", c)
	}
	if r := m.firesPerSec(c); r > 500 || r < 200 {
		t.Errorf("1,000,000 rules fire %.0f/s, want 200 (the probes) to 500", r)
	}
}

// The rules file the run writes is what the API's bulk load takes: every line
// passes the POST's validation, ids follow the lines, the kinds are as counted.
func TestMixLoadsIntoTheAPI(t *testing.T) {
	m := mix{Rules: 3001, Probes: 100, ProbeEvery: 5 * time.Second, Seed: 7}
	var b bytes.Buffer
	got, err := m.write(&b, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if want := m.counts(); got != want {
		t.Errorf("write counted %+v, counts says %+v", got, want)
	}
	path := filepath.Join(t.TempDir(), "rules.jsonl")
	if err := os.WriteFile(path, b.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	srv, err := apiserver.New(apiserver.Config{DataDir: t.TempDir(), LoadRulesFile: path})
	if err != nil {
		t.Fatalf("the API refused the run's rules: %v", err)
	}
	defer srv.Close()
	ts := httptest.NewServer(srv.Handler())
	defer ts.Close()
	for _, tc := range []struct {
		query string
		id    int64
		total int
		want  string
	}{
		{"trigger_ref=core.intervaltimer&page_size=1", 1, got.Probes + got.Interval, `"misfire":"fire_all"`},
		{"trigger_ref=core.crontimer&page_size=1", 108, got.Cron, `"expression":"`},
		{"trigger_ref=core.datetimetimer&page_size=1", 110, got.Datetime, `"fire_at":"`},
	} {
		resp, err := http.Get(ts.URL + "/api/v1/rules?" + tc.query)
		if err != nil {
			t.Fatal(err)
		}
		var l struct {
			Items []struct {
				ID     int64           `json:"id"`
				Params json.RawMessage `json:"trigger_params"`
			} `json:"items"`
			Pagination struct {
				TotalItems int `json:"total_items"`
			} `json:"pagination"`
		}
		err = json.NewDecoder(resp.Body).Decode(&l)
		resp.Body.Close()
		if err != nil || len(l.Items) != 1 {
			t.Fatalf("GET rules?%s: %v, %+v", tc.query, err, l)
		}
		if l.Pagination.TotalItems != tc.total || l.Items[0].ID != tc.id || !strings.Contains(string(l.Items[0].Params), tc.want) {
			t.Errorf("rules?%s: %d in all, first id %d params %s; want %d, id %d, params with %s",
				tc.query, l.Pagination.TotalItems, l.Items[0].ID, l.Items[0].Params, tc.total, tc.id, tc.want)
		}
	}
}

func TestCheckSlotsFindsGapsAndRepeats(t *testing.T) {
	every := 5 * time.Second
	base := time.Date(2026, 12, 7, 0, 0, 0, 0, time.UTC)
	var evs []event
	add := func(rule int64, phase time.Duration, k int) {
		slot := base.Add(phase + time.Duration(k)*every)
		evs = append(evs, event{Rule: rule, Key: slot.String(), Slot: slot})
	}
	for k := range 10 {
		add(1, 300*time.Millisecond, k) // every slot
		if k != 4 {
			add(2, 1700*time.Millisecond, k) // one missing
		}
		add(3, 0, k) // one stored twice
		if k == 6 {
			add(3, 0, k)
		}
	}
	// (base+1s, base+46s]: slots k=1..9 of rules 1 and 3, k=0..8 of rule 2, 9 of rule 4.
	from, to := base.Add(time.Second), base.Add(9*every+time.Second)
	c := checkSlots(byRule(evs), []int64{1, 2, 3, 4}, every, from, to)
	if c.Slots != 4*9 || c.Missing != 1+9 || c.Twice != 1 || c.ok() {
		t.Errorf("checkSlots = %+v; want 36 slots, 10 missing (one of rule 2, the 9 of rule 4 without events), 1 twice", c)
	}
	if c := checkSlots(byRule(evs), []int64{1}, every, from, to); !c.ok() || c.Slots != 9 {
		t.Errorf("checkSlots of the whole rule = %+v, want 9 slots, ok", c)
	}
	if k, s := duplicates(evs); k != 1 || s != 0 {
		t.Errorf("duplicates = %d by key, %d by slot; want 1, 0", k, s)
	}
	evs = append(evs, event{Rule: 1, Key: "another key", Slot: base.Add(300 * time.Millisecond)})
	if k, s := duplicates(evs); k != 1 || s != 1 {
		t.Errorf("duplicates with a slot under a second key = %d, %d; want 1, 1", k, s)
	}
}

func TestBalanceAndMetrics(t *testing.T) {
	b := balanceOf(map[string]int{"n1": 90, "n2": 110, "n3": 100})
	if b.Min != 90 || b.Max != 110 || b.ideal() != 100 || !strings.Contains(b.String(), "max/ideal 1.10") {
		t.Errorf("balance = %+v (%s), want 90..110 around 100", b, b)
	}
	text := "# HELP x\ntimerd_fires_total 3\ntimerd_fires_total_other 100\nx{code=\"200\"} 2\nx{code=\"500\"} 5\n"
	if v := metricSum(text, "timerd_fires_total"); v != 3 {
		t.Errorf("metricSum fires = %v, want 3", v)
	}
	if v := metricSum(text, "x", `code="2`); v != 2 {
		t.Errorf("metricSum x 2xx = %v, want 2", v)
	}
}
