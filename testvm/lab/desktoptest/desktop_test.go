// Package desktoptest brings up the lab with the Debian desktop guest, sees
// it tick with its disk's integrity ok, and takes the lab down again,
// checking that nothing of it is left.
package desktoptest

import (
	"context"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-dev/handoff/testvm/lab"
	"github.com/handoff-dev/handoff/testvm/lab/labtest"
)

func TestDesktopLabUpTicksAndDown(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("this test runs the real lab and needs root: run it as root (make test)")
	}
	bin, cleanup, err := labtest.Binary()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cleanup)
	dir := filepath.Join("/run", "handoff-lab-test-guestkind")
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	lab.Down(ctx, dir) // a lab an earlier, killed run left
	downed := false
	t.Cleanup(func() {
		if !downed {
			lab.Down(context.Background(), dir)
		}
	})

	start := time.Now()
	l, err := lab.Up(ctx, lab.Config{Dir: dir, Handoff: bin, Progress: testWriter{t}, GuestKind: lab.Desktop,
		Guest: lab.GuestConfig{MemMB: lab.DesktopMemMB, DirtyMBps: 2, WSSMB: 64}})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("lab up with the Debian guest, first tick seen: %v", time.Since(start))
	if l.Domain() != lab.DesktopName || l.GuestKind != lab.Desktop {
		t.Errorf("the lab runs %s (%s), want %s", l.Domain(), l.GuestKind, lab.DesktopName)
	}
	if err := l.WaitTick(ctx, 4, 60*time.Second); err != nil {
		t.Fatal(err)
	}
	st, err := l.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Domain != lab.DesktopName || st.GuestHost != "server" || st.GuestIntegrity != "ok" || st.GuestDiskIntegrity != "ok" || st.GuestDiskSeq == 0 {
		t.Fatalf("lab status %+v: want %s on the server, integrity ok, disk ok with records", st, lab.DesktopName)
	}

	// The disk is the server's alone; the workstation has a folder of its own.
	srvUser, wsUser := owner(t, l.GuestDisk), owner(t, l.WorkstationImages)
	if srvUser != l.Server.User || wsUser != l.Workstation.User {
		t.Errorf("disk owned by %s, workstation images by %s; want %s and %s", srvUser, wsUser, l.Server.User, l.Workstation.User)
	}
	for _, d := range []string{filepath.Dir(l.GuestDisk), l.WorkstationImages} {
		if fi, err := os.Stat(d); err != nil || fi.Mode().Perm() != 0o700 {
			t.Errorf("%s: %v, mode %v; want 0700", d, err, fi.Mode().Perm())
		}
	}
	// Both guests are defined on the server; only the desktop runs.
	out, err := exec.Command("virsh", "-c", l.Server.URI, "list", "--all", "--name").CombinedOutput()
	if err != nil || !strings.Contains(string(out), lab.GuestName) || !strings.Contains(string(out), lab.DesktopName) {
		t.Errorf("virsh list --all on the server: %v: %s; want both guests", err, out)
	}
	running, _ := exec.Command("virsh", "-c", l.Server.URI, "list", "--name").CombinedOutput()
	if strings.Contains(string(running), lab.GuestName+"\n") {
		t.Errorf("the busybox guest runs too: %s", running)
	}
	xml, _ := exec.Command("virsh", "-c", l.Server.URI, "dumpxml", lab.DesktopName).CombinedOutput()
	if !strings.Contains(string(xml), "cache='none'") || !strings.Contains(string(xml), "type='qcow2'") {
		t.Errorf("the desktop's disk is not qcow2 with cache='none':\n%s", xml)
	}

	users := []string{l.Server.User, l.Workstation.User}
	var uids []int
	for _, name := range users {
		u, err := user.Lookup(name)
		if err != nil {
			t.Fatal(err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		uids = append(uids, uid)
	}
	netnses := []string{l.Server.Netns, l.Workstation.Netns}
	downed = true
	if err := lab.Down(context.Background(), dir); err != nil {
		t.Fatal(err)
	}
	for _, ns := range netnses {
		if _, err := os.Stat(filepath.Join("/run/netns", ns)); err == nil {
			t.Errorf("namespace %s is still there", ns)
		}
	}
	for _, name := range users {
		if _, err := user.Lookup(name); err == nil {
			t.Errorf("user %s is still there", name)
		}
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("the lab directory is still there: %v", err)
	}
	// A process killed a moment ago may still be on its way out.
	var left []string
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		if left = labProcesses(dir, uids); len(left) == 0 || time.Now().After(deadline) {
			break
		}
	}
	for _, p := range left {
		t.Errorf("a process of the lab is still running: %s", p)
	}
	for _, uid := range uids {
		args := []string{"/tmp", "/var/tmp", "/run", "/dev/shm", "/home", "/var/lib/libvirt", "-xdev", "-uid", strconv.Itoa(uid), "-print", "-quit"}
		if out, _ := exec.Command("find", args...).Output(); len(strings.TrimSpace(string(out))) > 0 {
			t.Errorf("a file of a lab user (uid %d) is left: %s", uid, out)
		}
	}
}

// labProcesses lists the processes run by the lab's users or naming its
// directory.
func labProcesses(dir string, uids []int) []string {
	var found []string
	procs, _ := filepath.Glob("/proc/[0-9]*")
	for _, p := range procs {
		var st syscall.Stat_t
		if syscall.Stat(p, &st) != nil {
			continue
		}
		b, _ := os.ReadFile(filepath.Join(p, "cmdline"))
		cmdline := strings.ReplaceAll(string(b), "\x00", " ")
		for _, uid := range uids {
			if int(st.Uid) == uid {
				found = append(found, p+" (uid "+strconv.Itoa(uid)+"): "+cmdline)
			}
		}
		if strings.Contains(cmdline, dir) {
			found = append(found, p+": "+cmdline)
		}
	}
	return found
}

func owner(t *testing.T, path string) string {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	u, err := user.LookupId(strconv.Itoa(int(st.Uid)))
	if err != nil {
		t.Fatal(err)
	}
	return u.Username
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}
