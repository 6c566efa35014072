package syncengine

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sync"
)

// Stats count what a push or pull moved.
type Stats struct {
	Chunks     int   // chunks in the image
	ZeroChunks int   // chunks of zeroes: neither stored nor sent
	Sent       int   // chunks transferred
	SentBytes  int64 // packed bytes transferred
	FromCache  int   // chunks a pull found in the local cache
	Refetched  int   // chunks fetched again after a corrupt copy
	ImageBytes int64
}

// Progress is called as work advances: done of total bytes of the image.
type Progress func(done, total int64)

// batchChunks is how many chunks one has/want round trip covers.
const batchChunks = 64

func isZero(b []byte) bool {
	for len(b) >= 8 {
		if binary.LittleEndian.Uint64(b) != 0 {
			return false
		}
		b = b[8:]
	}
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// hashChunks hashes each chunk of buf on all cores; zero chunks get the
// zero Hash.
func hashChunks(buf []byte, chunkSize int) []Hash {
	n := (len(buf) + chunkSize - 1) / chunkSize
	out := make([]Hash, n)
	var wg sync.WaitGroup
	workers := runtime.GOMAXPROCS(0)
	for w := range workers {
		wg.Go(func() {
			for i := w; i < n; i += workers {
				c := buf[i*chunkSize : min(len(buf), (i+1)*chunkSize)]
				if !isZero(c) {
					out[i] = Sum(c)
				}
			}
		})
	}
	wg.Wait()
	return out
}

// Index reads an image and returns its manifest without storing anything.
func Index(ctx context.Context, path string, chunkSize int) (*Manifest, error) {
	return push(ctx, path, nil, nil, chunkSize, nil, &Stats{})
}

// Push stores an image's chunks and manifest in dst, sending only what dst
// lacks, and returns the image's root.
func Push(ctx context.Context, path string, dst Store, codec *Codec, chunkSize int, progress Progress) (Hash, Stats, error) {
	var st Stats
	m, err := push(ctx, path, dst, codec, chunkSize, progress, &st)
	if err != nil {
		return Hash{}, st, err
	}
	root := m.Root()
	if err := dst.Put(ctx, root, codec.Encode(m.Encode())); err != nil {
		return Hash{}, st, fmt.Errorf("store manifest: %w", err)
	}
	return root, st, nil
}

func push(ctx context.Context, path string, dst Store, codec *Codec, chunkSize int, progress Progress, st *Stats) (*Manifest, error) {
	if chunkSize <= 0 {
		chunkSize = DefaultChunkSize
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read image: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	m := &Manifest{Size: fi.Size(), ChunkSize: chunkSize}
	st.ImageBytes = m.Size
	buf := make([]byte, batchChunks*chunkSize)
	var off int64
	for off < m.Size {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		n, err := io.ReadFull(f, buf[:min(int64(len(buf)), m.Size-off)])
		if err != nil {
			return nil, fmt.Errorf("read %s at %d: %w", path, off, err)
		}
		hashes := hashChunks(buf[:n], chunkSize)
		m.Chunks = append(m.Chunks, hashes...)
		if dst != nil {
			if err := sendMissing(ctx, dst, codec, buf[:n], chunkSize, hashes, st); err != nil {
				return nil, err
			}
		}
		for _, h := range hashes {
			if h.IsZero() {
				st.ZeroChunks++
			}
		}
		off += int64(n)
		if progress != nil {
			progress(off, m.Size)
		}
	}
	st.Chunks = len(m.Chunks)
	return m, nil
}

// sendMissing asks dst which of a batch's chunks it lacks and sends those.
func sendMissing(ctx context.Context, dst Store, codec *Codec, buf []byte, chunkSize int, hashes []Hash, st *Stats) error {
	first := map[Hash]int{}
	var ask []Hash
	for i, h := range hashes {
		if _, dup := first[h]; !h.IsZero() && !dup {
			first[h] = i
			ask = append(ask, h)
		}
	}
	if len(ask) == 0 {
		return nil
	}
	have, err := dst.Has(ctx, ask)
	if err != nil {
		return fmt.Errorf("ask the store what it has: %w", err)
	}
	var want []Hash
	for i, h := range ask {
		if !have[i] {
			want = append(want, h)
		}
	}
	var mu sync.Mutex
	return parallel(ctx, want, func(h Hash) error {
		i := first[h]
		packed := codec.Encode(buf[i*chunkSize : min(len(buf), (i+1)*chunkSize)])
		if err := dst.Put(ctx, h, packed); err != nil {
			return fmt.Errorf("send chunk %s: %w", h, err)
		}
		mu.Lock()
		st.Sent++
		st.SentBytes += int64(len(packed))
		mu.Unlock()
		return nil
	})
}

// transfers is how many chunks move at once: enough to fill a link with a
// round trip, few enough for a home server.
const transfers = 4

func parallel(ctx context.Context, items []Hash, fn func(Hash) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	work := make(chan Hash)
	var wg sync.WaitGroup
	var once sync.Once
	var first error
	for range transfers {
		wg.Go(func() {
			for h := range work {
				if err := fn(h); err != nil {
					once.Do(func() { first = err; cancel() })
				}
			}
		})
	}
	for _, h := range items {
		select {
		case work <- h:
		case <-ctx.Done():
		}
	}
	close(work)
	wg.Wait()
	if first == nil && ctx.Err() != nil {
		return ctx.Err()
	}
	return first
}

func loadManifest(ctx context.Context, s Store, codec *Codec, root Hash) (*Manifest, error) {
	packed, err := s.Get(ctx, root)
	if err != nil {
		return nil, fmt.Errorf("manifest %s: %w", root, err)
	}
	b, err := codec.Decode(root, packed)
	if err != nil {
		return nil, fmt.Errorf("manifest %s: %w", root, err)
	}
	return DecodeManifest(b)
}

// Pull writes the image named root to path, taking chunks from the cache
// first and fetching the rest from remote; every chunk is verified, and
// what is fetched is kept in the cache, so a pull cut short resumes where
// it stopped. path changes only when the whole image is written and
// synced: on any failure the previous file stays as it was.
func Pull(ctx context.Context, root Hash, remote Store, cache DirStore, codec *Codec, path string, progress Progress) (Stats, error) {
	var st Stats
	m, err := loadManifest(ctx, cache, codec, root)
	if err != nil {
		if m, err = loadManifest(ctx, remote, codec, root); err != nil {
			return st, err
		}
		cache.Put(ctx, root, codec.Encode(m.Encode()))
	}
	st.Chunks, st.ImageBytes = len(m.Chunks), m.Size
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".partial-")
	if err != nil {
		return st, fmt.Errorf("write image: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	// Holes for the zero chunks: the image stays sparse.
	if err := tmp.Truncate(m.Size); err != nil {
		return st, fmt.Errorf("size the image: %w", err)
	}
	where := map[Hash][]int{}
	for i, h := range m.Chunks {
		if h.IsZero() {
			st.ZeroChunks++
			continue
		}
		where[h] = append(where[h], i)
	}
	var mu sync.Mutex
	var done int64
	get := func(h Hash) error {
		data, fromCache, refetched, sent, err := fetch(ctx, h, remote, cache, codec)
		if err != nil {
			return err
		}
		for _, i := range where[h] {
			if _, err := tmp.WriteAt(data, int64(i)*int64(m.ChunkSize)); err != nil {
				return fmt.Errorf("write image: %w (is the disk full?)", err)
			}
		}
		mu.Lock()
		defer mu.Unlock()
		if fromCache {
			st.FromCache++
		} else {
			st.Sent++
			st.SentBytes += int64(sent)
		}
		st.Refetched += refetched
		done += int64(len(data) * len(where[h]))
		if progress != nil {
			progress(done, m.Size)
		}
		return nil
	}
	if err := parallel(ctx, m.Missing(func(Hash) bool { return false }), get); err != nil {
		return st, err
	}
	if err := tmp.Sync(); err != nil {
		return st, fmt.Errorf("sync image: %w (is the disk full?)", err)
	}
	if err := tmp.Close(); err != nil {
		return st, fmt.Errorf("write image: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return st, fmt.Errorf("put the image in place: %w", err)
	}
	ok = true
	return st, nil
}

// fetch returns a chunk's verified data, from the cache if it holds a good
// copy, else from the remote, once more if the first copy was corrupt.
func fetch(ctx context.Context, h Hash, remote Store, cache DirStore, codec *Codec) (data []byte, fromCache bool, refetched, sent int, err error) {
	if packed, err := cache.Get(ctx, h); err == nil {
		if data, err := codec.Decode(h, packed); err == nil {
			return data, true, 0, 0, nil
		}
		os.Remove(cache.path(h)) // a damaged cache entry is dropped, then refetched
	}
	for attempt := 0; attempt < 2; attempt++ {
		packed, err := remote.Get(ctx, h)
		if err != nil {
			return nil, false, refetched, 0, fmt.Errorf("fetch chunk %s: %w", h, err)
		}
		data, err := codec.Decode(h, packed)
		if errors.Is(err, ErrCorrupt) {
			refetched++
			continue
		}
		if err != nil {
			return nil, false, refetched, 0, err
		}
		if err := cache.Put(ctx, h, packed); err != nil {
			return nil, false, refetched, 0, fmt.Errorf("cache chunk: %w (is the disk full?)", err)
		}
		return data, false, refetched, len(packed), nil
	}
	return nil, false, refetched, 0, fmt.Errorf("chunk %s arrived corrupt twice: the server's copy is damaged (%w); the image was not written", h, ErrCorrupt)
}
