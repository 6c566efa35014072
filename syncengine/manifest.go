package syncengine

import (
	"context"
	"encoding/binary"
	"fmt"
)

// DefaultChunkSize is the chunk size for disk images: a power of two, so
// chunks align with the filesystem blocks inside the image. Small enough
// that the chunks of a checkpoint's changed blocks stay few and the cache
// dedupes well; large enough that a 2 GiB image is 32 Ki objects, not
// half a million. Transfers send only the changed parts of a chunk, so
// the chunk size does not set what an update costs on the wire.
const DefaultChunkSize = 64 << 10

// fanout is how many chunk names one node holds: a node covers 64 MiB of
// image at the default chunk size, so a 2 GiB image is a root and 32 nodes.
const fanout = 1024

// maxChunks bounds a manifest read from the wire or a store: 64 TiB of
// image at the default chunk size.
const maxChunks = 1 << 30

var (
	rootMagic = []byte("HIM1")
	nodeMagic = []byte("HND1")
)

// Manifest is an image as the list of its chunks' names, in order; the
// zero Hash stands for a chunk of zeroes.
type Manifest struct {
	Size      int64
	ChunkSize int
	Chunks    []Hash
}

func chunkCount(size int64, chunkSize int) int64 {
	return (size + int64(chunkSize) - 1) / int64(chunkSize)
}

// chunkLen is the length of chunk i (the last may be short).
func (m *Manifest) chunkLen(i int) int {
	return int(min(int64(m.ChunkSize), m.Size-int64(i)*int64(m.ChunkSize)))
}

// Root names the whole image: the hash of its tree's root object.
func (m *Manifest) Root() Hash { return m.tree().root }

// tree is a manifest cut into its objects: a root object naming the nodes,
// each node naming up to fanout chunks. An all-zero span of the image has
// the zero Hash for its node too: it costs nothing at any level.
type tree struct {
	*Manifest
	root    Hash
	rootRaw []byte
	nodes   []Hash
	nodeRaw [][]byte // nil where the node is zero
}

func (m *Manifest) tree() *tree {
	t := &tree{Manifest: m}
	raw := append([]byte(nil), rootMagic...)
	raw = binary.AppendUvarint(raw, uint64(m.Size))
	raw = binary.AppendUvarint(raw, uint64(m.ChunkSize))
	for i := 0; i < len(m.Chunks); i += fanout {
		part := m.Chunks[i:min(len(m.Chunks), i+fanout)]
		var h Hash
		var node []byte
		if !allZero(part) {
			node = make([]byte, 0, len(nodeMagic)+32*len(part))
			node = append(node, nodeMagic...)
			for _, c := range part {
				node = append(node, c[:]...)
			}
			h = Sum(node)
		}
		t.nodes = append(t.nodes, h)
		t.nodeRaw = append(t.nodeRaw, node)
		raw = append(raw, h[:]...)
	}
	t.rootRaw, t.root = raw, Sum(raw)
	return t
}

func allZero(hs []Hash) bool {
	for _, h := range hs {
		if !h.IsZero() {
			return false
		}
	}
	return true
}

// objects lists every object the tree uses: root, nodes and chunks.
func (t *tree) objects() []Hash {
	out := append([]Hash{t.root}, t.nodes...)
	return append(out, t.Chunks...)
}

// parseRoot reads a root object: the image's size, chunk size and nodes.
func parseRoot(raw []byte) (size int64, chunkSize int, nodes []Hash, err error) {
	bad := func(why string) error { return fmt.Errorf("image root: %s: %w", why, ErrCorrupt) }
	if len(raw) < len(rootMagic) || string(raw[:len(rootMagic)]) != string(rootMagic) {
		return 0, 0, nil, bad("not a root object")
	}
	b := raw[len(rootMagic):]
	s, n := binary.Uvarint(b)
	if n <= 0 || s > 1<<62 {
		return 0, 0, nil, bad("bad size")
	}
	b = b[n:]
	cs, n := binary.Uvarint(b)
	if n <= 0 || cs == 0 || cs > maxObject/2 {
		return 0, 0, nil, bad("bad chunk size")
	}
	b = b[n:]
	chunks := chunkCount(int64(s), int(cs))
	if chunks > maxChunks {
		return 0, 0, nil, bad("too many chunks")
	}
	want := (chunks + fanout - 1) / fanout
	if int64(len(b)) != 32*want {
		return 0, 0, nil, bad(fmt.Sprintf("%d bytes of node names for %d nodes", len(b), want))
	}
	nodes = make([]Hash, want)
	for i := range nodes {
		copy(nodes[i][:], b[32*i:])
	}
	return int64(s), int(cs), nodes, nil
}

// parseNode reads a node object that must name n chunks.
func parseNode(raw []byte, n int) ([]Hash, error) {
	if len(raw) != len(nodeMagic)+32*n || string(raw[:len(nodeMagic)]) != string(nodeMagic) {
		return nil, fmt.Errorf("tree node: %d bytes where %d chunk names belong: %w", len(raw), n, ErrCorrupt)
	}
	out := make([]Hash, n)
	for i := range out {
		copy(out[i][:], raw[len(nodeMagic)+32*i:])
	}
	return out, nil
}

// nodeChunks is how many chunk names node i of an image holds.
func nodeChunks(total int64, i int) int {
	return int(min(fanout, total-int64(i)*fanout))
}

// buildTree assembles a tree from a verified root object and its nodes'
// verified raw objects (nil for zero nodes).
func buildTree(root Hash, rootRaw []byte, nodeRaw [][]byte) (*tree, error) {
	size, cs, nodes, err := parseRoot(rootRaw)
	if err != nil {
		return nil, err
	}
	m := &Manifest{Size: size, ChunkSize: cs, Chunks: make([]Hash, 0, chunkCount(size, cs))}
	total := chunkCount(size, cs)
	for i, h := range nodes {
		n := nodeChunks(total, i)
		if h.IsZero() {
			m.Chunks = append(m.Chunks, make([]Hash, n)...)
			continue
		}
		part, err := parseNode(nodeRaw[i], n)
		if err != nil {
			return nil, err
		}
		m.Chunks = append(m.Chunks, part...)
	}
	return &tree{Manifest: m, root: root, rootRaw: rootRaw, nodes: nodes, nodeRaw: nodeRaw}, nil
}

// objectGetter is what reading a tree needs of a store.
type objectGetter interface {
	Get(ctx context.Context, h Hash) ([]byte, error)
}

// loadObject reads and verifies one object.
func loadObject(ctx context.Context, s objectGetter, codec *Codec, h Hash) ([]byte, error) {
	return loadObjectInto(ctx, s, codec, h, nil)
}

// loadObjectInto is loadObject into dst's free capacity where it fits
// (Codec.DecodeInto).
func loadObjectInto(ctx context.Context, s objectGetter, codec *Codec, h Hash, dst []byte) ([]byte, error) {
	packed, err := s.Get(ctx, h)
	if err != nil {
		return nil, err
	}
	return codec.DecodeInto(h, packed, dst)
}

// readTree assembles the tree named root from its objects, got one by one
// in order: the root (node -1), then each non-zero node. get verifies
// what it returns against the name it is given.
func readTree(root Hash, get func(node int, h Hash) ([]byte, error)) (*tree, error) {
	rootRaw, err := get(-1, root)
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", root, err)
	}
	_, _, nodes, err := parseRoot(rootRaw)
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", root, err)
	}
	nodeRaw := make([][]byte, len(nodes))
	for i, h := range nodes {
		if h.IsZero() {
			continue
		}
		if nodeRaw[i], err = get(i, h); err != nil {
			return nil, fmt.Errorf("image %s, node %d: %w", root, i, err)
		}
	}
	return buildTree(root, rootRaw, nodeRaw)
}

// loadTree reads the tree named root from a store, verifying every object.
func loadTree(ctx context.Context, s objectGetter, codec *Codec, root Hash) (*tree, error) {
	return readTree(root, func(_ int, h Hash) ([]byte, error) { return loadObject(ctx, s, codec, h) })
}

// storeTree puts a tree's root and nodes in a store with put (a store's
// PutBatch, or a cache's keep), after its chunks.
func storeTree(ctx context.Context, put func(context.Context, []Object) error, codec *Codec, t *tree) error {
	var objs []Object
	for i, raw := range t.nodeRaw {
		if raw != nil {
			objs = append(objs, Object{t.nodes[i], codec.Encode(raw)})
		}
	}
	if err := put(ctx, objs); err != nil {
		return err
	}
	return put(ctx, []Object{{t.root, codec.Encode(t.rootRaw)}})
}

// Range is a run of bytes that differ between two images.
type Range struct{ Offset, Length int64 }

// Diff lists the byte ranges where b differs from a, chunk by chunk.
func Diff(a, b *Manifest) ([]Range, error) {
	if a.ChunkSize != b.ChunkSize {
		return nil, fmt.Errorf("diff: chunk sizes %d and %d differ", a.ChunkSize, b.ChunkSize)
	}
	var out []Range
	for i := range b.Chunks {
		if i < len(a.Chunks) && a.Chunks[i] == b.Chunks[i] {
			continue
		}
		off := int64(i) * int64(b.ChunkSize)
		n := int64(b.chunkLen(i))
		if k := len(out) - 1; k >= 0 && out[k].Offset+out[k].Length == off {
			out[k].Length += n
		} else {
			out = append(out, Range{off, n})
		}
	}
	if b.Size < a.Size {
		out = append(out, Range{b.Size, a.Size - b.Size})
	}
	return out, nil
}
