package main

import (
	"bufio"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
)

// samples is one scrape of Prometheus text: series ("name{labels}") → value.
type samples map[string]float64

// parseProm reads the Prometheus text format, keeping every sample line.
func parseProm(r io.Reader) (samples, error) {
	s := samples{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		// The value follows the last space outside the labels; an optional
		// timestamp is not written by client_golang.
		i := strings.LastIndexByte(line, '}')
		rest := line
		if i >= 0 {
			rest = line[i+1:]
		}
		fields := strings.Fields(rest)
		if len(fields) == 0 {
			continue
		}
		var series string
		if i >= 0 {
			series = line[:i+1]
		} else {
			series = fields[0]
			fields = fields[1:]
			if len(fields) == 0 {
				continue
			}
		}
		v, err := strconv.ParseFloat(fields[0], 64)
		if err != nil {
			continue
		}
		s[series] = v
	}
	return s, sc.Err()
}

// splitSeries parses `name{a="x",b="y"}` into its name and labels.
func splitSeries(series string) (name string, labels map[string]string) {
	name, rest, ok := strings.Cut(series, "{")
	if !ok {
		return series, nil
	}
	rest = strings.TrimSuffix(rest, "}")
	labels = map[string]string{}
	for rest != "" {
		k, after, ok := strings.Cut(rest, `="`)
		if !ok {
			break
		}
		// Values escape `"` and `\` with a backslash.
		var b strings.Builder
		j := 0
		for ; j < len(after); j++ {
			if after[j] == '\\' && j+1 < len(after) {
				j++
				b.WriteByte(after[j])
				continue
			}
			if after[j] == '"' {
				break
			}
			b.WriteByte(after[j])
		}
		labels[strings.TrimSpace(k)] = b.String()
		rest = strings.TrimPrefix(after[min(j+1, len(after)):], ",")
	}
	return name, labels
}

// sum adds every series of family name whose labels include match.
func (s samples) sum(name string, match map[string]string) (float64, bool) {
	total, found := 0.0, false
	for series, v := range s {
		n, l := splitSeries(series)
		if n != name {
			continue
		}
		ok := true
		for k, want := range match {
			if l[k] != want {
				ok = false
				break
			}
		}
		if ok {
			total += v
			found = true
		}
	}
	return total, found
}

// histo is a histogram summed over its label sets.
type histo struct {
	buckets map[float64]float64 // upper bound → cumulative count
	count   float64
	sum     float64
}

// histograms collects every histogram family (by its `_bucket` series).
func (s samples) histograms() map[string]*histo {
	hs := map[string]*histo{}
	get := func(n string) *histo {
		h := hs[n]
		if h == nil {
			h = &histo{buckets: map[float64]float64{}}
			hs[n] = h
		}
		return h
	}
	for series, v := range s {
		n, l := splitSeries(series)
		switch {
		case strings.HasSuffix(n, "_bucket"):
			le, err := strconv.ParseFloat(l["le"], 64)
			if err != nil {
				continue
			}
			get(strings.TrimSuffix(n, "_bucket")).buckets[le] += v
		}
	}
	for n, h := range hs {
		h.count, _ = s.sum(n+"_count", nil)
		h.sum, _ = s.sum(n+"_sum", nil)
	}
	return hs
}

// minus is h − earlier (the observations between two scrapes).
func (h *histo) minus(earlier *histo) *histo {
	if earlier == nil {
		return h
	}
	d := &histo{buckets: map[float64]float64{}, count: h.count - earlier.count, sum: h.sum - earlier.sum}
	for le, c := range h.buckets {
		d.buckets[le] = c - earlier.buckets[le]
	}
	return d
}

// quantile interpolates like PromQL's histogram_quantile.
func (h *histo) quantile(q float64) float64 {
	les := make([]float64, 0, len(h.buckets))
	for le := range h.buckets {
		les = append(les, le)
	}
	slices.Sort(les)
	if len(les) == 0 {
		return math.NaN()
	}
	total := h.buckets[les[len(les)-1]]
	if total <= 0 {
		return math.NaN()
	}
	rank := q * total
	prevLe, prevC := 0.0, 0.0
	for _, le := range les {
		c := h.buckets[le]
		if c >= rank {
			if math.IsInf(le, 1) {
				return prevLe // beyond the last finite bound
			}
			if c == prevC {
				return le
			}
			return prevLe + (le-prevLe)*(rank-prevC)/(c-prevC)
		}
		prevLe, prevC = le, c
	}
	return prevLe
}
