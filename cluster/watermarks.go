package cluster

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"sync"
	"time"
)

// Watermark is the last slot a node fired for a rule and the rule's fire count then.
type Watermark struct {
	RuleID int64
	Slot   time.Time
	Count  uint64
}

// ErrInvalidWatermark reports a watermark that cannot be announced.
var ErrInvalidWatermark = errors.New("invalid watermark")

// Wire format (version 1): [version][kind] then, for watermarks, records of 24 bytes,
// big-endian: rule id int64, slot Unix nanoseconds int64, count uint64.
//
// kindBroadcast packets go straight from the node that fired to each peer (UDP); kindState is
// memberlist's push/pull (TCP); kindLeave goes both by gossip and by TCP.
const (
	wireVersion    = 1
	kindBroadcast  = 1 // sent to every peer after fires
	kindState      = 2 // push/pull state, most recent first
	kindLeave      = 3 // [version][kind][node name]: the sender is leaving gracefully
	headerLen      = 2
	recordLen      = 24
	dropMalformed  = "malformed"
	dropVersion    = "version"
	dropInvalid    = "invalid"
	dropSendFailed = "send_failed"
	dropSlowReader = "slow_consumer"
)

var (
	minSlot = time.Unix(0, math.MinInt64+1)
	maxSlot = time.Unix(0, math.MaxInt64)
)

func checkWatermark(w Watermark) error {
	if w.RuleID <= 0 {
		return fmt.Errorf("%w: rule id %d: must be positive", ErrInvalidWatermark, w.RuleID)
	}
	if w.Slot.Before(minSlot) || w.Slot.After(maxSlot) {
		return fmt.Errorf("%w: rule %d slot %v: outside the years 1678-2262", ErrInvalidWatermark, w.RuleID, w.Slot)
	}
	return nil
}

// record is a watermark on its way: slot in Unix nanoseconds, count.
type record struct {
	slot  int64
	count uint64
}

func appendRecord(b []byte, id, slot int64, count uint64) []byte {
	b = binary.BigEndian.AppendUint64(b, uint64(id))
	b = binary.BigEndian.AppendUint64(b, uint64(slot))
	return binary.BigEndian.AppendUint64(b, count)
}

// wireError is a peer's message that was dropped, with the metric reason.
type wireError struct{ reason, detail string }

func (e *wireError) Error() string { return e.reason + ": " + e.detail }

// decodeRecords checks a whole message before yielding anything, so a bad message changes nothing.
func decodeRecords(b []byte, kind byte, yield func(id, slot int64, count uint64)) error {
	if len(b) < headerLen {
		return &wireError{dropMalformed, fmt.Sprintf("%d bytes", len(b))}
	}
	if b[0] != wireVersion {
		return &wireError{dropVersion, fmt.Sprintf("version %d", b[0])}
	}
	if b[1] != kind {
		return &wireError{dropMalformed, fmt.Sprintf("kind %d, want %d", b[1], kind)}
	}
	body := b[headerLen:]
	if len(body)%recordLen != 0 {
		return &wireError{dropMalformed, fmt.Sprintf("body of %d bytes is not whole records", len(body))}
	}
	for off := 0; off < len(body); off += recordLen {
		if id := int64(binary.BigEndian.Uint64(body[off:])); id <= 0 {
			return &wireError{dropInvalid, fmt.Sprintf("rule id %d", id)}
		}
	}
	for off := 0; off < len(body); off += recordLen {
		r := body[off : off+recordLen]
		yield(int64(binary.BigEndian.Uint64(r)), int64(binary.BigEndian.Uint64(r[8:])), binary.BigEndian.Uint64(r[16:]))
	}
	return nil
}

// table keeps the latest watermark per rule, bounded by capacity: when full, the rule whose
// watermark advanced longest ago is forgotten. A map entry is 24 bytes of value plus the key
// and map overhead, and the recency queue 16 bytes per update (compacted at 2x): ~113 B per
// rule measured at 1M rules (BenchmarkTableMemory), so memory follows the rules that fire.
type table struct {
	mu       sync.Mutex
	capacity int
	m        map[int64]entry
	order    []orderItem // oldest first from head; items whose seq no longer matches are stale
	head     int
	seq      uint64
}

type entry struct {
	slot  int64
	count uint64
	seq   uint64
}

type orderItem struct {
	id  int64
	seq uint64
}

func newTable(capacity int) *table {
	return &table{capacity: capacity, m: make(map[int64]entry)}
}

// merge records a watermark if it is later than the known one (slot, then count), and
// reports whether it was.
func (t *table) merge(id, slot int64, count uint64) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if e, ok := t.m[id]; ok && (slot < e.slot || slot == e.slot && count <= e.count) {
		return false
	}
	t.seq++
	t.m[id] = entry{slot: slot, count: count, seq: t.seq}
	t.order = append(t.order, orderItem{id, t.seq})
	for len(t.m) > t.capacity && t.head < len(t.order) {
		it := t.order[t.head]
		t.head++
		if e, ok := t.m[it.id]; ok && e.seq == it.seq {
			delete(t.m, it.id)
		}
	}
	if live := len(t.order) - t.head; live > 2*len(t.m)+1024 || t.head > 1024 && t.head > len(t.order)/2 {
		t.compact()
	}
	return true
}

// compact drops consumed and stale items from the recency queue.
func (t *table) compact() {
	out := make([]orderItem, 0, len(t.m)+len(t.m)/4+16)
	for _, it := range t.order[t.head:] {
		if e, ok := t.m[it.id]; ok && e.seq == it.seq {
			out = append(out, it)
		}
	}
	t.order, t.head = out, 0
}

func (t *table) get(id int64) (entry, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	e, ok := t.m[id]
	return e, ok
}

func (t *table) len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.m)
}

// encodeRecent encodes up to maxBytes of the most recently advanced watermarks, newest first.
func (t *table) encodeRecent(kind byte, maxBytes int) []byte {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := min(len(t.m), max(0, (maxBytes-headerLen)/recordLen))
	b := make([]byte, 0, headerLen+n*recordLen)
	b = append(b, wireVersion, kind)
	for i := len(t.order) - 1; i >= t.head && n > 0; i-- {
		it := t.order[i]
		if e, ok := t.m[it.id]; ok && e.seq == it.seq {
			b = appendRecord(b, it.id, e.slot, e.count)
			n--
		}
	}
	return b
}
