package syncbench

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"slices"
)

// Change is what ChangeBlocks wrote: the offsets of the blocks it
// overwrote, ascending, and their new contents in the same order.
type Change struct {
	Offsets []int64
	Data    []byte
}

// ChangeBlocks overwrites fraction of the image's 4 KiB blocks, chosen
// uniformly over the whole image by a generator seeded with seed, with
// 4 KiB taken at random offsets of real files on this machine, so the new
// contents compress like the rest of a disk, not like zeroes or noise.
// The same seed on the same machine changes the same blocks the same way.
func ChangeBlocks(ctx context.Context, path string, fraction float64, seed uint64) (Change, error) {
	return changeBlocks(ctx, path, fraction, seed, defaultSources())
}

func changeBlocks(ctx context.Context, path string, fraction float64, seed uint64, sources []string) (Change, error) {
	if fraction <= 0 || fraction > 1 {
		return Change{}, fmt.Errorf("change blocks: fraction %v is not in (0, 1]", fraction)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return Change{}, fmt.Errorf("change blocks: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return Change{}, fmt.Errorf("change blocks: %w", err)
	}
	var files []srcFile
	for _, root := range sources {
		l, err := listFiles(ctx, root, root)
		if err != nil {
			return Change{}, err
		}
		for _, s := range l {
			if s.size > blockSize {
				files = append(files, s)
			}
		}
	}
	if len(files) == 0 {
		return Change{}, fmt.Errorf("change blocks: no file over 4 KiB under %v to take new contents from", sources)
	}
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	nBlocks := fi.Size() / blockSize
	offsets := pickBlocks(rng, nBlocks, int(float64(nBlocks)*fraction+0.5))
	ch := Change{Offsets: offsets, Data: make([]byte, 0, len(offsets)*blockSize)}
	old, fresh := make([]byte, blockSize), make([]byte, blockSize)
	for _, off := range offsets {
		if err := ctx.Err(); err != nil {
			return ch, err
		}
		if _, err := f.ReadAt(old, off); err != nil {
			return ch, fmt.Errorf("change blocks: read %s at %d: %w", path, off, err)
		}
		// New contents that happen to equal the old would not be a change.
		for {
			if err := readRandomBlock(rng, files, fresh); err != nil {
				return ch, err
			}
			if !bytes.Equal(old, fresh) {
				break
			}
		}
		if _, err := f.WriteAt(fresh, off); err != nil {
			return ch, fmt.Errorf("change blocks: write %s at %d: %w (is the disk full?)", path, off, err)
		}
		ch.Data = append(ch.Data, fresh...)
	}
	if err := f.Sync(); err != nil {
		return ch, fmt.Errorf("change blocks: sync %s: %w", path, err)
	}
	return ch, nil
}

// pickBlocks chooses count distinct blocks of nBlocks uniformly and
// returns their byte offsets in ascending order.
func pickBlocks(rng *rand.Rand, nBlocks int64, count int) []int64 {
	count = int(min(int64(count), nBlocks))
	// Floyd's sampling: count draws, no table of all the blocks.
	chosen := make(map[int64]bool, count)
	for j := nBlocks - int64(count); j < nBlocks; j++ {
		t := rng.Int64N(j + 1)
		if chosen[t] {
			t = j
		}
		chosen[t] = true
	}
	out := make([]int64, 0, count)
	for b := range chosen {
		out = append(out, b*blockSize)
	}
	slices.Sort(out)
	return out
}

// readRandomBlock fills buf with a block from a random offset of a random
// file. Offsets are not block-aligned, so the new block is not a copy of
// one the image already holds.
func readRandomBlock(rng *rand.Rand, files []srcFile, buf []byte) error {
	s := files[rng.IntN(len(files))]
	off := rng.Int64N(s.size - int64(len(buf)) + 1)
	f, err := os.Open(s.path)
	if err != nil {
		return fmt.Errorf("change blocks: take new contents from %s: %w", s.path, err)
	}
	defer f.Close()
	if _, err := f.ReadAt(buf, off); err != nil && err != io.EOF {
		return fmt.Errorf("change blocks: take new contents from %s: %w", s.path, err)
	}
	return nil
}

// ReferenceSize is the size of data compressed by the zstd command at its
// default level (-3): the yardstick for what an update should send.
func ReferenceSize(ctx context.Context, data []byte) (int64, error) {
	if err := needTools("zstd"); err != nil {
		return 0, err
	}
	cmd := command(ctx, "zstd", "-3", "-c", "-q")
	cmd.Stdin = bytes.NewReader(data)
	var n countingWriter
	cmd.Stdout = &n
	if err := runQuiet(cmd); err != nil {
		return 0, fmt.Errorf("compress the changed blocks: %w", err)
	}
	return int64(n), nil
}

type countingWriter int64

func (c *countingWriter) Write(p []byte) (int, error) {
	*c += countingWriter(len(p))
	return len(p), nil
}
