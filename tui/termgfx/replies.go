package termgfx

import (
	"bytes"
	"image"
	"strconv"
	"strings"
)

// Queries ask a terminal what it can draw. DA1 comes last: every terminal
// answers it, and in order, so its answer says all the others are in.
const Queries = "\x1b_Gi=31,s=1,v=1,a=q,t=d,f=24;AAAA\x1b\\" + // kitty graphics
	"\x1b[>0q" + // XTVERSION: the terminal's name
	"\x1b[16t" + // the cell size in pixels
	"\x1b[14t" + // the text area in pixels
	"\x1b[?1;1;0S" + // XTSMGRAPHICS: sixel colour registers
	"\x1b[?2;1;0S" + // XTSMGRAPHICS: the largest sixel image
	"\x1b[?1016$p" + // DECRQM: SGR-pixel mouse reports
	"\x1b[c" // DA1

// ParseReplies reads what a terminal answered to Queries; done is true
// once the DA1 answer is in. Bytes that are no answer are ignored.
func ParseReplies(b []byte) (c Caps, done bool) {
	for len(b) > 0 {
		i := bytes.IndexByte(b, 0x1b)
		if i < 0 || i+1 >= len(b) {
			break
		}
		b = b[i:]
		var body []byte
		var n int
		switch b[1] {
		case '[':
			body, n = csi(b)
			if n > 0 {
				done = c.csiReply(body) || done
			}
		case '_', 'P', ']':
			body, n = stringSeq(b)
			if n > 0 {
				c.stringReply(b[1], body)
			}
		}
		if n == 0 {
			// A cut sequence: the rest has not arrived yet, unless another
			// escape follows it and it never will.
			if isIntro(b[1]) && bytes.IndexByte(b[2:], 0x1b) < 0 {
				break
			}
			n = 1
		}
		b = b[n:]
	}
	return c, done
}

func isIntro(c byte) bool { return c == '[' || c == '_' || c == 'P' || c == ']' }

// csi returns a CSI sequence's parameters and final byte, and its length.
func csi(b []byte) ([]byte, int) {
	for i := 2; i < len(b); i++ {
		if b[i] >= 0x40 && b[i] <= 0x7e {
			return b[2 : i+1], i + 1
		}
	}
	return nil, 0
}

// stringSeq returns the body of an APC, DCS or OSC sequence ended by ST
// (or BEL for OSC), and its length.
func stringSeq(b []byte) ([]byte, int) {
	for i := 2; i < len(b); i++ {
		if b[i] == 0x07 {
			return b[2:i], i + 1
		}
		if b[i] == 0x1b && i+1 < len(b) && b[i+1] == '\\' {
			return b[2:i], i + 2
		}
	}
	return nil, 0
}

func (c *Caps) csiReply(body []byte) (da1 bool) {
	s := string(body)
	final := s[len(s)-1]
	params := s[:len(s)-1]
	switch {
	case final == 'c' && strings.HasPrefix(params, "?"):
		c.Answered = true
		for _, p := range strings.Split(params[1:], ";") {
			if p == "4" {
				c.Sixel = true
			}
		}
		return true
	case final == 't':
		f := ints(params)
		if len(f) == 3 && f[0] == 6 && f[1] > 0 && f[2] > 0 {
			c.Cell = image.Pt(f[2], f[1])
		}
		if len(f) == 3 && f[0] == 4 && f[1] > 0 && f[2] > 0 {
			c.Screen = image.Pt(f[2], f[1])
		}
	case final == 'S' || final == 's':
		// XTSMGRAPHICS answers end in S (xterm); Pi;Ps;Pv with Ps 0 for success.
		if !strings.HasPrefix(params, "?") {
			break
		}
		f := ints(params[1:])
		if len(f) >= 3 && f[1] == 0 {
			switch {
			case f[0] == 1:
				c.SixelColors = f[2]
			case f[0] == 2 && len(f) >= 4:
				c.SixelMax = image.Pt(f[2], f[3])
			}
		}
	case final == 'y' && strings.HasPrefix(params, "?1016;"):
		f := ints(strings.TrimSuffix(params[1:], "$"))
		c.PixelMouse = len(f) == 2 && (f[1] == 1 || f[1] == 2)
	}
	return false
}

func (c *Caps) stringReply(kind byte, body []byte) {
	s := string(body)
	switch kind {
	case '_':
		if rest, ok := strings.CutPrefix(s, "Gi=31;"); ok {
			c.Kitty = strings.HasPrefix(rest, "OK")
		}
		if rest, ok := strings.CutPrefix(s, "Gi=32;"); ok {
			c.KittyFiles = strings.HasPrefix(rest, "OK")
		}
	case 'P':
		if name, ok := strings.CutPrefix(s, ">|"); ok {
			c.Version = name
			if strings.HasPrefix(name, "iTerm2") || strings.HasPrefix(name, "WezTerm") {
				c.ITerm = true
			}
		}
	}
}

// ints splits "1;2;3" into numbers; a field that is no number is -1.
func ints(s string) []int {
	var out []int
	for _, f := range strings.Split(s, ";") {
		n, err := strconv.Atoi(f)
		if err != nil {
			n = -1
		}
		out = append(out, n)
	}
	return out
}
