package tui

import (
	"bytes"
	"context"
	"image"
	"io"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/handoff-dev/handoff/tui/termgfx"
	"github.com/handoff-dev/handoff/vnc"
)

// placement is where the screen's picture goes in an image mode: which
// source pixels, at what size, from which cell.
type placement struct {
	origin image.Point     // top-left cell (0-based column, row)
	cells  image.Point     // cells covered
	size   image.Point     // the picture in terminal pixels
	crop   image.Rectangle // the source pixels shown
	cell   image.Point     // one cell in pixels
	hidden bool            // an overlay covers the screen: show no picture
}

// place fits a screen of the given size into cols x rows cells of cell
// pixels each: at full resolution when it fits, else scaled down keeping
// its aspect, or (1:1) cut to a panned window. whole is for a terminal
// that scales the picture itself into a box of cells: a scaled picture
// then fills its cells (its aspect kept within a cell).
func place(screen, cell image.Point, cols, rows int, vp Viewport, whole bool) placement {
	p := placement{cell: cell, crop: image.Rectangle{Max: screen}}
	avail := image.Pt(cols*cell.X, rows*cell.Y)
	switch {
	case screen.X <= avail.X && screen.Y <= avail.Y:
		p.size = screen
	case vp.OneToOne:
		p.size = image.Pt(min(screen.X, avail.X), min(screen.Y, avail.Y))
		pan := image.Pt(clamp(vp.PanX, 0, screen.X-p.size.X), clamp(vp.PanY, 0, screen.Y-p.size.Y))
		p.crop = image.Rectangle{Min: pan, Max: pan.Add(p.size)}
	case screen.X*avail.Y > screen.Y*avail.X: // width-bound
		p.size = image.Pt(avail.X, max(1, screen.Y*avail.X/screen.X))
	default:
		p.size = image.Pt(max(1, screen.X*avail.Y/screen.Y), avail.Y)
	}
	p.cells = image.Pt((p.size.X+cell.X-1)/cell.X, (p.size.Y+cell.Y-1)/cell.Y)
	if whole && p.size != p.crop.Size() {
		p.size = image.Pt(p.cells.X*cell.X, p.cells.Y*cell.Y)
	}
	return p
}

// toScreen maps a terminal pixel (relative to the picture's top-left) to
// the screen pixel shown there.
func (p placement) toScreen(px image.Point) image.Point {
	x := p.crop.Min.X + clamp(px.X, 0, p.size.X-1)*p.crop.Dx()/max(1, p.size.X)
	y := p.crop.Min.Y + clamp(px.Y, 0, p.size.Y-1)*p.crop.Dy()/max(1, p.size.Y)
	return image.Pt(x, y)
}

// tileCells is a tile's size in cells: about 64 pixels square, so a small
// change sends little and a whole screen is a few hundred tiles.
func (p placement) tileCells() image.Point {
	return image.Pt(max(1, (64+p.cell.X-1)/p.cell.X), max(1, (64+p.cell.Y-1)/p.cell.Y))
}

// termOut is the terminal's output, shared by bubbletea and the picture:
// one Write at a time, so escapes never interleave. It tells the picture
// when bubbletea clears the screen, which erases images.
type termOut struct {
	mu      sync.Mutex
	w       io.Writer
	written atomic.Int64
	cleared func()
	// pixelMouse keeps mouse reports in pixels (1016) whenever bubbletea
	// turns SGR reports on.
	pixelMouse bool
}

func (t *termOut) Write(p []byte) (int, error) {
	t.mu.Lock()
	n, err := t.w.Write(p)
	if t.pixelMouse && bytes.Contains(p, []byte("\x1b[?1006h")) {
		// Turning on SGR reports turns off their pixel form (1016), which
		// bubbletea does not know: on again, after it.
		t.w.Write([]byte("\x1b[?1016h"))
	}
	t.mu.Unlock()
	t.written.Add(int64(n))
	if t.cleared != nil && bytes.Contains(p, []byte("\x1b[2J")) {
		t.cleared()
	}
	return n, err
}

// picJob is what the picture should show: the newest frame, what changed
// in it since the last job, and where it goes.
type picJob struct {
	frame *image.RGBA
	dirty image.Rectangle
	rects []image.Rectangle // the parts of dirty that changed; nil for all of it
	at    placement
}

// picture draws the screen as images, beside bubbletea's text. One
// goroutine (run) owns its state; View hands it jobs through a mailbox of
// one, merging a job that was not taken yet, so a slow terminal gets the
// newest screen and never a backlog.
type picture struct {
	out      *termOut
	proto    termgfx.Protocol
	colors   int         // sixel colour registers
	maxWidth int         // the widest sixel image the terminal takes
	files    atomic.Bool // kitty runs on this machine: the picture goes by temporary file (the model reads it too)
	tmp      string      // where those files go
	jobs     chan picJob
	redraw   chan struct{}
	drawn    chan drawing // each drawing, for tests and measurements; dropped when full

	// run's own
	enc    termgfx.Encoder
	scaler termgfx.Scaler
	last   picJob
	scaled *image.RGBA // the screen at its size in the terminal, when that is not its own
	buf    []byte
	marks  []bool // the tiles to send
	// scratch, kept between frames
	changed  []image.Rectangle
	band     []image.Rectangle
	bandCols []int
	shown    bool
}

// newPicture draws in proto; sixel images are at most 1000 pixels wide
// (xterm's default) unless the caller knows better.
func newPicture(out *termOut, proto termgfx.Protocol, colors int) *picture {
	p := &picture{out: out, proto: proto, colors: colors, jobs: make(chan picJob, 1), redraw: make(chan struct{}, 1),
		drawn: make(chan drawing, 64), tmp: termgfx.TempDir(), maxWidth: 1000}
	out.cleared = p.invalidate
	return p
}

// post hands a job over, merging it with one not yet taken.
func (p *picture) post(j picJob) {
	select {
	case old := <-p.jobs:
		if old.at == j.at && old.frame != nil && j.frame != nil && old.frame.Rect == j.frame.Rect {
			j.dirty = j.dirty.Union(old.dirty)
			j.rects = vnc.MergeRects(old.rects, j.rects, j.dirty)
		} else if j.frame != nil {
			j.dirty, j.rects = j.frame.Rect, nil
		}
	default:
	}
	p.jobs <- j
}

// invalidate asks for the whole picture again: the screen was cleared.
func (p *picture) invalidate() {
	select {
	case p.redraw <- struct{}{}:
	default:
	}
}

// run draws jobs until ctx ends, then removes what it drew.
func (p *picture) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			if p.proto == termgfx.Kitty && p.shown {
				io.WriteString(p.out, termgfx.KittyDeleteAll)
			}
			return
		case j := <-p.jobs:
			p.draw(j, false)
		case <-p.redraw:
			p.draw(p.last, true)
		}
	}
}

// draw sends what changed, as tiles at their cells; all of it when the
// placement changed or the screen was cleared.
func (p *picture) draw(j picJob, all bool) {
	p.buf = p.buf[:0]
	if j.frame == nil || j.at.hidden {
		if p.proto == termgfx.Kitty && p.shown {
			p.buf = append(p.buf, termgfx.KittyDeleteAll...)
		}
		p.shown = false
		p.last = j
		p.flush()
		return
	}
	if j.at != p.last.at || p.last.frame == nil || j.frame.Rect != p.last.frame.Rect || !p.shown {
		all = true
		if p.proto == termgfx.Kitty && p.shown {
			p.buf = append(p.buf, termgfx.KittyDeleteAll...)
		}
	}
	dirty := j.dirty
	if all {
		dirty = j.frame.Rect
	}
	if p.proto == termgfx.Kitty && p.files.Load() {
		if !all && dirty.Intersect(j.at.crop).Empty() {
			p.last = j
			p.flush()
			return
		}
		// By file, the whole screen costs a copy in memory and ~150 bytes
		// to the terminal, whatever changed; kitty scales it to its cells.
		if path, err := p.tileFile(j.frame, j.at.crop); err == nil {
			p.last, p.shown = j, true
			p.moveTo(j.at.origin)
			var cols, rows int
			if j.at.size != j.at.crop.Size() {
				cols, rows = j.at.cells.X, j.at.cells.Y
			}
			p.buf = termgfx.KittyFile(p.buf, path, j.at.crop.Dx(), j.at.crop.Dy(), 1, cols, rows)
			p.buf = append(p.buf, "\x1b8"...)
			p.flush()
			return
		}
		p.files.Store(false) // no more files: tiles go through the terminal
		all = true
		dirty = j.frame.Rect
	}
	rects := j.rects
	if all || len(rects) == 0 {
		rects = []image.Rectangle{dirty}
	}
	changed := p.changed[:0]
	var pic *image.RGBA
	if j.at.size == j.at.crop.Size() {
		// At full resolution the tiles come from the frame itself: a copy
		// of it would cost more than encoding some of them.
		pic = j.frame.SubImage(j.at.crop).(*image.RGBA)
		for _, r := range rects {
			if c := r.Intersect(pic.Rect); !c.Empty() {
				changed = append(changed, c.Sub(pic.Rect.Min))
			}
		}
	} else {
		if p.scaled == nil || p.scaled.Rect.Size() != j.at.size {
			p.scaled = image.NewRGBA(image.Rectangle{Max: j.at.size})
			rects = []image.Rectangle{j.frame.Rect}
		}
		pic = p.scaled
		src := j.frame.SubImage(j.at.crop).(*image.RGBA)
		for _, r := range rects {
			if c := p.scaler.Scale(p.scaled, src, r); !c.Empty() {
				changed = append(changed, c)
			}
		}
	}
	p.changed = changed
	p.last, p.shown = j, true
	p.tiles(pic, j.at, changed)
	p.flush()
}

// tiles encodes the tiles that the changed rectangles (in the picture's
// pixels, from 0,0) touch, from pic, the picture in its own coordinates.
func (p *picture) tiles(pic *image.RGBA, at placement, changed []image.Rectangle) {
	tc := at.tileCells()
	tw, th := tc.X*at.cell.X, tc.Y*at.cell.Y
	cols, rows := (at.size.X+tw-1)/tw, (at.size.Y+th-1)/th
	if cap(p.marks) < cols*rows {
		p.marks = make([]bool, cols*rows)
	}
	marks := p.marks[:cols*rows]
	clear(marks)
	bounds := image.Rectangle{Max: at.size}
	for _, c := range changed {
		c = c.Intersect(bounds)
		for ty := c.Min.Y / th; ty < (c.Max.Y+th-1)/th; ty++ {
			for tx := c.Min.X / tw; tx < (c.Max.X+tw-1)/tw; tx++ {
				marks[ty*cols+tx] = true
			}
		}
	}
	at0 := pic.Rect.Min
	for ty := range rows {
		if p.proto == termgfx.Kitty {
			// A band of tiles at once: the encoder reads the picture a row
			// across all of them, in memory's order.
			band, cols0 := p.band[:0], p.bandCols[:0]
			for tx := range cols {
				if marks[ty*cols+tx] {
					band = append(band, image.Rect(tx*tw, ty*th, (tx+1)*tw, (ty+1)*th).Intersect(bounds).Add(at0))
					cols0 = append(cols0, tx)
				}
			}
			p.band, p.bandCols = band, cols0
			if len(band) == 0 {
				continue
			}
			p.enc.KittyBand(pic, band)
			for i, tx := range cols0 {
				p.moveTo(at.origin.Add(image.Pt(tx*tc.X, ty*tc.Y)))
				p.buf = p.enc.KittyTile(p.buf, i, uint32(1+ty*cols+tx))
				p.buf = append(p.buf, "\x1b8"...)
			}
			continue
		}
		for tx := 0; tx < cols; tx++ {
			if !marks[ty*cols+tx] {
				continue
			}
			// Sixel and iTerm2 images have no identity: one image for a
			// run of changed tiles in a row.
			end := tx
			for end < cols && marks[ty*cols+end] && (end-tx+1)*tw <= p.maxWidth {
				end++
			}
			end = max(end, tx+1)
			r := image.Rect(tx*tw, ty*th, end*tw, (ty+1)*th).Intersect(bounds).Add(at0)
			p.moveTo(at.origin.Add(image.Pt(tx*tc.X, ty*tc.Y)))
			if p.proto == termgfx.Sixel {
				p.buf = p.enc.Sixel(p.buf, pic, r, p.colors)
			} else {
				p.buf = p.enc.ITerm(p.buf, pic, r)
			}
			p.buf = append(p.buf, "\x1b8"...)
			tx = end - 1 // the loop steps to end, maybe the start of the next run
		}
	}
}

// tileFile writes a tile's pixels to a temporary file for kitty, which
// deletes it once read.
func (p *picture) tileFile(img *image.RGBA, r image.Rectangle) (string, error) {
	f, err := os.CreateTemp(p.tmp, termgfx.TempPattern)
	if err != nil {
		return "", err
	}
	_, err = f.Write(p.enc.RGB(img, r))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(f.Name())
		return "", err
	}
	return f.Name(), nil
}

// moveTo saves the cursor (the tile's writer restores it) and moves it to
// a cell.
func (p *picture) moveTo(c image.Point) {
	p.buf = append(p.buf, "\x1b7\x1b["...)
	p.buf = strconv.AppendInt(p.buf, int64(c.Y+1), 10)
	p.buf = append(p.buf, ';')
	p.buf = strconv.AppendInt(p.buf, int64(c.X+1), 10)
	p.buf = append(p.buf, 'H')
}

// drawing is one write of the picture to the terminal.
type drawing struct {
	bytes int
	at    placement
	done  time.Time
}

func (p *picture) flush() {
	if len(p.buf) > 0 {
		p.out.Write(p.buf)
	}
	select {
	case p.drawn <- drawing{bytes: len(p.buf), at: p.last.at, done: time.Now()}:
	default:
	}
}

// ttyOut is termOut over a terminal: through it bubbletea still sees the
// terminal (its size, and its resizes).
type ttyOut struct {
	*termOut
	f *os.File
}

func (t ttyOut) Read(p []byte) (int, error) { return t.f.Read(p) }
func (t ttyOut) Close() error               { return nil } // the terminal is the caller's
func (t ttyOut) Fd() uintptr                { return t.f.Fd() }
