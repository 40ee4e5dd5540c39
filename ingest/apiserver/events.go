package apiserver

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
)

const (
	maxEventBatch = 1000                    // inserts per bbolt transaction, at most
	maxLinger     = 1500 * time.Microsecond // see runCommitter
)

// eventBody is an event without the fields the committer assigns (id,
// created). It is encoded by the request's goroutine; the committer only
// prefixes it.
type eventBody struct {
	TriggerRef        string          `json:"trigger_ref"`
	TriggerInstanceID *string         `json:"trigger_instance_id"`
	RuleRef           *string         `json:"rule_ref"`
	Payload           json.RawMessage `json:"payload"`
	Config            json.RawMessage `json:"config,omitempty"`
	IdempotencyKey    *string         `json:"idempotency_key"`
}

type eventReq struct {
	body    []byte // encoded eventBody
	idemKey string
	idemIdx []byte // scopedIdemKey of idemKey, nil without one
	inst    string
	ruleRef string
	resp    chan eventResp // capacity 1
}

type eventResp struct {
	id  int64  // of the event stored, or of the original for a repeat
	raw []byte // stored event JSON; nil for a repeat
	dup bool
	err error
}

// runCommitter is the group commit of event inserts and rule creates: it
// takes one request, every request already waiting, and commits them in one
// transaction (up to maxEventBatch events and maxRuleBatch creates). While a
// commit is in its fsync, new requests queue up for the next one, so batches
// grow with the load. Rule creates ride in the same transactions as events:
// while rules are created under load, one fsync serves both, where two
// committers took turns at bbolt's one writer.
//
// Clients that wait for their answer come back together when a commit
// answers them, but not at once: taking only the first would alternate small
// and large batches. So the committer expects as many requests as it just
// answered plus those already under way (s.evPending, s.rqPending), and
// lingers up to maxLinger for them. An idle server (one request, none under
// way) adds no delay; db.Batch instead always waits MaxBatchDelay (10 ms)
// when fewer than MaxBatchSize callers wait.
func (s *Server) runCommitter() {
	defer s.committer.Done()
	var b commitBatch
	b.events = make([]*eventReq, 0, maxEventBatch)
	b.rules = make([]*ruleReq, 0, maxRuleBatch)
	expect := 1
	linger := time.NewTimer(time.Hour)
	linger.Stop()
	for {
		b.events, b.rules = b.events[:0], b.rules[:0]
		select {
		case <-s.quit:
			return
		case req := <-s.evq:
			b.events = append(b.events, req)
		case req := <-s.ruleq:
			b.rules = append(b.rules, req)
		}
	fill:
		for !b.full() {
			select {
			case req := <-s.evq:
				b.events = append(b.events, req)
			case req := <-s.ruleq:
				b.rules = append(b.rules, req)
			default:
				break fill
			}
		}
		if b.len() < expect && !b.full() {
			linger.Reset(maxLinger)
		wait:
			for b.len() < expect && !b.full() {
				select {
				case req := <-s.evq:
					b.events = append(b.events, req)
				case req := <-s.ruleq:
					b.rules = append(b.rules, req)
				case <-linger.C:
					break wait
				case <-s.quit:
					break wait
				}
			}
			linger.Stop()
		}
		s.commit(b)
		expect = min(b.len()+int(s.evPending.Load()+s.rqPending.Load()), maxEventBatch)
		clear(b.events)
		clear(b.rules)
	}
}

// commitBatch is what one transaction of the committer stores.
type commitBatch struct {
	events []*eventReq
	rules  []*ruleReq
}

func (b commitBatch) len() int { return len(b.events) + len(b.rules) }

// full: a queue at its bound must wait for the next commit (a send to it
// blocks until then, which is what keeps the batch bounded).
func (b commitBatch) full() bool {
	return len(b.events) >= maxEventBatch || len(b.rules) >= maxRuleBatch
}

// commit stores b in one transaction, then answers every request of it. The
// creates are stored in order (a ref taken by an earlier create of the batch
// is a conflict for a later one), then added to the catalogue and sent,
// under ruleWriteMu from before the transaction to after the sends, so
// that lifecycle messages leave in commit order; their confirms are awaited
// after it.
func (s *Server) commit(b commitBatch) {
	resps := make([]eventResp, len(b.events))
	ruleErrs := make([]error, len(b.rules))
	stored := 0
	if len(b.rules) > 0 {
		s.ruleWriteMu.Lock()
	}
	start := time.Now()
	err := s.db.Update(func(tx *bolt.Tx) error {
		clear(ruleErrs)
		if err := s.putNewRules(tx, b.rules, ruleErrs); err != nil {
			return err
		}
		var err error
		stored, err = s.putEvents(tx, b.events, resps)
		return err
	})
	if len(b.events) > 0 {
		s.metrics.eventCommit.Observe(time.Since(start).Seconds())
		s.metrics.eventBatch.Observe(float64(len(b.events)))
	}
	if err != nil {
		s.log.Error("commit", "events", len(b.events), "rule_creates", len(b.rules), "err", err)
		stored = 0
		for i := range ruleErrs {
			ruleErrs[i] = err
		}
	}
	if len(b.rules) > 0 {
		var pub *publishing
		if err == nil {
			pub = s.addNewRules(b.rules, ruleErrs)
		}
		s.ruleWriteMu.Unlock()
		// A create is answered once its message is confirmed (or its
		// failure counted); the whole batch's confirms come in one round.
		s.await(pub)
		for i, req := range b.rules {
			req.resp <- ruleErrs[i]
		}
	}
	if len(b.events) == 0 {
		return
	}
	s.metrics.eventsStored.Add(float64(stored))
	if err == nil {
		s.evIndex.mu.Lock()
		for i, req := range b.events {
			if resps[i].id != 0 && !resps[i].dup {
				s.evIndex.add(req.inst, req.ruleRef, resps[i].id)
			}
		}
		s.evIndex.mu.Unlock()
	}
	for i, req := range b.events {
		if err != nil {
			req.resp <- eventResp{err: err}
			continue
		}
		if resps[i].dup {
			s.metrics.eventsDup.Inc()
		}
		req.resp <- resps[i]
	}
}

// putEvents inserts the events of batch in tx and says what each got in
// resps; it returns how many were stored (the others are repeats).
func (s *Server) putEvents(tx *bolt.Tx, batch []*eventReq, resps []eventResp) (int, error) {
	if len(batch) == 0 {
		return 0, nil
	}
	stored := 0
	events := tx.Bucket(bucketEvents)
	idem := tx.Bucket(bucketEventIdem)
	created := s.cfg.Now().UTC().Format(time.RFC3339Nano)
	for i, req := range batch {
		if req.idemIdx != nil {
			if id := idem.Get(req.idemIdx); id != nil {
				resps[i] = eventResp{id: int64(binary.BigEndian.Uint64(id)), dup: true}
				continue
			}
		}
		seq, err := events.NextSequence()
		if err != nil {
			return 0, err
		}
		key := idKey(int64(seq))
		raw := make([]byte, 0, len(req.body)+64)
		raw = append(raw, `{"id":`...)
		raw = strconv.AppendUint(raw, seq, 10)
		raw = append(raw, `,"created":"`...)
		raw = append(raw, created...)
		raw = append(raw, `",`...)
		raw = append(raw, req.body[1:]...) // req.body is a JSON object
		if err := events.Put(key, raw); err != nil {
			return 0, err
		}
		if req.idemIdx != nil {
			if err := idem.Put(req.idemIdx, key); err != nil {
				return 0, err
			}
		}
		resps[i] = eventResp{raw: raw, id: int64(seq)}
		stored++
	}
	return stored, nil
}

// idemIndexKey maps an Idempotency-Key to its index key. timerd's keys,
// "<rule_id>:<scheduled_at unix ns>", become 0x01 | ns | rule_id (big
// endian): fires arrive roughly in slot order, so new keys land next to one
// another and a commit dirties a few index pages instead of one per event
// (random inserts made commits 3-5× slower). Other keys are 0x00 | key.
func idemIndexKey(key string) []byte {
	if rule, ns, ok := strings.Cut(key, ":"); ok {
		r, err1 := strconv.ParseUint(rule, 10, 64)
		n, err2 := strconv.ParseUint(ns, 10, 64)
		// Only the canonical spelling, so that two keys never share an index key.
		if err1 == nil && err2 == nil && strconv.FormatUint(r, 10) == rule && strconv.FormatUint(n, 10) == ns {
			k := make([]byte, 0, 17)
			k = append(k, 1)
			k = binary.BigEndian.AppendUint64(k, n)
			return binary.BigEndian.AppendUint64(k, r)
		}
	}
	k := make([]byte, 0, 1+binary.MaxVarintLen64+len(key))
	k = append(k, 0)
	k = binary.AppendUvarint(k, uint64(len(key)))
	return append(k, key...)
}

// scopedIdemKey is the index key of an Idempotency-Key within its trigger and
// trigger instance (the rule): the same key for another trigger or rule is
// another event, so a token that may post one trigger cannot take the key of
// another's future fire (timerd's keys are predictable). Each part is length
// prefixed, so two scopes never share a key.
func scopedIdemKey(key, triggerRef, inst string) []byte {
	k := idemIndexKey(key)
	k = binary.AppendUvarint(k, uint64(len(triggerRef)))
	k = append(k, triggerRef...)
	k = binary.AppendUvarint(k, uint64(len(inst)))
	return append(k, inst...)
}

// duplicateAnswer is the answer to a repeat: the original event's id and
// nothing else, so that a repeat reveals no event to a caller who may not
// read events.
func duplicateAnswer(id int64) []byte {
	return append(strconv.AppendInt([]byte(`{"id":`), id, 10), '}')
}

// eventIndex maps trigger_instance_id and rule_ref to the ids of their
// events, ascending. It lives in memory (8 bytes per event and index, plus
// slice slack) and is rebuilt from the events bucket at open: a bbolt index
// keyed by instance would put every insert on a different page.
type eventIndex struct {
	mu     sync.RWMutex
	byInst map[string][]int64
	byRule map[string][]int64
	floor  int64 // ids up to floor were deleted (retention.go): add ignores them
}

func newEventIndex() *eventIndex {
	return &eventIndex{byInst: map[string][]int64{}, byRule: map[string][]int64{}}
}

// add records an event; ids must come in ascending order. Caller holds mu.
func (x *eventIndex) add(inst, ruleRef string, id int64) {
	if id <= x.floor {
		return
	}
	if inst != "" {
		x.byInst[inst] = append(x.byInst[inst], id)
	}
	if ruleRef != "" {
		x.byRule[ruleRef] = append(x.byRule[ruleRef], id)
	}
}

// page returns the ids of page [offset, offset+size) of the events matching
// both non-empty filters, and the number of matching events.
func (x *eventIndex) page(inst, ruleRef string, offset int64, size int) ([]int64, int64) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	var ids []int64
	switch {
	case inst != "" && ruleRef != "":
		ids = intersect(x.byInst[inst], x.byRule[ruleRef])
	case inst != "":
		ids = x.byInst[inst]
	default:
		ids = x.byRule[ruleRef]
	}
	total := int64(len(ids))
	if offset >= total {
		return nil, total
	}
	return slices.Clone(ids[offset:min(total, offset+int64(size))]), total
}

func intersect(a, b []int64) []int64 {
	var out []int64
	for i, j := 0, 0; i < len(a) && j < len(b); {
		switch {
		case a[i] < b[j]:
			i++
		case a[i] > b[j]:
			j++
		default:
			out = append(out, a[i])
			i, j = i+1, j+1
		}
	}
	return out
}

// migrateIdemIndex rebuilds the scoped idempotency index from the stored
// events when the file still has the unscoped one of earlier versions.
func migrateIdemIndex(db *bolt.DB) error {
	return db.Update(func(tx *bolt.Tx) error {
		if tx.Bucket(bucketEventIdemV1) == nil {
			return nil
		}
		idem := tx.Bucket(bucketEventIdem)
		err := tx.Bucket(bucketEvents).ForEach(func(k, v []byte) error {
			var e struct {
				TriggerRef string  `json:"trigger_ref"`
				Inst       string  `json:"trigger_instance_id"`
				Key        *string `json:"idempotency_key"`
			}
			if err := json.Unmarshal(v, &e); err != nil {
				return fmt.Errorf("event %x: %w", k, err)
			}
			if e.Key == nil || *e.Key == "" {
				return nil
			}
			return idem.Put(scopedIdemKey(*e.Key, e.TriggerRef, e.Inst), bytes.Clone(k))
		})
		if err != nil {
			return err
		}
		return tx.DeleteBucket(bucketEventIdemV1)
	})
}

// loadEventIndex rebuilds the index from the stored events.
func loadEventIndex(db *bolt.DB) (*eventIndex, error) {
	x := newEventIndex()
	err := db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketEvents).ForEach(func(k, v []byte) error {
			var e struct {
				Inst    string `json:"trigger_instance_id"`
				RuleRef string `json:"rule_ref"`
			}
			if err := json.Unmarshal(v, &e); err != nil {
				return fmt.Errorf("event %x: %w", k, err)
			}
			x.add(e.Inst, e.RuleRef, int64(binary.BigEndian.Uint64(k)))
			return nil
		})
	})
	return x, err
}

// createEvent stores an event. A request whose Idempotency-Key is already
// stored gets 200 and the stored event; a new one 201.
func (s *Server) createEvent(w http.ResponseWriter, r *http.Request) {
	p := underWay(&s.evPending)
	defer p.done()
	req, err := s.parseEvent(w, r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	// Fast path for a repeat: a read transaction does not wait for commits.
	if req.idemIdx != nil {
		var id int64
		_ = s.db.View(func(tx *bolt.Tx) error {
			if v := tx.Bucket(bucketEventIdem).Get(req.idemIdx); v != nil {
				id = int64(binary.BigEndian.Uint64(v))
			}
			return nil
		})
		if id != 0 {
			s.metrics.eventsDup.Inc()
			writeData(w, http.StatusOK, duplicateAnswer(id))
			return
		}
	}
	if !enqueue(s, s.evq, req, p) {
		s.fail(w, r, ErrClosed)
		return
	}
	resp := <-req.resp // the committer always answers a request it took
	switch {
	case resp.err != nil:
		s.fail(w, r, resp.err)
	case resp.dup:
		writeData(w, http.StatusOK, duplicateAnswer(resp.id))
	default:
		writeData(w, http.StatusCreated, resp.raw)
	}
}

// pending counts a request under way from its arrival until the committer
// takes it (or its handler gives up): the committer waits for those it
// expects before it commits a batch.
type pending struct {
	n    *atomic.Int64
	over bool
}

func underWay(n *atomic.Int64) *pending {
	n.Add(1)
	return &pending{n: n}
}

func (p *pending) done() {
	if !p.over {
		p.over = true
		p.n.Add(-1)
	}
}

// enqueue hands req to the committer, which then always answers it; false
// when the server closed first.
func enqueue[R any](s *Server, q chan<- R, req R, p *pending) bool {
	select {
	case q <- req:
		p.done()
		return true
	case <-s.quit:
		return false
	}
}

func writeData(w http.ResponseWriter, code int, raw []byte) {
	b := make([]byte, 0, len(raw)+10)
	b = append(b, `{"data":`...)
	b = append(b, raw...)
	b = append(b, '}')
	writeRaw(w, code, b)
}

func (s *Server) parseEvent(w http.ResponseWriter, r *http.Request) (*eventReq, error) {
	key := r.Header.Get("Idempotency-Key")
	if len(key) > maxIdemKeyLen {
		return nil, errorf(http.StatusBadRequest, "Idempotency-Key: longer than %d bytes", maxIdemKeyLen)
	}
	body, err := readBody(w, r)
	if err != nil {
		return nil, err
	}
	f, err := decodeObject(body)
	if err != nil {
		return nil, err
	}
	var ev eventBody
	tref, err := f.requiredStr("trigger_ref")
	if err != nil {
		return nil, err
	}
	if err := checkName("trigger_ref", tref); err != nil {
		return nil, err
	}
	if err := checkEventTrigger(r, tref); err != nil {
		return nil, err
	}
	ev.TriggerRef = tref
	inst, ok, err := f.str("trigger_instance_id")
	if err != nil {
		return nil, err
	}
	if len(inst) > maxInstanceIDLen {
		return nil, errorf(http.StatusBadRequest, "trigger_instance_id: longer than %d bytes", maxInstanceIDLen)
	}
	if ok {
		ev.TriggerInstanceID = &inst
	}
	if ev.Payload, err = f.object("payload"); err != nil {
		return nil, err
	}
	if ev.Payload == nil {
		ev.Payload = json.RawMessage("null")
	}
	if ev.Config, err = f.object("config"); err != nil {
		return nil, err
	}
	if key != "" {
		ev.IdempotencyKey = &key
	}
	var ruleRef string
	if id, ok := ruleIDOf(inst); ok {
		if ref, ok := s.cat.refOf(id); ok {
			ruleRef = ref
			ev.RuleRef = &ruleRef
		}
	}
	b, err := json.Marshal(ev)
	if err != nil {
		return nil, errorf(http.StatusBadRequest, "encode event: %v", err)
	}
	req := &eventReq{body: b, idemKey: key, inst: inst, ruleRef: ruleRef, resp: make(chan eventResp, 1)}
	if key != "" {
		req.idemIdx = scopedIdemKey(key, tref, inst)
	}
	return req, nil
}

// ruleIDOf parses Attune's trigger_instance_id "rule_<id>".
func ruleIDOf(inst string) (int64, bool) {
	digits, ok := strings.CutPrefix(inst, "rule_")
	if !ok || digits == "" || digits[0] == '+' || digits[0] == '-' {
		return 0, false
	}
	id, err := strconv.ParseInt(digits, 10, 64)
	return id, err == nil && id > 0
}

// listEvents lists events oldest first (by id), filtered by rule_ref and/or
// trigger_instance_id through the in-memory index.
func (s *Server) listEvents(w http.ResponseWriter, r *http.Request) {
	page, size, err := pageParams(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	q := r.URL.Query()
	inst, ruleRef := q.Get("trigger_instance_id"), q.Get("rule_ref")
	if len(inst) > maxInstanceIDLen || len(ruleRef) > maxRefLen {
		// Nothing longer was ever stored.
		writeJSON(w, http.StatusOK, listResponse{Items: []json.RawMessage{}, Pagination: newPagination(page, size, 0)})
		return
	}
	offset := int64(page-1) * int64(size)
	items := []json.RawMessage{}
	var total int64
	var ids []int64
	if inst != "" || ruleRef != "" {
		ids, total = s.evIndex.page(inst, ruleRef, offset, size)
	}
	err = s.db.View(func(tx *bolt.Tx) error {
		events := tx.Bucket(bucketEvents)
		if inst != "" || ruleRef != "" {
			for _, id := range ids {
				if v := events.Get(idKey(id)); v != nil {
					items = append(items, bytes.Clone(v))
				}
			}
			return nil
		}
		// Only the oldest events are ever deleted (retention.go): the ids
		// left are first..Sequence(), without gaps.
		c := events.Cursor()
		k, _ := c.First()
		if k == nil {
			return nil
		}
		first := int64(binary.BigEndian.Uint64(k))
		total = int64(events.Sequence()) - first + 1
		for k, v := c.Seek(idKey(first + offset)); k != nil && len(items) < size; k, v = c.Next() {
			items = append(items, bytes.Clone(v))
		}
		return nil
	})
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, listResponse{Items: items, Pagination: newPagination(page, size, total)})
}
