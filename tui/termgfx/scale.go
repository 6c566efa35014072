package termgfx

import (
	"encoding/binary"
	"image"
)

// Scaler shrinks a picture by area averaging: each output pixel is the
// mean of the source area it covers, partly covered pixels weighed by how
// much of them it covers, so text stays smooth at any ratio. It keeps the
// weights for the last pair of sizes, and its buffers.
//
// The three channels ride in one uint64, 21 bits apart: a channel times
// a weight (at most 255 x 4096) fits in 20 bits, so one multiply-add does
// all three.
type Scaler struct {
	from, to image.Point
	xs, ys   taps
	packed   []uint64 // one source row, packed
	rows     []uint64 // a ring of horizontally scaled source rows, packed 8-bit channels
	ringRow  []int    // the source row in each of the ring's slots
	line     []uint32 // one output row, RGBA
}

// taps are, for each output pixel along one axis, the first source pixel
// and n weights (in 1/4096, summing to 4096), n the same for all.
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
	weightOne = 4096
	lane      = 21
	laneMask  = 1<<lane - 1
)

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
		var sum uint64
		big := 0
		for s := lo / dst; s*dst < hi && s < src; s++ {
			cover := min(hi, (s+1)*dst) - max(lo, s*dst)
			k := s - first
			w[k] = uint64(cover * weightOne / src)
			sum += w[k]
			if w[k] > w[big] {
				big = k
			}
		}
		w[big] += weightOne - sum
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
		s.packed = make([]uint64, sw)
	}
	// The output pixels whose taps reach into dirty.
	out := image.Rect(max(0, dirty.Min.X*dw/sw-1), max(0, dirty.Min.Y*dh/sh-1),
		min(dw, (dirty.Max.X*dw+sw-1)/sw+1), min(dh, (dirty.Max.Y*dh+sh-1)/sh+1))
	// The source columns those output pixels read.
	x0 := s.xs.first[out.Min.X]
	x1 := s.xs.first[out.Max.X-1] + s.xs.n
	ow := out.Dx()
	// Each output row blends a window of source rows, then scales that
	// across: the per-pixel work of gathering taps is done on the (fewer)
	// output pixels. Windows overlap, so the packed source rows are kept
	// in a ring of the last ys.n: a few rows that stay in the cache.
	ring := s.ys.n
	if need := ring * sw; cap(s.rows) < need {
		s.rows = make([]uint64, need)
	}
	s.ringRow = s.ringRow[:0]
	for range ring {
		s.ringRow = append(s.ringRow, -1)
	}
	if cap(s.line) < ow {
		s.line = make([]uint32, ow)
	}
	s.line = s.line[:ow]
	firstX, wx := s.xs.first[out.Min.X:out.Max.X], s.xs.w[out.Min.X*s.xs.n:out.Max.X*s.xs.n]
	var taps [maxUnrolled][]uint64
	for oy := out.Min.Y; oy < out.Max.Y; oy++ {
		first := s.ys.first[oy]
		for k := range ring {
			y := first + k
			slot := y % ring
			packed := s.rows[slot*sw:][:sw]
			if s.ringRow[slot] != y {
				s.ringRow[slot] = y
				row := src.Pix[src.PixOffset(src.Rect.Min.X+x0, src.Rect.Min.Y+y):][:4*(x1-x0)]
				if words, ok := pixelWords(row); ok {
					packWords(packed[x0:x1], words)
				} else {
					packRow(packed[x0:x1], row)
				}
			}
			if k < maxUnrolled {
				taps[k] = packed[x0:x1]
			}
		}
		blended := s.packed[x0:x1]
		w := s.ys.w[oy*ring:][:ring]
		switch ring {
		case 2:
			blendRows3(blended, taps[0], taps[1], taps[1], w[0], w[1], 0)
		case 3:
			blendRows3(blended, taps[0], taps[1], taps[2], w[0], w[1], w[2])
		default:
			blendRows(blended, s.rows, first, ring, sw, x0, w)
		}
		d := dst.Pix[dst.PixOffset(dst.Rect.Min.X+out.Min.X, dst.Rect.Min.Y+oy):][:4*ow]
		line, direct := pixelWords(d)
		if !direct {
			line = s.line
		}
		if s.xs.three != nil {
			scaleRow3(line, s.packed, s.xs.three[out.Min.X:out.Max.X])
		} else {
			scaleRow(line, s.packed, firstX, wx, s.xs.n)
		}
		if !direct {
			storeRGBA(d, line)
		}
	}
	return out.Add(dst.Rect.Min)
}

// rowLoops: each pass over a row is a function of its own, kept out of
// Scale: inlined there, its loops ran 5-10x slower for want of registers.
//
// maxUnrolled is the most taps the unrolled loops take: enough to shrink
// by up to 2, which a 1280x800 guest in a terminal needs.
const maxUnrolled = 3

// packRow packs a row of RGBA pixels.
//
//go:noinline // see rowLoops
func packRow(dst []uint64, rgba []byte) {
	rgba = rgba[:4*len(dst)]
	for i := range dst {
		dst[i] = pack(binary.LittleEndian.Uint32(rgba[4*i:]))
	}
}

// packWords packs a row of RGBA pixels read as words.
//
//go:noinline // see rowLoops
func packWords(dst []uint64, px []uint32) {
	px = px[:len(dst)]
	for i, v := range px {
		dst[i] = pack(v)
	}
}

// scaleRow scales a packed row horizontally into RGBA pixels, output
// pixel i being the sum of the n pixels from first[i] weighed by w[n*i:].
//
//go:noinline // see rowLoops
func scaleRow(dst []uint32, packed []uint64, first []int, w []uint64, n int) {
	for i := range dst {
		src, w := packed[first[i]:][:n], w[n*i:][:n]
		var acc uint64
		for k, p := range src {
			acc += p * w[k]
		}
		dst[i] = unpackRGBA(unpackRound(acc))
	}
}

// scaleRow3 is scaleRow for at most three taps.
//
//go:noinline // see rowLoops
func scaleRow3(dst []uint32, packed []uint64, taps []tap3) {
	taps = taps[:len(dst)]
	for i, t := range taps {
		p := packed[t.first : t.first+3 : t.first+3]
		dst[i] = unpackRGBA(unpackRound(p[0]*t.w0 + p[1]*t.w1 + p[2]*t.w2))
	}
}

// blendRows3 is the weighted sum of three packed rows.
//
//go:noinline // see rowLoops
func blendRows3(dst, r0, r1, r2 []uint64, w0, w1, w2 uint64) {
	r1, r2, dst = r1[:len(r0)], r2[:len(r0)], dst[:len(r0)]
	for i := range r0 {
		dst[i] = unpackRound(r0[i]*w0 + r1[i]*w1 + r2[i]*w2)
	}
}

// blendRows is the weighted sum of the ring's rows first.. (of width
// each) from column x0, for shrinking by more than maxUnrolled allows.
//
//go:noinline // see rowLoops
func blendRows(dst, ring []uint64, first, n, width, x0 int, w []uint64) {
	for i := range dst {
		var acc uint64
		for k, wk := range w {
			acc += ring[(first+k)%n*width+x0+i] * wk
		}
		dst[i] = unpackRound(acc)
	}
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

// Every lane at once: a lane's weighted sum is under 256 x weightOne
// (2^20), so adding half a weight cannot carry into the next lane, and
// after the shift each lane's top 8 bits sit at its bottom.
const (
	laneHalfWeights = weightOne/2 | weightOne/2<<lane | weightOne/2<<(2*lane)
	laneBytes       = 0xff | 0xff<<lane | 0xff<<(2*lane)
)

// unpackRound divides each lane of a weighted sum by the weights' total,
// rounding, back to one 8-bit value a lane.
func unpackRound(acc uint64) uint64 {
	return (acc + laneHalfWeights) >> 12 & laneBytes
}

// pack spreads a little-endian RGBA pixel's colour into the three lanes.
func pack(rgba uint32) uint64 {
	return uint64(rgba&0xff) | uint64(rgba&0xff00)<<(lane-8) | uint64(rgba&0xff0000)<<(2*lane-16)
}

// unpackRGBA is the opaque little-endian RGBA pixel of packed 8-bit lanes.
func unpackRGBA(v uint64) uint32 {
	return uint32(v)&0xff | uint32(v>>(lane-8))&0xff00 | uint32(v>>(2*lane-16))&0xff0000 | 0xff000000
}
