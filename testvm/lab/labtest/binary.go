package labtest

import (
	"bytes"
	"context"
	"os/exec"
	"testing"
	"time"

	"github.com/handoff-dev/handoff/internal/testbin"
)

// Binary is the handoff binary under test (see testbin.Binary), for the
// tests that use a lab.
func Binary() (path string, cleanup func(), err error) { return testbin.Binary() }

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
