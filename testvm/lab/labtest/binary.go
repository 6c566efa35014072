package labtest

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
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

// Result is how a run of a command ended.
type Result struct {
	Stdout, Stderr string
	Code           int
}

// Run runs a command to its end (at most five minutes) and returns its
// output and exit code; failing to start it at all fails the test.
func Run(t *testing.T, name string, args ...string) Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return Result{out.String(), errOut.String(), code}
}
