// Package qcow2 reads what a guest sees through a disk image and its
// backing chain: qcow2 (version 2 or 3) over qcow2 or raw files.
//
// It exists for the disks' mirror: both hosts of a move hold the same
// frozen chain (their roots are compared first), so a write the mirror
// carries can go as the blocks that differ from that chain, and the far
// end fills in the rest from its own copy. Only reading is needed, and
// only the plain layout QEMU writes by default; anything else (compressed
// or encrypted clusters, extended L2 entries, an external data file) is
// an error, and the caller sends the write whole.
package qcow2

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// ErrUnsupported marks an image this package does not read.
var ErrUnsupported = errors.New("qcow2 layout not supported")

const (
	magic = "QFI\xfb"

	l2Copied     = 1 << 63
	l2Compressed = 1 << 62
	l2Zero       = 1 // version 3: the cluster reads as zeroes
	offsetMask   = 0x00fffffffffffe00

	incompatDirty        = 1 << 0
	incompatCorrupt      = 1 << 1
	incompatExternalData = 1 << 2
	incompatCompression  = 1 << 3
	incompatExtendedL2   = 1 << 4

	extBackingFormat = 0xe2792aca
)

// Image is one file of a chain and, through Backing, the files below it.
type Image struct {
	f           *os.File
	size        int64 // virtual size
	raw         bool
	clusterBits uint
	l1          []uint64
	backing     *Image // nil: unallocated clusters read as zeroes
	l2Cache     map[uint64][]uint64
}

// Open opens path and its backing chain, read-only.
func Open(path string) (*Image, error) {
	return open(path, "", 0)
}

func open(path, format string, depth int) (_ *Image, err error) {
	if depth > 64 {
		return nil, fmt.Errorf("open %s: a backing chain over 64 files deep: %w", path, ErrUnsupported)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open the disk image %s: %w", path, err)
	}
	img := &Image{f: f, l2Cache: map[uint64][]uint64{}}
	defer func() {
		if err != nil {
			img.Close()
		}
	}()
	head := make([]byte, 104)
	n, err := f.ReadAt(head, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("read the header of %s: %w", path, err)
	}
	if format == "raw" || string(head[:min(n, 4)]) != magic {
		if format != "" && format != "raw" {
			return nil, fmt.Errorf("%s: its chain says %s, but it is no qcow2 file: %w", path, format, ErrUnsupported)
		}
		st, err := f.Stat()
		if err != nil {
			return nil, fmt.Errorf("stat %s: %w", path, err)
		}
		img.raw, img.size = true, st.Size()
		return img, nil
	}
	if n < 72 {
		return nil, fmt.Errorf("%s: a qcow2 header cut short: %w", path, ErrUnsupported)
	}
	be := binary.BigEndian
	version := be.Uint32(head[4:])
	backingOffset, backingSize := be.Uint64(head[8:]), be.Uint32(head[16:])
	img.clusterBits = uint(be.Uint32(head[20:]))
	img.size = int64(be.Uint64(head[24:]))
	crypt := be.Uint32(head[32:])
	l1Size, l1Offset := be.Uint32(head[36:]), be.Uint64(head[40:])
	headerLen := uint32(72)
	if version >= 3 {
		if n < 104 {
			return nil, fmt.Errorf("%s: a qcow2 v3 header cut short: %w", path, ErrUnsupported)
		}
		incompat := be.Uint64(head[72:])
		headerLen = be.Uint32(head[100:])
		if incompat&(incompatExternalData|incompatCompression|incompatExtendedL2|incompatCorrupt) != 0 {
			return nil, fmt.Errorf("%s: qcow2 features %#x: %w", path, incompat, ErrUnsupported)
		}
	}
	switch {
	case version != 2 && version != 3:
		return nil, fmt.Errorf("%s: qcow2 version %d: %w", path, version, ErrUnsupported)
	case crypt != 0:
		return nil, fmt.Errorf("%s: an encrypted image: %w", path, ErrUnsupported)
	case img.clusterBits < 9 || img.clusterBits > 21:
		return nil, fmt.Errorf("%s: cluster bits %d: %w", path, img.clusterBits, ErrUnsupported)
	case l1Size > 1<<26:
		return nil, fmt.Errorf("%s: an L1 table of %d entries: %w", path, l1Size, ErrUnsupported)
	}
	l1 := make([]byte, 8*int(l1Size))
	if _, err := f.ReadAt(l1, int64(l1Offset)); err != nil {
		return nil, fmt.Errorf("read the L1 table of %s: %w", path, err)
	}
	img.l1 = make([]uint64, l1Size)
	for i := range img.l1 {
		img.l1[i] = be.Uint64(l1[8*i:])
	}
	if backingOffset == 0 {
		return img, nil
	}
	name := make([]byte, backingSize)
	if _, err := f.ReadAt(name, int64(backingOffset)); err != nil {
		return nil, fmt.Errorf("read the backing file name of %s: %w", path, err)
	}
	below := string(name)
	if !filepath.IsAbs(below) {
		below = filepath.Join(filepath.Dir(path), below)
	}
	backingFormat := ""
	if version >= 3 {
		if backingFormat, err = readBackingFormat(f, int64(headerLen)); err != nil {
			return nil, fmt.Errorf("read the header extensions of %s: %w", path, err)
		}
	}
	if img.backing, err = open(below, backingFormat, depth+1); err != nil {
		return nil, err
	}
	return img, nil
}

// readBackingFormat finds the backing format header extension, if any.
func readBackingFormat(f *os.File, at int64) (string, error) {
	for range 64 {
		var h [8]byte
		if _, err := f.ReadAt(h[:], at); err != nil {
			return "", err
		}
		kind, length := binary.BigEndian.Uint32(h[:]), binary.BigEndian.Uint32(h[4:])
		if kind == 0 {
			return "", nil
		}
		if kind == extBackingFormat {
			b := make([]byte, min(length, 64))
			if _, err := f.ReadAt(b, at+8); err != nil {
				return "", err
			}
			return string(b), nil
		}
		at += 8 + int64(length+7)&^7
	}
	return "", nil
}

// Size is the disk's size as the guest sees it.
func (img *Image) Size() int64 { return img.size }

// Close closes every file of the chain.
func (img *Image) Close() error {
	var err error
	for i := img; i != nil; i = i.backing {
		err = errors.Join(err, i.f.Close())
	}
	return err
}

// ReadAt reads what the guest sees at off. Past the disk's end it reads
// zeroes, as a shorter backing file does for the image above it.
func (img *Image) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("read at %d: a negative offset", off)
	}
	done := 0
	for done < len(p) {
		n, err := img.readSpan(p[done:], off+int64(done))
		if err != nil {
			return done, err
		}
		done += n
	}
	return done, nil
}

// readSpan reads from off up to the end of its cluster, or of p.
func (img *Image) readSpan(p []byte, off int64) (int, error) {
	if off >= img.size {
		clear(p)
		return len(p), nil
	}
	if img.raw {
		n := min(int64(len(p)), img.size-off)
		if _, err := img.f.ReadAt(p[:n], off); err != nil && !errors.Is(err, io.EOF) {
			return 0, fmt.Errorf("read %s at %d: %w", img.f.Name(), off, err)
		}
		return int(n), nil
	}
	clusterSize := int64(1) << img.clusterBits
	within := off & (clusterSize - 1)
	n := min(int64(len(p)), clusterSize-within, img.size-off)
	span := p[:n]
	entry, err := img.l2Entry(uint64(off))
	if err != nil {
		return 0, err
	}
	switch {
	case entry&l2Compressed != 0:
		return 0, fmt.Errorf("%s at %d: a compressed cluster: %w", img.f.Name(), off, ErrUnsupported)
	case entry&l2Zero != 0:
		clear(span)
	case entry&offsetMask != 0:
		if _, err := img.f.ReadAt(span, int64(entry&offsetMask)+within); err != nil {
			return 0, fmt.Errorf("read %s at %d: %w", img.f.Name(), off, err)
		}
	case img.backing != nil:
		if _, err := img.backing.ReadAt(span, off); err != nil {
			return 0, err
		}
	default:
		clear(span)
	}
	return int(n), nil
}

// l2Entry is the L2 entry mapping the cluster at off; 0 when unallocated.
func (img *Image) l2Entry(off uint64) (uint64, error) {
	l2Bits := img.clusterBits - 3
	l1Index := off >> (img.clusterBits + l2Bits)
	if l1Index >= uint64(len(img.l1)) {
		return 0, nil
	}
	table := img.l1[l1Index] & offsetMask
	if table == 0 {
		return 0, nil
	}
	l2, ok := img.l2Cache[table]
	if !ok {
		b := make([]byte, 1<<img.clusterBits)
		if _, err := img.f.ReadAt(b, int64(table)); err != nil {
			return 0, fmt.Errorf("read an L2 table of %s: %w", img.f.Name(), err)
		}
		l2 = make([]uint64, len(b)/8)
		for i := range l2 {
			l2[i] = binary.BigEndian.Uint64(b[8*i:])
		}
		img.l2Cache[table] = l2
	}
	return l2[(off>>img.clusterBits)&(1<<l2Bits-1)] &^ l2Copied, nil
}
