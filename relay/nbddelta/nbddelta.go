// Package nbddelta carries the disks' mirror, an NBD client's stream, as
// the changes its writes make to a chain both ends hold.
//
// QEMU's mirror to an NBD target marks what the guest dirtied in 64 KiB
// granules, so a 4 KiB write sends 64 KiB, most of it what the frozen
// chain below the mirrored overlay already holds on both hosts (the move
// compares the chains' roots before it starts). Encode, at the source,
// sends each write's 4 KiB blocks that differ from that chain; Decode, at
// the destination, fills in the rest from its own copy, checks the whole
// write against the source's checksum, and hands QEMU the write as it was
// sent. Everything else in the stream goes as it came.
package nbddelta

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
)

// A Reference is what a disk reads as in the chain both ends hold: nil for
// an export this end knows no chain of (its writes then go whole).
type Reference func(export string) io.ReaderAt

// The NBD protocol's numbers this package reads by.
const (
	optMagic        = 0x49484156454f5054 // "IHAVEOPT"
	optExportName   = 1
	optStartTLS     = 5
	optInfo         = 6
	optGo           = 7
	requestMagic    = 0x25609513
	extendedMagic   = 0x21e41c71
	cmdWrite        = 1
	flagPayloadLen  = 1 << 5
	maxOptionLength = 1 << 20
	maxWriteLength  = 32 << 20
)

// blockSize is what a write is compared in.
const blockSize = 4096

// How a write's payload goes between the ends.
const (
	payloadWhole = 0 // as it came
	payloadDelta = 1 // a bitmap of changed blocks, those blocks, a checksum of the whole
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// ErrMismatch says a write rebuilt from the reference differs from the
// source's: the two ends' chains are not the same.
var ErrMismatch = errors.New("a mirrored write rebuilt here differs from the source's: the two hosts' frozen chains differ")

// Encode reads an NBD client's stream from src and writes it to dst with
// each write sent as its changes against ref's export.
func Encode(dst io.Writer, src io.Reader, ref Reference) error {
	return transcode(dst, src, ref, encodePayload)
}

// Decode undoes Encode: dst gets the NBD client's stream as it was.
func Decode(dst io.Writer, src io.Reader, ref Reference) error {
	return transcode(dst, src, ref, decodePayload)
}

// payloadCoder moves one write's payload of length n at off from r to w.
type payloadCoder func(w *bufio.Writer, r *bufio.Reader, disk io.ReaderAt, off int64, n int) error

// transcode walks the client's side of NBD: its flags, its options (which
// name the export), then its requests, flushing dst whenever src has no
// more buffered, so nothing waits in this end.
func transcode(dst io.Writer, src io.Reader, ref Reference, payload payloadCoder) error {
	w := bufio.NewWriterSize(dst, 256<<10)
	err := walk(w, bufio.NewReaderSize(src, 256<<10), ref, payload)
	return errors.Join(err, w.Flush())
}

func walk(w *bufio.Writer, r *bufio.Reader, ref Reference, payload payloadCoder) error {
	flushIfIdle := func() error {
		if r.Buffered() == 0 {
			return w.Flush()
		}
		return nil
	}
	if _, err := r.Peek(1); err != nil { // a client that never spoke
		return eof(err)
	}
	if err := copyN(w, r, 4); err != nil { // the client's flags
		return err
	}
	var disk io.ReaderAt
	for {
		if err := flushIfIdle(); err != nil {
			return err
		}
		head, err := peek(r, 8)
		if head == nil {
			return err // nil at the stream's end
		}
		if binary.BigEndian.Uint64(head) != optMagic {
			break
		}
		var opt [16]byte
		if _, err := io.ReadFull(r, opt[:]); err != nil {
			return eof(err)
		}
		code, n := binary.BigEndian.Uint32(opt[8:]), binary.BigEndian.Uint32(opt[12:])
		if n > maxOptionLength {
			return fmt.Errorf("nbd: an option of %d bytes", n)
		}
		data := make([]byte, n)
		if _, err := io.ReadFull(r, data); err != nil {
			return eof(err)
		}
		w.Write(opt[:])
		w.Write(data)
		switch code {
		case optStartTLS:
			// What follows is TLS: nothing more here can be read.
			_, err := io.Copy(w, r)
			return err
		case optExportName:
			disk = lookup(ref, string(data))
		case optGo, optInfo:
			if len(data) >= 4 {
				if l := binary.BigEndian.Uint32(data); int(l) <= len(data)-4 {
					disk = lookup(ref, string(data[4:4+l]))
				}
			}
		}
		if code == optExportName {
			break
		}
	}
	for {
		if err := flushIfIdle(); err != nil {
			return err
		}
		head, err := peek(r, 4)
		if head == nil {
			return err // nil at the stream's end
		}
		size, long := 28, false
		switch binary.BigEndian.Uint32(head) {
		case requestMagic:
		case extendedMagic:
			size, long = 32, true
		default:
			return fmt.Errorf("nbd: a request with magic %#x", binary.BigEndian.Uint32(head))
		}
		req := make([]byte, size)
		if _, err := io.ReadFull(r, req); err != nil {
			return eof(err)
		}
		w.Write(req)
		flags, kind, off := binary.BigEndian.Uint16(req[4:]), binary.BigEndian.Uint16(req[6:]), int64(binary.BigEndian.Uint64(req[16:]))
		var n uint64
		if long {
			n = binary.BigEndian.Uint64(req[24:])
		} else {
			n = uint64(binary.BigEndian.Uint32(req[24:]))
		}
		switch {
		case kind == cmdWrite && n <= maxWriteLength:
			if err := payload(w, r, disk, off, int(n)); err != nil {
				return err
			}
		case kind == cmdWrite:
			return fmt.Errorf("nbd: a write of %d bytes", n)
		case long && flags&flagPayloadLen != 0:
			if n > maxOptionLength {
				return fmt.Errorf("nbd: a request payload of %d bytes", n)
			}
			if err := copyN(w, r, int(n)); err != nil {
				return err
			}
		}
	}
}

func lookup(ref Reference, export string) io.ReaderAt {
	if ref == nil {
		return nil
	}
	return ref(export)
}

func encodePayload(w *bufio.Writer, r *bufio.Reader, disk io.ReaderAt, off int64, n int) error {
	data := make([]byte, n)
	if _, err := io.ReadFull(r, data); err != nil {
		return eof(err)
	}
	old := make([]byte, n)
	if disk == nil || readAt(disk, old, off) != nil {
		w.WriteByte(payloadWhole)
		w.Write(data)
		return nil
	}
	blocks := (n + blockSize - 1) / blockSize
	bitmap := make([]byte, (blocks+7)/8)
	var changed [][]byte
	for i := range blocks {
		lo, hi := i*blockSize, min((i+1)*blockSize, n)
		if !bytes.Equal(data[lo:hi], old[lo:hi]) {
			bitmap[i/8] |= 1 << (i % 8)
			changed = append(changed, data[lo:hi])
		}
	}
	w.WriteByte(payloadDelta)
	w.Write(bitmap)
	for _, b := range changed {
		w.Write(b)
	}
	return binary.Write(w, binary.BigEndian, crc32.Checksum(data, castagnoli))
}

func decodePayload(w *bufio.Writer, r *bufio.Reader, disk io.ReaderAt, off int64, n int) error {
	mode, err := r.ReadByte()
	if err != nil {
		return eof(err)
	}
	switch mode {
	case payloadWhole:
		return copyN(w, r, n)
	case payloadDelta:
	default:
		return fmt.Errorf("nbd delta: a write's payload of kind %d", mode)
	}
	if disk == nil {
		return fmt.Errorf("nbd delta: a write sent as changes to a disk this host holds no copy of")
	}
	data := make([]byte, n)
	if err := readAt(disk, data, off); err != nil {
		return fmt.Errorf("nbd delta: read the copy here at %d: %w", off, err)
	}
	blocks := (n + blockSize - 1) / blockSize
	bitmap := make([]byte, (blocks+7)/8)
	if _, err := io.ReadFull(r, bitmap); err != nil {
		return eof(err)
	}
	for i := range blocks {
		if bitmap[i/8]&(1<<(i%8)) != 0 {
			if _, err := io.ReadFull(r, data[i*blockSize:min((i+1)*blockSize, n)]); err != nil {
				return eof(err)
			}
		}
	}
	var sum uint32
	if err := binary.Read(r, binary.BigEndian, &sum); err != nil {
		return eof(err)
	}
	if crc32.Checksum(data, castagnoli) != sum {
		return fmt.Errorf("write of %d bytes at %d: %w", n, off, ErrMismatch)
	}
	_, err = w.Write(data)
	return err
}

func readAt(disk io.ReaderAt, p []byte, off int64) error {
	_, err := disk.ReadAt(p, off)
	return err
}

// peek looks at where a message starts: the stream's end there is nil
// (and no bytes), part of one is the stream cut short.
func peek(r *bufio.Reader, n int) ([]byte, error) {
	b, err := r.Peek(n)
	switch {
	case err == io.EOF && len(b) == 0:
		return nil, nil
	case err == io.EOF:
		return nil, io.ErrUnexpectedEOF
	case err != nil:
		return nil, err
	}
	return b, nil
}

// copyN copies the n bytes of a message's rest: an end before them is
// the stream cut short.
func copyN(w io.Writer, r io.Reader, n int) error {
	_, err := io.CopyN(w, r, int64(n))
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// eof turns the end of the client's stream into nil: called where a
// message would start, or after io.ReadFull, whose end inside a message is
// io.ErrUnexpectedEOF and stays an error.
func eof(err error) error {
	if err == io.EOF {
		return nil
	}
	return err
}
