// Package desktopnat moves the Debian desktop guest, disk and all, between
// a server reached only by SSH and a workstation behind NAT that accepts no
// connections: the disk's chunks go out to the server's serve, and NBD's
// mirror of the last writes, like the memory stream, comes through the
// workstation's own SSH connection.
package desktopnat

import (
	"context"
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
	labtest.MainWithBinary(m, "dnat", lab.Config{NAT: true, GuestKind: lab.Desktop}, func(l *lab.Lab, b string) int {
		theLab, bin = l, b
		return m.Run()
	})
}

// onWorkstation runs handoff inside the workstation's namespace as a user
// logged in to the server's serve, with a chunk cache of its own.
func onWorkstation(t *testing.T, home string, args ...string) labtest.Result {
	t.Helper()
	env := []string{"XDG_CONFIG_HOME=" + filepath.Join(home, "config"), "XDG_CACHE_HOME=" + filepath.Join(home, "cache")}
	return labtest.Run(t, "ip", append(append([]string{"netns", "exec", theLab.Workstation.Netns, "env"}, env...), append([]string{bin}, args...)...)...)
}

func TestMigrateWithTheDiskOverSSHFromBehindNATAndBack(t *testing.T) {
	if theLab.ServerSSHURI == "" {
		t.Fatal("the NAT lab has no SSH URI for the server")
	}
	home := t.TempDir()
	in, err := theLab.ServeLogin()
	if err != nil {
		t.Fatal(err)
	}
	if r := onWorkstation(t, home, "lease", "login", "--server", in.URL, "--token", in.Token, "--fingerprint", in.Fingerprint); r.Code != 0 {
		t.Fatalf("lease login: %s%s", r.Stdout, r.Stderr)
	}
	for _, leg := range []struct{ from, to, want string }{
		{theLab.ServerSSHURI, theLab.Workstation.URI, "workstation"},
		{theLab.Workstation.URI, theLab.ServerSSHURI, "server"},
	} {
		before, err := theLab.GuestSerial()
		if err != nil {
			t.Fatal(err)
		}
		r := onWorkstation(t, home, "migrate", "--lab", "/nonexistent", "--images", theLab.WorkstationImages,
			"--from", leg.from, "--to", leg.to, theLab.Domain())
		if r.Code != 0 {
			t.Fatalf("migrate to the %s over SSH: exit %d\n%s%s", leg.want, r.Code, r.Stdout, r.Stderr)
		}
		if !strings.Contains(r.Stdout, "disks: ready") || !strings.Contains(r.Stdout, "now runs on") {
			t.Errorf("migrate moved no disk, or printed no result:\n%s", r.Stdout)
		}
		if err := theLab.WaitTick(context.Background(), before.Tick+3, 2*time.Minute); err != nil {
			t.Fatal(err)
		}
		st, err := theLab.Status(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if st.GuestHost != leg.want || st.GuestIntegrity != "ok" || st.GuestDiskIntegrity != "ok" {
			t.Fatalf("after migrating to the %s: the guest runs on the %s, integrity %q, disk %q (%s)", leg.want, st.GuestHost, st.GuestIntegrity, st.GuestDiskIntegrity, st.GuestProblem)
		}
	}
}
