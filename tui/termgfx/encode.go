package termgfx

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"image"
	"image/png"
	"strconv"
)

// Encoder turns tiles of a picture into escape sequences. It keeps scratch
// buffers between calls; one Encoder per goroutine.
type Encoder struct {
	rgb   []byte
	idx   []uint8
	bits  []byte
	pal   palette
	cube  *cube // the fixed palette's lookup, made on the first tile that needs it
	png   bytes.Buffer
	z     [][]byte // the zlib stream of each tile of a band
	band  []zlibTile
	one   [1]image.Rectangle
	codes *fixedCodes // deflate's, made on the first kitty tile
	pngE  png.Encoder
	table [paletteSlots]uint64
	slots []uint16 // the table's slots in use
}

// KittyDeleteAll removes every image this program placed (and frees their
// data): on exit, and before a new layout.
const KittyDeleteAll = "\x1b_Ga=d,d=A,q=2\x1b\\"

// kittyChunk is the most base64 a kitty escape may carry.
const kittyChunk = 4096

// Kitty appends tile r of img as kitty image id, placed at the cursor
// (which stays where it is). The picture goes as 24-bit RGB, deflated
// (a screen of text shrinks some fiftyfold); replies are off (q=2), so
// nothing comes back to be mistaken for typing.
func (e *Encoder) Kitty(dst []byte, img *image.RGBA, r image.Rectangle, id uint32) []byte {
	e.one[0] = r
	e.KittyBand(img, e.one[:])
	return e.KittyTile(dst, 0, id)
}

// KittyBand compresses tiles of img that share their rows (a band of a
// grid of tiles, left to right), a row of the picture at a time, for
// KittyTile to append each.
func (e *Encoder) KittyBand(img *image.RGBA, tiles []image.Rectangle) {
	if e.codes == nil {
		e.codes = makeFixedCodes()
	}
	e.band = e.band[:0]
	rows := image.Rectangle{}
	for i, r := range tiles {
		r = r.Intersect(img.Rect)
		if len(e.z) <= i {
			e.z = append(e.z, nil)
		}
		e.band = append(e.band, zlibTile{r: r})
		e.band[i].start(e.z[i][:0])
		rows = rows.Union(r)
	}
	for y := rows.Min.Y; y < rows.Max.Y; y++ {
		for i := range e.band {
			if z := &e.band[i]; y >= z.r.Min.Y && y < z.r.Max.Y {
				z.addRow(img, y, e.codes)
			}
		}
	}
	for i := range e.band {
		e.z[i] = e.band[i].finish()
	}
}

// KittyTile appends tile i of the last KittyBand as kitty image id, at
// the cursor.
func (e *Encoder) KittyTile(dst []byte, i int, id uint32) []byte {
	z, r := e.z[i], e.band[i].r
	if need := len(dst) + base64.StdEncoding.EncodedLen(len(z)) + (len(z)/(kittyChunk/4*3)+1)*24 + 64; cap(dst) < need {
		dst = append(make([]byte, 0, need), dst...)
	}
	const raw = kittyChunk / 4 * 3
	for off := 0; off < len(z) || off == 0; off += raw {
		end := min(off+raw, len(z))
		dst = append(dst, "\x1b_G"...)
		if off == 0 {
			dst = append(dst, "a=T,f=24,o=z,s="...)
			dst = strconv.AppendInt(dst, int64(r.Dx()), 10)
			dst = append(dst, ",v="...)
			dst = strconv.AppendInt(dst, int64(r.Dy()), 10)
			dst = append(dst, ",i="...)
			dst = strconv.AppendUint(dst, uint64(id), 10)
			dst = append(dst, ",p=1,C=1,"...)
		}
		dst = append(dst, "q=2,m="...)
		if end < len(z) {
			dst = append(dst, '1')
		} else {
			dst = append(dst, '0')
		}
		dst = append(dst, ';')
		dst = base64.StdEncoding.AppendEncode(dst, z[off:end])
		dst = append(dst, "\x1b\\"...)
		if end >= len(z) {
			break
		}
	}
	return dst
}

// RGB returns tile r of img as packed 24-bit RGB, in a buffer the next
// call reuses.
func (e *Encoder) RGB(img *image.RGBA, r image.Rectangle) []byte {
	r = r.Intersect(img.Rect)
	w := r.Dx()
	n := 3 * w * r.Dy()
	if cap(e.rgb) < n+rgbSlack {
		e.rgb = make([]byte, n+rgbSlack)
	}
	e.rgb = e.rgb[:n+rgbSlack]
	for y := r.Min.Y; y < r.Max.Y; y++ {
		i := 3 * w * (y - r.Min.Y)
		rgbRow(e.rgb[i:i+3*w+rgbSlack], img.Pix[img.PixOffset(r.Min.X, y):][:4*w])
	}
	e.rgb = e.rgb[:n]
	return e.rgb
}

// rgbSlack is the room past a row that rgbRow writes over: whole words
// are faster than three bytes a pixel.
const rgbSlack = 2

// rgbRow packs RGBA pixels as RGB, two at a time: dst has 3 bytes a pixel
// and rgbSlack more.
func rgbRow(dst, rgba []byte) {
	for len(rgba) >= 8 && len(dst) >= 8 {
		v := binary.LittleEndian.Uint64(rgba)
		binary.LittleEndian.PutUint64(dst, v&0xffffff|v>>8&0xffffff000000)
		rgba, dst = rgba[8:], dst[6:]
	}
	if len(rgba) >= 4 && len(dst) >= 4 {
		binary.LittleEndian.PutUint32(dst, binary.LittleEndian.Uint32(rgba))
	}
}

// KittyFile appends the escape that shows a w x h RGB picture the caller
// wrote to path (a temporary file, which the terminal reads and deletes)
// as image id at the cursor, scaled by the terminal to cols x rows cells
// (when they are not 0).
// Only a terminal on this machine can read it (Caps.KittyFiles); the
// picture's bytes never cross the terminal's stream.
func KittyFile(dst []byte, path string, w, h int, id uint32, cols, rows int) []byte {
	dst = append(dst, "\x1b_Ga=T,f=24,t=t,s="...)
	dst = strconv.AppendInt(dst, int64(w), 10)
	dst = append(dst, ",v="...)
	dst = strconv.AppendInt(dst, int64(h), 10)
	dst = append(dst, ",i="...)
	dst = strconv.AppendUint(dst, uint64(id), 10)
	if cols > 0 && rows > 0 { // else at its own size
		dst = append(dst, ",c="...)
		dst = strconv.AppendInt(dst, int64(cols), 10)
		dst = append(dst, ",r="...)
		dst = strconv.AppendInt(dst, int64(rows), 10)
	}
	dst = append(dst, ",p=1,C=1,q=2;"...)
	dst = base64.StdEncoding.AppendEncode(dst, []byte(path))
	return append(dst, "\x1b\\"...)
}

// ITerm appends tile r of img as an iTerm2 inline image (a PNG) at the
// cursor, sized in pixels so the terminal does not scale it.
func (e *Encoder) ITerm(dst []byte, img *image.RGBA, r image.Rectangle) []byte {
	e.png.Reset()
	e.pngE.CompressionLevel = png.BestSpeed
	opaque := img.SubImage(r.Intersect(img.Rect))
	if err := e.pngE.Encode(&e.png, opaque); err != nil {
		return dst // an RGBA image always encodes
	}
	dst = append(dst, "\x1b]1337;File=inline=1;size="...)
	dst = strconv.AppendInt(dst, int64(e.png.Len()), 10)
	dst = append(dst, ";width="...)
	dst = strconv.AppendInt(dst, int64(r.Dx()), 10)
	dst = append(dst, "px;height="...)
	dst = strconv.AppendInt(dst, int64(r.Dy()), 10)
	dst = append(dst, "px;preserveAspectRatio=0;doNotMoveCursor=1:"...)
	dst = base64.StdEncoding.AppendEncode(dst, e.png.Bytes())
	return append(dst, '\a')
}
