package tui

import (
	"testing"

	tea "github.com/charmbracelet/bubbletea"

	"github.com/handoff-dev/handoff/vnc"
)

func TestKeysFor(t *testing.T) {
	for _, tc := range []struct {
		name string
		key  tea.KeyMsg
		want []vmKey
	}{
		{"letters", tea.KeyMsg{Type: tea.KeyRunes, Runes: []rune("hI")}, []vmKey{{'h', 0}, {'I', 0}}},
		{"alt-x", tea.KeyMsg{Type: tea.KeyRunes, Runes: []rune("x"), Alt: true}, []vmKey{{'x', vnc.ModAlt}}},
		{"non-latin", tea.KeyMsg{Type: tea.KeyRunes, Runes: []rune("€")}, []vmKey{{0x010020ac, 0}}},
		{"enter", tea.KeyMsg{Type: tea.KeyEnter}, []vmKey{{vnc.KeyReturn, 0}}},
		{"tab", tea.KeyMsg{Type: tea.KeyTab}, []vmKey{{vnc.KeyTab, 0}}},
		{"shift-tab", tea.KeyMsg{Type: tea.KeyShiftTab}, []vmKey{{vnc.KeyTab, vnc.ModShift}}},
		{"backspace", tea.KeyMsg{Type: tea.KeyBackspace}, []vmKey{{vnc.KeyBackspace, 0}}},
		{"esc", tea.KeyMsg{Type: tea.KeyEsc}, []vmKey{{vnc.KeyEscape, 0}}},
		{"space", tea.KeyMsg{Type: tea.KeySpace}, []vmKey{{' ', 0}}},
		{"ctrl-c goes to the VM", tea.KeyMsg{Type: tea.KeyCtrlC}, []vmKey{{'c', vnc.ModCtrl}}},
		{"ctrl-a", tea.KeyMsg{Type: tea.KeyCtrlA}, []vmKey{{'a', vnc.ModCtrl}}},
		{"ctrl-z", tea.KeyMsg{Type: tea.KeyCtrlZ}, []vmKey{{'z', vnc.ModCtrl}}},
		{"alt-ctrl-d", tea.KeyMsg{Type: tea.KeyCtrlD, Alt: true}, []vmKey{{'d', vnc.ModCtrl | vnc.ModAlt}}},
		{"up", tea.KeyMsg{Type: tea.KeyUp}, []vmKey{{vnc.KeyUp, 0}}},
		{"ctrl-left", tea.KeyMsg{Type: tea.KeyCtrlLeft}, []vmKey{{vnc.KeyLeft, vnc.ModCtrl}}},
		{"shift-right", tea.KeyMsg{Type: tea.KeyShiftRight}, []vmKey{{vnc.KeyRight, vnc.ModShift}}},
		{"page down", tea.KeyMsg{Type: tea.KeyPgDown}, []vmKey{{vnc.KeyPageDown, 0}}},
		{"delete", tea.KeyMsg{Type: tea.KeyDelete}, []vmKey{{vnc.KeyDelete, 0}}},
		{"F1", tea.KeyMsg{Type: tea.KeyF1}, []vmKey{{vnc.KeyF(1), 0}}},
		{"F12", tea.KeyMsg{Type: tea.KeyF12}, []vmKey{{vnc.KeyF(12), 0}}},
		{"ctrl-]", tea.KeyMsg{Type: tea.KeyCtrlCloseBracket}, []vmKey{{']', vnc.ModCtrl}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := keysFor(tc.key)
			if !ok || len(got) != len(tc.want) {
				t.Fatalf("keysFor = %v, %v; want %v", got, ok, tc.want)
			}
			for i := range got {
				if got[i] != tc.want[i] {
					t.Fatalf("keysFor = %v, want %v", got, tc.want)
				}
			}
		})
	}
}
