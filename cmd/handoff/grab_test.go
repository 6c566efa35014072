package main

import (
	"context"
	"net"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/handoff-dev/handoff/testvm/lab/labtest"
)

var loginFlags = regexp.MustCompile(`--token (\S+) --fingerprint (\S+)`)

// leaseServer runs a real 'handoff serve' and logs a device in to it with
// its own config directory; it returns that directory.
func leaseServer(t *testing.T, image string) (configHome string) {
	t.Helper()
	data, home := t.TempDir(), t.TempDir()
	r := handoff(t, "serve", "token", "add", "laptop", "--data", data)
	m := loginFlags.FindStringSubmatch(r.Stdout)
	if r.Code != 0 || m == nil {
		t.Fatalf("serve token add: exit %d: %s%s", r.Code, r.Stdout, r.Stderr)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	serve := exec.Command(bin, "serve", "--data", data, "--listen", addr)
	if err := serve.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { serve.Process.Kill(); serve.Wait() })
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("handoff serve never listened")
		}
	}
	for _, args := range [][]string{
		{"lease", "login", "--server", "https://" + addr, "--token", m[1], "--fingerprint", m[2]},
		{"lease", "create", image},
	} {
		cmd := exec.Command(bin, args...)
		cmd.Env = append(cmd.Environ(), "XDG_CONFIG_HOME="+home)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("handoff %v: %v: %s", args, err, out)
		}
	}
	return home
}

func TestGrabInATerminal(t *testing.T) {
	before := statusJSON(t)
	if before.GuestHost != "server" {
		t.Fatalf("the guest runs on the %s, want the server", before.GuestHost)
	}
	home := leaseServer(t, "handoff-guest")
	term := labtest.NewTerminal(t, "grab", 200, 60, "XDG_CONFIG_HOME="+home+" "+bin+" grab --lab "+theLab.Dir)

	// The VM's screen shows at once, the migration runs under it, and the
	// view follows the VM here.
	term.WaitFor("handoff · handoff-guest", 10*time.Second)
	// The first frame follows the dashboard by a moment: wait for it.
	colours := term.WaitForColours("38;2;", 30*time.Second)
	if !strings.Contains(colours, "▀") {
		t.Fatalf("no truecolor half blocks on screen:\n%s", colours)
	}
	sc := term.WaitFor("running here", 2*time.Minute)
	if !strings.Contains(sc, "downtime") {
		t.Errorf("after the switch the dashboard shows no downtime:\n%s", sc)
	}
	if !strings.Contains(sc, "epoch 1") {
		t.Errorf("the dashboard shows no lease held here:\n%s", sc)
	}
	if st := statusJSON(t); st.GuestHost != "workstation" {
		t.Fatalf("the dashboard says running here, the lab says %s", st.GuestHost)
	}

	// Keys typed in the terminal reach the VM, Ctrl-C included.
	term.Keys("e", "c", "h", "o", "C-c")
	deadline := time.Now().Add(20 * time.Second)
	for {
		st, err := theLab.GuestSerial()
		if err == nil && strings.HasSuffix(st.Keys, "echo\x03") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the guest read %q, want it to end with what was typed", st.Keys)
		}
		time.Sleep(200 * time.Millisecond)
	}

	// One key hands the VM back; the view follows it to the server.
	term.Keys("C-]", "h")
	sc = term.WaitFor("on the server", 2*time.Minute)
	if !regexp.MustCompile(`lease +none`).MatchString(sc) {
		t.Errorf("after the hand back the lease is still shown:\n%s", sc)
	}
	if st := statusJSON(t); st.GuestHost != "server" || st.GuestIntegrity != "ok" {
		t.Fatalf("after the hand back: %+v", st)
	}
	if err := theLab.WaitTick(context.Background(), statusJSON(t).GuestTick+2, time.Minute); err != nil {
		t.Fatal(err)
	}

	term.Keys("C-]", "q")
	term.WaitFor("EXITED 0", 10*time.Second)
}

func TestGrabWithoutATerminalSaysWhatToUse(t *testing.T) {
	r := handoff(t, "grab", "--lab", theLab.Dir)
	if r.Code == 0 || !strings.Contains(r.Stderr, "needs a terminal") || !strings.Contains(r.Stderr, "handoff migrate") {
		t.Fatalf("grab without a terminal: exit %d, %q", r.Code, r.Stderr)
	}
}
