package termgfx

import (
	"encoding/binary"
	"image"
	"unsafe"
)

// Scaler shrinks a picture by area averaging: each output pixel is the
// mean of the source area it covers, partly covered pixels weighed by how
// much of them it covers, so text stays smooth at any ratio. It keeps the
// weights for the last pair of sizes, and its buffers.
//
// Weights are in 1/256, so that a channel times a weight fits in 16 bits
// and one 64-bit multiply-add weighs four channels: the vertical pass
// takes the red and blue of two source pixels in one word, their green
// and alpha in another, straight from the picture's bytes (with 12-bit
// weights in 21-bit lanes, each pixel was first spread over a word of its
// own: a fifth of the time). Each output row blends its source rows
// first, then scales that across, so the horizontal taps are gathered
// once per output pixel.
type Scaler struct {
	from, to image.Point
	xs, ys   taps
	cols     []uint64   // one output row's source rows blended: a pixel a word, in 16-bit lanes R, B, G, A
	rows     [][]uint64 // the source rows an output row blends, as pairs of pixels
	spare    [][]uint64 // copies of those rows, for pictures whose bytes cannot be read as words
	line     []uint32   // one output row, RGBA
}

// taps are, for each output pixel along one axis, the first source pixel
// and n weights (in 1/weightOne, summing to weightOne), n the same for
// all.
type taps struct {
	n     int
	first []int
	w     []uint64
	three []tap3 // the same, when n <= 3
}

// tap3 is one output pixel's taps, laid out so that the unrolled loop
// reads them with one bounds check: Go's slicing per tap cost 6x.
type tap3 struct {
	first      int
	w0, w1, w2 uint64
}

const (
	weightOne = 256
	// lanes are the 16-bit lanes' low bytes; half is half a weight in
	// each, to round with.
	lanes = 0x00ff00ff00ff00ff
	half  = 0x0080008000800080
)

// makeTaps weighs each source pixel by the part of the output pixel it
// covers, rounded where the pixels' edges fall: the weights of an output
// pixel add up to weightOne exactly (a flat area stays its colour, as
// the kitty compressor's runs want), each within one of its share.
func makeTaps(src, dst int) taps {
	t := taps{n: (src+dst-1)/dst + 1, first: make([]int, dst)}
	t.n = min(t.n, src)
	t.w = make([]uint64, dst*t.n)
	for o := range dst {
		// In units of 1/dst source pixels, output pixel o covers
		// [o*src, (o+1)*src); source pixel s covers [s*dst, (s+1)*dst).
		lo, hi := o*src, (o+1)*src
		first := min(lo/dst, src-t.n) // so that first+n stays in the row
		t.first[o] = first
		w := t.w[o*t.n:][:t.n]
		edge := func(p int) int { return ((p-lo)*weightOne + src/2) / src }
		for s := lo / dst; s*dst < hi && s < src; s++ {
			w[s-first] = uint64(edge(min(hi, (s+1)*dst)) - edge(max(lo, s*dst)))
		}
	}
	if t.n <= 3 && src >= 3 {
		t.three = make([]tap3, dst)
		for o := range dst {
			w := t.w[o*t.n:][:t.n]
			switch {
			case t.n == 3:
				t.three[o] = tap3{first: t.first[o], w0: w[0], w1: w[1], w2: w[2]}
			case t.first[o]+2 < src: // two taps and one of weight 0 after them, in the row
				t.three[o] = tap3{first: t.first[o], w0: w[0], w1: w[1]}
			default: // ... or at the row's end, before them
				t.three[o] = tap3{first: t.first[o] - 1, w1: w[0], w2: w[1]}
			}
		}
	}
	return t
}

// Scale draws src into dst, scaled to dst's size, redoing only the output
// pixels that dirty (in src's coordinates) touches; it returns them.
func (s *Scaler) Scale(dst, src *image.RGBA, dirty image.Rectangle) image.Rectangle {
	sw, sh := src.Rect.Dx(), src.Rect.Dy()
	dw, dh := dst.Rect.Dx(), dst.Rect.Dy()
	dirty = dirty.Intersect(src.Rect).Sub(src.Rect.Min)
	if dirty.Empty() || dw == 0 || dh == 0 {
		return image.Rectangle{}
	}
	if sw == dw && sh == dh {
		for y := dirty.Min.Y; y < dirty.Max.Y; y++ {
			copy(dst.Pix[dst.PixOffset(dst.Rect.Min.X+dirty.Min.X, dst.Rect.Min.Y+y):][:4*dirty.Dx()],
				src.Pix[src.PixOffset(src.Rect.Min.X+dirty.Min.X, src.Rect.Min.Y+y):])
		}
		return dirty.Add(dst.Rect.Min)
	}
	if s.from != src.Rect.Size() || s.to != dst.Rect.Size() {
		s.from, s.to = src.Rect.Size(), dst.Rect.Size()
		s.xs, s.ys = makeTaps(sw, dw), makeTaps(sh, dh)
		s.cols = make([]uint64, sw+1) // and one past a row of odd width
	}
	// The output pixels whose taps reach into dirty.
	out := image.Rect(max(0, dirty.Min.X*dw/sw-1), max(0, dirty.Min.Y*dh/sh-1),
		min(dw, (dirty.Max.X*dw+sw-1)/sw+1), min(dh, (dirty.Max.Y*dh+sh-1)/sh+1))
	// The source columns those output pixels read, from an even one: the
	// vertical pass reads pixels in pairs.
	x0 := s.xs.first[out.Min.X] &^ 1
	x1 := s.xs.first[out.Max.X-1] + s.xs.n
	pairs := (x1 - x0 + 1) / 2
	ow := out.Dx()
	n := s.ys.n
	for len(s.rows) < n {
		s.rows = append(s.rows, nil)
		s.spare = append(s.spare, nil)
	}
	if cap(s.line) < ow {
		s.line = make([]uint32, ow)
	}
	s.line = s.line[:ow]
	firstX, wx := s.xs.first[out.Min.X:out.Max.X], s.xs.w[out.Min.X*s.xs.n:out.Max.X*s.xs.n]
	blended := s.cols[x0 : x0+2*pairs]
	for oy := out.Min.Y; oy < out.Max.Y; oy++ {
		first := s.ys.first[oy]
		w := s.ys.w[oy*n:][:n]
		for k := range n {
			s.rows[k] = s.pairRow(k, src, first+k, x0, x1, pairs)
		}
		switch {
		case n == 2 || n == 3 && w[2] == 0:
			blendPairs2(blended, s.rows[0], s.rows[1], w[0], w[1])
		case n == 3 && w[0] == 0:
			blendPairs2(blended, s.rows[1], s.rows[2], w[1], w[2])
		case n == 3:
			blendPairs3(blended, s.rows[0], s.rows[1], s.rows[2], w[0], w[1], w[2])
		default:
			blendPairs(blended, s.rows[:n], w)
		}
		d := dst.Pix[dst.PixOffset(dst.Rect.Min.X+out.Min.X, dst.Rect.Min.Y+oy):][:4*ow]
		line, direct := pixelWords(d)
		if !direct {
			line = s.line
		}
		if s.xs.three != nil {
			scaleRow3(line, s.cols, s.xs.three[out.Min.X:out.Max.X])
		} else {
			scaleRow(line, s.cols, firstX, wx, s.xs.n)
		}
		if !direct {
			storeRGBA(d, line)
		}
	}
	return out.Add(dst.Rect.Min)
}

// pairRow is source row y's pixels x0..x1 (x0 even) as words of two
// pixels, read in place when the bytes allow it, else copied into spare
// slot k (with a pixel of 0 past an odd end).
func (s *Scaler) pairRow(k int, src *image.RGBA, y, x0, x1, pairs int) []uint64 {
	off := src.PixOffset(src.Rect.Min.X+x0, src.Rect.Min.Y+y)
	if x0+2*pairs <= src.Rect.Dx() {
		if words, ok := pairWords(src.Pix[off:][:8*pairs]); ok {
			return words
		}
	}
	if cap(s.spare[k]) < pairs {
		s.spare[k] = make([]uint64, pairs)
	}
	row, b := s.spare[k][:pairs], src.Pix[off:][:4*(x1-x0)]
	for i := range row {
		if 8*i+8 <= len(b) {
			row[i] = binary.LittleEndian.Uint64(b[8*i:])
		} else {
			row[i] = uint64(binary.LittleEndian.Uint32(b[8*i:]))
		}
	}
	return row
}

// pairWords views RGBA bytes as one 64-bit word per two pixels, the
// first in the low half; ok is false where that view would be wrong (see
// pixelWords) or the bytes are off an 8-byte boundary.
func pairWords(b []byte) (words []uint64, ok bool) {
	if _, ok := pixelWords(b); !ok || uintptr(unsafe.Pointer(unsafe.SliceData(b)))%8 != 0 || len(b)%8 != 0 {
		return nil, false
	}
	return unsafe.Slice((*uint64)(unsafe.Pointer(unsafe.SliceData(b))), len(b)/8), true
}

// rowLoops: each pass over a row is a function of its own, kept out of
// Scale: inlined there, its loops ran 5-10x slower for want of registers.

// spreadPair is two pixels' weighed sums, red and blue lanes in rb and
// green and alpha in ga (each lane 16 bits, two pixels a word), rounded
// back to 8-bit values, as a word a pixel in lanes R, B, G, A.
func spreadPair(rb, ga uint64) (uint64, uint64) {
	rb = (rb + half) >> 8 & lanes
	ga = (ga + half) >> 8 & lanes
	return rb&0xffffffff | ga<<32, rb>>32 | ga&^0xffffffff
}

// blendPairs2 is the weighted sum of two rows of pixel pairs, spread
// into dst a pixel a word.
//
//go:noinline // see rowLoops
func blendPairs2(dst, r0, r1 []uint64, w0, w1 uint64) {
	r1, dst = r1[:len(r0)], dst[:2*len(r0)]
	for i, a := range r0 {
		b := r1[i]
		dst[2*i], dst[2*i+1] = spreadPair(a&lanes*w0+b&lanes*w1, a>>8&lanes*w0+b>>8&lanes*w1)
	}
}

// blendPairs3 is blendPairs2 for three rows.
//
//go:noinline // see rowLoops
func blendPairs3(dst, r0, r1, r2 []uint64, w0, w1, w2 uint64) {
	r1, r2, dst = r1[:len(r0)], r2[:len(r0)], dst[:2*len(r0)]
	for i, a := range r0 {
		b, c := r1[i], r2[i]
		dst[2*i], dst[2*i+1] = spreadPair(a&lanes*w0+b&lanes*w1+c&lanes*w2, a>>8&lanes*w0+b>>8&lanes*w1+c>>8&lanes*w2)
	}
}

// blendPairs is blendPairs2 for any number of rows, for shrinking by more
// than the unrolled loops take.
//
//go:noinline // see rowLoops
func blendPairs(dst []uint64, rows [][]uint64, w []uint64) {
	for i := range len(dst) / 2 {
		var rb, ga uint64
		for k, wk := range w {
			p := rows[k][i]
			rb += p & lanes * wk
			ga += p >> 8 & lanes * wk
		}
		dst[2*i], dst[2*i+1] = spreadPair(rb, ga)
	}
}

// scaleRow scales a spread row horizontally into RGBA pixels, output
// pixel i being the sum of the n pixels from first[i] weighed by w[n*i:].
//
//go:noinline // see rowLoops
func scaleRow(dst []uint32, spread []uint64, first []int, w []uint64, n int) {
	for i := range dst {
		src, w := spread[first[i]:][:n], w[n*i:][:n]
		var acc uint64
		for k, p := range src {
			acc += p * w[k]
		}
		dst[i] = unspread(acc)
	}
}

// scaleRow3 is scaleRow for at most three taps.
//
//go:noinline // see rowLoops
func scaleRow3(dst []uint32, spread []uint64, taps []tap3) {
	taps = taps[:len(dst)]
	for i, t := range taps {
		p := spread[t.first : t.first+3 : t.first+3]
		dst[i] = unspread(p[0]*t.w0 + p[1]*t.w1 + p[2]*t.w2)
	}
}

// unspread is the opaque little-endian RGBA pixel of a weighed sum in
// lanes R, B, G, A: rounded, red and blue fall in their bytes in place,
// green (and alpha, replaced) three bytes down.
func unspread(acc uint64) uint32 {
	v := (acc + half) >> 8 & lanes
	return uint32(v) | uint32(v>>24) | 0xff000000
}

// storeRGBA writes a row of pixels into an image's bytes.
//
//go:noinline // see rowLoops
func storeRGBA(dst []byte, px []uint32) {
	dst = dst[:4*len(px)]
	for i, v := range px {
		binary.LittleEndian.PutUint32(dst[4*i:], v)
	}
}
