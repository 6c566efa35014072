package syncengine

import (
	"bytes"
	"encoding/binary"
	"fmt"
)

// patchUnit is the grain at which a patch compares an object with its
// base: one chunk name in a tree node, an eighth of a cache line's worth
// of image. A changed 4 KiB filesystem block costs itself and a few bytes.
const patchUnit = 32

// makePatch describes target as base with some runs of bytes replaced:
// the target's length, then for each run the gap since the previous run,
// its length and its bytes. It returns nil where sending target whole is
// no larger.
func makePatch(base, target []byte) []byte {
	p := binary.AppendUvarint(make([]byte, 0, 64), uint64(len(target)))
	same := func(off int) bool {
		end := min(off+patchUnit, len(target))
		return end <= len(base) && bytes.Equal(base[off:end], target[off:end])
	}
	last := 0
	for off := 0; off < len(target); {
		if same(off) {
			off += patchUnit
			continue
		}
		start := off
		for off < len(target) && !same(off) {
			off += patchUnit
		}
		off = min(off, len(target))
		p = binary.AppendUvarint(p, uint64(start-last))
		p = binary.AppendUvarint(p, uint64(off-start))
		p = append(p, target[start:off]...)
		last = off
		if len(p) >= len(target) {
			return nil
		}
	}
	return p
}

// applyPatch rebuilds a target from its base and a patch made by
// makePatch, in dst's free capacity where it fits. The caller verifies the
// result's hash.
func applyPatch(base, patch, dst []byte) ([]byte, error) {
	bad := func(why string) error { return fmt.Errorf("patch: %s: %w", why, ErrCorrupt) }
	n, k := binary.Uvarint(patch)
	if k <= 0 || n > maxObject {
		return nil, bad("bad length")
	}
	patch = patch[k:]
	var out []byte
	if uint64(cap(dst)-len(dst)) >= n {
		out = dst[len(dst) : len(dst)+int(n)]
		clear(out[copy(out, base):])
	} else {
		out = make([]byte, n)
		copy(out, base)
	}
	pos := uint64(0)
	for len(patch) > 0 {
		gap, k1 := binary.Uvarint(patch)
		if k1 <= 0 {
			return nil, bad("bad gap")
		}
		run, k2 := binary.Uvarint(patch[k1:])
		if k2 <= 0 {
			return nil, bad("bad run")
		}
		patch = patch[k1+k2:]
		pos += gap
		if run > uint64(len(patch)) || pos+run > n {
			return nil, bad("run out of bounds")
		}
		copy(out[pos:], patch[:run])
		patch = patch[run:]
		pos += run
	}
	return out, nil
}
