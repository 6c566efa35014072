package testvm_test

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/handoff-dev/handoff/testvm"
	"github.com/handoff-dev/handoff/testvm/qemutest"
)

// TestDebianGuestDiskIntegrity boots the Debian guest, cuts its power and
// boots it again on the same disk, then pairs saved memory with disks of
// other instants: ok where memory and disk belong together, FAIL where not.
func TestDebianGuestDiskIntegrity(t *testing.T) {
	start := time.Now()
	dir := t.TempDir()
	d, disk := qemutest.BuildDebian(t, dir, testvm.Params{DirtyMBps: 2, WSSMB: 32})
	// From the power cut on, no extra memory is dirtied: QEMU's save of a
	// dirtying guest under TCG sometimes restores a kernel that dies in its
	// timer code (README, "What we learned"), QEMU's fault, not the disk's.
	// The records, and what the agent keeps of them in memory, still change
	// every tick.
	still := d
	still.Params.DirtyMBps = 0
	t.Logf("BuildDebian (cached or not): %v", time.Since(start))

	start = time.Now()
	q := qemutest.BootDebian(t, sub(t, dir, "boot1"), d, disk, "")
	first := q.WaitFor("the first tick", 150*time.Second, func(s testvm.Status) bool { return s.Tick >= 1 })
	t.Logf("boot to first tick: %v wall, guest uptime %.1fs", time.Since(start), first.Uptime)
	if first.Starts != 1 || first.Start != (testvm.DiskStart{}) {
		t.Errorf("first boot's disk start %d× %+v, want one, on an empty disk", first.Starts, first.Start)
	}
	a := q.WaitFor("three ticks", 30*time.Second, func(s testvm.Status) bool { return s.Tick >= first.Tick+3 })
	screenA := q.Screendump("a.ppm")
	// Ticks that catch up after a slow boot come close together: wait for
	// the guest's clock too, so that 2 MB/s shows in whole MB.
	b := q.WaitFor("two more ticks, three seconds on", 30*time.Second, func(s testvm.Status) bool { return s.Tick >= a.Tick+2 && s.Uptime >= a.Uptime+3 })
	for _, s := range []testvm.Status{a, b} {
		if s.Integrity != "ok" || s.Disk != "ok" {
			t.Fatalf("tick %d: integrity %s, disk %s (%s), want ok", s.Tick, s.Integrity, s.Disk, s.Problem)
		}
	}
	if b.DiskSeq <= a.DiskSeq || b.DirtiedMB <= a.DirtiedMB {
		t.Errorf("from tick %d to %d disk_seq went %d to %d, dirtied_mb %d to %d: want both to grow", a.Tick, b.Tick, a.DiskSeq, b.DiskSeq, a.DirtiedMB, b.DirtiedMB)
	}
	if bytes.Equal(screenA, q.Screendump("b.ppm")) {
		t.Error("the screen did not change between ticks")
	}
	for _, key := range []string{"h", "i"} {
		q.HMP("sendkey " + key)
	}
	q.WaitFor("typed keys in the serial log", 20*time.Second, func(s testvm.Status) bool { return s.Keys == "hi" })

	// A power cut: every record reported fsynced must be there after it.
	cut := q.Status()
	q.Kill()
	start = time.Now()
	q = qemutest.BootDebian(t, sub(t, dir, "boot2"), still, disk, "")
	again := q.WaitFor("two ticks after the power cut", 150*time.Second, func(s testvm.Status) bool { return s.Tick >= 2 })
	t.Logf("boot after the cut to tick 2: %v; disk start %+v", time.Since(start), again.Start)
	if again.Start.Problem != "" || again.Start.Fsynced < cut.DiskSeq || again.Start.Records == 0 {
		t.Fatalf("after a cut at disk_seq %d the disk start says %+v, want every fsynced record there", cut.DiskSeq, again.Start)
	}
	if again.Integrity != "ok" || again.DiskSeq <= again.Start.Fsynced {
		t.Fatalf("after the cut: integrity %s (%s), disk_seq %d, want ok and new records past %d", again.Integrity, again.Problem, again.DiskSeq, again.Start.Fsynced)
	}

	// Memory and disk at instant A, then at a later instant B.
	memA, memB := filepath.Join(dir, "mem-a"), filepath.Join(dir, "mem-b")
	atA := q.WaitFor("a tick", 20*time.Second, func(s testvm.Status) bool { return s.Tick > again.Tick })
	q.SaveMemory(memA)
	diskA, diskA2 := filepath.Join(dir, "disk-a.qcow2"), filepath.Join(dir, "disk-a2.qcow2")
	for _, c := range []string{diskA, diskA2} {
		if err := testvm.CopyDisk(context.Background(), disk, c); err != nil {
			t.Fatal(err)
		}
	}
	q.Resume()
	q.WaitFor("four ticks past A", 30*time.Second, func(s testvm.Status) bool { return s.Tick >= atA.Tick+4 })
	q.SaveMemory(memB)
	q.Kill()

	restore := func(name, mem, disk string) *qemutest.Guest {
		t.Helper()
		start := time.Now()
		r := qemutest.BootDebian(t, sub(t, dir, name), still, disk, mem)
		r.WaitFor("a tick after the restore", 60*time.Second, func(s testvm.Status) bool { return s.Tick > 0 })
		t.Logf("%s: restored to a tick in %v", name, time.Since(start))
		return r
	}
	// The control: memory A with the disk of A runs on, all ok.
	r := restore("a-with-a", memA, diskA)
	ok := r.WaitFor("three ticks", 30*time.Second, func(s testvm.Status) bool { return s.Tick >= atA.Tick+3 || s.Integrity == "FAIL" })
	if ok.Integrity != "ok" || ok.Disk != "ok" {
		t.Fatalf("memory A on disk A: integrity %s (%s), want ok", ok.Integrity, ok.Problem)
	}
	r.Kill()

	for _, tc := range []struct{ name, mem, disk, want string }{
		{"a-with-b", memA, disk, "the disk is from a later instant than memory"},
		{"b-with-a", memB, diskA2, "the disk is from an earlier instant than memory"},
	} {
		r := restore(tc.name, tc.mem, tc.disk)
		failed := r.WaitFor("integrity FAIL", 30*time.Second, func(s testvm.Status) bool { return s.Integrity == "FAIL" })
		if failed.Disk != "FAIL" || !strings.Contains(failed.DiskProblem, tc.want) {
			t.Errorf("%s: disk %s, %q; want FAIL saying %q", tc.name, failed.Disk, failed.DiskProblem, tc.want)
		}
		if !strings.HasPrefix(failed.Problem, "disk: ") {
			t.Errorf("%s: problem %q, want it to name the disk", tc.name, failed.Problem)
		}
		r.Kill()
	}
}

// TestBuildDebianCachesByLayer starts from a copy of the cached tree, so
// no debootstrap runs: a new agent makes a new disk from the same tree,
// the same agent takes the cached disk, and builders at once agree.
func TestBuildDebianCachesByLayer(t *testing.T) {
	ctx := context.Background()
	g, err := testvm.BuildDebian(ctx, testvm.BuildOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cache := t.TempDir()
	tree := filepath.Dir(g.Kernel)
	if err := os.MkdirAll(filepath.Join(cache, "debian"), 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("cp", "-a", tree, filepath.Join(cache, "debian")).CombinedOutput(); err != nil {
		t.Fatalf("copy the tree: %v: %s", err, out)
	}
	agent := func(name string) string {
		p := filepath.Join(cache, name)
		os.WriteFile(p, []byte("agent "+name), 0o755)
		return p
	}
	a, b := agent("a"), agent("b")
	build := func(agentPath string) (testvm.DebianGuest, string, time.Duration) {
		t.Helper()
		var log bytes.Buffer
		start := time.Now()
		g, err := testvm.BuildDebian(ctx, testvm.BuildOptions{CacheDir: cache, AgentPath: agentPath, Progress: &log})
		if err != nil {
			t.Fatal(err)
		}
		return g, log.String(), time.Since(start)
	}
	first, log, took := build(a)
	t.Logf("disk layer alone: %v", took)
	if strings.Contains(log, "debootstrap") || !strings.Contains(log, "making the Debian guest's disk") {
		t.Errorf("a new agent on a cached tree logged %q, want a new disk and no debootstrap", log)
	}
	if filepath.Dir(first.Kernel) != filepath.Join(cache, "debian", filepath.Base(tree)) {
		t.Errorf("kernel %s, want the copied tree's", first.Kernel)
	}
	info, err := exec.Command("qemu-img", "info", first.Disk).CombinedOutput()
	if err != nil || !strings.Contains(string(info), "compat: 1.1") || !strings.Contains(string(info), "virtual size: 3 GiB") {
		t.Errorf("qemu-img info: %v\n%s\nwant qcow2 v3 (compat 1.1) of 3 GiB", err, info)
	}
	again, log, _ := build(a)
	if again != first || log != "" {
		t.Errorf("the same inputs again gave %+v and logged %q, want the cached %+v", again, log, first)
	}
	hourAgo := time.Now().Add(-time.Hour)
	os.Chtimes(first.Disk, hourAgo, hourAgo) // superseded long ago: removed
	changed, _, _ := build(b)
	if changed.Disk == first.Disk || changed.Kernel != first.Kernel {
		t.Errorf("a changed agent gave %+v, want a new disk on the same tree as %+v", changed, first)
	}
	if _, err := os.Stat(first.Disk); !os.IsNotExist(err) {
		t.Errorf("the superseded disk is still cached: %v", err)
	}

	// Builders at once: each builds aside and renames into place.
	c := agent("c")
	var wg sync.WaitGroup
	got := make([]testvm.DebianGuest, 2)
	errs := make([]error, 2)
	for i := range got {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got[i], errs[i] = testvm.BuildDebian(ctx, testvm.BuildOptions{CacheDir: cache, AgentPath: c})
		}()
	}
	wg.Wait()
	if errs[0] != nil || errs[1] != nil || got[0] != got[1] {
		t.Fatalf("two builders at once: %+v %v / %+v %v", got[0], errs[0], got[1], errs[1])
	}
	if _, err := os.Stat(changed.Disk); err != nil {
		t.Errorf("a disk made minutes ago was removed by a builder with other inputs: %v", err)
	}
	if out, err := exec.Command("qemu-img", "check", got[0].Disk).CombinedOutput(); err != nil {
		t.Errorf("qemu-img check after two builders: %v: %s", err, out)
	}
	left, _ := filepath.Glob(filepath.Join(cache, "debian", "tmp-*"))
	if len(left) != 0 {
		t.Errorf("build directories left behind: %v", left)
	}
}

func TestBuildDebianSaysWhenTheMirrorIsUnreachable(t *testing.T) {
	// Port 9 (discard) on loopback: nothing listens there.
	_, err := testvm.BuildDebian(context.Background(), testvm.BuildOptions{CacheDir: t.TempDir(), Mirror: "http://127.0.0.1:9/debian"})
	if err == nil || !strings.Contains(err.Error(), "cannot reach the Debian mirror") {
		t.Errorf("BuildDebian with an unreachable mirror: %v", err)
	}
}

func TestBuildDebianSaysWhatIsMissing(t *testing.T) {
	// No debootstrap on the PATH.
	t.Run("debootstrap", func(t *testing.T) {
		t.Setenv("PATH", t.TempDir())
		_, err := testvm.BuildDebian(context.Background(), testvm.BuildOptions{CacheDir: t.TempDir()})
		if err == nil || !strings.Contains(err.Error(), "debootstrap is not installed: run make deps") {
			t.Errorf("BuildDebian without debootstrap: %v", err)
		}
	})
	// A cache on a file system too small for the tree.
	t.Run("room", func(t *testing.T) {
		small := t.TempDir()
		if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=64m", "handoff-test", small).CombinedOutput(); err != nil {
			t.Fatalf("mount a small tmpfs: %v: %s", err, out)
		}
		t.Cleanup(func() { exec.Command("umount", small).Run() })
		_, err := testvm.BuildDebian(context.Background(), testvm.BuildOptions{CacheDir: small})
		if err == nil || !strings.Contains(err.Error(), "MB free in") || !strings.Contains(err.Error(), "needs about") {
			t.Errorf("BuildDebian on a 64 MB file system: %v", err)
		}
	})
}

func sub(t *testing.T, dir, name string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.Mkdir(p, 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}
