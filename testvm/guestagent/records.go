package main

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
)

// The Debian guest's disk check. The agent keeps a file of fixed 4 KiB
// blocks, preallocated, and overwrites blocks in place as a desktop's
// programs do. Every tick it writes a few records to scattered blocks,
// fsyncs, then rewrites block 0, the commit block, with the last record now
// durable, and fsyncs again. Memory keeps which record each block holds.
// Each tick, before writing, it reads blocks back bypassing the page cache
// (which moves with memory and would hide a lost write) and compares:
//   - the commit block, which changes every tick: any pairing of memory with
//     a disk from another instant shows here at once;
//   - the blocks the last and the next few ticks write: a lost write, or a
//     disk that already holds memory's future;
//   - a sweep of the whole file, a slice per tick.
//
// Which block a record goes to is a function of its number alone, so a
// restored memory and a disk agree on where to look.

const blockSize = 4096

// recordsPerTick is how many scattered blocks each tick writes.
const recordsPerTick = 4

// checkTicks is how many ticks back and ahead each tick reads.
const checkTicks = 8

// sweepBlocks is the slice of the file each tick sweeps: 1 MiB, so the
// sweep's reads (which DMA into a buffer of ours) dirty little memory.
const sweepBlocks = 256

const (
	recordMagic = "hgrecord"
	commitMagic = "hgcommit"
	sumAt       = blockSize - 4 // a CRC-32 of everything before it
)

// device is the record file: O_DIRECT in the guest, memory in tests.
type device interface {
	ReadAt(p []byte, off int64) (int, error)
	WriteAt(p []byte, off int64) (int, error)
	Sync() error
}

// records is the agent's disk state and what memory says about it.
type records struct {
	dev     device
	blocks  int      // the file's blocks; block 0 commits, 1.. hold records
	last    []uint64 // the record memory says each block holds (0: none)
	seq     uint64   // the last record written
	durable uint64   // the last record the commit block says is fsynced
	sweep   int      // the next block the sweep reads
	one     []byte   // one block, aligned for O_DIRECT
	many    []byte   // sweepBlocks blocks, aligned
}

// blockOf scatters records over the file (splitmix64 of the number).
func (r *records) blockOf(seq uint64) int {
	z := seq + 0x9e3779b97f4a7c15
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	z ^= z >> 31
	return 1 + int(z%uint64(r.blocks-1))
}

// A block read back is one of these.
type blockKind int

const (
	blockZero blockKind = iota
	blockRecord
	blockCommit
	blockDamaged
)

type decoded struct {
	kind    blockKind
	seq     uint64 // a record's number; a commit's durable record
	block   int    // the block a record says it belongs to
	durable uint64 // what was durable when a record was written
}

// encodeRecord fills b with record seq: its header, contents derived from
// its number (so a stale or misplaced block never passes), and the sum.
func encodeRecord(b []byte, seq uint64, block int, durable uint64) {
	copy(b, recordMagic)
	binary.LittleEndian.PutUint64(b[8:], seq)
	binary.LittleEndian.PutUint64(b[16:], uint64(block))
	binary.LittleEndian.PutUint64(b[24:], durable)
	x := seq*0x2545f4914f6cdd1d + 1
	for i := 32; i+8 <= sumAt; i += 8 {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		binary.LittleEndian.PutUint64(b[i:], x)
	}
	binary.LittleEndian.PutUint32(b[sumAt:], crc32.ChecksumIEEE(b[:sumAt]))
}

func encodeCommit(b []byte, durable uint64) {
	clear(b)
	copy(b, commitMagic)
	binary.LittleEndian.PutUint64(b[8:], durable)
	binary.LittleEndian.PutUint32(b[sumAt:], crc32.ChecksumIEEE(b[:sumAt]))
}

func decode(b []byte) decoded {
	magic := string(b[:8])
	if magic != recordMagic && magic != commitMagic {
		if allZero(b) {
			return decoded{kind: blockZero}
		}
		return decoded{kind: blockDamaged}
	}
	if binary.LittleEndian.Uint32(b[sumAt:]) != crc32.ChecksumIEEE(b[:sumAt]) {
		return decoded{kind: blockDamaged}
	}
	d := decoded{seq: binary.LittleEndian.Uint64(b[8:])}
	if magic == commitMagic {
		d.kind = blockCommit
		return d
	}
	d.kind, d.block, d.durable = blockRecord, int(binary.LittleEndian.Uint64(b[16:])), binary.LittleEndian.Uint64(b[24:])
	return d
}

func allZero(b []byte) bool {
	for len(b) >= 8 {
		if binary.LittleEndian.Uint64(b) != 0 {
			return false
		}
		b = b[8:]
	}
	return !bytes.ContainsFunc(b, func(r rune) bool { return r != 0 })
}

func newRecords(dev device, blocks int, one, many []byte) *records {
	return &records{dev: dev, blocks: blocks, last: make([]uint64, blocks), one: one, many: many}
}

// recover reads the whole file after a start (a boot, perhaps after a
// power cut) and checks that every record the disk says was fsynced is
// there: each block must hold the newest record at or below the commit
// point that maps to it, or a newer one that was in flight. Blocks torn by
// a write in flight at the cut are cleared. Memory then takes what the disk
// holds, and everything found is committed as durable.
func (r *records) recover() (start diskStart, err error) {
	found := make([]decoded, r.blocks)
	for b := 0; b < r.blocks; b += sweepBlocks {
		n := min(sweepBlocks, r.blocks-b)
		if err := r.read(r.many[:n*blockSize], b); err != nil {
			return start, err
		}
		for i := range n {
			found[b+i] = decode(r.many[i*blockSize : (i+1)*blockSize])
		}
	}
	var committed, newest uint64
	switch c := found[0]; c.kind {
	case blockCommit:
		committed = c.seq
	case blockRecord:
		start.problem = "block 0 holds a record, not the commit block"
	}
	for b := 1; b < r.blocks; b++ {
		if d := found[b]; d.kind == blockRecord {
			start.records++
			newest = max(newest, d.seq)
			committed = max(committed, d.durable)
		}
	}
	start.fsynced, start.last = committed, newest
	// What each block must hold at least: the newest record at or below
	// the commit point that maps to it. Walking down from there finds it;
	// the walk ends once every block has been seen.
	want := make([]uint64, r.blocks)
	unseen := r.blocks - 1
	for q := committed; q > 0 && unseen > 0; q-- {
		if b := r.blockOf(q); want[b] == 0 {
			want[b] = q
			unseen--
		}
	}
	inFlight := make(map[int]bool)
	for q := committed + 1; q <= committed+recordsPerTick; q++ {
		inFlight[r.blockOf(q)] = true
	}
	for b := 1; b < r.blocks && start.problem == ""; b++ {
		d := found[b]
		switch {
		case d.kind == blockRecord && (d.block != b || r.blockOf(d.seq) != b):
			start.problem = fmt.Sprintf("block %d holds record %d, which belongs in block %d", b, d.seq, r.blockOf(d.seq))
		case d.kind == blockRecord && d.seq > committed+recordsPerTick:
			start.problem = fmt.Sprintf("block %d holds record %d, beyond the %d records of the tick after the commit point %d: a commit was lost", b, d.seq, recordsPerTick, committed)
		case d.kind == blockRecord && d.seq >= want[b]:
		case d.kind == blockDamaged && inFlight[b]:
			start.repaired++
		case d.kind == blockZero && want[b] == 0:
		default:
			start.problem = fmt.Sprintf("record %d, fsynced before the commit point %d, is missing from block %d, which %s", want[b], committed, b, holds(d))
		}
	}
	if start.problem != "" {
		return start, nil
	}
	for b := 1; b < r.blocks; b++ {
		if found[b].kind == blockDamaged {
			clear(r.one)
			if err := r.write(r.one, b); err != nil {
				return start, err
			}
		}
		if found[b].kind == blockRecord {
			r.last[b] = found[b].seq
		}
	}
	r.seq = max(newest, committed)
	return start, r.commit()
}

type diskStart struct {
	records, repaired int
	fsynced, last     uint64
	problem           string
}

func holds(d decoded) string {
	switch d.kind {
	case blockZero:
		return "was never written"
	case blockRecord:
		return fmt.Sprintf("holds record %d", d.seq)
	case blockCommit:
		return "holds a commit block"
	}
	return "is damaged"
}

// tick checks the disk against memory, then writes this tick's records and
// commits them. It returns what broke ("" when the disk agrees), and
// keeps writing either way: a failed guest still looks alive.
func (r *records) tick() (problem string, err error) {
	problem, err = r.verify()
	if err != nil {
		return "", err
	}
	for range recordsPerTick {
		r.seq++
		b := r.blockOf(r.seq)
		encodeRecord(r.one, r.seq, b, r.durable)
		if err := r.write(r.one, b); err != nil {
			return problem, err
		}
		r.last[b] = r.seq
	}
	if err := r.dev.Sync(); err != nil {
		return problem, fmt.Errorf("fsync the records: %w", err)
	}
	return problem, r.commit()
}

func (r *records) commit() error {
	encodeCommit(r.one, r.seq)
	if err := r.write(r.one, 0); err != nil {
		return err
	}
	if err := r.dev.Sync(); err != nil {
		return fmt.Errorf("fsync the commit block: %w", err)
	}
	r.durable = r.seq
	return nil
}

// verify reads back the commit block, the blocks of the last and next
// checkTicks ticks, and the next slice of the sweep.
func (r *records) verify() (string, error) {
	if err := r.read(r.one, 0); err != nil {
		return "", err
	}
	if c := decode(r.one); c.kind != blockCommit {
		return fmt.Sprintf("the commit block %s, want the commit of record %d", holds(c), r.durable), nil
	} else if c.seq != r.durable {
		return fmt.Sprintf("the commit block says records through %d are on disk, memory wrote through %d: the disk is from %s instant than memory", c.seq, r.durable, earlierOrLater(c.seq, r.durable)), nil
	}
	window := uint64(checkTicks * recordsPerTick)
	for q := r.seq - min(r.seq, window) + 1; q <= r.seq+window; q++ {
		b := r.blockOf(q)
		if err := r.read(r.one, b); err != nil {
			return "", err
		}
		if p := r.compare(b, r.one); p != "" {
			return p, nil
		}
	}
	n := min(sweepBlocks, r.blocks-r.sweep)
	if err := r.read(r.many[:n*blockSize], r.sweep); err != nil {
		return "", err
	}
	for i := range n {
		b := r.sweep + i
		if b == 0 {
			continue
		}
		if p := r.compare(b, r.many[i*blockSize:(i+1)*blockSize]); p != "" {
			return p, nil
		}
	}
	if r.sweep += n; r.sweep >= r.blocks {
		r.sweep = 0
	}
	return "", nil
}

func earlierOrLater(disk, memory uint64) string {
	if disk < memory {
		return "an earlier"
	}
	return "a later"
}

// compare says how block b, read back, disagrees with memory ("" if not).
func (r *records) compare(b int, data []byte) string {
	want := r.last[b]
	d := decode(data)
	switch {
	case d.kind == blockDamaged || d.kind == blockCommit:
		return fmt.Sprintf("block %d is damaged (memory says it holds record %d)", b, want)
	case d.kind == blockRecord && d.block != b:
		return fmt.Sprintf("block %d holds record %d of block %d", b, d.seq, d.block)
	case d.kind == blockZero && want == 0, d.kind == blockRecord && d.seq == want:
		return ""
	case d.kind == blockZero || d.seq < want:
		return fmt.Sprintf("record %d is missing from block %d, which %s: a write was lost, or the disk is from an earlier instant than memory", want, b, holds(d))
	}
	return fmt.Sprintf("block %d holds record %d, newer than memory's last write there (%d): the disk is from a later instant than memory", b, d.seq, want)
}

func (r *records) read(p []byte, block int) error {
	if _, err := r.dev.ReadAt(p, int64(block)*blockSize); err != nil {
		return fmt.Errorf("read block %d of the records: %w", block, err)
	}
	return nil
}

func (r *records) write(p []byte, block int) error {
	if _, err := r.dev.WriteAt(p, int64(block)*blockSize); err != nil {
		return fmt.Errorf("write block %d of the records: %w", block, err)
	}
	return nil
}
