package diskbench

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
)

// BlockSize is the block by which images are compared: the guest's
// filesystem block, so that a scattered small write costs one block.
const BlockSize = 4096

// Reference is a yardstick for a move's disk bytes.
type Reference struct {
	Blocks int64 // blocks in the selection
	Zstd   int64 // what zstd -3 makes of them, laid end to end
}

// RawImage writes the disk image at src (qcow2 or raw) to dst as a sparse
// raw file: the guest's view of it, block by block.
func RawImage(ctx context.Context, src, dst string) error {
	// -U: the file may still be some daemon's, though nothing writes it.
	if out, err := exec.CommandContext(ctx, "qemu-img", "convert", "-U", "-O", "raw", src, dst).CombinedOutput(); err != nil {
		return fmt.Errorf("read %s as a raw image: %w: %s", src, err, out)
	}
	return nil
}

// WriteChanged writes to w, end to end, each block of after that differs
// from the same block of before; a nil before stands for zeroes, so that
// what it writes is after's nonzero blocks, all a cold copy must carry. A
// file shorter than the other reads as zeroes past its end.
func WriteChanged(w io.Writer, before, after io.Reader, blockSize int) (blocks int64, err error) {
	a, b := make([]byte, blockSize), make([]byte, blockSize)
	if before == nil {
		before = bytes.NewReader(nil)
	}
	ra, rb := bufio.NewReaderSize(before, 1<<20), bufio.NewReaderSize(after, 1<<20)
	for {
		na, errA := readBlock(ra, a)
		nb, errB := readBlock(rb, b)
		if err := errors.Join(errA, errB); err != nil {
			return blocks, err
		}
		if na == 0 && nb == 0 {
			return blocks, nil
		}
		if !bytes.Equal(a, b) {
			if _, err := w.Write(b); err != nil {
				return blocks, err
			}
			blocks++
		}
	}
}

// readBlock fills buf from r, zeroes past r's end, and says how many bytes
// came from r.
func readBlock(r io.Reader, buf []byte) (int, error) {
	n, err := io.ReadFull(r, buf)
	clear(buf[n:])
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		err = nil
	}
	return n, err
}

// ZstdSize is the size of what the zstd command makes, at level 3 (its
// default, the reference the issue names), of what write writes to it.
func ZstdSize(ctx context.Context, write func(io.Writer) error) (int64, error) {
	cmd := exec.CommandContext(ctx, "zstd", "-3", "-c", "-q")
	var n countingWriter
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &n, &stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		return 0, err
	}
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("run zstd (make deps installs it): %w", err)
	}
	werr := write(in)
	in.Close()
	if err := cmd.Wait(); err != nil {
		return 0, fmt.Errorf("zstd -3: %w: %s", err, stderr.Bytes())
	}
	if werr != nil {
		return 0, werr
	}
	return int64(n), nil
}

type countingWriter int64

func (c *countingWriter) Write(p []byte) (int, error) {
	*c += countingWriter(len(p))
	return len(p), nil
}

// Changed is the reference for a move from a host holding the raw image
// before (""; nothing: a cold copy) to one holding after: its blocks that
// differ from before's, compressed by zstd -3.
func Changed(ctx context.Context, before, after string) (Reference, error) {
	b, err := os.Open(after)
	if err != nil {
		return Reference{}, err
	}
	defer b.Close()
	var a io.Reader
	if before != "" {
		f, err := os.Open(before)
		if err != nil {
			return Reference{}, err
		}
		defer f.Close()
		a = f
	}
	var ref Reference
	ref.Zstd, err = ZstdSize(ctx, func(w io.Writer) error {
		n, werr := WriteChanged(w, a, b, BlockSize)
		ref.Blocks = n
		return werr
	})
	if err != nil {
		return Reference{}, fmt.Errorf("compare %s with %s: %w", after, before, err)
	}
	return ref, nil
}
