package checkout

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/handoff-dev/handoff/libvirt/saveimage"
	"github.com/handoff-dev/handoff/syncengine"
)

// memoryFiles is a checkpoint's memory on the workstation: the save file
// QEMU wrote, or, once split, its pages lined up at their guest addresses
// and the recipe that makes the file of them again. QEMU's stream puts a
// header before each page and leaves zero pages out, so one page that
// turns zero or not shifts the rest of the file against the store's fixed
// chunks, and each checkpoint sent most of its memory again; lined up,
// only the pages that changed differ from the last checkpoint's image.
type memoryFiles struct {
	file          string // the save file; removed once split
	image, recipe string // set once split
	size          int64  // the save file's length
	whole         string // why it was not split, if it was not
}

// split lines the save file's pages up. A file it cannot read (another
// QEMU's stream, a compressed save) stays whole, and whole says why: it
// is sent as it is.
func (m *memoryFiles) split() {
	image, recipe := m.file+".image", m.file+".recipe"
	size, err := splitSaveFile(m.file, image, recipe)
	if err != nil {
		removeFile(image)
		removeFile(recipe)
		m.whole = err.Error()
		if fi, err := os.Stat(m.file); err == nil {
			m.size = fi.Size()
		}
		return
	}
	m.image, m.recipe, m.size = image, recipe, size
	removeFile(m.file)
}

// splitSaveFile writes the save file at path as a page image and a recipe
// and returns the save file's length.
func splitSaveFile(path, image, recipe string) (size int64, err error) {
	defer func() {
		if err != nil {
			err = fmt.Errorf("line the memory's pages up: %w", err)
		}
	}()
	in, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return 0, err
	}
	img, err := os.Create(image)
	if err != nil {
		return 0, err
	}
	defer img.Close()
	rec, err := os.Create(recipe)
	if err != nil {
		return 0, err
	}
	defer rec.Close()
	w := syncengine.NewRecipeWriter(rec)
	layout, err := saveimage.Split(in, img, w)
	if err != nil {
		return 0, err
	}
	if w.Size() != fi.Size() {
		return 0, fmt.Errorf("the recipe makes %d bytes of a file of %d", w.Size(), fi.Size())
	}
	if err := errors.Join(w.Close(), img.Truncate(layout.ImageSize), rec.Close(), img.Close()); err != nil {
		return 0, err
	}
	return fi.Size(), nil
}

// pushedMemory is where the memory went in the server's store.
type pushedMemory struct {
	root, recipe syncengine.Hash // recipe zero: root is the file itself
	sent, size   int64
	recipeSent   int64 // of sent, the recipe's
}

// push sends the memory to the server's store: the image and its recipe,
// or the file whole. Each goes under the same name every checkpoint, so
// that the chunk client sends it against the last one.
func (m *memoryFiles) push(ctx context.Context, chunks Chunks) (pushedMemory, error) {
	if m.image == "" {
		root, st, err := chunks.Push(ctx, m.file)
		return pushedMemory{root: root, sent: st.WireBytes, size: st.ImageBytes}, err
	}
	root, st, err := chunks.Push(ctx, m.image)
	if err != nil {
		return pushedMemory{}, err
	}
	recipe, rst, err := chunks.Push(ctx, m.recipe)
	if err != nil {
		return pushedMemory{}, fmt.Errorf("its recipe: %w", err)
	}
	return pushedMemory{root: root, recipe: recipe, sent: st.WireBytes + rst.WireBytes, recipeSent: rst.WireBytes, size: m.size}, nil
}

// remove deletes the memory's files, whichever there are.
func (m *memoryFiles) remove() error {
	return errors.Join(removeFile(m.file), removeFile(m.file+".image"), removeFile(m.file+".recipe"))
}
