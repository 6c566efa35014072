package main

import (
	"fmt"
	"strconv"
	"strings"
)

// glyphs are the digits the counter is drawn with, five lines tall, so a
// VNC view of the guest visibly changes every second even when scaled down
// to a few terminal cells.
var glyphs = [10][5]string{
	{"#####", "#   #", "#   #", "#   #", "#####"},
	{"  #  ", " ##  ", "  #  ", "  #  ", " ### "},
	{"#####", "    #", "#####", "#    ", "#####"},
	{"#####", "    #", " ####", "    #", "#####"},
	{"#   #", "#   #", "#####", "    #", "    #"},
	{"#####", "#    ", "#####", "    #", "#####"},
	{"#####", "#    ", "#####", "#   #", "#####"},
	{"#####", "    #", "   # ", "  #  ", "  #  "},
	{"#####", "#   #", "#####", "#   #", "#####"},
	{"#####", "#   #", "#####", "    #", "#####"},
}

// bigNumber renders n in glyphs, each pixel two characters wide so the
// digits look square on an 80x25 text console.
func bigNumber(n int) []string {
	lines := make([]string, 5)
	for _, d := range strconv.Itoa(n) {
		g := glyphs[d-'0']
		for row := range lines {
			lines[row] += strings.ReplaceAll(strings.ReplaceAll(g[row], "#", "██"), " ", "  ") + "  "
		}
	}
	return lines
}

// screen is what the agent draws on the VGA console each tick.
type screen struct {
	Tick      int
	Uptime    float64
	DirtiedMB int
	Disk      bool // a guest with a disk shows its last fsynced record
	DiskSeq   int
	Problem   string
	Keys      string // the last keys typed, printable
}

// lines is the screen, top to bottom; the last is the typed keys'.
func (s screen) lines() []string {
	title := "  handoff test guest"
	if s.Disk {
		title = "  handoff desktop guest (Debian 12)"
	}
	lines := []string{title, ""}
	for _, line := range bigNumber(s.Tick) {
		lines = append(lines, "    "+line)
	}
	integrity := "integrity ok"
	if s.Problem != "" {
		integrity = "integrity FAIL: " + s.Problem
	}
	disk := ""
	if s.Disk {
		disk = fmt.Sprintf("disk record %d   ", s.DiskSeq)
	}
	return append(lines, "", fmt.Sprintf("  uptime %.0fs   dirtied %d MB   %s%s", s.Uptime, s.DirtiedMB, disk, integrity),
		"", "  typed: "+s.Keys)
}

// render draws the whole screen over what is there, line by line, rather
// than clearing it first: a VNC view that looks between a clear and the
// redraw would show the guest's screen blank.
func (s screen) render() string {
	var b strings.Builder
	b.WriteString("\x1b[?25l\x1b[H") // hide the cursor, home
	for _, line := range s.lines() {
		b.WriteString(line + "\x1b[K\r\n")
	}
	b.WriteString("\x1b[J")
	return b.String()
}

// renderKeys draws only the typed keys' line: a key's echo changes a few
// characters of the screen, as a desktop's would.
func (s screen) renderKeys() string {
	lines := s.lines()
	return fmt.Sprintf("\x1b[%d;1H%s\x1b[K", len(lines), lines[len(lines)-1])
}

// printable keeps what the console can show of typed bytes.
func printable(b []byte) string {
	var out strings.Builder
	for _, c := range string(b) {
		switch {
		case c == '\r' || c == '\n':
			out.WriteString("⏎")
		case c < 0x20 || c == 0x7f:
			out.WriteString("·")
		default:
			out.WriteRune(c)
		}
	}
	return out.String()
}
