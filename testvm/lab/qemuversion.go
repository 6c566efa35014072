package lab

import (
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
)

// qemuEmulator is the QEMU the lab's domains run (their <emulator>).
const qemuEmulator = "/usr/bin/qemu-system-x86_64"

// qemuWarning says what to do when this machine's QEMU loses guest writes
// in a live migration under TCG (before 9.0: README, "What we learned"),
// and nothing when it does not. The lab still starts: its moves work, but
// now and then a guest comes out with memory it never wrote.
func qemuWarning(ctx context.Context) string {
	out, err := exec.CommandContext(ctx, qemuEmulator, "--version").Output()
	if err != nil {
		return fmt.Sprintf("warning: cannot run %s --version (%v): run 'make deps'", qemuEmulator, err)
	}
	major, ok := qemuMajor(string(out))
	if !ok || major >= 9 {
		return ""
	}
	return fmt.Sprintf("warning: QEMU %d under TCG (no KVM here) loses guest writes in some live migrations, fixed in QEMU 9.0: run 'make deps', which installs QEMU from bookworm-backports", major)
}

var qemuVersionLine = regexp.MustCompile(`QEMU emulator version (\d+)\.`)

// qemuMajor reads the major version from `qemu-system-x86_64 --version`.
func qemuMajor(versionOutput string) (int, bool) {
	m := qemuVersionLine.FindStringSubmatch(versionOutput)
	if m == nil {
		return 0, false
	}
	n, err := strconv.Atoi(m[1])
	return n, err == nil
}
