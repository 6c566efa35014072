package termgfx

import "image"

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
	rows     []uint64 // horizontally scaled source rows, packed 8-bit channels
}

// taps are, for each output pixel along one axis, the first source pixel
// and n weights (in 1/4096, summing to 4096), n the same for all.
type taps struct {
	n     int
	first []int
	w     []uint64
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
	// The source rows and columns those output pixels read.
	y0, y1 := s.ys.first[out.Min.Y], s.ys.first[out.Max.Y-1]+s.ys.n
	x0 := s.xs.first[out.Min.X]
	x1 := s.xs.first[out.Max.X-1] + s.xs.n
	ow := out.Dx()
	if need := (y1 - y0) * ow; cap(s.rows) < need {
		s.rows = make([]uint64, need)
	}
	rows := s.rows[:(y1-y0)*ow]
	n := s.xs.n
	for y := y0; y < y1; y++ {
		row := src.Pix[src.PixOffset(src.Rect.Min.X+x0, src.Rect.Min.Y+y):][:4*(x1-x0)]
		packed := s.packed[x0:x1]
		for i := range packed {
			p := row[4*i : 4*i+3]
			packed[i] = uint64(p[0]) | uint64(p[1])<<lane | uint64(p[2])<<(2*lane)
		}
		h := rows[(y-y0)*ow:][:ow]
		first, ws := s.xs.first[out.Min.X:out.Max.X], s.xs.w[out.Min.X*n:out.Max.X*n]
		switch n {
		case 2: // shrinking by less than 2, the common case: unrolled
			for i := range h {
				src, w := s.packed[first[i]:][:2], ws[2*i:][:2]
				h[i] = unpackRound(src[0]*w[0] + src[1]*w[1])
			}
		case 3:
			for i := range h {
				src, w := s.packed[first[i]:][:3], ws[3*i:][:3]
				h[i] = unpackRound(src[0]*w[0] + src[1]*w[1] + src[2]*w[2])
			}
		default:
			for i := range h {
				src, w := s.packed[first[i]:][:n], ws[n*i:][:n]
				var acc uint64
				for k, p := range src {
					acc += p * w[k]
				}
				h[i] = unpackRound(acc)
			}
		}
	}
	n = s.ys.n
	for oy := out.Min.Y; oy < out.Max.Y; oy++ {
		first := s.ys.first[oy] - y0
		w := s.ys.w[oy*n:][:n]
		d := dst.Pix[dst.PixOffset(dst.Rect.Min.X+out.Min.X, dst.Rect.Min.Y+oy):][:4*ow]
		if n == 2 || n == 3 {
			r0, r1 := rows[first*ow:][:ow], rows[(first+1)*ow:][:ow]
			r2, w2 := r1, uint64(0)
			if n == 3 {
				r2, w2 = rows[(first+2)*ow:][:ow], w[2]
			}
			w0, w1 := w[0], w[1]
			for i := range ow {
				v := unpackRound(r0[i]*w0 + r1[i]*w1 + r2[i]*w2)
				px := d[4*i : 4*i+4]
				px[0], px[1], px[2], px[3] = uint8(v), uint8(v>>lane), uint8(v>>(2*lane)), 0xff
			}
			continue
		}
		for i := range ow {
			var acc uint64
			for k, wk := range w {
				acc += rows[(first+k)*ow+i] * wk
			}
			v := unpackRound(acc)
			px := d[4*i : 4*i+4]
			px[0], px[1], px[2], px[3] = uint8(v), uint8(v>>lane), uint8(v>>(2*lane)), 0xff
		}
	}
	return out.Add(dst.Rect.Min)
}

// unpackRound divides each lane of a weighted sum by the weights' total,
// rounding, back to one 8-bit value a lane.
func unpackRound(acc uint64) uint64 {
	r := (acc&laneMask + weightOne/2) >> 12
	g := (acc>>lane&laneMask + weightOne/2) >> 12
	b := (acc>>(2*lane)&laneMask + weightOne/2) >> 12
	return r | g<<lane | b<<(2*lane)
}
