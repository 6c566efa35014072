package vnc

import (
	"strings"
	"time"
)

// QEMU's VNC server looks for changes on a timer that starts at 30 ms,
// grows by 50 ms after each look that finds none (up to 3 s) and halves
// after one that does (ui/vnc.c, vnc_refresh). A typed key's echo that
// comes a little after the key waits for that timer: 80, 210, 390, 620,
// 900 ms after the key, whatever the guest did meanwhile. Any client
// message past FramebufferUpdateRequest (type > 3) sets the timer back to
// 30 ms (protocol_client_msg), so while the user is at the keyboard or
// the mouse the client sends one every nudgeEvery: the release of a key
// that is not pressed, which QEMU drops before the guest sees it
// (qkbd_state_key_event ignores "suspicious key-up events").
const (
	nudgeEvery = 30 * time.Millisecond // QEMU's shortest interval
	nudgeFor   = time.Second           // after the last key or pointer event
	// nudgeKey is the key released: one this client never presses
	// (Tap holds only the left modifiers), in QEMU's keymaps.
	nudgeKey uint32 = 0xff67 // Menu
)

// nudgesQEMU says whether a server is QEMU's, by the name it gives
// ("QEMU", or "QEMU (name)"): another server may not drop the release.
func nudgesQEMU(desktopName string) bool {
	return desktopName == "QEMU" || strings.HasPrefix(desktopName, "QEMU (")
}

// nudgePlan is what to do at now, given when the user's last input went
// out and the last message that set QEMU's timer back (an input or a
// nudge): whether to nudge now, and how long until the plan should be
// asked again (0: not before the next input).
func nudgePlan(now, lastInput, lastReset time.Time) (nudge bool, next time.Duration) {
	left := nudgeFor - now.Sub(lastInput)
	if left <= 0 {
		return false, 0
	}
	if wait := nudgeEvery - now.Sub(lastReset); wait > 0 {
		return false, wait
	}
	return true, min(nudgeEvery, left)
}
