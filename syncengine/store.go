package syncengine

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// ErrNotFound means the store lacks an object.
var ErrNotFound = errors.New("not in the store")

// ErrDiskFull means a store or an image could not be written for lack of
// space.
var ErrDiskFull = errors.New("disk full")

// Object is one packed object on its way into a store.
type Object struct {
	Hash   Hash
	Packed []byte
}

// DirStore keeps packed objects as files under a directory. On the home
// server it is the chunk store; on a workstation it is the cache that makes
// later checkouts and checkpoints cheap.
//
// Objects are written in batches: each to a temporary file, then one
// syncfs for the whole batch, then each renamed into place, then one more
// syncfs. So an object is whole or absent, and once PutBatch returns its
// objects survive a crash; a tree is stored only after its chunks, so a
// stored tree never names a chunk a crash could lose.
type DirStore struct{ Dir string }

func (d DirStore) path(h Hash) string {
	s := h.String()
	return filepath.Join(d.Dir, "objects", s[:2], s[2:])
}

// Has reports, for each hash, whether the store holds it.
func (d DirStore) Has(_ context.Context, hashes []Hash) ([]bool, error) {
	out := make([]bool, len(hashes))
	for i, h := range hashes {
		_, err := os.Stat(d.path(h))
		out[i] = err == nil
	}
	return out, nil
}

// Get returns the packed bytes stored under h.
func (d DirStore) Get(_ context.Context, h Hash) ([]byte, error) {
	b, err := os.ReadFile(d.path(h))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s: %w", h, ErrNotFound)
	}
	return b, err
}

// PutBatch stores packed objects durably, with two syncfs calls for the
// whole batch instead of one fsync per object.
func (d DirStore) PutBatch(ctx context.Context, objs []Object) error {
	if len(objs) == 0 {
		return nil
	}
	if err := d.makeDirs(); err != nil {
		return storeErr(d.Dir, err)
	}
	type staged struct{ tmp, final string }
	var pending []staged
	defer func() {
		for _, s := range pending {
			os.Remove(s.tmp) // only what was not renamed into place
		}
	}()
	for _, o := range objs {
		if err := ctx.Err(); err != nil {
			return err
		}
		// Callers ask Has first; an object written twice is the same bytes.
		p := d.path(o.Hash)
		f, err := os.CreateTemp(filepath.Dir(p), ".tmp-")
		if err != nil {
			return storeErr(d.Dir, err)
		}
		_, werr := f.Write(o.Packed)
		cerr := f.Close()
		pending = append(pending, staged{f.Name(), p})
		if err := errors.Join(werr, cerr); err != nil {
			return storeErr(d.Dir, err)
		}
	}
	if err := d.syncfs(); err != nil {
		return storeErr(d.Dir, err)
	}
	for len(pending) > 0 {
		if err := os.Rename(pending[0].tmp, pending[0].final); err != nil {
			return storeErr(d.Dir, err)
		}
		pending = pending[1:]
	}
	if err := d.syncfs(); err != nil {
		return storeErr(d.Dir, err)
	}
	return nil
}

// makeDirs makes the store's 256 object folders once, not a folder check
// per object.
func (d DirStore) makeDirs() error {
	last := filepath.Join(d.Dir, "objects", "ff")
	if _, err := os.Stat(last); err == nil {
		return nil
	}
	for i := range 256 {
		if err := os.MkdirAll(filepath.Join(d.Dir, "objects", fmt.Sprintf("%02x", i)), 0o755); err != nil {
			return err
		}
	}
	return nil
}

// syncfs flushes the filesystem that holds the store: one call makes a
// whole batch durable.
func (d DirStore) syncfs() error {
	f, err := os.Open(d.Dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return unix.Syncfs(int(f.Fd()))
}

// storeErr names the store, and says so when the disk is full.
func storeErr(dir string, err error) error {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return fmt.Errorf("write to the chunk store %s: %w (%w): free space there and run the same command again", dir, ErrDiskFull, err)
	}
	return fmt.Errorf("write to the chunk store %s: %w", dir, err)
}

// GC removes every object that none of the kept trees (and, for a kept
// chain, its files' trees) uses, and temporary files an interrupted write
// left over an hour ago; it returns how many objects it removed.
func (d DirStore) GC(ctx context.Context, codec *Codec, keep []Hash) (int, error) {
	live, err := liveObjects(ctx, d, codec, keep)
	if err != nil {
		return 0, err
	}
	removed := 0
	stale := time.Now().Add(-time.Hour)
	err = filepath.WalkDir(filepath.Join(d.Dir, "objects"), func(p string, e fs.DirEntry, err error) error {
		if err != nil || e.IsDir() {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if strings.HasPrefix(e.Name(), ".tmp-") {
			if fi, err := e.Info(); err == nil && fi.ModTime().Before(stale) {
				os.Remove(p)
			}
			return nil
		}
		h, perr := ParseHash(filepath.Base(filepath.Dir(p)) + e.Name())
		if perr != nil || live[h] {
			return nil
		}
		removed++
		return os.Remove(p)
	})
	if errors.Is(err, fs.ErrNotExist) {
		err = nil
	}
	return removed, err
}

// liveObjects is every object the trees named by keep use, and for a kept
// chain, its files' trees.
func liveObjects(ctx context.Context, s objectGetter, codec *Codec, keep []Hash) (map[Hash]bool, error) {
	// A chain's root names only its manifest: its files are kept too.
	keep, err := withChainMembers(ctx, s, codec, keep)
	if err != nil {
		return nil, err
	}
	live := map[Hash]bool{}
	for _, root := range keep {
		t, err := loadTree(ctx, s, codec, root)
		if err != nil {
			return nil, fmt.Errorf("gc: keep %s: %w", root, err)
		}
		for _, h := range t.objects() {
			live[h] = true
		}
	}
	return live, nil
}

// The cache remembers which tree it last wrote to (or pushed from) each
// image path: the next transfer of that path sends only the differences
// against it.

func (d DirStore) refPath(image string) string {
	abs, err := filepath.Abs(image)
	if err != nil {
		abs = image
	}
	sum := sha256.Sum256([]byte(abs))
	return filepath.Join(d.Dir, "refs", hex.EncodeToString(sum[:16]))
}

func (d DirStore) ref(image string) (Hash, bool) {
	b, err := os.ReadFile(d.refPath(image))
	if err != nil {
		return Hash{}, false
	}
	h, err := ParseHash(strings.TrimSpace(string(b)))
	return h, err == nil
}

func (d DirStore) setRef(image string, root Hash) error {
	p := d.refPath(image)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, []byte(root.String()+"\n"), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, p)
}
