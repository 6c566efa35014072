package syncengine

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// This file measures the engine's choice of fixed, aligned chunks against
// content-defined chunking (CDC) on real data (issue 5). The CDC cutter
// below exists only for the comparison.

// Content-defined chunking after FastCDC: a gear hash over the bytes, a cut
// where its top bits are zero, with normalized chunking (a harder mask
// before the average size, an easier one after it).
const (
	cdcMin = 16 << 10
	cdcAvg = 64 << 10
	cdcMax = 256 << 10
	// The gear hash shifts left, so its top bits depend on the last 64
	// bytes; the masks take top bits. 16 bits give the 64 KiB average;
	// normalization level 2 makes them 18 and 14.
	cdcMaskHard uint64 = (1<<18 - 1) << (64 - 18)
	cdcMaskEasy uint64 = (1<<14 - 1) << (64 - 14)
)

var gear = func() (g [256]uint64) {
	rng := rand.New(rand.NewPCG(5, 64))
	for i := range g {
		g[i] = rng.Uint64()
	}
	return g
}()

// cdcCut is the length of the next content-defined chunk at the start of b.
func cdcCut(b []byte) int {
	n := min(len(b), cdcMax)
	if n <= cdcMin {
		return n
	}
	normal := min(n, cdcAvg)
	var h uint64
	i := cdcMin
	for ; i < normal; i++ {
		h = h<<1 + gear[b[i]]
		if h&cdcMaskHard == 0 {
			return i + 1
		}
	}
	for ; i < n; i++ {
		h = h<<1 + gear[b[i]]
		if h&cdcMaskEasy == 0 {
			return i + 1
		}
	}
	return n
}

// fixedCut is the engine's cutter: aligned DefaultChunkSize chunks.
func fixedCut(b []byte) int { return min(len(b), DefaultChunkSize) }

type chunk struct {
	off, len int
	hash     Hash // zero for a chunk of zeroes, which is never sent
}

// chunkAll cuts data with cut and hashes each chunk, as an index would.
func chunkAll(data []byte, cut func([]byte) int) []chunk {
	var out []chunk
	for off := 0; off < len(data); {
		n := cut(data[off:])
		c := chunk{off: off, len: n}
		if !isZero(data[off : off+n]) {
			c.hash = Sum(data[off : off+n])
		}
		out = append(out, c)
		off += n
	}
	return out
}

type chunkingResult struct {
	chunks   int   // chunks in the new version
	newBytes int64 // bytes of the new version's chunks the old lacks
	patched  int64 // fixed only: those chunks as patches against the old chunk in place
	mbps     float64
}

// measureChunking chunks both versions and counts what a chunk-level
// transfer of the new one must send to a holder of the old one.
func measureChunking(old, cur []byte, cut func([]byte) int, positional bool) chunkingResult {
	var oc, nc []chunk
	secs := 0.0
	for try := range 3 { // the best of three: the cores are shared
		start := time.Now()
		oc, nc = chunkAll(old, cut), chunkAll(cur, cut)
		if s := time.Since(start).Seconds(); try == 0 || s < secs {
			secs = s
		}
	}
	have := make(map[Hash]bool, len(oc))
	for _, c := range oc {
		have[c.hash] = true
	}
	r := chunkingResult{chunks: len(nc), mbps: float64(len(old)+len(cur)) / 1e6 / secs}
	for i, c := range nc {
		if c.hash.IsZero() || have[c.hash] {
			continue
		}
		r.newBytes += int64(c.len)
		if positional {
			target := cur[c.off : c.off+c.len]
			var p []byte
			if i < len(oc) {
				p = makePatch(old[oc[i].off:oc[i].off+oc[i].len], target)
			}
			if p == nil {
				p = target
			}
			r.patched += int64(len(p))
		}
	}
	return r
}

// ext4Image makes a 64 MiB ext4 image of real files: the time zone files
// and the machine's shared libraries.
func ext4Image(t *testing.T, dir string) []byte {
	tree := filepath.Join(dir, "tree")
	libs := filepath.Join(tree, "lib")
	if err := os.MkdirAll(libs, 0o755); err != nil {
		t.Fatal(err)
	}
	run(t, "cp", "-rL", "/usr/share/zoneinfo", tree)
	soFiles, _ := filepath.Glob("/usr/lib/x86_64-linux-gnu/*.so*")
	var total int64
	for _, f := range soFiles {
		fi, err := os.Lstat(f)
		if err != nil || !fi.Mode().IsRegular() || total+fi.Size() > 36<<20 {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		if err := os.WriteFile(filepath.Join(libs, filepath.Base(f)), b, 0o644); err != nil {
			t.Fatal(err)
		}
		total += fi.Size()
	}
	img := filepath.Join(dir, "fs.ext4")
	run(t, "mkfs.ext4", "-q", "-F", "-d", tree, img, "64M")
	os.RemoveAll(tree)
	b, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// memoryImage stands for a raw RAM image: 64 MiB of real shared libraries
// mapped page by page (each padded to a 4 KiB page, as mmap does), with the
// rest zero pages.
func memoryImage(t *testing.T) []byte {
	mem := make([]byte, 0, 64<<20)
	soFiles, _ := filepath.Glob("/usr/lib/x86_64-linux-gnu/*.so*")
	for i := len(soFiles) - 1; i >= 0; i-- { // other libraries than the disk's
		fi, err := os.Lstat(soFiles[i])
		if err != nil || !fi.Mode().IsRegular() {
			continue
		}
		padded := (fi.Size() + 4095) &^ 4095
		if int64(len(mem))+padded > 48<<20 {
			continue
		}
		b, err := os.ReadFile(soFiles[i])
		if err != nil {
			continue
		}
		mem = append(mem, b...)
		mem = append(mem, make([]byte, int(padded)-len(b))...)
	}
	if len(mem) < 8<<20 {
		t.Skipf("only %d bytes of shared libraries to make a memory image of", len(mem))
	}
	return append(mem, make([]byte, 64<<20-len(mem))...)
}

// changeInPlace is data with 1% of its 4 KiB blocks overwritten in place
// with pieces of a real binary (changeBlocks, on a copy).
func changeInPlace(t *testing.T, dir string, data []byte, seed uint64) []byte {
	path := filepath.Join(dir, fmt.Sprintf("changed-%d", seed))
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	changeBlocks(t, path, 0.01, seed)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(path)
	return b
}

func TestChunkingChoiceOnRealData(t *testing.T) {
	if testing.Short() {
		t.Skip("builds real images")
	}
	dir := t.TempDir()

	// a. A disk image changed block by block in place.
	disk := ext4Image(t, dir)
	diskChanged := changeInPlace(t, dir, disk, 1)

	// b. A file stream with a few hundred bytes inserted near its start.
	var members []string
	for _, m := range []string{"zoneinfo", "i18n", "perl"} {
		if _, err := os.Stat(filepath.Join("/usr/share", m)); err == nil {
			members = append(members, m)
		}
	}
	tarball := run(t, "tar", append([]string{"-cf", "-", "-C", "/usr/share"}, members...)...)
	const insertAt = 10000
	insert := bytes.Repeat([]byte("inserted "), 33) // 297 bytes
	tarInserted := append(append(append([]byte(nil), tarball[:insertAt]...), insert...), tarball[insertAt:]...)

	// c. A raw RAM image with 1% of its pages changed in place.
	mem := memoryImage(t)
	memChanged := changeInPlace(t, dir, mem, 2)

	type row struct {
		set, chunker string
		size         int
		r            chunkingResult
	}
	var rows []row
	measure := func(set string, old, cur []byte) (fixed, cdc chunkingResult) {
		fixed = measureChunking(old, cur, fixedCut, true)
		cdc = measureChunking(old, cur, cdcCut, false)
		rows = append(rows, row{set, "fixed 64K", len(cur), fixed}, row{set, "CDC avg 64K", len(cur), cdc})
		return fixed, cdc
	}

	diskFixed, diskCDC := measure("a. ext4, 1% blocks", disk, diskChanged)
	tarFixed, tarCDC := measure("b. tar, +297 B", tarball, tarInserted)
	memFixed, memCDC := measure("c. RAM, 1% pages", mem, memChanged)

	var table strings.Builder
	fmt.Fprintf(&table, "\n%-20s %-12s %7s %12s %7s %12s %7s\n", "data set", "chunker", "chunks", "new bytes", "% data", "as patches", "MB/s")
	for _, r := range rows {
		patched := "-"
		if r.chunker == "fixed 64K" {
			patched = fmt.Sprint(r.r.patched)
		}
		fmt.Fprintf(&table, "%-20s %-12s %7d %12d %6.2f%% %12s %7.0f\n", r.set, r.chunker, r.r.chunks,
			r.r.newBytes, 100*float64(r.r.newBytes)/float64(r.size), patched, r.r.mbps)
	}
	t.Log(table.String())
	t.Logf("MB/s: cutting and BLAKE3-hashing both versions on one core; \"as patches\": the fixed chunks' new bytes sent as the engine sends them, 32-byte runs against the old chunk in place")

	// In-place changes: aligned chunks keep every untouched block's chunk.
	if diskFixed.newBytes > diskCDC.newBytes {
		t.Errorf("disk image, in-place changes: fixed chunks need %d new bytes, CDC %d", diskFixed.newBytes, diskCDC.newBytes)
	}
	if memFixed.newBytes > memCDC.newBytes {
		t.Errorf("memory image, in-place changes: fixed chunks need %d new bytes, CDC %d", memFixed.newBytes, memCDC.newBytes)
	}
	// An insertion shifts every fixed chunk after it: fixed chunking loses
	// (nearly) the whole stream after the insertion point, CDC a chunk or two.
	if after := int64(len(tarInserted) - insertAt); tarFixed.newBytes < after*9/10 {
		t.Errorf("tar with an insertion: fixed chunks need only %d new bytes of the %d after the insertion point", tarFixed.newBytes, after)
	}
	if tarCDC.newBytes >= tarFixed.newBytes/10 {
		t.Errorf("tar with an insertion: CDC needs %d new bytes, fixed chunks %d", tarCDC.newBytes, tarFixed.newBytes)
	}
}
