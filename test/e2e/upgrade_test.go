package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// previousRelease is the revision a rolling upgrade starts from
// (TestClusterRollingRestart runs its nodes on it, then restarts each on this
// build). timerd has no tagged release yet: this is the last commit of the
// previous working session. Move it forward at each release, so that every
// release is proven to take over, node by node, from the one before (its wire
// version and store schema: docs/operations.md#upgrades).
const previousRelease = "efe9e0f6456bfaa3c8f7b9e34b0865880ea76d84"

// buildRelease builds cmd/timerd of the revision rev of this repository (with
// -race, whose compiled dependencies the build of timerdBin left in the cache)
// into a temporary directory, from `git archive`: no worktree is registered.
func buildRelease(t *testing.T, rev string) string {
	t.Helper()
	top, err := exec.Command("git", "rev-parse", "--show-toplevel").Output()
	if err != nil {
		t.Fatalf("find the repository (the upgrade test builds %s from its history): %v", rev, err)
	}
	repo := strings.TrimSpace(string(top))
	if exec.Command("git", "-C", repo, "cat-file", "-e", rev+"^{commit}").Run() != nil {
		// A shallow clone (as some CI systems make) lacks it: fetch that one commit.
		if out, err := exec.Command("git", "-C", repo, "fetch", "--quiet", "--depth=1", "origin", rev).CombinedOutput(); err != nil {
			t.Fatalf("the clone lacks %s, the previous release, and fetching it from origin failed (clone with history): %v\n%s", rev, err, out)
		}
	}
	src := t.TempDir()
	archive := exec.Command("sh", "-c", `git -C "$1" archive --format=tar "$2" | tar -x -C "$3"`, "sh",
		repo, rev, src)
	if out, err := archive.CombinedOutput(); err != nil {
		t.Fatalf("git archive %s: %v\n%s", rev, err, out)
	}
	bin := filepath.Join(t.TempDir(), "timerd-"+rev[:7])
	begin := time.Now()
	build := exec.Command("go", append(buildArgs(), "-o", bin, "./cmd/timerd")...)
	build.Dir = src
	build.Env = append(os.Environ(), "GOFLAGS=-mod=readonly")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build timerd %s: %v\n%s", rev, err, out)
	}
	t.Logf("built timerd %s in %s", rev[:7], time.Since(begin).Round(100*time.Millisecond))
	return bin
}
