package syncengine

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// packCache is a workstation's chunk cache: objects appended to pack files,
// each with an index of (hash, offset, length) entries, read once into
// memory. A file per object cost about 200 µs of system time each (a cold
// pull of 2 GiB writes 27k of them), appending costs a few.
//
// Nothing is synced: a crash may leave index entries past a pack's end
// (ignored when the index is read) or objects torn (caught by their hash
// when read, dropped and fetched again). Each process appends to packs of
// its own, so two pulls into one cache do not mix their writes.
type packCache struct {
	dir string

	mu     sync.Mutex
	loaded bool
	index  map[Hash]packLoc
	files  []*os.File // open for reading, by pack number
	names  []string
	w, idx *os.File // the pack this process appends to, and its index
	wd     *os.File // w opened for direct I/O; nil where the filesystem refuses it
	wNum   int
	wOff   int64
}

type packLoc struct {
	pack int
	off  int64
	n    int
}

// packEntry is one index entry: hash, offset, length.
const packEntry = 32 + 8 + 4

// maxPack is where a process starts a new pack.
const maxPack = 1 << 30

func (c *packCache) packDir() string { return filepath.Join(c.dir, "packs") }

// load reads every pack's index; the caller holds mu.
func (c *packCache) load() error {
	if c.loaded {
		return nil
	}
	c.index = map[Hash]packLoc{}
	idxs, err := filepath.Glob(filepath.Join(c.packDir(), "*.idx"))
	if err != nil {
		return err
	}
	for _, ip := range idxs {
		name := strings.TrimSuffix(filepath.Base(ip), ".idx")
		f, err := os.Open(filepath.Join(c.packDir(), name+".pack"))
		if err != nil {
			continue // an index without its pack names nothing
		}
		fi, err := f.Stat()
		raw, rerr := os.ReadFile(ip)
		if err != nil || rerr != nil {
			f.Close()
			continue
		}
		num := len(c.files)
		c.files, c.names = append(c.files, f), append(c.names, name)
		for len(raw) >= packEntry {
			var h Hash
			copy(h[:], raw)
			off := int64(binary.LittleEndian.Uint64(raw[32:]))
			n := int(binary.LittleEndian.Uint32(raw[40:]))
			raw = raw[packEntry:]
			if off+int64(n) <= fi.Size() {
				c.index[h] = packLoc{num, off, n}
			}
		}
	}
	c.loaded = true
	return nil
}

func (c *packCache) Has(_ context.Context, hashes []Hash) ([]bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.load(); err != nil {
		return nil, fmt.Errorf("read the cache %s: %w", c.dir, err)
	}
	out := make([]bool, len(hashes))
	for i, h := range hashes {
		_, out[i] = c.index[h]
	}
	return out, nil
}

func (c *packCache) Get(_ context.Context, h Hash) ([]byte, error) {
	c.mu.Lock()
	if err := c.load(); err != nil {
		c.mu.Unlock()
		return nil, fmt.Errorf("read the cache %s: %w", c.dir, err)
	}
	loc, ok := c.index[h]
	var f *os.File
	if ok {
		f = c.files[loc.pack]
	}
	c.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("%s: %w", h, ErrNotFound)
	}
	b := make([]byte, loc.n)
	if _, err := f.ReadAt(b, loc.off); err != nil {
		return nil, fmt.Errorf("read %s from the cache: %w", h, err)
	}
	return b, nil
}

// keep appends objects to this process's pack, then their index entries:
// an entry never names bytes not yet written.
func (c *packCache) keep(ctx context.Context, objs []Object) error {
	if len(objs) == 0 {
		return ctx.Err()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.load(); err != nil {
		return fmt.Errorf("read the cache %s: %w", c.dir, err)
	}
	if c.w == nil || c.wOff > maxPack {
		if err := c.startPack(); err != nil {
			return storeErr(c.dir, err)
		}
	}
	var entries []byte
	put := func(o Object, off int64) {
		c.index[o.Hash] = packLoc{c.wNum, off, len(o.Packed)}
		entries = append(entries, o.Hash[:]...)
		entries = binary.LittleEndian.AppendUint64(entries, uint64(off))
		entries = binary.LittleEndian.AppendUint32(entries, uint32(len(o.Packed)))
	}
	// A pull's batch lies in one aligned buffer with room to pad: written
	// directly, past the page cache, at the next aligned offset (the gap
	// and the padding belong to no entry).
	if span := c.directSpan(objs); span != nil {
		off := alignUp(c.wOff)
		_, err := c.wd.WriteAt(span[:alignUp(int64(len(span)))], off)
		if err == nil {
			for _, o := range objs {
				put(o, off)
				off += int64(len(o.Packed))
			}
			c.wOff = alignUp(off)
			return c.writeEntries(entries)
		}
		if !errors.Is(err, syscall.EINVAL) {
			return storeErr(c.dir, err)
		}
		c.wd.Close() // not here after all: the page cache takes the rest
		c.wd = nil
	}
	// Objects that lie one after another in memory go in one write;
	// gathering the others into a buffer would cost more in fresh pages
	// than it saves in calls.
	var span []byte
	from, spanOff := c.wOff, c.wOff
	for _, o := range objs {
		if _, dup := c.index[o.Hash]; dup {
			continue
		}
		if follows(span, o.Packed) {
			span = span[:len(span)+len(o.Packed)]
		} else {
			if err := c.write(span, spanOff); err != nil {
				return err
			}
			span, spanOff = o.Packed, c.wOff
		}
		put(o, c.wOff)
		c.wOff += int64(len(o.Packed))
	}
	if err := c.write(span, spanOff); err != nil {
		return err
	}
	if err := c.writeEntries(entries); err != nil {
		return err
	}
	// The pack is not synced, but its writing back starts now, beside the
	// transfer: on ext4 the pulled image's fsync would otherwise wait for
	// every dirty pack page (over a second of a 2 GiB pull).
	if rc, err := c.w.SyscallConn(); err == nil {
		rc.Control(func(fd uintptr) {
			unix.SyncFileRange(int(fd), from, c.wOff-from, unix.SYNC_FILE_RANGE_WRITE)
		})
	}
	return nil
}

// directSpan is the memory of objs when it can go to the pack by direct
// I/O: none already held, one after another, from an aligned start, with
// room to pad the end to alignment.
func (c *packCache) directSpan(objs []Object) []byte {
	if c.wd == nil {
		return nil
	}
	var span []byte
	for _, o := range objs {
		if _, dup := c.index[o.Hash]; dup {
			return nil
		}
		switch {
		case span == nil:
			span = o.Packed
		case follows(span, o.Packed):
			span = span[:len(span)+len(o.Packed)]
		default:
			return nil
		}
	}
	if !aligned(span) || int64(cap(span)) < alignUp(int64(len(span))) {
		return nil
	}
	return span
}

func alignUp(n int64) int64 { return (n + directAlign - 1) &^ (directAlign - 1) }

func (c *packCache) writeEntries(entries []byte) error {
	if _, err := c.idx.Write(entries); err != nil {
		return storeErr(c.dir, err)
	}
	return nil
}

func (c *packCache) write(b []byte, off int64) error {
	if len(b) == 0 {
		return nil
	}
	if _, err := c.w.WriteAt(b, off); err != nil {
		return storeErr(c.dir, err)
	}
	return nil
}

// follows reports whether b starts where a ends, in a's memory.
func follows(a, b []byte) bool {
	n := len(a)
	return len(b) > 0 && cap(a)-n >= len(b) && &a[:n+1][n] == &b[0]
}

func (c *packCache) startPack() error {
	if err := os.MkdirAll(c.packDir(), 0o755); err != nil {
		return err
	}
	var id [12]byte
	rand.Read(id[:])
	name := hex.EncodeToString(id[:])
	w, err := os.OpenFile(filepath.Join(c.packDir(), name+".pack"), os.O_CREATE|os.O_EXCL|os.O_RDWR, 0o644)
	if err != nil {
		return err
	}
	idx, err := os.OpenFile(filepath.Join(c.packDir(), name+".idx"), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		w.Close()
		return err
	}
	r, err := os.Open(w.Name())
	if err != nil {
		w.Close()
		idx.Close()
		return err
	}
	c.closeWriters()
	c.w, c.idx, c.wNum, c.wOff = w, idx, len(c.files), 0
	c.files, c.names = append(c.files, r), append(c.names, name)
	// The same pack for direct writes of whole batches, where the
	// filesystem takes them.
	c.wd = openDirect(w.Name())
	return nil
}

// closeWriters closes the pack this process appends to (it stays open for
// reading) and its index.
func (c *packCache) closeWriters() error {
	var errs []error
	for _, f := range []*os.File{c.w, c.wd, c.idx} {
		if f != nil {
			errs = append(errs, f.Close())
		}
	}
	c.w, c.wd, c.idx = nil, nil, nil
	return errors.Join(errs...)
}

// drop forgets an object found damaged, so that it is fetched again; its
// bytes go at the next collection.
func (c *packCache) drop(h Hash) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.index, h)
}

// collect keeps only the objects live names, rewriting them into a new
// pack and removing every older one, and returns how many it removed.
func (c *packCache) collect(ctx context.Context, live map[Hash]bool) (int, error) {
	c.mu.Lock()
	if err := c.load(); err != nil {
		c.mu.Unlock()
		return 0, err
	}
	var keep []Hash
	for h := range c.index {
		if live[h] {
			keep = append(keep, h)
		}
	}
	removed := len(c.index) - len(keep)
	c.mu.Unlock()
	objs := make([]Object, 0, len(keep))
	for _, h := range keep {
		packed, err := c.Get(ctx, h)
		if err != nil {
			return 0, err
		}
		objs = append(objs, Object{h, packed})
	}
	// The live objects go into a fresh pack; then the old ones go.
	c.mu.Lock()
	old, oldNames := c.files, c.names
	c.closeWriters()
	c.files, c.names = nil, nil
	c.index = map[Hash]packLoc{}
	c.mu.Unlock()
	if err := c.keep(ctx, objs); err != nil {
		return 0, err
	}
	var errs []error
	for i, name := range oldNames {
		old[i].Close()
		for _, ext := range []string{".pack", ".idx"} {
			if err := os.Remove(filepath.Join(c.packDir(), name+ext)); err != nil && !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, err)
			}
		}
	}
	return removed, errors.Join(errs...)
}

// close closes the cache's files.
func (c *packCache) close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	var errs []error
	for _, f := range c.files {
		errs = append(errs, f.Close())
	}
	errs = append(errs, c.closeWriters())
	c.files, c.names, c.loaded = nil, nil, false
	return errors.Join(errs...)
}
