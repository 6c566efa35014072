package tui

import (
	"image"
	"strconv"
	"strings"
)

// Viewport is how the screen maps onto terminal cells.
type Viewport struct {
	Cols, Rows int  // cells available
	OneToOne   bool // one screen pixel per half cell, panned; else fit the window
	PanX, PanY int  // top-left screen pixel shown in 1:1 mode
}

// Renderer turns a framebuffer into lines of truecolor upper-half blocks:
// each cell shows two pixels, the top one as the glyph's colour and the
// bottom one as the background. Lines whose pixels did not change are
// reused from the previous frame.
type Renderer struct {
	lines  []string
	key    renderKey
	buf    strings.Builder
	colors []rgb // one row of output pixels, reused
}

type renderKey struct {
	vp   Viewport
	size image.Point
}

type rgb struct{ r, g, b uint8 }

// Render returns the lines that draw img in vp; dirty is what changed since
// the last call (ignored when the size or viewport changed).
func (r *Renderer) Render(img *image.RGBA, dirty image.Rectangle, vp Viewport) []string {
	if img == nil || vp.Cols <= 0 || vp.Rows <= 0 {
		return nil
	}
	key := renderKey{vp: vp, size: img.Rect.Size()}
	m := mapping(img.Rect.Size(), vp)
	if key != r.key || len(r.lines) != m.rows {
		r.key = key
		r.lines = make([]string, m.rows)
		dirty = img.Rect
	}
	if cap(r.colors) < 2*m.cols {
		r.colors = make([]rgb, 2*m.cols)
	}
	for row := range m.rows {
		y0, y1 := m.srcY(2*row), m.srcY(2*row+2)
		if r.lines[row] != "" && (dirty.Empty() || y1 <= dirty.Min.Y || y0 >= dirty.Max.Y) {
			continue
		}
		top, bottom := r.colors[:m.cols], r.colors[m.cols:2*m.cols]
		m.sampleRow(img, 2*row, top)
		m.sampleRow(img, 2*row+1, bottom)
		r.lines[row] = r.line(top, bottom)
	}
	return r.lines
}

// line writes one row of cells, changing colours only where they change.
func (r *Renderer) line(top, bottom []rgb) string {
	b := &r.buf
	b.Reset()
	var fg, bg rgb
	for i := range top {
		if i == 0 || top[i] != fg || bottom[i] != bg {
			fg, bg = top[i], bottom[i]
			b.WriteString("\x1b[38;2;")
			writeRGB(b, fg)
			b.WriteString(";48;2;")
			writeRGB(b, bg)
			b.WriteByte('m')
		}
		b.WriteString("▀")
	}
	b.WriteString("\x1b[0m")
	return b.String()
}

func writeRGB(b *strings.Builder, c rgb) {
	var n [12]byte
	s := strconv.AppendUint(n[:0], uint64(c.r), 10)
	s = append(s, ';')
	s = strconv.AppendUint(s, uint64(c.g), 10)
	s = append(s, ';')
	s = strconv.AppendUint(s, uint64(c.b), 10)
	b.Write(s)
}

// pixelMap is the geometry of one rendering: output pixels (cols wide,
// 2*rows tall) and the source pixels each one averages.
type pixelMap struct {
	cols, rows int
	size       image.Point
	num, den   int // fit: source pixels per output pixel is num/den
	oneToOne   bool
	panX, panY int
}

func mapping(size image.Point, vp Viewport) pixelMap {
	m := pixelMap{size: size, oneToOne: vp.OneToOne}
	if vp.OneToOne {
		m.cols, m.rows = min(vp.Cols, size.X), min(vp.Rows, (size.Y+1)/2)
		m.panX = clamp(vp.PanX, 0, max(0, size.X-m.cols))
		m.panY = clamp(vp.PanY, 0, max(0, size.Y-2*m.rows))
		return m
	}
	// Fit: keep the aspect (a half cell is about square), never enlarge.
	m.num, m.den = size.X, vp.Cols
	if size.Y*vp.Cols > 2*vp.Rows*size.X {
		m.num, m.den = size.Y, 2*vp.Rows
	}
	if m.num < m.den {
		m.num, m.den = 1, 1
	}
	m.cols = max(1, size.X*m.den/m.num)
	m.rows = max(1, (size.Y*m.den/m.num+1)/2)
	return m
}

func clamp(v, lo, hi int) int { return max(lo, min(v, hi)) }

func (m pixelMap) srcY(oy int) int {
	if m.oneToOne {
		return min(m.size.Y, m.panY+oy)
	}
	return min(m.size.Y, oy*m.num/m.den)
}

func (m pixelMap) srcX(ox int) int {
	if m.oneToOne {
		return min(m.size.X, m.panX+ox)
	}
	return min(m.size.X, ox*m.num/m.den)
}

// sampleRow fills out with output pixel row oy: each the average of the
// source pixels it covers.
func (m pixelMap) sampleRow(img *image.RGBA, oy int, out []rgb) {
	y0, y1 := m.srcY(oy), m.srcY(oy+1)
	if y1 <= y0 {
		if y0 >= m.size.Y {
			clear(out) // below the picture: black
			return
		}
		y1 = y0 + 1
	}
	for ox := range out {
		x0, x1 := m.srcX(ox), m.srcX(ox+1)
		if x1 <= x0 {
			x1 = min(x0+1, m.size.X)
		}
		var r, g, b, n int
		for y := y0; y < y1; y++ {
			p := img.Pix[(y-img.Rect.Min.Y)*img.Stride+(x0-img.Rect.Min.X)*4:]
			for x := x0; x < x1; x++ {
				r += int(p[0])
				g += int(p[1])
				b += int(p[2])
				p = p[4:]
			}
			n += x1 - x0
		}
		if n == 0 {
			out[ox] = rgb{}
			continue
		}
		out[ox] = rgb{uint8(r / n), uint8(g / n), uint8(b / n)}
	}
}
