package syncengine

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"syscall"

	"github.com/klauspost/compress/zstd"
)

// maxObject bounds one object or patch on the wire or in a store.
const maxObject = 64 << 20

// Every answer, and a push's body, is one zstd stream of records: an
// object sent whole, a patch against the object the receiver already holds
// in its place, or an error. One stream per request compresses a batch of
// changed blocks together, as well as zstd does the changed data alone.
const (
	recWhole byte = 1
	recPatch byte = 2
	recError byte = 3
)

// Error codes carried by error records, so a sentinel error crosses the
// wire intact.
const (
	codeOther byte = iota
	codeNotFound
	codeBaseUnknown
	codeCorrupt
	codeDiskFull
)

// errBaseUnknown means the other side lacks the image a transfer wanted to
// send differences against; the transfer is made again without one.
var errBaseUnknown = errors.New("the other side lacks the base image")

func errorCode(err error) byte {
	switch {
	case errors.Is(err, errBaseUnknown):
		return codeBaseUnknown
	case errors.Is(err, ErrNotFound):
		return codeNotFound
	case errors.Is(err, ErrCorrupt):
		return codeCorrupt
	case errors.Is(err, ErrDiskFull), errors.Is(err, syscall.ENOSPC):
		return codeDiskFull
	}
	return codeOther
}

func codeError(code byte, msg string) error {
	var sentinel error
	switch code {
	case codeNotFound:
		sentinel = ErrNotFound
	case codeBaseUnknown:
		sentinel = errBaseUnknown
	case codeCorrupt:
		sentinel = ErrCorrupt
	case codeDiskFull:
		sentinel = ErrDiskFull
	}
	return &remoteError{msg, sentinel}
}

// remoteError is an error the other side reported, with its sentinel.
type remoteError struct {
	msg      string
	sentinel error
}

func (e *remoteError) Error() string { return e.msg }
func (e *remoteError) Unwrap() error { return e.sentinel }

// errCut means a stream ended or broke before all it promised arrived.
var errCut = errors.New("the transfer was cut short")

// recordWriter writes a record stream.
type recordWriter struct {
	z   *zstd.Encoder
	buf []byte
}

func newRecordWriter(w io.Writer) *recordWriter {
	z, _ := zstd.NewWriter(w, zstd.WithEncoderLevel(zstd.SpeedDefault), zstd.WithEncoderConcurrency(1), zstd.WithWindowSize(2<<20))
	return &recordWriter{z: z}
}

func (w *recordWriter) uvarint(v uint64) error {
	w.buf = binary.AppendUvarint(w.buf[:0], v)
	_, err := w.z.Write(w.buf)
	return err
}

func (w *recordWriter) bytes(b []byte) error {
	_, err := w.z.Write(b)
	return err
}

func (w *recordWriter) record(kind byte, payload []byte) error {
	w.buf = binary.AppendUvarint(append(w.buf[:0], kind), uint64(len(payload)))
	if _, err := w.z.Write(w.buf); err != nil {
		return err
	}
	_, err := w.z.Write(payload)
	return err
}

// object sends target, as a patch against base where that is smaller.
// It returns whether it sent a patch.
func (w *recordWriter) object(base, target []byte) (bool, error) {
	if base != nil {
		if p := makePatch(base, target); p != nil {
			return true, w.record(recPatch, p)
		}
	}
	return false, w.record(recWhole, target)
}

// fail sends an error in place of what was promised.
func (w *recordWriter) fail(err error) error {
	return w.record(recError, append([]byte{errorCode(err)}, err.Error()...))
}

func (w *recordWriter) Close() error { return w.z.Close() }

// recordReader reads a record stream.
type recordReader struct {
	z *zstd.Decoder
	r *bufio.Reader
}

func newRecordReader(r io.Reader) (*recordReader, error) {
	z, err := zstd.NewReader(r, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(64<<20))
	if err != nil {
		return nil, err
	}
	return &recordReader{z: z, r: bufio.NewReaderSize(z, 64<<10)}, nil
}

func (r *recordReader) Close() { r.z.Close() }

// cut turns the end or breakage of a stream into errCut; errors from the
// other side and the context pass as they are.
func cut(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("%w (the stream ended early)", errCut)
	}
	var re *remoteError
	if errors.As(err, &re) {
		return err
	}
	return fmt.Errorf("%w: %w", errCut, err)
}

func (r *recordReader) uvarint() (uint64, error) {
	v, err := binary.ReadUvarint(r.r)
	return v, cut(err)
}

func (r *recordReader) bytes(n int) ([]byte, error) {
	b := make([]byte, n)
	_, err := io.ReadFull(r.r, b)
	return b, cut(err)
}

// record reads the next record; an error record becomes the error it
// carries.
func (r *recordReader) record() (byte, []byte, error) {
	kind, err := r.r.ReadByte()
	if err != nil {
		return 0, nil, cut(err)
	}
	n, err := r.uvarint()
	if err != nil {
		return 0, nil, err
	}
	if n > maxObject {
		return 0, nil, fmt.Errorf("%w: a record of %d bytes", errCut, n)
	}
	payload, err := r.bytes(int(n))
	if err != nil {
		return 0, nil, err
	}
	switch kind {
	case recWhole, recPatch:
		return kind, payload, nil
	case recError:
		if len(payload) == 0 {
			return 0, nil, codeError(codeOther, "the other side failed without saying why")
		}
		return 0, nil, codeError(payload[0], string(payload[1:]))
	}
	return 0, nil, fmt.Errorf("%w: unknown record kind %d", errCut, kind)
}

// object reads the object named want, rebuilding it from base (fetched
// only if the sender patched) and verifying its hash.
func (r *recordReader) object(want Hash, base func() ([]byte, error)) (data []byte, patched bool, err error) {
	kind, payload, err := r.record()
	if err != nil {
		return nil, false, err
	}
	data = payload
	if kind == recPatch {
		if base == nil {
			return nil, true, fmt.Errorf("object %s: a patch with no base: %w", want, ErrCorrupt)
		}
		b, err := base()
		if err != nil {
			return nil, true, fmt.Errorf("object %s: read its base: %w", want, err)
		}
		if data, err = applyPatch(b, payload); err != nil {
			return nil, true, fmt.Errorf("object %s: %w", want, err)
		}
	}
	if Sum(data) != want {
		return nil, kind == recPatch, fmt.Errorf("object %s: %w", want, ErrCorrupt)
	}
	return data, kind == recPatch, nil
}

func fixed(b []byte) func() ([]byte, error) {
	if b == nil {
		return nil
	}
	return func() ([]byte, error) { return b, nil }
}

// baseNode is base's node i if it is there to patch against.
func (t *tree) baseNode(i int) (Hash, []byte) {
	if t == nil || i >= len(t.nodes) {
		return Hash{}, nil
	}
	return t.nodes[i], t.nodeRaw[i]
}

// sendTree writes t's root and the nodes that differ from base's, each as
// a patch against base's object in its place where that is smaller.
func sendTree(w *recordWriter, t, base *tree) error {
	var baseRoot []byte
	if base != nil {
		baseRoot = base.rootRaw
	}
	if _, err := w.object(baseRoot, t.rootRaw); err != nil {
		return err
	}
	for i, h := range t.nodes {
		bh, braw := base.baseNode(i)
		if h.IsZero() || h == bh {
			continue
		}
		if _, err := w.object(braw, t.nodeRaw[i]); err != nil {
			return err
		}
	}
	return nil
}

// recvTree reads what sendTree wrote and verifies every object against the
// root's name.
func recvTree(r *recordReader, root Hash, base *tree) (*tree, error) {
	var baseRoot []byte
	if base != nil {
		baseRoot = base.rootRaw
	}
	rootRaw, _, err := r.object(root, fixed(baseRoot))
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", root, err)
	}
	_, _, nodes, err := parseRoot(rootRaw)
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", root, err)
	}
	nodeRaw := make([][]byte, len(nodes))
	for i, h := range nodes {
		bh, braw := base.baseNode(i)
		switch {
		case h.IsZero():
		case h == bh:
			nodeRaw[i] = braw
		default:
			if nodeRaw[i], _, err = r.object(h, fixed(braw)); err != nil {
				return nil, fmt.Errorf("image %s, node %d: %w", root, i, err)
			}
		}
	}
	return buildTree(root, rootRaw, nodeRaw)
}
