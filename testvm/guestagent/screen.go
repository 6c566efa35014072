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

func (s screen) render() string {
	var b strings.Builder
	b.WriteString("\x1b[?25l\x1b[H\x1b[2J") // hide the cursor, home, clear
	if s.Disk {
		b.WriteString("  handoff desktop guest (Debian 12)\r\n\r\n")
	} else {
		b.WriteString("  handoff test guest\r\n\r\n")
	}
	for _, line := range bigNumber(s.Tick) {
		b.WriteString("    " + line + "\r\n")
	}
	integrity := "integrity ok"
	if s.Problem != "" {
		integrity = "integrity FAIL: " + s.Problem
	}
	disk := ""
	if s.Disk {
		disk = fmt.Sprintf("disk record %d   ", s.DiskSeq)
	}
	fmt.Fprintf(&b, "\r\n  uptime %.0fs   dirtied %d MB   %s%s\r\n", s.Uptime, s.DirtiedMB, disk, integrity)
	fmt.Fprintf(&b, "\r\n  typed: %s\r\n", s.Keys)
	return b.String()
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
