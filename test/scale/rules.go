package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"time"
)

// mix is the rule book of a run: probes first (ids 1..Probes, short interval
// rules whose every slot the run checks), then the bulk: interval rules of 1 h
// to 24 h, daily cron rules at a random minute and one-shots days ahead, so
// that a million of them fire what two cores carry.
type mix struct {
	Rules      int           // in all, probes included
	Probes     int           // interval rules of ProbeEvery, misfire fire_all
	ProbeEvery time.Duration // whole seconds
	Seed       uint64
}

// Shares of the bulk (the rules after the probes), in tenths: 7 interval, 2 cron, 1 datetime.
const (
	intervalTenths = 7
	cronTenths     = 2
)

// kindCounts is how many bulk rules of each kind a mix has.
type kindCounts struct{ Probes, Interval, Cron, Datetime int }

// line is the POST body of rule i (0-based) of m, as of now.
func (m mix) line(rng *rand.Rand, i int, now time.Time) (kind string, body map[string]any) {
	ref := fmt.Sprintf("scale.%07d", i)
	if i < m.Probes {
		return "probe", map[string]any{"ref": ref, "trigger_ref": "core.intervaltimer",
			"trigger_params": map[string]any{"interval": int(m.ProbeEvery / time.Second), "misfire": "fire_all"}}
	}
	switch b := (i - m.Probes) % 10; {
	case b < intervalTenths:
		return "interval", map[string]any{"ref": ref, "trigger_ref": "core.intervaltimer",
			"trigger_params": map[string]any{"interval": 60 + rng.IntN(23*60+1), "unit": "minutes"}}
	case b < intervalTenths+cronTenths:
		return "cron", map[string]any{"ref": ref, "trigger_ref": "core.crontimer",
			"trigger_params": map[string]any{"expression": fmt.Sprintf("%d %d * * *", rng.IntN(60), rng.IntN(24))}}
	default:
		at := now.Add(24*time.Hour + time.Duration(rng.Int64N(int64(29*24*time.Hour)))).Truncate(time.Second)
		return "datetime", map[string]any{"ref": ref, "trigger_ref": "core.datetimetimer",
			"trigger_params": map[string]any{"fire_at": at.UTC().Format(time.RFC3339)}}
	}
}

// write writes m's rules to w, one POST body a line (timerd api --load-rules).
func (m mix) write(w io.Writer, now time.Time) (kindCounts, error) {
	rng := rand.New(rand.NewPCG(m.Seed, 15))
	bw := bufio.NewWriterSize(w, 1<<20)
	var c kindCounts
	for i := range m.Rules {
		kind, body := m.line(rng, i, now)
		switch kind {
		case "probe":
			c.Probes++
		case "interval":
			c.Interval++
		case "cron":
			c.Cron++
		default:
			c.Datetime++
		}
		b, err := json.Marshal(body)
		if err != nil {
			return c, err
		}
		if _, err := bw.Write(append(b, '\n')); err != nil {
			return c, fmt.Errorf("write rules: %w", err)
		}
	}
	if err := bw.Flush(); err != nil {
		return c, fmt.Errorf("write rules: %w", err)
	}
	return c, nil
}

// counts is how many rules of each kind m has (what write writes).
func (m mix) counts() kindCounts {
	c := kindCounts{Probes: min(m.Probes, m.Rules)}
	bulk := m.Rules - c.Probes
	for b := range 10 {
		n := bulk / 10
		if b < bulk%10 {
			n++
		}
		switch {
		case b < intervalTenths:
			c.Interval += n
		case b < intervalTenths+cronTenths:
			c.Cron += n
		default:
			c.Datetime += n
		}
	}
	return c
}

// firesPerSec is the mean fire rate of m over a day: the probes', the bulk
// interval rules' (1/interval each, intervals uniform in 60..1440 minutes),
// and one a day for each cron rule; the one-shots are days ahead.
func (m mix) firesPerSec(c kindCounts) float64 {
	r := float64(c.Probes) / m.ProbeEvery.Seconds()
	var inv float64 // mean of 1/interval over 60..1440 minutes
	for min := 60; min <= 24*60; min++ {
		inv += 1 / float64(min*60)
	}
	inv /= float64(24*60 - 60 + 1)
	r += float64(c.Interval) * inv
	r += float64(c.Cron) / 86400
	return r
}
