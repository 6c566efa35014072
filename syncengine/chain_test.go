package syncengine

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// tool runs a command the chain tests need, and fails the test with what
// it said if it fails.
func tool(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func needTools(t *testing.T) {
	t.Helper()
	for _, name := range []string{"qemu-img", "qemu-io", "mkfs.ext4"} {
		if _, err := exec.LookPath(name); err != nil {
			t.Fatalf("%s is not installed: run 'make deps' (it installs e2fsprogs and qemu-utils)", name)
		}
	}
}

// baseImage makes an 8 MiB raw ext4 image of real files at path.
func baseImage(t *testing.T, path string) {
	t.Helper()
	tree := filepath.Join(t.TempDir(), "tree")
	os.MkdirAll(tree, 0o755)
	tool(t, "cp", "-rL", "/usr/share/zoneinfo/Europe", "/etc/services", tree)
	tool(t, "mkfs.ext4", "-q", "-F", "-d", tree, path, "8M")
}

// chainClient is a device: its own cache, the shared store in dir.
func chainClient(t *testing.T, store string) *Client {
	return &Client{Remote: DirStore{Dir: store}, Cache: DirStore{Dir: t.TempDir()}, Codec: NewCodec()}
}

// listDir is every file under dir, relative and slash-separated.
func listDir(t *testing.T, dir string) []string {
	t.Helper()
	var names []string
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		names = append(names, filepath.ToSlash(rel))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(names)
	return names
}

// refCount is how many paths the cache remembers a base for.
func refCount(t *testing.T, c *Client) int {
	t.Helper()
	es, err := os.ReadDir(filepath.Dir(c.Cache.refPath("x")))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return len(es)
}

func memberNames(ms []ChainMember) []string {
	var names []string
	for _, m := range ms {
		names = append(names, m.Name+" "+m.Format)
	}
	return names
}

// TestChainPushPull pushes a three-file chain (a raw ext4 base, a qcow2 in
// a subfolder on it, an overlay on that, each with data of its own, all
// named by relative paths) and pulls it on a second device into an empty
// folder: every file arrives byte for byte, and the VM's disk reads the
// same. An update of the overlay then moves the overlay's change only.
func TestChainPushPull(t *testing.T) {
	needTools(t)
	ctx := t.Context()
	src, store := t.TempDir(), t.TempDir()
	baseImage(t, filepath.Join(src, "base.raw"))
	os.Mkdir(filepath.Join(src, "layers"), 0o755)
	mid := filepath.Join(src, "layers", "mid.qcow2")
	top := filepath.Join(src, "overlay.qcow2")
	tool(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "../base.raw", "-F", "raw", mid)
	tool(t, "qemu-io", "-c", "write -P 0x33 2M 64k", mid)
	tool(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "layers/mid.qcow2", "-F", "qcow2", top)
	tool(t, "qemu-io", "-c", "write -P 0x5a 1M 64k", top)

	laptop := chainClient(t, store)
	root, pushed, st, err := laptop.PushChain(ctx, top)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"base.raw raw", "layers/mid.qcow2 qcow2", "overlay.qcow2 qcow2"}
	if got := memberNames(pushed); !slices.Equal(got, want) {
		t.Fatalf("PushChain found the members %q, want %q (base first)", got, want)
	}
	var size int64
	for _, m := range pushed {
		if m.Root == root || m.Root.IsZero() {
			t.Errorf("member %s has root %s; the chain's root is %s", m.Name, m.Root, root)
		}
		size += m.Stats.ImageBytes
	}
	if st.ImageBytes <= size || st.Sent == 0 {
		t.Errorf("the chain's stats %+v: want every member's %d bytes and the manifest's, and chunks sent", st, size)
	}
	if n := refCount(t, laptop); n != len(pushed) {
		t.Errorf("the cache remembers %d paths after pushing %d files: the manifest's temporary file was not forgotten", n, len(pushed))
	}
	again, _, st2, err := laptop.PushChain(ctx, top)
	if err != nil || again != root || st2.Sent != 0 {
		t.Errorf("pushing the same chain again: root %s (first %s), sent %d, err %v; want the same root and nothing sent", again, root, st2.Sent, err)
	}

	desktop := chainClient(t, store)
	out := filepath.Join(t.TempDir(), "vm")
	os.Mkdir(out, 0o755)
	pulledTop := filepath.Join(out, "overlay.qcow2")
	pulled, _, err := desktop.PullChain(ctx, root, pulledTop)
	if err != nil {
		t.Fatal(err)
	}
	if got := memberNames(pulled); !slices.Equal(got, want) {
		t.Fatalf("PullChain wrote %q, want %q", got, want)
	}
	if got, want := listDir(t, out), []string{"base.raw", "layers/mid.qcow2", "overlay.qcow2"}; !slices.Equal(got, want) {
		t.Errorf("the folder holds %q, want exactly %q (no temporary files)", got, want)
	}
	for i, m := range pulled {
		if m.Root != pushed[i].Root {
			t.Errorf("pulled %s as %s, pushed as %s", m.Name, m.Root, pushed[i].Root)
		}
		sameFile(t, filepath.Join(src, m.Name), filepath.Join(out, m.Name))
	}
	if pulled[2].Path != pulledTop {
		t.Errorf("the top was pulled to %s, want %s", pulled[2].Path, pulledTop)
	}
	tool(t, "qemu-img", "check", "-q", pulledTop)
	tool(t, "qemu-img", "compare", "-q", top, pulledTop)
	tool(t, "qemu-io", "-r", "-c", "read -P 0x5a 1M 64k", "-c", "read -P 0x33 2M 64k", pulledTop)

	var newRoot Hash
	t.Run("an update moves the overlay's change", func(t *testing.T) {
		tool(t, "qemu-io", "-c", "write -P 0xc4 5M 64k", top)
		newRoot, _, _, err = laptop.PushChain(ctx, top)
		if err != nil || newRoot == root {
			t.Fatalf("pushing the changed chain: root %s (before %s), %v", newRoot, root, err)
		}
		upd, _, err := desktop.PullChain(ctx, newRoot, pulledTop)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range upd[:2] {
			if m.Stats.Sent != 0 || m.Stats.InPlace == 0 {
				t.Errorf("the unchanged %s: sent %d chunks, %d in place; want none sent, all in place: %+v", m.Name, m.Stats.Sent, m.Stats.InPlace, m.Stats)
			}
		}
		if s := upd[2].Stats; s.Sent == 0 || s.Sent > 4 || s.Base != pushed[2].Root {
			t.Errorf("the overlay's update sent %d chunks against base %s; want a few, against %s: %+v", s.Sent, s.Base, pushed[2].Root, s)
		}
		sameFile(t, top, pulledTop)
		if got := listDir(t, out); len(got) != 3 {
			t.Errorf("after the update the folder holds %q", got)
		}
		if n := refCount(t, desktop); n != 3 {
			t.Errorf("the cache remembers %d paths, want the 3 files: a staged file's was kept", n)
		}
	})

	t.Run("a top named like a member is refused", func(t *testing.T) {
		dir := t.TempDir()
		_, _, err := desktop.PullChain(ctx, root, filepath.Join(dir, "base.raw"))
		if err == nil || !strings.Contains(err.Error(), "another name") {
			t.Errorf("pulling the chain to base.raw: %v; want a refusal that asks for another name", err)
		}
		if got := listDir(t, dir); len(got) != 0 {
			t.Errorf("the refused pull left %q", got)
		}
	})

	t.Run("gc keeps a kept chain's files", func(t *testing.T) {
		if newRoot.IsZero() {
			t.Skip("the update failed")
		}
		st := DirStore{Dir: store}
		keep, err := withChainMembers(ctx, st, NewCodec(), []Hash{newRoot})
		if err != nil || len(keep) != 4 {
			t.Fatalf("the chain %s keeps %v, %v; want it and its 3 files", newRoot, keep, err)
		}
		// GC is given the chain's root alone: it keeps the files itself.
		if n, err := st.GC(ctx, NewCodec(), []Hash{newRoot}); err != nil || n == 0 {
			t.Fatalf("gc removed %d objects, %v; want the old overlay's and manifest's", n, err)
		}
		fresh := filepath.Join(t.TempDir(), "overlay.qcow2")
		if _, _, err := chainClient(t, store).PullChain(ctx, newRoot, fresh); err != nil {
			t.Fatalf("after gc the kept chain does not pull: %v", err)
		}
		sameFile(t, top, fresh)
	})
}

// TestChainAbsoluteBacking pushes an overlay whose header names its base,
// in another folder, by an absolute path, and pulls it into a new folder
// under a new name: the pulled overlay's header is fixed to name the
// pulled base, and the pulled disk works once the original is gone.
func TestChainAbsoluteBacking(t *testing.T) {
	needTools(t)
	ctx := t.Context()
	images, vms, store := t.TempDir(), t.TempDir(), t.TempDir()
	raw := filepath.Join(t.TempDir(), "fs.raw")
	baseImage(t, raw)
	base := filepath.Join(images, "base.qcow2")
	tool(t, "qemu-img", "convert", "-q", "-O", "qcow2", raw, base)
	top := filepath.Join(vms, "overlay.qcow2")
	tool(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", top)
	tool(t, "qemu-io", "-c", "write -P 0x5a 1M 64k", top)

	root, pushed, _, err := chainClient(t, store).PushChain(ctx, top)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := memberNames(pushed), []string{"base.qcow2 qcow2", "overlay.qcow2 qcow2"}; !slices.Equal(got, want) {
		t.Fatalf("members %q, want %q", got, want)
	}
	if pushed[1].Backing != base {
		t.Errorf("the overlay's backing name is recorded as %q, want %q as its header holds it", pushed[1].Backing, base)
	}
	out := t.TempDir()
	pulledTop := filepath.Join(out, "vm.qcow2")
	if _, _, err := chainClient(t, store).PullChain(ctx, root, pulledTop); err != nil {
		t.Fatal(err)
	}
	sameFile(t, base, filepath.Join(out, "base.qcow2"))
	tool(t, "qemu-img", "compare", "-q", top, pulledTop)

	// The original chain goes: the pulled one must not lean on it.
	if err := os.Rename(images, images+".gone"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(images + ".gone") })
	var infos []qemuInfo
	if err := json.Unmarshal([]byte(tool(t, "qemu-img", "info", "--backing-chain", "--output=json", pulledTop)), &infos); err != nil {
		t.Fatal(err)
	}
	if len(infos) != 2 || infos[0].BackingFilename != "base.qcow2" || filepath.Clean(infos[1].Filename) != filepath.Join(out, "base.qcow2") {
		t.Errorf("the pulled overlay's chain is %+v; want it backed by base.qcow2 beside it", infos)
	}
	tool(t, "qemu-img", "check", "-q", pulledTop)
	tool(t, "qemu-io", "-r", "-c", "read -P 0x5a 1M 64k", pulledTop)
	if got := listDir(t, out); !slices.Equal(got, []string{"base.qcow2", "vm.qcow2"}) {
		t.Errorf("the folder holds %q", got)
	}
}

// TestChainPlainFile: an image without a backing file goes through
// PushChain and PullChain exactly as through Push and Pull.
func TestChainPlainFile(t *testing.T) {
	needTools(t)
	ctx := t.Context()
	dir := t.TempDir()
	random := make([]byte, 3*DefaultChunkSize+777)
	for i := range random {
		random[i] = byte(i*7919>>3 ^ i)
	}
	files := map[string][]byte{"data.bin": random, "tiny": []byte("hand"), "empty": nil}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	tool(t, "qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", filepath.Join(dir, "data.bin"), filepath.Join(dir, "disk.qcow2"))
	for _, name := range []string{"data.bin", "tiny", "empty", "disk.qcow2"} {
		t.Run(name, func(t *testing.T) {
			src, store := filepath.Join(dir, name), t.TempDir()
			plain, _, err := chainClient(t, store).Push(ctx, src)
			if err != nil {
				t.Fatal(err)
			}
			pusher := chainClient(t, store)
			root, members, st, err := pusher.PushChain(ctx, src)
			if err != nil || root != plain || len(members) != 1 || members[0].Root != root || members[0].Stats != st {
				t.Fatalf("PushChain: root %s, members %+v, err %v; want Push's root %s and one member", root, members, err, plain)
			}
			out := t.TempDir()
			dest := filepath.Join(out, "copy")
			puller := chainClient(t, store)
			got, _, err := puller.PullChain(ctx, root, dest)
			if err != nil || len(got) != 1 || got[0].Path != dest {
				t.Fatalf("PullChain: %+v, %v; want one member at %s", got, err, dest)
			}
			sameFile(t, src, dest)
			again, st2, err := puller.PullChain(ctx, root, dest)
			if err != nil || len(again) != 1 || st2.Sent != 0 || st2.FromCache != 0 {
				t.Errorf("pulling it again over itself: %+v, %v; want nothing fetched or read from the cache (all in place)", st2, err)
			}
			sameFile(t, src, dest)
			if got := listDir(t, out); !slices.Equal(got, []string{"copy"}) {
				t.Errorf("the folder holds %q, want only the pulled file", got)
			}
			if n := refCount(t, puller); n != 1 {
				t.Errorf("the cache remembers %d paths, want 1: the staged name's was kept", n)
			}
		})
	}
}

// TestChainRefusesBadManifests: a manifest that would write outside the
// target's folder, or is broken, is refused before any file is written.
func TestChainRefusesBadManifests(t *testing.T) {
	ctx := t.Context()
	store, work := t.TempDir(), t.TempDir()
	c := chainClient(t, store)
	member := filepath.Join(work, "member")
	os.WriteFile(member, []byte("a member's bytes"), 0o644)
	r, _, err := c.Push(ctx, member)
	if err != nil {
		t.Fatal(err)
	}
	line := func(name, backing string) string {
		return fmt.Sprintf(`{"name":%q,"format":"qcow2","backing":%q,"root":"%s"}`+"\n", name, backing, r)
	}
	cases := map[string]struct{ manifest, want string }{
		"a parent folder":            {"handoff-chain 1\n" + line("../evil", "") + line("top.qcow2", "../evil"), "../evil"},
		"through a folder":           {"handoff-chain 1\n" + line("a/../../evil", "") + line("top.qcow2", "x"), "a/../../evil"},
		"an absolute path":           {"handoff-chain 1\n" + line("/tmp/evil", "") + line("top.qcow2", "/tmp/evil"), "/tmp/evil"},
		"a newer version":            {"handoff-chain 2\n" + line("base", "") + line("top.qcow2", "base"), "upgrade"},
		"not JSON":                   {"handoff-chain 1\n{name: base}\n", "line 2"},
		"a name twice":               {"handoff-chain 1\n" + line("base", "") + line("base", "base"), "twice"},
		"a base with a backing file": {"handoff-chain 1\n" + line("base", "elsewhere") + line("top.qcow2", "base"), "only the first"},
		"no files":                   {"handoff-chain 1\n", "no files"},
		"an odd format":              {"handoff-chain 1\n" + strings.Replace(line("base", ""), "qcow2", "-o x", 1), "not an image format"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			mf := filepath.Join(work, "manifest")
			os.WriteFile(mf, []byte(tc.manifest), 0o644)
			root, _, err := c.Push(ctx, mf)
			if err != nil {
				t.Fatal(err)
			}
			parent := t.TempDir()
			dir := filepath.Join(parent, "vm")
			os.Mkdir(dir, 0o755)
			_, _, err = chainClient(t, store).PullChain(ctx, root, filepath.Join(dir, "top.qcow2"))
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "broken chain manifest") {
				t.Errorf("pulling a manifest with %s: %v; want it refused as broken, naming %q", name, err, tc.want)
			}
			if got := listDir(t, parent); len(got) != 0 {
				t.Errorf("the refused pull wrote %q", got)
			}
		})
	}
}

// TestChainMissingMember: a chain whose base is gone is not pushed, and
// the error names the file that is missing and the header naming it.
func TestChainMissingMember(t *testing.T) {
	needTools(t)
	dir := t.TempDir()
	base := filepath.Join(dir, "base.qcow2")
	tool(t, "qemu-img", "create", "-q", "-f", "qcow2", base, "4M")
	mid := filepath.Join(dir, "mid.qcow2")
	top := filepath.Join(dir, "top.qcow2")
	tool(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", mid)
	tool(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "mid.qcow2", "-F", "qcow2", top)
	os.Remove(base)
	store := t.TempDir()
	_, _, _, err := chainClient(t, store).PushChain(t.Context(), top)
	if err == nil || !strings.Contains(err.Error(), base+" does not exist") || !strings.Contains(err.Error(), mid) {
		t.Fatalf("pushing a chain whose base is gone: %v; want an error naming %s and the header (%s) that names it", err, base, mid)
	}
	if got := listDir(t, store); len(got) != 0 {
		t.Errorf("the refused push stored %d objects", len(got))
	}
}

// TestChainManifestRoundTrip: what encodeChain writes, parseChain reads
// back, and names that stay in the folder are accepted.
func TestChainManifestRoundTrip(t *testing.T) {
	ms := []ChainMember{
		{Name: "images/base.raw", Format: "raw", Root: Sum([]byte("a"))},
		{Name: "top.qcow2", Format: "qcow2", Backing: "/var/lib/images/base.raw", Root: Sum([]byte("b"))},
	}
	b := encodeChain(ms)
	if !bytes.HasPrefix(b, []byte("handoff-chain 1\n")) {
		t.Fatalf("the manifest starts %q", b[:20])
	}
	got, err := parseChain(b)
	if err != nil || len(got) != 2 || got[0] != ms[0] || got[1] != ms[1] {
		t.Fatalf("parsed %+v, %v; want %+v", got, err, ms)
	}
}
