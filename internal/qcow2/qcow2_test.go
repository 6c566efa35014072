package qcow2

import (
	"bytes"
	"crypto/rand"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
}

// A chain as a move leaves it: a raw base, a qcow2 of QEMU's default
// clusters over it, an overlay of 4 KiB clusters on top, written by QEMU
// itself; every read must equal what qemu-img makes of the top.
func TestReadsWhatQEMUSees(t *testing.T) {
	dir := t.TempDir()
	base := make([]byte, 3<<20+12345) // not a whole number of clusters
	rand.Read(base)
	if err := os.WriteFile(filepath.Join(dir, "base.raw"), base, 0o600); err != nil {
		t.Fatal(err)
	}
	mid, top := filepath.Join(dir, "mid.qcow2"), filepath.Join(dir, "top.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", "base.raw", mid, "8M")
	run(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0xaa 65536 4096", "-c", "write -P 0xbb 1048000 70000",
		"-c", "write -z 2097152 65536", "-c", "write -P 0xcc 5242880 4096", mid)
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", "-F", "qcow2", "-b", "mid.qcow2", top)
	run(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0xdd 69632 4096", "-c", "write -z 1048576 8192",
		"-c", "write -P 0xee 7340032 512", "-c", "discard 5242880 4096", top)
	want := filepath.Join(dir, "want.raw")
	run(t, "qemu-img", "convert", "-O", "raw", top, want)
	wantBytes, err := os.ReadFile(want)
	if err != nil {
		t.Fatal(err)
	}

	img, err := Open(top)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	if img.Size() != int64(len(wantBytes)) {
		t.Fatalf("size %d, qemu-img's raw copy %d", img.Size(), len(wantBytes))
	}
	got := make([]byte, len(wantBytes))
	if _, err := img.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if i := firstDifference(got, wantBytes); i >= 0 {
		t.Fatalf("the whole disk differs from qemu-img's at byte %d", i)
	}
	// Reads across cluster and file boundaries, as a mirror's writes fall.
	for _, r := range [][2]int64{{65536 - 100, 8292}, {1048000, 70000}, {int64(len(base)) - 10, 4106}, {8<<20 - 5, 5}, {0, 1}} {
		p := make([]byte, r[1])
		if _, err := img.ReadAt(p, r[0]); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(p, wantBytes[r[0]:r[0]+r[1]]) {
			t.Errorf("%d bytes at %d differ from qemu-img's", r[1], r[0])
		}
	}
}

func TestRefusesWhatItCannotRead(t *testing.T) {
	dir := t.TempDir()
	compressed := filepath.Join(dir, "c.qcow2")
	src := filepath.Join(dir, "src.raw")
	if err := os.WriteFile(src, bytes.Repeat([]byte("handoff "), 1<<14), 0o600); err != nil {
		t.Fatal(err)
	}
	run(t, "qemu-img", "convert", "-c", "-O", "qcow2", src, compressed)
	img, err := Open(compressed)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	if _, err := img.ReadAt(make([]byte, 4096), 0); !errors.Is(err, ErrUnsupported) {
		t.Errorf("a compressed cluster read as %v, want ErrUnsupported", err)
	}
	extended := filepath.Join(dir, "x.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "extended_l2=on", extended, "1M")
	if _, err := Open(extended); !errors.Is(err, ErrUnsupported) {
		t.Errorf("extended L2 entries opened with %v, want ErrUnsupported", err)
	}
	if _, err := Open(filepath.Join(dir, "missing.qcow2")); err == nil {
		t.Error("a missing file opened")
	}
}

func firstDifference(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	if len(a) != len(b) {
		return min(len(a), len(b))
	}
	return -1
}
