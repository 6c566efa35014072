package syncengine

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"syscall"
	"unsafe"
)

// imageWriter writes a pulled image beside its target and puts it in
// place only when it is whole.
//
// Chunks bound for consecutive positions are gathered into runs of up to
// runBytes and written with one call each, from aligned memory and with
// direct I/O where the filesystem allows it. Per chunk and through the
// page cache, a 2 GiB pull made 30k writes that each filled fresh cache
// pages: the largest share of its CPU time, and on a virtual machine's
// kernel the most variable.
type imageWriter struct {
	m        *Manifest
	f        *os.File // the new image
	direct   *os.File // f opened again for direct I/O; nil where the filesystem refuses it
	path     string
	where    map[Hash][]int // the positions still to write, by contents
	progress Progress
	bufs     sync.Pool // run buffers (and a pull's cache batches): aligned, of runLen bytes
	runLen   int
	mu       sync.Mutex
	done     int64
}

// runBytes is the most a run gathers before it is written.
const runBytes = 4 << 20

// directAlign is the alignment direct I/O asks of memory, offsets and
// lengths (the largest logical block size in common use).
const directAlign = 4096

func newImageWriter(path string, m *Manifest, progress Progress) (*imageWriter, error) {
	dir := filepath.Dir(path)
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		return nil, fmt.Errorf("write the image to %s: the folder %s does not exist: create it, or pull to another path", path, dir)
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".partial-")
	if err != nil {
		return nil, fmt.Errorf("write the image to %s: %w", path, diskErr(err))
	}
	w := &imageWriter{m: m, f: f, path: path, where: map[Hash][]int{}, progress: progress,
		runLen: max(1, runBytes/m.ChunkSize) * m.ChunkSize}
	w.bufs.New = func() any { return alignedBuffer(w.runLen) }
	// Holes for the zero chunks: the image stays sparse.
	if err := f.Truncate(m.Size); err != nil {
		w.abandon()
		return nil, fmt.Errorf("size the image %s: %w", path, diskErr(err))
	}
	if m.ChunkSize%directAlign == 0 {
		w.direct = openDirect(f.Name())
	}
	for i, h := range m.Chunks {
		if h.IsZero() {
			w.done += int64(m.chunkLen(i))
		} else {
			w.where[h] = append(w.where[h], i)
		}
	}
	return w, nil
}

// openDirect opens path again for direct writes, or returns nil where the
// filesystem refuses them (tmpfs): its writers then use the page cache.
func openDirect(path string) *os.File {
	f, err := os.OpenFile(path, os.O_WRONLY|syscall.O_DIRECT, 0)
	if err != nil {
		return nil
	}
	return f
}

// alignedBuffer is n bytes of memory that direct I/O accepts.
func alignedBuffer(n int) []byte {
	b := make([]byte, n+directAlign)
	skip := (directAlign - int(uintptr(unsafe.Pointer(&b[0]))%directAlign)) % directAlign
	return b[skip : skip+n : skip+n]
}

// aligned reports whether b starts where direct I/O accepts memory.
func aligned(b []byte) bool {
	return len(b) > 0 && uintptr(unsafe.Pointer(&b[0]))%directAlign == 0
}

func diskErr(err error) error {
	if errors.Is(err, ErrDiskFull) || !errors.Is(err, syscall.ENOSPC) {
		return err
	}
	return fmt.Errorf("%w (%w): free space and pull again; the previous image is untouched", ErrDiskFull, err)
}

// writeAt writes b at off: what is aligned directly, the rest (an image's
// short last chunk) through the page cache.
func (w *imageWriter) writeAt(b []byte, off int64) error {
	if w.direct != nil && off%directAlign == 0 && aligned(b) {
		n := len(b) &^ (directAlign - 1)
		if _, err := w.direct.WriteAt(b[:n], off); err == nil {
			b, off = b[n:], off+int64(n)
		} else if !errors.Is(err, syscall.EINVAL) { // EINVAL: not here after all; the page cache takes it
			return fmt.Errorf("write the image %s: %w", w.path, diskErr(err))
		}
	}
	if len(b) == 0 {
		return nil
	}
	if _, err := w.f.WriteAt(b, off); err != nil {
		return fmt.Errorf("write the image %s: %w", w.path, diskErr(err))
	}
	return nil
}

func (w *imageWriter) wrote(n int64) {
	w.mu.Lock()
	w.done += n
	done := w.done
	w.mu.Unlock()
	if w.progress != nil {
		w.progress("write", done, w.m.Size)
	}
}

// reuse copies into the new image every chunk the file it replaces already
// holds in the same place, verified by its hash, and leaves the rest to be
// written: an update reads the old file instead of the cache, and does not
// decompress what did not change. It reads and writes a run at a time.
func (w *imageWriter) reuse(ctx context.Context) error {
	old, err := os.Open(w.path)
	if err != nil {
		return nil // nothing to reuse
	}
	defer old.Close()
	fi, err := old.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		return nil
	}
	cs := w.m.ChunkSize
	per := w.runLen / cs
	placed := make([]bool, len(w.m.Chunks))
	spans := (len(w.m.Chunks) + per - 1) / per
	err = parallelFor(ctx, spans, runtime.GOMAXPROCS(0), func(s int) error {
		first, last := s*per, min(len(w.m.Chunks), (s+1)*per)
		off := int64(first) * int64(cs)
		if off >= fi.Size() {
			return nil
		}
		buf := w.buffer()[:w.runLen]
		defer w.release(buf)
		// What the old file holds there; a short file holds less.
		n, _ := old.ReadAt(buf[:min(int64(len(buf)), fi.Size()-off)], off)
		start := -1 // the run's first chunk found in place
		for i := first; i <= last; i++ {
			at := (i - first) * cs
			if i < last && !w.m.Chunks[i].IsZero() && at+w.m.chunkLen(i) <= n && Sum(buf[at:at+w.m.chunkLen(i)]) == w.m.Chunks[i] {
				placed[i] = true
				if start < 0 {
					start = i
				}
				continue
			}
			if start >= 0 {
				from, to := (start-first)*cs, (i-1-first)*cs+w.m.chunkLen(i-1)
				if err := w.writeAt(buf[from:to], off+int64(from)); err != nil {
					return err
				}
				start = -1
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	for h, ps := range w.where {
		kept := ps[:0]
		for _, p := range ps {
			if placed[p] {
				w.done += int64(w.m.chunkLen(p))
			} else {
				kept = append(kept, p)
			}
		}
		w.where[h] = kept
	}
	return nil
}

// imageRun gathers chunks bound for consecutive positions of the image
// into one write. Each goroutine that writes chunks has its own.
type imageRun struct {
	w    *imageWriter
	buf  []byte // pending bytes, then free capacity to unpack into
	off  int64  // where buf[0] goes
	next int    // the position that extends the run
}

func (w *imageWriter) newRun() *imageRun {
	return &imageRun{w: w, buf: w.buffer()}
}

// buffer is an empty run buffer, taken from those released: a pull that
// allocated one per batch paid for its fresh pages each time.
func (w *imageWriter) buffer() []byte { return w.bufs.Get().([]byte)[:0] }

// release gives back a buffer from buffer.
func (w *imageWriter) release(b []byte) { w.bufs.Put(b[:cap(b)]) }

// extends reports whether a chunk for position p of n bytes joins the run.
func (r *imageRun) extends(p, n int) bool {
	return len(r.buf) == 0 || p == r.next && cap(r.buf)-len(r.buf) >= n
}

// slot is memory to unpack chunk h into: the run's free capacity, after
// the run is written if h does not extend it.
func (r *imageRun) slot(h Hash) ([]byte, error) {
	if ps := r.w.where[h]; len(ps) > 0 && !r.extends(ps[0], r.w.m.ChunkSize) {
		if err := r.flush(); err != nil {
			return nil, err
		}
	}
	return r.buf, nil
}

// put takes chunk h's bytes for every position the image has it at; the
// first joins the run, the others (the same contents elsewhere) are
// written at once.
func (r *imageRun) put(h Hash, data []byte) error {
	ps := r.w.where[h]
	if len(ps) == 0 {
		return nil
	}
	if !r.extends(ps[0], len(data)) {
		if err := r.flush(); err != nil {
			return err
		}
	}
	if len(r.buf) == 0 {
		r.off = int64(ps[0]) * int64(r.w.m.ChunkSize)
	}
	if follows(r.buf, data) {
		r.buf = r.buf[:len(r.buf)+len(data)] // unpacked in place
	} else {
		r.buf = append(r.buf, data...)
	}
	r.next = ps[0] + 1
	for _, p := range ps[1:] {
		if err := r.w.writeAt(data, int64(p)*int64(r.w.m.ChunkSize)); err != nil {
			return err
		}
	}
	r.w.wrote(int64(len(data) * len(ps)))
	return nil
}

// flush writes the pending run. What was pending is gone after a failure
// too, which the caller reports as final.
func (r *imageRun) flush() error {
	if len(r.buf) == 0 {
		return nil
	}
	err := r.w.writeAt(r.buf, r.off)
	r.buf = r.buf[:0]
	return err
}

// release gives the run's memory back, dropping what is pending: call
// flush first to keep it.
func (r *imageRun) release() {
	if r.buf != nil {
		r.w.release(r.buf)
		r.buf = nil
	}
}

// commit syncs the image and puts it in place of the old one.
func (w *imageWriter) commit() error {
	if err := w.f.Sync(); err != nil {
		return fmt.Errorf("sync the image %s: %w", w.path, diskErr(err))
	}
	if w.direct != nil {
		w.direct.Close()
		w.direct = nil
	}
	if err := w.f.Close(); err != nil {
		return fmt.Errorf("write the image %s: %w", w.path, diskErr(err))
	}
	if err := os.Rename(w.f.Name(), w.path); err != nil {
		return fmt.Errorf("put the image in place at %s: %w", w.path, err)
	}
	w.f = nil
	return nil
}

// abandon removes an image that was not committed.
func (w *imageWriter) abandon() {
	if w.direct != nil {
		w.direct.Close()
		w.direct = nil
	}
	if w.f != nil {
		w.f.Close()
		os.Remove(w.f.Name())
		w.f = nil
	}
}
