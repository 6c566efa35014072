// Package labtest runs a package's tests against one real lab, made before
// the tests and removed after them, even when they fail or panic.
package labtest

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/handoff-dev/handoff/testvm/lab"
)

// Main brings up a lab in a directory of the package's own (so it never
// touches the user's lab), runs the tests with it, takes it down, and
// exits. A lab left by an earlier, killed run is removed first. The lab's
// server runs the handoff binary under test (see Binary) as its serve.
func Main(m *testing.M, name string, cfg lab.Config, tests func(*lab.Lab) int) {
	os.Exit(mainCode(m, name, cfg, func(l *lab.Lab, _ string) int { return tests(l) }))
}

// MainWithBinary is Main for tests of the handoff command: it also hands
// them the binary under test.
func MainWithBinary(m *testing.M, name string, cfg lab.Config, tests func(l *lab.Lab, bin string) int) {
	os.Exit(mainCode(m, name, cfg, tests))
}

func mainCode(m *testing.M, name string, cfg lab.Config, tests func(*lab.Lab, string) int) int {
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "these tests run on the real lab and need root: run them as root (make test)")
		return 1
	}
	bin, cleanup, err := Binary()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer cleanup()
	cfg.Dir = filepath.Join("/run", "handoff-lab-test-"+name)
	cfg.Progress = os.Stderr
	cfg.Handoff = bin
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	l, err := lab.Up(ctx, cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "lab up:", err)
		lab.Down(context.Background(), cfg.Dir)
		return 1
	}
	defer func() {
		if err := lab.Down(context.Background(), cfg.Dir); err != nil {
			fmt.Fprintln(os.Stderr, "lab down:", err)
		}
	}()
	return tests(l, bin)
}
