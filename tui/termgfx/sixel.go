package termgfx

import (
	"encoding/binary"
	"image"
	"math/bits"
	"strconv"
)

// paletteSlots is the size of the open-addressing table that finds a
// tile's colours; four times the most colours a sixel image may have.
const paletteSlots = 1024

// palette is a tile's colours in register order.
type palette struct {
	colors []uint32 // 0xRRGGBB, each channel in percent
	fixed  bool     // the 6x7x6 cube, for tiles with too many colours
}

// Sixel appends tile r of img as a sixel image at the cursor. A tile with
// at most colors distinct colours keeps them exactly (text screens and most
// of a desktop); a busier one is mapped to a fixed 6x7x6 colour cube.
func (e *Encoder) Sixel(dst []byte, img *image.RGBA, r image.Rectangle, colors int) []byte {
	r = r.Intersect(img.Rect)
	w, h := r.Dx(), r.Dy()
	if w <= 0 || h <= 0 {
		return dst
	}
	colors = min(max(colors, 16), 256)
	e.index(img, r, colors)
	dst = append(dst, "\x1bP0;1;0q\"1;1;"...)
	dst = strconv.AppendInt(dst, int64(w), 10)
	dst = append(dst, ';')
	dst = strconv.AppendInt(dst, int64(h), 10)
	for i, c := range e.pal.colors {
		dst = append(dst, '#')
		dst = strconv.AppendInt(dst, int64(i), 10)
		dst = append(dst, ";2;"...)
		dst = strconv.AppendInt(dst, int64(c>>16&0xff), 10)
		dst = append(dst, ';')
		dst = strconv.AppendInt(dst, int64(c>>8&0xff), 10)
		dst = append(dst, ';')
		dst = strconv.AppendInt(dst, int64(c&0xff), 10)
	}
	n := len(e.pal.colors)
	if cap(e.bits) < n*w {
		e.bits = make([]byte, n*w)
	}
	bits := e.bits[:n*w]
	var used [256]bool
	var lo, hi [256]int // each colour's first and last column in the band
	var orders [256]int // room for every colour: a growing slice cost allocations per tile
	order := orders[:0]
	for band := 0; band < h; band += 6 {
		order = order[:0]
		for y := band; y < min(band+6, h); y++ {
			bit := byte(1) << (y - band)
			row := e.idx[y*w:][:w]
			// A run of one colour at a time: per pixel, the first and
			// last columns' updates waited on each other through memory.
			for x := 0; x < len(row); {
				c := row[x]
				end := x + 1
				for end < len(row) && row[end] == c {
					end++
				}
				if !used[c] {
					used[c] = true
					order = append(order, int(c))
					clear(bits[int(c)*w:][:w])
					lo[c], hi[c] = x, end-1
				}
				lo[c], hi[c] = min(lo[c], x), max(hi[c], end-1)
				for i := range bits[int(c)*w+x : int(c)*w+end] {
					bits[int(c)*w+x+i] |= bit
				}
				x = end
			}
		}
		for k, c := range order {
			used[c] = false
			if k > 0 {
				dst = append(dst, '$')
			}
			dst = append(dst, '#')
			dst = strconv.AppendInt(dst, int64(c), 10)
			// Only the columns the colour has: skip to its first.
			dst = appendRun(dst, lo[c], '?')
			dst = appendRuns(dst, bits[c*w+lo[c]:][:hi[c]-lo[c]+1])
		}
		dst = append(dst, '-')
	}
	return append(dst, "\x1b\\"...)
}

// appendRuns writes one colour's sixels for a band, run-length coded,
// without the empty tail.
func appendRuns(dst []byte, row []byte) []byte {
	end := len(row)
	for end > 0 && row[end-1] == 0 {
		end--
	}
	row = row[:end]
	for x := 0; x < len(row); {
		v := row[x]
		// Most runs of a busy band are short: a few bytes looked at one
		// by one, and only a long run (a gap) eight at a time.
		n := 1
		for n < 8 && x+n < len(row) && row[x+n] == v {
			n++
		}
		if n == 8 {
			n += sameBytes(row[x+8:], v)
		}
		dst = appendRun(dst, n, v+63)
		x += n
	}
	return dst
}

// sameBytes is how many of b's first bytes are v, eight at a time.
func sameBytes(b []byte, v byte) int {
	all := uint64(v) * 0x0101010101010101
	n := 0
	for n+8 <= len(b) {
		if x := binary.LittleEndian.Uint64(b[n:]) ^ all; x != 0 {
			return n + bits.TrailingZeros64(x)/8
		}
		n += 8
	}
	for n < len(b) && b[n] == v {
		n++
	}
	return n
}

// appendRun writes n sixels ch, repeated by count when that is shorter.
func appendRun(dst []byte, n int, ch byte) []byte {
	switch {
	case n <= 0:
		return dst
	case n == 1:
		return append(dst, ch)
	case n == 2:
		return append(dst, ch, ch)
	case n == 3:
		return append(dst, ch, ch, ch)
	case n < 10:
		return append(dst, '!', byte('0'+n), ch)
	case n < 100:
		return append(dst, '!', byte('0'+n/10), byte('0'+n%10), ch)
	}
	dst = append(dst, '!')
	dst = strconv.AppendInt(dst, int64(n), 10)
	return append(dst, ch)
}

// percent is a colour channel as sixel's 0-100.
func percent(v uint32) int { return (int(v&0xff)*100 + 127) / 255 }

// index fills e.idx with each pixel's register and e.pal with the
// registers' colours.
func (e *Encoder) index(img *image.RGBA, r image.Rectangle, colors int) {
	w, h := r.Dx(), r.Dy()
	if cap(e.idx) < w*h {
		e.idx = make([]uint8, w*h)
	}
	e.idx = e.idx[:w*h]
	if e.exact(img, r, colors) {
		return
	}
	if e.cube == nil {
		e.cube = makeCube()
	}
	e.pal.fixed = true
	e.pal.colors = e.pal.colors[:0]
	for i := range 252 {
		rr, gg, bb := i/42, i/6%7, i%6
		e.pal.colors = append(e.pal.colors, uint32(percent(uint32(rr*51)))<<16|uint32(percent(uint32(gg*255/6)))<<8|uint32(percent(uint32(bb*51))))
	}
	for y := range h {
		cubeRow(e.idx[y*w:][:w], img.Pix[img.PixOffset(r.Min.X, r.Min.Y+y):][:4*w], e.cube)
	}
}

// cube is, per channel value, its part of the register of the nearest
// colour of the 6x7x6 cube: red's step times 42, green's times 6, blue's.
type cube [3][256]uint8

func makeCube() *cube {
	var c cube
	for v := range 256 {
		c[0][v] = uint8((v*5 + 127) / 255 * 42)
		c[1][v] = uint8((v*6 + 127) / 255 * 6)
		c[2][v] = uint8((v*5 + 127) / 255)
	}
	return &c
}

// cubeRow maps a row of RGBA pixels to the cube's registers.
func cubeRow(out []uint8, row []byte, c *cube) {
	if words, ok := pixelWords(row); ok {
		words = words[:len(out)]
		for x, p := range words {
			out[x] = c[0][uint8(p)] + c[1][uint8(p>>8)] + c[2][uint8(p>>16)]
		}
		return
	}
	row = row[:4*len(out)]
	for x := range out {
		p := row[4*x : 4*x+3]
		out[x] = c[0][p[0]] + c[1][p[1]] + c[2][p[2]]
	}
}

// exact maps the tile to its own colours; false when it has too many.
func (e *Encoder) exact(img *image.RGBA, r image.Rectangle, colors int) bool {
	w, h := r.Dx(), r.Dy()
	e.pal.fixed = false
	e.pal.colors = e.pal.colors[:0]
	for _, slot := range e.slots {
		e.table[slot] = 0 // only the slots the last tile used
	}
	e.slots = e.slots[:0]
	for y := range h {
		if !e.exactRow(e.idx[y*w:][:w], img.Pix[img.PixOffset(r.Min.X, r.Min.Y+y):][:4*w], colors) {
			return false
		}
	}
	return true
}

// exactRow maps a row of RGBA pixels to the tile's registers, a run of
// one colour at a time; false when the tile has more than colors colours.
func (e *Encoder) exactRow(out []uint8, row []byte, colors int) bool {
	if words, ok := pixelWords(row); ok {
		return e.exactWords(out, words, colors)
	}
	row = row[:4*len(out)]
	for x := 0; x < len(out); {
		c := binary.LittleEndian.Uint32(row[4*x:]) & 0xffffff // 0xBBGGRR
		reg, ok := e.register(sixelColor(c), colors)
		if !ok {
			return false
		}
		out[x] = reg
		for x++; x < len(out) && binary.LittleEndian.Uint32(row[4*x:])&0xffffff == c; x++ {
			out[x] = reg
		}
	}
	return true
}

// exactWords is exactRow for pixels read as words.
func (e *Encoder) exactWords(out []uint8, row []uint32, colors int) bool {
	row = row[:len(out)]
	for x := 0; x < len(row); {
		c := row[x] & 0xffffff // 0xBBGGRR
		reg, ok := e.register(sixelColor(c), colors)
		if !ok {
			return false
		}
		out[x] = reg
		for x++; x < len(row) && row[x]&0xffffff == c; x++ {
			out[x] = reg
		}
	}
	return true
}

// sixelColor is a colour (0xBBGGRR) as sixel says it: each channel in
// percent (0xBBGGRR, 0-100 each). Colours a percent apart look the same
// on the terminal, and a scaled picture's blends have many: as one
// register they leave fewer colours to a band, each of which costs a pass
// over it (the encoder's time grows with a band's colours times its width).
func sixelColor(c uint32) uint32 {
	return uint32(percent(c)) | uint32(percent(c>>8))<<8 | uint32(percent(c>>16))<<16
}

// register is sixel colour c's (0xBBGGRR, in percent) register, a new
// one if there is room.
func (e *Encoder) register(c uint32, colors int) (uint8, bool) {
	// A slot is 1<<32 | register<<24 | colour; zero is empty.
	slot := (c * 2654435761) >> 22 % paletteSlots
	for {
		v := e.table[slot]
		if v == 0 {
			if len(e.pal.colors) == colors {
				return 0, false
			}
			reg := uint8(len(e.pal.colors))
			e.pal.colors = append(e.pal.colors, c>>16|c&0xff00|(c&0xff)<<16)
			e.table[slot] = 1<<32 | uint64(reg)<<24 | uint64(c)
			e.slots = append(e.slots, uint16(slot))
			return reg, true
		}
		if uint32(v)&0xffffff == c {
			return uint8(v >> 24), true
		}
		slot = (slot + 1) % paletteSlots
	}
}
