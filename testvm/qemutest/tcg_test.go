package qemutest

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/handoff-dev/handoff/testvm"
)

// TestASlowMoveUnderTCGKeepsEveryWrite moves the busybox guest, dirtying
// 2 MB/s, from one plain QEMU to another at 12 MB/s: many passes, each
// clearing dirty bits under a running vCPU. QEMU 7.2 lost this guest in 6
// moves of 6 (the README's first lesson); the QEMU 'make deps' installs
// must bring its memory check and its kernel through whole.
func TestASlowMoveUnderTCGKeepsEveryWrite(t *testing.T) {
	g, err := testvm.Build(context.Background(), testvm.BuildOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p := testvm.Params{DirtyMBps: 2, WSSMB: 32}
	args := []string{"-m", "256", "-kernel", g.Kernel, "-initrd", g.Initrd, "-append", p.KernelArgs()}
	src := start(t, t.TempDir(), false, args...)
	src.WaitFor("tick 5", 3*time.Minute, func(s testvm.Status) bool { return s.Tick >= 5 })
	dstDir := t.TempDir()
	dst := start(t, dstDir, false, append(args, "-incoming", "defer")...)
	sock := filepath.Join(dstDir, "migration.sock")
	dst.HMP("migrate_incoming unix:" + sock)
	src.HMP("migrate_set_parameter max-bandwidth 12M")
	src.HMP("migrate -d unix:" + sock)
	deadline := time.Now().Add(5 * time.Minute)
	for {
		info := src.HMP("info migrate")
		if strings.Contains(info, "Migration status: completed") {
			break
		}
		if strings.Contains(info, "Migration status: failed") || time.Now().After(deadline) {
			t.Fatalf("the move did not complete: %s", info)
		}
		time.Sleep(500 * time.Millisecond)
	}
	src.Kill()
	// The destination's serial log starts at the switch; ten ticks there
	// walk the whole working set and the sealed region more than once.
	first := dst.WaitFor("a tick after the move", time.Minute, func(s testvm.Status) bool { return s.Tick > 0 }).Tick
	st := dst.WaitFor("ten ticks after the move", 2*time.Minute, func(s testvm.Status) bool {
		return s.Tick >= first+10 || s.Problem != ""
	})
	if st.Problem != "" {
		t.Fatalf("the guest lost memory in the move: %s", st.Problem)
	}
}
