package syncengine

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// Store keeps packed chunks and manifests by hash.
type Store interface {
	// Has reports, for each hash, whether the store holds it.
	Has(ctx context.Context, hashes []Hash) ([]bool, error)
	// Get returns the packed bytes stored under h (ErrNotFound if none).
	Get(ctx context.Context, h Hash) ([]byte, error)
	// Put stores packed bytes under h; the store may verify them.
	Put(ctx context.Context, h Hash, packed []byte) error
}

// ErrNotFound means the store lacks an object.
var ErrNotFound = errors.New("not in the store")

// DirStore keeps objects as files under a directory: written to a temp
// file, synced, then renamed, so an object is whole or absent. On a
// workstation it is the cache that makes later checkouts cheap.
type DirStore struct{ Dir string }

func (d DirStore) path(h Hash) string {
	s := h.String()
	return filepath.Join(d.Dir, "objects", s[:2], s[2:])
}

func (d DirStore) Has(_ context.Context, hashes []Hash) ([]bool, error) {
	out := make([]bool, len(hashes))
	for i, h := range hashes {
		_, err := os.Stat(d.path(h))
		out[i] = err == nil
	}
	return out, nil
}

func (d DirStore) Get(_ context.Context, h Hash) ([]byte, error) {
	b, err := os.ReadFile(d.path(h))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s: %w", h, ErrNotFound)
	}
	return b, err
}

func (d DirStore) Put(_ context.Context, h Hash, packed []byte) error {
	p := d.path(h)
	if _, err := os.Stat(p); err == nil {
		return nil // content-addressed: the same name holds the same bytes
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return fmt.Errorf("store %s: %w", h, err)
	}
	f, err := os.CreateTemp(filepath.Dir(p), ".tmp-")
	if err != nil {
		return fmt.Errorf("store %s: %w", h, err)
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(packed); err != nil {
		f.Close()
		return fmt.Errorf("store %s: %w", h, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("store %s: %w", h, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("store %s: %w", h, err)
	}
	return os.Rename(f.Name(), p)
}

// GC removes every object that none of the kept manifests refers to, and
// returns how many it removed. Manifests are read from the store itself.
func (d DirStore) GC(ctx context.Context, codec *Codec, keep []Hash) (int, error) {
	live := map[Hash]bool{}
	for _, root := range keep {
		m, err := loadManifest(ctx, d, codec, root)
		if err != nil {
			return 0, fmt.Errorf("gc: keep %s: %w", root, err)
		}
		live[root] = true
		for _, h := range m.Chunks {
			live[h] = true
		}
	}
	removed := 0
	err := filepath.WalkDir(filepath.Join(d.Dir, "objects"), func(p string, e fs.DirEntry, err error) error {
		if err != nil || e.IsDir() {
			return err
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
