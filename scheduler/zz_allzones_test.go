package scheduler

import (
	"fmt"
	"io/fs"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestZZAllZones(t *testing.T) {
	var names []string
	filepath.WalkDir("/usr/share/zoneinfo", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		n := strings.TrimPrefix(p, "/usr/share/zoneinfo/")
		if strings.HasPrefix(n, "right/") || strings.HasPrefix(n, "posix/") || strings.Contains(n, ".") || n == "Factory" {
			return nil
		}
		if _, err := time.LoadLocation(n); err == nil {
			names = append(names, n)
		}
		return nil
	})
	exprs := []string{"30 2 * * *", "0 0 * * *", "*/30 * * * *", "45 1 * * *"}
	trs := 0
	for _, n := range names {
		loc, _ := time.LoadLocation(n)
		q := time.Date(1975, 1, 1, 0, 0, 0, 0, time.UTC)
		for {
			_, end := q.In(loc).ZoneBounds()
			if end.IsZero() || end.Year() > 2030 {
				break
			}
			q = end
			_, o1 := end.Add(-time.Second).In(loc).Zone()
			_, o2 := end.In(loc).Zone()
			if o1 == o2 || (o1-o2)%60 != 0 {
				continue
			}
			trs++
			from, to := end.Add(-25*time.Hour), end.Add(25*time.Hour)
			for _, expr := range exprs {
				walk := newDSTWalk(t, expr, loc, from, to)
				for _, gap := range []DSTGap{GapShift, GapSkip} {
					for _, ov := range []DSTOverlap{OverlapOnce, OverlapTwice} {
						tm := mustParse(t, "core.crontimer", fmt.Sprintf(`{"expression":%q,"timezone":%q,"dst_gap":%q,"dst_overlap":%q}`, expr, n, gap, ov), 1)
						want := walk.oracle(gap, ov, from, to)
						var got []time.Time
						for s, ok := tm.Next(from); ok && !s.After(to); s, ok = tm.Next(s) {
							got = append(got, s)
						}
						if !slices.EqualFunc(got, want, time.Time.Equal) {
							t.Errorf("%s %v %q %s %s:\ngot  %s\nwant %s", n, end, expr, gap, ov, formatSlots(got), formatSlots(want))
						}
					}
				}
			}
		}
	}
	t.Logf("%d zones, %d transitions", len(names), trs)
}
