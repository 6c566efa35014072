package synctest

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/handoff-dev/handoff/bench/syncbench"
)

// TestSyncRoundTripUpdateDiffAndGC pushes real images from one device and
// pulls them on another through a real server: byte for byte, with stats
// that add up; then a 1% change to the disk, and the second pull moves a
// small part of what the first did.
func TestSyncRoundTripUpdateDiffAndGC(t *testing.T) {
	need(t, "mkfs.ext4", "qemu-img")
	srv := startServe(t, t.TempDir(), "127.0.0.1:0")
	if srv.token == "" {
		t.Fatalf("the first start of handoff serve printed no token to log in with:\n%s", srv.out)
	}
	laptop, desktop := newDevice(t, "laptop"), newDevice(t, "desktop")
	laptop.login(t, srv.url(), srv.token, srv.fp)
	desktop.login(t, srv.url(), srv.token, srv.fp)

	dir := t.TempDir()
	img := makeExt4(t, dir, "disk.ext4", "48M", 24<<20)
	qcow := filepath.Join(dir, "disk.qcow2")
	runTool(t, "qemu-img", "convert", "-q", "-O", "qcow2", img, qcow)
	out := filepath.Join(t.TempDir(), "disk.ext4")

	// The first push sends the image; a second sends nothing and names the same root.
	root := laptop.push(t, img)
	again, st := laptop.pushJSON(t, img)
	if again != root {
		t.Fatalf("pushing the same image again gave root %s, first %s", again, root)
	}
	// Asking what the server has costs a little; sending anything is wrong.
	if st.fetched(t) != 0 || st.wireBytes(t) > fileSize(t, img)/100 {
		t.Errorf("pushing an image the server has sent %d chunks, %d bytes; want no chunks and under 1%% of the image's bytes: %v", st.fetched(t), st.wireBytes(t), st)
	}
	if st.size(t) != fileSize(t, img) {
		t.Errorf("push stats: ImageBytes %d, the image has %d", st.size(t), fileSize(t, img))
	}

	var cold stats
	t.Run("cold pull on a second device", func(t *testing.T) {
		cold = desktop.pullJSON(t, root, out)
		sameFile(t, out, img)
		size := fileSize(t, img)
		n, zero, fetched, cached := cold.chunks(t), cold.zero(t), cold.fetched(t), cold.fromCache(t)
		switch {
		case cold.size(t) != size:
			t.Errorf("pull stats: ImageBytes %d, the image has %d: %v", cold.size(t), size, cold)
		case n < 1 || fetched < 1 || cold.wireBytes(t) < 1:
			t.Errorf("a cold pull of a %d-byte image reports %d chunks, %d fetched, %d bytes: %v", size, n, fetched, cold.wireBytes(t), cold)
		case cached != 0:
			t.Errorf("a pull into an empty cache reports %d chunks from the cache: %v", cached, cold)
		case fetched+zero > n:
			t.Errorf("fetched %d + zero %d chunks is more than the image's %d: %v", fetched, zero, n, cold)
		case cold.wireBytes(t) >= size:
			t.Errorf("a cold pull moved %d bytes for a %d-byte ext4 image of zeroes, text and code: nothing was compressed or skipped? %v", cold.wireBytes(t), size, cold)
		}
		// The same image again from the same cache moves nothing.
		warm := desktop.pullJSON(t, root, filepath.Join(filepath.Dir(out), "copy.ext4"))
		sameFile(t, filepath.Join(filepath.Dir(out), "copy.ext4"), img)
		if warm.fetched(t) != 0 || warm.wireBytes(t) > size/100 || warm.fromCache(t) != fetched {
			t.Errorf("pulling the same root again from a warm cache: %d fetched, %d bytes, %d from the cache; want 0, under 1%% of the image, %d: %v",
				warm.fetched(t), warm.wireBytes(t), warm.fromCache(t), fetched, warm)
		}
	})

	t.Run("qcow2 round trip", func(t *testing.T) {
		qroot := laptop.push(t, qcow)
		if qroot == root {
			t.Fatalf("the qcow2 and the raw image have the same root %s", root)
		}
		got := filepath.Join(t.TempDir(), "disk.qcow2")
		r := ok(t, desktop.sync(t, "pull", qroot, got))
		if !strings.Contains(r.stdout, got) {
			t.Errorf("sync pull does not say what it wrote (%s):\n%s", got, r)
		}
		sameFile(t, got, qcow)
		runTool(t, "qemu-img", "check", "-q", got)
	})

	// About 1% of the disk's 4 KiB blocks, scattered, get real data, as a
	// guest writing files would.
	oldRoot := root
	changed := changeBlocks(t, img, 0.01)
	newRoot, updPush := laptop.pushJSON(t, img)
	if newRoot == oldRoot {
		t.Fatalf("changing %d blocks left the root at %s", len(changed), oldRoot)
	}
	// The push back home moves as little as the pull: the same image's cold
	// pull is the measure of what a whole transfer costs.
	if cold != nil && updPush.wireBytes(t) >= cold.wireBytes(t)*15/100 {
		t.Errorf("pushing the 1%% change moved %d bytes; moving the whole image moved %d; want under 15%% of it: %v", updPush.wireBytes(t), cold.wireBytes(t), updPush)
	}

	t.Run("pull of the update moves little", func(t *testing.T) {
		if cold == nil {
			t.Skip("the cold pull failed")
		}
		upd := desktop.pullJSON(t, newRoot, out)
		sameFile(t, out, img)
		// Unchanged chunks come from the file being replaced (in place) or
		// the cache; only the changed ones, as patches, from the server.
		if upd.fromCache(t)+upd.inPlace(t) == 0 || upd.patched(t) == 0 {
			t.Errorf("the update's pull reused nothing it had, or patched nothing: %v", upd)
		}
		t.Logf("cold pull: %v\nupdate pull: %v", cold, upd)
		limit := cold.wireBytes(t) * 15 / 100
		if upd.wireBytes(t) >= limit {
			t.Errorf("after changing %d of %d 4 KiB blocks (%.1f%%), the pull moved %d bytes (%d chunks); the cold pull moved %d (%d chunks); want under 15%% of it (%d)\nupdate: %v\ncold:   %v",
				len(changed), fileSize(t, img)/4096, 100*float64(len(changed))/float64(fileSize(t, img)/4096),
				upd.wireBytes(t), upd.fetched(t), cold.wireBytes(t), cold.fetched(t), limit, upd, cold)
		}
	})

	t.Run("diff covers the changed blocks", func(t *testing.T) {
		r := ok(t, desktop.sync(t, "diff", oldRoot, newRoot))
		ranges := parseRanges(t, r)
		if len(ranges) == 0 {
			t.Fatalf("diff of two roots %d blocks apart lists no ranges:\n%s", len(changed), r)
		}
		for i, rg := range ranges {
			if rg.Length <= 0 || rg.Offset < 0 || rg.Offset+rg.Length > fileSize(t, img) {
				t.Errorf("diff range %d +%d is empty or outside the %d-byte image", rg.Offset, rg.Length, fileSize(t, img))
			}
			if i > 0 && rg.Offset < ranges[i-1].Offset+ranges[i-1].Length {
				t.Errorf("diff ranges overlap or are out of order: %d +%d after %d +%d", rg.Offset, rg.Length, ranges[i-1].Offset, ranges[i-1].Length)
			}
			if !slices.ContainsFunc(changed, func(b int64) bool { return b*4096 < rg.Offset+rg.Length && rg.Offset < (b+1)*4096 }) {
				t.Errorf("diff range %d +%d holds none of the changed blocks", rg.Offset, rg.Length)
			}
		}
		var covered int64
		for _, b := range changed {
			off := b * 4096
			if !slices.ContainsFunc(ranges, func(rg span) bool { return rg.Offset <= off && off+4096 <= rg.Offset+rg.Length }) {
				t.Errorf("changed block %d (bytes %d +4096) is in no diff range", b, off)
			}
		}
		for _, rg := range ranges {
			covered += rg.Length
		}
		t.Logf("diff: %d ranges, %d bytes, for %d changed blocks (%d bytes)", len(ranges), covered, len(changed), 4096*len(changed))
		// The JSON form says the same.
		var js []span
		jr := ok(t, desktop.sync(t, "diff", oldRoot, newRoot, "--json"))
		if err := json.Unmarshal([]byte(jr.stdout), &js); err != nil || !slices.Equal(js, ranges) {
			t.Errorf("diff --json does not list the ranges the text does (%v): %v vs %v\n%s", err, js, ranges, jr)
		}
		if same := ok(t, desktop.sync(t, "diff", newRoot, newRoot)); strings.TrimSpace(same.stdout) != "" {
			t.Errorf("diff of a root with itself lists ranges:\n%s", same)
		}
	})

	t.Run("gc keeps what the root uses", func(t *testing.T) {
		before := cachedObjects(desktop.cache)
		r := ok(t, desktop.sync(t, "gc", newRoot, "--json"))
		var gc struct{ Removed *int }
		if err := json.Unmarshal([]byte(r.stdout), &gc); err != nil || gc.Removed == nil {
			t.Fatalf("gc --json printed no count of what it removed (%v):\n%s", err, r)
		}
		if *gc.Removed <= 0 || *gc.Removed >= before {
			t.Errorf("gc of a cache of %d objects, keeping the newer of two versions 1%% apart, removed %d", before, *gc.Removed)
		}
		// Everything the new root needs is still there: a pull moves nothing.
		again := filepath.Join(t.TempDir(), "after-gc.ext4")
		st := desktop.pullJSON(t, newRoot, again)
		sameFile(t, again, img)
		if st.fetched(t) != 0 {
			t.Errorf("after gc keeping %s, pulling it fetched %d chunks: gc removed what the root uses: %v", newRoot, st.fetched(t), st)
		}
	})
}

// changeBlocks writes real data over frac of the image's 4 KiB blocks,
// scattered (as the benchmark does), and returns their indexes in order.
func changeBlocks(t *testing.T, img string, frac float64) []int64 {
	t.Helper()
	ch, err := syncbench.ChangeBlocks(context.Background(), img, frac, 1)
	if err != nil {
		t.Fatal(err)
	}
	var changed []int64
	for _, off := range ch.Offsets {
		changed = append(changed, off/4096)
	}
	slices.Sort(changed)
	return changed
}

// span is one line of 'sync diff': OFFSET +LENGTH.
type span struct{ Offset, Length int64 }

var spanLine = regexp.MustCompile(`^(\d+) \+(\d+)$`)

func parseRanges(t *testing.T, r result) []span {
	t.Helper()
	var out []span
	for _, line := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
		if line == "" {
			continue
		}
		m := spanLine.FindStringSubmatch(line)
		if m == nil {
			t.Fatalf("sync diff printed %q, want OFFSET +LENGTH:\n%s", line, r)
		}
		off, _ := strconv.ParseInt(m[1], 10, 64)
		n, _ := strconv.ParseInt(m[2], 10, 64)
		out = append(out, span{off, n})
	}
	return out
}

// TestSyncPullResumesAfterServerKill kills the server with -9 in the middle
// of a cold pull over a slow link, starts it again on the same data, and
// runs the same pull: it finishes, taking what the cut pull kept from the
// cache, and the target appears only then.
func TestSyncPullResumesAfterServerKill(t *testing.T) {
	need(t, "mkfs.ext4")
	data := t.TempDir()
	srv := startServe(t, data, "127.0.0.1:0")
	laptop, desktop := newDevice(t, "laptop"), newDevice(t, "desktop")
	laptop.login(t, srv.url(), srv.token, srv.fp)
	// The desktop reaches the server over a 24 MB/s link.
	link := startSlowProxy(t, srv.addr, 24e6)
	desktop.login(t, "https://"+link.addr(), srv.token, srv.fp)

	start := time.Now()
	img := makeExt4(t, t.TempDir(), "big.ext4", "112M", 80<<20)
	made := time.Now()
	root, pushed := laptop.pushJSON(t, img)
	t.Logf("made the image in %v, pushed it in %v", made.Sub(start).Round(time.Millisecond), time.Since(made).Round(time.Millisecond))
	nonZero := pushed.chunks(t) - pushed.zero(t)
	t.Logf("image: %d bytes, %d chunks, %d of them zeroes; pushed %d bytes", pushed.size(t), pushed.chunks(t), pushed.zero(t), pushed.wireBytes(t))

	outDir := t.TempDir()
	out := filepath.Join(outDir, "big.ext4")
	// Kill the server once a quarter of the chunks are in the cache.
	threshold := max(4, int(nonZero/4))
	cut := interruptedPull(t, desktop, root, out, threshold, func(*exec.Cmd) {
		srv.kill9(t)
		link.cut()
	})
	kept := cachedObjects(desktop.cache)
	t.Logf("killed the server with %d objects in the cache; %d objects kept; the pull said:\n%s", threshold, kept, cut.stderr)
	if cut.code == 0 {
		t.Fatalf("the pull succeeded although the server was killed in the middle:\n%s", cut)
	}
	if !strings.Contains(cut.stderr, "again") {
		t.Errorf("a pull cut by the server's death should tell the user to run it again to resume; got:\n%s", cut)
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Errorf("a cut pull left %s behind (stat: %v); it must appear only when whole", out, err)
	}
	if left := entries(t, outDir); len(left) != 0 {
		t.Errorf("a cut pull left %v in %s", left, outDir)
	}

	// The server comes back on the same data and address.
	startServe(t, data, srv.addr)
	st := desktop.pullJSON(t, root, out)
	sameFile(t, out, img)
	t.Logf("resumed pull: %v", st)
	if st.fromCache(t) == 0 {
		t.Errorf("the resumed pull took nothing from the cache, which kept %d objects of the cut one: %v", kept, st)
	}
	if st.fetched(t)+st.fromCache(t) > nonZero || st.fetched(t) >= nonZero {
		t.Errorf("the resumed pull fetched %d and took %d from the cache, of %d data chunks: it did not resume: %v", st.fetched(t), st.fromCache(t), nonZero, st)
	}
}

// TestSyncPullStopsCleanlyOnCtrlC presses Ctrl-C in the middle of a pull:
// it says what it left and what to do, the image the user had stays as it
// was, nothing is left beside it, and the next pull resumes from the cache.
func TestSyncPullStopsCleanlyOnCtrlC(t *testing.T) {
	need(t, "mkfs.ext4")
	srv := startServe(t, t.TempDir(), "127.0.0.1:0")
	laptop, desktop := newDevice(t, "laptop"), newDevice(t, "desktop")
	laptop.login(t, srv.url(), srv.token, srv.fp)
	link := startSlowProxy(t, srv.addr, 24e6)
	desktop.login(t, "https://"+link.addr(), srv.token, srv.fp)
	img := makeExt4(t, t.TempDir(), "big.ext4", "112M", 80<<20)
	root, pushed := laptop.pushJSON(t, img)
	nonZero := pushed.chunks(t) - pushed.zero(t)

	outDir := t.TempDir()
	out := filepath.Join(outDir, "disk.img")
	previous := []byte("the image the user had before the pull\n")
	if err := os.WriteFile(out, previous, 0o644); err != nil {
		t.Fatal(err)
	}
	r := interruptedPull(t, desktop, root, out, max(4, int(nonZero/4)), func(cmd *exec.Cmd) {
		cmd.Process.Signal(os.Interrupt)
	})
	if r.code == 0 || !strings.Contains(r.stderr, "pull stopped") || !strings.Contains(r.stderr, "is as it was") || !strings.Contains(r.stderr, "pull again to resume") {
		t.Errorf("Ctrl-C mid-pull should exit non-zero saying the pull stopped, the image is as it was, and to pull again:\n%s", r)
	}
	t.Logf("after Ctrl-C the pull said:\n%s", r.stderr)
	if got, _ := os.ReadFile(out); !bytes.Equal(got, previous) {
		t.Errorf("Ctrl-C changed the image the user had: %q", got)
	}
	if left := entries(t, outDir); len(left) != 1 {
		t.Errorf("Ctrl-C left %v beside the image", left)
	}
	st := desktop.pullJSON(t, root, out)
	sameFile(t, out, img)
	if st.fromCache(t) == 0 {
		t.Errorf("the pull after Ctrl-C took nothing from the cache: %v", st)
	}
}

// TestSyncBadInput gives sync what users get wrong. Each failure exits
// non-zero with a message that says what to do, and leaves the file the
// user already had untouched.
func TestSyncBadInput(t *testing.T) {
	srv := startServe(t, t.TempDir(), "127.0.0.1:0")
	laptop := newDevice(t, "laptop")
	laptop.login(t, srv.url(), srv.token, srv.fp)
	// A small image of real bytes the server has.
	dir := t.TempDir()
	small := filepath.Join(dir, "small.img")
	code, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(small, code[:min(len(code), 3<<20)], 0o644); err != nil {
		t.Fatal(err)
	}
	root := laptop.push(t, small)

	down := newDevice(t, "down")
	downAddr := freeAddr(t)
	down.login(t, "https://"+downAddr, srv.token, srv.fp)
	wrongToken := newDevice(t, "stranger")
	wrongToken.login(t, srv.url(), "0123456789abcdef0123456789abcdef0123456789abcdef", srv.fp)
	fresh := newDevice(t, "fresh") // never logged in
	missingRoot := strings.Repeat("5a", 32)

	const target = "disk.img" // the user's existing image, in the case's own directory
	cases := []struct {
		name   string
		dev    *device
		args   func(outDir string) []string
		code   int
		want   []string // words the message must have (regexps, case-insensitive)
		forbid []string // words that would send the user the wrong way
	}{
		{
			name: "root that is not a hash", dev: laptop,
			args: func(o string) []string { return []string{"pull", "desktop-latest", filepath.Join(o, target)} },
			code: 2, want: []string{`desktop-latest`, `not a hash`, `64 hex`},
		},
		{
			name: "root the server does not have", dev: laptop,
			args: func(o string) []string { return []string{"pull", missingRoot, filepath.Join(o, target)} },
			code: 1, want: []string{missingRoot, `not in the store|no image|not found|does not have`},
			// Running the same pull again cannot help: nothing is there to resume.
			forbid: []string{`run the same pull again`, `resume`},
		},
		{
			name: "server down", dev: down,
			args: func(o string) []string { return []string{"pull", root, filepath.Join(o, target)} },
			code: 1, want: []string{regexp.QuoteMeta(downAddr), `reach|(could not|cannot|can't) connect`, `refused`},
			// Nothing started, so nothing was cut short.
			forbid: []string{`cut short`},
		},
		{
			name: "server down, push", dev: down,
			args: func(string) []string { return []string{"push", small} },
			code: 1, want: []string{regexp.QuoteMeta(downAddr), `reach|(could not|cannot|can't) connect`, `refused`},
			// Nothing started, so nothing was cut short.
			forbid: []string{`cut short`},
		},
		{
			name: "not logged in", dev: fresh,
			args: func(o string) []string { return []string{"pull", root, filepath.Join(o, target)} },
			code: 1, want: []string{`handoff lease login`, `--store`},
		},
		{
			name: "not logged in, push", dev: fresh,
			args: func(string) []string { return []string{"push", small} },
			code: 1, want: []string{`handoff lease login`, `--store`},
		},
		{
			name: "wrong token", dev: wrongToken,
			args: func(o string) []string { return []string{"pull", root, filepath.Join(o, target)} },
			code: 1, want: []string{`token`, `handoff serve token add|handoff lease login`},
			forbid: []string{`run the same pull again`},
		},
		{
			name: "wrong token, push", dev: wrongToken,
			args: func(string) []string { return []string{"push", small} },
			code: 1, want: []string{`token`, `handoff serve token add|handoff lease login`},
		},
		{
			name: "target in a directory that does not exist", dev: laptop,
			args: func(o string) []string { return []string{"pull", root, filepath.Join(o, "no-such-dir", target)} },
			code: 1, want: []string{`no-such-dir`, `no such file or directory|does not exist`},
			// The user never named a .partial file, and the same pull fails the same way.
			forbid: []string{`\.partial-`, `run the same pull again`},
		},
		{
			name: "push of a file that does not exist", dev: laptop,
			args: func(o string) []string { return []string{"push", filepath.Join(o, "no-such-disk.qcow2")} },
			code: 1, want: []string{`no-such-disk\.qcow2`, `no such file or directory|does not exist`},
		},
		{
			name: "pull without a target", dev: laptop,
			args: func(string) []string { return []string{"pull", root} },
			code: 2, want: []string{`sync pull ROOT FILE`},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			outDir := t.TempDir()
			sentinel := []byte("the user's previous image, which a failed sync must not touch\n")
			if err := os.WriteFile(filepath.Join(outDir, target), sentinel, 0o644); err != nil {
				t.Fatal(err)
			}
			r := c.dev.sync(t, c.args(outDir)...)
			t.Logf("exit %d: %s", r.code, strings.TrimSpace(r.stderr))
			if r.code != c.code {
				t.Errorf("exit %d, want %d:\n%s", r.code, c.code, r)
			}
			msg := r.stderr
			for _, w := range c.want {
				if !regexp.MustCompile("(?i)" + w).MatchString(msg) {
					t.Errorf("the message does not say %q:\n%s", w, r)
				}
			}
			for _, f := range c.forbid {
				if regexp.MustCompile("(?i)" + f).MatchString(msg) {
					t.Errorf("the message says %q, which does not apply here:\n%s", f, r)
				}
			}
			if got, err := os.ReadFile(filepath.Join(outDir, target)); err != nil || !bytes.Equal(got, sentinel) {
				t.Errorf("the existing %s changed (%v): %q", target, err, got)
			}
			if left := entries(t, outDir); !slices.Equal(left, []string{target}) {
				t.Errorf("the failed command left %v in the target's directory, want only %s", left, target)
			}
		})
	}
}

// TestSyncHelp: help answers with usage on stdout and exits 0; a missing
// or unknown subcommand is a usage error that points to the help.
func TestSyncHelp(t *testing.T) {
	user := newDevice(t, "user")
	for _, c := range []struct {
		args []string
		want []string
	}{
		{[]string{"sync", "--help"}, []string{"Usage: handoff sync", "push FILE", "pull ROOT FILE", "diff ROOT1 ROOT2", "gc ROOT", "--store", "--cache", "lease login"}},
		{[]string{"sync", "pull", "--help"}, []string{"Usage: handoff sync pull", "ROOT", "FILE", "-cache", "-store", "-json"}},
		{[]string{"sync", "push", "--help"}, []string{"Usage: handoff sync push", "FILE", "-store"}},
	} {
		r := user.run(t, c.args...)
		if r.code != 0 {
			t.Errorf("exit %d, want 0:\n%s", r.code, r)
		}
		for _, w := range c.want {
			if !strings.Contains(r.stdout, w) {
				t.Errorf("help does not say %q:\n%s", w, r)
			}
		}
		if r.stderr != "" {
			t.Errorf("help wrote to stderr:\n%s", r)
		}
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"sync"}, "name a sync command"},
		{[]string{"sync", "pul", "x", "y"}, `"pul"`},
	} {
		r := user.run(t, c.args...)
		if r.code != 2 || !strings.Contains(r.stderr, c.want) || !strings.Contains(r.stdout+r.stderr, "--help") && !strings.Contains(r.stdout, "Usage") {
			t.Errorf("want exit 2 saying %q and where help is:\n%s", c.want, r)
		}
	}
}
