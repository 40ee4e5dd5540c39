package apiserver

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
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
	inst    string
	ruleRef string
	resp    chan eventResp // capacity 1
}

type eventResp struct {
	raw []byte // stored event JSON
	dup bool
	err error
}

// runCommitter is the group commit of event inserts: it takes one request,
// every request already waiting, and commits them in one transaction (up to
// maxEventBatch). While a commit is in its fsync, new requests queue up for
// the next one, so batches grow with the load.
//
// Clients that wait for their answer come back together when a commit
// answers them, but not at once: taking only the first would alternate tiny
// and large batches. So when fewer requests wait than the previous batch
// held, the committer lingers up to maxLinger for that many. An idle server
// (previous batch of one) adds no delay; db.Batch instead always waits
// MaxBatchDelay (10 ms) when fewer than MaxBatchSize callers wait.
func (s *Server) runCommitter() {
	defer s.committer.Done()
	batch := make([]*eventReq, 0, maxEventBatch)
	expect := 1
	linger := time.NewTimer(time.Hour)
	linger.Stop()
	for {
		select {
		case <-s.quit:
			return
		case req := <-s.evq:
			batch = append(batch[:0], req)
		}
	fill:
		for len(batch) < maxEventBatch {
			select {
			case req := <-s.evq:
				batch = append(batch, req)
			default:
				break fill
			}
		}
		if len(batch) < expect {
			linger.Reset(maxLinger)
		wait:
			for len(batch) < expect {
				select {
				case req := <-s.evq:
					batch = append(batch, req)
				case <-linger.C:
					break wait
				case <-s.quit:
					break wait
				}
			}
			linger.Stop()
		}
		s.commitEvents(batch)
		expect = len(batch)
		clear(batch)
	}
}

func (s *Server) commitEvents(batch []*eventReq) {
	resps := make([]eventResp, len(batch))
	stored := 0
	start := time.Now()
	err := s.db.Update(func(tx *bolt.Tx) error {
		stored = 0
		events := tx.Bucket(bucketEvents)
		idem := tx.Bucket(bucketEventIdem)
		inst := tx.Bucket(bucketEventInst)
		rules := tx.Bucket(bucketEventRule)
		created := s.cfg.Now().UTC().Format(time.RFC3339Nano)
		for i, req := range batch {
			if req.idemKey != "" {
				if id := idem.Get([]byte(req.idemKey)); id != nil {
					resps[i] = eventResp{raw: bytes.Clone(events.Get(id)), dup: true}
					continue
				}
			}
			seq, err := events.NextSequence()
			if err != nil {
				return err
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
				return err
			}
			if req.idemKey != "" {
				if err := idem.Put([]byte(req.idemKey), key); err != nil {
					return err
				}
			}
			if req.inst != "" {
				if err := inst.Put(indexKey(req.inst, seq), nil); err != nil {
					return err
				}
			}
			if req.ruleRef != "" {
				if err := rules.Put(indexKey(req.ruleRef, seq), nil); err != nil {
					return err
				}
			}
			resps[i] = eventResp{raw: raw}
			stored++
		}
		return nil
	})
	s.metrics.eventCommit.Observe(time.Since(start).Seconds())
	s.metrics.eventBatch.Observe(float64(len(batch)))
	if err != nil {
		s.log.Error("commit events", "events", len(batch), "err", err)
		stored = 0
	}
	s.metrics.eventsStored.Add(float64(stored))
	for i, req := range batch {
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

// indexKey is len(value) (2 bytes) | value | id (8 bytes): a prefix scan by
// value yields ids in order, and no value is a prefix of another's key.
func indexKey(value string, id uint64) []byte {
	k := make([]byte, 0, 2+len(value)+8)
	k = binary.BigEndian.AppendUint16(k, uint16(len(value)))
	k = append(k, value...)
	return binary.BigEndian.AppendUint64(k, id)
}

func indexPrefix(value string) []byte {
	k := make([]byte, 0, 2+len(value))
	k = binary.BigEndian.AppendUint16(k, uint16(len(value)))
	return append(k, value...)
}

// createEvent stores an event. A request whose Idempotency-Key is already
// stored gets 200 and the stored event; a new one 201.
func (s *Server) createEvent(w http.ResponseWriter, r *http.Request) {
	req, err := s.parseEvent(w, r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	// Fast path for a repeat: a read transaction does not wait for commits.
	if req.idemKey != "" {
		var raw []byte
		_ = s.db.View(func(tx *bolt.Tx) error {
			if id := tx.Bucket(bucketEventIdem).Get([]byte(req.idemKey)); id != nil {
				raw = bytes.Clone(tx.Bucket(bucketEvents).Get(id))
			}
			return nil
		})
		if raw != nil {
			s.metrics.eventsDup.Inc()
			writeData(w, http.StatusOK, raw)
			return
		}
	}
	select {
	case s.evq <- req:
	case <-s.quit:
		s.fail(w, r, ErrClosed)
		return
	}
	resp := <-req.resp // the committer always answers a request it took
	switch {
	case resp.err != nil:
		s.fail(w, r, resp.err)
	case resp.dup:
		writeData(w, http.StatusOK, resp.raw)
	default:
		writeData(w, http.StatusCreated, resp.raw)
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
	tref, ok, err := f.str("trigger_ref")
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, errorf(http.StatusBadRequest, "trigger_ref: required")
	}
	if err := checkName("trigger_ref", tref); err != nil {
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
	return &eventReq{body: b, idemKey: key, inst: inst, ruleRef: ruleRef, resp: make(chan eventResp, 1)}, nil
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
// trigger_instance_id through their indexes.
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
	err = s.db.View(func(tx *bolt.Tx) error {
		events := tx.Bucket(bucketEvents)
		collect := func(id []byte) {
			if total >= offset && len(items) < size {
				if v := events.Get(id); v != nil {
					items = append(items, bytes.Clone(v))
				}
			}
			total++
		}
		switch {
		case inst == "" && ruleRef == "":
			// Events are never deleted: ids are 1..Sequence().
			total = int64(events.Sequence())
			c := events.Cursor()
			for k, v := c.Seek(idKey(offset + 1)); k != nil && len(items) < size; k, v = c.Next() {
				items = append(items, bytes.Clone(v))
			}
		case inst != "":
			prefix := indexPrefix(inst)
			c := tx.Bucket(bucketEventInst).Cursor()
			for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
				id := k[len(prefix):]
				if ruleRef != "" && !eventHasRuleRef(events.Get(id), ruleRef) {
					continue
				}
				collect(id)
			}
		default:
			prefix := indexPrefix(ruleRef)
			c := tx.Bucket(bucketEventRule).Cursor()
			for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
				collect(k[len(prefix):])
			}
		}
		return nil
	})
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, listResponse{Items: items, Pagination: newPagination(page, size, total)})
}

func eventHasRuleRef(raw []byte, ref string) bool {
	var e struct {
		RuleRef *string `json:"rule_ref"`
	}
	return json.Unmarshal(raw, &e) == nil && e.RuleRef != nil && *e.RuleRef == ref
}
