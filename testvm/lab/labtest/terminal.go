package labtest

import (
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Terminal is a tmux session that tests drive as a person would:
// send-keys to type, capture-pane to read the screen.
type Terminal struct {
	t       testing.TB
	session string
}

// NewTerminal runs command in a new w x h tmux session; when the command
// ends the pane shows "EXITED <code>". The session ends with the test.
func NewTerminal(t testing.TB, name string, w, h int, command string) *Terminal {
	t.Helper()
	s := &Terminal{t: t, session: "handoff-test-" + name}
	exec.Command("tmux", "kill-session", "-t", s.session).Run()
	out, err := exec.Command("tmux", "new-session", "-d", "-s", s.session, "-x", strconv.Itoa(w), "-y", strconv.Itoa(h),
		command+"; echo EXITED $?; sleep 600").CombinedOutput()
	if err != nil {
		t.Fatalf("tmux new-session: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("tmux", "kill-session", "-t", s.session).Run() })
	return s
}

// Keys types keys, in tmux's send-keys names ("C-]", "Enter", "a").
func (s *Terminal) Keys(keys ...string) {
	s.t.Helper()
	if out, err := exec.Command("tmux", append([]string{"send-keys", "-t", s.session}, keys...)...).CombinedOutput(); err != nil {
		s.t.Fatalf("tmux send-keys: %v: %s", err, out)
	}
}

// Screen is the pane as shown, with its colours (-e) when escapes is set.
func (s *Terminal) Screen(escapes bool) string {
	args := []string{"capture-pane", "-p", "-t", s.session}
	if escapes {
		args = append(args, "-e")
	}
	out, err := exec.Command("tmux", args...).Output()
	if err != nil {
		s.t.Fatalf("tmux capture-pane: %v", err)
	}
	return string(out)
}

// WaitFor waits until the screen shows want, and returns the screen.
func (s *Terminal) WaitFor(want string, limit time.Duration) string {
	s.t.Helper()
	return s.waitFor(want, limit, false)
}

// WaitForColours waits until the screen with its colour escapes holds want
// (such as a truecolor "38;2;"): a frame drawn, not only text.
func (s *Terminal) WaitForColours(want string, limit time.Duration) string {
	s.t.Helper()
	return s.waitFor(want, limit, true)
}

func (s *Terminal) waitFor(want string, limit time.Duration, escapes bool) string {
	s.t.Helper()
	deadline := time.Now().Add(limit)
	for {
		sc := s.Screen(escapes)
		if strings.Contains(sc, want) {
			return sc
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("the screen never showed %q within %v; it shows:\n%s", want, limit, sc)
		}
		time.Sleep(250 * time.Millisecond)
	}
}
