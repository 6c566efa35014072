package syncengine

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestImagesResolveRefusesPathsOutsideTheFolders walks paths through real
// folders and symlinks: inside, outside, escaping by a symlink or by ".."
// after one, and files not there yet.
func TestImagesResolveRefusesPathsOutsideTheFolders(t *testing.T) {
	root := t.TempDir()
	images := filepath.Join(root, "images")
	other := filepath.Join(root, "other")
	for _, d := range []string{images, other, filepath.Join(images, "sub")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{filepath.Join(images, "disk.qcow2"), filepath.Join(other, "secret"), filepath.Join(images, "sub", "base.qcow2")} {
		if err := os.WriteFile(f, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	links := map[string]string{
		filepath.Join(images, "escape"):       filepath.Join(other, "secret"), // a file link leading out
		filepath.Join(images, "outdir"):       other,                          // a folder link leading out
		filepath.Join(other, "in"):            images,                         // a link from outside leading in
		filepath.Join(images, "sub", "alias"): filepath.Join(images, "disk.qcow2"),
	}
	for link, target := range links {
		if err := os.Symlink(target, link); err != nil {
			t.Fatal(err)
		}
	}
	// The folder given may itself be reached by a symlink.
	imagesLink := filepath.Join(root, "images-link")
	if err := os.Symlink(images, imagesLink); err != nil {
		t.Fatal(err)
	}
	im := &Images{Dirs: []string{imagesLink}}
	tests := []struct {
		name      string
		path      string
		mustExist bool
		want      string // the resolved path; "" when refused
		outside   bool   // refused as outside (else refused for another reason)
	}{
		{"a file inside", filepath.Join(images, "disk.qcow2"), true, filepath.Join(images, "disk.qcow2"), false},
		{"a file in a subfolder", filepath.Join(images, "sub", "base.qcow2"), true, filepath.Join(images, "sub", "base.qcow2"), false},
		{"a new file inside", filepath.Join(images, "new.qcow2"), false, filepath.Join(images, "new.qcow2"), false},
		{"a new file in a new folder", filepath.Join(images, "a", "b", "new.qcow2"), false, filepath.Join(images, "a", "b", "new.qcow2"), false},
		{"a file outside", filepath.Join(other, "secret"), true, "", true},
		{"a new file outside", filepath.Join(other, "new.qcow2"), false, "", true},
		{"dot-dot out", filepath.Join(images, "..", "other", "secret"), true, "", true},
		{"dot-dot out, written unclean", images + "/sub/../../other/secret", true, "", true},
		{"dot-dot staying in", images + "/sub/../disk.qcow2", true, filepath.Join(images, "disk.qcow2"), false},
		{"a symlink escaping", filepath.Join(images, "escape"), true, "", true},
		{"through a folder symlink escaping", filepath.Join(images, "outdir", "secret"), true, "", true},
		{"a new file through a folder symlink escaping", filepath.Join(images, "outdir", "new.qcow2"), false, "", true},
		// Lexically this is images/disk.qcow2; the kernel goes through the
		// link to other/, then up to root/.
		{"dot-dot after a symlink", filepath.Join(images, "outdir") + "/../images/disk.qcow2", true, filepath.Join(images, "disk.qcow2"), false},
		{"dot-dot after a symlink, out", images + "/outdir/../other/secret", true, "", true},
		{"a symlink from outside leading in", filepath.Join(other, "in", "disk.qcow2"), true, filepath.Join(images, "disk.qcow2"), false},
		{"a symlink inside to inside", filepath.Join(images, "sub", "alias"), true, filepath.Join(images, "disk.qcow2"), false},
		{"the folder itself", images, false, "", true},
		{"the folder itself, to read", images, true, "", true},
		{"a subfolder, not a file", filepath.Join(images, "sub"), true, "", false},
		{"relative", "images/disk.qcow2", false, "", false},
		{"dot-dot in the missing part", filepath.Join(images, "nothere") + "/../disk.qcow2", false, "", false},
		{"root", "/", false, "", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := im.resolve(tc.path, tc.mustExist)
			if tc.want != "" {
				if err != nil || got != tc.want {
					t.Fatalf("resolve(%q) = %q, %v; want %q", tc.path, got, err, tc.want)
				}
				return
			}
			if err == nil {
				t.Fatalf("resolve(%q) = %q, want it refused", tc.path, got)
			}
			if errors.Is(err, ErrOutsideImages) != tc.outside {
				t.Fatalf("resolve(%q): %v; want outside: %v", tc.path, err, tc.outside)
			}
			if tc.outside && !strings.Contains(err.Error(), "--images") {
				t.Errorf("the refusal does not name the flag that would allow it: %v", err)
			}
		})
	}
}

// TestImagesIndexStoresOnlyWhatChanged indexes a raw image into a store,
// changes a few chunks, indexes again, and checks the store gained only
// those; then a checkout over a stale copy gives the image back.
func TestImagesIndexStoresOnlyWhatChanged(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	img := filepath.Join(dir, "disk.raw")
	data := randomImage(t, 200*DefaultChunkSize+123)
	if err := os.WriteFile(img, data, 0o644); err != nil {
		t.Fatal(err)
	}
	im := &Images{Store: DirStore{Dir: t.TempDir()}, Codec: NewCodec(), Dirs: []string{dir}}
	first, err := im.Index(ctx, img, nil)
	if err != nil {
		t.Fatal(err)
	}
	if first.Stats.Sent != 201 || first.StoredBytes <= 0 {
		t.Fatalf("the first index of 201 distinct chunks stored %d, %d bytes: %+v", first.Stats.Sent, first.StoredBytes, first)
	}
	if first.Root != mustManifest(t, img).Root() {
		t.Fatalf("index root %s is not the image's root", first.Root)
	}
	stale := filepath.Join(dir, "stale.raw")
	if err := os.WriteFile(stale, data, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, chunk := range []int{3, 77, 150} {
		copy(data[chunk*DefaultChunkSize+100:], bytes.Repeat([]byte("changed"), 100))
	}
	if err := os.WriteFile(img, data, 0o644); err != nil {
		t.Fatal(err)
	}
	second, err := im.Index(ctx, img, nil)
	if err != nil {
		t.Fatal(err)
	}
	if second.Stats.Sent != 3 || second.StoredBytes > 4*DefaultChunkSize {
		t.Errorf("after changing 3 chunks the index stored %d chunks, %d bytes; want 3 and under 4 chunks' worth", second.Stats.Sent, second.StoredBytes)
	}
	res, err := im.Checkout(ctx, second.Root, stale, nil)
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(stale)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("the checkout over the stale copy does not hold the image (%v)", err)
	}
	if res.Stats.InPlace < 190 || res.Stats.FromCache != 3 {
		t.Errorf("the checkout over a copy 3 chunks apart reused %d in place and read %d from the store; want at least 190 and 3: %+v", res.Stats.InPlace, res.Stats.FromCache, res.Stats)
	}
	if _, err := im.Checkout(ctx, second.Root, filepath.Join(t.TempDir(), "x.raw"), nil); !errors.Is(err, ErrOutsideImages) {
		t.Errorf("a checkout outside the folders: %v, want it refused as outside", err)
	}
	sub := filepath.Join(dir, "sub")
	if err := os.Mkdir(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := im.Checkout(ctx, second.Root, sub, nil); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("a checkout over a folder: %v, want it refused as not a regular file", err)
	}
}

func randomImage(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7919>>3) ^ byte(i>>16)
	}
	// A little randomness per chunk, so no two chunks are alike.
	for c := 0; c*DefaultChunkSize < n; c++ {
		copy(b[c*DefaultChunkSize:], []byte(strings.Repeat(string(rune('a'+c%26)), 1+c%13)+"#"+string(rune(c))))
	}
	return b
}

func mustManifest(t *testing.T, path string) *Manifest {
	t.Helper()
	m, err := Index(context.Background(), path, 0)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestImagesCheckoutGivesNewFilesTheFolderOwner checks out, as root, into
// a folder another user owns (as libvirt's daemon owns its images): the
// new file is that user's, and a file it replaces keeps its permissions.
func TestImagesCheckoutGivesNewFilesTheFolderOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("this test gives files away, which only root may: run it as root (as 'make test' does)")
	}
	ctx := context.Background()
	src := t.TempDir()
	img := filepath.Join(src, "disk.raw")
	if err := os.WriteFile(img, randomImage(t, 5*DefaultChunkSize), 0o644); err != nil {
		t.Fatal(err)
	}
	folder := filepath.Join(t.TempDir(), "images")
	if err := os.Mkdir(folder, 0o755); err != nil {
		t.Fatal(err)
	}
	const nobody = 65534
	if err := os.Chown(folder, nobody, nobody); err != nil {
		t.Fatal(err)
	}
	im := &Images{Store: DirStore{Dir: t.TempDir()}, Codec: NewCodec(), Dirs: []string{src, folder}}
	res, err := im.Index(ctx, img, nil)
	if err != nil {
		t.Fatal(err)
	}
	fresh, replaced := filepath.Join(folder, "new.raw"), filepath.Join(folder, "old.raw")
	if err := os.WriteFile(replaced, []byte("old"), 0o640); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{fresh, replaced} {
		if _, err := im.Checkout(ctx, res.Root, p, nil); err != nil {
			t.Fatal(err)
		}
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if st := fi.Sys().(*syscall.Stat_t); st.Uid != nobody || st.Gid != nobody {
			t.Errorf("%s is owned by %d:%d, want its folder's owner %d:%d", p, st.Uid, st.Gid, nobody, nobody)
		}
		if p == replaced && fi.Mode().Perm() != 0o640 {
			t.Errorf("%s has mode %v, want the replaced file's 0640", p, fi.Mode().Perm())
		}
	}
}
