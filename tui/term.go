package tui

import (
	"context"
	"fmt"
	"image"
	"io"
	"os"
	"time"

	tea "github.com/charmbracelet/bubbletea"

	"github.com/handoff-dev/handoff/tui/termgfx"
)

// Terminal says how the app meets its terminal.
type Terminal struct {
	In  io.Reader
	Out io.Writer
	// Graphics is auto (ask the terminal), kitty, sixel, iterm or blocks.
	Graphics string
}

// askTimeout bounds the wait for the terminal's answers; a terminal that
// does not answer DA1 at all gets half blocks.
const askTimeout = 1500 * time.Millisecond

// NewProgram makes the bubbletea program that runs m on a terminal: it
// asks the terminal what it can draw (its cell size too), and in an image
// mode draws the screen beside bubbletea through one shared writer, by a
// goroutine that ctx stops. Mouse reports are on.
func NewProgram(ctx context.Context, m *Model, t Terminal) (*tea.Program, error) {
	proto, auto, err := termgfx.ParseProtocol(t.Graphics)
	if err != nil {
		return nil, err
	}
	var caps termgfx.Caps
	f, isFile := t.In.(*os.File)
	switch {
	case isFile && (auto || proto != termgfx.Blocks):
		caps, err = termgfx.Ask(ctx, f, t.Out, askTimeout)
		if err != nil {
			m.note(fmt.Sprintf("graphics: %v", err))
		}
	case proto != termgfx.Blocks:
		return nil, fmt.Errorf("--graphics %s needs a terminal to ask its cell size", proto)
	}
	if auto {
		proto = caps.Best()
	}
	out := &termOut{w: t.Out}
	m.term = out
	if proto != termgfx.Blocks {
		cell := caps.Cell
		if cell.X <= 0 || cell.Y <= 0 {
			cell = image.Pt(8, 16)
			m.note("graphics: the terminal did not say its cell size; guessing 8x16 pixels")
		}
		colors := caps.SixelColors
		if colors == 0 {
			colors = 256
		}
		pic := newPicture(out, proto, colors)
		pic.files.Store(caps.KittyFiles)
		if caps.SixelMax.X > 0 {
			pic.maxWidth = caps.SixelMax.X
		}
		m.useGraphics(pic, cell)
		if caps.PixelMouse {
			// SGR-pixel mouse reports (1016): the same reports bubbletea
			// reads, in pixels, so a click lands on the pixel it means.
			m.pixelMouse, out.pixelMouse = true, true
			context.AfterFunc(ctx, func() { io.WriteString(out, "\x1b[?1016l") })
		}
		if proto == termgfx.Sixel {
			// Sixel leaves the cursor beside the image, so a tile on the
			// last rows never scrolls the screen.
			io.WriteString(out, "\x1b[?8452h")
			context.AfterFunc(ctx, func() { io.WriteString(out, "\x1b[?8452l") })
		}
		go m.gfx.run(ctx)
	}
	m.note("graphics: " + proto.String() + describe(caps))
	var output io.Writer = out
	if f, ok := t.Out.(*os.File); ok {
		output = ttyOut{out, f}
	}
	return tea.NewProgram(m, tea.WithAltScreen(), tea.WithMouseAllMotion(), tea.WithContext(ctx),
		tea.WithInput(t.In), tea.WithOutput(output)), nil
}

func describe(c termgfx.Caps) string {
	s := ""
	if c.Version != "" {
		s += " on " + c.Version
	}
	if c.Cell.X > 0 {
		s += fmt.Sprintf(", cells %dx%d px", c.Cell.X, c.Cell.Y)
	}
	if c.KittyFiles {
		s += ", pictures by file"
	}
	if c.PixelMouse {
		s += ", mouse in pixels"
	}
	return s
}
