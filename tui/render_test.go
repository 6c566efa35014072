package tui

import (
	"image"
	"image/color"
	"strings"
	"testing"
)

func solid(w, h int, c color.RGBA) *image.RGBA {
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		for x := range w {
			img.SetRGBA(x, y, c)
		}
	}
	return img
}

func cells(line string) int { return strings.Count(line, "▀") }

func TestRenderFitsAndKeepsAspect(t *testing.T) {
	for _, tc := range []struct {
		name               string
		w, h, cols, rows   int
		wantCols, wantRows int
	}{
		{"720x400 into 200x60: width-bound", 720, 400, 200, 60, 200, 56},
		{"1280x800 into 200x60: height-bound", 1280, 800, 200, 60, 192, 60},
		{"small screen is never enlarged", 80, 40, 200, 60, 80, 20},
		{"tiny terminal", 720, 400, 20, 5, 18, 5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var r Renderer
			lines := r.Render(solid(tc.w, tc.h, color.RGBA{10, 20, 30, 255}), image.Rectangle{}, Viewport{Cols: tc.cols, Rows: tc.rows})
			if len(lines) != tc.wantRows || cells(lines[0]) != tc.wantCols {
				t.Fatalf("rendered %d rows of %d cells, want %d of %d", len(lines), cells(lines[0]), tc.wantRows, tc.wantCols)
			}
			if !strings.Contains(lines[0], "\x1b[38;2;10;20;30;48;2;10;20;30m") {
				t.Errorf("line lacks the truecolor of the screen: %q", lines[0][:40])
			}
			if strings.Count(lines[0], "\x1b[38;2") != 1 {
				t.Errorf("an unchanging colour was written %d times in a line", strings.Count(lines[0], "\x1b[38;2"))
			}
		})
	}
}

func TestRenderAveragesAreas(t *testing.T) {
	// A 4x4 checkerboard of black and white 1-pixel squares into 2 cells
	// by 1 row: every output pixel averages to mid grey.
	img := image.NewRGBA(image.Rect(0, 0, 4, 4))
	for y := range 4 {
		for x := range 4 {
			if (x+y)%2 == 0 {
				img.SetRGBA(x, y, color.RGBA{255, 255, 255, 255})
			}
		}
	}
	var r Renderer
	lines := r.Render(img, image.Rectangle{}, Viewport{Cols: 2, Rows: 1})
	if len(lines) != 1 || !strings.Contains(lines[0], "38;2;127;127;127;48;2;127;127;127m") {
		t.Fatalf("checkerboard rendered as %q, want mid grey", lines)
	}
}

func TestRenderOneToOnePans(t *testing.T) {
	img := solid(100, 100, color.RGBA{})
	img.SetRGBA(60, 40, color.RGBA{200, 0, 0, 255}) // top pixel of a cell
	var r Renderer
	lines := r.Render(img, image.Rectangle{}, Viewport{Cols: 20, Rows: 10, OneToOne: true, PanX: 50, PanY: 40})
	if len(lines) != 10 || cells(lines[0]) != 20 {
		t.Fatalf("%d rows of %d cells, want 10 of 20", len(lines), cells(lines[0]))
	}
	if !strings.Contains(lines[0], "38;2;200;0;0;48;2;0;0;0m") {
		t.Errorf("pixel (60,40) not at the pan's first row: %q", lines[0])
	}
	// Panning past the edge stops at it.
	lines = r.Render(img, image.Rectangle{}, Viewport{Cols: 20, Rows: 10, OneToOne: true, PanX: 500, PanY: 500})
	if len(lines) != 10 {
		t.Fatalf("%d rows after over-panning", len(lines))
	}
}

func TestRenderRedrawsOnlyDirtyRows(t *testing.T) {
	img := solid(40, 40, color.RGBA{1, 1, 1, 255})
	var r Renderer
	vp := Viewport{Cols: 40, Rows: 20}
	before := append([]string(nil), r.Render(img, img.Rect, vp)...)
	// Change row 0 and row 39, but say only row 0 changed: row 39's line
	// must come from the cache, row 0's must be new.
	img.SetRGBA(0, 0, color.RGBA{9, 9, 9, 255})
	img.SetRGBA(0, 39, color.RGBA{9, 9, 9, 255})
	after := r.Render(img, image.Rect(0, 0, 1, 1), vp)
	if after[0] == before[0] {
		t.Error("the dirty row was not redrawn")
	}
	if after[19] != before[19] {
		t.Error("a clean row was redrawn")
	}
}

func benchmarkRender(b *testing.B, w, h int) {
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	for i := range img.Pix {
		img.Pix[i] = byte(i * 7 / 3)
	}
	var r Renderer
	vp := Viewport{Cols: 200, Rows: 60}
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		r.Render(img, img.Rect, vp) // every row dirty: the worst case
	}
	perFrame := b.Elapsed().Seconds() / float64(b.N)
	b.ReportMetric(1/perFrame, "frames/s")
	b.ReportMetric(perFrame*30*100, "%core@30fps")
}

func BenchmarkRender720x400To200x60(b *testing.B)  { benchmarkRender(b, 720, 400) }
func BenchmarkRender1280x800To200x60(b *testing.B) { benchmarkRender(b, 1280, 800) }
