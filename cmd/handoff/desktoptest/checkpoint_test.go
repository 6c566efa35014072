package desktoptest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/handoff-dev/handoff/checkout"
	"github.com/handoff-dev/handoff/leasectl"
	"github.com/handoff-dev/handoff/testvm/lab/labtest"
)

// TestALostLaptopCostsOneCheckpoint grabs the desktop with a short
// checkpoint interval and waits for a checkpoint committed under the
// lease. Then the laptop is "lost": another device steals the lease, and
// the grab's next checkpoint is refused and kept as a branch, as its
// screen says; the grab is killed (kill -9) and the laptop's VM destroyed.
// handoff restore starts the VM on the server from the last commit: the
// guest runs on from that instant, its memory and its disk records agree,
// and its VM generation ID is new.
func TestALostLaptopCostsOneCheckpoint(t *testing.T) {
	failOnGuestDeath(t, lostLaptop)
}

func lostLaptop(t *testing.T) error {
	ctx := context.Background()
	leases, image := onServerLeaseFree(t)
	genID := serverGenID(t)
	if genID == "" {
		t.Fatal("the lab's desktop guest has no VM generation ID")
	}
	before := headOf(t, leases, image)
	cmdline := fmt.Sprintf("%s grab --lab %s --checkpoint-every 15s", bin, theLab.Dir)
	term := labtest.NewTerminal(t, "grab-checkpoints", 200, 60, fmt.Sprintf("XDG_CACHE_HOME=%s %s", t.TempDir(), cmdline))
	// The grab itself, not the shell in the terminal that started it.
	kill := func() { exec.Command("pkill", "-9", "-f", "^"+regexp.QuoteMeta(cmdline)).Run() }
	t.Cleanup(kill)
	term.WaitFor("running here", 4*time.Minute)
	if died := guestWell(t, "workstation"); died != nil {
		return died
	}
	sc := term.WaitFor("sent, pause", 4*time.Minute)
	if row := regexp.MustCompile(`saved +\d+s ago \([^)]*\)`).FindString(sc); row == "" {
		t.Errorf("the dashboard does not show the checkpoint's age:\n%s", sc)
	} else {
		t.Logf("the dashboard: %s", row)
	}
	st, err := leases.Status(ctx, image)
	if err != nil {
		t.Fatal(err)
	}
	if st.Head == before || st.Lease == nil {
		t.Fatalf("no commit under the lease after the dashboard showed one: head %q (was %q), lease %+v", st.Head, before, st.Lease)
	}
	committed := st.Commits[len(st.Commits)-1]
	if committed.Epoch != st.Lease.Epoch || committed.Epoch == 0 {
		t.Errorf("the checkpoint's commit has epoch %d, the lease %d: a commit is fenced by the lease's epoch", committed.Epoch, st.Lease.Epoch)
	}
	if saved, err := checkout.SavedFromMeta(committed.Manifest.Meta); err != nil {
		t.Errorf("the commit's manifest is no checkpoint: %v (%+v)", err, committed.Manifest)
	} else if saved.MemoryRecipe.IsZero() {
		// The restore below then starts the guest from memory the server
		// put back together from the page image and its recipe.
		t.Errorf("the checkpoint's memory went whole, not as its pages lined up with the chunks: %+v", committed.Manifest)
	}

	// The laptop is lost: another device takes the lease over.
	if _, err := leases.Steal(ctx, image, "rescuer", "the laptop was lost", 5*time.Minute); err != nil {
		t.Fatal(err)
	}
	term.WaitFor("as branch", 3*time.Minute)
	st, err = leases.Status(ctx, image)
	if err != nil {
		t.Fatal(err)
	}
	if st.Lease.Holder != "rescuer" || st.Commits[len(st.Commits)-1].ID != committed.ID && st.Commits[len(st.Commits)-1].Holder == "rescuer" {
		t.Errorf("after the steal: lease %+v, commits %+v", st.Lease, st.Commits)
	}
	branch := ""
	for _, e := range st.Log {
		if name, ok := strings.CutPrefix(e.Detail, "to "); ok && e.Kind == "branch" {
			branch = name
		}
	}
	if b, err := leases.Status(ctx, branch); err != nil || len(b.Commits) == 0 || b.BranchOf == "" {
		t.Errorf("the refused checkpoint is not kept as a branch on the server: %q %+v, %v", branch, b, err)
	}
	kill()
	// Gone when pgrep no longer finds it: the shell's "EXITED 137" lands
	// where the killed app left the cursor, and may wrap across lines.
	for deadline := time.Now().Add(30 * time.Second); exec.Command("pgrep", "-f", "^"+regexp.QuoteMeta(cmdline)).Run() == nil; {
		if time.Now().After(deadline) {
			t.Fatalf("the grab still runs 30 s after kill -9")
		}
		time.Sleep(200 * time.Millisecond)
	}
	if r := labtest.Run(t, "virsh", "-c", theLab.Workstation.URI, "destroy", image); r.Code != 0 {
		t.Fatalf("virsh destroy on the workstation: %s%s", r.Stdout, r.Stderr)
	}
	lostAt := status(t).GuestTick
	logged := serialSize(t)

	r := handoff(t, t.TempDir(), "restore", "--lab", theLab.Dir, "--holder", "rescuer")
	if r.Code != 0 {
		t.Fatalf("handoff restore: exit %d\n%s%s", r.Code, r.Stdout, r.Stderr)
	}
	t.Logf("handoff restore:\n%s", r.Stdout)
	if !strings.Contains(r.Stdout, "from commit ") {
		t.Errorf("restore does not say which commit it started from:\n%s", r.Stdout)
	}
	waitHost(t, "server", time.Minute)
	if back := firstTickAfter(t, logged); back >= lostAt {
		t.Errorf("the restored guest said tick %d first, the lost one was at %d: it should run on from the checkpoint, earlier", back, lostAt)
	}
	if died := guestWell(t, "server"); died != nil {
		return died
	}
	if now := serverGenID(t); now == "" || now == genID || !strings.Contains(r.Stdout, now) {
		t.Errorf("VM generation ID %q after the restore, %q before; restore said:\n%s", now, genID, r.Stdout)
	}
	if st, err := leases.Status(ctx, image); err != nil || st.Lease != nil && time.Now().Before(st.Lease.Expires) {
		t.Errorf("the rescuer's lease is still held after the restore: %+v, %v", st, err)
	}
	return nil
}

func headOf(t *testing.T, c *leasectl.Client, image string) string {
	t.Helper()
	st, err := c.Status(context.Background(), image)
	if err != nil {
		t.Fatal(err)
	}
	return st.Head
}

var genIDValue = regexp.MustCompile(`<genid>([^<]+)</genid>`)

// serverGenID is the VM generation ID of the server's definition.
func serverGenID(t *testing.T) string {
	t.Helper()
	r := labtest.Run(t, "virsh", "-c", theLab.Server.URI, "dumpxml", "--inactive", theLab.Domain())
	if r.Code != 0 {
		t.Fatalf("virsh dumpxml: %s", r.Stderr)
	}
	if m := genIDValue.FindStringSubmatch(r.Stdout); m != nil {
		return m[1]
	}
	return ""
}

func serialSize(t *testing.T) int64 {
	t.Helper()
	fi, err := os.Stat(theLab.SerialLog)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

var tickLine = regexp.MustCompile(`handoff-guest tick=(\d+)`)

// firstTickAfter is the first tick the guest printed past offset of its
// serial log.
func firstTickAfter(t *testing.T, offset int64) int {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		b, err := os.ReadFile(theLab.SerialLog)
		if err != nil {
			t.Fatal(err)
		}
		if m := tickLine.FindSubmatch(b[min(offset, int64(len(b))):]); m != nil {
			n, _ := strconv.Atoi(string(m[1]))
			return n
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("the guest printed no tick within a minute after offset %d of %s", offset, theLab.SerialLog)
	return 0
}

// TestCheckpointsWaitOutALostLink cuts the lab link for longer than two
// checkpoint intervals while the VM runs here: the VM runs on, the
// checkpoint taken meanwhile waits here (the dashboard says so), and once
// the link is back it lands as a commit under the lease, which held.
func TestCheckpointsWaitOutALostLink(t *testing.T) {
	failOnGuestDeath(t, func(t *testing.T) error {
		ctx := context.Background()
		leases, image := onServerLeaseFree(t)
		term := labtest.NewTerminal(t, "grab-offline", 200, 60, fmt.Sprintf("XDG_CACHE_HOME=%s %s grab --lab %s --checkpoint-every 15s", t.TempDir(), bin, theLab.Dir))
		term.WaitFor("running here", 4*time.Minute)
		term.WaitFor("sent, pause", 4*time.Minute)
		before, err := leases.Status(ctx, image)
		if err != nil {
			t.Fatal(err)
		}
		if err := theLab.SetLink(ctx, false); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { theLab.SetLink(ctx, true) })
		cut := time.Now()
		term.WaitFor("waits for the link", 90*time.Second)
		time.Sleep(time.Until(cut.Add(40 * time.Second)))
		if died := guestWell(t, "workstation"); died != nil {
			return died
		}
		if err := theLab.SetLink(ctx, true); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(2 * time.Minute)
		var after *leasectl.State
		for {
			if after, err = leases.Status(ctx, image); err == nil && len(after.Commits) > len(before.Commits) && !strings.Contains(term.Screen(false), "waits for the link") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("no checkpoint landed within 2 minutes of the link's return (%d commits before the cut, %+v now):\n%s", len(before.Commits), after, term.Screen(false))
			}
			time.Sleep(time.Second)
		}
		last := after.Commits[len(after.Commits)-1]
		if after.Lease == nil || last.Epoch != after.Lease.Epoch || last.Epoch != before.Lease.Epoch {
			t.Errorf("the checkpoint after the cut was not committed under the lease that held through it: commit %+v, lease before %+v, after %+v", last, before.Lease, after.Lease)
		}
		t.Logf("%d commits before the cut of %v, %d after the link came back", len(before.Commits), 40*time.Second, len(after.Commits))
		if died := guestWell(t, "workstation"); died != nil {
			return died
		}
		term.Keys("C-]", "h")
		waitHost(t, "server", 4*time.Minute)
		term.WaitFor("phase    on the server", time.Minute)
		died := guestWell(t, "server")
		term.Keys("C-]", "q")
		term.WaitFor("EXITED 0", 30*time.Second)
		return died
	})
}

// onServerLeaseFree starts an attempt: the guest well on the server, and
// its image's lease free to take, as an earlier attempt whose grab was
// killed may have left it held until it expires.
func onServerLeaseFree(t *testing.T) (*leasectl.Client, string) {
	t.Helper()
	startOnServer(t)
	c, err := theLab.LeaseClient()
	if err != nil {
		t.Fatal(err)
	}
	image := theLab.Domain()
	freeLease(t, c, image)
	return c, image
}

func freeLease(t *testing.T, c *leasectl.Client, image string) {
	t.Helper()
	ctx := context.Background()
	if err := c.Create(ctx, image); err != nil && !errors.Is(err, leasectl.ErrExists) {
		t.Fatal(err)
	}
	st, err := c.Status(ctx, image)
	if err != nil {
		t.Fatal(err)
	}
	if st.Lease == nil || !time.Now().Before(st.Lease.Expires) {
		return
	}
	l, err := c.Steal(ctx, image, "test", "a fresh attempt", time.Minute)
	if err == nil {
		err = c.Release(ctx, image, l.ID)
	}
	if err != nil {
		t.Fatalf("free the lease of %s for this attempt: %v", image, err)
	}
}

// TestACheckpointHasTheGuestFlushFirst: the Debian guest runs
// qemu-guest-agent, so a checkpoint has it write its dirty pages out (and
// drop its clean caches, asked to) just before the snapshot and says how
// long that took; asked for no flush, it says none was asked for. The
// guest keeps its integrity through both.
func TestACheckpointHasTheGuestFlushFirst(t *testing.T) {
	failOnGuestDeath(t, func(t *testing.T) error {
		cache := t.TempDir()
		onServerLeaseFree(t)
		migrateJSON(t, cache)
		if died := guestWell(t, "workstation"); died != nil {
			return died
		}
		for _, tc := range []struct {
			flush, noFlush string
			flushed        bool
		}{{"drop", "", true}, {"none", "not asked for", false}} {
			r := handoff(t, cache, "checkpoint", "--lab", theLab.Dir, "--json", "--flush", tc.flush)
			if r.Code != 0 {
				t.Fatalf("handoff checkpoint --flush %s: exit %d\n%s%s", tc.flush, r.Code, r.Stdout, r.Stderr)
			}
			lines := strings.Split(strings.TrimSpace(r.Stdout), "\n")
			var cp struct {
				FlushMs int64  `json:"flush_ms"`
				NoFlush string `json:"no_flush"`
				Commit  string `json:"commit"`
			}
			if err := json.Unmarshal([]byte(lines[len(lines)-1]), &cp); err != nil || cp.Commit == "" {
				t.Fatalf("handoff checkpoint --json: %v: %s", err, r.Stdout)
			}
			t.Logf("--flush %s: flushed in %d ms (%q)", tc.flush, cp.FlushMs, cp.NoFlush)
			if cp.NoFlush != tc.noFlush || (cp.FlushMs > 0) != tc.flushed {
				t.Errorf("--flush %s: flushed %d ms, none because %q; want flushed %v, none because %q", tc.flush, cp.FlushMs, cp.NoFlush, tc.flushed, tc.noFlush)
			}
		}
		if died := guestWell(t, "workstation"); died != nil {
			return died
		}
		migrateJSON(t, cache)
		return guestWell(t, "server")
	})
}
