package testvm_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/handoff-dev/handoff/testvm"
	"github.com/handoff-dev/handoff/testvm/qemutest"
)

// TestGuestBootsTicksDirtiesAndEchoes boots the real guest once and checks
// every promise it makes on that one boot: TCG boots are slow.
func TestGuestBootsTicksDirtiesAndEchoes(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	start := time.Now()
	_, err := testvm.Build(ctx, testvm.BuildOptions{Progress: testWriter{t}})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("Build: %v", time.Since(start))

	const rate = 4.0
	start = time.Now()
	q := qemutest.Boot(t, t.TempDir(), testvm.Params{DirtyMBps: rate, WSSMB: 32}, false)
	first := q.WaitFor("the first tick", 90*time.Second, func(s testvm.Status) bool { return s.Tick >= 1 })
	t.Logf("boot to first tick: %v wall, guest uptime %.2fs", time.Since(start), first.Uptime)

	a := q.WaitFor("tick 3", 30*time.Second, func(s testvm.Status) bool { return s.Tick >= 3 })
	screenA := q.Screendump("a.ppm")
	b := q.WaitFor("four more ticks", 30*time.Second, func(s testvm.Status) bool { return s.Tick >= a.Tick+4 })
	if a.Integrity != "ok" || b.Integrity != "ok" {
		t.Fatalf("integrity %q then %q (%s), want ok", a.Integrity, b.Integrity, b.Problem)
	}
	if b.Uptime <= a.Uptime {
		t.Errorf("uptime went from %.2f to %.2f", a.Uptime, b.Uptime)
	}
	// The agent's own count of what it wrote, against the rate asked.
	got := float64(b.DirtiedMB-a.DirtiedMB) / (b.Uptime - a.Uptime)
	if got < rate*0.6 || got > rate*1.4 {
		t.Errorf("guest dirtied %.1f MB/s between ticks %d and %d, want about %.1f", got, a.Tick, b.Tick, rate)
	}
	if screenB := q.Screendump("b.ppm"); bytes.Equal(screenA, screenB) {
		t.Error("the screen did not change between ticks: the counter is not drawn")
	}

	for _, key := range []string{"h", "i", "ret", "up"} {
		q.HMP("sendkey " + key)
	}
	q.WaitFor("typed keys in the serial log", 20*time.Second, func(s testvm.Status) bool { return s.Keys == "hi\r\x1b[A" })

	// The debug word damages the sealed region: FAIL must be reachable.
	for _, key := range []string{"shift-3", "c", "o", "r", "r", "u", "p", "t"} {
		q.HMP("sendkey " + key)
	}
	failed := q.WaitFor("integrity FAIL after #corrupt", 20*time.Second, func(s testvm.Status) bool { return s.Integrity == "FAIL" })
	if !strings.Contains(failed.Problem, "checksum") {
		t.Errorf("FAIL reason %q, want the sealed region's checksum", failed.Problem)
	}
	log, _ := os.ReadFile(q.Serial)
	if !bytes.Contains(log, []byte("integrity ok")) || !bytes.Contains(log, []byte("integrity FAIL")) {
		t.Error("the serial log lacks the literal words integrity ok / integrity FAIL")
	}
}

// TestBuildCachesAndRebuildsOnChange uses a cache of its own, seeded with
// the kernel the default cache already holds so nothing is downloaded again.
func TestBuildCachesAndRebuildsOnChange(t *testing.T) {
	ctx := context.Background()
	g, err := testvm.Build(ctx, testvm.BuildOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cache := t.TempDir()
	kernelDir := filepath.Dir(g.Kernel)
	dst := filepath.Join(cache, "kernels", filepath.Base(kernelDir))
	if err := os.MkdirAll(dst, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := copyFile(g.Kernel, filepath.Join(dst, "vmlinuz")); err != nil {
		t.Fatal(err)
	}
	agentA, agentB := filepath.Join(cache, "agent-a"), filepath.Join(cache, "agent-b")
	os.WriteFile(agentA, []byte("agent version A"), 0o755)
	os.WriteFile(agentB, []byte("agent version B"), 0o755)

	first, err := testvm.Build(ctx, testvm.BuildOptions{CacheDir: cache, AgentPath: agentA})
	if err != nil {
		t.Fatal(err)
	}
	stat1, _ := os.Stat(first.Initrd)
	again, err := testvm.Build(ctx, testvm.BuildOptions{CacheDir: cache, AgentPath: agentA})
	if err != nil {
		t.Fatal(err)
	}
	stat2, _ := os.Stat(again.Initrd)
	if again != first || !os.SameFile(stat1, stat2) || !stat1.ModTime().Equal(stat2.ModTime()) {
		t.Errorf("second Build with the same inputs gave %+v, want the cached %+v", again, first)
	}
	if first.Kernel != filepath.Join(dst, "vmlinuz") {
		t.Errorf("kernel %s, want the cached %s", first.Kernel, filepath.Join(dst, "vmlinuz"))
	}
	changed, err := testvm.Build(ctx, testvm.BuildOptions{CacheDir: cache, AgentPath: agentB})
	if err != nil {
		t.Fatal(err)
	}
	if changed.Initrd == first.Initrd {
		t.Error("a changed agent did not rebuild the initramfs")
	}
	if _, err := os.Stat(first.Initrd); !os.IsNotExist(err) {
		t.Errorf("the superseded initramfs is still cached: %v", err)
	}
}

func TestBuildWithoutAgentSaysWhatToDo(t *testing.T) {
	_, err := testvm.Build(context.Background(), testvm.BuildOptions{CacheDir: t.TempDir(), AgentPath: "/nonexistent/handoff-guest"})
	if err == nil || !strings.Contains(err.Error(), "guest agent") {
		t.Errorf("Build with a missing agent: %v, want an error about the guest agent", err)
	}
}

func copyFile(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, b, 0o644)
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}
