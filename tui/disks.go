package tui

import (
	"strings"

	"github.com/handoff-dev/handoff/units"
)

// noteDisk shows a disk move's report among the recent events: each step
// once, its bytes updated in place as they move.
func (m *Model) noteDisk(d DiskProgressMsg) {
	step := strings.TrimSpace("disks: " + d.Step + " " + d.Disk)
	text := step
	if d.Total > 0 {
		text += " " + units.Bytes(uint64(max(d.Done, 0))) + " of " + units.Bytes(uint64(d.Total))
	}
	if n := len(m.dash.Events); n > 0 {
		last := m.dash.Events[n-1]
		if i := strings.IndexByte(last, ' '); i >= 0 && strings.HasPrefix(last[i+1:], step) {
			m.dash.Events[n-1] = last[:i+1] + text
			return
		}
	}
	m.note(text)
}
