package nattest

import (
	"context"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/handoff-dev/handoff/testvm/lab"
	"github.com/handoff-dev/handoff/testvm/lab/labtest"
)

var (
	theLab *lab.Lab
	bin    string
)

func TestMain(m *testing.M) {
	// An idle guest: this package tests the SSH path, and QEMU 7.2 under
	// TCG corrupts a guest that dirties memory while a migration is slowed
	// (as SSH on two shared cores slows it): see README, "What we learned".
	// The direct-link tests in cmd/handoff and libvirt cover dirtying guests.
	cfg := lab.Config{NAT: true, Guest: lab.GuestConfig{MemMB: 256, DirtyMBps: 0, WSSMB: 64}}
	labtest.MainWithBinary(m, "nat", cfg, func(l *lab.Lab, b string) int {
		theLab, bin = l, b
		return m.Run()
	})
}

// onWorkstation runs handoff inside the workstation's namespace, where the
// server is reachable only by SSH and nothing can connect in.
func onWorkstation(t *testing.T, args ...string) labtest.Result {
	t.Helper()
	return labtest.Run(t, "ip", append([]string{"netns", "exec", theLab.Workstation.Netns, bin}, args...)...)
}

func guestHost(t *testing.T) string {
	t.Helper()
	h, err := theLab.GuestHost(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func TestMigrateOverSSHFromBehindNATAndBack(t *testing.T) {
	if theLab.ServerSSHURI == "" {
		t.Fatal("the NAT lab has no SSH URI for the server")
	}
	// The grab's way opens a socket on the server through sshd, which
	// leaves its file behind unless handoff removes it.
	sockets := func() []string {
		m, _ := filepath.Glob("/tmp/handoff-peer-*.sock")
		return m
	}
	leftBefore := sockets()
	defer func() {
		if after := sockets(); len(after) > len(leftBefore) {
			t.Errorf("the moves left sockets on the server: %v (before: %v)", after, leftBefore)
		}
	}()
	for _, leg := range []struct{ from, to, want string }{
		{theLab.ServerSSHURI, theLab.Workstation.URI, "workstation"},
		{theLab.Workstation.URI, theLab.ServerSSHURI, "server"},
	} {
		before, err := theLab.GuestSerial()
		if err != nil {
			t.Fatal(err)
		}
		r := onWorkstation(t, "migrate", "--from", leg.from, "--to", leg.to, lab.GuestName)
		if r.Code != 0 {
			t.Fatalf("migrate to the %s over SSH: exit %d\n%s%s", leg.want, r.Code, r.Stdout, r.Stderr)
		}
		if !strings.Contains(r.Stdout, "now runs on") || !strings.Contains(r.Stdout, "downtime") {
			t.Errorf("migrate printed no result with its downtime:\n%s", r.Stdout)
		}
		if err := theLab.WaitTick(context.Background(), before.Tick+3, time.Minute); err != nil {
			t.Fatal(err)
		}
		if h := guestHost(t); h != leg.want {
			t.Fatalf("after migrating to the %s the guest runs on the %s", leg.want, h)
		}
		st, err := theLab.GuestSerial()
		if err != nil || st.Integrity != "ok" {
			t.Fatalf("guest integrity after migrating to the %s: %+v, %v", leg.want, st, err)
		}
	}
}

// withQuery changes one setting of the server's SSH URI.
func withQuery(t *testing.T, key, value string) string {
	t.Helper()
	u, err := url.Parse(theLab.ServerSSHURI)
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	q.Set(key, value)
	u.RawQuery = q.Encode()
	return u.String()
}

func TestSSHMistakesGetClearErrorsAndLeaveTheGuestAlone(t *testing.T) {
	otherHost := filepath.Join(t.TempDir(), "known_hosts")
	// A real key that is not the server's: as if the server were replaced.
	if err := os.WriteFile(otherHost, []byte(theLab.Server.Addr+" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBu2rGb4m1W0iN5p0m2Vt8rZkz7b5q0r0uJ3K3mC8a1b\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	emptyHosts := filepath.Join(t.TempDir(), "known_hosts")
	if err := os.WriteFile(emptyHosts, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	wrongKey := filepath.Join(t.TempDir(), "id_ed25519")
	if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", wrongKey).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen: %v: %s", err, out)
	}
	unreachable, err := url.Parse(theLab.ServerSSHURI)
	if err != nil {
		t.Fatal(err)
	}
	unreachable.Host = "root@192.0.2.99:22"
	where := guestHost(t)
	for _, tc := range []struct {
		name, from string
		want       []string
	}{
		{"missing key file", withQuery(t, "keyfile", "/nonexistent/id_ed25519"), []string{"/nonexistent/id_ed25519"}},
		{"server's host key changed", withQuery(t, "known_hosts", otherHost), []string{"host key does not match", otherHost}},
		{"server refuses the key", withQuery(t, "keyfile", wrongKey), []string{"refused your SSH key"}},
		{"server not in known_hosts yet", withQuery(t, "known_hosts", emptyHosts), []string{"host key is not in", emptyHosts}},
		{"no known_hosts file", withQuery(t, "known_hosts", "/nonexistent/known_hosts"), []string{"/nonexistent/known_hosts"}},
		{"unreachable server", unreachable.String(), []string{"192.0.2.99"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := onWorkstation(t, "migrate", "--from", tc.from, "--to", theLab.Workstation.URI, lab.GuestName)
			if r.Code == 0 {
				t.Fatalf("migrate succeeded:\n%s", r.Stdout)
			}
			for _, w := range tc.want {
				if !strings.Contains(r.Stderr, w) {
					t.Errorf("error %q does not mention %q", strings.TrimSpace(r.Stderr), w)
				}
			}
			if h := guestHost(t); h != where {
				t.Errorf("the guest moved from the %s to the %s", where, h)
			}
		})
	}
}

// TestGrabOverSSH runs handoff grab on the workstation behind NAT: the
// server's screen comes through the same SSH connection as the migration.
func TestGrabOverSSH(t *testing.T) {
	if h := guestHost(t); h != "server" {
		t.Fatalf("the guest runs on the %s, want the server", h)
	}
	term := labtest.NewTerminal(t, "grab-ssh", 160, 50, strings.Join([]string{
		"ip", "netns", "exec", theLab.Workstation.Netns, bin, "grab",
		"--server", "'" + theLab.ServerSSHURI + "'", "--workstation", "'" + theLab.Workstation.URI + "'", "--no-lease", lab.GuestName,
	}, " "))
	term.WaitFor("handoff · "+lab.GuestName, 15*time.Second)
	// The server's screen, drawn in truecolor, through the same SSH link.
	term.WaitForColours("38;2;", 30*time.Second)
	term.WaitFor("running here", 2*time.Minute)
	if h := guestHost(t); h != "workstation" {
		t.Fatalf("the dashboard says running here, the lab says %s", h)
	}
	term.Keys("C-]", "h")
	term.WaitFor("on the server", 2*time.Minute)
	term.Keys("C-]", "q")
	term.WaitFor("EXITED 0", 10*time.Second)
}
