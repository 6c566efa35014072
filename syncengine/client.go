package syncengine

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"sort"
	"sync"
	"sync/atomic"
)

// Stats count what a transfer moved.
type Stats struct {
	Chunks     int   `json:"chunks"`      // chunks in the image
	ZeroChunks int   `json:"zero_chunks"` // chunks of zeroes: neither stored nor sent
	Sent       int   `json:"sent"`        // chunks transferred
	Patched    int   `json:"patched"`     // of those, sent as their changes against the base
	InPlace    int   `json:"in_place"`    // distinct chunks a pull found already in place in the file it replaces
	FromCache  int   `json:"from_cache"`  // distinct chunks a pull found in the local cache
	Refetched  int   `json:"refetched"`   // chunks asked for again after a damaged or cut transfer
	WireBytes  int64 `json:"wire_bytes"`  // bytes of requests and answers, both ways
	ImageBytes int64 `json:"image_bytes"`
	Base       Hash  `json:"base"` // the image the differences were taken against (zero: none)
}

// Progress is called as a step of a transfer advances: done of total
// bytes. A push reads its image ("read"), then sends ("send"); a pull
// writes its image ("write"), from the cache and from the remote.
type Progress func(step string, done, total int64)

// Client moves images between local files, the local cache and a remote
// store. Its transfers send only what the other side lacks, and of a chunk
// that changed since the last transfer of the same path, only its changes.
type Client struct {
	Remote    Remote
	Cache     DirStore // the workstation's chunk cache: its folder and its record of what each file holds
	Codec     *Codec
	ChunkSize int      // for Push; 0 means DefaultChunkSize
	Progress  Progress // may be nil

	// local, when set, holds the chunks instead of the pack cache: on the
	// home server, its own store, so that writing an image there takes
	// every chunk from the store and stores none twice (see Images).
	local objectCache

	mu    sync.Mutex
	packs *packCache // the cache's objects, opened on first use
}

// objectCache is what a transfer needs of the place it keeps chunks in.
type objectCache interface {
	objectGetter
	objectHaver
	keep(ctx context.Context, objs []Object) error
	drop(h Hash) // forget a damaged copy, so that it is fetched again
}

// cache is where the client keeps chunks: local, or the pack cache.
func (c *Client) cache() objectCache {
	if c.local != nil {
		return c.local
	}
	return c.packCache()
}

// packCache is the cache's pack files, opened on first use.
func (c *Client) packCache() *packCache {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.packs == nil {
		c.packs = &packCache{dir: c.Cache.Dir}
	}
	return c.packs
}

// Close closes the cache's files.
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.packs == nil {
		return nil
	}
	return c.packs.close()
}

// GCCache removes from the cache every object that none of the kept trees
// (and, for a chain, its files' trees) uses, and returns how many.
func (c *Client) GCCache(ctx context.Context, keep []Hash) (int, error) {
	live, err := liveObjects(ctx, c.packCache(), c.Codec, keep)
	if err != nil {
		return 0, err
	}
	return c.packCache().collect(ctx, live)
}

// transfers is how many requests a pull keeps under way: enough to fill a
// link during a round trip, and to use both cores on each side.
const transfers = 4

// fetchBatch is how many chunks one request of a pull asks for: an
// update's patches compress together within one answer.
const fetchBatch = 1024

// base is the tree last transferred to or from path, if the cache holds it
// and every chunk it names: what the next transfer sends differences
// against.
func (c *Client) base(ctx context.Context, path string) *tree {
	root, ok := c.Cache.ref(path)
	if !ok {
		return nil
	}
	t, err := loadTree(ctx, c.cache(), c.Codec, root)
	if err != nil {
		return nil
	}
	if missing, err := missingChunks(ctx, c.cache(), t.Manifest); err != nil || len(missing) > 0 {
		return nil
	}
	return t
}

func (t *tree) name() Hash {
	if t == nil {
		return Hash{}
	}
	return t.root
}

// Pull writes the image named root to path. Chunks come from the cache
// first; the rest are fetched (as changes against the image last pulled to
// path, where the cache holds it), verified, and kept in the cache, so a
// pull cut short resumes where it stopped. path changes only when the
// whole image is written and synced: on any failure the previous file
// stays as it was.
func (c *Client) Pull(ctx context.Context, root Hash, path string) (st Stats, err error) {
	var wire atomic.Int64
	defer func() { st.WireBytes = wire.Load() }()
	base := c.base(ctx, path)
	t, err := c.fetchTree(ctx, root, base, &wire)
	if errors.Is(err, errBaseUnknown) {
		base = nil
		t, err = c.fetchTree(ctx, root, nil, &wire)
	}
	if err != nil {
		return st, err
	}
	st.Base = base.name()
	st.Chunks, st.ImageBytes = len(t.Chunks), t.Size
	st.ZeroChunks = len(t.Chunks) - countNonZero(t.Chunks)
	img, err := newImageWriter(path, t.Manifest, c.Progress)
	if err != nil {
		return st, err
	}
	defer img.abandon()
	// The file being replaced holds most of an update already, in place.
	if err := img.reuse(ctx); err != nil {
		return st, err
	}
	all, first := t.distinct()
	var distinct []Hash
	for _, h := range all {
		if len(img.where[h]) == 0 {
			st.InPlace++
		} else {
			distinct = append(distinct, h)
		}
	}
	have, err := c.cache().Has(ctx, distinct)
	if err != nil {
		return st, err
	}

	// What the cache holds first, each distinct chunk read once. A copy
	// damaged there (a crash, a bad disk) is dropped and fetched again.
	var want, cached []int
	for i, h := range distinct {
		if have[i] {
			cached = append(cached, first[h])
		} else {
			want = append(want, first[h])
		}
	}
	var mu sync.Mutex
	err = parallelBatches(ctx, cached, fetchBatch, func(batch []int) error {
		run := img.newRun()
		defer run.release()
		for _, p := range batch {
			h := t.Chunks[p]
			dst, err := run.slot(h)
			if err != nil {
				return err
			}
			data, err := loadObjectInto(ctx, c.cache(), c.Codec, h, dst)
			if errors.Is(err, ErrCorrupt) || errors.Is(err, ErrNotFound) {
				c.cache().drop(h)
				mu.Lock()
				want = append(want, p)
				mu.Unlock()
				continue
			}
			if err != nil {
				return fmt.Errorf("read the cache's copy of chunk %s: %w", h, err)
			}
			if err := run.put(h, data); err != nil {
				return err
			}
			mu.Lock()
			st.FromCache++
			mu.Unlock()
		}
		return run.flush()
	})
	if err != nil {
		return st, err
	}
	sort.Ints(want)
	got := func(patched bool) {
		mu.Lock()
		defer mu.Unlock()
		st.Sent++
		if patched {
			st.Patched++
		}
	}
	err = parallelBatches(ctx, want, fetchBatch, func(batch []int) error {
		return c.fetchChunks(ctx, t, base, batch, img, got, &st, &mu, &wire)
	})
	if err != nil {
		return st, err
	}
	if err := img.commit(); err != nil {
		return st, err
	}
	// Its chunks are in the cache; now the tree, and the path's new base.
	if err := storeTree(ctx, c.cache().keep, c.Codec, t); err != nil {
		return st, err
	}
	return st, c.Cache.setRef(path, root)
}

func countNonZero(hs []Hash) int {
	n := 0
	for _, h := range hs {
		if !h.IsZero() {
			n++
		}
	}
	return n
}

func (c *Client) fetchTree(ctx context.Context, root Hash, base *tree, wire *atomic.Int64) (*tree, error) {
	from := base.name()
	rr, done, err := exchange(ctx, c.Remote, c.Codec, "tree", bytes.NewReader(append(root[:], from[:]...)), wire)
	if err != nil {
		return nil, err
	}
	defer done()
	t, err := recvTree(rr, root, base)
	if errors.Is(err, ErrNotFound) {
		return nil, fmt.Errorf("%s has no image %s: check the root ('handoff lease status' shows an image's head): %w", c.Remote, root, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("fetch the tree of %s from %s: %w", root, c.Remote, err)
	}
	return t, nil
}

// fetchChunks asks for the chunks at positions, writes each verified one
// into the image and keeps it in the cache. A cut or damaged transfer is
// asked again, from where it broke, twice at most; what arrived is kept.
func (c *Client) fetchChunks(ctx context.Context, t, base *tree, positions []int, img *imageWriter, got func(patched bool), st *Stats, mu *sync.Mutex, wire *atomic.Int64) error {
	check := false // after damage, the server verifies what it sends
	for attempt := 1; ; attempt++ {
		n, err := c.fetchOnce(ctx, t, base, positions, check, img, got, wire)
		positions = positions[n:]
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if errors.Is(err, errBadBase) && len(positions) > 0 {
			// That one chunk comes whole; the rest as before.
			if n, err = c.fetchOnce(ctx, t, nil, positions[:1], check, img, got, wire); err != nil {
				return err
			}
			positions = positions[n:]
			attempt--
			continue
		}
		// What broke on the way is asked again; what the server itself
		// reports (a damaged copy, a missing image) is final.
		var re *remoteError
		damaged := errors.Is(err, ErrCorrupt) && !errors.As(err, &re)
		if !damaged && !errors.Is(err, errCut) || errors.Is(err, ErrDiskFull) {
			return err
		}
		if attempt == 3 {
			if damaged {
				return fmt.Errorf("%w: it arrived damaged %d times in a row: check the link or the server's copy; the image was not written", err, attempt)
			}
			return fmt.Errorf("%w; tried %d times: what arrived is kept, so pull again to resume", err, attempt)
		}
		check = check || damaged
		mu.Lock()
		st.Refetched += len(positions)
		mu.Unlock()
	}
}

// fetchOnce makes one request for positions and returns how many of them
// arrived whole and were stored. check asks the server to verify each
// chunk before it sends it.
func (c *Client) fetchOnce(ctx context.Context, t, base *tree, positions []int, check bool, img *imageWriter, got func(patched bool), wire *atomic.Int64) (int, error) {
	from := base.name()
	req := append(append(t.root[:], from[:]...), 0)
	if check {
		req[len(req)-1] = 1
	}
	req = appendPositions(req, positions)
	rr, done, err := exchange(ctx, c.Remote, c.Codec, "chunks", bytes.NewReader(req), wire)
	if err != nil {
		return 0, err
	}
	defer done()
	rr.transient = true // what is kept is copied into arena
	run := img.newRun()
	defer run.release()
	var batch []Object
	arena := img.buffer() // the packed bytes of batch, reused after each keep
	defer func() { img.release(arena) }()
	n := 0
	for _, p := range positions {
		h := t.Chunks[p]
		dst, err := run.slot(h)
		var data, packed []byte
		var patched bool
		if err == nil {
			data, packed, patched, err = rr.object(h, c.cachedBase(ctx, base, p), dst)
		}
		if err == nil {
			err = run.put(h, data)
		}
		if err != nil {
			if werr := run.flush(); werr != nil {
				return n, werr // the disk failed: final
			}
			// Keep what arrived: a second try, or the next pull, resumes.
			return n, errors.Join(err, c.cache().keep(ctx, batch))
		}
		if packed == nil {
			packed = c.Codec.EncodeLocal(data)
		}
		if len(arena)+len(packed) > cap(arena)-directAlign || len(batch) == storeBatch { // room to pad for direct I/O
			if err := c.cache().keep(ctx, batch); err != nil {
				return n - len(batch), fmt.Errorf("keep fetched chunks in the cache: %w", err)
			}
			batch, arena = batch[:0], arena[:0]
		}
		arena = append(arena, packed...)
		batch = append(batch, Object{h, arena[len(arena)-len(packed):]})
		got(patched)
		n++
	}
	if err := run.flush(); err != nil {
		return n, err
	}
	if err := c.cache().keep(ctx, batch); err != nil {
		return 0, fmt.Errorf("keep fetched chunks in the cache: %w", err)
	}
	return n, nil
}

// errBadBase means the cache's copy of a base chunk is damaged: the chunk
// it was to patch is asked for whole instead.
var errBadBase = errors.New("the cache's copy of the base chunk is damaged")

// cachedBase is chunkBase from the cache, which drops a damaged copy.
func (c *Client) cachedBase(ctx context.Context, base *tree, p int) func() ([]byte, error) {
	fn := chunkBase(ctx, c.cache(), c.Codec, base, p)
	if fn == nil {
		return nil
	}
	return func() ([]byte, error) {
		b, err := fn()
		if err != nil {
			c.cache().drop(base.Chunks[p])
			return nil, fmt.Errorf("%w: %w", errBadBase, err)
		}
		return b, nil
	}
}

// parallelBatches runs fn over items cut into batches, transfers at a
// time, and returns the first error, after every started batch ended.
func parallelBatches(ctx context.Context, items []int, size int, fn func([]int) error) error {
	batches := (len(items) + size - 1) / size
	return parallelFor(ctx, batches, transfers, func(b int) error {
		return fn(items[b*size : min(len(items), (b+1)*size)])
	})
}

// Push stores the image at path in the remote, sending only the chunks it
// lacks, and of those that changed since the last transfer of path only
// their changes. It returns the image's root.
func (c *Client) Push(ctx context.Context, path string) (_ Hash, st Stats, err error) {
	var wire atomic.Int64
	defer func() { st.WireBytes = wire.Load() }()
	m, err := indexFile(ctx, path, c.ChunkSize, c.Progress)
	if err != nil {
		return Hash{}, st, err
	}
	t := m.tree()
	st.Chunks, st.ImageBytes = len(m.Chunks), m.Size
	st.ZeroChunks = len(m.Chunks) - countNonZero(m.Chunks)
	base := c.base(ctx, path)
	have, err := c.remoteHas(ctx, []Hash{t.root, base.name()}, &wire)
	if err != nil {
		return Hash{}, st, err
	}
	if have[0] {
		return t.root, st, c.rememberFile(ctx, path, t)
	}
	if base != nil && !have[1] {
		base = nil
	}
	st.Base = base.name()
	// Ask about the chunks the base does not already have in place.
	distinct, first := m.distinct()
	var ask []Hash
	for _, h := range distinct {
		if p := first[h]; base == nil || p >= len(base.Chunks) || base.Chunks[p] != h {
			ask = append(ask, h)
		}
	}
	var send []int
	for i := 0; i < len(ask); i += maxHasBatch {
		part := ask[i:min(len(ask), i+maxHasBatch)]
		have, err := c.remoteHas(ctx, part, &wire)
		if err != nil {
			return Hash{}, st, err
		}
		for j, ok := range have {
			if !ok {
				send = append(send, first[part[j]])
			}
		}
	}
	sort.Ints(send)
	if err := c.sendPush(ctx, path, t, base, send, &st, &wire); err != nil {
		return Hash{}, st, err
	}
	return t.root, st, c.rememberFile(ctx, path, t)
}

func (c *Client) remoteHas(ctx context.Context, hashes []Hash, wire *atomic.Int64) ([]bool, error) {
	req := make([]byte, 0, 32*len(hashes))
	for _, h := range hashes {
		req = append(req, h[:]...)
	}
	rr, done, err := exchange(ctx, c.Remote, c.Codec, "has", bytes.NewReader(req), wire)
	if err != nil {
		return nil, err
	}
	defer done()
	_, b, err := rr.record()
	if err != nil {
		return nil, fmt.Errorf("ask %s what it has: %w", c.Remote, err)
	}
	return unbitmap(b, len(hashes))
}

// sendPush streams the tree and the chunks at positions. Each chunk is
// read from the image again and must still hash to its name: an image that
// changes under a push is refused, never stored half old, half new.
func (c *Client) sendPush(ctx context.Context, path string, t, base *tree, positions []int, st *Stats, wire *atomic.Int64) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("read image: %w", err)
	}
	defer f.Close()
	pr, pw := io.Pipe()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var readErr error // the image side's own failure, which explains a broken stream best
	var wg sync.WaitGroup
	wg.Go(func() {
		w := newRecordWriter(pw, c.Codec)
		readErr = func() error {
			from := base.name()
			if err := w.bytes(append(t.root[:], from[:]...)); err != nil {
				return err
			}
			if err := sendTree(w, t, base); err != nil {
				return err
			}
			if err := w.bytes(appendPositions(nil, positions)); err != nil {
				return err
			}
			for i := 0; i < len(positions); i += pushWindow {
				part := positions[i:min(len(positions), i+pushWindow)]
				items, err := c.preparePush(ctx, f, path, t, base, part)
				if err != nil {
					return err
				}
				batch := make([]Object, len(items))
				for j, it := range items {
					patched := false
					if it.base == nil {
						err = w.packed(it.packed) // new to the server: as it will be stored
					} else {
						patched, err = w.object(it.base, it.data)
					}
					if err != nil {
						return err
					}
					st.Sent++
					if patched {
						st.Patched++
					}
					batch[j] = Object{t.Chunks[part[j]], it.packed}
				}
				// Kept in the cache too, so the next push of this path
				// sends only changes against this one.
				if err := c.cache().keep(ctx, batch); err != nil {
					return fmt.Errorf("keep pushed chunks in the cache: %w", err)
				}
				if c.Progress != nil {
					c.Progress("send", int64(st.Sent), int64(len(positions)))
				}
			}
			return w.Close()
		}()
		pw.CloseWithError(readErr)
	})
	rr, done, err := exchange(ctx, c.Remote, c.Codec, "push", pr, wire)
	if err == nil {
		_, _, err = rr.record()
		done()
	}
	// Whatever happened, the image side stops and is waited for.
	if err != nil {
		cancel()
	}
	pr.CloseWithError(errCut)
	wg.Wait()
	if readErr != nil && !errors.Is(readErr, io.ErrClosedPipe) && !errors.Is(readErr, errCut) && !errors.Is(readErr, context.Canceled) {
		return readErr
	}
	if err != nil {
		return fmt.Errorf("push %s to %s: %w", path, c.Remote, err)
	}
	return nil
}

// pushWindow is how many chunks a push prepares at once, on all cores.
const pushWindow = 64

// pushItem is a chunk ready to send: its bytes, its stored form, and its
// base's bytes where it goes as a patch.
type pushItem struct{ data, packed, base []byte }

// preparePush reads the chunks at positions from the image and packs them
// on all cores. Each must still hash to its name: an image that changes
// under a push is refused, never stored half old, half new.
func (c *Client) preparePush(ctx context.Context, f *os.File, path string, t, base *tree, positions []int) ([]pushItem, error) {
	items := make([]pushItem, len(positions))
	err := parallelFor(ctx, len(positions), runtime.GOMAXPROCS(0), func(j int) error {
		p := positions[j]
		data, err := readPushed(f, path, t, p)
		if err != nil {
			return err
		}
		it := pushItem{data: data}
		fn := chunkBase(ctx, c.cache(), c.Codec, base, p)
		if fn == nil {
			it.packed = c.Codec.Encode(data) // sent and stored as it is
		} else {
			it.packed = c.Codec.EncodeLocal(data) // for the cache; a patch goes
			var err error
			if it.base, err = fn(); err != nil || it.base == nil {
				it.base = []byte{} // without its base it goes whole, still in a group
			}
		}
		items[j] = it
		return nil
	})
	return items, err
}

// readPushed reads chunk p of the file being pushed as t, which must
// still hash to its name: a file that changes under a push is refused,
// never stored half old, half new.
func readPushed(f *os.File, path string, t *tree, p int) ([]byte, error) {
	off := int64(p) * int64(t.ChunkSize)
	data := make([]byte, t.chunkLen(p))
	if _, err := f.ReadAt(data, off); err != nil {
		return nil, fmt.Errorf("read %s at %d: %w", path, off, err)
	}
	if Sum(data) != t.Chunks[p] {
		return nil, fmt.Errorf("%s changed while it was being pushed (at byte %d): push a snapshot, or the disk of a stopped VM", path, off)
	}
	return data, nil
}

// parallelFor runs fn(0..n-1) on workers goroutines, in order of index,
// and returns the first error, after every started call ended; after an
// error no new call starts.
func parallelFor(ctx context.Context, n, workers int, fn func(int) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var next atomic.Int64
	var once sync.Once
	var first error
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					return
				}
				if err := fn(i); err != nil {
					once.Do(func() { first = err; cancel() })
					return
				}
			}
		})
	}
	wg.Wait()
	if first != nil {
		return first
	}
	return ctx.Err()
}

// rememberFile makes the file at path, pushed as t, the base of its next
// push: the chunks the cache lacks (those the remote had already, which
// the push did not read) are read from the file again and kept, so that
// the next push sends each changed chunk as its changes against them.
// Without them a push after one that found its chunks on the server (a
// second device, a fresh cache) would send every changed chunk whole.
func (c *Client) rememberFile(ctx context.Context, path string, t *tree) error {
	missing, err := missingChunks(ctx, c.cache(), t.Manifest)
	if err != nil {
		return err
	}
	if len(missing) > 0 {
		f, err := os.Open(path)
		if err != nil {
			return fmt.Errorf("keep %s in the cache: %w", path, err)
		}
		defer f.Close()
		_, first := t.distinct()
		positions := make([]int, len(missing))
		for i, h := range missing {
			positions[i] = first[h]
		}
		err = parallelBatches(ctx, positions, storeBatch, func(batch []int) error {
			objs := make([]Object, 0, len(batch))
			for _, p := range batch {
				data, err := readPushed(f, path, t, p)
				if err != nil {
					return err
				}
				objs = append(objs, Object{t.Chunks[p], c.Codec.EncodeLocal(data)})
			}
			return c.cache().keep(ctx, objs)
		})
		if err != nil {
			return fmt.Errorf("keep %s in the cache: %w", path, err)
		}
	}
	return c.remember(ctx, path, t)
}

// remember stores t in the cache as path's base, if the cache holds every
// chunk t names (a push keeps only what it sent).
func (c *Client) remember(ctx context.Context, path string, t *tree) error {
	missing, err := missingChunks(ctx, c.cache(), t.Manifest)
	if err != nil || len(missing) > 0 {
		return err
	}
	if err := storeTree(ctx, c.cache().keep, c.Codec, t); err != nil {
		return err
	}
	return c.Cache.setRef(path, t.root)
}

// Diff lists the byte ranges where image b differs from image a; their
// trees come from the cache where it holds them, else from the remote.
func (c *Client) Diff(ctx context.Context, a, b Hash) ([]Range, error) {
	var ms [2]*Manifest
	for i, root := range []Hash{a, b} {
		t, err := loadTree(ctx, c.cache(), c.Codec, root)
		if err != nil && c.Remote != nil {
			var wire atomic.Int64
			t, err = c.fetchTree(ctx, root, nil, &wire)
		}
		if err != nil {
			return nil, err
		}
		ms[i] = t.Manifest
	}
	return Diff(ms[0], ms[1])
}
