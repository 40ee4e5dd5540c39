package apiserver

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Bulk load: a test and operations path that puts many rules into the store at
// once (timerd api --load-rules FILE), where a POST each would take hours at a
// million rules. The file holds one rule a line, each the JSON body of
// POST /api/v1/rules, validated as the POST validates it. It is all or nothing:
// any bad line, a ref given twice or one already stored fails the load with an
// error naming the line, and nothing is stored. No lifecycle message is
// published: nodes learn of the rules at their next reconcile (at start-up, or
// every TIMERD_RECONCILE_INTERVAL).

// bulkFillPercent packs the pages of a bulk load: its keys (ids) only grow,
// so pages filled to 90% are never split again by it.
const bulkFillPercent = 0.9

// LoadRulesFile is LoadRules of the file at path.
func (s *Server) LoadRulesFile(path string) (int, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, fmt.Errorf("load rules: %w", err)
	}
	defer f.Close()
	n, err := s.LoadRules(f)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", path, err)
	}
	return n, nil
}

// LoadRules reads rules from r, one JSON object a line (blank lines are
// skipped), and stores them all in one transaction, ids in line order; it
// returns how many it stored. A line longer than MaxBodyBytes, one the POST
// would refuse, or a ref already stored or given on an earlier line fails the
// whole load: nothing is stored, and the error names the line.
func (s *Server) LoadRules(r io.Reader) (int, error) {
	now := s.cfg.Now().UTC()
	rules, err := parseRuleLines(r, now)
	if err != nil {
		return 0, err
	}
	if len(rules) == 0 {
		return 0, errors.New("load rules: no rule in the input")
	}
	s.ruleWriteMu.Lock()
	defer s.ruleWriteMu.Unlock()
	for _, lr := range rules {
		if s.cat.byRefGet(lr.ru.Ref) != nil {
			return 0, fmt.Errorf("load rules: line %d: rule %q already exists", lr.line, lr.ru.Ref)
		}
	}
	// The POST's creates go through the committer, which takes ruleWriteMu
	// for its whole batch: held here, none interleaves with the load.
	err = s.db.Update(func(tx *bolt.Tx) error {
		rb, refs := tx.Bucket(bucketRules), tx.Bucket(bucketRuleRefs)
		rb.FillPercent = bulkFillPercent
		for _, lr := range rules {
			if refs.Get([]byte(lr.ru.Ref)) != nil { // stored but not in the catalogue: not expected
				return fmt.Errorf("line %d: rule %q already exists", lr.line, lr.ru.Ref)
			}
			seq, err := rb.NextSequence()
			if err != nil {
				return err
			}
			lr.ru.ID = int64(seq)
			if err := putRule(tx, lr.ru); err != nil {
				return fmt.Errorf("line %d: %w", lr.line, err)
			}
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("load rules: %w", err)
	}
	s.cat.mu.Lock()
	for _, lr := range rules {
		s.cat.put(lr.ru)
	}
	s.cat.mu.Unlock()
	return len(rules), nil
}

type lineRule struct {
	line int
	ru   *rule
}

// parseRuleLines validates every line of r as a create at now.
func parseRuleLines(r io.Reader, now time.Time) ([]lineRule, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), MaxBodyBytes)
	var out []lineRule
	firstLine := map[string]int{} // ref → the line that names it
	line := 0
	for sc.Scan() {
		line++
		body := bytes.TrimSpace(sc.Bytes())
		if len(body) == 0 {
			continue
		}
		ru, err := newRuleOf(body, now)
		if err != nil {
			return nil, fmt.Errorf("load rules: line %d: %w", line, err)
		}
		if first, ok := firstLine[ru.Ref]; ok {
			return nil, fmt.Errorf("load rules: line %d: ref %q already given on line %d", line, ru.Ref, first)
		}
		firstLine[ru.Ref] = line
		out = append(out, lineRule{line: line, ru: ru})
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return nil, fmt.Errorf("load rules: line %d: longer than %d bytes (the POST's body limit)", line+1, MaxBodyBytes)
		}
		return nil, fmt.Errorf("load rules: after line %d: %w", line, err)
	}
	return out, nil
}
