package termgfx

import (
	"fmt"
	"image"
)

// Protocol is how a picture reaches the terminal.
type Protocol int

const (
	Blocks Protocol = iota // truecolor half blocks: two pixels a cell, anywhere
	Kitty                  // the kitty graphics protocol: kitty, WezTerm, Ghostty, Konsole
	Sixel                  // DEC sixel: xterm -ti vt340, foot, mlterm, WezTerm, Windows Terminal
	ITerm                  // iTerm2's inline images (OSC 1337): iTerm2, WezTerm
)

var protocolNames = [...]string{Blocks: "blocks", Kitty: "kitty", Sixel: "sixel", ITerm: "iterm"}

func (p Protocol) String() string {
	if int(p) < len(protocolNames) {
		return protocolNames[p]
	}
	return fmt.Sprintf("protocol(%d)", int(p))
}

// ParseProtocol reads a --graphics value; auto is true for "auto" (or
// ""), when the terminal's answers decide.
func ParseProtocol(s string) (p Protocol, auto bool, err error) {
	if s == "" || s == "auto" {
		return Blocks, true, nil
	}
	for i, n := range protocolNames {
		if n == s {
			return Protocol(i), false, nil
		}
	}
	return Blocks, false, fmt.Errorf("unknown graphics %q: use auto, kitty, sixel, iterm or blocks", s)
}

// Caps is what a terminal said about itself.
type Caps struct {
	Answered    bool        // the terminal answered DA1: the other fields are its word
	Kitty       bool        // answered the kitty graphics query
	KittyFiles  bool        // kitty read a picture from a temporary file: it runs on this machine
	Sixel       bool        // DA1 lists sixel (4)
	ITerm       bool        // XTVERSION names iTerm2 or WezTerm
	Cell        image.Point // one cell in pixels; zero when unknown
	Screen      image.Point // the text area in pixels, when the cell size was not given
	SixelColors int         // colour registers, 0 when not said
	SixelMax    image.Point // largest sixel image, zero when not said
	Version     string      // XTVERSION, such as "XTerm(379)" or "kitty(0.26.5)"
	PixelMouse  bool        // SGR-pixel mouse reports (DECSET 1016) are known
}

// Best is the richest protocol the terminal offers. Images need the cell
// size, to know where the picture's pixels land.
func (c Caps) Best() Protocol {
	switch {
	case c.Cell.X <= 0 || c.Cell.Y <= 0:
		return Blocks
	case c.Kitty:
		return Kitty
	case c.Sixel:
		return Sixel
	case c.ITerm:
		return ITerm
	}
	return Blocks
}
