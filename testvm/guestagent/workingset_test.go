package main

import (
	"strings"
	"testing"
)

func TestWorkingSetCatchesLostWrites(t *testing.T) {
	mem := make([]byte, 40*pageSize)
	ws := newWorkingSet(mem, []byte(strings.Repeat("some code and some text ", 1000)), 1)
	ws.dirty(100) // every page twice and a half
	if err := ws.verify(); err != nil {
		t.Fatalf("verify after honest writes: %v", err)
	}
	if ws.wrote != 100*pageSize {
		t.Errorf("wrote %d bytes, want %d", ws.wrote, 100*pageSize)
	}

	// A migration that loses the last write of a page leaves its previous
	// generation in place.
	stale := make([]byte, pageSize)
	copy(stale, mem[3*pageSize:])
	ws.dirty(40)
	copy(mem[3*pageSize:], stale)
	if err := ws.verify(); err == nil || !strings.Contains(err.Error(), "page 3 has generation") {
		t.Errorf("verify after a lost write = %v, want page 3's stale generation", err)
	}
	copy(mem[3*pageSize:4*pageSize], mem[4*pageSize:]) // page 4's bytes in page 3
	if err := ws.verify(); err == nil || !strings.Contains(err.Error(), "page 3 is torn") {
		t.Errorf("verify after a misplaced page = %v, want page 3 torn", err)
	}
}

func TestWorkingSetZeroPagesStayZero(t *testing.T) {
	mem := make([]byte, 10*pageSize)
	ws := newWorkingSet(mem, nil, 1)
	ws.dirty(10)
	mem[5*pageSize] = 1 // page 5 is a zero page
	if err := ws.verify(); err == nil || !strings.Contains(err.Error(), "page 5 should be zero") {
		t.Errorf("verify = %v, want page 5 not zero", err)
	}
}

func TestSealedRegion(t *testing.T) {
	r := newSealedRegion(make([]byte, 8*pageSize), 7)
	if err := r.verify(); err != nil {
		t.Fatal(err)
	}
	r.mem[5*pageSize+3] ^= 1
	if err := r.verify(); err == nil {
		t.Error("verify after a flipped bit passed")
	}
}

func TestPacer(t *testing.T) {
	p := &pacer{bytesPerSec: 4096 * 100} // 100 pages a second
	if got := p.pages(0.05, 0.05, 0); got != 5 {
		t.Errorf("one step = %d pages, want 5", got)
	}
	// After a 3 s pause (a migration's switch), no burst beyond two steps.
	if got := p.pages(3, 0.05, 0); got != 10 {
		t.Errorf("after a pause = %d pages, want 10", got)
	}
	total := 0
	for range 20 {
		total += p.pages(0.05, 0.05, 0)
	}
	if total != 100 {
		t.Errorf("one second of steps = %d pages, want 100", total)
	}
	// The agent's own 0.3 s of checks is no pause: all that fell due is written.
	if got := p.pages(0.35, 0.05, 0.3); got != 35 {
		t.Errorf("after the agent's own checks = %d pages, want 35", got)
	}
	if got := (&pacer{}).pages(1, 0.05, 0); got != 0 {
		t.Errorf("rate 0 = %d pages", got)
	}
}

func TestBigNumberIsFiveLinesOfEqualWidth(t *testing.T) {
	lines := bigNumber(1208)
	if len(lines) != 5 {
		t.Fatalf("%d lines, want 5", len(lines))
	}
	for _, l := range lines {
		if len([]rune(l)) != len([]rune(lines[0])) {
			t.Errorf("ragged line %q", l)
		}
	}
	if strings.Join(bigNumber(1), "") == strings.Join(bigNumber(7), "") {
		t.Error("1 and 7 look the same")
	}
}
