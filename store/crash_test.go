package store

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

const crashChildEnv = "TIMERD_STORE_CRASH_CHILD"

// TestCommitFiresSurvivesKill runs a child that commits batches of fires with fsync on
// and SIGKILLs it mid-stream. After reopening, every rule's watermark must count exactly
// its outbox entries, and all rules must agree: a batch is all there or not at all.
func TestCommitFiresSurvivesKill(t *testing.T) {
	if path := os.Getenv(crashChildEnv); path != "" {
		crashChild(path)
		return
	}
	const rules = 10
	path := filepath.Join(t.TempDir(), "crash.db")
	cmd := exec.Command(os.Args[0], "-test.run=^TestCommitFiresSurvivesKill$", "-test.count=1")
	cmd.Env = append(os.Environ(), crashChildEnv+"="+path)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(out)
	committed := 0
	for sc.Scan() && committed < 30 {
		if n, err := strconv.Atoi(sc.Text()); err == nil {
			committed = n
		}
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	if committed < 30 {
		t.Fatalf("child reported %d commits before exiting, want ≥ 30", committed)
	}

	s, err := Open(path, Options{})
	if err != nil {
		t.Fatalf("Open after SIGKILL: %v", err)
	}
	defer s.Close()
	perRule := map[int64]uint64{}
	for after := uint64(0); ; {
		page, err := s.Outbox(after, 1000)
		if err != nil {
			t.Fatal(err)
		}
		if len(page) == 0 {
			break
		}
		for _, e := range page {
			perRule[e.Event.RuleID]++
		}
		after = page[len(page)-1].Seq
	}
	n, _ := s.OutboxLen()
	if total := int(perRule[1]) * rules; n != total {
		t.Errorf("OutboxLen() = %d, want %d (%d batches of %d)", n, total, perRule[1], rules)
	}
	if perRule[1] < uint64(committed) {
		t.Errorf("outbox holds %d batches, but the child reported %d committed", perRule[1], committed)
	}
	for id := int64(1); id <= rules; id++ {
		_, wm, _, err := s.Rule(id)
		if err != nil {
			t.Fatal(err)
		}
		if wm.Count != perRule[id] || wm.Count != perRule[1] {
			t.Errorf("rule %d: watermark count %d, outbox entries %d (rule 1: %d); want all equal", id, wm.Count, perRule[id], perRule[1])
		}
	}
}

func crashChild(path string) {
	s, err := Open(path, Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, "child open:", err)
		os.Exit(2)
	}
	const rules = 10
	rs := make([]Rule, rules)
	for i := range rs {
		rs[i] = testRule(int64(i + 1))
	}
	if err := s.PutRules(rs, nil); err != nil {
		fmt.Fprintln(os.Stderr, "child put:", err)
		os.Exit(2)
	}
	deadline := time.Now().Add(30 * time.Second) // the parent kills us long before
	for k := 1; time.Now().Before(deadline); k++ {
		recs := make([]FireRecord, rules)
		for i := range recs {
			recs[i] = testFire(int64(i+1), t0.Add(time.Duration(k)*time.Minute), uint64(k))
		}
		if err := s.CommitFires(recs); err != nil {
			fmt.Fprintln(os.Stderr, "child commit:", err)
			os.Exit(2)
		}
		fmt.Println(k)
	}
	os.Exit(3)
}
