package tui

import (
	tea "github.com/charmbracelet/bubbletea"

	"github.com/handoff-dev/handoff/vnc"
)

// vmKey is one key for the VM: a keysym with the modifiers held around it.
type vmKey struct {
	sym  uint32
	mods vnc.Modifiers
}

var namedKeys = map[tea.KeyType]vmKey{
	tea.KeyEnter: {vnc.KeyReturn, 0}, tea.KeyTab: {vnc.KeyTab, 0}, tea.KeyShiftTab: {vnc.KeyTab, vnc.ModShift},
	tea.KeyBackspace: {vnc.KeyBackspace, 0}, tea.KeyEsc: {vnc.KeyEscape, 0}, tea.KeySpace: {' ', 0},
	tea.KeyUp: {vnc.KeyUp, 0}, tea.KeyDown: {vnc.KeyDown, 0}, tea.KeyLeft: {vnc.KeyLeft, 0}, tea.KeyRight: {vnc.KeyRight, 0},
	tea.KeyShiftUp: {vnc.KeyUp, vnc.ModShift}, tea.KeyShiftDown: {vnc.KeyDown, vnc.ModShift},
	tea.KeyShiftLeft: {vnc.KeyLeft, vnc.ModShift}, tea.KeyShiftRight: {vnc.KeyRight, vnc.ModShift},
	tea.KeyCtrlUp: {vnc.KeyUp, vnc.ModCtrl}, tea.KeyCtrlDown: {vnc.KeyDown, vnc.ModCtrl},
	tea.KeyCtrlLeft: {vnc.KeyLeft, vnc.ModCtrl}, tea.KeyCtrlRight: {vnc.KeyRight, vnc.ModCtrl},
	tea.KeyHome: {vnc.KeyHome, 0}, tea.KeyEnd: {vnc.KeyEnd, 0}, tea.KeyPgUp: {vnc.KeyPageUp, 0}, tea.KeyPgDown: {vnc.KeyPageDown, 0},
	tea.KeyInsert: {vnc.KeyInsert, 0}, tea.KeyDelete: {vnc.KeyDelete, 0},
	tea.KeyCtrlAt: {'@', vnc.ModCtrl}, tea.KeyCtrlBackslash: {'\\', vnc.ModCtrl},
	tea.KeyCtrlCaret: {'^', vnc.ModCtrl}, tea.KeyCtrlUnderscore: {'_', vnc.ModCtrl},
	tea.KeyCtrlCloseBracket: {']', vnc.ModCtrl},
}

var functionKeys = [...]tea.KeyType{tea.KeyF1, tea.KeyF2, tea.KeyF3, tea.KeyF4, tea.KeyF5, tea.KeyF6,
	tea.KeyF7, tea.KeyF8, tea.KeyF9, tea.KeyF10, tea.KeyF11, tea.KeyF12}

// keysFor maps a terminal key to what the VM should receive; ok is false
// for what a terminal cannot say as a key (such as a focus report).
func keysFor(k tea.KeyMsg) (keys []vmKey, ok bool) {
	var alt vnc.Modifiers
	if k.Alt {
		alt = vnc.ModAlt
	}
	switch {
	case k.Type == tea.KeyRunes:
		for _, r := range k.Runes {
			keys = append(keys, vmKey{vnc.KeysymForRune(r), alt})
		}
		return keys, len(keys) > 0
	case k.Type >= tea.KeyCtrlA && k.Type <= tea.KeyCtrlZ && k.Type != tea.KeyTab && k.Type != tea.KeyEnter && k.Type != tea.KeyBackspace:
		return []vmKey{{uint32('a' + int(k.Type-tea.KeyCtrlA)), vnc.ModCtrl | alt}}, true
	}
	for i, f := range functionKeys {
		if k.Type == f {
			return []vmKey{{vnc.KeyF(i + 1), alt}}, true
		}
	}
	if key, found := namedKeys[k.Type]; found {
		key.mods |= alt
		return []vmKey{key}, true
	}
	return nil, false
}
