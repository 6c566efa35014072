package syncengine

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
)

func TestCodecCompressesWhereItPaysAndVerifies(t *testing.T) {
	codec := NewCodec()
	text := bytes.Repeat([]byte("a line of text in a disk image\n"), 4000)
	random := make([]byte, 64<<10)
	for i := range random {
		random[i] = byte(rand.Uint32())
	}
	for name, data := range map[string][]byte{"text": text, "random": random} {
		packed := codec.Encode(data)
		if name == "text" && (packed[0] != formatZstd || len(packed) > len(data)/10) {
			t.Errorf("text packed to %d of %d bytes, format %d", len(packed), len(data), packed[0])
		}
		if name == "random" && packed[0] != formatRaw {
			t.Errorf("random data was compressed: it does not pay")
		}
		got, err := codec.Decode(Sum(data), packed)
		if err != nil || !bytes.Equal(got, data) {
			t.Errorf("%s round trip: %v", name, err)
		}
		packed[len(packed)/2] ^= 1
		if _, err := codec.Decode(Sum(data), packed); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s with a flipped bit: %v, want ErrCorrupt", name, err)
		}
	}
}

// hub is a chunk store over real TLS HTTP, as the home server runs it, with
// faults a link can have.
type hub struct {
	dir   DirStore
	store HTTPStore
	// cutChunks, if set, says per /chunks answer after how many bytes the
	// link drops (0: it does not).
	cutChunks func(n int64) int
	// damageChunks, if set, says per /chunks answer at which byte one bit
	// flips on the way (0: none).
	damageChunks func(n int64) int
	chunkCalls   atomic.Int64
}

func newHub(t *testing.T) *hub {
	s := &hub{dir: DirStore{Dir: t.TempDir()}}
	h := Handler(s.dir, NewCodec())
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/chunks" {
			n := s.chunkCalls.Add(1)
			fw := &faultyWriter{ResponseWriter: w}
			if s.cutChunks != nil {
				fw.cutAt = s.cutChunks(n)
			}
			if s.damageChunks != nil {
				fw.damageAt = s.damageChunks(n)
			}
			w = fw
		}
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	s.store = HTTPStore{Base: srv.URL, Client: srv.Client()}
	return s
}

// faultyWriter cuts the connection after cutAt bytes, or flips a bit at
// damageAt.
type faultyWriter struct {
	http.ResponseWriter
	written         int
	cutAt, damageAt int
}

func (w *faultyWriter) Write(b []byte) (int, error) {
	if w.damageAt > 0 && w.written <= w.damageAt && w.damageAt < w.written+len(b) {
		b = append([]byte(nil), b...)
		b[w.damageAt-w.written] ^= 0x10
	}
	if w.cutAt > 0 && w.written+len(b) > w.cutAt {
		w.ResponseWriter.Write(b[:w.cutAt-w.written])
		w.ResponseWriter.(http.Flusher).Flush()
		panic(http.ErrAbortHandler) // the link drops mid-answer
	}
	w.written += len(b)
	return w.ResponseWriter.Write(b)
}

func (s *hub) client(t *testing.T) *Client {
	return &Client{Remote: s.store, Cache: DirStore{Dir: t.TempDir()}, Codec: NewCodec()}
}

func run(t *testing.T, name string, args ...string) []byte {
	t.Helper()
	out, err := exec.Command(name, args...).Output()
	if err != nil {
		t.Fatalf("%s %v: %v", name, args, err)
	}
	return out
}

// realTree copies files every machine of ours has into dir: QEMU's
// firmware and the time zone files, binary and text.
func realTree(t *testing.T, dir string) string {
	tree := filepath.Join(dir, "tree")
	os.MkdirAll(tree, 0o755)
	run(t, "cp", "-rL", "/usr/share/qemu", "/usr/share/zoneinfo", tree)
	return tree
}

// images makes real images of the kinds a user has.
func images(t *testing.T) map[string]string {
	dir := t.TempDir()
	files := map[string]string{}
	ext4 := filepath.Join(dir, "fs.ext4")
	run(t, "mkfs.ext4", "-q", "-F", "-d", realTree(t, dir), ext4, "32M")
	files["ext4 with real files"] = ext4
	qcow := filepath.Join(dir, "disk.qcow2")
	run(t, "qemu-img", "convert", "-q", "-O", "qcow2", ext4, qcow)
	files["qcow2"] = qcow
	// Sparse: 64 MiB of hole with a little data.
	sparse := filepath.Join(dir, "sparse.img")
	f, _ := os.Create(sparse)
	f.Truncate(64 << 20)
	f.WriteAt([]byte("data in the middle of nothing"), 30<<20)
	f.Close()
	files["sparse"] = sparse
	odd := filepath.Join(dir, "odd")
	b := make([]byte, 3*DefaultChunkSize+12345)
	for i := range b {
		b[i] = byte(i * 31 / 7)
	}
	os.WriteFile(odd, b, 0o644)
	files["not a multiple of the chunk size"] = odd
	empty := filepath.Join(dir, "empty")
	os.WriteFile(empty, nil, 0o644)
	files["empty"] = empty
	return files
}

func sameFile(t *testing.T, a, b string) {
	t.Helper()
	x, err1 := os.ReadFile(a)
	y, err2 := os.ReadFile(b)
	if err1 != nil || err2 != nil || !bytes.Equal(x, y) {
		t.Fatalf("%s and %s differ (%d vs %d bytes; %v %v)", a, b, len(x), len(y), err1, err2)
	}
}

func TestPushPullRoundTripsRealImages(t *testing.T) {
	ctx := context.Background()
	for name, path := range images(t) {
		t.Run(name, func(t *testing.T) {
			srv := newHub(t)
			device := srv.client(t)
			root, pushed, err := device.Push(ctx, path)
			if err != nil {
				t.Fatal(err)
			}
			again, repushed, err := device.Push(ctx, path)
			if err != nil || again != root || repushed.Sent != 0 {
				t.Fatalf("pushing the same image again: root %s vs %s, sent %d chunks, %v", again, root, repushed.Sent, err)
			}
			other := srv.client(t)
			out := filepath.Join(t.TempDir(), "pulled")
			pulled, err := other.Pull(ctx, root, out)
			if err != nil {
				t.Fatal(err)
			}
			sameFile(t, path, out)
			if pulled.Sent != pushed.Sent || pulled.Patched != 0 {
				t.Errorf("a cold pull fetched %d chunks (%d patched), push sent %d: it takes each distinct chunk once, whole", pulled.Sent, pulled.Patched, pushed.Sent)
			}
			second, err := other.Pull(ctx, root, out)
			if err != nil || second.Sent != 0 {
				t.Errorf("a pull with a warm cache fetched %d chunks, %v", second.Sent, err)
			}
			if name == "sparse" {
				var st syscall.Stat_t
				syscall.Stat(out, &st)
				if st.Blocks*512 > 4<<20 {
					t.Errorf("the pulled sparse image uses %d bytes of disk: it was filled in", st.Blocks*512)
				}
				if pushed.ZeroChunks < pushed.Chunks-2 || pushed.WireBytes > 64<<10 {
					t.Errorf("pushing 64 MiB of holes: %d zero chunks of %d, %d bytes on the wire", pushed.ZeroChunks, pushed.Chunks, pushed.WireBytes)
				}
			}
		})
	}
}

// changeBlocks overwrites fraction of the image's 4 KiB blocks, scattered,
// with 4 KiB pieces of real programs, and returns the new contents.
func changeBlocks(t *testing.T, img string, fraction float64, seed uint64) []byte {
	t.Helper()
	donor, err := os.ReadFile("/usr/bin/qemu-img")
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, _ := f.Stat()
	blocks := fi.Size() / 4096
	rng := rand.New(rand.NewPCG(seed, 2))
	picked := map[int64]bool{}
	for int64(len(picked)) < int64(float64(blocks)*fraction) {
		picked[rng.Int64N(blocks)] = true
	}
	var changed []byte
	for b := range picked {
		off := rng.IntN(len(donor)/4096-1) * 4096
		block := donor[off : off+4096]
		if _, err := f.WriteAt(block, b*4096); err != nil {
			t.Fatal(err)
		}
		changed = append(changed, block...)
	}
	return changed
}

// zstdSize is what the zstd command at its default level makes of data.
func zstdSize(t *testing.T, data []byte) int64 {
	cmd := exec.Command("zstd", "-3", "-c")
	cmd.Stdin = bytes.NewReader(data)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("zstd: %v", err)
	}
	return int64(len(out))
}

// TestAnUpdateSendsOnlyTheChangedBlocks changes 1% of an image's 4 KiB
// blocks, scattered, and checks both directions send at most 1.1 times what
// zstd makes of the changed blocks alone: a checkpoint pushed from the
// workstation, and the next version pulled from the server.
func TestAnUpdateSendsOnlyTheChangedBlocks(t *testing.T) {
	ctx := context.Background()
	srv := newHub(t)
	img := images(t)["ext4 with real files"]
	laptop, server := srv.client(t), &Client{Remote: srv.dir, Cache: DirStore{Dir: t.TempDir()}, Codec: NewCodec()}
	root0, _, err := server.Push(ctx, img)
	if err != nil {
		t.Fatal(err)
	}
	mine := filepath.Join(t.TempDir(), "disk.img")
	if _, err := laptop.Pull(ctx, root0, mine); err != nil {
		t.Fatal(err)
	}
	check := func(what string, st Stats, changed []byte) {
		t.Helper()
		ref := zstdSize(t, changed)
		ratio := float64(st.WireBytes) / float64(ref)
		t.Logf("%s: %d KiB changed, zstd -3 makes %d bytes of it; sent %d bytes (%.3fx), %d chunks, %d as patches", what, len(changed)>>10, ref, st.WireBytes, ratio, st.Sent, st.Patched)
		if ratio > 1.1 || st.WireBytes == 0 || st.Patched == 0 {
			t.Errorf("%s sent %d bytes, %.3f times the %d bytes zstd makes of the changed blocks (%d patched chunks): want at most 1.1", what, st.WireBytes, ratio, ref, st.Patched)
		}
	}

	// The laptop's VM writes; its checkpoint goes back.
	changed := changeBlocks(t, mine, 0.01, 1)
	root1, st, err := laptop.Push(ctx, mine)
	if err != nil {
		t.Fatal(err)
	}
	check("checkpoint push", st, changed)
	if st.Base != root0 {
		t.Errorf("the checkpoint was sent against %s, want the pulled image %s", st.Base, root0)
	}

	// The server's copy moves on (another device's work) and the laptop
	// pulls it over its own disk.
	theirs := filepath.Join(t.TempDir(), "theirs.img")
	if _, err := (&Client{Remote: srv.dir, Cache: DirStore{Dir: t.TempDir()}, Codec: NewCodec()}).Pull(ctx, root1, theirs); err != nil {
		t.Fatal(err)
	}
	changed = changeBlocks(t, theirs, 0.01, 2)
	root2, _, err := server.Push(ctx, theirs)
	if err != nil {
		t.Fatal(err)
	}
	st, err = laptop.Pull(ctx, root2, mine)
	if err != nil {
		t.Fatal(err)
	}
	sameFile(t, theirs, mine)
	check("update pull", st, changed)
	ranges, err := laptop.Diff(ctx, root1, root2)
	if err != nil || len(ranges) == 0 {
		t.Fatalf("diff of two versions: %v, %v", ranges, err)
	}
}

func TestCorruptionIsCaughtAndNeverWritten(t *testing.T) {
	ctx := context.Background()
	srv := newHub(t)
	img := images(t)["ext4 with real files"]
	root, _, err := srv.client(t).Push(ctx, img)
	if err != nil {
		t.Fatal(err)
	}

	// A bit flipped on the way, once: asked again, and the pull succeeds.
	srv.damageChunks = func(n int64) int {
		if n == 1 {
			return 5000
		}
		return 0
	}
	out := filepath.Join(t.TempDir(), "image")
	st, err := srv.client(t).Pull(ctx, root, out)
	if err != nil || st.Refetched == 0 {
		t.Fatalf("pull through one damaged answer: refetched %d, %v", st.Refetched, err)
	}
	sameFile(t, img, out)
	srv.damageChunks = nil

	// A chunk damaged in the server's store: the pull fails clearly and the
	// previous image stays as it was.
	os.WriteFile(out, []byte("the previous image"), 0o644)
	tr, err := loadTree(ctx, srv.dir, NewCodec(), root)
	if err != nil {
		t.Fatal(err)
	}
	distinct, _ := tr.distinct()
	p := srv.dir.path(distinct[len(distinct)/2])
	b, _ := os.ReadFile(p)
	b[len(b)/2] ^= 0xff
	os.WriteFile(p, b, 0o644)
	_, err = srv.client(t).Pull(ctx, root, out)
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "server's store") {
		t.Fatalf("pull of a damaged chunk: %v", err)
	}
	if got, _ := os.ReadFile(out); string(got) != "the previous image" {
		t.Fatal("a failed pull changed the previous image")
	}
	if leftovers, _ := filepath.Glob(filepath.Join(filepath.Dir(out), ".*partial*")); len(leftovers) != 0 {
		t.Errorf("a failed pull left %v", leftovers)
	}
}

// TestADamagedCacheHealsItself damages the workstation's cached copy of an
// unchanged chunk and of a chunk the next version patches: the pull of that
// version fetches both whole and writes the right image.
func TestADamagedCacheHealsItself(t *testing.T) {
	ctx := context.Background()
	srv := newHub(t)
	img := images(t)["ext4 with real files"]
	server := &Client{Remote: srv.dir, Cache: DirStore{Dir: t.TempDir()}, Codec: NewCodec()}
	root0, _, err := server.Push(ctx, img)
	if err != nil {
		t.Fatal(err)
	}
	laptop := srv.client(t)
	mine := filepath.Join(t.TempDir(), "disk.img")
	if _, err := laptop.Pull(ctx, root0, mine); err != nil {
		t.Fatal(err)
	}
	changeBlocks(t, img, 0.01, 3)
	root1, _, err := server.Push(ctx, img)
	if err != nil {
		t.Fatal(err)
	}
	old, _ := loadTree(ctx, srv.dir, NewCodec(), root0)
	next, _ := loadTree(ctx, srv.dir, NewCodec(), root1)
	var unchanged, patchedBase Hash
	for i, h := range old.Chunks {
		switch {
		case h.IsZero():
		case h == next.Chunks[i] && unchanged.IsZero():
			unchanged = h
		case h != next.Chunks[i] && patchedBase.IsZero() && !next.Chunks[i].IsZero():
			patchedBase = h
		}
	}
	for _, h := range []Hash{unchanged, patchedBase} {
		damageCached(t, laptop, h)
	}
	st, err := laptop.Pull(ctx, root1, mine)
	if err != nil {
		t.Fatalf("a pull over a damaged cache: %v", err)
	}
	sameFile(t, img, mine)
	if st.Patched == 0 || st.Sent <= st.Patched {
		t.Errorf("sent %d chunks, %d patched: the damaged ones should come whole, the rest as patches", st.Sent, st.Patched)
	}
	if _, err := laptop.Pull(ctx, root1, mine); err != nil {
		t.Fatalf("the healed cache: %v", err)
	}
}

// TestTheCacheKeepsPacksAndCollectsThem: what one process cached another
// finds; an index entry a crash left past its pack's end is ignored; a
// collection keeps exactly what the named trees use.
func TestTheCacheKeepsPacksAndCollectsThem(t *testing.T) {
	ctx := context.Background()
	srv := newHub(t)
	imgs := images(t)
	server := &Client{Remote: srv.dir, Cache: DirStore{Dir: t.TempDir()}, Codec: NewCodec()}
	rootA, _, err := server.Push(ctx, imgs["ext4 with real files"])
	if err != nil {
		t.Fatal(err)
	}
	rootB, _, err := server.Push(ctx, imgs["not a multiple of the chunk size"])
	if err != nil {
		t.Fatal(err)
	}
	cacheDir, out := t.TempDir(), t.TempDir()
	first := &Client{Remote: srv.store, Cache: DirStore{Dir: cacheDir}, Codec: NewCodec()}
	for _, r := range []Hash{rootA, rootB} {
		if _, err := first.Pull(ctx, r, filepath.Join(out, r.String())); err != nil {
			t.Fatal(err)
		}
	}
	first.Close()
	// A crash between writing a pack's data and its index: an entry that
	// points past the end.
	idxs, _ := filepath.Glob(filepath.Join(cacheDir, "packs", "*.idx"))
	if len(idxs) != 1 {
		t.Fatalf("one pull process made %d packs, want 1", len(idxs))
	}
	tornHash := Sum([]byte("torn"))
	torn := append(tornHash[:], make([]byte, 12)...)
	torn[32+7] = 0x7f // offset far past the end
	f, _ := os.OpenFile(idxs[0], os.O_APPEND|os.O_WRONLY, 0)
	f.Write(torn)
	f.Close()

	second := &Client{Remote: srv.store, Cache: DirStore{Dir: cacheDir}, Codec: NewCodec()}
	defer second.Close()
	elsewhere := filepath.Join(t.TempDir(), "a")
	st, err := second.Pull(ctx, rootA, elsewhere)
	if err != nil || st.Sent != 0 || st.FromCache == 0 {
		t.Fatalf("a second process's pull of what the first cached: %+v, %v", st, err)
	}
	if have, _ := second.cache().Has(ctx, []Hash{Sum([]byte("torn"))}); have[0] {
		t.Error("an index entry past its pack's end was taken for an object")
	}
	removed, err := second.GCCache(ctx, []Hash{rootA})
	if err != nil || removed == 0 {
		t.Fatalf("collecting the cache for A alone removed %d, %v", removed, err)
	}
	if packs, _ := filepath.Glob(filepath.Join(cacheDir, "packs", "*.pack")); len(packs) != 1 {
		t.Errorf("after a collection the cache holds %d packs, want the one it rewrote", len(packs))
	}
	third := &Client{Remote: srv.store, Cache: DirStore{Dir: cacheDir}, Codec: NewCodec()}
	defer third.Close()
	if st, err := third.Pull(ctx, rootA, filepath.Join(t.TempDir(), "a")); err != nil || st.Sent != 0 {
		t.Errorf("A after the collection: fetched %d chunks, %v; want all from the cache", st.Sent, err)
	}
	if st, err := third.Pull(ctx, rootB, filepath.Join(t.TempDir(), "b")); err != nil || st.Sent == 0 {
		t.Errorf("B after the collection: fetched %d chunks, %v; want it fetched again", st.Sent, err)
	}
}

// damageCached flips a bit in the middle of a cached object, in its pack.
func damageCached(t *testing.T, c *Client, h Hash) {
	t.Helper()
	pc := c.packCache()
	pc.mu.Lock()
	pc.load()
	loc, ok := pc.index[h]
	if !ok {
		pc.mu.Unlock()
		t.Fatalf("%s is not in the cache", h)
	}
	name := pc.names[loc.pack]
	pc.mu.Unlock()
	f, err := os.OpenFile(filepath.Join(pc.packDir(), name+".pack"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	at := loc.off + int64(loc.n/2)
	f.ReadAt(b, at)
	b[0] ^= 0x40
	if _, err := f.WriteAt(b, at); err != nil {
		t.Fatal(err)
	}
}

// TestTheServerStoresOnlyWhatMatchesItsName pushes a stream whose chunk
// does not hash to the name the tree gives it.
func TestTheServerStoresOnlyWhatMatchesItsName(t *testing.T) {
	ctx := context.Background()
	srv := newHub(t)
	good := bytes.Repeat([]byte("good"), 1024)
	m := &Manifest{Size: int64(len(good)), ChunkSize: DefaultChunkSize, Chunks: []Hash{Sum(good)}}
	tr := m.tree()
	codec := NewCodec()
	var body bytes.Buffer
	w := newRecordWriter(&body, codec)
	w.bytes(append(tr.root[:], make([]byte, 32)...))
	sendTree(w, tr, nil)
	w.bytes(appendPositions(nil, []int{0}))
	w.packed(codec.Encode(bytes.Repeat([]byte("evil"), 1024)))
	w.Close()
	var wire atomic.Int64
	rr, done, err := exchange(ctx, srv.store, codec, "push", &body, &wire)
	if err != nil {
		t.Fatal(err)
	}
	defer done()
	if _, _, err := rr.record(); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("a push of a chunk under a wrong name: %v, want a refusal for corruption", err)
	}
	if have, _ := srv.dir.Has(ctx, []Hash{tr.root, Sum(good), Sum(bytes.Repeat([]byte("evil"), 1024))}); have[0] || have[1] || have[2] {
		t.Errorf("the server stored something of a refused push: %v", have)
	}
}

func TestPullResumesAfterACutConnection(t *testing.T) {
	ctx := context.Background()
	srv := newHub(t)
	img := images(t)["ext4 with real files"]
	root, pushed, err := srv.client(t).Push(ctx, img)
	if err != nil {
		t.Fatal(err)
	}
	device := srv.client(t)
	out := filepath.Join(t.TempDir(), "image")
	srv.cutChunks = func(int64) int { return 64 << 10 } // every answer dies early
	first, err := device.Pull(ctx, root, out)
	if err == nil || !strings.Contains(err.Error(), "pull again") {
		t.Fatalf("a pull over a dying link: %v, want an error that says to pull again", err)
	}
	srv.cutChunks = nil
	second, err := device.Pull(ctx, root, out)
	if err != nil {
		t.Fatal(err)
	}
	if first.Sent == 0 || second.FromCache != first.Sent || second.Sent+second.FromCache != pushed.Sent {
		t.Errorf("resumed pull: %d from the cache, %d fetched, of %d (the cut pull got %d)", second.FromCache, second.Sent, pushed.Sent, first.Sent)
	}
	sameFile(t, img, out)
}

func TestFullDiskGivesAClearErrorAndKeepsThePreviousImage(t *testing.T) {
	ctx := context.Background()
	srv := newHub(t)
	img := images(t)["ext4 with real files"]
	root, _, err := srv.client(t).Push(ctx, img)
	if err != nil {
		t.Fatal(err)
	}
	small := t.TempDir()
	run(t, "mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", small)
	t.Cleanup(func() { exec.Command("umount", small).Run() })
	out := filepath.Join(small, "image")
	os.WriteFile(out, []byte("the previous image"), 0o644)
	_, err = srv.client(t).Pull(ctx, root, out)
	if !errors.Is(err, ErrDiskFull) || !strings.Contains(err.Error(), "free space") {
		t.Fatalf("pull onto a full disk: %v, want an error that says the disk is full", err)
	}
	if got, _ := os.ReadFile(out); string(got) != "the previous image" {
		t.Fatal("the failed pull changed the previous image")
	}
}

func TestGCKeepsOnlyWhatRootsUse(t *testing.T) {
	ctx := context.Background()
	codec := NewCodec()
	store := DirStore{Dir: t.TempDir()}
	local := &Client{Remote: store, Cache: DirStore{Dir: t.TempDir()}, Codec: codec}
	imgs := images(t)
	keep, _, err := local.Push(ctx, imgs["not a multiple of the chunk size"])
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := local.Push(ctx, imgs["ext4 with real files"]); err != nil {
		t.Fatal(err)
	}
	removed, err := store.GC(ctx, codec, []Hash{keep})
	if err != nil || removed == 0 {
		t.Fatalf("gc removed %d, %v", removed, err)
	}
	other := &Client{Remote: store, Cache: DirStore{Dir: t.TempDir()}, Codec: codec}
	out := filepath.Join(t.TempDir(), "x")
	if _, err := other.Pull(ctx, keep, out); err != nil {
		t.Fatalf("the kept image no longer pulls: %v", err)
	}
	sameFile(t, imgs["not a multiple of the chunk size"], out)
}

func BenchmarkIndex(b *testing.B) {
	path := filepath.Join(b.TempDir(), "image")
	data := make([]byte, 256<<20)
	for i := 0; i < len(data); i += 4096 {
		copy(data[i:], bytes.Repeat([]byte{byte(i / 4096)}, 4000)) // non-zero, compressible
	}
	os.WriteFile(path, data, 0o644)
	b.SetBytes(int64(len(data)))
	b.ResetTimer()
	for range b.N {
		if _, err := Index(context.Background(), path, 0); err != nil {
			b.Fatal(err)
		}
	}
}

// TestAPushThatFoundItsChunksOnTheServerIsTheNextOnesBase: a fresh cache
// pushes a file whose chunks the server already holds (another device
// sent them), so nothing of it is read for sending; its next push still
// sends each changed chunk as its changes, not whole.
func TestAPushThatFoundItsChunksOnTheServerIsTheNextOnesBase(t *testing.T) {
	ctx := context.Background()
	srv := newHub(t)
	img := images(t)["ext4 with real files"]
	mine := filepath.Join(t.TempDir(), "memory.image")
	data, err := os.ReadFile(img)
	if err == nil {
		err = os.WriteFile(mine, data, 0o600)
	}
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := srv.client(t).Push(ctx, mine); err != nil {
		t.Fatal(err)
	}
	fresh := srv.client(t)
	root0, st, err := fresh.Push(ctx, mine)
	if err != nil {
		t.Fatal(err)
	}
	if st.Sent != 0 {
		t.Fatalf("the second device sent %d chunks the server held", st.Sent)
	}
	changed := changeBlocks(t, mine, 0.01, 2)
	_, st, err = fresh.Push(ctx, mine)
	if err != nil {
		t.Fatal(err)
	}
	ref := zstdSize(t, changed)
	t.Logf("%d KiB changed, zstd -3 makes %d bytes; sent %d bytes, %d chunks, %d as patches", len(changed)>>10, ref, st.WireBytes, st.Sent, st.Patched)
	if st.Base != root0 || st.Patched == 0 || st.Patched < st.Sent*9/10 || float64(st.WireBytes) > 1.1*float64(ref) {
		t.Errorf("the push after one that found its chunks on the server: base %s (want %s), %d of %d chunks as patches, %d bytes for %d of zstd", st.Base, root0, st.Patched, st.Sent, st.WireBytes, ref)
	}
}
