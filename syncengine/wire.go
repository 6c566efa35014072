package syncengine

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"syscall"
)

// maxObject bounds one object or patch on the wire or in a store.
const maxObject = 64 << 20

// Every answer, and a push's body, is a stream of records. A new chunk
// travels as it is stored (packed): neither side compresses it again, so a
// cold pull costs the server a read and the client a check. Differences
// against a base, and tree objects, travel in groups of up to groupSize
// bytes compressed together, so a batch of scattered changed blocks
// compresses about as well as zstd does the changed data alone.
const (
	recPacked byte = 1 // a packed object (Codec.Encode)
	recGroup  byte = 2 // a zstd frame of inner records
	recError  byte = 3 // code byte, then the message
	// Inside a group:
	recWhole byte = 4 // an object's bytes
	recPatch byte = 5 // a patch against the object the receiver holds in its place
)

// groupSize bounds a group: large enough to compress well (each group is
// compressed alone), small enough to keep a stream moving and memory flat.
const groupSize = 4 << 20

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
	w     *bufio.Writer
	codec *Codec
	group []byte // inner records not yet sent
	buf   []byte
}

func newRecordWriter(w io.Writer, codec *Codec) *recordWriter {
	return &recordWriter{w: bufio.NewWriterSize(w, 256<<10), codec: codec}
}

func appendRecord(b []byte, kind byte, payload []byte) []byte {
	return append(binary.AppendUvarint(append(b, kind), uint64(len(payload))), payload...)
}

// flushGroup sends the pending inner records as one compressed group.
func (w *recordWriter) flushGroup() error {
	if len(w.group) == 0 {
		return nil
	}
	w.buf = w.codec.group.EncodeAll(w.group, w.buf[:0])
	w.group = w.group[:0]
	return w.outer(recGroup, w.buf)
}

func (w *recordWriter) outer(kind byte, payload []byte) error {
	var hdr [binary.MaxVarintLen64 + 1]byte
	h := binary.AppendUvarint(append(hdr[:0], kind), uint64(len(payload)))
	if _, err := w.w.Write(h); err != nil {
		return err
	}
	_, err := w.w.Write(payload)
	return err
}

func (w *recordWriter) inner(kind byte, payload []byte) error {
	w.group = appendRecord(w.group, kind, payload)
	if len(w.group) >= groupSize {
		return w.flushGroup()
	}
	return nil
}

// bytes writes plain values between records.
func (w *recordWriter) bytes(b []byte) error {
	if err := w.flushGroup(); err != nil {
		return err
	}
	_, err := w.w.Write(b)
	return err
}

// whole sends a small value, such as an answer.
func (w *recordWriter) whole(b []byte) error { return w.inner(recWhole, b) }

// packed sends a new object as it is stored.
func (w *recordWriter) packed(p []byte) error {
	if err := w.flushGroup(); err != nil {
		return err
	}
	return w.outer(recPacked, p)
}

// object sends target in a group, as a patch against base where that is
// smaller. It returns whether it sent a patch.
func (w *recordWriter) object(base, target []byte) (bool, error) {
	if base != nil {
		if p := makePatch(base, target); p != nil {
			return true, w.inner(recPatch, p)
		}
	}
	return false, w.inner(recWhole, target)
}

// fail sends an error in place of what was promised.
func (w *recordWriter) fail(err error) error {
	w.group = w.group[:0] // what was promised is not coming
	return w.outer(recError, append([]byte{errorCode(err)}, err.Error()...))
}

func (w *recordWriter) Close() error {
	if err := w.flushGroup(); err != nil {
		return err
	}
	return w.w.Flush()
}

// recordReader reads a record stream.
type recordReader struct {
	r     *bufio.Reader
	codec *Codec
	group []byte // inner records not yet read
	// transient makes a packed record's payload valid only until the next
	// record: read into one buffer, reused, rather than a fresh one each.
	transient bool
	scratch   []byte
}

func newRecordReader(r io.Reader, codec *Codec) *recordReader {
	return &recordReader{r: bufio.NewReaderSize(r, 256<<10), codec: codec}
}

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
	if errors.As(err, &re) || errors.Is(err, errCut) {
		return err
	}
	return fmt.Errorf("%w: %w", errCut, err)
}

func (r *recordReader) plain() error {
	if len(r.group) > 0 {
		return fmt.Errorf("%w: a value where records were due", errCut)
	}
	return nil
}

func (r *recordReader) bytes(n int) ([]byte, error) {
	if err := r.plain(); err != nil {
		return nil, err
	}
	b := make([]byte, n)
	_, err := io.ReadFull(r.r, b)
	return b, cut(err)
}

// positions reads a list written by appendPositions.
func (r *recordReader) positions(limit int) ([]int, error) {
	if err := r.plain(); err != nil {
		return nil, err
	}
	return readPositions(r.r, limit)
}

// record reads the next record, from the current group or the stream; an
// error record becomes the error it carries.
func (r *recordReader) record() (byte, []byte, error) {
	for len(r.group) == 0 {
		kind, err := r.r.ReadByte()
		if err != nil {
			return 0, nil, cut(err)
		}
		n, err := binary.ReadUvarint(r.r)
		if err != nil {
			return 0, nil, cut(err)
		}
		if n > maxObject {
			return 0, nil, fmt.Errorf("%w: a record of %d bytes", errCut, n)
		}
		var payload []byte
		if r.transient {
			if uint64(cap(r.scratch)) < n {
				r.scratch = make([]byte, n)
			}
			payload = r.scratch[:n]
		} else {
			payload = make([]byte, n)
		}
		if _, err := io.ReadFull(r.r, payload); err != nil {
			return 0, nil, cut(err)
		}
		switch kind {
		case recPacked:
			return kind, payload, nil
		case recGroup:
			if r.group, err = r.codec.dec.DecodeAll(payload, nil); err != nil {
				return 0, nil, fmt.Errorf("%w: a damaged group (%v)", errCut, err)
			}
		case recError:
			if len(payload) == 0 {
				return 0, nil, codeError(codeOther, "the other side failed without saying why")
			}
			return 0, nil, codeError(payload[0], string(payload[1:]))
		default:
			return 0, nil, fmt.Errorf("%w: unknown record kind %d", errCut, kind)
		}
	}
	kind := r.group[0]
	n, k := binary.Uvarint(r.group[1:])
	if k <= 0 || n > uint64(len(r.group)-1-k) || kind != recWhole && kind != recPatch {
		return 0, nil, fmt.Errorf("%w: a damaged group", errCut)
	}
	payload := r.group[1+k : 1+k+int(n)]
	r.group = r.group[1+k+int(n):]
	return kind, payload, nil
}

// object reads the object named want, rebuilding it from base (fetched
// only if the sender patched) and verifying its hash, into dst's free
// capacity where it fits (nil: anywhere). packed is the object's stored
// form when it came as one.
func (r *recordReader) object(want Hash, base func() ([]byte, error), dst []byte) (data, packed []byte, patched bool, err error) {
	kind, payload, err := r.record()
	if err != nil {
		return nil, nil, false, err
	}
	switch kind {
	case recPacked:
		if data, err = r.codec.DecodeInto(want, payload, dst); err != nil {
			return nil, nil, false, err
		}
		return data, payload, false, nil
	case recPatch:
		if base == nil {
			return nil, nil, true, fmt.Errorf("object %s: a patch with no base: %w", want, ErrCorrupt)
		}
		b, err := base()
		if err != nil {
			return nil, nil, true, fmt.Errorf("object %s: read its base: %w", want, err)
		}
		if data, err = applyPatch(b, payload, dst); err != nil {
			return nil, nil, true, fmt.Errorf("object %s: %w", want, err)
		}
	default:
		data = payload
	}
	if Sum(data) != want {
		return nil, nil, kind == recPatch, fmt.Errorf("object %s: %w", want, ErrCorrupt)
	}
	return data, nil, kind == recPatch, nil
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
	return readTree(root, func(node int, h Hash) ([]byte, error) {
		var braw []byte
		if node < 0 && base != nil {
			braw = base.rootRaw
		} else if node >= 0 {
			var bh Hash
			if bh, braw = base.baseNode(node); bh == h {
				return braw, nil // the same node as the base's: not sent
			}
		}
		data, _, _, err := r.object(h, fixed(braw), nil)
		return data, err
	})
}
