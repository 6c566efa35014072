package syncengine

// Backing chains
//
// A VM disk is often a qcow2 overlay on a backing file, or a chain of
// them: the overlay alone is not the VM. PushChain pushes every file of
// the chain, each as an ordinary image (so each keeps its own base in the
// cache, and an update of the overlay sends only the overlay's changes),
// then a small text manifest naming them, also as an ordinary image. The
// manifest's root names the whole chain, and nothing new crosses the wire:
//
//	handoff-chain 1
//	{"name":"base.raw","format":"raw","backing":"","root":"…"}
//	{"name":"overlay.qcow2","format":"qcow2","backing":"base.raw","root":"…"}
//
// Members come base first; a name is slash-separated and relative to the
// top file's folder. PullChain pulls a root and, if it is a manifest, the
// members beside the target, and fixes the header of any member whose
// backing file name would not find its backing member there.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// ChainMember is one file of a backing chain.
type ChainMember struct {
	Name    string `json:"name"`              // slash-separated, relative to the top file's folder
	Format  string `json:"format,omitempty"`  // as qemu-img names it: qcow2, raw, …
	Backing string `json:"backing,omitempty"` // its backing file as its header names it; "" for the base
	Root    Hash   `json:"root"`
	Path    string `json:"path"`  // where it was pushed from, or pulled to
	Stats   Stats  `json:"stats"` // what its own transfer moved
}

// chainMagic starts a chain manifest; the number after it is the format's
// version.
const chainMagic = "handoff-chain "

const chainVersion = 1

// maxChainManifest bounds a manifest: thousands of members. A larger image
// that starts like one is broken, not read whole into memory.
const maxChainManifest = 1 << 20

// PushChain pushes the image at path and, if it is an overlay, every file
// of its backing chain, base first, then a manifest naming them all; it
// returns the manifest's root, which names the whole chain. An image with
// no backing file is pushed exactly as Push does, and its own root
// returned, so callers can always call PushChain. The stats are the sum of
// every push's; Base is the top file's.
func (c *Client) PushChain(ctx context.Context, path string) (root Hash, members []ChainMember, st Stats, err error) {
	return storeChain(ctx, path, c.Push, c.pushBytes)
}

// storeChain stores the chain of the image at path as PushChain describes,
// each file with put and the manifest with putManifest: by a push, or on
// the server into its own store (Images.Index).
func storeChain(ctx context.Context, path string, put func(ctx context.Context, path string) (Hash, Stats, error),
	putManifest func(ctx context.Context, near string, b []byte) (Hash, Stats, error)) (root Hash, members []ChainMember, st Stats, err error) {
	files, err := findChain(ctx, path)
	if err != nil {
		return Hash{}, nil, st, err
	}
	if len(files) == 1 {
		root, st, err := put(ctx, path)
		if err != nil {
			return Hash{}, nil, st, err
		}
		m := files[0]
		m.Root, m.Stats = root, st
		return root, []ChainMember{m}, st, nil
	}
	for i := range files {
		r, s, err := put(ctx, files[i].Path)
		st.Add(s)
		if err != nil {
			return Hash{}, nil, st, fmt.Errorf("store %s, a file of the backing chain of %s: %w", files[i].Path, path, err)
		}
		files[i].Root, files[i].Stats = r, s
	}
	// Stored last, the manifest exists in the store only once every file
	// it names does.
	root, s, err := putManifest(ctx, path, encodeChain(files))
	st.Add(s)
	if err != nil {
		return Hash{}, nil, st, fmt.Errorf("store the manifest of the backing chain of %s: %w", path, err)
	}
	st.Base = files[len(files)-1].Stats.Base
	return root, files, st, nil
}

// pushBytes pushes b, from a temporary file, as an image of its own. The
// cache forgets the temporary path again: no later push will name it.
func (c *Client) pushBytes(ctx context.Context, near string, b []byte) (Hash, Stats, error) {
	f, err := os.CreateTemp("", ".handoff-chain-")
	if err != nil {
		return Hash{}, Stats{}, fmt.Errorf("write the manifest of %s to a temporary file: %w", near, diskErr(err))
	}
	defer func() {
		os.Remove(f.Name())
		os.Remove(c.Cache.refPath(f.Name()))
	}()
	_, err = f.Write(b)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return Hash{}, Stats{}, fmt.Errorf("write the manifest of %s to %s: %w", near, f.Name(), diskErr(err))
	}
	return c.Push(ctx, f.Name())
}

// PullChain writes what root names to path: an image, as Pull does, or a
// backing chain, its top file to path and every other member into path's
// folder under its name. A member whose header names its backing file by
// a path that does not lead to its backing member there (an absolute
// path, another folder) gets its header fixed (qemu-img rebase -u). Every
// file is written beside its target first, and the targets are replaced
// only once every member has arrived, been verified and fixed: on any
// failure the files there stay as they were. The stats are the sum of
// every pull's; Base is the top file's.
func (c *Client) PullChain(ctx context.Context, root Hash, path string) (_ []ChainMember, st Stats, err error) {
	top, err := filepath.Abs(path)
	if err != nil {
		return nil, st, fmt.Errorf("pull to %s: %w", path, err)
	}
	if fi, err := os.Stat(filepath.Dir(top)); err != nil || !fi.IsDir() {
		return nil, st, fmt.Errorf("write the image to %s: the folder %s does not exist: create it, or pull to another path", path, filepath.Dir(path))
	}
	// What arrives may be a manifest, so it must not replace path yet.
	tmp, err := c.stage(top)
	if err != nil {
		return nil, st, err
	}
	defer c.unstage(tmp)
	s, err := c.Pull(ctx, root, tmp)
	st.Add(s)
	st.Base = s.Base
	if err != nil {
		return nil, st, err
	}
	manifest, err := readChainManifest(tmp)
	if err != nil {
		return nil, st, fmt.Errorf("read what %s holds: %w", root, err)
	}
	if manifest == nil {
		if err := c.place(tmp, top, root); err != nil {
			return nil, st, err
		}
		return []ChainMember{{Name: filepath.Base(path), Root: root, Path: path, Stats: s}}, st, nil
	}
	c.unstage(tmp)
	members, err := parseChain(manifest)
	if err != nil {
		return nil, st, fmt.Errorf("%s is a broken chain manifest: %w; push the chain again", root, err)
	}
	dests, err := chainDests(members, top)
	if err != nil {
		return nil, st, err
	}
	staged := make([]string, len(members))
	defer func() {
		for _, s := range staged {
			if s != "" {
				c.unstage(s)
			}
		}
	}()
	for i, m := range members {
		if err := os.MkdirAll(filepath.Dir(dests[i]), 0o755); err != nil {
			return nil, st, fmt.Errorf("make the folder for %s, a file of the chain %s: %w", m.Name, root, diskErr(err))
		}
		if staged[i], err = c.stage(dests[i]); err != nil {
			return nil, st, err
		}
		// Pull always writes a new file and renames it over the staged
		// name, so the rebase below never reaches dest through the link.
		s, err := c.Pull(ctx, m.Root, staged[i])
		st.Add(s)
		if err != nil {
			return nil, st, fmt.Errorf("pull %s, a file of the chain %s: %w", m.Name, root, err)
		}
		members[i].Stats = s
		members[i].Path = filepath.Join(filepath.Dir(path), filepath.FromSlash(m.Name))
		if i > 0 && !backingResolves(dests[i], m.Backing, dests[i-1]) {
			rel, err := filepath.Rel(filepath.Dir(dests[i]), dests[i-1])
			if err != nil {
				return nil, st, fmt.Errorf("name %s from %s: %w", dests[i-1], dests[i], err)
			}
			if err := rebase(ctx, staged[i], rel, members[i-1].Format); err != nil {
				return nil, st, fmt.Errorf("point %s at its backing file %s: %w", m.Name, members[i-1].Name, err)
			}
		}
	}
	last := len(members) - 1
	members[last].Path = path
	// Base first: a top in place always finds the backing files it needs.
	for i := range members {
		if err := c.place(staged[i], dests[i], members[i].Root); err != nil {
			return nil, st, err
		}
		staged[i] = ""
	}
	st.Base = members[last].Stats.Base
	return members, st, nil
}

// withChainMembers returns roots and, for each of them that is a chain
// manifest in store, its members' roots: what a collection must keep for a
// kept chain to stay whole, since a manifest's tree names only the
// manifest's own bytes. A root the store lacks is passed on for the
// collection to report.
func withChainMembers(ctx context.Context, store objectGetter, codec *Codec, roots []Hash) ([]Hash, error) {
	out := slices.Clone(roots)
	for _, root := range roots {
		members, err := storedChain(ctx, store, codec, root)
		if err != nil {
			return nil, fmt.Errorf("read %s to see whether it names a chain whose files must be kept: %w", root, err)
		}
		for _, m := range members {
			out = append(out, m.Root)
		}
	}
	return out, nil
}

// storedChain returns the members of the chain root names in store, or
// none if root names an image (or a broken manifest), or a tree the store
// lacks.
func storedChain(ctx context.Context, store objectGetter, codec *Codec, root Hash) ([]ChainMember, error) {
	t, err := loadTree(ctx, store, codec, root)
	if err != nil || t.Size < int64(len(chainMagic)) || t.Size > maxChainManifest {
		return nil, nil
	}
	var b []byte
	for i, h := range t.Chunks {
		data := make([]byte, t.chunkLen(i))
		if !h.IsZero() {
			if data, err = loadObject(ctx, store, codec, h); err != nil {
				return nil, err
			}
		}
		if b = append(b, data...); !bytes.HasPrefix(b, []byte(chainMagic)[:min(len(b), len(chainMagic))]) {
			return nil, nil // an image, not a manifest
		}
	}
	if !bytes.HasPrefix(b, []byte(chainMagic)) {
		return nil, nil
	}
	members, err := parseChain(b)
	if err != nil {
		return nil, nil // broken: it names nothing
	}
	return members, nil
}

// stage names a temporary file beside dest for a pull to write to. It
// starts as a second link to dest's file and with dest's base in the
// cache, so the pull reuses what dest holds in place and fetches only
// changes against it, while dest itself changes only when place renames
// the whole, verified file over it.
func (c *Client) stage(dest string) (string, error) {
	f, err := os.CreateTemp(filepath.Dir(dest), "."+filepath.Base(dest)+".chain-")
	if err != nil {
		return "", fmt.Errorf("write beside %s: %w", dest, diskErr(err))
	}
	tmp := f.Name()
	f.Close()
	os.Remove(tmp)
	if fi, err := os.Stat(dest); err == nil && fi.Mode().IsRegular() {
		// Without the link the pull still works, and only reuses less.
		os.Link(dest, tmp)
	}
	if r, ok := c.Cache.ref(dest); ok {
		c.Cache.setRef(tmp, r) // likewise: without it, changes come whole
	}
	return tmp, nil
}

// unstage removes a staged file and the cache's memory of it.
func (c *Client) unstage(tmp string) {
	os.Remove(tmp)
	os.Remove(c.Cache.refPath(tmp))
}

// place puts a staged file in place of dest, and makes root dest's base.
func (c *Client) place(tmp, dest string, root Hash) error {
	if err := os.Rename(tmp, dest); err != nil {
		return fmt.Errorf("put the image in place at %s: %w", dest, err)
	}
	os.Remove(c.Cache.refPath(tmp))
	return c.Cache.setRef(dest, root)
}

// Add counts s's transfer into sum's.
func (sum *Stats) Add(s Stats) {
	sum.Chunks += s.Chunks
	sum.ZeroChunks += s.ZeroChunks
	sum.Sent += s.Sent
	sum.Patched += s.Patched
	sum.InPlace += s.InPlace
	sum.FromCache += s.FromCache
	sum.Refetched += s.Refetched
	sum.WireBytes += s.WireBytes
	sum.ImageBytes += s.ImageBytes
}

// findChain lists the files of path's backing chain, base first, named
// relative to path's folder; without a backing file, path alone. Only an
// image whose header can name a backing file is asked about with qemu-img,
// so a raw image, or a qcow2 without one, needs no qemu-img.
func findChain(ctx context.Context, path string) ([]ChainMember, error) {
	head := make([]byte, 32)
	f, err := os.Open(path)
	if err == nil {
		n, _ := io.ReadFull(f, head)
		head = head[:n]
		f.Close()
	}
	format, ask := sniffFormat(head)
	if err != nil || !ask {
		// Push says best what is wrong with a file it cannot read.
		return []ChainMember{{Name: filepath.Base(path), Format: format, Path: path}}, nil
	}
	top, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("find the backing chain of %s: %w", path, err)
	}
	out, err := qemuImg(ctx, "info", "-U", "--backing-chain", "--output=json", top)
	if err != nil {
		return nil, explainChain(ctx, path, top, err)
	}
	var infos []qemuInfo
	if err := json.Unmarshal(out, &infos); err != nil {
		return nil, fmt.Errorf("read qemu-img's description of the backing chain of %s: %w", path, err)
	}
	members, err := chainFromInfo(path, top, infos)
	if err != nil {
		return nil, err
	}
	for _, m := range members {
		if fi, err := os.Stat(m.Path); err != nil || !fi.Mode().IsRegular() {
			return nil, fmt.Errorf("%s, a file of the backing chain of %s, is missing or not a regular file: put it back, then push again", m.Path, path)
		}
	}
	return members, nil
}

// sniffFormat names the image format head (an image's first bytes) starts
// with, and whether qemu-img must be asked about a backing file: a qcow2
// header says itself whether it names one; QED and VMDK are left to
// qemu-img; anything else has none.
func sniffFormat(head []byte) (format string, ask bool) {
	switch {
	case bytes.HasPrefix(head, []byte("QFI\xfb")):
		// backing_file_offset: zero when there is no backing file.
		return "qcow2", len(head) >= 16 && binary.BigEndian.Uint64(head[8:16]) != 0
	case bytes.HasPrefix(head, []byte("QED\x00")):
		return "qed", true
	case bytes.HasPrefix(head, []byte("KDMV")), bytes.HasPrefix(head, []byte("# Disk DescriptorFile")):
		return "vmdk", true
	}
	return "raw", false
}

// qemuInfo is what the chain needs of an entry of 'qemu-img info
// --output=json'.
type qemuInfo struct {
	Filename            string `json:"filename"`
	Format              string `json:"format"`
	BackingFilename     string `json:"backing-filename"`
	FullBackingFilename string `json:"full-backing-filename"`
	FormatSpecific      struct {
		Data struct {
			DataFile string `json:"data-file"`
		} `json:"data"`
	} `json:"format-specific"`
}

// chainFromInfo turns qemu-img's description of a chain (top first, top
// given as the absolute path top) into members, base first, each named
// relative to the top's folder: a file outside that folder by its base
// name, made unique.
func chainFromInfo(path, top string, infos []qemuInfo) ([]ChainMember, error) {
	if len(infos) == 0 {
		return nil, fmt.Errorf("qemu-img describes no image at %s", path)
	}
	dir := filepath.Dir(top)
	taken := map[string]bool{}
	members := make([]ChainMember, len(infos))
	for i, in := range infos {
		file := top
		if i > 0 {
			file = filepath.Clean(in.Filename)
			if !filepath.IsAbs(file) {
				return nil, fmt.Errorf("the backing file of %s is %q, which is not a local file: sync carries files only; flatten the chain (qemu-img convert -O qcow2 %s flat.qcow2) and push that", infos[i-1].Filename, in.Filename, path)
			}
		}
		if in.FormatSpecific.Data.DataFile != "" {
			return nil, fmt.Errorf("%s keeps its data in the external file %q, which sync does not carry: convert it to an image without one (qemu-img convert -O qcow2 %s flat.qcow2) and push that", file, in.FormatSpecific.Data.DataFile, path)
		}
		if (in.BackingFilename == "") != (i == len(infos)-1) {
			return nil, fmt.Errorf("qemu-img's description of the backing chain of %s does not end at its base (at %s)", path, file)
		}
		name := filepath.Base(file)
		if rel, err := filepath.Rel(dir, file); err == nil && filepath.IsLocal(rel) {
			name = rel
		}
		name = uniqueName(filepath.ToSlash(name), taken)
		taken[name] = true
		shown := file
		if i == 0 {
			shown = path // as the caller named it
		}
		members[len(infos)-1-i] = ChainMember{Name: name, Format: in.Format, Backing: in.BackingFilename, Path: shown}
	}
	return members, nil
}

// uniqueName is name, or, if taken, name with a number before its
// extension (disk.qcow2, disk.1.qcow2, …).
func uniqueName(name string, taken map[string]bool) string {
	ext := filepath.Ext(name)
	stem := strings.TrimSuffix(name, ext)
	for n := 1; taken[name]; n++ {
		name = stem + "." + strconv.Itoa(n) + ext
	}
	return name
}

// explainChain turns qemu-img's failure to open a chain into what is
// wrong, where it can tell: the chain is walked a file at a time (qemu-img
// describes one file without opening its backing file) to the first
// backing file that is missing.
func explainChain(ctx context.Context, path, top string, err error) error {
	file := top
	for range 256 { // a chain of more is a loop qemu-img itself refused
		out, ierr := qemuImg(ctx, "info", "-U", "--output=json", file)
		var in qemuInfo
		if ierr != nil || json.Unmarshal(out, &in) != nil || in.BackingFilename == "" {
			break
		}
		next := filepath.Clean(in.FullBackingFilename)
		if _, serr := os.Stat(next); errors.Is(serr, fs.ErrNotExist) {
			return fmt.Errorf("the backing chain of %s is broken: %s names its backing file %q, and %s does not exist: put that file back, or point the header at where it is now (qemu-img rebase -u -b NEWPATH -F FORMAT %s), then push again",
				path, file, in.BackingFilename, next, file)
		}
		file = next
	}
	return fmt.Errorf("find the backing chain of %s: %w", path, err)
}

// qemuImg runs qemu-img and returns its output; its error says what
// qemu-img said.
func qemuImg(ctx context.Context, args ...string) ([]byte, error) {
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "qemu-img", args...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if errors.Is(err, exec.ErrNotFound) {
		return nil, fmt.Errorf("qemu-img is not installed, and a backing chain needs it: install qemu-utils")
	}
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("qemu-img %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// rebase makes the header of the image at file name its backing file
// backing (of format), without touching its data, and syncs it.
func rebase(ctx context.Context, file, backing, format string) error {
	if _, err := qemuImg(ctx, "rebase", "-u", "-b", backing, "-F", format, file); err != nil {
		return err
	}
	f, err := os.OpenFile(file, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", file, diskErr(err))
	}
	return nil
}

// backingResolves reports whether an image at dest whose header names its
// backing file name finds the file at want. Both paths are absolute.
func backingResolves(dest, name, want string) bool {
	if name == "" {
		return false
	}
	if !filepath.IsAbs(name) {
		name = filepath.Join(filepath.Dir(dest), name)
	}
	return filepath.Clean(name) == filepath.Clean(want)
}

// chainDests is where each member of a chain pulled to top (absolute)
// goes: the top to top, the others into its folder under their names.
func chainDests(members []ChainMember, top string) ([]string, error) {
	dests := make([]string, len(members))
	last := len(members) - 1
	for i, m := range members {
		dests[i] = filepath.Join(filepath.Dir(top), filepath.FromSlash(m.Name))
		if i == last {
			dests[i] = top
		} else if dests[i] == filepath.Clean(top) {
			return nil, fmt.Errorf("the chain's file %s would be written to %s, where its top file (%s) goes: pull to a file of another name", m.Name, top, members[last].Name)
		}
	}
	return dests, nil
}

// chainLine is a member as the manifest holds it.
type chainLine struct {
	Name    string `json:"name"`
	Format  string `json:"format"`
	Backing string `json:"backing"`
	Root    Hash   `json:"root"`
}

// encodeChain writes the manifest of members (base first).
func encodeChain(members []ChainMember) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s%d\n", chainMagic, chainVersion)
	for _, m := range members {
		line, _ := json.Marshal(chainLine{m.Name, m.Format, m.Backing, m.Root})
		b.Write(line)
		b.WriteByte('\n')
	}
	return b.Bytes()
}

// formatName is what a format name may be: it is handed to qemu-img.
var formatName = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]*$`)

// parseChain reads a manifest, refusing one that could write anywhere but
// the target's folder, or that does not describe a chain.
func parseChain(b []byte) ([]ChainMember, error) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(nil, maxChainManifest)
	if !sc.Scan() {
		return nil, errors.New("it is empty")
	}
	if v := strings.TrimPrefix(sc.Text(), chainMagic); v != strconv.Itoa(chainVersion) {
		return nil, fmt.Errorf("its first line is %q, want %q: a newer handoff may have written it; upgrade", sc.Text(), chainMagic+strconv.Itoa(chainVersion))
	}
	var members []ChainMember
	seen := map[string]bool{}
	for n := 2; sc.Scan(); n++ {
		if len(sc.Bytes()) == 0 {
			continue
		}
		var l chainLine
		d := json.NewDecoder(bytes.NewReader(sc.Bytes()))
		d.DisallowUnknownFields()
		if err := d.Decode(&l); err != nil {
			return nil, fmt.Errorf("line %d: %w", n, err)
		}
		name := filepath.FromSlash(l.Name)
		switch {
		case !filepath.IsLocal(name) || filepath.Clean(name) != name:
			return nil, fmt.Errorf("line %d: the file name %q leads outside the folder it is pulled to (or is not a plain relative name); refused", n, l.Name)
		case seen[name]:
			return nil, fmt.Errorf("line %d: %q is named twice", n, l.Name)
		case !formatName.MatchString(l.Format):
			return nil, fmt.Errorf("line %d: %q is not an image format", n, l.Format)
		case l.Root.IsZero():
			return nil, fmt.Errorf("line %d: %q has no root", n, l.Name)
		case (l.Backing == "") != (len(members) == 0):
			return nil, fmt.Errorf("line %d: %q: only the first file, the base, has no backing file", n, l.Name)
		}
		seen[name] = true
		members = append(members, ChainMember{Name: l.Name, Format: l.Format, Backing: l.Backing, Root: l.Root})
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(members) == 0 {
		return nil, errors.New("it names no files")
	}
	return members, nil
}

// readChainManifest returns the file at path if it is a chain manifest,
// nil if it is not (an image: only its first bytes are read).
func readChainManifest(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	head := make([]byte, len(chainMagic))
	if _, err := io.ReadFull(f, head); err != nil || string(head) != chainMagic {
		return nil, nil // shorter than the magic, or not it: an image
	}
	rest, err := io.ReadAll(io.LimitReader(f, maxChainManifest))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if len(head)+len(rest) > maxChainManifest {
		return nil, fmt.Errorf("%s starts like a chain manifest but is over %d bytes: it is not one that handoff wrote", path, maxChainManifest)
	}
	return append(head, rest...), nil
}
