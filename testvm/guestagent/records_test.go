package main

import (
	"strings"
	"testing"
)

// memDisk is a disk with a volatile write cache: Sync makes writes
// durable, crash drops what was not synced, as a power cut does.
type memDisk struct {
	durable, current []byte
}

func newMemDisk(blocks int) *memDisk {
	return &memDisk{durable: make([]byte, blocks*blockSize), current: make([]byte, blocks*blockSize)}
}

func (m *memDisk) ReadAt(p []byte, off int64) (int, error)  { return copy(p, m.current[off:]), nil }
func (m *memDisk) WriteAt(p []byte, off int64) (int, error) { return copy(m.current[off:], p), nil }
func (m *memDisk) Sync() error                              { copy(m.durable, m.current); return nil }
func (m *memDisk) crash()                                   { copy(m.current, m.durable) }
func (m *memDisk) snapshot() *memDisk {
	return &memDisk{durable: append([]byte(nil), m.durable...), current: append([]byte(nil), m.current...)}
}

const testBlocks = 512

func start(t *testing.T, d device) (*records, diskStart) {
	t.Helper()
	r := newRecords(d, testBlocks, make([]byte, blockSize), make([]byte, sweepBlocks*blockSize))
	s, err := r.recover()
	if err != nil {
		t.Fatal(err)
	}
	return r, s
}

func ticks(t *testing.T, r *records, n int) {
	t.Helper()
	for range n {
		p, err := r.tick()
		if err != nil {
			t.Fatal(err)
		}
		if p != "" {
			t.Fatalf("tick at record %d: %s", r.seq, p)
		}
	}
}

func TestRecordsSurviveAPowerCut(t *testing.T) {
	disk := newMemDisk(testBlocks)
	r, s := start(t, disk)
	if s != (diskStart{}) {
		t.Fatalf("fresh disk start = %+v", s)
	}
	ticks(t, r, 50) // enough to overwrite blocks in place
	fsynced := r.durable
	// A cut in the middle of the next tick: two records written, not synced.
	for range 2 {
		r.seq++
		b := r.blockOf(r.seq)
		encodeRecord(r.one, r.seq, b, r.durable)
		r.write(r.one, b)
	}
	disk.current[r.blockOf(r.seq)*blockSize+100] ^= 1 // and one of them torn
	disk.Sync()                                       // what reached the platter
	disk.crash()

	r2, s := start(t, disk)
	if s.problem != "" || s.fsynced != fsynced || s.last != fsynced+1 || s.repaired != 1 {
		t.Fatalf("start after a cut = %+v, want ok, fsynced %d, last %d (the torn one is gone), one repaired", s, fsynced, fsynced+1)
	}
	ticks(t, r2, 3)
}

func TestRecordsCatchALostFsyncedWrite(t *testing.T) {
	disk := newMemDisk(testBlocks)
	r, _ := start(t, disk)
	ticks(t, r, 20)
	before := disk.snapshot()
	ticks(t, r, 1)
	// The commit landed but one of the tick's records did not.
	b := r.blockOf(r.seq - 1)
	copy(disk.durable[b*blockSize:(b+1)*blockSize], before.durable[b*blockSize:])
	disk.crash()
	_, s := start(t, disk)
	if !strings.Contains(s.problem, "is missing from block") {
		t.Fatalf("start after a lost write = %+v, want a missing record", s)
	}
}

func TestRecordsCatchDiskFromAnotherInstant(t *testing.T) {
	disk := newMemDisk(testBlocks)
	r, _ := start(t, disk)
	ticks(t, r, 10)
	early := disk.snapshot()
	ticks(t, r, 5)

	// Memory of now, disk of five ticks ago.
	r.dev = early
	p, _ := r.tick()
	if !strings.Contains(p, "from an earlier instant") {
		t.Errorf("memory ahead of the disk: %q", p)
	}

	// Memory of five ticks ago, disk of now.
	disk2 := newMemDisk(testBlocks)
	r2, _ := start(t, disk2)
	ticks(t, r2, 10)
	memory := *r2
	memory.last = append([]uint64(nil), r2.last...)
	ticks(t, r2, 5)
	p, _ = memory.tick()
	if !strings.Contains(p, "from a later instant") {
		t.Errorf("disk ahead of memory: %q", p)
	}

	// A record lost without the commit block noticing: the read-back does.
	disk3 := newMemDisk(testBlocks)
	r3, _ := start(t, disk3)
	ticks(t, r3, 10)
	clear(disk3.current[r3.blockOf(r3.seq)*blockSize:][:blockSize])
	p, _ = r3.tick()
	if !strings.Contains(p, "is missing from block") {
		t.Errorf("a lost write: %q", p)
	}
}

func TestRecordsSweepTheWholeFile(t *testing.T) {
	disk := newMemDisk(testBlocks)
	r, _ := start(t, disk)
	ticks(t, r, 3)
	// A block no recent or coming record touches, damaged.
	near := map[int]bool{}
	for q := uint64(1); q <= r.seq+checkTicks*recordsPerTick*4; q++ {
		near[r.blockOf(q)] = true
	}
	victim := -1
	for b := 1; b < testBlocks && victim < 0; b++ {
		if !near[b] {
			victim = b
		}
	}
	disk.current[victim*blockSize+7] = 1
	var p string
	for range testBlocks/sweepBlocks + 1 {
		if p, _ = r.tick(); p != "" {
			break
		}
	}
	if !strings.Contains(p, "is damaged") {
		t.Errorf("sweep found %q, want block %d damaged", p, victim)
	}
}
