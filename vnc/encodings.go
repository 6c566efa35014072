package vnc

import (
	"bytes"
	"compress/zlib"
	"encoding/binary"
	"fmt"
	"image"
	"io"

	govnc "github.com/mitchellh/go-vnc"
)

// Encoding numbers (RFC 6143, section 7.7).
const (
	encRaw         int32 = 0
	encZlib        int32 = 6
	encDesktopSize int32 = -223
)

// bytesPerPixel is fixed by the pixel format we ask for (see pixelFormat).
const bytesPerPixel = 4

// pixelFormat lays pixels on the wire as the bytes R, G, B, pad: the
// memory order of image.RGBA, so a decoder copies rows as they come.
var pixelFormat = govnc.PixelFormat{
	BPP: 32, Depth: 24, BigEndian: false, TrueColor: true,
	RedMax: 255, GreenMax: 255, BlueMax: 255, RedShift: 0, GreenShift: 8, BlueShift: 16,
}

// rectUpdate is one decoded rectangle: pixels to draw, or a new size.
type rectUpdate struct {
	rect   image.Rectangle
	pixels []byte // rect's pixels, R G B pad, row after row; nil for a resize
	resize bool
}

func rectOf(x, y, w, h uint16) image.Rectangle {
	return image.Rect(int(x), int(y), int(x)+int(w), int(y)+int(h))
}

func decodeRaw(rect image.Rectangle, rd io.Reader) (*rectUpdate, error) {
	pixels := make([]byte, rect.Dx()*rect.Dy()*bytesPerPixel)
	if _, err := io.ReadFull(rd, pixels); err != nil {
		return nil, fmt.Errorf("read raw rectangle %v: %w", rect, err)
	}
	return &rectUpdate{rect: rect, pixels: pixels}, nil
}

// zlibStream is raw pixels through one zlib stream that lasts the whole
// connection: each rectangle brings the next piece of it.
type zlibStream struct {
	stream  *chunkReader
	inflate io.ReadCloser
}

func newZlibStream() *zlibStream { return &zlibStream{stream: &chunkReader{}} }

func (z *zlibStream) decode(rect image.Rectangle, rd io.Reader) (*rectUpdate, error) {
	var n uint32
	if err := binary.Read(rd, binary.BigEndian, &n); err != nil {
		return nil, fmt.Errorf("read zlib rectangle length: %w", err)
	}
	if n > 64<<20 {
		return nil, fmt.Errorf("zlib rectangle of %d bytes: the server is confused", n)
	}
	chunk := make([]byte, n)
	if _, err := io.ReadFull(rd, chunk); err != nil {
		return nil, fmt.Errorf("read zlib rectangle: %w", err)
	}
	z.stream.add(chunk)
	if z.inflate == nil {
		var err error
		if z.inflate, err = zlib.NewReader(z.stream); err != nil {
			return nil, fmt.Errorf("start zlib stream: %w", err)
		}
	}
	pixels := make([]byte, rect.Dx()*rect.Dy()*bytesPerPixel)
	if _, err := io.ReadFull(z.inflate, pixels); err != nil {
		return nil, fmt.Errorf("inflate zlib rectangle %v: %w", rect, err)
	}
	return &rectUpdate{rect: rect, pixels: pixels}, nil
}

// chunkReader hands out the pieces of a stream as they arrive. It is a
// ByteReader, so the inflater reads exactly what it needs and never waits
// for a piece that has not come yet.
type chunkReader struct{ buf bytes.Buffer }

func (c *chunkReader) add(p []byte)               { c.buf.Write(p) }
func (c *chunkReader) Read(p []byte) (int, error) { return c.buf.Read(p) }
func (c *chunkReader) ReadByte() (byte, error)    { return c.buf.ReadByte() }

// apply draws u into fb, or returns a new framebuffer for a resize.
func apply(fb *image.RGBA, u *rectUpdate) (*image.RGBA, image.Rectangle) {
	if u.resize {
		return image.NewRGBA(u.rect), u.rect
	}
	dst := u.rect.Intersect(fb.Rect)
	if dst.Empty() {
		return fb, dst
	}
	w := u.rect.Dx() * bytesPerPixel
	for y := dst.Min.Y; y < dst.Max.Y; y++ {
		src := u.pixels[(y-u.rect.Min.Y)*w:][:w]
		src = src[(dst.Min.X-u.rect.Min.X)*bytesPerPixel : (dst.Max.X-u.rect.Min.X)*bytesPerPixel]
		row := fb.Pix[fb.PixOffset(dst.Min.X, y):][:len(src)]
		copy(row, src)
		for i := 3; i < len(row); i += 4 {
			row[i] = 0xff // the pad byte becomes opaque alpha
		}
	}
	return fb, dst
}
