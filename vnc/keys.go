package vnc

// X11 keysyms for the keys a terminal can send.
const (
	KeyBackspace uint32 = 0xff08
	KeyTab       uint32 = 0xff09
	KeyReturn    uint32 = 0xff0d
	KeyEscape    uint32 = 0xff1b
	KeyHome      uint32 = 0xff50
	KeyLeft      uint32 = 0xff51
	KeyUp        uint32 = 0xff52
	KeyRight     uint32 = 0xff53
	KeyDown      uint32 = 0xff54
	KeyPageUp    uint32 = 0xff55
	KeyPageDown  uint32 = 0xff56
	KeyEnd       uint32 = 0xff57
	KeyInsert    uint32 = 0xff63
	KeyDelete    uint32 = 0xffff
	KeyF1        uint32 = 0xffbe
	KeyF2        uint32 = 0xffbf
	KeyF3        uint32 = 0xffc0
	KeyF4        uint32 = 0xffc1
	KeyF5        uint32 = 0xffc2
	KeyF6        uint32 = 0xffc3
	KeyF7        uint32 = 0xffc4
	KeyF8        uint32 = 0xffc5
	KeyF9        uint32 = 0xffc6
	KeyF10       uint32 = 0xffc7
	KeyF11       uint32 = 0xffc8
	KeyF12       uint32 = 0xffc9
	KeyShiftL    uint32 = 0xffe1
	KeyControlL  uint32 = 0xffe3
	KeyAltL      uint32 = 0xffe9
)

// KeyF returns the keysym of function key n (1 to 12).
func KeyF(n int) uint32 { return KeyF1 + uint32(n-1) }

// Modifiers are held down around a key.
type Modifiers uint8

const (
	ModShift Modifiers = 1 << iota
	ModCtrl
	ModAlt
)

// modifierKeys in the order they are pressed (and released in reverse).
var modifierKeys = [...]struct {
	mod Modifiers
	sym uint32
}{{ModCtrl, KeyControlL}, {ModAlt, KeyAltL}, {ModShift, KeyShiftL}}

// KeysymForRune maps a typed character to its keysym: Latin-1 maps to
// itself, the rest of Unicode to 0x01000000 plus its code point.
func KeysymForRune(r rune) uint32 {
	if r >= 0x20 && r <= 0x7e || r >= 0xa0 && r <= 0xff {
		return uint32(r)
	}
	return 0x01000000 | uint32(r)
}

// tapSequence is the key events of one tap: modifiers down, the key down
// and up, modifiers up.
func tapSequence(keysym uint32, mods Modifiers) []keyEvent {
	var ev []keyEvent
	for _, m := range modifierKeys {
		if mods&m.mod != 0 {
			ev = append(ev, keyEvent{m.sym, true})
		}
	}
	ev = append(ev, keyEvent{keysym, true}, keyEvent{keysym, false})
	for i := len(modifierKeys) - 1; i >= 0; i-- {
		if mods&modifierKeys[i].mod != 0 {
			ev = append(ev, keyEvent{modifierKeys[i].sym, false})
		}
	}
	return ev
}

type keyEvent struct {
	sym  uint32
	down bool
}
