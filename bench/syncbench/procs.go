package syncbench

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// command makes a command that runs in its own process group and is
// killed, group and all, when ctx ends: rsync's daemon forks a child per
// connection, and Ctrl-C must leave none of them behind.
func command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, name, args...)
	// Pdeathsig: if this process dies without cleaning up (a test's
	// panic, kill -9), the command dies with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// signalGroup kills a started command's process group; whoever waits for
// the command reaps it.
func signalGroup(cmd *exec.Cmd) {
	if cmd.Process != nil {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
}

// runQuiet runs a command and returns its error with what it printed, so
// that a failed mkfs or rsync says why.
func runQuiet(cmd *exec.Cmd) error {
	var out bytes.Buffer
	if cmd.Stdout == nil {
		cmd.Stdout = &out
	}
	if cmd.Stderr == nil {
		cmd.Stderr = &out
	}
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(out.String())
		if len(msg) > 2000 {
			msg = msg[:2000] + "..."
		}
		return fmt.Errorf("%s: %w: %s", strings.Join(cmd.Args, " "), err, msg)
	}
	return nil
}

// cpuOf is the CPU time a finished process used.
func cpuOf(cmd *exec.Cmd) time.Duration {
	if cmd.ProcessState == nil {
		return 0
	}
	return cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
}

// selfCPU is this process's CPU time so far: user and system, all threads.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// needTools says which Debian packages to install when a tool is missing.
func needTools(tools ...string) error {
	pkg := map[string]string{"mkfs.ext4": "e2fsprogs", "dumpe2fs": "e2fsprogs", "rsync": "rsync", "zstd": "zstd"}
	var missing []string
	for _, t := range tools {
		if _, err := exec.LookPath(t); err != nil {
			missing = append(missing, fmt.Sprintf("%s (Debian package %s)", t, pkg[t]))
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("the sync bench needs %s: run 'make deps' or apt-get install them", strings.Join(missing, ", "))
	}
	return nil
}
