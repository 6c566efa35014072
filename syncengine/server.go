package syncengine

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/http"
)

// The protocol's operations, each a request body in and a record stream
// out:
//
//	has     n hashes (32 bytes each)          -> one record: a bitmap of those held
//	tree    to, from (32 bytes each)          -> to's root and the nodes unlike from's
//	chunks  to, from, check, count,           -> to's chunk at each position,
//	        position deltas                      patched against from's there
//	push    a record stream: to, from, the tree as above, count, then
//	        (position delta, chunk) records   -> one record: how many chunks were stored
//
// A zero from means none. Positions count chunks from the image's start,
// increasing; the first delta is the first position.
//
// chunks sends a new chunk as it is stored, unread: the client verifies
// every chunk, and a cold pull then costs the server little more than
// reading files. After a damaged answer the client asks again with check
// 1, and the server first verifies each chunk, to report damage in its
// store as such.
type server struct {
	store DirStore
	codec *Codec
}

type operation func(ctx context.Context, body io.Reader, w *recordWriter) error

func (s *server) operations() map[string]operation {
	return map[string]operation{"has": s.has, "tree": s.tree, "chunks": s.chunks, "push": s.push}
}

const (
	maxHasBatch   = 1 << 16
	maxChunkBatch = 1 << 20
	// storeBatch is how many received chunks share one durable write.
	storeBatch = 256
)

// Handler serves a DirStore to clients over HTTP; the home server mounts
// it under /v1/chunks/ behind its device tokens. Every operation is a POST
// to /NAME.
func Handler(s DirStore, codec *Codec) http.Handler {
	srv := &server{store: s, codec: codec}
	mux := http.NewServeMux()
	for name, op := range srv.operations() {
		mux.HandleFunc("POST /"+name, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/x-handoff-records")
			serve(r.Context(), codec, op, r.Body, w)
		})
	}
	return mux
}

// serve runs an operation, turning its failure into an error record.
func serve(ctx context.Context, codec *Codec, op operation, body io.Reader, out io.Writer) error {
	w := newRecordWriter(out, codec)
	if err := op(ctx, body, w); err != nil {
		w.fail(err)
	}
	return w.Close()
}

func readPair(r io.Reader) (to, from Hash, err error) {
	var b [64]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return to, from, fmt.Errorf("request: %w", err)
	}
	copy(to[:], b[:32])
	copy(from[:], b[32:])
	return to, from, nil
}

func (s *server) has(ctx context.Context, body io.Reader, w *recordWriter) error {
	b, err := io.ReadAll(io.LimitReader(body, 32*maxHasBatch+1))
	if err != nil {
		return fmt.Errorf("has: %w", err)
	}
	if len(b)%32 != 0 || len(b) > 32*maxHasBatch {
		return fmt.Errorf("has: %d bytes are not a list of at most %d hashes", len(b), maxHasBatch)
	}
	hashes := make([]Hash, len(b)/32)
	for i := range hashes {
		copy(hashes[i][:], b[32*i:])
	}
	have, err := s.store.Has(ctx, hashes)
	if err != nil {
		return err
	}
	return w.whole(bitmap(have))
}

// baseTree loads the tree a request names as its base.
func (s *server) baseTree(ctx context.Context, from Hash) (*tree, error) {
	if from.IsZero() {
		return nil, nil
	}
	t, err := loadTree(ctx, s.store, s.codec, from)
	if errors.Is(err, ErrNotFound) {
		return nil, fmt.Errorf("base %s: %w", from, errBaseUnknown)
	}
	return t, err
}

// trees loads the tree a request names and its base.
func (s *server) trees(ctx context.Context, to, from Hash) (t, base *tree, err error) {
	if t, err = loadTree(ctx, s.store, s.codec, to); err != nil {
		return nil, nil, err
	}
	base, err = s.baseTree(ctx, from)
	return t, base, err
}

func (s *server) tree(ctx context.Context, body io.Reader, w *recordWriter) error {
	to, from, err := readPair(body)
	if err != nil {
		return err
	}
	t, base, err := s.trees(ctx, to, from)
	if err != nil {
		return err
	}
	return sendTree(w, t, base)
}

// readPositions reads a count and increasing position deltas.
func readPositions(r io.ByteReader, limit int) ([]int, error) {
	n, err := binary.ReadUvarint(r)
	if err != nil || n > uint64(limit) {
		return nil, fmt.Errorf("positions: bad count (%v)", err)
	}
	out := make([]int, n)
	p := uint64(0)
	for i := range out {
		d, err := binary.ReadUvarint(r)
		if err != nil || (i > 0 && d == 0) || p+d > maxChunks {
			return nil, fmt.Errorf("positions: bad delta at %d (%v)", i, err)
		}
		p += d
		out[i] = int(p)
	}
	return out, nil
}

func appendPositions(b []byte, positions []int) []byte {
	b = binary.AppendUvarint(b, uint64(len(positions)))
	last := 0
	for _, p := range positions {
		b = binary.AppendUvarint(b, uint64(p-last))
		last = p
	}
	return b
}

func (s *server) chunks(ctx context.Context, body io.Reader, w *recordWriter) error {
	br := bufio.NewReader(body)
	to, from, err := readPair(br)
	if err != nil {
		return err
	}
	check, err := br.ReadByte()
	if err != nil || check > 1 {
		return fmt.Errorf("chunks: bad check flag (%v)", err)
	}
	positions, err := readPositions(br, maxChunkBatch)
	if err != nil {
		return err
	}
	t, base, err := s.trees(ctx, to, from)
	if err != nil {
		return err
	}
	for _, p := range positions {
		if err := ctx.Err(); err != nil {
			return err
		}
		if p >= len(t.Chunks) || t.Chunks[p].IsZero() {
			return fmt.Errorf("image %s has no stored chunk at position %d", to, p)
		}
		packed, err := s.store.Get(ctx, t.Chunks[p])
		fn := chunkBase(ctx, s.store, s.codec, base, p)
		var data []byte
		if err == nil && (fn != nil || check == 1) {
			data, err = s.codec.Decode(t.Chunks[p], packed)
		}
		if err != nil {
			return fmt.Errorf("chunk %s at byte %d of image %s in the server's store: %w; push the image again from a device that has it", t.Chunks[p], int64(p)*int64(t.ChunkSize), to, err)
		}
		if fn == nil {
			err = w.packed(packed) // new to the client: as stored
		} else {
			b, _ := fn() // without its base it goes whole
			_, err = w.object(b, data)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// chunkBase returns base's chunk at position p, which the other side of a
// transfer holds, or nil if base has none there.
func chunkBase(ctx context.Context, s objectGetter, codec *Codec, base *tree, p int) func() ([]byte, error) {
	if base == nil || p >= len(base.Chunks) {
		return nil
	}
	h := base.Chunks[p]
	if h.IsZero() {
		return fixed(make([]byte, base.chunkLen(p)))
	}
	return func() ([]byte, error) { return loadObject(ctx, s, codec, h) }
}

func (s *server) push(ctx context.Context, body io.Reader, w *recordWriter) error {
	r := newRecordReader(body, s.codec)
	hdr, err := r.bytes(64)
	if err != nil {
		return fmt.Errorf("push: %w", err)
	}
	to, from, _ := readPair(bytes.NewReader(hdr))
	base, err := s.baseTree(ctx, from)
	if err != nil {
		return err
	}
	t, err := recvTree(r, to, base)
	if err != nil {
		return fmt.Errorf("push: %w", err)
	}
	stored, err := receiveChunks(ctx, r, t, base, s.store, s.codec)
	if err != nil {
		return fmt.Errorf("push: %w (the %d chunks that arrived are kept: push again to send the rest)", err, stored)
	}
	// The tree goes in only once every chunk it names is stored.
	if missing, err := missingChunks(ctx, s.store, t.Manifest); err != nil {
		return err
	} else if len(missing) > 0 {
		return fmt.Errorf("push: %d chunks of image %s are neither sent nor stored: push again", len(missing), to)
	}
	if err := storeTree(ctx, s.store.PutBatch, s.codec, t); err != nil {
		return err
	}
	return w.whole(binary.AppendUvarint(nil, uint64(stored)))
}

// receiveChunks reads the positions of the chunks that follow, then the
// chunks, verifies each against tree t, and stores them in batches. It
// returns how many it stored, also on failure: what arrived is kept.
func receiveChunks(ctx context.Context, r *recordReader, t, base *tree, dst DirStore, codec *Codec) (int, error) {
	positions, err := r.positions(maxChunks)
	if err != nil {
		return 0, err
	}
	var batch []Object
	stored := 0
	flush := func() error {
		err := dst.PutBatch(ctx, batch)
		if err == nil {
			stored += len(batch)
		}
		batch = batch[:0]
		return err
	}
	for _, p := range positions {
		if p >= len(t.Chunks) || t.Chunks[p].IsZero() {
			return stored, errors.Join(fmt.Errorf("position %d names no chunk of the image: %w", p, ErrCorrupt), flush())
		}
		h := t.Chunks[p]
		data, packed, _, err := r.object(h, chunkBase(ctx, dst, codec, base, p), nil)
		if err != nil {
			return stored, errors.Join(err, flush())
		}
		if packed == nil {
			packed = codec.Encode(data)
		}
		batch = append(batch, Object{h, packed})
		if len(batch) >= storeBatch {
			if err := flush(); err != nil {
				return stored, err
			}
		}
	}
	return stored, flush()
}

// objectHaver is what asking after objects needs of a store.
type objectHaver interface {
	Has(ctx context.Context, hashes []Hash) ([]bool, error)
}

// missingChunks lists the distinct chunks of m that s lacks.
func missingChunks(ctx context.Context, s objectHaver, m *Manifest) ([]Hash, error) {
	distinct, _ := m.distinct()
	have, err := s.Has(ctx, distinct)
	if err != nil {
		return nil, err
	}
	var out []Hash
	for i, ok := range have {
		if !ok {
			out = append(out, distinct[i])
		}
	}
	return out, nil
}

// distinct lists m's distinct non-zero chunks in first-use order, with the
// first position of each.
func (m *Manifest) distinct() ([]Hash, map[Hash]int) {
	first := map[Hash]int{}
	var out []Hash
	for i, h := range m.Chunks {
		if _, seen := first[h]; h.IsZero() || seen {
			continue
		}
		first[h] = i
		out = append(out, h)
	}
	return out, first
}

func bitmap(bits []bool) []byte {
	out := make([]byte, (len(bits)+7)/8)
	for i, b := range bits {
		if b {
			out[i/8] |= 1 << (i % 8)
		}
	}
	return out
}

func unbitmap(b []byte, n int) ([]bool, error) {
	if len(b) != (n+7)/8 {
		return nil, fmt.Errorf("has: %d bytes of answer for %d hashes: %w", len(b), n, errCut)
	}
	out := make([]bool, n)
	for i := range out {
		out[i] = b[i/8]&(1<<(i%8)) != 0
	}
	return out, nil
}
