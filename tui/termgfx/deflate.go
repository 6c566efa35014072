package termgfx

import (
	"bytes"
	"encoding/binary"
	"image"
	"math/bits"
)

// A zlib stream of a picture, made for speed: a screen's pictures are
// runs of one colour and rows like the row above, so those are the only
// matches looked for (deflate's distance 3, the pixel before, and one row
// up), and the block uses deflate's fixed Huffman codes, which cost no
// counting or tables per tile. A general compressor (zlib at its fastest
// level) spent most of a kitty frame hashing and building a Huffman table
// for each of the few hundred tiles, for output a third smaller.

// fixedCodes are deflate's fixed Huffman codes, bit-reversed for a
// writer that fills bytes from the low bit, with any extra bits folded in.
type fixedCodes struct {
	literal [256]code
	length  [maxMatch + 1]code // a match's length code and extra bits, from 3
}

// code is n bits to write, the first in the lowest bit.
type code struct {
	bits uint32
	n    uint8
}

const (
	maxMatch    = 258
	maxDistance = 32768
	// minMatch is the shortest match taken; four bytes are tested at once.
	minMatch = 4
)

// huffman is the fixed Huffman code of a literal/length symbol, reversed.
func huffman(sym int) code {
	var c, n int
	switch {
	case sym < 144:
		c, n = 0x30+sym, 8
	case sym < 256:
		c, n = 0x190+sym-144, 9
	case sym < 280:
		c, n = sym-256, 7
	default:
		c, n = 0xc0+sym-280, 8
	}
	return code{bits: uint32(bits.Reverse16(uint16(c)) >> (16 - n)), n: uint8(n)}
}

func makeFixedCodes() *fixedCodes {
	t := &fixedCodes{}
	for v := range 256 {
		t.literal[v] = huffman(v)
	}
	// Length codes 257..284 cover 3..257 in groups of four codes whose
	// extra bits grow by one a group; 285 is 258 exactly.
	sym, base, extra := 257, 3, 0
	for l := 3; l <= maxMatch; l++ {
		if l == maxMatch {
			t.length[l] = huffman(285)
			continue
		}
		if l >= base+1<<extra {
			base += 1 << extra
			sym++
			if sym >= 265 && (sym-265)%4 == 0 {
				extra++
			}
		}
		h := huffman(sym)
		t.length[l] = code{bits: h.bits | uint32(l-base)<<h.n, n: h.n + uint8(extra)}
	}
	return t
}

// distanceCode is the fixed code of a match distance (1..32768), with its
// extra bits.
func distanceCode(d int) code {
	if d <= 4 {
		return code{bits: uint32(bits.Reverse8(uint8(d-1)) >> 3), n: 5}
	}
	// Codes 4.. come in pairs with extra bits growing by one a pair.
	extra := bits.Len(uint(d-1)) - 2
	sym := 2*extra + 2 + (d-1)>>extra&1
	base := 1 + (2+(d-1)>>extra&1)<<extra
	return code{bits: uint32(bits.Reverse8(uint8(sym))>>3) | uint32(d-base)<<5, n: 5 + uint8(extra)}
}

// appendZlibRGB appends tile r of img (inside its bounds), as 24-bit RGB
// rows, as a zlib stream. It reads the RGBA pixels once: matches are found
// by comparing pixels, and the checksum is summed from them.
func appendZlibRGB(dst []byte, img *image.RGBA, r image.Rectangle, t *fixedCodes) []byte {
	z := zlibTile{r: r}
	z.start(dst)
	for y := r.Min.Y; y < r.Max.Y; y++ {
		z.addRow(img, y, t)
	}
	return z.finish()
}

// zlibTile is one tile's zlib stream in the making, so that the tiles of
// a band can be compressed a row of the picture at a time: in the order
// memory is read fastest, where a tile at a time jumps to the next row of
// the picture every few pixels (a 64x64 tile's 256 bytes a row: the kitty
// frame cost 2 ms more so).
type zlibTile struct {
	r       image.Rectangle
	bw      bitWriter
	sum     adler
	rowSum  adler // the checksum sums of the last row on its own
	run, up code
}

func (z *zlibTile) start(dst []byte) {
	dst = append(dst, 0x78, 0x01) // deflate, 32 KiB window, fastest; a multiple of 31
	z.run, z.up = distanceCode(3), distanceCode(3*z.r.Dx())
	z.bw = bitWriter{dst: dst, acc: 3, n: 3} // the last block (1), fixed codes (01)
	z.sum = adler{s1: 1}
}

// addRow adds the tile's row y.
func (z *zlibTile) addRow(img *image.RGBA, y int, t *fixedCodes) {
	w := z.r.Dx()
	row := img.Pix[img.PixOffset(z.r.Min.X, y):][:4*w]
	var prev, above []byte
	if y > z.r.Min.Y {
		prev = img.Pix[img.PixOffset(z.r.Min.X, y-1):][:4*w]
	}
	// A row like the one above, as screens have many, is found by one
	// compare at memory's speed: its checksum sums are the last row's,
	// and it goes as one match.
	same := prev != nil && bytes.Equal(row, prev)
	if !same {
		z.rowSum = adler{}.addRGB(row)
	}
	z.sum = z.sum.then(z.rowSum, 3*w)
	if 3*w <= maxDistance {
		above = prev
	}
	z.bw = deflateRow(z.bw, row, above, same && above != nil, t, z.run, z.up)
}

// finish ends the stream and returns it.
func (z *zlibTile) finish() []byte {
	bw := z.bw
	bw.n += 7 // the end of the block: code 256, seven zero bits
	dst := bw.dst
	for acc := bw.acc; bw.n > 0; bw.n -= min(bw.n, 8) {
		dst = append(dst, byte(acc))
		acc >>= 8
	}
	return binary.BigEndian.AppendUint32(dst, z.sum.value())
}

// bitWriter fills bytes from their low bit; acc holds n < 32 bits.
type bitWriter struct {
	dst []byte
	acc uint64
	n   uint
}

// maxMatchPixels is the most pixels one match covers: 258 bytes.
const maxMatchPixels = maxMatch / 3

// deflateRow codes one row of RGBA pixels as RGB: a run of the pixel
// before it, the row above (nil for none; sameAsAbove when the whole row
// is) or a pixel of literals. Pixels
// are compared with their alpha, eight bytes at a time: a screen's alpha
// is all opaque, and a difference there only costs a match.
//
//go:noinline // in its own registers: inlined into its caller it slows down
func deflateRow(bw bitWriter, row, above []byte, sameAsAbove bool, t *fixedCodes, run, up code) bitWriter {
	w := len(row) / 4
	acc, nacc, dst := bw.acc, bw.n, bw.dst
	x := 0
	if sameAsAbove {
		x = w
		dist := up
		if bytes.Equal(row[4:], row[:len(row)-4]) {
			dist = run // one colour, the row above's too: a run from its last pixel, in fewer bits
		}
		for n := w; n > 0; n -= maxMatchPixels {
			l := t.length[3*min(n, maxMatchPixels)]
			dst, acc, nacc = putBits(dst, acc, nacc, code{bits: l.bits | dist.bits<<l.n, n: l.n + dist.n})
		}
	}
	for x < w {
		// Whole pixels compared first: most of a busy row matches nothing.
		px := binary.LittleEndian.Uint32(row[4*x:])
		var prev uint32
		if x > 0 {
			prev = binary.LittleEndian.Uint32(row[4*x-4:])
		}
		limit := 4 * min(w-x, maxMatchPixels)
		n, dist := 0, run
		if x > 0 && prev == px {
			n = matchLen(row[4*x:][:limit], row[4*x-4:])
		}
		if above != nil && n < limit && binary.LittleEndian.Uint32(above[4*x:]) == px {
			if m := matchLen(row[4*x:][:limit], above[4*x:]); m > n {
				n, dist = m, up
			}
		}
		var c code
		if n /= 4; n > 0 {
			l := t.length[3*n]
			c = code{bits: l.bits | dist.bits<<l.n, n: l.n + dist.n}
			x += n
		} else {
			r, g, b := t.literal[uint8(px)], t.literal[uint8(px>>8)], t.literal[uint8(px>>16)]
			c = code{bits: r.bits | g.bits<<r.n | b.bits<<(r.n+g.n), n: r.n + g.n + b.n}
			// A gradient changes a channel or two: the pixel's last bytes
			// may be the pixel before's, and the pixels after this one.
			if same := sameTail(prev, px); x > 0 && same > 0 && x+1 < w && binary.LittleEndian.Uint32(row[4*x+4:]) == px {
				k := matchLen(row[4*x+4:][:4*min(w-x-1, maxMatchPixels-1)], row[4*x:]) / 4
				c = code{bits: r.bits, n: r.n}
				if same == 1 {
					c = code{bits: r.bits | g.bits<<r.n, n: r.n + g.n}
				}
				dst, acc, nacc = putBits(dst, acc, nacc, c)
				l := t.length[same+3*k]
				c = code{bits: l.bits | run.bits<<l.n, n: l.n + run.n}
				x += k
			}
			x++
		}
		dst, acc, nacc = putBits(dst, acc, nacc, c)
	}
	return bitWriter{dst: dst, acc: acc, n: nacc}
}

// putBits adds code c after the n bits held in acc, and writes out the
// low 32 when they fill up. The bits go through plain values, not a
// bitWriter: the loop keeps them in registers so (it inlines).
func putBits(dst []byte, acc uint64, n uint, c code) ([]byte, uint64, uint) {
	acc |= uint64(c.bits) << n
	n += uint(c.n)
	if n >= 32 {
		dst = binary.LittleEndian.AppendUint32(dst, uint32(acc))
		acc >>= 32
		n -= 32
	}
	return dst, acc, n
}

// sameTail is how many of a pixel's last bytes (green and blue, or blue)
// are those of the pixel before it: 2, 1 or 0.
func sameTail(prev, px uint32) int {
	switch d := prev ^ px; {
	case d&0xffff00 == 0:
		return 2
	case d&0xff0000 == 0:
		return 1
	}
	return 0
}

// matchLen is how many bytes a and b have in common from the start; a is
// no longer than b.
func matchLen(a, b []byte) int {
	b = b[:len(a)]
	n := 0
	for n+8 <= len(a) {
		if x := binary.LittleEndian.Uint64(a[n:]) ^ binary.LittleEndian.Uint64(b[n:]); x != 0 {
			return n + bits.TrailingZeros64(x)/8
		}
		n += 8
	}
	for n < len(a) && a[n] == b[n] {
		n++
	}
	return n
}

// adler is zlib's checksum of the bytes so far, its two sums kept below
// the modulus between rows.
type adler struct{ s1, s2 uint64 }

const adlerMod = 65521

// addRGB adds a row of RGBA pixels' RGB bytes. Two pixels (six bytes) at
// a time go into sums per byte position, in 16-bit lanes: ones, the bytes'
// sums, for s1, and twos, the sums of ones after each step, which weigh
// each step's bytes by the steps left, for s2. Only adds in the loop; the
// lanes are folded into s1 and s2 every adlerBlock steps, before twos can
// overflow.
func (a adler) addRGB(row []byte) adler {
	const lanes = 0x00ff00ff00ff00ff
	for len(row) >= 8 {
		steps := min(len(row)/8, adlerBlock)
		var onesRB, onesG, twosRB, twosG uint64
		block := row[:8*steps]
		for j := range steps {
			v := binary.LittleEndian.Uint64(block[8*j:]) // two RGBA pixels
			onesRB += v & lanes                          // R0, B0, R1, B1: bytes 0, 2, 3, 5 of six
			onesG += v >> 8 & 0x000000ff000000ff         // G0, G1: bytes 1, 4
			twosRB += onesRB
			twosG += onesG
		}
		row = row[8*steps:]
		// Over the block of 6*steps bytes, byte q of step j adds itself
		// to s2 6*steps-(6j+q) times: 6 times the steps left, less q.
		k := uint64(steps)
		a.s2 += 6*k*a.s1 + 6*(laneSum(twosRB)+laneSum(twosG)) -
			(2*lane16(onesRB, 1) + 3*lane16(onesRB, 2) + 5*lane16(onesRB, 3) + lane16(onesG, 0) + 4*lane16(onesG, 2))
		a.s1 += laneSum(onesRB) + laneSum(onesG)
	}
	if len(row) >= 4 {
		r, g, b := uint64(row[0]), uint64(row[1]), uint64(row[2])
		a.s2 += 3*a.s1 + 3*r + 2*g + b
		a.s1 += r + g + b
	}
	return adler{s1: a.s1 % adlerMod, s2: a.s2 % adlerMod}
}

// adlerBlock is the most steps whose sums fit the lanes: twos reach
// 255 * steps * (steps+1) / 2 < 65536.
const adlerBlock = 22

func lane16(v uint64, i int) uint64 { return v >> (16 * i) & 0xffff }

func laneSum(v uint64) uint64 { return lane16(v, 0) + lane16(v, 1) + lane16(v, 2) + lane16(v, 3) }

// then is the checksum of a's bytes followed by n bytes whose own sums
// (from zero) are b: their s2 also counts a's s1 once a byte.
func (a adler) then(b adler, n int) adler {
	return adler{s1: (a.s1 + b.s1) % adlerMod, s2: (a.s2 + uint64(n)%adlerMod*a.s1 + b.s2) % adlerMod}
}

func (a adler) value() uint32 { return uint32(a.s2<<16 | a.s1) }
