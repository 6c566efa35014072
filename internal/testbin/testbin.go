// Package testbin gives tests the handoff binary under test. It is a leaf,
// apart from the lab's test harness (labtest), so that the tests of a
// package the lab itself imports (leasectl) can run the binary too.
package testbin

import (
	"os"
	"os/exec"
	"path/filepath"
)

// Binary is the handoff binary under test: the one 'make test' built
// ($HANDOFF_BIN), or a fresh build; cleanup removes what was built.
func Binary() (path string, cleanup func(), err error) {
	if b := os.Getenv("HANDOFF_BIN"); b != "" {
		return b, func() {}, nil
	}
	dir, err := os.MkdirTemp("", "handoff-bin-")
	if err != nil {
		return "", nil, err
	}
	b := filepath.Join(dir, "handoff")
	if out, err := exec.Command("go", "build", "-o", b, "github.com/handoff-dev/handoff/cmd/handoff").CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		return "", nil, &buildError{err: err, out: out}
	}
	return b, func() { os.RemoveAll(dir) }, nil
}

type buildError struct {
	err error
	out []byte
}

func (e *buildError) Error() string { return "build handoff: " + e.err.Error() + "\n" + string(e.out) }
