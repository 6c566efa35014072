package termgfx

import "image"

// Scaler shrinks a picture by area averaging: each output pixel is the
// mean of the source area it covers, partly covered pixels weighed by how
// much of them it covers, so text stays smooth at any ratio. It keeps the
// weights for the last pair of sizes.
type Scaler struct {
	from, to image.Point
	xs, ys   []span
	acc      []uint32
}

// span is the source pixels one output pixel averages: first, and their
// weights (in 1/4096, summing to 4096).
type span struct {
	first int
	w     []uint32
}

const weightOne = 4096

func spans(src, dst int) []span {
	out := make([]span, dst)
	for o := range dst {
		// In units of 1/dst source pixels, output pixel o covers
		// [o*src, (o+1)*src); source pixel s covers [s*dst, (s+1)*dst).
		lo, hi := o*src, (o+1)*src
		sp := span{first: lo / dst}
		var sum uint32
		big := 0
		for s := sp.first; s*dst < hi && s < src; s++ {
			cover := min(hi, (s+1)*dst) - max(lo, s*dst)
			w := uint32(cover * weightOne / src)
			sp.w = append(sp.w, w)
			sum += w
			if w > sp.w[big] {
				big = len(sp.w) - 1
			}
		}
		sp.w[big] += weightOne - sum
		out[o] = sp
	}
	return out
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
		s.xs, s.ys = spans(sw, dw), spans(sh, dh)
		s.acc = make([]uint32, 3*dw)
	}
	// The output pixels whose spans reach into dirty.
	out := image.Rect(dirty.Min.X*dw/sw, dirty.Min.Y*dh/sh,
		min(dw, (dirty.Max.X*dw+sw-1)/sw+1), min(dh, (dirty.Max.Y*dh+sh-1)/sh+1))
	acc := s.acc[:3*out.Dx()]
	for oy := out.Min.Y; oy < out.Max.Y; oy++ {
		clear(acc)
		ys := s.ys[oy]
		for j, wy := range ys.w {
			row := src.Pix[src.PixOffset(src.Rect.Min.X, src.Rect.Min.Y+ys.first+j):]
			for ox := out.Min.X; ox < out.Max.X; ox++ {
				xs := s.xs[ox]
				var r, g, b uint32
				p := row[4*xs.first:]
				for _, wx := range xs.w {
					r += uint32(p[0]) * wx
					g += uint32(p[1]) * wx
					b += uint32(p[2]) * wx
					p = p[4:]
				}
				a := acc[3*(ox-out.Min.X):]
				a[0] += r * wy
				a[1] += g * wy
				a[2] += b * wy
			}
		}
		d := dst.Pix[dst.PixOffset(dst.Rect.Min.X+out.Min.X, dst.Rect.Min.Y+oy):]
		for i := range out.Dx() {
			a := acc[3*i:]
			d[4*i] = uint8((a[0] + weightOne*weightOne/2) >> 24)
			d[4*i+1] = uint8((a[1] + weightOne*weightOne/2) >> 24)
			d[4*i+2] = uint8((a[2] + weightOne*weightOne/2) >> 24)
			d[4*i+3] = 0xff
		}
	}
	return out.Add(dst.Rect.Min)
}
