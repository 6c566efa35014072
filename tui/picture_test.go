package tui

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"image"
	"image/color"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	tea "github.com/charmbracelet/bubbletea"

	"github.com/handoff-dev/handoff/tui/termgfx"
	"github.com/handoff-dev/handoff/vnc"
)

func TestPlaceFitsAtFullResolutionOrScales(t *testing.T) {
	cell := image.Pt(8, 16)
	for _, tc := range []struct {
		name       string
		screen     image.Point
		cols, rows int
		vp         Viewport
		size       image.Point
		crop       image.Rectangle
	}{
		{"fits: full resolution", image.Pt(720, 400), 100, 30, Viewport{}, image.Pt(720, 400), image.Rect(0, 0, 720, 400)},
		{"too wide: scaled, aspect kept", image.Pt(1280, 800), 100, 60, Viewport{}, image.Pt(800, 500), image.Rect(0, 0, 1280, 800)},
		{"too tall: scaled", image.Pt(1280, 800), 200, 30, Viewport{}, image.Pt(768, 480), image.Rect(0, 0, 1280, 800)},
		{"the terminal scales: whole cells", image.Pt(1280, 800), 100, 60, Viewport{}, image.Pt(800, 512), image.Rect(0, 0, 1280, 800)},
		{"1:1 pans", image.Pt(1280, 800), 100, 30, Viewport{OneToOne: true, PanX: 100, PanY: 1000}, image.Pt(800, 480), image.Rect(100, 320, 900, 800)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := place(tc.screen, cell, tc.cols, tc.rows, tc.vp, strings.HasPrefix(tc.name, "the terminal scales"))
			if p.size != tc.size || p.crop != tc.crop {
				t.Errorf("place = size %v crop %v, want %v %v", p.size, p.crop, tc.size, tc.crop)
			}
			if p.cells.X > tc.cols || p.cells.Y > tc.rows {
				t.Errorf("covers %v cells, more than the %dx%d given", p.cells, tc.cols, tc.rows)
			}
		})
	}
}

// drawnBytes runs a picture on a frame and returns what it wrote.
func testPicture(proto termgfx.Protocol) (*picture, *bytes.Buffer) {
	var out bytes.Buffer
	return newPicture(&termOut{w: &out}, proto, 256), &out
}

func TestPictureSendsOnlyTheTilesThatChanged(t *testing.T) {
	frame := image.NewRGBA(image.Rect(0, 0, 720, 400))
	for i := range frame.Pix {
		frame.Pix[i] = byte(i * 7 / 3 % 13 * 19) // busy, so a whole screen is large
	}
	at := place(frame.Rect.Size(), image.Pt(8, 16), 100, 30, Viewport{}, false)
	for _, proto := range []termgfx.Protocol{termgfx.Kitty, termgfx.Sixel, termgfx.ITerm} {
		t.Run(proto.String(), func(t *testing.T) {
			p, out := testPicture(proto)
			p.draw(picJob{frame: frame, dirty: frame.Rect, at: at}, false)
			whole := out.Len()
			// The guest's counter: a small change sends a tile or two.
			next := image.NewRGBA(frame.Rect)
			copy(next.Pix, frame.Pix)
			next.SetRGBA(100, 100, color.RGBA{255, 255, 255, 255})
			out.Reset()
			p.draw(picJob{frame: next, dirty: image.Rect(100, 100, 101, 101), at: at}, false)
			small := out.Len()
			if small == 0 || small*10 > whole {
				t.Errorf("a one-pixel change wrote %d bytes; the whole screen %d", small, whole)
			}
			// The tile goes to its cell: pixel (100,100) is in the tile
			// at cell (8,4) (tiles of 8x4 cells of 8x16 px).
			if !strings.Contains(out.String(), "\x1b7\x1b[5;9H") {
				t.Errorf("the changed tile is not placed at its cell: %q", out.String()[:40])
			}
			// Two changes far apart are two tiles, not the screen between.
			next.SetRGBA(0, 0, color.RGBA{1, 2, 3, 255})
			next.SetRGBA(719, 399, color.RGBA{1, 2, 3, 255})
			out.Reset()
			p.draw(picJob{frame: next, dirty: next.Rect, rects: []image.Rectangle{image.Rect(0, 0, 1, 1), image.Rect(719, 399, 720, 400)}, at: at}, false)
			if n := strings.Count(out.String(), "\x1b7"); n != 2 || out.Len()*10 > whole {
				t.Errorf("two one-pixel changes wrote %d tiles, %d bytes (the whole screen %d)", n, out.Len(), whole)
			}
			// Nothing changed: nothing written.
			out.Reset()
			p.draw(picJob{frame: next, at: at}, false)
			if out.Len() != 0 {
				t.Errorf("an unchanged screen wrote %d bytes", out.Len())
			}
			// bubbletea cleared the screen: everything again.
			p.out.Write([]byte("\x1b[2J"))
			out.Reset()
			p.draw(p.last, true)
			if out.Len() < whole/2 {
				t.Errorf("a redraw after a clear wrote %d bytes, want the whole screen (%d)", out.Len(), whole)
			}
		})
	}
}

func TestSixelImagesStayWithinTheTerminalsLargest(t *testing.T) {
	frame := image.NewRGBA(image.Rect(0, 0, 1280, 800))
	p, out := testPicture(termgfx.Sixel)
	at := place(frame.Rect.Size(), image.Pt(6, 13), 250, 70, Viewport{}, false)
	p.draw(picJob{frame: frame, dirty: frame.Rect, at: at}, false)
	rows := map[string]int{} // each row's images' widths add up to the screen's
	for _, img := range strings.Split(out.String(), "\x1b7\x1b[")[1:] {
		var row, col, w int
		fmt.Sscanf(img, "%d;%dH\x1bP0;1;0q\"1;1;%d;", &row, &col, &w)
		if w > 1000 {
			t.Fatalf("a sixel image %d pixels wide: xterm takes at most 1000", w)
		}
		rows[fmt.Sprint(row)] += w
	}
	for row, w := range rows {
		if w != 1280 {
			t.Errorf("row %s: images %d pixels wide in all, want 1280", row, w)
		}
	}
}

func TestImageModeViewLeavesThePictureCellsAlone(t *testing.T) {
	frame := image.NewRGBA(image.Rect(0, 0, 720, 400))
	m := NewModel(Options{Domain: "desktop", Now: func() time.Time { return fixedNow }})
	p, _ := testPicture(termgfx.Sixel)
	m.useGraphics(p, image.Pt(8, 16))
	m.Update(tea.WindowSizeMsg{Width: 160, Height: 40})
	m.Update(FrameMsg(vnc.Frame{Image: frame, Dirty: frame.Rect, Seq: 1}))
	lines := strings.Split(m.View(), "\n")
	// 720x400 at 8x16 px: 90x25 cells, at full resolution.
	for i := range 25 {
		if !strings.HasPrefix(lines[i], "\x1b[116C") {
			t.Fatalf("line %d over the picture does not skip to the dashboard: %q", i, lines[i])
		}
	}
	select {
	case j := <-p.jobs:
		if j.at.size != image.Pt(720, 400) || j.dirty != frame.Rect {
			t.Errorf("the picture was asked for %v of %v", j.dirty, j.at.size)
		}
	default:
		t.Fatal("View gave the picture no job")
	}
}

// kittyFiles marks a benchmark of kitty by temporary files, which no
// kitty reads and deletes here: they go to the benchmark's own folder.
const kittyFiles termgfx.Protocol = 1 << 8

// benchmarkPicture is the app's cost for part of a 1280x800 screen
// changing each frame: scaling it (when the screen does not fit) and
// encoding its tiles. Frames alternate between two screens whose text
// differs inside changed (scrolled by a line of text), each drawn as an
// update from the one before, as the model asks for it.
func benchmarkPicture(b *testing.B, proto termgfx.Protocol, cols, rows int, changed image.Rectangle) {
	screen := func(scroll int) *image.RGBA {
		frame := image.NewRGBA(image.Rect(0, 0, 1280, 800))
		for y := range 800 {
			for x := range 1280 {
				ty := y
				if image.Pt(x, y).In(changed) {
					ty += scroll
				}
				c := color.RGBA{40, 44, 52, 255}
				if (x/7+ty/13)%5 == 0 && x%7 < 5 && ty%13 < 9 {
					c = color.RGBA{220, 220, 200, 255}
				}
				if y < 100 {
					c = color.RGBA{uint8(x / 5), uint8(y * 2), 128, 255}
				}
				frame.SetRGBA(x, y, c)
			}
		}
		return frame
	}
	frames := [2]*image.RGBA{screen(0), screen(13)}
	at := place(frames[0].Rect.Size(), image.Pt(8, 16), cols, rows, Viewport{}, proto&kittyFiles != 0)
	p, out := testPicture(proto &^ kittyFiles)
	p.files.Store(proto&kittyFiles != 0)
	if p.files.Load() {
		// In memory, where kitty's files go, but in a folder of its own.
		dir, err := os.MkdirTemp(termgfx.TempDir(), "handoff-bench-")
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { os.RemoveAll(dir) })
		p.tmp = dir
	}
	p.draw(picJob{frame: frames[1], dirty: frames[1].Rect, at: at}, true)
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := cpuTime()
	var n int
	for i := range b.N {
		out.Reset()
		p.draw(picJob{frame: frames[i%2], dirty: changed, at: at}, false)
		n += out.Len()
	}
	perFrame := b.Elapsed().Seconds() / float64(b.N)
	b.ReportMetric(1/perFrame, "frames/s")
	// A core's share at 30 frames/s, from the CPU time the process used:
	// other work on the machine slows the clock, not this.
	b.ReportMetric((cpuTime()-cpu0).Seconds()/float64(b.N)*30*100, "%core@30fps")
	b.ReportMetric(float64(n)/float64(b.N)/1e6, "MB/frame")
}

var (
	wholeScreen = image.Rect(0, 0, 1280, 800)
	// textLine is a line of text typed or redrawn across the screen.
	textLine = image.Rect(0, 416, 1280, 432)
)

// BenchmarkPicture1280x800 is the app's cost for a 1280x800 screen at
// full size (170x55 cells) and scaled (125x40), the whole screen changing
// or one line of text, in each image mode.
func BenchmarkPicture1280x800(b *testing.B) {
	for _, c := range []struct {
		name       string
		proto      termgfx.Protocol
		cols, rows int
		dirty      image.Rectangle
	}{
		{"FullKitty", termgfx.Kitty, 170, 55, wholeScreen},
		{"FullKittyFiles", termgfx.Kitty | kittyFiles, 170, 55, wholeScreen},
		{"FullSixel", termgfx.Sixel, 170, 55, wholeScreen},
		{"ScaledKitty", termgfx.Kitty, 125, 40, wholeScreen},
		{"ScaledKittyFiles", termgfx.Kitty | kittyFiles, 125, 40, wholeScreen},
		{"ScaledSixel", termgfx.Sixel, 125, 40, wholeScreen},
		{"LineFullKitty", termgfx.Kitty, 170, 55, textLine},
		{"LineFullSixel", termgfx.Sixel, 170, 55, textLine},
		{"LineScaledKitty", termgfx.Kitty, 125, 40, textLine},
		{"LineScaledSixel", termgfx.Sixel, 125, 40, textLine},
	} {
		b.Run(c.name, func(b *testing.B) { benchmarkPicture(b, c.proto, c.cols, c.rows, c.dirty) })
	}
}

func TestKittyOnThisMachineGetsTheScreenByFile(t *testing.T) {
	frame := image.NewRGBA(image.Rect(0, 0, 1280, 800))
	for i := range frame.Pix {
		frame.Pix[i] = byte(i % 251)
	}
	p, out := testPicture(termgfx.Kitty)
	p.files.Store(true)
	p.tmp = t.TempDir()
	at := place(frame.Rect.Size(), image.Pt(8, 16), 125, 40, Viewport{}, true)
	p.draw(picJob{frame: frame, dirty: frame.Rect, at: at}, false)
	s := out.String()
	head, path64, ok := strings.Cut(strings.TrimPrefix(s, "\x1b7\x1b[1;1H\x1b_G"), ";")
	if !ok || !strings.Contains(head, "t=t,s=1280,v=800,i=1,c=125,r=40") {
		t.Fatalf("kitty was not told to read a 1280x800 file into 125x40 cells: %q", s)
	}
	path, _ := base64.StdEncoding.DecodeString(strings.TrimSuffix(path64, "\x1b\\\x1b8"))
	if !strings.Contains(string(path), "tty-graphics-protocol") {
		t.Errorf("kitty reads only files named for it; this one is %s", path)
	}
	b, err := os.ReadFile(string(path))
	if err != nil || len(b) != 1280*800*3 || b[3*1000] != frame.Pix[4*1000] {
		t.Fatalf("the file holds %d bytes (%v), want the screen's RGB", len(b), err)
	}
	if len(s) > 300 {
		t.Errorf("%d bytes to the terminal for a screen sent by file", len(s))
	}
}

func TestPixelMouseStaysOnWhenBubbleteaTurnsOnSGR(t *testing.T) {
	var b bytes.Buffer
	out := &termOut{w: &b, pixelMouse: true}
	out.Write([]byte("\x1b[?1003h\x1b[?1006h"))
	if got := b.String(); !strings.HasSuffix(got, "\x1b[?1006h\x1b[?1016h") {
		t.Errorf("wrote %q: the pixel form is not on after SGR", got)
	}
}

// cpuTime is the CPU time this process has used, user and system.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
