package scheduler

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// A slot's offset is a fixed function of the rule and the slot: below the
// jitter, spread over it, different for different rules and slots.
func TestJitterOffset(t *testing.T) {
	const jitter = 30 * time.Second
	slot := time.Date(2027, 1, 1, 12, 0, 0, 0, time.UTC)
	if a, b := JitterOffset(42, slot, jitter), JitterOffset(42, slot, jitter); a != b {
		t.Fatalf("offset of one rule and slot: %v then %v", a, b)
	}
	// Pinned: nodes of one cluster (and a restarted node, or one of the next
	// release) must agree, so a change of the function is a change of contract.
	if got := JitterOffset(42, slot, jitter); got != pinnedOffset {
		t.Errorf("JitterOffset(42, %s, 30s) = %v, want %v as every release computes it", slot, got, pinnedOffset)
	}
	buckets := make([]int, 10)
	seen := map[time.Duration]bool{}
	for id := int64(1); id <= 2000; id++ {
		for k := range 5 {
			d := JitterOffset(id, slot.Add(time.Duration(k)*time.Minute), jitter)
			if d < 0 || d >= jitter {
				t.Fatalf("rule %d: offset %v outside [0, %v)", id, d, jitter)
			}
			buckets[d*10/jitter]++
			seen[d] = true
		}
	}
	for i, n := range buckets {
		if n < 800 || n > 1200 { // 10,000 draws, 1,000 a tenth expected
			t.Errorf("tenth %d of the jitter holds %d of 10,000 offsets: not spread", i, n)
		}
	}
	if len(seen) < 9000 {
		t.Errorf("%d distinct offsets of 10,000", len(seen))
	}
	if JitterOffset(1, slot, 0) != 0 {
		t.Error("no jitter, yet an offset")
	}
}

func TestJitterParse(t *testing.T) {
	tm := mustParse(t, "core.intervaltimer", `{"interval":60,"jitter":"30s"}`, 1)
	if tm.Jitter != 30*time.Second {
		t.Fatalf("Jitter = %v, want 30s", tm.Jitter)
	}
	for _, c := range []struct{ ref, params, want string }{
		{"core.intervaltimer", `{"interval":60,"jitter":"60s"}`, "trigger_params.jitter: 1m0s must be shorter than the interval, 1m0s"},
		{"core.intervaltimer", `{"interval":60,"jitter":"soon"}`, `trigger_params.jitter: must be a Go duration ≥ 0 such as "30s", got "soon"`},
		{"core.intervaltimer", `{"interval":60,"jitter":"-1s"}`, `trigger_params.jitter: must be a Go duration`},
		{"core.crontimer", `{"expression":"@every 10s","jitter":"10s"}`, "trigger_params.jitter: 10s must be shorter than the interval, 10s"},
		{"core.intervaltimer", `{"interval":60,"jitter":30}`, "trigger_params.jitter"},
	} {
		_, err := Parse(c.ref, []byte(c.params), 1)
		var se *SpecError
		if !errors.As(err, &se) || !strings.HasPrefix(err.Error(), c.want) {
			t.Errorf("Parse(%s): %v, want a SpecError starting %q", c.params, err, c.want)
		}
	}
	a := mustParse(t, "core.crontimer", `{"expression":"0 * * * * *","jitter":"5s"}`, 1)
	b := mustParse(t, "core.crontimer", `{"expression":"0 * * * * *"}`, 1)
	if a.Equal(b) {
		t.Error("timers that differ by their jitter are Equal")
	}
}

func TestJitterBinaryForm(t *testing.T) {
	for _, params := range []string{`{"interval":60,"jitter":"30s"}`, `{"interval":60}`} {
		tm := mustParse(t, "core.intervaltimer", params, 9)
		b, err := tm.AppendBinary(nil)
		if err != nil {
			t.Fatal(err)
		}
		got, err := DecodeTimer(b)
		if err != nil || !got.Equal(tm) {
			t.Fatalf("%s: decoded %+v, %v; want %+v", params, got, err, tm)
		}
	}
	// A flag this build does not know fails the decode rather than being ignored:
	// that is how a build before jitter refuses a jittered form.
	b, _ := mustParse(t, "core.intervaltimer", `{"interval":60}`, 9).AppendBinary(nil)
	b[6] |= 1 << 5
	if _, err := DecodeTimer(b); !errors.Is(err, ErrTimerForm) {
		t.Errorf("a form with an unknown flag: %v, want ErrTimerForm", err)
	}
	// A stored jitter not below the interval is a bad form (Parse refuses it).
	bad := &Timer{TriggerRef: "core.intervaltimer", Kind: KindInterval, Interval: time.Minute, Jitter: time.Minute,
		Misfire: FireOnce, DSTGap: GapShift, DSTOverlap: OverlapOnce, Anchor: time.Unix(0, 0).UTC()}
	if b, err := bad.AppendBinary(nil); err != nil {
		t.Fatal(err)
	} else if _, err := DecodeTimer(b); !errors.Is(err, ErrTimerForm) {
		t.Errorf("jitter = interval: %v, want ErrTimerForm", err)
	}
}

// A cron's jitter never carries a slot past the next one: a slot's offset is cut
// short of the gap, so slots of a rule stay in order.
func TestJitterCronKeepsOrder(t *testing.T) {
	tm := mustParse(t, "core.crontimer", `{"expression":"0,1 * * * * *","jitter":"50s"}`, 3)
	from := time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)
	prev := time.Time{}
	for s, ok := tm.Next(from); ok && s.Before(from.Add(time.Hour)); s, ok = tm.Next(s) {
		ft := tm.FireTime(3, s)
		nx, _ := tm.Next(s)
		if ft.Before(s) || !ft.Before(nx) || !ft.After(prev) {
			t.Fatalf("slot %s fires at %s: want in [slot, next slot %s) and after the previous fire %s", s, ft, nx, prev)
		}
		prev = ft
	}
}

// The engine fires each slot at its fire time, in order, with the nominal slot as
// its Slot and watermark; the lateness it measures is against the fire time.
func TestEngineFiresJitteredSlots(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		t0 := time.Now()
		reg := prometheus.NewPedanticRegistry()
		e, rec := newEngine(t, Config{Coalesce: NoCoalesce, Registerer: reg})
		jittered := &Timer{Kind: KindInterval, Interval: 2 * time.Second, Anchor: t0, Jitter: 1500 * time.Millisecond}
		plain := every(2*time.Second, t0)
		for id := int64(1); id <= 20; id++ {
			e.Upsert(id, jittered, Watermark{Slot: t0})
		}
		e.Upsert(100, plain, Watermark{Slot: t0})
		checkInvariants(t, e)
		stop := start(t, e)
		time.Sleep(11*time.Second + 600*time.Millisecond) // the slot at 10 s fires by 11.5 s, the one at 12 s not before 12 s
		synctest.Wait()
		checkInvariants(t, e)
		stop()

		all := rec.fires()
		if !slices.IsSortedFunc(all, func(a, b Fire) int { return a.FiredAt.Compare(b.FiredAt) }) {
			t.Error("fires not in the order of their fire times")
		}
		spread := map[time.Duration]bool{}
		for id := int64(1); id <= 20; id++ {
			fs := rec.of(id)
			if len(fs) != 5 {
				t.Fatalf("rule %d: %d fires in 11.6 s of a 2 s interval with 1.5 s of jitter, want 5", id, len(fs))
			}
			for i, f := range fs {
				slot := t0.Add(time.Duration(i+1) * 2 * time.Second)
				want := slot.Add(JitterOffset(id, slot, jittered.Jitter))
				if !f.Slot.Equal(slot) || !f.FiredAt.Equal(want) || f.Count != uint64(i+1) || f.CatchUp {
					t.Errorf("rule %d fire %d: slot %s fired at %s count %d catch-up %v; want slot %s fired at %s",
						id, i, f.Slot.Sub(t0), f.FiredAt.Sub(t0), f.Count, f.CatchUp, slot.Sub(t0), want.Sub(t0))
				}
				spread[f.FiredAt.Sub(slot)] = true
			}
			if wm, _ := e.Watermark(id); !wm.Slot.Equal(t0.Add(10 * time.Second)) {
				t.Errorf("rule %d: watermark %s, want the nominal slot 10s", id, wm.Slot.Sub(t0))
			}
		}
		if len(spread) < 50 {
			t.Errorf("%d distinct delays over 100 fires: the jitter does not spread them", len(spread))
		}
		for _, f := range rec.of(100) {
			if !f.FiredAt.Equal(f.Slot) {
				t.Errorf("the rule without jitter fired slot %s at %s", f.Slot.Sub(t0), f.FiredAt.Sub(t0))
			}
		}
		if got := gathered(t, reg)["timerd_fire_lateness_seconds_sum"]; got != 0 {
			t.Errorf("lateness sum %.3f s on a fake clock, want 0: measured against the nominal slot, not the fire time", got)
		}
	})
}

// pinnedOffset is JitterOffset(42, 2027-01-01T12:00:00Z, 30s) as this release computes it.
const pinnedOffset = 27220335505 * time.Nanosecond
