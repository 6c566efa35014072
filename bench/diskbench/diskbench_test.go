package diskbench

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/handoff-dev/handoff/internal/netns"
)

// image makes a raw image of n blocks: every third one left zero, the rest
// half random, half text, so that zstd has something to do.
func image(t *testing.T, rng *rand.Rand, n int) []byte {
	t.Helper()
	img := make([]byte, n*BlockSize)
	for i := range n {
		if i%3 == 0 {
			continue
		}
		fillBlock(rng, img[i*BlockSize:(i+1)*BlockSize])
	}
	return img
}

func fillBlock(rng *rand.Rand, b []byte) {
	half := len(b) / 2
	for j := range b[:half] {
		b[j] = byte(rng.Uint32())
	}
	text := []byte(fmt.Sprintf("block %d of a generated image; ", rng.Uint32()))
	for j := half; j < len(b); j++ {
		b[j] = text[(j-half)%len(text)]
	}
}

func writeFile(t *testing.T, name string, b []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// zstdOf is the reference computed the plain way: the blocks laid end to
// end in memory, then through the zstd command.
func zstdOf(t *testing.T, blocks [][]byte) int64 {
	t.Helper()
	n, err := ZstdSize(context.Background(), func(w io.Writer) error {
		_, err := w.Write(bytes.Join(blocks, nil))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestReferences checks both yardsticks on two small generated images, the
// second the first with scattered blocks rewritten (one of them a zero
// block that became data, one a data block that became zero), read from
// qcow2 files as the bench reads the guest's disk.
func TestReferences(t *testing.T) {
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(1, 2))
	const n = 1024 // 4 MiB
	before := image(t, rng, n)
	after := bytes.Clone(before)
	changed := map[int]bool{}
	for len(changed) < 40 {
		changed[rng.IntN(n)] = true
	}
	changed[3], changed[4] = true, true // a zero block, a data block
	for i := range changed {
		fillBlock(rng, after[i*BlockSize:(i+1)*BlockSize])
	}
	clear(after[4*BlockSize : 5*BlockSize])

	var wantChanged, wantNonzero [][]byte
	zero := make([]byte, BlockSize)
	for i := range n {
		b := after[i*BlockSize : (i+1)*BlockSize]
		if changed[i] {
			wantChanged = append(wantChanged, b)
		}
		if !bytes.Equal(b, zero) {
			wantNonzero = append(wantNonzero, b)
		}
	}

	// Through qcow2 and back, as RawImage reads the guest's disk.
	raw := func(name string, img []byte) string {
		q := filepath.Join(t.TempDir(), name+".qcow2")
		if out, err := exec.Command("qemu-img", "convert", "-f", "raw", "-O", "qcow2", writeFile(t, name+".img", img), q).CombinedOutput(); err != nil {
			t.Fatalf("qemu-img convert: %v: %s", err, out)
		}
		r := filepath.Join(t.TempDir(), name+".raw")
		if err := RawImage(ctx, q, r); err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(r)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, img) {
			t.Fatalf("RawImage of %s differs from the image it was made from", name)
		}
		return r
	}
	a, b := raw("before", before), raw("after", after)

	cold, err := Changed(ctx, "", b)
	if err != nil {
		t.Fatal(err)
	}
	if want := (Reference{Blocks: int64(len(wantNonzero)), Zstd: zstdOf(t, wantNonzero)}); cold != want {
		t.Errorf("cold reference %+v, want %+v", cold, want)
	}
	update, err := Changed(ctx, a, b)
	if err != nil {
		t.Fatal(err)
	}
	if want := (Reference{Blocks: int64(len(wantChanged)), Zstd: zstdOf(t, wantChanged)}); update != want {
		t.Errorf("update reference %+v, want %+v", update, want)
	}
	// The yardstick must be worth having: far below the blocks' raw size.
	if update.Zstd >= update.Blocks*BlockSize*3/4 {
		t.Errorf("zstd made %d bytes of %d changed blocks: the generated data does not compress", update.Zstd, update.Blocks)
	}
	if same, err := Changed(ctx, a, a); err != nil || same.Blocks != 0 {
		t.Errorf("an image against itself: %+v, %v; want no blocks", same, err)
	}
}

func TestWriteChangedShorterFiles(t *testing.T) {
	// A file shorter than the other reads as zeroes past its end; a last
	// block cut short compares as if padded.
	before := []byte("abcd")
	after := append(bytes.Repeat([]byte{'x'}, 8), 0, 0, 0, 'y')
	var got bytes.Buffer
	n, err := WriteChanged(&got, bytes.NewReader(before), bytes.NewReader(after), 4)
	if err != nil {
		t.Fatal(err)
	}
	want := "xxxxxxxx\x00\x00\x00y"
	if n != 3 || got.String() != want {
		t.Errorf("WriteChanged = %d blocks, %q; want 3, %q", n, got.String(), want)
	}
}

func TestReadMigrate(t *testing.T) {
	lines := []string{
		`{"phase":"disks","step":"receiving","disk":"/x","done_bytes":1,"total_bytes":2}`,
		`not json: a stray line`,
		`{"phase":"precopy","iteration":1,"transferred_bytes":10}`,
		`{"phase":"completed","iteration":3,"transferred_bytes":300}`,
		`{"phase":"disks","step":"committing the overlay down vda","done_bytes":0,"total_bytes":0}`,
		`{"phase":"completed","mode":"precopy","downtime_ms":40,"total_ms":9000,"transferred_bytes":300,"memory_bytes":512,"iterations":3,"disk_bytes":123456}`,
	}
	tick := time.Duration(0)
	clock := func() time.Duration { tick += time.Second; return tick }
	running, res, err := readMigrate(strings.NewReader(strings.Join(lines, "\n")+"\n"), clock)
	if err != nil {
		t.Fatal(err)
	}
	// Four lines were JSON; the clock is read once, at the first completed one.
	if running != time.Second {
		t.Errorf("running after %v, want the clock at the first completed report (1s)", running)
	}
	if res.DiskBytes != 123456 || res.TransferredBytes != 300 || res.TotalMs != 9000 || res.Mode != "precopy" {
		t.Errorf("result %+v", res)
	}

	for name, out := range map[string]string{
		"failed":         `{"phase":"precopy"}` + "\n" + `{"phase":"failed","error":"no room"}`,
		"no completion":  `{"phase":"completed","mode":"precopy"}`,
		"nothing at all": "",
	} {
		if _, _, err := readMigrate(strings.NewReader(out), clock); err == nil {
			t.Errorf("%s: no error", name)
		} else if name == "failed" && !strings.Contains(err.Error(), "no room") {
			t.Errorf("failed: error %q does not say why", err)
		}
	}
}

func TestWriteMarkdownJudgesGrabs(t *testing.T) {
	rows := []Row{
		{Link: "100mbit", Move: FirstGrab, Tool: "handoff", Running: 61 * time.Second, DiskBytes: 400e6,
			Split: Split{Memory: 200e6, Store: 400e6, NBD: 20e6}, LinkBytes: 640e6, Reference: Reference{Blocks: 200000, Zstd: 350e6}, Guest: "ok"},
		{Link: "100mbit", Move: HandBack, Tool: "handoff", Split: Split{NBD: 2e6}, Guest: "ok"},
		{Link: "100mbit", Move: SecondGrab, Tool: "handoff", Split: Split{Store: 1e6, NBD: 2e6}, Reference: Reference{Blocks: 100, Zstd: 1e6}, Guest: "ok"},
		{Link: "1gbit", Move: VirshCopy, Tool: "virsh", DiskBytes: -1, Split: Split{NBD: 900e6}, Reference: Reference{Zstd: 350e6}, Guest: "ok"},
		{Link: "1gbit", Try: 2, Move: FirstGrab, Tool: "handoff", Split: Split{Store: 300e6}, Reference: Reference{Zstd: 350e6}, Guest: "memory FAIL, disk ok: page 7"},
	}
	var b strings.Builder
	WriteMarkdown(&b, rows)
	out := b.String()
	for _, want := range []string{
		"| 100 Mbit/s | first grab (cold) | handoff | 61.0 s | 420.0 MB | 20.0 MB | 400.0 MB | 200.0 MB | 640.0 MB | the image's nonzero blocks: 350.0 MB | 1.20x | ok |",
		"- 100 Mbit/s, first grab (cold): the disk's 420.0 MB on the link is 1.20x zstd -3 of the image's nonzero blocks (200000 blocks of 4 KiB, 350.0 MB); target at most 1.3x, guest ok: met (through the chunk store alone 400.0 MB, 1.14x; NBD's mirror of the writes during the move 20.0 MB)\n",
		"- 100 Mbit/s, second grab: the disk's 3.0 MB on the link is 3.00x zstd -3 of the blocks changed since the first grab (100 blocks of 4 KiB, 1.0 MB); target at most 1.3x, guest ok: NOT met",
		"| 1 Gbit/s | virsh --copy-storage-all | virsh | 0.0 s | 900.0 MB | 900.0 MB | – |",
		"- 1 Gbit/s, first grab (cold), try 2: the disk's 300.0 MB",
		"guest memory FAIL, disk ok: page 7: NOT met", // within target, but the guest broke
	} {
		if !strings.Contains(out, want) {
			t.Errorf("the table lacks %q:\n%s", want, out)
		}
	}
	if n := strings.Count(out, "\n- "); n != 3 {
		t.Errorf("%d verdicts, want one per grab (3):\n%s", n, out)
	}
}

func TestParseCounters(t *testing.T) {
	out := `{"nftables": [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}}, {"counter": {"family": "inet", "name": "memory", "table": "handoff_diskbench", "handle": 3, "packets": 9, "bytes": 1234}}, {"counter": {"family": "inet", "name": "store", "table": "handoff_diskbench", "handle": 4, "packets": 2, "bytes": 78}}, {"counter": {"family": "inet", "name": "rest", "table": "handoff_diskbench", "handle": 5, "packets": 2, "bytes": 56}}]}`
	s, err := parseCounters([]byte(out))
	if err != nil || s != (Split{Memory: 1234, Store: 78, NBD: 56}) {
		t.Errorf("parseCounters = %+v, %v", s, err)
	}
	if _, err := parseCounters([]byte(`{"nftables": []}`)); err == nil {
		t.Error("no counters: no error")
	}
}

// TestCountersSplitTheLink sends known amounts over a real veth link
// between two namespaces, to MemoryPort, to the store's port and to
// another, both ways, and checks that the counters at one end tell them
// apart.
func TestCountersSplitTheLink(t *testing.T) {
	ctx := context.Background()
	tag := fmt.Sprint(os.Getpid() % 100000)
	near, far := "handoff-dbn-"+tag, "handoff-dbf-"+tag
	dev := "hdb" + tag
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	t.Cleanup(func() {
		exec.Command("ip", "netns", "del", near).Run()
		exec.Command("ip", "netns", "del", far).Run()
	})
	run("ip", "netns", "add", near)
	run("ip", "netns", "add", far)
	run("ip", "link", "add", dev, "netns", near, "type", "veth", "peer", "name", dev+"f", "netns", far)
	run("ip", "-n", near, "addr", "add", "198.51.100.1/24", "dev", dev)
	run("ip", "-n", far, "addr", "add", "198.51.100.2/24", "dev", dev+"f")
	run("ip", "-n", near, "link", "set", dev, "up")
	run("ip", "-n", far, "link", "set", dev+"f", "up")

	const storePort = 7443
	c, err := startCounters(ctx, near, dev, storePort)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.stop(ctx) })
	// A second start replaces the first's table, as after a killed bench.
	if c, err = startCounters(ctx, near, dev, storePort); err != nil {
		t.Fatal(err)
	}
	const memUp, memDown, storeDown, otherUp = 3 << 20, 1 << 20, 5 << 20, 2 << 20
	transfer(t, near, far, MemoryPort, memUp, memDown)
	transfer(t, near, far, storePort, 0, storeDown)
	transfer(t, near, far, MemoryPort+1, otherUp, 0)
	s, err := c.read(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// TCP and IP headers add a few percent; acknowledgements a little.
	within := func(got, want int64) bool { return got >= want && got <= want+want/10+64<<10 }
	if !within(s.Memory, memUp+memDown) || !within(s.Store, storeDown) || !within(s.NBD, otherUp) {
		t.Errorf("counted %+v, want about %d for memory, %d for the store and %d for the rest", s, memUp+memDown, storeDown, otherUp)
	}
}

// transfer connects from namespace near to a listener on port in far,
// sends up bytes there and gets down bytes back.
func transfer(t *testing.T, near, far string, port, up, down int) {
	t.Helper()
	ln, err := netns.Listen(far, "tcp", fmt.Sprintf("198.51.100.2:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- err
			return
		}
		defer c.Close()
		if _, err := io.CopyN(io.Discard, c, int64(up)); err != nil {
			got <- err
			return
		}
		_, err = c.Write(make([]byte, down))
		got <- err
	}()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := netns.Dial(ctx, near, "tcp", fmt.Sprintf("198.51.100.2:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write(make([]byte, up)); err != nil {
		t.Fatal(err)
	}
	if _, err := io.CopyN(io.Discard, c, int64(down)); err != nil {
		t.Fatal(err)
	}
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	c.Close()
	var _ net.Conn = c
}
