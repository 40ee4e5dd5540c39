package ingest

import (
	"container/heap"
	"time"

	"github.com/timerd/timerd/ingest/backoff"
)

// breaker is the state of one rule whose events were rejected for good.
// After BreakerThreshold dead letters in a row it opens: the rule is paused,
// so that a rule answered 404 all day writes a few dead letters, not one per
// fire. While open, its events stay in the outbox, one of them (the probe)
// is posted with capped exponential backoff, and nothing of the rule is
// dead-lettered; the first delivery of the rule closes it.
type breaker struct {
	deadLetters int       // consecutive dead letters of the rule
	open        bool      // the rule is paused
	failures    int       // failed probes since it opened
	probeAt     time.Time // the next probe not before
	probe       *pending  // the entry held for the probe; nil: none yet
}

func (b *breaker) paused() bool { return b != nil && b.open }

// isFailure reports whether an outcome counts against a paused rule's probe.
func isFailure(k outcomeKind) bool {
	return k == outRetry || k == outDeadLetter
}

// rejected turns a 403 or 404 into a retry while the entry is inside its
// window, and into a dead letter after.
func (e *engine) rejected(p *pending) outcomeKind {
	now := time.Now()
	if p.firstRejected.IsZero() {
		p.firstRejected = now
	}
	if now.Sub(p.firstRejected) < e.d.cfg.RejectRetryWindow {
		return outRetry
	}
	return outDeadLetter
}

// countDeadLetter counts a dead letter of rule and opens its breaker at the
// threshold.
func (e *engine) countDeadLetter(rule int64) {
	d := e.d
	b := d.breakers[rule]
	if b == nil {
		b = &breaker{}
		d.breakers[rule] = b
	}
	b.deadLetters++
	if b.open || b.deadLetters < d.cfg.BreakerThreshold {
		return
	}
	b.open, b.failures = true, 0
	b.probeAt = time.Now().Add(d.cfg.ProbeMin)
	d.metrics.rulesPaused.Inc()
	d.metrics.rulePauses.Inc()
	d.log.Warn("rule paused: its events keep being rejected; they stay in the outbox and one is retried with backoff",
		"rule", rule, "dead_letters_in_a_row", b.deadLetters, "first_probe_in", d.cfg.ProbeMin.String())
}

// resetBreaker forgets rule's dead letters after a delivery, and resumes the
// rule if it was paused: its events left in the outbox are read again.
func (e *engine) resetBreaker(rule int64) {
	d := e.d
	b := d.breakers[rule]
	if b == nil {
		return
	}
	delete(d.breakers, rule)
	if !b.open {
		return
	}
	d.metrics.rulesPaused.Dec()
	d.log.Info("rule resumed: an event of it was delivered", "rule", rule, "failed_probes", b.failures)
	e.cursor, e.more = 0, true
	d.Notify()
}

// pausedFailure handles a failed entry of a paused rule: the probe waits for
// the next probe time; any other entry leaves the window and stays in the
// outbox, and the first one seen becomes the probe if there is none.
func (e *engine) pausedFailure(p *pending, b *breaker) {
	switch b.probe {
	case p:
		b.failures++
		b.probeAt = time.Now().Add(backoff.Delay(b.failures+1, e.d.cfg.ProbeMin, e.d.cfg.ProbeMax))
	case nil:
	default:
		delete(e.window, p.entry.Seq)
		return
	}
	e.scheduleProbe(p, b)
}

// scheduleProbe makes p the probe of b, due at the next probe time.
func (e *engine) scheduleProbe(p *pending, b *breaker) {
	b.probe = p
	p.due = b.probeAt
	heap.Push(&e.waiting, p)
}
