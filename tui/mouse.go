package tui

import (
	"image"

	tea "github.com/charmbracelet/bubbletea"
)

// VNC's pointer button mask (RFC 6143, 7.5.5): wheel turns are presses
// and releases of buttons 4 to 7.
var vncButtons = map[tea.MouseButton]uint8{
	tea.MouseButtonLeft: 1, tea.MouseButtonMiddle: 2, tea.MouseButtonRight: 4,
	tea.MouseButtonWheelUp: 8, tea.MouseButtonWheelDown: 16,
	tea.MouseButtonWheelLeft: 32, tea.MouseButtonWheelRight: 64,
}

// mouse turns the terminal's mouse report into pointer events in the
// screen's own pixels, at whatever scale it is drawn.
func (m *Model) mouse(e tea.MouseMsg) tea.Cmd {
	if m.noMouse || m.frame == nil || m.overlay() != "" || m.opts.Keys == nil {
		return nil
	}
	at, inside := m.screenPoint(e.X, e.Y)
	bit := vncButtons[e.Button]
	switch {
	case !inside && m.buttons == 0:
		return nil // over the dashboard, nothing held: not the VM's
	case tea.MouseEvent(e).IsWheel():
		m.pending = append(m.pending, pointerAt(m.buttons|bit, at), pointerAt(m.buttons, at))
	case e.Action == tea.MouseActionPress:
		m.buttons |= bit
		m.pending = append(m.pending, pointerAt(m.buttons, at))
	case e.Action == tea.MouseActionRelease:
		if bit == 0 {
			m.buttons = 0 // X10-style reports do not say which
		}
		m.buttons &^= bit
		m.pending = append(m.pending, pointerAt(m.buttons, at))
	default: // motion: only the newest waiting position matters
		if n := len(m.pending); n > 0 && m.pending[n-1].pointer && m.pending[n-1].buttons == m.buttons {
			m.pending[n-1].at = at
			return nil
		}
		m.pending = append(m.pending, pointerAt(m.buttons, at))
	}
	return m.flushKeys()
}

func pointerAt(buttons uint8, at image.Point) vmInput {
	return vmInput{pointer: true, buttons: buttons, at: at}
}

// screenPoint is the screen pixel under a terminal cell's centre, or under
// a terminal pixel when reports are in pixels (clamped to the screen), and
// whether that shows the screen.
func (m *Model) screenPoint(col, row int) (image.Point, bool) {
	if m.gfx != nil && m.pixelMouse {
		p := m.at
		px := image.Pt(col, row).Sub(image.Pt(p.origin.X*p.cell.X, p.origin.Y*p.cell.Y))
		inside := px.X >= 0 && px.Y >= 0 && px.X < p.size.X && px.Y < p.size.Y
		return p.toScreen(px), inside && !p.hidden
	}
	if m.gfx != nil {
		p := m.at
		rel := image.Pt(col, row).Sub(p.origin)
		inside := rel.X >= 0 && rel.Y >= 0 && rel.X < p.cells.X && rel.Y < p.cells.Y
		px := image.Pt(rel.X*p.cell.X+p.cell.X/2, rel.Y*p.cell.Y+p.cell.Y/2)
		return p.toScreen(px), inside && !p.hidden
	}
	mp := mapping(m.frame.Rect.Size(), m.vp)
	inside := col >= 0 && row >= 0 && col < mp.cols && row < mp.rows
	col, row = clamp(col, 0, mp.cols-1), clamp(row, 0, mp.rows-1)
	x := (mp.srcX(col) + max(mp.srcX(col), mp.srcX(col+1)-1)) / 2
	y := (mp.srcY(2*row) + max(mp.srcY(2*row), mp.srcY(2*row+2)-1)) / 2
	return image.Pt(clamp(x, 0, mp.size.X-1), clamp(y, 0, mp.size.Y-1)), inside
}
