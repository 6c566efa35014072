package syncbench

import (
	"bytes"
	"context"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// logWriter sends progress lines to the test log.
type logWriter struct{ t *testing.T }

func (w logWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// TestRunSmallImage runs the whole bench on a 64 MiB image, with the real
// 'handoff serve' as the server when make test gives the binary in
// HANDOFF_BIN, else with the server's handlers in the test process.
func TestRunSmallImage(t *testing.T) {
	if err := needTools("mkfs.ext4", "dumpe2fs", "rsync", "zstd"); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()
	tab, err := Run(ctx, Config{Dir: dir, Size: 64 << 20, Server: os.Getenv("HANDOFF_BIN")}, logWriter{t})
	var md bytes.Buffer
	tab.WriteMarkdown(&md)
	t.Logf("\n%s", md.String())
	// Whatever happened, nothing of the run may be left behind.
	if left := processesMentioning(t, dir); len(left) > 0 {
		t.Errorf("processes left running: %v", left)
	}
	if entries, _ := os.ReadDir(dir); len(entries) > 0 {
		t.Errorf("Run left %d entries in its directory, e.g. %s", len(entries), entries[0].Name())
	}
	if err != nil {
		t.Fatal(err) // Run verifies every pulled image against the server's
	}

	for _, r := range [][2]string{
		{CaseServerPush, ToolHandoff}, {CaseCold, ToolHandoff}, {CaseIndex, ToolHandoff},
		{CaseUpdate, ToolReference}, {CaseUpdate, ToolHandoff}, {CaseUpdate, ToolRsyncZ},
		{CaseUpdate, ToolRsync}, {CaseUpdate, ToolZstd},
	} {
		row, ok := tab.Row(r[0], r[1])
		if !ok {
			t.Errorf("no row for %s by %s", r[0], r[1])
			continue
		}
		if !strings.Contains(md.String(), "| "+r[0]+" | "+r[1]+" |") {
			t.Errorf("the markdown lacks the row for %s by %s", r[0], r[1])
		}
		transfer := r[1] != ToolReference && r[0] != CaseServerPush && r[0] != CaseIndex
		if transfer && (row.Down <= 0 || row.Time <= 0) {
			t.Errorf("%s by %s: %d bytes to the workstation in %v", r[0], r[1], row.Down, row.Time)
		}
		// A full copy only listens; the others ask for what they lack.
		if transfer && r[1] != ToolZstd && row.Up <= 0 {
			t.Errorf("%s by %s: nothing went to the server", r[0], r[1])
		}
	}
	if cold, _ := tab.Row(CaseCold, ToolHandoff); os.Getenv("HANDOFF_BIN") != "" && cold.ServerCPU <= 0 {
		t.Error("handoff serve ran apart, but its CPU time was not measured")
	}
	if os.Getenv("HANDOFF_BIN") != "" && linkSupport() == "" {
		row, ok := tab.Row(CaseColdLink, ToolHandoff)
		if !ok || row.Down <= 0 || row.Up <= 0 || tab.LinkWireRate <= 0 {
			t.Errorf("no cold pull over the shaped link: %+v", row)
		}
		// More than the link's rate means it was not shaped.
		if tab.LinkWireRate > 1.1*targetLinkRate {
			t.Errorf("%.0f bytes/s over a link shaped to %.0f", tab.LinkWireRate, targetLinkRate)
		}
		if _, err := os.Stat("/run/netns/" + nsPrefix + strconv.Itoa(os.Getpid())); err == nil {
			t.Error("Run left its network namespace")
		}
	}
	if tab.Image.Used < 0.75 || tab.Image.Used > 0.95 {
		t.Errorf("the image is %.0f%% full, want 80-90%%", 100*tab.Image.Used)
	}
	if want := int((64 << 20) / blockSize / 100); tab.ChangedBlocks < want-1 || tab.ChangedBlocks > want+1 {
		t.Errorf("%d blocks changed, want 1%% of %d", tab.ChangedBlocks, (64<<20)/blockSize)
	}
	// The reference must look like real data: neither zeroes (tiny) nor
	// noise (no smaller than the input).
	if tab.Reference < tab.ChangedBytes/20 || tab.Reference >= tab.ChangedBytes {
		t.Errorf("the changed blocks compress from %d to %d bytes: not like real data", tab.ChangedBytes, tab.Reference)
	}
	// A full copy costs far more than the update, or the update changed little.
	if z, _ := tab.Row(CaseUpdate, ToolZstd); z.Down < 10*tab.Reference {
		t.Errorf("a full zstd copy sent %d bytes, under ten times the reference %d", z.Down, tab.Reference)
	}
	if tab.UpdateRatio <= 0 || tab.UpdateRatio > targetUpdateRatio {
		t.Errorf("handoff's update moved %.2f × the reference (%d bytes), want at most %.1f", tab.UpdateRatio, tab.Reference, targetUpdateRatio)
	}
}

// processesMentioning lists the command lines of processes that name dir.
func processesMentioning(t *testing.T, dir string) []string {
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	var out []string
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err == nil && bytes.Contains(b, []byte(dir)) {
			out = append(out, strings.ReplaceAll(string(b), "\x00", " "))
		}
	}
	return out
}

func TestPickBlocksIsSeededUniformAndDistinct(t *testing.T) {
	pick := func(seed uint64) []int64 { return pickBlocks(rand.New(rand.NewPCG(seed, 1)), 10000, 1000) }
	a, b := pick(7), pick(7)
	if len(a) != 1000 || !slicesEqual(a, b) {
		t.Fatalf("the same seed gave %d and %d blocks, or different ones", len(a), len(b))
	}
	if slicesEqual(a, pick(8)) {
		t.Error("another seed chose the same blocks")
	}
	var halves [2]int
	for i, off := range a {
		if off%blockSize != 0 || off < 0 || off >= 10000*blockSize {
			t.Fatalf("offset %d is not a block of the image", off)
		}
		if i > 0 && off <= a[i-1] {
			t.Fatalf("offsets not ascending and distinct at %d", i)
		}
		halves[off/(5000*blockSize)]++
	}
	if halves[0] < 400 || halves[1] < 400 {
		t.Errorf("blocks split %v between the halves of the image: not uniform", halves)
	}
	if got := pickBlocks(rand.New(rand.NewPCG(1, 1)), 5, 10); len(got) != 5 {
		t.Errorf("asking for more blocks than exist gave %d, want all 5", len(got))
	}
}

func slicesEqual(a, b []int64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestPickFilesMixesSourcesWithinBudget(t *testing.T) {
	var bins, texts []srcFile
	for i := range 1000 {
		bins = append(bins, srcFile{rel: "bin/" + string(rune('a'+i%26)), size: 100 << 10})
		texts = append(texts, srcFile{rel: "share/t", size: 3000})
	}
	bins = append(bins, srcFile{rel: "bin/huge", size: 1 << 30})
	got := pickFiles([][]srcFile{bins, texts}, 10<<20, 1<<20)
	var used int64
	var fromBin, fromText int
	for _, f := range got {
		used += blocks(f.size)
		if f.size > 1<<20 {
			t.Errorf("picked %s of %d bytes, over the limit", f.rel, f.size)
		}
		if strings.HasPrefix(f.rel, "bin/") {
			fromBin++
		} else {
			fromText++
		}
	}
	if used > 10<<20 || used < 9<<20 {
		t.Errorf("picked %d bytes for a budget of %d", used, 10<<20)
	}
	if fromBin == 0 || fromText == 0 {
		t.Errorf("picked %d binaries and %d texts: not a mix", fromBin, fromText)
	}
}

// TestPickFilesCountsTheirFolders: a file in a folder of its own costs
// that folder's block too, and a folder shared costs it once.
func TestPickFilesCountsTheirFolders(t *testing.T) {
	var own, shared []srcFile
	for i := range 100 {
		own = append(own, srcFile{rel: "own/" + strconv.Itoa(i) + "/f", size: blockSize})
		shared = append(shared, srcFile{rel: "shared/f" + strconv.Itoa(i), size: blockSize})
	}
	if got := pickFiles([][]srcFile{own}, 100*blockSize, 1<<20); len(got) != 49 {
		t.Errorf("picked %d one-block files in folders of their own for 100 blocks; want 49 (own/ and each folder cost a block)", len(got))
	}
	if got := pickFiles([][]srcFile{shared}, 100*blockSize, 1<<20); len(got) != 99 {
		t.Errorf("picked %d one-block files in one folder for 100 blocks; want 99", len(got))
	}
}

func TestParseUsed(t *testing.T) {
	got, err := parseUsed("Filesystem volume name:   <none>\nBlock count:              1000\nFree blocks:              150\n")
	if err != nil || got != 0.85 {
		t.Errorf("parseUsed = %v, %v; want 0.85", got, err)
	}
	if _, err := parseUsed("garbage"); err == nil {
		t.Error("parseUsed took output without a block count")
	}
}

// TestProxyCountsBothWaysAndStops checks the counts against a target that
// answers a fixed number of bytes once the client's stream ends.
func TestProxyCountsBothWaysAndStops(t *testing.T) {
	ctx := t.Context()
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	const up, down = 300_000, 700_000
	served := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			served <- err
			return
		}
		defer c.Close()
		if n, err := io.Copy(io.Discard, c); err != nil || n != up {
			served <- err
			return
		}
		_, err = c.Write(make([]byte, down))
		served <- err
	}()
	p, err := StartProxy(ctx, ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write(make([]byte, up)); err != nil {
		t.Fatal(err)
	}
	c.(*net.TCPConn).CloseWrite() // the proxy must pass the half-close on
	n, err := io.Copy(io.Discard, c)
	c.Close()
	if err != nil || n != down {
		t.Fatalf("read %d bytes back (%v), want %d", n, err, down)
	}
	if err := <-served; err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := p.WaitIdle(wctx); err != nil {
		t.Fatal(err)
	}
	if got := p.Counts(); got != (Counts{Up: up, Down: down}) {
		t.Errorf("counted %+v, want up %d, down %d", got, up, down)
	}

	// A connection left open must not keep Close waiting.
	open, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close()
	closed := make(chan struct{})
	go func() { p.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("Close hung on an open connection")
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"2G": 2 << 30, "2GiB": 2 << 30, "64m": 64 << 20, "64MB": 64 << 20, "1.5G": 3 << 29, "4096": 4096, "512K": 512 << 10} {
		if got, err := ParseSize(in); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "G", "-1G", "two gigs", "0"} {
		if _, err := ParseSize(bad); err == nil {
			t.Errorf("ParseSize(%q) took it", bad)
		}
	}
}

func TestNegotiatedCompression(t *testing.T) {
	out := "Client negotiated checksum: xxh128\nClient negotiated compress: zstd (level 3)\n"
	if got := negotiatedCompression(out); got != "zstd (level 3)" {
		t.Errorf("negotiatedCompression = %q", got)
	}
	if got := negotiatedCompression("nothing\n"); got != "" {
		t.Errorf("negotiatedCompression of nothing = %q", got)
	}
}

func TestParseStatCPU(t *testing.T) {
	// A command name with spaces and a parenthesis; utime 150, stime 50,
	// cutime 100, cstime 0 ticks: 3 s.
	stat := "4242 (my (odd) cmd) S 1 4242 4242 0 -1 4194560 100 0 0 0 150 50 100 0 20 0 3 0 100 1000 10"
	if got, err := parseStatCPU(stat); err != nil || got != 3*time.Second {
		t.Errorf("parseStatCPU = %v, %v; want 3s", got, err)
	}
	if _, err := parseStatCPU("4242 (x) S 1"); err == nil {
		t.Error("parseStatCPU took a short line")
	}
	self, err := procCPU(os.Getpid())
	if err != nil || self < 0 {
		t.Errorf("procCPU(self) = %v, %v", self, err)
	}
}

func TestServeAddr(t *testing.T) {
	if got, ok := serveAddr("handoff serve: https://127.0.0.1:40123, certificate fingerprint ab12"); !ok || got != "127.0.0.1:40123" {
		t.Errorf("serveAddr = %q, %v", got, ok)
	}
	if _, ok := serveAddr("first start: a token for your first device"); ok {
		t.Error("serveAddr took another line")
	}
}
