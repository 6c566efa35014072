package testvm

import "testing"

func TestParseExtents(t *testing.T) {
	// As debugfs 1.47 prints "ex" of a fallocated file, with a depth-1 tree.
	table := `Level Entries       Logical        Physical Length Flags
 0/ 1   1/  1     0 - 16383  4249            16384
 1/ 1   1/  2     0 - 16382   4250 -  20632  16383 Uninit
 1/ 1   2/  2 16383 - 16383  20633 -  20633      1 
`
	got, err := parseExtents(table)
	want := []extent{{0, 4250, 16383}, {16383, 20633, 1}}
	if err != nil || len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
		t.Errorf("parseExtents = %v, %v; want %v", got, err, want)
	}
	if _, err := parseExtents("Level Entries       Logical        Physical Length Flags\n"); err == nil {
		t.Error("an empty table parsed")
	}
}

func TestMirrorFromDeb822(t *testing.T) {
	sources := `Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main

Types: deb
# a comment: here
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main
`
	if got := mirrorFromDeb822(sources, "bookworm"); got != "http://mirror.example/debian" {
		t.Errorf("mirror = %q", got)
	}
	if got := mirrorFromDeb822(sources, "trixie"); got != "" {
		t.Errorf("mirror for a suite not there = %q", got)
	}
}

func TestIsPhase(t *testing.T) {
	for line, want := range map[string]bool{
		"I: Unpacking the base system...":                   true,
		"I: Resolving dependencies of required packages...": true,
		"I: Unpacking libc6...":                             false,
		"I: Configuring apt...":                             false,
		"I: Base system installed successfully.":            false,
	} {
		if isPhase(line) != want {
			t.Errorf("isPhase(%q) = %v", line, !want)
		}
	}
}
