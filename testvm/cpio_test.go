package testvm

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// TestCPIOUnpacksWithCpio proves the archive with the real cpio tool, the
// same format reader the kernel follows.
func TestCPIOUnpacksWithCpio(t *testing.T) {
	var buf bytes.Buffer
	err := writeCPIO(&buf, []cpioEntry{
		{Name: "bin", Mode: modeDir | 0o755},
		{Name: "bin/odd-size", Mode: modeRegular | 0o755, Data: []byte("12345")},
		{Name: "bin/link", Mode: modeSymlink | 0o777, Data: []byte("odd-size")},
		{Name: "empty", Mode: modeRegular | 0o644},
		{Name: "console", Mode: modeCharDev | 0o600, Major: 5, Minor: 1},
	})
	if err != nil {
		t.Fatal(err)
	}
	if buf.Len()%4 != 0 {
		t.Errorf("archive is %d bytes, want a multiple of 4", buf.Len())
	}
	dir := t.TempDir()
	cmd := exec.Command("cpio", "-i", "-d", "--no-absolute-filenames")
	cmd.Dir, cmd.Stdin = dir, &buf
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cpio -i: %v: %s", err, out)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "bin/odd-size")); err != nil || string(b) != "12345" {
		t.Errorf("bin/odd-size = %q, %v", b, err)
	}
	if target, err := os.Readlink(filepath.Join(dir, "bin/link")); err != nil || target != "odd-size" {
		t.Errorf("bin/link -> %q, %v", target, err)
	}
	if fi, err := os.Stat(filepath.Join(dir, "empty")); err != nil || fi.Size() != 0 || fi.Mode().Perm() != 0o644 {
		t.Errorf("empty: %v, %v", fi, err)
	}
	if fi, err := os.Lstat(filepath.Join(dir, "console")); err != nil || fi.Mode()&os.ModeCharDevice == 0 {
		t.Errorf("console is not a character device: %v, %v", fi, err)
	}
}
