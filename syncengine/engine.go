package syncengine

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"runtime"
	"sync"
)

// indexBatch is how many chunks one read of an image covers while
// indexing: 4 MiB at the default chunk size, hashed on all cores.
const indexBatch = 64

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

// Index reads an image and returns its manifest, storing nothing.
func Index(ctx context.Context, path string, chunkSize int) (*Manifest, error) {
	return indexFile(ctx, path, chunkSize, nil)
}

// indexFile reads the image while the previous read is hashed, so reading
// and hashing overlap.
func indexFile(ctx context.Context, path string, chunkSize int, progress Progress) (*Manifest, error) {
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
		return nil, fmt.Errorf("read image: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file: give the image file itself", path)
	}
	m := &Manifest{Size: fi.Size(), ChunkSize: chunkSize}
	bufs := [2][]byte{make([]byte, indexBatch*chunkSize), make([]byte, indexBatch*chunkSize)}
	type read struct {
		buf []byte
		err error
	}
	reads := make(chan read, 1)
	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx) // cancelled before the wait: the reader stops
	defer cancel()
	free := make(chan []byte, 2)
	free <- bufs[0]
	free <- bufs[1]
	wg.Go(func() {
		defer close(reads)
		for off := int64(0); off < m.Size; {
			var buf []byte
			select {
			case buf = <-free:
			case <-ctx.Done():
				return
			}
			n, err := io.ReadFull(f, buf[:min(int64(len(buf)), m.Size-off)])
			if err != nil {
				err = fmt.Errorf("read %s at %d: %w", path, off, err)
			}
			select {
			case reads <- read{buf[:n], err}:
			case <-ctx.Done():
				return
			}
			if err != nil {
				return
			}
			off += int64(n)
		}
	})
	var done int64
	for r := range reads {
		if r.err != nil {
			return nil, r.err
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		m.Chunks = append(m.Chunks, hashChunks(r.buf, chunkSize)...)
		done += int64(len(r.buf))
		free <- r.buf[:cap(r.buf)]
		if progress != nil {
			progress("read", done, m.Size)
		}
	}
	if int64(len(m.Chunks)) != chunkCount(m.Size, chunkSize) {
		return nil, fmt.Errorf("read %s: it changed size while being read", path)
	}
	return m, nil
}
