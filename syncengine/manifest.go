package syncengine

import (
	"context"
	"encoding/json"
	"fmt"
)

// DefaultChunkSize is the chunk size for disk images: a power of two, so
// chunks align with the filesystem blocks inside the image and a changed
// block changes one chunk.
const DefaultChunkSize = 256 << 10

// Manifest lists an image's chunks in order; its own hash (the root) names
// the whole image: a two-level Merkle tree.
type Manifest struct {
	Size      int64  `json:"size"`
	ChunkSize int    `json:"chunk_size"`
	Chunks    []Hash `json:"chunks"` // the zero Hash for a chunk of zeroes
}

// Encode is the manifest's canonical bytes, the ones its root hashes.
func (m *Manifest) Encode() []byte {
	b, _ := json.Marshal(m)
	return b
}

// Root names the manifest.
func (m *Manifest) Root() Hash { return Sum(m.Encode()) }

// DecodeManifest reads a manifest and checks it is whole and consistent.
func DecodeManifest(b []byte) (*Manifest, error) {
	var m Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("manifest: %w", err)
	}
	if m.ChunkSize <= 0 || m.Size < 0 || int64(len(m.Chunks)) != (m.Size+int64(m.ChunkSize)-1)/int64(m.ChunkSize) {
		return nil, fmt.Errorf("manifest: %d chunks of %d bytes cannot make %d bytes", len(m.Chunks), m.ChunkSize, m.Size)
	}
	return &m, nil
}

// chunkLen is the length of chunk i (the last may be short).
func (m *Manifest) chunkLen(i int) int {
	return int(min(int64(m.ChunkSize), m.Size-int64(i)*int64(m.ChunkSize)))
}

// Missing lists the distinct non-zero chunks of m that have() lacks, in
// first-use order: what a transfer must send.
func (m *Manifest) Missing(have func(Hash) bool) []Hash {
	seen := map[Hash]bool{}
	var out []Hash
	for _, h := range m.Chunks {
		if h.IsZero() || seen[h] {
			continue
		}
		seen[h] = true
		if !have(h) {
			out = append(out, h)
		}
	}
	return out
}

// Range is a run of bytes that differ between two images.
type Range struct{ Offset, Length int64 }

// Diff lists the byte ranges where b differs from a (chunk-grained), and
// the bytes of distinct new chunks b needs beyond a's.
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

// DiffRoots loads two manifests from s and diffs them.
func DiffRoots(ctx context.Context, s Store, codec *Codec, a, b string) ([]Range, error) {
	var ms [2]*Manifest
	for i, r := range []string{a, b} {
		h, err := ParseHash(r)
		if err != nil {
			return nil, err
		}
		if ms[i], err = loadManifest(ctx, s, codec, h); err != nil {
			return nil, err
		}
	}
	return Diff(ms[0], ms[1])
}
