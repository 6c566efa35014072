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

func TestManifestMissingAndDiff(t *testing.T) {
	a, b, c := Sum([]byte("a")), Sum([]byte("b")), Sum([]byte("c"))
	m1 := &Manifest{Size: 10, ChunkSize: 4, Chunks: []Hash{a, {}, b}}
	m2 := &Manifest{Size: 10, ChunkSize: 4, Chunks: []Hash{a, c, c}}
	got := m2.Missing(func(h Hash) bool { return h == a })
	if len(got) != 1 || got[0] != c {
		t.Errorf("Missing = %v, want only c, once", got)
	}
	d, err := Diff(m1, m2)
	if err != nil || len(d) != 1 || d[0] != (Range{4, 6}) {
		t.Errorf("Diff = %v, %v; want one range 4+6", d, err)
	}
	if _, err := DecodeManifest([]byte(`{"size":10,"chunk_size":4,"chunks":[]}`)); err == nil {
		t.Error("a manifest with too few chunks decoded")
	}
	if _, err := ParseHash("xyz"); err == nil {
		t.Error("ParseHash took garbage")
	}
}

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

// server is a chunk store over real TLS HTTP, as the home server runs it.
type server struct {
	dir   DirStore
	store HTTPStore
	gets  atomic.Int64
	// failGet, if set, decides per GET whether to cut the connection.
	failGet func(n int64) bool
	// corruptGet, if set, decides per GET whether to flip a byte.
	corruptGet func(n int64) bool
}

func newServer(t *testing.T) *server {
	s := &server{dir: DirStore{Dir: t.TempDir()}}
	h := Handler(s.dir, NewCodec())
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet {
			n := s.gets.Add(1)
			if s.failGet != nil && s.failGet(n) {
				conn, _, _ := w.(http.Hijacker).Hijack()
				conn.Close() // the link drops mid-pull
				return
			}
			if s.corruptGet != nil && s.corruptGet(n) {
				rec := httptest.NewRecorder()
				h.ServeHTTP(rec, r)
				b := rec.Body.Bytes()
				b[len(b)-1] ^= 0xff
				w.Write(b)
				return
			}
		}
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	s.store = HTTPStore{Base: srv.URL, Client: srv.Client()}
	return s
}

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %v: %v: %s", name, args, err, out)
	}
}

// images makes real images of the kinds a user has.
func images(t *testing.T) map[string]string {
	dir := t.TempDir()
	files := map[string]string{}
	// ext4 filled with real files, made by mkfs.ext4 itself.
	ext4 := filepath.Join(dir, "fs.ext4")
	// QEMU's firmware and the time zone files: binary and text, from
	// packages every machine of ours has.
	tree := filepath.Join(dir, "tree")
	os.MkdirAll(tree, 0o755)
	run(t, "cp", "-rL", "/usr/share/qemu", "/usr/share/zoneinfo", tree)
	run(t, "mkfs.ext4", "-q", "-F", "-d", tree, ext4, "32M")
	files["ext4 with real files"] = ext4
	// The same as qcow2, made by qemu-img.
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

func TestPushPullRoundTripsRealImages(t *testing.T) {
	ctx := context.Background()
	codec := NewCodec()
	srv := newServer(t)
	for name, path := range images(t) {
		t.Run(name, func(t *testing.T) {
			root, pushed, err := Push(ctx, path, srv.store, codec, 0, nil)
			if err != nil {
				t.Fatal(err)
			}
			again, repushed, err := Push(ctx, path, srv.store, codec, 0, nil)
			if err != nil || again != root || repushed.Sent != 0 {
				t.Fatalf("pushing the same image again: root %s vs %s, sent %d chunks, %v", again, root, repushed.Sent, err)
			}
			out := filepath.Join(t.TempDir(), "pulled")
			cache := DirStore{Dir: t.TempDir()}
			pulled, err := Pull(ctx, root, srv.store, cache, codec, out, nil)
			if err != nil {
				t.Fatal(err)
			}
			want, _ := os.ReadFile(path)
			got, _ := os.ReadFile(out)
			if !bytes.Equal(got, want) {
				t.Fatalf("pulled image differs from the pushed one (%d vs %d bytes)", len(got), len(want))
			}
			if pulled.Sent != pushed.Sent {
				t.Errorf("pull fetched %d chunks, push sent %d: a cold pull takes each distinct chunk once", pulled.Sent, pushed.Sent)
			}
			// A second pull comes from the cache alone.
			second, err := Pull(ctx, root, srv.store, cache, codec, out, nil)
			if err != nil || second.Sent != 0 {
				t.Errorf("pull with a warm cache fetched %d chunks, %v", second.Sent, err)
			}
			if name == "sparse" {
				var st syscall.Stat_t
				syscall.Stat(out, &st)
				if st.Blocks*512 > 4<<20 {
					t.Errorf("the pulled sparse image uses %d bytes of disk: it was filled in", st.Blocks*512)
				}
			}
		})
	}
}

func TestSmallChangeSendsLittle(t *testing.T) {
	ctx := context.Background()
	codec := NewCodec()
	srv := newServer(t)
	img := images(t)["ext4 with real files"]
	if _, _, err := Push(ctx, img, srv.store, codec, 0, nil); err != nil {
		t.Fatal(err)
	}
	// Change 1% of the image's 4 KiB blocks, scattered.
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	blocks := fi.Size() / 4096
	changed := blocks / 100
	rng := rand.New(rand.NewPCG(1, 2))
	block := bytes.Repeat([]byte("changed "), 512)
	for range changed {
		if _, err := f.WriteAt(block, rng.Int64N(blocks)*4096); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	_, st, err := Push(ctx, img, srv.store, codec, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	if st.Sent == 0 || st.Sent > int(changed) {
		t.Errorf("changing %d blocks sent %d chunks", changed, st.Sent)
	}
	t.Logf("changed %d of %d blocks (%d KiB): sent %d chunks, %d KiB packed", changed, blocks, changed*4, st.Sent, st.SentBytes>>10)
}

func TestCorruptionIsCaughtAndNeverWritten(t *testing.T) {
	ctx := context.Background()
	codec := NewCodec()
	srv := newServer(t)
	img := images(t)["not a multiple of the chunk size"]
	root, _, err := Push(ctx, img, srv.store, codec, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	m, _ := loadManifest(ctx, srv.dir, codec, root)

	// A copy damaged on the way, once: fetched again, and the pull succeeds.
	srv.corruptGet = func(n int64) bool { return n == 2 }
	out := filepath.Join(t.TempDir(), "image")
	st, err := Pull(ctx, root, srv.store, DirStore{Dir: t.TempDir()}, codec, out, nil)
	if err != nil || st.Refetched != 1 {
		t.Fatalf("pull through one corrupt transfer: refetched %d, %v", st.Refetched, err)
	}
	srv.corruptGet = nil

	// A chunk damaged on the server: the pull fails clearly and the
	// previous image stays as it was.
	os.WriteFile(out, []byte("the previous image"), 0o644)
	p := srv.dir.path(m.Chunks[1])
	b, _ := os.ReadFile(p)
	b[len(b)/2] ^= 0xff
	os.WriteFile(p, b, 0o644)
	_, err = Pull(ctx, root, srv.store, DirStore{Dir: t.TempDir()}, codec, out, nil)
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "server's copy is damaged") {
		t.Fatalf("pull of a damaged chunk: %v", err)
	}
	if got, _ := os.ReadFile(out); string(got) != "the previous image" {
		t.Fatal("a failed pull changed the previous image")
	}
	leftovers, _ := filepath.Glob(filepath.Join(filepath.Dir(out), ".*partial*"))
	if len(leftovers) != 0 {
		t.Errorf("a failed pull left %v", leftovers)
	}
	// The server refuses to store what does not match its name.
	if err := srv.store.Put(ctx, Sum([]byte("x")), codec.Encode([]byte("y"))); err == nil {
		t.Error("the server stored an object under a wrong hash")
	}
}

func TestPullResumesAfterACutConnection(t *testing.T) {
	ctx := context.Background()
	codec := NewCodec()
	srv := newServer(t)
	img := images(t)["ext4 with real files"]
	root, pushed, err := Push(ctx, img, srv.store, codec, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	cache := DirStore{Dir: t.TempDir()}
	out := filepath.Join(t.TempDir(), "image")
	srv.failGet = func(n int64) bool { return n > int64(pushed.Sent)/2 } // the link dies halfway
	first, err := Pull(ctx, root, srv.store, cache, codec, out, nil)
	if err == nil {
		t.Fatal("pull over a dead link succeeded")
	}
	srv.failGet = nil
	second, err := Pull(ctx, root, srv.store, cache, codec, out, nil)
	if err != nil {
		t.Fatal(err)
	}
	if second.FromCache == 0 || second.Sent+second.FromCache != pushed.Sent || second.Sent >= pushed.Sent {
		t.Errorf("resumed pull: %d from cache, %d fetched, of %d (first got %d)", second.FromCache, second.Sent, pushed.Sent, first.Sent)
	}
	want, _ := os.ReadFile(img)
	if got, _ := os.ReadFile(out); !bytes.Equal(got, want) {
		t.Error("the resumed pull's image differs")
	}
}

func TestFullDiskGivesAClearErrorAndKeepsThePreviousImage(t *testing.T) {
	ctx := context.Background()
	codec := NewCodec()
	srv := newServer(t)
	img := images(t)["ext4 with real files"]
	root, _, err := Push(ctx, img, srv.store, codec, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	small := t.TempDir()
	run(t, "mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", small)
	t.Cleanup(func() { exec.Command("umount", small).Run() })
	out := filepath.Join(small, "image")
	os.WriteFile(out, []byte("the previous image"), 0o644)
	_, err = Pull(ctx, root, srv.store, DirStore{Dir: t.TempDir()}, codec, out, nil)
	if err == nil || !strings.Contains(err.Error(), "disk full") {
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
	imgs := images(t)
	keep, _, _ := Push(ctx, imgs["not a multiple of the chunk size"], store, codec, 0, nil)
	Push(ctx, imgs["ext4 with real files"], store, codec, 0, nil)
	removed, err := store.GC(ctx, codec, []Hash{keep})
	if err != nil || removed == 0 {
		t.Fatalf("gc removed %d, %v", removed, err)
	}
	if _, err := Pull(ctx, keep, store, DirStore{Dir: t.TempDir()}, codec, filepath.Join(t.TempDir(), "x"), nil); err != nil {
		t.Fatalf("the kept image no longer pulls: %v", err)
	}
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
