package main

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
)

const pageSize = 4096

// Page kinds, chosen by page number so that the mix holds at any rate:
// two in ten pages are zero, one is random, the rest carry code and text.
type pageKind int

const (
	kindText pageKind = iota
	kindZero
	kindRandom
)

func kindOf(page int) pageKind {
	switch page % 10 {
	case 0, 5:
		return kindZero
	case 7:
		return kindRandom
	default:
		return kindText
	}
}

// pageMagic marks the head and tail of every non-zero page, next to the
// page's number and generation: a page whose head and tail disagree was
// torn, one with an old generation was lost by a migration.
const pageMagic = 0x68616e646f666621 // "handoff!"

// workingSet is the memory the agent dirties: every write bumps the page's
// generation, and verify proves each page still holds the last one.
type workingSet struct {
	mem    []byte
	gen    []uint32 // last generation written to each page
	next   int      // the page the next write goes to
	corpus []byte   // code and text the text pages copy from
	rng    *rand.Rand
	wrote  int64 // bytes written so far
}

func newWorkingSet(mem, corpus []byte, seed uint64) *workingSet {
	if len(corpus) <= pageSize {
		corpus = append(corpus, make([]byte, 2*pageSize)...)
	}
	return &workingSet{
		mem:    mem,
		gen:    make([]uint32, len(mem)/pageSize),
		corpus: corpus,
		rng:    rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)),
	}
}

func (w *workingSet) pages() int { return len(w.gen) }

// dirty writes n pages, walking the set round and round.
func (w *workingSet) dirty(n int) {
	for range n {
		if w.pages() == 0 {
			return
		}
		w.writePage(w.next)
		w.next = (w.next + 1) % w.pages()
	}
}

func (w *workingSet) writePage(p int) {
	w.gen[p]++
	page := w.mem[p*pageSize : (p+1)*pageSize]
	switch kindOf(p) {
	case kindZero:
		clear(page)
	case kindRandom:
		for i := 16; i+8 <= pageSize-16; i += 8 {
			binary.LittleEndian.PutUint64(page[i:], w.rng.Uint64())
		}
	case kindText:
		off := int((uint64(p)*7919 + uint64(w.gen[p])*104729) % uint64(len(w.corpus)-pageSize))
		copy(page[16:pageSize-16], w.corpus[off:])
	}
	if kindOf(p) != kindZero {
		stamp(page[:16], p, w.gen[p])
		stamp(page[pageSize-16:], p, w.gen[p])
	}
	w.wrote += pageSize
}

func stamp(b []byte, page int, gen uint32) {
	binary.LittleEndian.PutUint64(b, pageMagic)
	binary.LittleEndian.PutUint32(b[8:], uint32(page))
	binary.LittleEndian.PutUint32(b[12:], gen)
}

// verify checks every page's stamps (or zeroes) against its generation.
// It reads only the ends of each page, so it stays cheap under TCG.
func (w *workingSet) verify() error {
	for p := range w.pages() {
		page := w.mem[p*pageSize : (p+1)*pageSize]
		if kindOf(p) == kindZero || w.gen[p] == 0 {
			if binary.LittleEndian.Uint64(page) != 0 || binary.LittleEndian.Uint64(page[pageSize-8:]) != 0 {
				return fmt.Errorf("page %d should be zero", p)
			}
			continue
		}
		for _, s := range [][]byte{page[:16], page[pageSize-16:]} {
			magic, num, gen := binary.LittleEndian.Uint64(s), binary.LittleEndian.Uint32(s[8:]), binary.LittleEndian.Uint32(s[12:])
			if magic != pageMagic || int(num) != p {
				return fmt.Errorf("page %d is torn or overwritten", p)
			}
			if gen != w.gen[p] {
				return fmt.Errorf("page %d has generation %d, want %d", p, gen, w.gen[p])
			}
		}
	}
	return nil
}

// sealedRegion is memory written once at start, whose checksum must never
// change: the bulk of a migration's first pass lands here.
type sealedRegion struct {
	mem []byte
	sum [32]byte
}

func newSealedRegion(mem []byte, seed uint64) *sealedRegion {
	rng := rand.New(rand.NewPCG(seed, ^seed))
	for i := 0; i+8 <= len(mem); i += 8 {
		// Half random, half a repeating pattern: both kinds of page a
		// compressor or XBZRLE treats differently.
		if (i/pageSize)%2 == 0 {
			binary.LittleEndian.PutUint64(mem[i:], rng.Uint64())
		} else {
			binary.LittleEndian.PutUint64(mem[i:], uint64(i))
		}
	}
	return &sealedRegion{mem: mem, sum: sha256.Sum256(mem)}
}

func (r *sealedRegion) verify() error {
	if sha256.Sum256(r.mem) != r.sum {
		return fmt.Errorf("the once-written region's checksum changed")
	}
	return nil
}

// pacer turns a rate into pages per step. A guest that was paused (as at a
// migration's switch) must not rush to catch up: that would be a burst no
// real desktop makes, so at most two steps' worth is written at once. The
// time the agent itself was busy (its checks each second) is no pause: what
// fell due meanwhile is written, or a slow host would halve the rate.
type pacer struct {
	bytesPerSec float64
	owed        float64 // bytes due but not yet written
}

func (p *pacer) pages(elapsedSec, stepSec, busySec float64) int {
	p.owed += p.bytesPerSec * elapsedSec
	if limit := p.bytesPerSec * (2*stepSec + busySec); p.owed > limit {
		p.owed = limit
	}
	n := int(p.owed / pageSize)
	p.owed -= float64(n * pageSize)
	return n
}
