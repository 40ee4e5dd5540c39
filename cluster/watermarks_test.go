package cluster

import (
	"runtime"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
)

func TestTableMergeKeepsLatest(t *testing.T) {
	tests := []struct { // applied in order to one table
		name      string
		slot      int64
		count     uint64
		advances  bool
		wantSlot  int64
		wantCount uint64
	}{
		{"first", 100, 1, true, 100, 1},
		{"older slot", 50, 9, false, 100, 1},
		{"same slot lower count", 100, 0, false, 100, 1},
		{"same slot same count", 100, 1, false, 100, 1},
		{"same slot higher count", 100, 2, true, 100, 2},
		{"later slot", 200, 1, true, 200, 1},
	}
	tb := newTable(10)
	for _, tt := range tests {
		if got := tb.merge(7, tt.slot, tt.count); got != tt.advances {
			t.Errorf("%s: merge(7, %d, %d) = %v, want %v", tt.name, tt.slot, tt.count, got, tt.advances)
		}
		if e, _ := tb.get(7); e.slot != tt.wantSlot || e.count != tt.wantCount {
			t.Errorf("%s: get(7) = %d/%d, want %d/%d", tt.name, e.slot, e.count, tt.wantSlot, tt.wantCount)
		}
	}
}

func TestTableEvictsLeastRecentlyAdvanced(t *testing.T) {
	tb := newTable(3)
	for id := int64(1); id <= 3; id++ {
		tb.merge(id, 1, 1)
	}
	tb.merge(1, 2, 1) // 1 is now the most recent
	tb.merge(4, 1, 1) // evicts 2, the least recently advanced
	for id, want := range map[int64]bool{1: true, 2: false, 3: true, 4: true} {
		if _, ok := tb.get(id); ok != want {
			t.Errorf("after eviction get(%d) ok = %v, want %v", id, ok, want)
		}
	}
	// Many updates keep the recency queue compact.
	for i := range int64(100_000) {
		tb.merge(1+i%5, 10+i, 1)
	}
	if n := tb.len(); n != 3 {
		t.Errorf("len = %d, want capacity 3", n)
	}
	if q := len(tb.order) - tb.head; q > 2*3+1024 {
		t.Errorf("recency queue holds %d items for 3 entries, want compacted", q)
	}
}

func TestEncodeRecentBoundedNewestFirst(t *testing.T) {
	tb := newTable(1000)
	for id := int64(1); id <= 500; id++ {
		tb.merge(id, id*10, uint64(id))
	}
	tb.merge(3, 99999, 4) // most recent
	tests := []struct {
		maxBytes, wantRecords int
	}{
		{headerLen + 10*recordLen, 10},
		{headerLen + 10*recordLen + recordLen - 1, 10},
		{1 << 20, 500},
		{1, 0},
	}
	for _, tt := range tests {
		b := tb.encodeRecent(kindState, tt.maxBytes)
		if len(b) > max(tt.maxBytes, headerLen) || len(b) != headerLen+tt.wantRecords*recordLen {
			t.Errorf("encodeRecent(%d) = %d bytes, want %d records within the bound", tt.maxBytes, len(b), tt.wantRecords)
			continue
		}
		var ids []int64
		if err := decodeRecords(b, kindState, func(id, _ int64, _ uint64) { ids = append(ids, id) }); err != nil {
			t.Fatalf("decode own state: %v", err)
		}
		if len(ids) > 1 && (ids[0] != 3 || ids[1] != 500) {
			t.Errorf("encodeRecent(%d) starts %v, want [3 500 ...] (newest first)", tt.maxBytes, ids[:2])
		}
	}
}

func TestDecodeRecordsReasons(t *testing.T) {
	rec := func(id int64) []byte { return appendRecord([]byte{wireVersion, kindState}, id, 1, 1) }
	tests := []struct {
		name   string
		msg    []byte
		reason string
	}{
		{"empty", nil, dropMalformed},
		{"version 0", []byte{0, kindState}, dropVersion},
		{"wrong kind", []byte{wireVersion, kindBroadcast}, dropMalformed},
		{"trailing byte", append(rec(1), 0), dropMalformed},
		{"rule id 0", rec(0), dropInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			called := false
			err := decodeRecords(tt.msg, kindState, func(int64, int64, uint64) { called = true })
			we, ok := err.(*wireError)
			if !ok || we.reason != tt.reason || called {
				t.Errorf("decodeRecords(%x) = %v (yielded %v), want reason %s and nothing yielded", tt.msg, err, called, tt.reason)
			}
		})
	}
	if err := decodeRecords([]byte{wireVersion, kindState}, kindState, func(int64, int64, uint64) {}); err != nil {
		t.Errorf("empty state: %v, want nil", err)
	}
}

// FuzzDecodeRecords: no input panics, and whatever is accepted is whole positive records.
func FuzzDecodeRecords(f *testing.F) {
	f.Add(appendRecord([]byte{wireVersion, kindBroadcast}, 1, 2, 3))
	f.Add([]byte{wireVersion, kindLeave, 'a'})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		n := 0
		err := decodeRecords(b, kindBroadcast, func(id, _ int64, _ uint64) {
			if id <= 0 {
				t.Fatalf("yielded rule id %d", id)
			}
			n++
		})
		if err == nil && n != (len(b)-headerLen)/recordLen {
			t.Fatalf("accepted %d bytes as %d records", len(b), n)
		}
		(&delegate{newTestClusterShell()}).NotifyMsg(b)
	})
}

// newTestClusterShell is enough of a Cluster for the delegate's message path.
func newTestClusterShell() *Cluster {
	c := &Cluster{
		cfg:     Config{NodeName: "shell"}.withDefaults(),
		table:   newTable(100),
		members: map[string]*memberState{},
		leaving: map[string]time.Time{},
		wmCh:    make(chan Watermark, 1),
		kick:    make(chan struct{}, 1),
		met:     newMetrics(),
	}
	c.log = c.cfg.Logger
	c.queue = &memberlist.TransmitLimitedQueue{NumNodes: func() int { return 2 }, RetransmitMult: 2}
	return c
}

// BenchmarkTableMemory reports the heap bytes per rule of a full table (see DefaultWatermarkCapacity).
func BenchmarkTableMemory(b *testing.B) {
	const n = 1 << 20
	for b.Loop() {
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		tb := newTable(n)
		for id := int64(1); id <= n; id++ {
			tb.merge(id, id, 1)
		}
		// and a second round of updates, as rules fire again
		for id := int64(1); id <= n; id++ {
			tb.merge(id, id+1, 2)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/n, "B/rule")
		runtime.KeepAlive(tb)
	}
}

func BenchmarkDecode(b *testing.B) {
	msg := []byte{wireVersion, kindBroadcast}
	for i := range int64(50) {
		msg = appendRecord(msg, i+1, i, 1)
	}
	var sum int64
	for b.Loop() {
		_ = decodeRecords(msg, kindBroadcast, func(id, _ int64, _ uint64) { sum += id })
	}
	_ = sum
}
