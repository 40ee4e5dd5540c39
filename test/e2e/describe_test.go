package e2e

import (
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/timerd/timerd/cmd/timerd/node"
	"github.com/timerd/timerd/test/testkit"
)

// describeRule runs `timerd rules describe id --addr nodeURL` (--json when
// asJSON) and returns its stdout.
func describeRule(t *testing.T, nodeURL string, id int64, asJSON bool) (string, error) {
	t.Helper()
	args := []string{"rules", "describe", fmt.Sprint(id), "--addr", nodeURL}
	if asJSON {
		args = append(args, "--json")
	}
	cmd := exec.Command(timerdBin, args...)
	cmd.Env = cleanEnv()
	out, err := cmd.Output()
	if ee := (*exec.ExitError)(nil); errors.As(err, &ee) {
		err = fmt.Errorf("%w: %s", err, ee.Stderr)
	}
	return string(out), err
}

func describeJSON(t *testing.T, nodeURL string, id int64) (node.RuleDescription, error) {
	t.Helper()
	out, err := describeRule(t, nodeURL, id, true)
	if err != nil {
		return node.RuleDescription{}, err
	}
	var d node.RuleDescription
	err = json.Unmarshal([]byte(out), &d)
	return d, err
}

// Three agents: `timerd rules describe` on a node that does not own a rule
// prints the owner's answer, forwarded; after the owner is killed (SIGKILL) a
// survivor answers either with the new owner's description or with its own
// and the old owner unreachable, and soon with the new owner's.
func TestDescribeRuleAcrossCluster(t *testing.T) {
	t.Parallel()
	start := time.Now()
	c := newTCluster(t, "TIMERD_EXPECT=3")
	ids := c.createRules("describe", "core.intervaltimer", 12, func(int) map[string]any {
		return map[string]any{"interval": 1, "jitter": "300ms"}
	})
	three := startThree(c, ids)
	c.waitKnown(len(ids))
	t.Logf("3 nodes running %s after the start", time.Since(start).Round(100*time.Millisecond))
	victim := c.node("n2").name
	var id int64
	for rid, owner := range ringOwners(t, three, ids) {
		if owner == victim {
			id = rid
			break
		}
	}
	if id == 0 {
		t.Fatalf("none of %d rules is n2's", len(ids))
	}
	n1, n2 := c.node("n1").ag.nodeURL, c.node("n2").ag.nodeURL
	testkit.Eventually(t, 20*time.Second, "n2 fired the rule twice", func() bool {
		d, err := describeJSON(t, n2, id)
		return err == nil && d.Watermark != nil && d.Watermark.Count >= 2 && len(d.Lateness) >= 2
	})

	// Asked on n1, answered by n2: the same description as n2's own.
	viaN1, err := describeJSON(t, n1, id)
	if err != nil {
		t.Fatalf("describe %d on n1: %v", id, err)
	}
	atN2, err := describeJSON(t, n2, id)
	if err != nil {
		t.Fatalf("describe %d on n2: %v", id, err)
	}
	if viaN1.AnsweredBy != victim || viaN1.ForwardedBy != c.node("n1").name || viaN1.Owner != victim ||
		"http://"+viaN1.OwnerHTTPAddr != n2 || !viaN1.State.Firing || viaN1.OwnerUnreachable != "" {
		t.Errorf("describe %d on n1: answered by %q, forwarded by %q, owner %q at %q, firing %v, unreachable %q; "+
			"want n2's answer (%s at %s) forwarded by n1", id, viaN1.AnsweredBy, viaN1.ForwardedBy, viaN1.Owner,
			viaN1.OwnerHTTPAddr, viaN1.State.Firing, viaN1.OwnerUnreachable, victim, n2)
	}
	if atN2.AnsweredBy != victim || atN2.ForwardedBy != "" || *atN2.Partition != *viaN1.Partition ||
		fmt.Sprint(*atN2.Schedule) != fmt.Sprint(*viaN1.Schedule) || atN2.Schedule.Jitter != "300ms" ||
		atN2.Watermark.Count < viaN1.Watermark.Count || atN2.Watermark.Count > viaN1.Watermark.Count+3 {
		t.Errorf("describe %d on n2 = %+v, on n1 = %+v: want the same owner's answer", id, atN2, viaN1)
	}
	text, err := describeRule(t, n1, id, false)
	if err != nil || !strings.Contains(text, victim+" (forwarded by "+c.node("n1").name+")") ||
		!strings.Contains(text, "NEXT SLOT") || !strings.Contains(text, "FIRED SLOT") {
		t.Errorf("describe %d on n1, text: %v\n%s\nwant n2's answer forwarded by n1, next slots and fires", id, err, text)
	}
	t.Logf("describe %d on n1 before the crash:\n%s", id, text)

	// The owner crashes: n1 answers at once, with the new owner's description or
	// its own and n2 unreachable; within seconds the new owner fires the rule.
	c.kill("n2")
	killed := time.Now()
	d, err := describeJSON(t, n1, id)
	switch {
	case err != nil:
		t.Errorf("describe %d on n1 right after the crash: %v", id, err)
	case d.Owner == victim && !strings.HasPrefix(d.OwnerUnreachable, strings.TrimPrefix(n2, "http://")+": "):
		t.Errorf("describe %d on n1 right after the crash: owner %q, unreachable %q; want n2's address and why", id, d.Owner, d.OwnerUnreachable)
	case d.Owner == victim && (d.AnsweredBy != c.node("n1").name || !d.State.Known || d.Schedule == nil):
		t.Errorf("describe %d on n1 right after the crash: answered by %q, state %+v; want n1's own knowledge", id, d.AnsweredBy, d.State)
	case d.Owner != victim && d.AnsweredBy == victim:
		t.Errorf("describe %d on n1 right after the crash: answered by the dead %s", id, victim)
	}
	if d.OwnerUnreachable != "" {
		text, _ := describeRule(t, n1, id, false)
		t.Logf("describe %d on n1 right after the crash:\n%s", id, text)
	}
	var after node.RuleDescription
	testkit.Eventually(t, 20*time.Second, "a survivor owns and fires the rule", func() bool {
		after, err = describeJSON(t, n1, id)
		return err == nil && after.Owner != victim && after.AnsweredBy == after.Owner && after.State.Firing &&
			after.Watermark != nil && after.Watermark.Count > viaN1.Watermark.Count && after.OwnerUnreachable == ""
	})
	t.Logf("the new owner %s answers %s after the crash", after.Owner, time.Since(killed).Round(100*time.Millisecond))
	text, _ = describeRule(t, n1, id, false)
	t.Logf("describe %d on n1 after the hand-over:\n%s", id, text)

	// `timerd rules fire` asked on n1 is the new owner's to send.
	var fr node.FireResult
	if err := json.Unmarshal([]byte(timerdOut(t, "rules", "fire", fmt.Sprint(id), "--addr", n1, "--json")), &fr); err != nil {
		t.Fatalf("timerd rules fire: %v", err)
	}
	if fr.AnsweredBy != after.Owner || fr.AnsweredBy != c.node("n1").name && fr.ForwardedBy != c.node("n1").name ||
		!strings.HasPrefix(fr.IdempotencyKey, fmt.Sprintf("%d:manual:", id)) {
		t.Errorf("timerd rules fire %d on n1 after the crash: %+v; want the new owner %s's answer", id, fr, after.Owner)
	}
}
