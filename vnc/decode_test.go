package vnc

import (
	"bytes"
	"compress/zlib"
	"encoding/binary"
	"image"
	"testing"
	"time"
)

func TestApplyDrawsRectanglesClipsAndResizes(t *testing.T) {
	fb := image.NewRGBA(image.Rect(0, 0, 4, 3))
	// A 2x2 rectangle at (3,2): only its top-left pixel is on screen.
	px := []byte{1, 2, 3, 0, 4, 5, 6, 0, 7, 8, 9, 0, 10, 11, 12, 0}
	fb, d := apply(fb, &rectUpdate{rect: image.Rect(3, 2, 5, 4), pixels: px})
	if d != image.Rect(3, 2, 4, 3) {
		t.Errorf("dirty %v, want the visible part", d)
	}
	if got := fb.RGBAAt(3, 2); got.R != 1 || got.G != 2 || got.B != 3 || got.A != 255 {
		t.Errorf("pixel (3,2) = %v, want 1,2,3 opaque", got)
	}
	if got := fb.RGBAAt(2, 2); got.A != 0 {
		t.Errorf("pixel (2,2) was drawn: %v", got)
	}
	fb, d = apply(fb, &rectUpdate{rect: image.Rect(0, 0, 8, 6), resize: true})
	if fb.Rect != image.Rect(0, 0, 8, 6) || d != fb.Rect {
		t.Errorf("after resize: %v, dirty %v", fb.Rect, d)
	}
}

// wireUpdate builds a FramebufferUpdate message body (after its type).
func wireUpdate(rects ...[]byte) []byte {
	b := []byte{0, 0, byte(len(rects))}
	for _, r := range rects {
		b = append(b, r...)
	}
	return b
}

func rectHeader(x, y, w, h uint16, enc int32) []byte {
	b := make([]byte, 12)
	binary.BigEndian.PutUint16(b[0:], x)
	binary.BigEndian.PutUint16(b[2:], y)
	binary.BigEndian.PutUint16(b[4:], w)
	binary.BigEndian.PutUint16(b[6:], h)
	binary.BigEndian.PutUint32(b[8:], uint32(enc))
	return b
}

// zlibPieces compresses each payload into one stream with a sync flush
// after each, as QEMU does per rectangle.
func zlibPieces(payloads ...[]byte) [][]byte {
	var buf bytes.Buffer
	w := zlib.NewWriter(&buf)
	var out [][]byte
	for _, p := range payloads {
		w.Write(p)
		w.Flush()
		piece := append([]byte(nil), buf.Bytes()...)
		buf.Reset()
		out = append(out, append(binary.BigEndian.AppendUint32(nil, uint32(len(piece))), piece...))
	}
	return out
}

func TestUpdateMessageDecodesEveryEncoding(t *testing.T) {
	raw := bytes.Repeat([]byte{9, 8, 7, 0}, 2*1)
	z1, z2 := bytes.Repeat([]byte{1, 1, 1, 0}, 4), bytes.Repeat([]byte{2, 2, 2, 0}, 1)
	pieces := zlibPieces(z1, z2)
	msg := wireUpdate(
		append(rectHeader(0, 0, 2, 1, encRaw), raw...),
		append(rectHeader(1, 1, 2, 2, encZlib), pieces[0]...),
		append(rectHeader(3, 3, 1, 1, encZlib), pieces[1]...), // the same stream goes on
		rectHeader(0, 0, 800, 600, encDesktopSize),
	)
	m := &updateMessage{zlib: newZlibStream()}
	got, err := m.Read(nil, bytes.NewReader(msg))
	if err != nil {
		t.Fatal(err)
	}
	rects := got.(*updateMessage).rects
	if len(rects) != 4 {
		t.Fatalf("%d rectangles, want 4", len(rects))
	}
	if !bytes.Equal(rects[0].pixels, raw) || !bytes.Equal(rects[1].pixels, z1) || !bytes.Equal(rects[2].pixels, z2) {
		t.Errorf("decoded pixels differ: %v", rects)
	}
	if !rects[3].resize || rects[3].rect != image.Rect(0, 0, 800, 600) {
		t.Errorf("desktop size = %+v", rects[3])
	}
}

func TestUpdateMessageRefusesWhatWasNotAskedFor(t *testing.T) {
	for name, msg := range map[string][]byte{
		"unknown encoding":   wireUpdate(rectHeader(0, 0, 1, 1, 16)),
		"truncated raw":      wireUpdate(append(rectHeader(0, 0, 2, 2, encRaw), 1, 2, 3)),
		"huge zlib length":   wireUpdate(append(rectHeader(0, 0, 1, 1, encZlib), 0xff, 0xff, 0xff, 0xff)),
		"truncated header":   {0, 0, 1, 0, 0},
		"corrupt zlib piece": wireUpdate(append(rectHeader(0, 0, 1, 1, encZlib), 0, 0, 0, 4, 1, 2, 3, 4)),
	} {
		if _, err := (&updateMessage{zlib: newZlibStream()}).Read(nil, bytes.NewReader(msg)); err == nil {
			t.Errorf("%s: decoded without error", name)
		}
	}
}

func TestTapSequence(t *testing.T) {
	got := tapSequence('a', ModCtrl|ModShift)
	want := []keyEvent{{KeyControlL, true}, {KeyShiftL, true}, {'a', true}, {'a', false}, {KeyShiftL, false}, {KeyControlL, false}}
	if len(got) != len(want) {
		t.Fatalf("tap = %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("tap = %v, want %v", got, want)
		}
	}
	for r, sym := range map[rune]uint32{'a': 0x61, '~': 0x7e, 'é': 0xe9, '€': 0x010020ac} {
		if got := KeysymForRune(r); got != sym {
			t.Errorf("KeysymForRune(%q) = %#x, want %#x", r, got, sym)
		}
	}
	if KeyF(12) != 0xffc9 {
		t.Errorf("F12 = %#x", KeyF(12))
	}
}

func benchmarkDecode(b *testing.B, enc int32) {
	const w, h = 720, 400
	pixels := make([]byte, w*h*4)
	for i := range pixels {
		pixels[i] = byte(i / 97) // text-screen-like runs
	}
	var body []byte
	z := newZlibStream()
	fb := image.NewRGBA(image.Rect(0, 0, w, h))
	b.SetBytes(int64(len(pixels)))
	b.ReportAllocs()
	var pieces [][]byte
	if enc == encZlib {
		all := make([][]byte, b.N)
		for i := range all {
			all[i] = pixels
		}
		pieces = zlibPieces(all...)
	}
	b.ResetTimer()
	for i := range b.N {
		if enc == encRaw {
			body = wireUpdate(append(rectHeader(0, 0, w, h, encRaw), pixels...))
		} else {
			body = wireUpdate(append(rectHeader(0, 0, w, h, encZlib), pieces[i]...))
		}
		m, err := (&updateMessage{zlib: z}).Read(nil, bytes.NewReader(body))
		if err != nil {
			b.Fatal(err)
		}
		fb, _ = apply(fb, m.(*updateMessage).rects[0])
	}
}

func BenchmarkDecodeRaw720x400(b *testing.B)  { benchmarkDecode(b, encRaw) }
func BenchmarkDecodeZlib720x400(b *testing.B) { benchmarkDecode(b, encZlib) }

func TestFunctionKeysAreX11Keysyms(t *testing.T) {
	for n, want := range map[int]uint32{1: 0xffbe, 5: 0xffc2, 12: 0xffc9} {
		if got := KeyF(n); got != want {
			t.Errorf("KeyF(%d) = %#x, want %#x", n, got, want)
		}
	}
	if KeyF12 != KeyF(12) {
		t.Errorf("KeyF12 = %#x, KeyF(12) = %#x", KeyF12, KeyF(12))
	}
}

func TestMergeRectsKeepsThemApartUpToABound(t *testing.T) {
	a, b := image.Rect(0, 0, 10, 10), image.Rect(700, 390, 720, 400)
	got := MergeRects([]image.Rectangle{a}, []image.Rectangle{b}, a.Union(b))
	if len(got) != 2 || got[0] != a || got[1] != b {
		t.Errorf("merged %v, want both rectangles apart", got)
	}
	var many []image.Rectangle
	for i := range maxRects {
		many = append(many, image.Rect(i, 0, i+1, 1))
	}
	if got := MergeRects(many, []image.Rectangle{b}, image.Rect(0, 0, 720, 400)); len(got) != 1 || got[0] != image.Rect(0, 0, 720, 400) {
		t.Errorf("past %d rectangles the union should stand for them, got %d", maxRects, len(got))
	}
	// The result is a new slice: appending to it leaves the inputs alone.
	in := make([]image.Rectangle, 1, 4)
	in[0] = a
	out := MergeRects(in, nil, a)
	out[0] = b
	if in[0] != a {
		t.Error("MergeRects wrote into its input")
	}
}

func TestNudgePlanKeepsQEMULookingWhileTheUserTypes(t *testing.T) {
	t0 := time.Unix(1000, 0)
	ms := func(n int) time.Time { return t0.Add(time.Duration(n) * time.Millisecond) }
	for _, c := range []struct {
		name              string
		now, input, reset time.Time
		nudge             bool
		next              time.Duration
	}{
		{"right after a key: its event set the timer back", ms(5), ms(0), ms(0), false, 25 * time.Millisecond},
		{"a timer's length after it", ms(30), ms(0), ms(0), true, nudgeEvery},
		{"late, as a busy loop may be", ms(47), ms(0), ms(0), true, nudgeEvery},
		{"just nudged", ms(61), ms(0), ms(60), false, 29 * time.Millisecond},
		{"near the end: the last nudge", ms(990), ms(0), ms(960), true, 10 * time.Millisecond},
		{"a second after the last input: QEMU may slow down", ms(1000), ms(0), ms(990), false, 0},
		{"long idle", ms(60000), ms(0), ms(990), false, 0},
	} {
		nudge, next := nudgePlan(c.now, c.input, c.reset)
		if nudge != c.nudge || next != c.next {
			t.Errorf("%s: nudge %v, next in %v; want %v, %v", c.name, nudge, next, c.nudge, c.next)
		}
	}
}

func TestOnlyQEMUIsNudged(t *testing.T) {
	for name, want := range map[string]bool{"QEMU": true, "QEMU (handoff-guest)": true, "QEMUlator": false, "x11vnc": false, "": false} {
		if got := nudgesQEMU(name); got != want {
			t.Errorf("nudgesQEMU(%q) = %v", name, got)
		}
	}
}
