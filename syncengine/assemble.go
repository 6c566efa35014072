package syncengine

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// AssembleResult is what an assembly wrote.
type AssembleResult struct {
	Path string `json:"path"`
	Size int64  `json:"size"`
}

// Assemble writes to path the file that the recipe stored as recipe makes
// of the image stored as base (see RecipeWriter), both read from the
// store, every chunk verified. The file is written beside path and
// replaces it only when whole and synced; a target a running QEMU holds
// open is refused, and the new file gets its folder's owner, as a
// checkout's do. Progress reports "assemble" in bytes of the base.
func (im *Images) Assemble(ctx context.Context, recipe, base Hash, path string, progress Progress) (AssembleResult, error) {
	res := AssembleResult{Path: path}
	top, release, err := im.claimTarget(path)
	if err != nil {
		return res, err
	}
	defer release()
	if have, err := im.Store.Has(ctx, []Hash{recipe, base}); err != nil {
		return res, err
	} else if !have[0] || !have[1] {
		return res, fmt.Errorf("the server's store lacks the recipe %s or its base %s: push both first, then assemble: %w", recipe, base, ErrNotFound)
	}
	mode, err := replaceable(top)
	if err != nil {
		return res, err
	}
	rt, err := loadTree(ctx, im.Store, im.Codec, recipe)
	if err != nil {
		return res, fmt.Errorf("read the recipe %s: %w", recipe, err)
	}
	bt, err := loadTree(ctx, im.Store, im.Codec, base)
	if err != nil {
		return res, fmt.Errorf("read the base %s: %w", base, err)
	}
	baseFile := &StoredFile{ctx: ctx, store: im.Store, codec: im.Codec, t: bt, progress: progress}
	tmp, err := os.CreateTemp(filepath.Dir(top), "."+filepath.Base(top)+".assemble-")
	if err != nil {
		return res, diskErr(fmt.Errorf("make the file beside %s: %w", top, err))
	}
	defer func() {
		tmp.Close()
		os.Remove(tmp.Name())
	}()
	out := bufio.NewWriterSize(tmp, 1<<20)
	recipeFile := io.NewSectionReader(&StoredFile{ctx: ctx, store: im.Store, codec: im.Codec, t: rt}, 0, rt.Size)
	if res.Size, err = Assemble(recipeFile, baseFile, bt.Size, out); err != nil {
		return res, fmt.Errorf("assemble %s: %w", top, err)
	}
	if err := out.Flush(); err != nil {
		return res, diskErr(fmt.Errorf("write %s: %w", top, err))
	}
	if err := tmp.Sync(); err != nil {
		return res, diskErr(fmt.Errorf("sync %s: %w", top, err))
	}
	if err := os.Rename(tmp.Name(), top); err != nil {
		return res, fmt.Errorf("put the assembled file in place at %s: %w", top, err)
	}
	return res, takeFolderOwner(top, mode)
}

// StoredFile reads a tree's bytes from a store, a chunk at a time,
// keeping the last chunk read: a recipe's copies mostly follow one
// another. It is not safe for concurrent use.
type StoredFile struct {
	ctx      context.Context
	store    objectGetter
	codec    *Codec
	t        *tree
	progress Progress

	at   int // the chunk held in data; -1 before the first
	data []byte
	read int64
	held bool
}

// OpenStored reads the file root names in store (the server's own, say),
// every chunk verified as it is read. A chain's root names its manifest:
// see StoredChain for its files.
func OpenStored(ctx context.Context, store DirStore, codec *Codec, root Hash) (*StoredFile, error) {
	t, err := loadTree(ctx, store, codec, root)
	if err != nil {
		return nil, fmt.Errorf("read %s from the store at %s: %w", root, store.Dir, err)
	}
	return &StoredFile{ctx: ctx, store: store, codec: codec, t: t}, nil
}

// StoredChain lists the files of the chain root names in store, base
// first; nil when root names a plain file.
func StoredChain(ctx context.Context, store DirStore, codec *Codec, root Hash) ([]ChainMember, error) {
	return storedChain(ctx, store, codec, root)
}

// Size is the file's length.
func (f *StoredFile) Size() int64 { return f.t.Size }

func (f *StoredFile) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("read at %d", off)
	}
	cs := int64(f.t.ChunkSize)
	n := 0
	for n < len(p) {
		if off >= f.t.Size {
			return n, io.EOF
		}
		i := int(off / cs)
		chunk, err := f.chunk(i)
		if err != nil {
			return n, err
		}
		k := copy(p[n:], chunk[off-int64(i)*cs:])
		n += k
		off += int64(k)
	}
	return n, nil
}

// chunk is chunk i's bytes, zeroes for a zero chunk.
func (f *StoredFile) chunk(i int) ([]byte, error) {
	if f.held && f.at == i {
		return f.data, nil
	}
	if err := f.ctx.Err(); err != nil {
		return nil, err
	}
	n := f.t.chunkLen(i)
	h := f.t.Chunks[i]
	if h.IsZero() {
		f.data = append(f.data[:0], make([]byte, n)...)
	} else {
		b, err := loadObjectInto(f.ctx, f.store, f.codec, h, f.data[:0])
		if err != nil {
			return nil, fmt.Errorf("chunk %d (%s): %w", i, h, err)
		}
		if len(b) != n {
			return nil, fmt.Errorf("chunk %d (%s) holds %d bytes, the tree says %d: %w", i, h, len(b), n, ErrCorrupt)
		}
		f.data = b
	}
	f.at, f.held = i, true
	f.read += int64(n)
	if f.progress != nil {
		f.progress("assemble", min(f.read, f.t.Size), f.t.Size)
	}
	return f.data, nil
}
