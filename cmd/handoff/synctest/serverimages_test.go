package synctest

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestServeIndexesAndChecksOutImagesOnItsDisk plays a grab and a hand back
// through a real 'handoff serve --images DIR': the server indexes the
// frozen qcow2 chain it holds, the workstation pulls it by root; the
// workstation changes a few blocks, pushes, and asks the server to check
// it out over its stale file, which then equals the workstation's. A
// second index after a small change stores little; paths outside --images
// and a file a real QEMU holds open are refused, leaving files as they were.
func TestServeIndexesAndChecksOutImagesOnItsDisk(t *testing.T) {
	need(t, "mkfs.ext4", "qemu-img", "qemu-io", "qemu-nbd")
	images := t.TempDir()
	srv := startServe(t, t.TempDir(), "127.0.0.1:0", "--images", images)
	ws := newDevice(t, "workstation")
	ws.login(t, srv.url(), srv.token, srv.fp)

	// The server's VM disk: an ext4 base of real files, and the top layer
	// a snapshot froze, with data of its own.
	raw := makeExt4(t, t.TempDir(), "base.ext4", "48M", 24<<20)
	base := filepath.Join(images, "base.qcow2")
	top := filepath.Join(images, "desktop.qcow2")
	runTool(t, "qemu-img", "convert", "-q", "-O", "qcow2", raw, base)
	runTool(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", top)
	qemuWrite(t, top, 0x5a, "1M", "3M", "17M", "40M")

	start := time.Now()
	first := ws.index(t, top)
	firstTook := time.Since(start)
	if len(first.Members) != 2 || first.Members[0].Name != "base.qcow2" || first.Members[1].Name != "desktop.qcow2" {
		t.Fatalf("index of a two-file chain lists members %+v, want base.qcow2 then desktop.qcow2", first.Members)
	}
	if first.Stats.Sent == 0 || first.StoredBytes == 0 {
		t.Fatalf("the first index of the chain stored nothing: %+v", first)
	}

	// The grab: the workstation pulls the chain by root and has the disk.
	wsDir := t.TempDir()
	wsTop := filepath.Join(wsDir, "desktop.qcow2")
	pulled := ws.pullJSON(t, first.Root, wsTop)
	if pulled.fetched(t) == 0 {
		t.Errorf("a cold pull of the indexed chain fetched nothing: %v", pulled)
	}
	runTool(t, "qemu-img", "compare", "-q", wsTop, top)
	sameFile(t, filepath.Join(wsDir, "base.qcow2"), base)

	// The hand back: a few blocks change on the workstation, which pushes
	// its layer; the server checks it out over its stale file.
	qemuWrite(t, wsTop, 0xc3, "2M", "33M")
	newRoot := ws.push(t, wsTop)
	co := ws.checkout(t, newRoot, top)
	sameFile(t, top, wsTop)
	sameFile(t, base, filepath.Join(wsDir, "base.qcow2"))
	runTool(t, "qemu-img", "compare", "-q", top, wsTop)
	runTool(t, "qemu-img", "check", "-q", top)
	if co.Stats.InPlace == 0 {
		t.Errorf("the checkout over the stale file reused nothing in place: %+v", co.Stats)
	}
	if len(co.Members) != 2 || co.Members[1].Path != top {
		t.Errorf("the checkout lists members %+v, want the chain's two files ending at %s", co.Members, top)
	}

	// The next grab: a small change on the server, and the second index
	// stores only a little of what the first did.
	again := ws.index(t, top)
	if again.Root != newRoot || again.Stats.Sent != 0 {
		t.Errorf("indexing the checked-out chain gave root %s and stored %d chunks; want the pushed root %s and nothing", again.Root, again.Stats.Sent, newRoot)
	}
	qemuWrite(t, top, 0x77, "5M")
	start = time.Now()
	second := ws.index(t, top)
	secondTook := time.Since(start)
	t.Logf("first index: %d chunks stored, %d bytes, %v; after a 64 KiB change: %d chunks, %d bytes, %v",
		first.Stats.Sent, first.StoredBytes, firstTook, second.Stats.Sent, second.StoredBytes, secondTook)
	if second.Stats.Sent == 0 || second.Stats.Sent > 4 || second.StoredBytes*10 > first.StoredBytes {
		t.Errorf("after a 64 KiB change the index stored %d chunks, %d bytes; the first stored %d, %d bytes: want 1 to 4 chunks and under a tenth of the bytes",
			second.Stats.Sent, second.StoredBytes, first.Stats.Sent, first.StoredBytes)
	}

	t.Run("paths outside --images are refused", func(t *testing.T) {
		outside := t.TempDir()
		secret := filepath.Join(outside, "secret.qcow2")
		runTool(t, "qemu-img", "create", "-q", "-f", "qcow2", secret, "1M")
		if err := os.Symlink(secret, filepath.Join(images, "escape.qcow2")); err != nil {
			t.Fatal(err)
		}
		for _, r := range []result{
			ws.sync(t, "index", secret),
			ws.sync(t, "index", filepath.Join(images, "escape.qcow2")),
			ws.sync(t, "index", images+"/../"+rel(t, filepath.Dir(images), secret)),
			ws.sync(t, "checkout", newRoot, filepath.Join(outside, "new.qcow2")),
			ws.sync(t, "checkout", newRoot, filepath.Join(images, "escape.qcow2")),
		} {
			if r.code == 0 || !strings.Contains(r.stderr, "outside the server's image folders") || !strings.Contains(r.stderr, "--images") {
				t.Errorf("want a refusal that says the path is outside the image folders and names --images, got:\n%s", r)
			}
		}
		if got := entries(t, outside); len(got) != 1 {
			t.Errorf("refused checkouts left files outside the image folders: %v", got)
		}
		sameFileAs(t, secret, fileHash(t, secret))
	})

	t.Run("a file a running QEMU holds is refused", func(t *testing.T) {
		before := fileHash(t, top)
		stop := holdInQEMU(t, top)
		defer stop()
		r := ws.sync(t, "checkout", first.Root, top)
		if r.code == 0 || !strings.Contains(r.stderr, top) || !strings.Contains(r.stderr, "in use by a running QEMU") || !strings.Contains(r.stderr, "stop the VM") {
			t.Errorf("a checkout over a file QEMU holds open: want a refusal naming the file and what to do, got:\n%s", r)
		}
		stop()
		sameFileAs(t, top, before)
		// Once QEMU is gone the same checkout goes through, and the server
		// holds the first chain again: indexed, it has the first root.
		ws.checkout(t, first.Root, top)
		if back := ws.index(t, top); back.Root != first.Root {
			t.Errorf("after checking out %s the server's chain indexes as %s", first.Root, back.Root)
		}
	})
}

// indexResult is what 'sync index --json' prints.
type indexResult struct {
	Root    string `json:"root"`
	Members []struct {
		Name string `json:"name"`
		Root string `json:"root"`
	} `json:"members"`
	Stats struct {
		Chunks int `json:"chunks"`
		Sent   int `json:"sent"`
	} `json:"stats"`
	StoredBytes int64 `json:"stored_bytes"`
}

// checkoutResult is what 'sync checkout --json' prints.
type checkoutResult struct {
	Members []struct {
		Name string `json:"name"`
		Path string `json:"path"`
	} `json:"members"`
	Stats struct {
		InPlace   int `json:"in_place"`
		FromCache int `json:"from_cache"`
	} `json:"stats"`
}

func (d *device) index(t *testing.T, path string) indexResult {
	t.Helper()
	r := ok(t, d.sync(t, "index", path, "--json"))
	var res indexResult
	if err := json.Unmarshal([]byte(r.stdout), &res); err != nil || !rootLine.MatchString(res.Root) {
		t.Fatalf("sync index --json printed no root (%v):\n%s", err, r)
	}
	// The text form names the same root first.
	if txt := ok(t, d.sync(t, "index", path)); !strings.HasPrefix(txt.stdout, res.Root+"\n") {
		t.Errorf("sync index printed a first line other than the root %s:\n%s", res.Root, txt)
	}
	return res
}

func (d *device) checkout(t *testing.T, root, path string) checkoutResult {
	t.Helper()
	r := ok(t, d.sync(t, "checkout", root, path, "--json"))
	var res checkoutResult
	if err := json.Unmarshal([]byte(r.stdout), &res); err != nil || len(res.Members) == 0 {
		t.Fatalf("sync checkout --json printed no members (%v):\n%s", err, r)
	}
	return res
}

// qemuWrite writes 64 KiB of pattern at each offset of a qcow2 image, as a
// guest would, through QEMU's own block layer.
func qemuWrite(t *testing.T, img string, pattern byte, offsets ...string) {
	t.Helper()
	args := []string{"-f", "qcow2"}
	for _, off := range offsets {
		args = append(args, "-c", fmt.Sprintf("write -P 0x%02x %s 64k", pattern, off))
	}
	runTool(t, "qemu-io", append(args, img)...)
}

func rel(t *testing.T, from, to string) string {
	t.Helper()
	r, err := filepath.Rel(from, to)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func fileHash(t *testing.T, path string) [32]byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return [32]byte(h.Sum(nil))
}

func sameFileAs(t *testing.T, path string, want [32]byte) {
	t.Helper()
	if fileHash(t, path) != want {
		t.Errorf("%s changed, and should have been left as it was", path)
	}
}

// holdInQEMU serves img with qemu-nbd, which opens and locks it with QEMU's
// own block layer, as a running VM's QEMU does (and, booting no guest,
// needs no turn at the lab's lock); it returns once the lock is taken.
// stop kills it and waits, and runs at the test's end too.
func holdInQEMU(t *testing.T, img string) (stop func()) {
	t.Helper()
	var out bytes.Buffer
	cmd := exec.Command("qemu-nbd", "-f", "qcow2", "-k", filepath.Join(t.TempDir(), "nbd.sock"), img)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cmd.Process.Kill()
		<-exited
	}
	t.Cleanup(stop)
	deadline := time.After(30 * time.Second)
	for !locked(t, img) {
		select {
		case <-exited:
			t.Fatalf("qemu-nbd exited before it locked %s: %v\n%s", img, cmd.ProcessState, out.String())
		case <-deadline:
			t.Fatalf("qemu-nbd did not lock %s within 30 s\n%s", img, out.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
	return stop
}

// locked reports whether any process holds a lock on the file.
func locked(t *testing.T, path string) bool {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	lk := unix.Flock_t{Type: unix.F_WRLCK}
	if err := unix.FcntlFlock(f.Fd(), unix.F_OFD_GETLK, &lk); err != nil {
		t.Fatal(err)
	}
	return lk.Type != unix.F_UNLCK
}
