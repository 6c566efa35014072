// Package desktoptest drives handoff as a user would against the lab's
// Debian desktop guest, whose qcow2 disk lives in a folder only the
// server's libvirt daemon can read: migrations there and back with disk
// and memory checked by the guest itself, a grab in a terminal whose second
// run sends at most half of what virsh's full disk copy does, Ctrl-C in the
// disk phase, and the disks that cannot move.
package desktoptest

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-dev/handoff/internal/syncbuf"
	"github.com/handoff-dev/handoff/libvirt"
	"github.com/handoff-dev/handoff/testvm/lab"
	"github.com/handoff-dev/handoff/testvm/lab/labtest"
)

var (
	theLab *lab.Lab
	bin    string
)

func TestMain(m *testing.M) {
	// The guest writes and checks its disk records every tick, but dirties
	// no extra memory: under TCG, QEMU 7.2 loses pages of a guest that
	// dirties memory in a fraction of migrations (README, "What we
	// learned"); with the working set at rest, eight moves in a row were
	// clean, against a kernel oops by the third with 0.5 MB/s.
	cfg := lab.Config{GuestKind: lab.Desktop, Guest: lab.GuestConfig{MemMB: lab.DesktopMemMB, DirtyMBps: 0, WSSMB: 32}}
	labtest.MainWithBinary(m, "dsk", cfg, func(l *lab.Lab, b string) int {
		theLab, bin = l, b
		return m.Run()
	})
}

// handoff runs the command under test with its chunk cache in cache.
func handoff(t *testing.T, cache string, args ...string) labtest.Result {
	t.Helper()
	return labtest.Run(t, "env", append([]string{"XDG_CACHE_HOME=" + cache, bin}, args...)...)
}

func status(t *testing.T) lab.Status {
	t.Helper()
	st, err := theLab.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// waitHost waits until the lab says the guest runs on host.
func waitHost(t *testing.T, host string, limit time.Duration) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for status(t).GuestHost != host {
		if time.Now().After(deadline) {
			t.Fatalf("the guest never came to the %s within %v", host, limit)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// assertGuestWell waits for the guest to tick on host a few more times and
// checks its own verdict on memory and disk.
func assertGuestWell(t *testing.T, host string) {
	t.Helper()
	if err := guestWell(t, host); err != nil {
		t.Fatal(err)
	}
}

// guestWell is assertGuestWell that returns, rather than fails on, a guest
// whose kernel died or that stopped ticking, for a caller that says more
// of where. Memory or disk records lost fail at once.
func guestWell(t *testing.T, host string) error {
	t.Helper()
	st := status(t)
	if st.GuestHost != host {
		t.Fatalf("the guest runs on %q, want the %s", st.GuestHost, host)
	}
	if err := theLab.WaitTick(context.Background(), st.GuestTick+3, 2*time.Minute); err != nil {
		return err
	}
	st = status(t)
	if st.GuestIntegrity != "ok" || st.GuestDiskIntegrity != "ok" {
		t.Fatalf("the guest says integrity %q, disk %q (%s); serial log %s", st.GuestIntegrity, st.GuestDiskIntegrity, st.GuestProblem, st.SerialLog)
	}
	return nil
}

// failOnGuestDeath runs attempt, which returns what guestWell returned
// when the guest died after a move, and fails t on it.
func failOnGuestDeath(t *testing.T, attempt func(t *testing.T) error) {
	t.Helper()
	if died := attempt(t); died != nil && !t.Failed() {
		t.Fatalf("the guest died after a finished move: %v", died)
	}
}

// chains reads the guest's disk chain on each host: what runs, and the
// image files left in each host's folder.
func diskOn(t *testing.T, host lab.Host) []libvirt.Disk {
	t.Helper()
	c, err := libvirt.Connect(context.Background(), host.URI)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	d, err := c.Lookup(theLab.Domain())
	if err != nil {
		t.Fatal(err)
	}
	disks, err := d.Disks()
	if err != nil {
		t.Fatal(err)
	}
	return disks
}

func imageFiles(t *testing.T, dir string) []string {
	t.Helper()
	names, err := filepath.Glob(filepath.Join(dir, "*"))
	if err != nil {
		t.Fatal(err)
	}
	for i := range names {
		names[i] = filepath.Base(names[i])
	}
	return names
}

// assertOneFileEach checks that a move left the running VM on one file,
// and each host's folder without stray overlays: the workstation keeps at
// most its copy of the image (the next grab's base); the server keeps its
// image and, while the VM is away, the overlay the grab froze it under,
// which holds the server's copy as of the switch.
func assertOneFileEach(t *testing.T, runsOn lab.Host) {
	t.Helper()
	if d := diskOn(t, runsOn); len(d) != 1 || len(d[0].Chain) != 1 {
		t.Errorf("the VM on the %s runs on %+v, want one disk of one file", runsOn.Name, d)
	}
	want := 1
	if runsOn.Name == theLab.Workstation.Name {
		want = 2
	}
	if srv := imageFiles(t, filepath.Join(theLab.Server.Dir, "images")); len(srv) != want {
		t.Errorf("the server's image folder holds %v, want %d files", srv, want)
	}
	if ws := imageFiles(t, theLab.WorkstationImages); len(ws) != 1 {
		t.Errorf("the workstation's image folder holds %v, want its one copy", ws)
	}
}

// migrateJSON runs handoff migrate --json and returns its last record.
func migrateJSON(t *testing.T, cache string, args ...string) map[string]any {
	t.Helper()
	r := handoff(t, cache, append([]string{"migrate", "--json", "--lab", theLab.Dir}, args...)...)
	if r.Code != 0 {
		t.Fatalf("handoff migrate: exit %d\n%s%s", r.Code, r.Stdout, r.Stderr)
	}
	lines := strings.Split(strings.TrimSpace(r.Stdout), "\n")
	var last map[string]any
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &last); err != nil {
		t.Fatalf("last line of --json: %v: %q", err, lines[len(lines)-1])
	}
	sawDisks := false
	for _, l := range lines {
		sawDisks = sawDisks || strings.Contains(l, `"phase":"disks"`)
	}
	if !sawDisks {
		t.Errorf("--json reported no disk phase:\n%s", r.Stdout)
	}
	if last["phase"] != "completed" {
		t.Fatalf("migration ended %v", last)
	}
	return last
}

// startOnServer gives each test the guest running well on the server,
// whatever an earlier test left: brought home, or started afresh.
func startOnServer(t *testing.T) {
	t.Helper()
	st := status(t)
	if st.GuestHost == "workstation" && st.GuestPanic == "" && st.GuestIntegrity == "ok" {
		if r := handoff(t, t.TempDir(), "migrate", "--lab", theLab.Dir); r.Code == 0 {
			st = status(t)
		}
	}
	alive := theLab.WaitTick(context.Background(), st.GuestTick+2, 20*time.Second) == nil
	if st.GuestHost != "server" || st.GuestPanic != "" || st.GuestIntegrity != "ok" || !alive {
		t.Logf("starting the guest afresh on the server (it was: %+v)", st)
		if err := theLab.RestartGuest(context.Background(), theLab.Guest, nil); err != nil {
			t.Fatal(err)
		}
	}
	assertGuestWell(t, "server")
}

func TestMigrateThereAndBackWithTheDisk(t *testing.T) {
	failOnGuestDeath(t, func(t *testing.T) error {
		cache := t.TempDir()
		startOnServer(t)
		migrateJSON(t, cache)
		died := guestWell(t, "workstation")
		assertOneFileEach(t, theLab.Workstation)
		migrateJSON(t, cache) // a dead guest moves too: QEMU runs on
		if died != nil {
			return died
		}
		if died := guestWell(t, "server"); died != nil {
			return died
		}
		assertOneFileEach(t, theLab.Server)
		return nil
	})
}

// TestCtrlCInTheDiskPhase presses Ctrl-C while the disk travels (a cold
// cache over a slow link, so that it travels long enough): the VM keeps
// running on the server on its own file, and the workstation keeps nothing.
func TestCtrlCInTheDiskPhase(t *testing.T) {
	ctx := context.Background()
	startOnServer(t)
	// Nothing on the workstation to reuse: the whole disk must travel.
	for _, f := range imageFiles(t, theLab.WorkstationImages) {
		os.Remove(filepath.Join(theLab.WorkstationImages, f))
	}
	if _, err := theLab.Shape(ctx, lab.Link{Bandwidth: "20mbit"}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { theLab.Shape(ctx, lab.DefaultLink) })
	before := diskOn(t, theLab.Server)
	kept := imageFiles(t, theLab.WorkstationImages)
	cmd := exec.Command(bin, "migrate", "--lab", theLab.Dir)
	cmd.Env = append(os.Environ(), "XDG_CACHE_HOME="+t.TempDir())
	out := &syncbuf.Buffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	deadline := time.Now().Add(2 * time.Minute)
	for !strings.Contains(out.String(), "disks: receiving") {
		if time.Now().After(deadline) {
			t.Fatalf("the disk phase never began:\n%s", out.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(2 * time.Second) // well into the transfer
	cmd.Process.Signal(syscall.SIGINT)
	err := cmd.Wait()
	if err == nil {
		t.Fatalf("migrate succeeded despite Ctrl-C:\n%s", out.String())
	}
	if text := out.String(); !strings.Contains(text, "canceled") && !strings.Contains(text, "stopped") && !strings.Contains(text, "interrupt") {
		t.Errorf("Ctrl-C's message does not say the move stopped:\n%s", text)
	}
	assertGuestWell(t, "server")
	after := diskOn(t, theLab.Server)
	if len(after) != 1 || len(after[0].Chain) != len(before[0].Chain) || after[0].Top() != before[0].Top() {
		t.Errorf("after Ctrl-C the server runs on %+v, want its chain as before, %+v", after, before)
	}
	if ws := imageFiles(t, theLab.WorkstationImages); strings.Join(ws, " ") != strings.Join(kept, " ") {
		t.Errorf("after Ctrl-C the workstation's folder holds %v, want what it held before, %v", ws, kept)
	}
}

// TestSecondGrabSendsAtMostHalfOfVirsh grabs in a terminal as a person
// does, hands back with one key, and compares what a second grab puts on
// the link with what virsh's full disk copy puts there, in the same run.
func TestSecondGrabSendsAtMostHalfOfVirsh(t *testing.T) {
	failOnGuestDeath(t, secondGrabAtMostHalfOfVirsh)
}

func secondGrabAtMostHalfOfVirsh(t *testing.T) (died error) {
	cache := t.TempDir()
	startOnServer(t)
	// well keeps the first death of the guest; the attempt ends at its
	// next step.
	well := func(host string) {
		t.Helper()
		if died == nil {
			died = guestWell(t, host)
		}
	}
	grab := func(what string) int64 {
		t.Helper()
		before := linkBytes(t)
		term := labtest.NewTerminal(t, "grab-"+what, 200, 60, fmt.Sprintf("XDG_CACHE_HOME=%s %s grab --lab %s", cache, bin, theLab.Dir))
		term.WaitFor("handoff · "+theLab.Domain(), 30*time.Second)
		sc := term.WaitFor("running here", 4*time.Minute)
		sent := linkBytes(t) - before
		if !strings.Contains(sc, "epoch") {
			t.Errorf("%s: the dashboard shows no lease held here:\n%s", what, sc)
		}
		// A dead guest still moves (QEMU runs on): the hand back releases
		// the lease, so that another attempt can take it.
		well("workstation")
		term.Keys("C-]", "h")
		waitHost(t, "server", 4*time.Minute)
		if sc := term.WaitFor("phase    on the server", time.Minute); !strings.Contains(sc, "lease    none") {
			t.Errorf("%s: after the hand back the lease is still shown:\n%s", what, sc)
		}
		well("server")
		term.Keys("C-]", "q")
		term.WaitFor("EXITED 0", 30*time.Second)
		return sent
	}
	first := grab("first")
	if died != nil {
		return died
	}
	viaVirsh := virshFullCopy(t)
	// virsh left the VM on the workstation: bring it home the usual way.
	migrateJSON(t, cache)
	if well("server"); died != nil {
		return died
	}
	second := grab("second")
	if died != nil {
		return died
	}
	t.Logf("bytes on the link to the workstation: first grab %d, virsh --copy-storage-all %d, second grab %d", first, viaVirsh, second)
	if second*2 > viaVirsh {
		t.Errorf("a second grab sent %d bytes, more than half of virsh's %d", second, viaVirsh)
	}
	return nil
}

// virshFullCopy moves the VM to the workstation as virsh does without
// handoff (every allocated block over NBD, into a file made there first)
// and returns the bytes it put on the link. The guest is paused for it:
// under TCG, QEMU 7.2 loses guest pages now and then in a migration as
// long as this full copy (the README's first lesson; a CI run and one of
// two runs here lost the guest in or just after it), and a paused guest
// dirties nothing, so virsh's count can only come out smaller, never in
// handoff's favour.
func virshFullCopy(t *testing.T) int64 {
	t.Helper()
	srv, ws := diskOn(t, theLab.Server), theLab.WorkstationImages
	top := srv[0].Top().Path
	dest := filepath.Join(ws, filepath.Base(top))
	info, err := exec.Command("qemu-img", "info", "-U", "--output=json", top).Output()
	if err != nil {
		t.Fatal(err)
	}
	var vi struct {
		Size int64 `json:"virtual-size"`
	}
	json.Unmarshal(info, &vi)
	os.Remove(dest)
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-o", "compat=1.1", dest, fmt.Sprint(vi.Size)).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img create: %v: %s", err, out)
	}
	if out, err := exec.Command("chown", "--reference="+ws, dest).CombinedOutput(); err != nil {
		t.Fatalf("chown: %v: %s", err, out)
	}
	x, err := exec.Command("virsh", "-c", theLab.Server.URI, "dumpxml", "--migratable", theLab.Domain()).Output()
	if err != nil {
		t.Fatal(err)
	}
	xmlPath := filepath.Join(t.TempDir(), "dest.xml")
	os.WriteFile(xmlPath, []byte(strings.ReplaceAll(string(x), filepath.Dir(top), ws)), 0o644)
	if r := labtest.Run(t, "virsh", "-c", theLab.Server.URI, "suspend", theLab.Domain()); r.Code != 0 {
		t.Fatalf("virsh suspend: %s%s", r.Stdout, r.Stderr)
	}
	before := linkBytes(t)
	r := labtest.Run(t, "virsh", "-c", theLab.Server.URI, "migrate", "--live", "--p2p", "--copy-storage-all",
		"--migrate-disks", srv[0].Target, "--xml", xmlPath, "--migrateuri", theLab.MigrateURI(theLab.Workstation.Name),
		"--disks-uri", "tcp://"+theLab.Workstation.Addr, theLab.Domain(), theLab.Workstation.URI)
	if r.Code != 0 {
		t.Fatalf("virsh migrate --copy-storage-all: %s%s", r.Stdout, r.Stderr)
	}
	sent := linkBytes(t) - before
	if r := labtest.Run(t, "virsh", "-c", theLab.Workstation.URI, "resume", theLab.Domain()); r.Code != 0 {
		t.Fatalf("virsh resume on the workstation: %s%s", r.Stdout, r.Stderr)
	}
	assertGuestWell(t, "workstation")
	return sent
}

func linkBytes(t *testing.T) int64 {
	t.Helper()
	c, err := theLab.LinkCounts()
	if err != nil {
		t.Fatal(err)
	}
	return c.Received
}

// TestDisksThatCannotMove: a disk that is a block device, and a
// workstation with no room for the disk, each get a message that says what
// to do, and the VM stays where it was.
func TestDisksThatCannotMove(t *testing.T) {
	t.Run("a block device", func(t *testing.T) {
		x := fmt.Sprintf(`<domain type='qemu'><name>handoff-blockdisk</name><memory unit='MiB'>64</memory>
<os><type arch='x86_64' machine='pc'>hvm</type></os>
<devices><disk type='block' device='disk'><source dev='/dev/handoff-no-such-disk'/><target dev='vda' bus='virtio'/></disk></devices></domain>`)
		path := filepath.Join(t.TempDir(), "block.xml")
		os.WriteFile(path, []byte(x), 0o644)
		if r := labtest.Run(t, "virsh", "-c", theLab.Server.URI, "define", path); r.Code != 0 {
			t.Fatalf("virsh define: %s", r.Stderr)
		}
		t.Cleanup(func() { labtest.Run(t, "virsh", "-c", theLab.Server.URI, "undefine", "handoff-blockdisk") })
		r := handoff(t, t.TempDir(), "migrate", "--lab", theLab.Dir, "--from", theLab.Server.URI, "--to", theLab.Workstation.URI, "handoff-blockdisk")
		if r.Code == 0 || !strings.Contains(r.Stderr, "block device") || !strings.Contains(r.Stderr, "qemu-img convert") {
			t.Errorf("migrating a block-device disk: exit %d, %q", r.Code, r.Stderr)
		}
	})
	t.Run("no room on the workstation", func(t *testing.T) {
		startOnServer(t)
		dir := theLab.WorkstationImages
		if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "handoff-full", dir).CombinedOutput(); err != nil {
			t.Fatalf("mount a small tmpfs: %v: %s", err, out)
		}
		t.Cleanup(func() { exec.Command("umount", dir).Run() })
		if out, err := exec.Command("chown", theLab.Workstation.User+":", dir).CombinedOutput(); err != nil {
			t.Fatalf("chown: %v: %s", err, out)
		}
		r := handoff(t, t.TempDir(), "migrate", "--lab", theLab.Dir)
		if r.Code == 0 || !strings.Contains(r.Stderr, "free some room") {
			t.Errorf("migrating onto a full folder: exit %d, %q", r.Code, r.Stderr)
		}
		assertGuestWell(t, "server")
		if d := diskOn(t, theLab.Server); len(d[0].Chain) != 1 {
			t.Errorf("after the refusal the server runs on %+v, want its one file", d)
		}
	})
}
