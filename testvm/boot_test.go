package testvm

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// qemuGuest is the test guest booted by plain QEMU (no libvirt), with its
// serial log in a file and its HMP monitor on a unix socket.
type qemuGuest struct {
	dir, serial string
	mon         net.Conn
	monReader   *bufio.Reader
}

func bootGuest(t *testing.T, g Guest, p Params) *qemuGuest {
	t.Helper()
	dir := t.TempDir()
	q := &qemuGuest{dir: dir, serial: filepath.Join(dir, "serial.log")}
	monSock := filepath.Join(dir, "mon.sock")
	cmd := exec.Command("qemu-system-x86_64", "-accel", "tcg", "-m", "256", "-nodefaults", "-no-reboot",
		"-kernel", g.Kernel, "-initrd", g.Initrd, "-append", p.KernelArgs(),
		"-vga", "std", "-display", "none",
		"-serial", "file:"+q.serial,
		"-monitor", "unix:"+monSock+",server,nowait")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start qemu: %v", err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			log, _ := os.ReadFile(q.serial)
			t.Logf("qemu stderr: %s\nserial log:\n%s", stderr.Bytes(), log)
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("unix", monSock)
		if err == nil {
			q.mon, q.monReader = c, bufio.NewReader(c)
			t.Cleanup(func() { c.Close() })
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("qemu monitor never came up: %v (%s)", err, stderr.Bytes())
		}
		time.Sleep(50 * time.Millisecond)
	}
	q.readPrompt(t)
	return q
}

func (q *qemuGuest) readPrompt(t *testing.T) string {
	t.Helper()
	q.mon.SetReadDeadline(time.Now().Add(30 * time.Second))
	var out strings.Builder
	for !strings.HasSuffix(out.String(), "(qemu) ") {
		b, err := q.monReader.ReadByte()
		if err != nil {
			t.Fatalf("read qemu monitor: %v (so far %q)", err, out.String())
		}
		out.WriteByte(b)
	}
	return out.String()
}

func (q *qemuGuest) hmp(t *testing.T, cmd string) string {
	t.Helper()
	if _, err := fmt.Fprintf(q.mon, "%s\n", cmd); err != nil {
		t.Fatalf("monitor %s: %v", cmd, err)
	}
	return q.readPrompt(t)
}

func (q *qemuGuest) status(t *testing.T) Status {
	t.Helper()
	f, err := os.Open(q.serial)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, err := ParseSerialLog(f)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// waitFor polls the serial log until cond holds, for at most limit.
func (q *qemuGuest) waitFor(t *testing.T, what string, limit time.Duration, cond func(Status) bool) Status {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		st := q.status(t)
		if cond(st) {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("waited %v for %s; last status %+v", limit, what, st)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func (q *qemuGuest) screendump(t *testing.T, name string) []byte {
	t.Helper()
	path := filepath.Join(q.dir, name)
	q.hmp(t, "screendump "+path)
	b, err := os.ReadFile(path)
	if err != nil || len(b) < 1000 {
		t.Fatalf("screendump %s: %d bytes, %v", name, len(b), err)
	}
	return b
}

// TestGuestBootsTicksDirtiesAndEchoes boots the real guest once and checks
// every promise it makes on that one boot: TCG boots are slow.
func TestGuestBootsTicksDirtiesAndEchoes(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	start := time.Now()
	g, err := Build(ctx, BuildOptions{Progress: testWriter{t}})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("Build: %v", time.Since(start))

	const rate = 4.0
	start = time.Now()
	q := bootGuest(t, g, Params{DirtyMBps: rate, WSSMB: 32})
	first := q.waitFor(t, "the first tick", 90*time.Second, func(s Status) bool { return s.Tick >= 1 })
	t.Logf("boot to first tick: %v wall, guest uptime %.2fs", time.Since(start), first.Uptime)

	a := q.waitFor(t, "tick 3", 30*time.Second, func(s Status) bool { return s.Tick >= 3 })
	screenA := q.screendump(t, "a.ppm")
	b := q.waitFor(t, "four more ticks", 30*time.Second, func(s Status) bool { return s.Tick >= a.Tick+4 })
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
	if screenB := q.screendump(t, "b.ppm"); bytes.Equal(screenA, screenB) {
		t.Error("the screen did not change between ticks: the counter is not drawn")
	}

	for _, key := range []string{"h", "i", "ret", "up"} {
		q.hmp(t, "sendkey "+key)
	}
	q.waitFor(t, "typed keys in the serial log", 20*time.Second, func(s Status) bool { return s.Keys == "hi\r\x1b[A" })

	// The debug word damages the sealed region: FAIL must be reachable.
	for _, key := range []string{"shift-3", "c", "o", "r", "r", "u", "p", "t"} {
		q.hmp(t, "sendkey "+key)
	}
	failed := q.waitFor(t, "integrity FAIL after #corrupt", 20*time.Second, func(s Status) bool { return s.Integrity == "FAIL" })
	if !strings.Contains(failed.Problem, "checksum") {
		t.Errorf("FAIL reason %q, want the sealed region's checksum", failed.Problem)
	}
	log, _ := os.ReadFile(q.serial)
	if !bytes.Contains(log, []byte("integrity ok")) || !bytes.Contains(log, []byte("integrity FAIL")) {
		t.Error("the serial log lacks the literal words integrity ok / integrity FAIL")
	}
}

// TestBuildCachesAndRebuildsOnChange uses a cache of its own, seeded with
// the kernel the default cache already holds so nothing is downloaded again.
func TestBuildCachesAndRebuildsOnChange(t *testing.T) {
	ctx := context.Background()
	g, err := Build(ctx, BuildOptions{})
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

	first, err := Build(ctx, BuildOptions{CacheDir: cache, AgentPath: agentA})
	if err != nil {
		t.Fatal(err)
	}
	stat1, _ := os.Stat(first.Initrd)
	again, err := Build(ctx, BuildOptions{CacheDir: cache, AgentPath: agentA})
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
	changed, err := Build(ctx, BuildOptions{CacheDir: cache, AgentPath: agentB})
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
	_, err := Build(context.Background(), BuildOptions{CacheDir: t.TempDir(), AgentPath: "/nonexistent/handoff-guest"})
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
