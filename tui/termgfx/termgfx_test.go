package termgfx

import (
	"bytes"
	stdzlib "compress/zlib"
	"encoding/base64"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"io"
	"math/bits"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/klauspost/compress/zlib"
)

func TestParseReplies(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     Caps
		done     bool
	}{
		{"xterm -ti vt340", "\x1bP>|XTerm(379)\x1b\\\x1b[6;13;6t\x1b[4;312;480t\x1b[?1;0;16S\x1b[?2;0;1000;1000S\x1b[?1016;2$y\x1b[?63;1;2;4;6;9;15;16;22;28;29c",
			Caps{Answered: true, Sixel: true, Cell: image.Pt(6, 13), Screen: image.Pt(480, 312), SixelColors: 16, SixelMax: image.Pt(1000, 1000), Version: "XTerm(379)", PixelMouse: true}, true},
		{"kitty", "\x1b_Gi=31;OK\x1b\\\x1bP>|kitty(0.26.5)\x1b\\\x1b[6;20;10t\x1b[?62;c",
			Caps{Answered: true, Kitty: true, Cell: image.Pt(10, 20), Version: "kitty(0.26.5)"}, true},
		{"tmux 3.3a: no graphics of its own", "\x1b[?1;2c", Caps{Answered: true}, true},
		{"kitty refuses", "\x1b_Gi=31;ENOTSUPPORTED:no\x1b\\\x1b[?62c", Caps{Answered: true}, true},
		{"DA1 not yet in", "\x1b[6;16;8t\x1b[?62", Caps{Cell: image.Pt(8, 16)}, false},
		{"WezTerm", "\x1bP>|WezTerm 20240203\x1b\\\x1b[?65;4;6;18;22c", Caps{Answered: true, Sixel: true, ITerm: true, Version: "WezTerm 20240203"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, done := ParseReplies([]byte(tc.in))
			if got != tc.want || done != tc.done {
				t.Errorf("ParseReplies = %+v, %v\nwant %+v, %v", got, done, tc.want, tc.done)
			}
		})
	}
	if p := (Caps{Kitty: true, Sixel: true}).Best(); p != Blocks {
		t.Errorf("without a cell size Best = %v, want blocks", p)
	}
	if p := (Caps{Kitty: true, Sixel: true, Cell: image.Pt(8, 16)}).Best(); p != Kitty {
		t.Errorf("Best = %v, want kitty", p)
	}
}

// desktop makes a picture like a desktop: flat areas, text-like strokes
// in a few colours, and a gradient (many colours).
func desktop(w, h int) *image.RGBA {
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		for x := range w {
			c := color.RGBA{40, 44, 52, 255}
			switch {
			case y < h/8:
				c = color.RGBA{uint8(x * 255 / w), uint8(y * 255 / (h / 8)), 128, 255}
			case (x/7+y/13)%5 == 0 && x%7 < 5 && y%13 < 9:
				c = color.RGBA{220, 220, 200, 255}
			case x > w*3/4:
				c = color.RGBA{170, 85, 0, 255}
			}
			img.SetRGBA(x, y, c)
		}
	}
	return img
}

// kittyImage decodes what Kitty wrote: the first escape's keys and the
// picture, checking the chunking rules on the way.
func kittyImage(t *testing.T, b []byte) (map[string]string, *image.RGBA) {
	t.Helper()
	var keys map[string]string
	var data []byte
	for len(b) > 0 {
		if !bytes.HasPrefix(b, []byte("\x1b_G")) {
			t.Fatalf("not a kitty escape: %q", b[:min(20, len(b))])
		}
		end := bytes.Index(b, []byte("\x1b\\"))
		ctl, payload, _ := strings.Cut(string(b[3:end]), ";")
		if len(payload) > kittyChunk {
			t.Fatalf("a chunk of %d bytes, over kitty's %d", len(payload), kittyChunk)
		}
		k := map[string]string{}
		for _, kv := range strings.Split(ctl, ",") {
			a, v, _ := strings.Cut(kv, "=")
			k[a] = v
		}
		if keys == nil {
			keys = k
		}
		raw, err := base64.StdEncoding.DecodeString(payload)
		if err != nil {
			t.Fatal(err)
		}
		data = append(data, raw...)
		b = b[end+2:]
		if k["m"] == "0" {
			if len(b) > 0 {
				t.Fatalf("bytes after the last chunk: %q", b)
			}
			break
		}
	}
	if keys["o"] == "z" {
		zr, err := zlib.NewReader(bytes.NewReader(data))
		if err != nil {
			t.Fatal(err)
		}
		if data, err = io.ReadAll(zr); err != nil {
			t.Fatal(err)
		}
	}
	w, _ := strconv.Atoi(keys["s"])
	h, _ := strconv.Atoi(keys["v"])
	if len(data) != w*h*3 {
		t.Fatalf("%d bytes of RGB for %dx%d", len(data), w, h)
	}
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	for i := range w * h {
		copy(img.Pix[4*i:], data[3*i:3*i+3])
		img.Pix[4*i+3] = 0xff
	}
	return keys, img
}

func TestKittyTileDecodesToThePixels(t *testing.T) {
	img := desktop(300, 200)
	r := image.Rect(40, 30, 240, 190)
	var e Encoder
	keys, got := kittyImage(t, e.Kitty(nil, img, r, 77))
	for k, v := range map[string]string{"a": "T", "f": "24", "o": "z", "i": "77", "p": "1", "C": "1", "q": "2", "s": "200", "v": "160"} {
		if keys[k] != v {
			t.Errorf("key %s=%q, want %q", k, keys[k], v)
		}
	}
	if n := differing(got, img.SubImage(r).(*image.RGBA), 0); n != 0 {
		t.Errorf("%d pixels differ from the tile", n)
	}
}

// sixelImage is a small sixel decoder: enough to read back what Sixel writes.
func sixelImage(t *testing.T, b []byte) *image.RGBA {
	t.Helper()
	s := string(b)
	if !strings.HasPrefix(s, "\x1bP0;1;0q\"1;1;") || !strings.HasSuffix(s, "\x1b\\") {
		t.Fatalf("not a sixel image: %q", s[:min(30, len(s))])
	}
	s = strings.TrimSuffix(s[len("\x1bP0;1;0q\"1;1;"):], "\x1b\\")
	var w, h int
	fmt.Sscanf(s, "%d;%d", &w, &h)
	s = strings.TrimLeft(s, "0123456789;")
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	regs := map[int]color.RGBA{}
	var cur color.RGBA
	x, band := 0, 0
	num := func() int {
		i := 0
		for i < len(s) && s[i] >= '0' && s[i] <= '9' {
			i++
		}
		n, _ := strconv.Atoi(s[:i])
		s = s[i:]
		return n
	}
	for len(s) > 0 {
		c := s[0]
		s = s[1:]
		switch {
		case c == '#':
			n := num()
			if strings.HasPrefix(s, ";2;") {
				s = s[3:]
				r := num()
				s = s[1:]
				g := num()
				s = s[1:]
				bl := num()
				regs[n] = color.RGBA{uint8((r*255 + 50) / 100), uint8((g*255 + 50) / 100), uint8((bl*255 + 50) / 100), 255}
			}
			cur = regs[n]
		case c == '$':
			x = 0
		case c == '-':
			x, band = 0, band+6
		case c == '!':
			n := num()
			if n == 0 {
				t.Fatalf("a repeat of 0, which terminals take as 1")
			}
			ch := s[0]
			s = s[1:]
			for range n {
				put(img, x, band, ch-63, cur)
				x++
			}
		case c >= 63 && c <= 126:
			put(img, x, band, c-63, cur)
			x++
		default:
			t.Fatalf("unexpected byte %q in sixel data", c)
		}
	}
	return img
}

func put(img *image.RGBA, x, y int, bits byte, c color.RGBA) {
	for i := range 6 {
		if bits&(1<<i) != 0 {
			if !(image.Point{x, y + i}).In(img.Rect) {
				panic(fmt.Sprintf("sixel pixel (%d,%d) outside %v", x, y+i, img.Rect))
			}
			img.SetRGBA(x, y+i, c)
		}
	}
}

// differing counts pixels whose channels differ by more than tol.
func differing(a, b *image.RGBA, tol int) int {
	if a.Rect.Size() != b.Rect.Size() {
		return a.Rect.Dx() * a.Rect.Dy()
	}
	n := 0
	for y := range a.Rect.Dy() {
		for x := range a.Rect.Dx() {
			p, q := a.RGBAAt(a.Rect.Min.X+x, a.Rect.Min.Y+y), b.RGBAAt(b.Rect.Min.X+x, b.Rect.Min.Y+y)
			if abs(int(p.R)-int(q.R)) > tol || abs(int(p.G)-int(q.G)) > tol || abs(int(p.B)-int(q.B)) > tol {
				n++
			}
		}
	}
	return n
}

func abs(v int) int { return max(v, -v) }

func TestSixelKeepsAFewColoursExactly(t *testing.T) {
	img := desktop(300, 200)
	r := image.Rect(0, 100, 290, 197) // no gradient: four colours; a height that is no multiple of 6
	var e Encoder
	got := sixelImage(t, e.Sixel(nil, img, r, 256))
	// Sixel says colours in percent: within 1.3 of a step.
	if n := differing(got, img.SubImage(r).(*image.RGBA), 2); n != 0 {
		t.Errorf("%d pixels differ from the tile", n)
	}
	// The gradient has more colours than registers: the colour cube
	// keeps every pixel within half a cube step.
	r = image.Rect(0, 0, 300, 25)
	got = sixelImage(t, e.Sixel(nil, img, r, 256))
	if n := differing(got, img.SubImage(r).(*image.RGBA), 26); n != 0 {
		t.Errorf("%d pixels of the gradient are off by more than half a cube step", n)
	}
}

func TestITermTileIsThePNGOfTheTile(t *testing.T) {
	img := desktop(100, 80)
	r := image.Rect(10, 10, 60, 50)
	var e Encoder
	s := string(e.ITerm(nil, img, r))
	head, payload, ok := strings.Cut(strings.TrimSuffix(strings.TrimPrefix(s, "\x1b]1337;File="), "\a"), ":")
	if !ok || !strings.Contains(head, "width=50px;height=40px") {
		t.Fatalf("header %q", head)
	}
	raw, _ := base64.StdEncoding.DecodeString(payload)
	p, err := png.Decode(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	got := image.NewRGBA(image.Rect(0, 0, 50, 40))
	for y := range 40 {
		for x := range 50 {
			got.Set(x, y, p.At(p.Bounds().Min.X+x, p.Bounds().Min.Y+y))
		}
	}
	if n := differing(got, img.SubImage(r).(*image.RGBA), 0); n != 0 {
		t.Errorf("%d pixels differ", n)
	}
}

func TestScaleAveragesAndRedoesOnlyTheDirtyPart(t *testing.T) {
	src := image.NewRGBA(image.Rect(0, 0, 40, 40))
	for y := range 40 {
		for x := range 40 {
			if (x+y)%2 == 0 {
				src.SetRGBA(x, y, color.RGBA{255, 255, 255, 255})
			} else {
				src.SetRGBA(x, y, color.RGBA{0, 0, 0, 255})
			}
		}
	}
	dst := image.NewRGBA(image.Rect(0, 0, 15, 15)) // 8/3 source pixels an output pixel
	var s Scaler
	if got := s.Scale(dst, src, src.Rect); got != dst.Rect {
		t.Errorf("a whole frame redid %v, want %v", got, dst.Rect)
	}
	for y := 1; y < 14; y++ {
		for x := 1; x < 14; x++ {
			if c := dst.RGBAAt(x, y); abs(int(c.R)-128) > 24 {
				t.Fatalf("output (%d,%d) = %v, want about mid grey", x, y, c)
			}
		}
	}
	before := append([]byte(nil), dst.Pix...)
	src.SetRGBA(39, 39, color.RGBA{255, 0, 0, 255})
	got := s.Scale(dst, src, image.Rect(39, 39, 40, 40))
	if !got.In(image.Rect(13, 13, 15, 15)) || got.Empty() {
		t.Errorf("a corner pixel redid %v", got)
	}
	if dst.RGBAAt(14, 14) == (color.RGBA{before[len(before)-4], before[len(before)-3], before[len(before)-2], 255}) {
		t.Error("the changed corner was not redrawn")
	}
	// Same size: a copy.
	same := image.NewRGBA(src.Rect)
	s.Scale(same, src, src.Rect)
	if !bytes.Equal(same.Pix, src.Pix) {
		t.Error("scaling to the same size changed pixels")
	}
}

func benchTiles(b *testing.B, enc func(e *Encoder, dst []byte, img *image.RGBA, r image.Rectangle) []byte) {
	img := desktop(1280, 800)
	var e Encoder
	var buf []byte
	const tile = 64 // tiles as the view sends them
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := cpuTime()
	var n int
	for range b.N {
		for y := 0; y < 800; y += tile {
			for x := 0; x < 1280; x += tile {
				buf = enc(&e, buf[:0], img, image.Rect(x, y, x+tile, y+tile))
				n += len(buf)
			}
		}
	}
	perFrame := b.Elapsed().Seconds() / float64(b.N)
	b.ReportMetric(1/perFrame, "frames/s")
	// A core's share at 30 frames/s, from the CPU time the process used:
	// other work on the machine slows the clock, not this.
	b.ReportMetric((cpuTime()-cpu0).Seconds()/float64(b.N)*30*100, "%core@30fps")
	b.ReportMetric(float64(n)/float64(b.N)/1e6, "MB/frame")
}

// The whole 1280x800 screen changing, in 64x64 tiles: the worst case.
func BenchmarkKitty1280x800(b *testing.B) {
	benchTiles(b, func(e *Encoder, dst []byte, img *image.RGBA, r image.Rectangle) []byte {
		return e.Kitty(dst, img, r, 1)
	})
}

func BenchmarkSixel1280x800(b *testing.B) {
	benchTiles(b, func(e *Encoder, dst []byte, img *image.RGBA, r image.Rectangle) []byte {
		return e.Sixel(dst, img, r, 256)
	})
}

func BenchmarkITerm1280x800(b *testing.B) {
	benchTiles(b, func(e *Encoder, dst []byte, img *image.RGBA, r image.Rectangle) []byte {
		return e.ITerm(dst, img, r)
	})
}

// 1280x800 into a 1000x625 window, all of it changed.
func BenchmarkScale1280x800To1000x625(b *testing.B) {
	src := desktop(1280, 800)
	dst := image.NewRGBA(image.Rect(0, 0, 1000, 625))
	var s Scaler
	b.ResetTimer()
	cpu0 := cpuTime()
	for range b.N {
		s.Scale(dst, src, src.Rect)
	}
	b.ReportMetric((cpuTime()-cpu0).Seconds()/float64(b.N)*30*100, "%core@30fps")
}

// TestScaleMatchesAreaAveraging checks the fast paths against the plain
// definition: each output pixel the coverage-weighted mean of the source.
func TestScaleMatchesAreaAveraging(t *testing.T) {
	src := desktop(1280, 800)
	for _, size := range []image.Point{{1000, 625}, {700, 437}, {300, 190}, {1280, 700}, {640, 800}, {1279, 100}} {
		dst := image.NewRGBA(image.Rectangle{Max: size})
		var s Scaler
		s.Scale(dst, src, src.Rect)
		fx, fy := float64(1280)/float64(size.X), float64(800)/float64(size.Y)
		worst := 0
		for oy := 0; oy < size.Y; oy += min(7, size.Y-1) {
			for ox := 0; ox < size.X; ox += 1 + size.X/200 {
				var sum [3]float64
				var area float64
				for sy := int(float64(oy) * fy); float64(sy) < float64(oy+1)*fy; sy++ {
					cy := min(float64(sy+1), float64(oy+1)*fy) - max(float64(sy), float64(oy)*fy)
					for sx := int(float64(ox) * fx); float64(sx) < float64(ox+1)*fx; sx++ {
						cx := min(float64(sx+1), float64(ox+1)*fx) - max(float64(sx), float64(ox)*fx)
						p := src.RGBAAt(sx, sy)
						sum[0] += cx * cy * float64(p.R)
						sum[1] += cx * cy * float64(p.G)
						sum[2] += cx * cy * float64(p.B)
						area += cx * cy
					}
				}
				got := dst.RGBAAt(ox, oy)
				for c, v := range []uint8{got.R, got.G, got.B} {
					worst = max(worst, abs(int(v)-int(sum[c]/area+0.5)))
				}
			}
		}
		if worst > 2 {
			t.Errorf("1280x800 to %v: a channel off by %d from the area average", size, worst)
		}
	}
}

// cpuTime is the CPU time this process has used, user and system.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// TestZlibOfTilesDecodesToTheirRGB checks the kitty compressor against Go's
// own zlib reader (which checks the checksum) on pictures that take each of
// its paths: runs, rows like the row above, gradients, noise, and rows too
// long for deflate's window.
func TestZlibOfTilesDecodesToTheirRGB(t *testing.T) {
	noise := image.NewRGBA(image.Rect(0, 0, 300, 40))
	seed := uint32(1)
	for i := range noise.Pix {
		seed = seed*1664525 + 1013904223
		noise.Pix[i] = byte(seed >> 24)
	}
	stripes := image.NewRGBA(image.Rect(0, 0, 11000, 3)) // a row of 33000 bytes: no row above in reach
	for x := range 11000 {
		for y := range 3 {
			stripes.SetRGBA(x, y, color.RGBA{uint8(x / 100), uint8(x / 7), 9, 255})
		}
	}
	flat := image.NewRGBA(image.Rect(0, 0, 500, 300))
	for i := range flat.Pix {
		flat.Pix[i] = 0x80
	}
	desk := desktop(1280, 800)
	var e Encoder
	for _, tc := range []struct {
		name string
		img  *image.RGBA
		r    image.Rectangle
	}{
		{"one pixel", desk, image.Rect(5, 5, 6, 6)},
		{"one column", desk, image.Rect(5, 0, 6, 200)},
		{"two columns", desk, image.Rect(500, 50, 502, 300)},
		{"a tile of the gradient", desk, image.Rect(64, 0, 128, 64)},
		{"a tile of text", desk, image.Rect(640, 320, 704, 384)},
		{"an odd tile", desk, image.Rect(3, 97, 68, 162)},
		{"the whole desktop", desk, desk.Rect},
		{"noise", noise, noise.Rect},
		{"flat", flat, flat.Rect},
		{"rows past the window", stripes, stripes.Rect},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if e.codes == nil {
				e.codes = makeFixedCodes()
			}
			z := appendZlibRGB(nil, tc.img, tc.r, e.codes)
			zr, err := stdzlib.NewReader(bytes.NewReader(z))
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(zr)
			if err != nil {
				t.Fatalf("decoding: %v", err)
			}
			if want := e.RGB(tc.img, tc.r); !bytes.Equal(got, want) {
				t.Fatalf("decoded %d bytes, not the tile's %d bytes of RGB", len(got), len(want))
			}
			if n := tc.r.Dx() * tc.r.Dy(); tc.img == flat && len(z) > 3*n/100 { // a hundredfold
				t.Errorf("a flat picture of %d pixels took %d bytes", n, len(z))
			}
		})
	}
}

func TestDeflateDistanceCodes(t *testing.T) {
	// RFC 1951 3.2.5: code, extra bits and first distance of a few.
	for _, tc := range []struct{ d, sym, extra, base int }{
		{1, 0, 0, 1}, {4, 3, 0, 4}, {5, 4, 1, 5}, {8, 5, 1, 7}, {192, 14, 6, 129}, {193, 15, 6, 193},
		{3840, 23, 10, 3073}, {32768, 29, 13, 24577},
	} {
		c := distanceCode(tc.d)
		sym := int(bits.Reverse8(uint8(c.bits&31)) >> 3)
		if sym != tc.sym || int(c.n) != 5+tc.extra || int(c.bits>>5) != tc.d-tc.base {
			t.Errorf("distance %d: code %d, %d bits, extra %d; want %d, %d, %d", tc.d, sym, c.n, c.bits>>5, tc.sym, 5+tc.extra, tc.d-tc.base)
		}
	}
}

func TestSixelOfRunsNoiseAndAFullPalette(t *testing.T) {
	noise := image.NewRGBA(image.Rect(0, 0, 97, 31))
	seed := uint32(7)
	for i := range noise.Pix {
		seed = seed*1664525 + 1013904223
		noise.Pix[i] = byte(seed >> 24)
	}
	full := image.NewRGBA(image.Rect(0, 0, 64, 20)) // exactly 64 colours, in runs across rows
	for y := range 20 {
		for x := range 64 {
			c := uint8((x/4+y*5)%64) * 4
			full.SetRGBA(x, y, color.RGBA{c, 255 - c, c / 2, 255})
		}
	}
	var e Encoder
	for _, tc := range []struct {
		name   string
		img    *image.RGBA
		colors int
		tol    int
	}{
		{"noise: the cube", noise, 256, 26},
		{"a full palette: exact", full, 64, 2},
		{"a colour more than the registers: the cube", full, 63, 26},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := sixelImage(t, e.Sixel(nil, tc.img, tc.img.Rect, tc.colors))
			if n := differing(got, tc.img, tc.tol); n != 0 {
				t.Errorf("%d pixels off by more than %d", n, tc.tol)
			}
		})
	}
}

// offBoundary is img with its pixels one byte off a 4-byte boundary, so
// that the code reading pixels as words takes its byte-wise way.
func offBoundary(img *image.RGBA) *image.RGBA {
	buf := make([]byte, len(img.Pix)+1)
	copy(buf[1:], img.Pix)
	return &image.RGBA{Pix: buf[1:], Stride: img.Stride, Rect: img.Rect}
}

func TestScaleOffAWordBoundaryGivesTheSamePixels(t *testing.T) {
	src := desktop(640, 400)
	want := image.NewRGBA(image.Rect(0, 0, 500, 313))
	var s Scaler
	s.Scale(want, src, src.Rect)
	got := offBoundary(image.NewRGBA(want.Rect))
	var s2 Scaler
	s2.Scale(got, offBoundary(src), src.Rect)
	if n := differing(got, want, 0); n != 0 {
		t.Errorf("%d pixels differ between the word-wise and byte-wise scalers", n)
	}
}

// TestScaleOfADirtyPartEqualsScalingItAll: a change scaled alone leaves
// the picture as scaling the whole changed source would, wherever it
// falls (odd columns, edges, one pixel) and at any ratio.
func TestScaleOfADirtyPartEqualsScalingItAll(t *testing.T) {
	for _, c := range []struct {
		src, dst image.Point
		dirty    image.Rectangle
	}{
		{image.Pt(1280, 800), image.Pt(1000, 625), image.Rect(0, 416, 1280, 432)},
		{image.Pt(1280, 800), image.Pt(1000, 625), image.Rect(333, 101, 334, 102)},
		{image.Pt(1280, 800), image.Pt(1000, 625), image.Rect(1279, 799, 1280, 800)},
		{image.Pt(1279, 101), image.Pt(700, 50), image.Rect(1270, 0, 1279, 101)},
		{image.Pt(1279, 101), image.Pt(300, 30), image.Rect(5, 7, 611, 9)},
	} {
		before, after := desktop(c.src.X, c.src.Y), desktop(c.src.X, c.src.Y)
		for y := c.dirty.Min.Y; y < c.dirty.Max.Y; y++ {
			for x := c.dirty.Min.X; x < c.dirty.Max.X; x++ {
				after.SetRGBA(x, y, color.RGBA{uint8(x * 13), uint8(y * 7), 255, 255})
			}
		}
		got, want := image.NewRGBA(image.Rectangle{Max: c.dst}), image.NewRGBA(image.Rectangle{Max: c.dst})
		var s, all Scaler
		s.Scale(got, before, before.Rect)
		s.Scale(got, after, c.dirty)
		all.Scale(want, after, after.Rect)
		if n := differing(got, want, 0); n != 0 {
			t.Errorf("%v to %v, %v changed: %d pixels differ from scaling it all", c.src, c.dst, c.dirty, n)
		}
	}
}
