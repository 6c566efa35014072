// Package tui is handoff's terminal app: the VM's screen drawn in the
// terminal with its keyboard forwarded, and a dashboard of the migration
// that moves the VM under it.
//
// The Model is plain bubbletea: its inputs are messages (frames, progress,
// phases, the lease) and its outputs are calls on two small interfaces,
// KeySender and Controller, each made from a tea.Cmd so a slow call never
// freezes the screen. Grab and View wire it to libvirt and VNC.
//
// Rendering: truecolor upper-half blocks, two pixels a cell, each the
// average of the screen area it covers; lines whose pixels did not change
// are reused. We use bubbletea v1: its line renderer keeps these SGR
// sequences intact, and half blocks work everywhere, tmux included (which
// has no sixel). Image protocols (kitty, sixel) need to bypass the line
// renderer (v1 crops their escapes; v2 keeps only colours in View text),
// so they are left for a renderer that writes them directly.
//
// Keys: everything typed goes to the VM; Ctrl-] is a prefix, as in tmux,
// for handoff's own commands (h hand back, s switch now, z zoom, arrows
// pan, d dashboard, ? help, q quit; Ctrl-] Ctrl-] types a Ctrl-]).
package tui
