package syncengine

import (
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// TestImageWriterGathersRunsAndPlacesEveryChunk writes images through the
// pull's writer, chunks arriving in runs from several goroutines at once,
// in batches of shuffled order, and checks every byte, holes included.
func TestImageWriterGathersRunsAndPlacesEveryChunk(t *testing.T) {
	const cs = DefaultChunkSize
	per := runBytes / cs
	// An image of 3 runs and a short tail: zero chunks (alone and in a
	// row, across a run's end), one content at three positions, the rest
	// random.
	n := 3*per + 7
	want := make([]byte, (n-1)*cs+1000)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range n {
		switch {
		case i == 5 || i >= per-2 && i <= per+1:
		case i == 9 || i == per+30 || i == n-1:
			copy(want[i*cs:min(len(want), (i+1)*cs)], bytes.Repeat([]byte("same"), cs/4))
		default:
			for j := i * cs; j < min(len(want), (i+1)*cs); j++ {
				want[j] = byte(rng.Uint32())
			}
		}
	}
	dir := t.TempDir()
	src := filepath.Join(dir, "source")
	if err := os.WriteFile(src, want, 0o644); err != nil {
		t.Fatal(err)
	}
	m, err := indexFile(context.Background(), src, cs, nil)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name     string
		old      func() []byte // the file being replaced (nil: none)
		buffered bool          // without direct I/O
		fetch    int           // distinct chunks reuse leaves to fetch (-1: any)
	}{
		{"cold", nil, false, -1},
		{"cold, through the page cache", nil, true, -1},
		{"an update: most chunks in place", func() []byte {
			b := bytes.Clone(want)
			b[3*cs+17] ^= 1
			b[(per+4)*cs] ^= 1
			return b
		}, false, 2},
		{"the old file shorter, and damaged at its end", func() []byte {
			b := bytes.Clone(want[:(2*per+3)*cs+50])
			b[len(b)-1] ^= 1
			return b
		}, false, -1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "image")
			if c.old != nil {
				if err := os.WriteFile(out, c.old(), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			w, err := newImageWriter(out, m, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer w.abandon()
			var fs syscall.Statfs_t
			if syscall.Statfs(out+"/..", &fs) == nil && fs.Type == 0xEF53 && w.direct == nil {
				t.Error("no direct I/O on ext4")
			}
			if c.buffered && w.direct != nil {
				w.direct.Close()
				w.direct = nil
			}
			if err := w.reuse(context.Background()); err != nil {
				t.Fatal(err)
			}
			// What reuse did not place arrives in batches of increasing
			// positions, each on its own goroutine, the batches shuffled.
			distinct, first := m.distinct()
			var todo []int
			for _, h := range distinct {
				if len(w.where[h]) > 0 {
					todo = append(todo, first[h])
				}
			}
			if c.fetch >= 0 && len(todo) != c.fetch {
				t.Errorf("reuse left %d chunks to fetch, want %d", len(todo), c.fetch)
			}
			var batches [][]int
			for len(todo) > 0 {
				k := min(len(todo), 1+rng.IntN(per+per/2))
				batches = append(batches, todo[:k])
				todo = todo[k:]
			}
			rng.Shuffle(len(batches), func(i, j int) { batches[i], batches[j] = batches[j], batches[i] })
			var wg sync.WaitGroup
			errs := make(chan error, len(batches))
			for _, batch := range batches {
				wg.Go(func() {
					run := w.newRun()
					defer run.release()
					for _, p := range batch {
						h := m.Chunks[p]
						dst, err := run.slot(h)
						if err == nil {
							// Unpacked into the slot, as a pull does.
							data := append(dst[len(dst):], want[p*cs:p*cs+m.chunkLen(p)]...)
							err = run.put(h, data)
						}
						if err != nil {
							errs <- err
							return
						}
					}
					errs <- run.flush()
				})
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				if err != nil {
					t.Fatal(err)
				}
			}
			if w.done != m.Size {
				t.Errorf("progress counted %d of %d bytes", w.done, m.Size)
			}
			if err := w.commit(); err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(out)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				for i := 0; i < len(want); i += cs {
					if !bytes.Equal(got[i:min(len(got), i+cs)], want[i:min(len(want), i+cs)]) {
						t.Fatalf("chunk %d differs (image of %d bytes, want %d)", i/cs, len(got), len(want))
					}
				}
				t.Fatalf("the image is %d bytes, want %d", len(got), len(want))
			}
			// Each zero chunk is a hole: no data from its start to its end.
			// (Blocks on disk would count the extent tree's own block too.)
			f, err := os.Open(out)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			for i, h := range m.Chunks {
				if !h.IsZero() {
					continue
				}
				start := int64(i) * cs
				next, err := unix.Seek(int(f.Fd()), start, unix.SEEK_DATA)
				if err == nil && next < start+int64(m.chunkLen(i)) {
					t.Errorf("zero chunk %d holds data at byte %d: it should be a hole", i, next)
				}
			}
		})
	}
}
