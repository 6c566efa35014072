package syncengine

// The server's own images
//
// When a workstation grabs a VM, the server's libvirt freezes the VM's disk
// top layer by an external snapshot; the frozen chain then travels by the
// sync engine. Images does the server's two halves of that, on the server's
// own disk and store, in process:
//
//   - Index stores the image at a path (and its backing chain, as PushChain
//     does) in the server's store, so that a workstation can pull it by
//     root, taking every chunk its cache already holds.
//   - Checkout writes an image or chain the workstation pushed back to a
//     path, as PullChain does: reusing in place what the old file there
//     holds, replacing it only when the new one is whole and synced.
//
// Both work only on paths inside the image folders the server was given
// (handoff serve --images), after resolving symlinks and "..", and a
// checkout refuses a file a running QEMU holds locked. The store is the
// only copy of every chunk: nothing goes through a workstation's pack
// cache, and the only record kept per path is the tree last checked out
// there (the store's refs), which PullChain's staging uses.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// ErrOutsideImages means a path lies outside the server's image folders.
var ErrOutsideImages = errors.New("outside the server's image folders")

// ErrInUse means a running QEMU holds the image file open.
var ErrInUse = errors.New("in use by a running QEMU")

// ErrBusy means another index or checkout of the same file is under way.
var ErrBusy = errors.New("another index or checkout of the file is under way")

// DefaultImageDir is where libvirt keeps its images unless told otherwise.
const DefaultImageDir = "/var/lib/libvirt/images"

// Images indexes and checks out images on the server's disk, in its store.
type Images struct {
	Store DirStore
	Codec *Codec
	Dirs  []string // the folders images may be read from and written to

	mu   sync.Mutex
	busy map[string]bool // the resolved paths an operation works on
}

// IndexResult is what an index stored.
type IndexResult struct {
	Root Hash `json:"root"`
	// Members lists the chain's files, base first (a plain image alone);
	// each one's Stats.Sent counts the chunks its index newly stored.
	Members []ChainMember `json:"members"`
	Stats   Stats         `json:"stats"` // the sum; Sent: chunks newly stored
	// StoredBytes is the packed bytes newly stored, of chunks and trees.
	StoredBytes int64 `json:"stored_bytes"`
}

// CheckoutResult is what a checkout wrote.
type CheckoutResult struct {
	// Members lists the files written, base first, each with its Path on
	// the server's disk; Stats.InPlace counts chunks the old file already
	// held, Stats.FromCache those read from the store.
	Members []ChainMember `json:"members"`
	Stats   Stats         `json:"stats"`
}

// Index stores the image at path and its backing chain in the store and
// returns the root that names it. Only chunks the store lacks are read
// twice, packed and written: a second index of a file that changed a
// little costs its reading and hashing, and the changed chunks. Progress
// reports "read" in bytes, then "store" in chunks, for each file.
func (im *Images) Index(ctx context.Context, path string, progress Progress) (IndexResult, error) {
	var res IndexResult
	top, err := im.resolve(path, true)
	if err != nil {
		return res, err
	}
	release, err := im.claim(top)
	if err != nil {
		return res, err
	}
	defer release()
	var stored int64
	put := func(ctx context.Context, p string) (Hash, Stats, error) {
		// A backing file is read only from the image folders too: a
		// header may name any file on the server.
		if _, err := im.resolve(p, true); err != nil {
			return Hash{}, Stats{}, fmt.Errorf("a file of the backing chain of %s: %w", path, err)
		}
		f, err := os.Open(p)
		if err != nil {
			return Hash{}, Stats{}, fmt.Errorf("read image: %w", err)
		}
		defer f.Close()
		m, err := indexFile(ctx, p, DefaultChunkSize, progress)
		if err != nil {
			return Hash{}, Stats{}, err
		}
		return im.store(ctx, p, f, m, &stored, progress)
	}
	putManifest := func(ctx context.Context, near string, b []byte) (Hash, Stats, error) {
		m := &Manifest{Size: int64(len(b)), ChunkSize: DefaultChunkSize, Chunks: hashChunks(b, DefaultChunkSize)}
		return im.store(ctx, "the manifest of "+near, bytes.NewReader(b), m, &stored, nil)
	}
	res.Root, res.Members, res.Stats, err = storeChain(ctx, top, put, putManifest)
	res.StoredBytes = stored
	return res, err
}

// store puts the chunks of m that the store lacks, read from r (the image
// called name), into the store, then m's tree, and adds the packed bytes
// it wrote to *stored. Each chunk read must still hash to its name: an
// image that changes while it is indexed is refused, not stored half old.
func (im *Images) store(ctx context.Context, name string, r io.ReaderAt, m *Manifest, stored *int64, progress Progress) (Hash, Stats, error) {
	t := m.tree()
	st := Stats{Chunks: len(m.Chunks), ZeroChunks: len(m.Chunks) - countNonZero(m.Chunks), ImageBytes: m.Size}
	if have, err := im.Store.Has(ctx, []Hash{t.root}); err != nil || have[0] {
		return t.root, st, err
	}
	distinct, first := m.distinct()
	have, err := im.Store.Has(ctx, distinct)
	if err != nil {
		return Hash{}, st, err
	}
	var positions []int
	for i, h := range distinct {
		if !have[i] {
			positions = append(positions, first[h])
		}
	}
	slices.Sort(positions) // read in file order
	// Packing takes the cores and writing waits on the disk, so a batch
	// is written while the next is packed: a cold index of 2 GiB took
	// 35 s one after the other.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	packed := make(chan []Object, 1)
	var writeErr error
	var wg sync.WaitGroup
	wg.Go(func() {
		for objs := range packed {
			if writeErr = im.Store.PutBatch(ctx, objs); writeErr != nil {
				cancel()
				for range packed { // the packer stops at the cancel
				}
				return
			}
			st.Sent += len(objs)
			for _, o := range objs {
				*stored += int64(len(o.Packed))
			}
			if progress != nil {
				progress("store", int64(st.Sent), int64(len(positions)))
			}
		}
	})
	packErr := func() error {
		defer close(packed)
		for i := 0; i < len(positions); i += storeBatch {
			part := positions[i:min(len(positions), i+storeBatch)]
			objs := make([]Object, len(part))
			err := parallelFor(ctx, len(part), runtime.GOMAXPROCS(0), func(j int) error {
				p := part[j]
				off := int64(p) * int64(m.ChunkSize)
				data := make([]byte, m.chunkLen(p))
				if _, err := r.ReadAt(data, off); err != nil {
					return fmt.Errorf("read %s at %d: %w", name, off, err)
				}
				if Sum(data) != m.Chunks[p] {
					return fmt.Errorf("%s changed while it was being indexed (at byte %d): index a frozen layer (a snapshot's backing file), or the disk of a stopped VM", name, off)
				}
				objs[j] = Object{m.Chunks[p], im.Codec.Encode(data)}
				return nil
			})
			if err != nil {
				return err
			}
			select {
			case packed <- objs:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		return nil
	}()
	wg.Wait()
	if writeErr != nil {
		return Hash{}, st, writeErr
	}
	if packErr != nil {
		return Hash{}, st, packErr
	}
	// The tree goes in only once every chunk it names is stored.
	counting := func(ctx context.Context, objs []Object) error {
		for _, o := range objs {
			*stored += int64(len(o.Packed))
		}
		return im.Store.PutBatch(ctx, objs)
	}
	return t.root, st, storeTree(ctx, counting, im.Codec, t)
}

// Checkout writes the image or chain root names from the store to path,
// as PullChain does: each file is written beside its target, reusing in
// place what the old file there holds, and the targets are replaced only
// once every file is whole and synced; on failure they stay as they were.
// A target a running QEMU holds open is refused. New files get the owner
// and group of their folder (the server may run as root; libvirt's daemon
// must open them), and a replaced file's permissions.
func (im *Images) Checkout(ctx context.Context, root Hash, path string, progress Progress) (CheckoutResult, error) {
	var res CheckoutResult
	top, release, err := im.claimTarget(path)
	if err != nil {
		return res, err
	}
	defer release()
	if have, err := im.Store.Has(ctx, []Hash{root}); err != nil {
		return res, err
	} else if !have[0] {
		return res, fmt.Errorf("the server's store has no image %s: push it first ('handoff sync push'), then check it out: %w", root, ErrNotFound)
	}
	members, err := storedChain(ctx, im.Store, im.Codec, root)
	if err != nil {
		return res, fmt.Errorf("read what %s names: %w", root, err)
	}
	dests := []string{top}
	if members != nil {
		if dests, err = chainDests(members, top); err != nil {
			return res, err
		}
	}
	modes := map[string]fs.FileMode{}
	for i := range dests {
		d := dests[len(dests)-1-i] // the top first: the file the caller named
		if _, err := im.resolve(d, false); err != nil {
			return res, fmt.Errorf("a file of the chain %s: %w", root, err)
		}
		if modes[d], err = replaceable(d); err != nil {
			return res, err
		}
	}
	c := &Client{Remote: im.Store, Cache: im.Store, Codec: im.Codec, Progress: progress, local: storeCache{im.Store}}
	defer c.Close()
	res.Members, res.Stats, err = c.PullChain(ctx, root, top)
	if err != nil {
		return res, err
	}
	for _, d := range dests {
		if err := takeFolderOwner(d, modes[d]); err != nil {
			return res, err
		}
	}
	return res, nil
}

// claimTarget resolves a path to write to and claims it (see claim).
func (im *Images) claimTarget(path string) (top string, release func(), err error) {
	if top, err = im.resolve(path, false); err != nil {
		return "", nil, err
	}
	release, err = im.claim(top)
	return top, release, err
}

// replaceable checks that a file may be written over, and returns its
// permissions (0 when there is no file yet): a running QEMU's file and
// anything but a regular file are refused.
func replaceable(path string) (fs.FileMode, error) {
	if err := checkNotInUse(path); err != nil {
		return 0, err
	}
	fi, err := os.Stat(path)
	if err != nil {
		return 0, nil
	}
	if !fi.Mode().IsRegular() {
		return 0, fmt.Errorf("%s is not a regular file, so no image is written over it: name an image file", path)
	}
	return fi.Mode().Perm(), nil
}

// claim marks path as worked on until release is called, refusing a path
// another operation works on.
func (im *Images) claim(path string) (release func(), err error) {
	im.mu.Lock()
	defer im.mu.Unlock()
	if im.busy[path] {
		return nil, fmt.Errorf("%s: %w: wait for it to end, then try again", path, ErrBusy)
	}
	if im.busy == nil {
		im.busy = map[string]bool{}
	}
	im.busy[path] = true
	return func() {
		im.mu.Lock()
		defer im.mu.Unlock()
		delete(im.busy, path)
	}, nil
}

// resolve returns path with its symlinks and ".." resolved if it lies in
// one of the image folders (resolved likewise), and refuses it otherwise.
// A path that must exist must be a regular file; one that need not may
// name a file not there yet, in a folder that may not be there yet either.
func (im *Images) resolve(path string, mustExist bool) (string, error) {
	real, err := resolvePath(path)
	if err != nil {
		return "", err
	}
	var dirs []string
	for _, d := range im.Dirs {
		if rd, err := filepath.EvalSymlinks(d); err == nil {
			dirs = append(dirs, rd)
		}
	}
	if !within(real, dirs) {
		shown := path
		if real != filepath.Clean(path) {
			shown = fmt.Sprintf("%s (%s)", path, real)
		}
		return "", fmt.Errorf("%s is %w (%s): give a path in one of them, or start the server with 'handoff serve --images DIR' for its folder",
			shown, ErrOutsideImages, strings.Join(im.Dirs, ", "))
	}
	// Only now: whether a file outside exists is not the device's to learn.
	if mustExist {
		fi, err := os.Stat(real)
		if err != nil {
			return "", fmt.Errorf("%s: %w", path, err)
		}
		if !fi.Mode().IsRegular() {
			return "", fmt.Errorf("%s is not a regular file: name the image file itself", path)
		}
	}
	return real, nil
}

// within reports whether the resolved path lies strictly inside one of
// the resolved dirs.
func within(path string, dirs []string) bool {
	for _, d := range dirs {
		if rel, err := filepath.Rel(d, path); err == nil && rel != "." && filepath.IsLocal(rel) {
			return true
		}
	}
	return false
}

// resolvePath resolves the symlinks and ".." of an absolute path the way
// the kernel does (a ".." after a symlink leaves the symlink's target),
// the part that does not exist yet by name. A ".." in that part cannot be
// resolved, and is refused.
func resolvePath(path string) (string, error) {
	if !filepath.IsAbs(path) {
		return "", fmt.Errorf("%q is not an absolute path: name the image by its full path on the server", path)
	}
	cur, rest := strings.TrimRight(path, "/"), ""
	for {
		if cur == "" {
			cur = "/"
		}
		real, err := filepath.EvalSymlinks(cur)
		if err == nil {
			return filepath.Join(real, rest), nil
		}
		if !errors.Is(err, fs.ErrNotExist) || cur == "/" {
			return "", fmt.Errorf("resolve %s: %w", path, err)
		}
		i := strings.LastIndex(cur, "/")
		base := cur[i+1:]
		if base == ".." || base == "." {
			return "", fmt.Errorf("resolve %s: %s does not exist, so what %q leads to is unknown", path, cur[:i], base)
		}
		rest = filepath.Join(base, rest)
		cur = strings.TrimRight(cur[:i], "/")
	}
}

// checkNotInUse refuses a file a running QEMU holds open: QEMU takes OFD
// locks on the images it opens (on a few bytes that stand for the
// permissions it uses and refuses others), so a lock that conflicts with
// a write lock over the whole file means a user.
func checkNotInUse(path string) error {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("see whether %s is in use: %w", path, err)
	}
	defer f.Close()
	lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: io.SeekStart}
	if err := unix.FcntlFlock(f.Fd(), unix.F_OFD_GETLK, &lk); err != nil {
		return fmt.Errorf("see whether %s is in use (fcntl F_OFD_GETLK): %w", path, err)
	}
	if lk.Type != unix.F_UNLCK {
		return fmt.Errorf("%s is %w (it holds a lock on the file): stop the VM that uses it, or migrate it away (virsh list; virsh domblklist VM names its files), then check out again; the file was left as it was", path, ErrInUse)
	}
	return nil
}

// takeFolderOwner gives a file the owner and group of its folder, and the
// permissions mode if it is not zero (the file it replaced had them). A
// server that is not root cannot give its files away; they stay its own.
func takeFolderOwner(path string, mode fs.FileMode) error {
	if mode != 0 {
		if err := os.Chmod(path, mode); err != nil {
			return fmt.Errorf("give %s the permissions of the file it replaced: %w", path, err)
		}
	}
	dir, err := os.Stat(filepath.Dir(path))
	if err != nil {
		return fmt.Errorf("give %s the owner of its folder: %w", path, err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("give %s the owner of its folder: %w", path, err)
	}
	want, have := dir.Sys().(*syscall.Stat_t), fi.Sys().(*syscall.Stat_t)
	if want.Uid == have.Uid && want.Gid == have.Gid {
		return nil
	}
	if err := os.Lchown(path, int(want.Uid), int(want.Gid)); err != nil && (os.Geteuid() == 0 || !errors.Is(err, fs.ErrPermission)) {
		return fmt.Errorf("give %s the owner of its folder (%d:%d): %w", path, want.Uid, want.Gid, err)
	}
	return nil
}

// storeCache lets a Client keep its chunks in a DirStore: the server's own
// store, where a checkout finds every chunk.
type storeCache struct{ DirStore }

var _ objectCache = storeCache{}

// keep stores what the store lacks (a checkout's trees are there already).
func (s storeCache) keep(ctx context.Context, objs []Object) error {
	hashes := make([]Hash, len(objs))
	for i, o := range objs {
		hashes[i] = o.Hash
	}
	have, err := s.Has(ctx, hashes)
	if err != nil {
		return err
	}
	var lack []Object
	for i, o := range objs {
		if !have[i] {
			lack = append(lack, o)
		}
	}
	return s.PutBatch(ctx, lack)
}

// drop does nothing: the store's copy is the only one, and asking the
// store for it again reports the damage as the store's.
func (storeCache) drop(Hash) {}
