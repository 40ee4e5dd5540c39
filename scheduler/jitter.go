package scheduler

import "time"

// FireTime is when slot s of rule ruleID fires: s itself, or with a Jitter s
// delayed by an offset in [0, Jitter) drawn from (ruleID, s) alone, so that
// every node and every start of one agrees on it. A cron's slot stays before the
// cron's next one (its offset is cut short of it), so a rule's slots never
// reorder; an interval's jitter is shorter than the interval (Parse).
func (t *Timer) FireTime(ruleID int64, s time.Time) time.Time {
	if t.Jitter <= 0 {
		return s
	}
	d := JitterOffset(ruleID, s, t.Jitter)
	if t.shape() == shapeCron {
		if nx, ok := t.Next(s); ok && nx.Sub(s) <= d {
			d = nx.Sub(s) - time.Nanosecond
		}
	}
	return s.Add(d)
}

// JitterOffset is the offset in [0, jitter) of slot s of rule ruleID:
// splitmix64 of the two, a fixed function (part of what nodes agree on).
func JitterOffset(ruleID int64, s time.Time, jitter time.Duration) time.Duration {
	if jitter <= 0 {
		return 0
	}
	x := uint64(ruleID)*0x9e3779b97f4a7c15 ^ uint64(s.UnixNano())
	x += 0x9e3779b97f4a7c15
	x = (x ^ x>>30) * 0xbf58476d1ce4e5b9
	x = (x ^ x>>27) * 0x94d049bb133111eb
	x ^= x >> 31
	return time.Duration(x % uint64(jitter))
}
