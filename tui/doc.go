// Package tui is handoff's terminal app: the VM's screen drawn in the
// terminal with its keyboard forwarded, and a dashboard of the migration
// that moves the VM under it.
//
// The Model is plain bubbletea: its inputs are messages (frames, progress,
// phases, the lease) and its outputs are calls on two small interfaces,
// KeySender and Controller, each made from a tea.Cmd so a slow call never
// freezes the screen. Grab and View wire it to libvirt and VNC.
//
// Rendering: where the terminal can show images (kitty's protocol, sixel,
// iTerm2's), the screen is drawn at full resolution when it fits and
// area-averaged down when not; else as truecolor upper-half blocks, two
// pixels a cell. NewProgram asks the terminal first (package termgfx:
// DA1, kitty's query, XTVERSION, the cell size in pixels). bubbletea v1's
// line renderer would crop image escapes, so they bypass it: the picture
// goroutine writes tiles of what changed, each at its cell, through the
// same writer as bubbletea (one Write at a time), and View's lines over
// the picture only move the cursor past it, so bubbletea never writes
// there. A clear of the screen (which erases images) is seen in that
// writer and redraws the picture; anything that moves the picture (a
// resize, zoom, the dashboard, an overlay) clears the screen first.
//
// Mouse: SGR reports (clicks, drags, the wheel) become VNC pointer events
// in the screen's pixels, at any scale; Ctrl-] m gives the mouse back to
// the terminal (to select text) and takes it again.
//
// Keys: everything typed goes to the VM; Ctrl-] is a prefix, as in tmux,
// for handoff's own commands (h hand back, s switch now, z zoom, arrows
// pan, d dashboard, m mouse, e the last error, ? help, q quit; Ctrl-]
// Ctrl-] types a Ctrl-]).
package tui
