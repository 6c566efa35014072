package synctest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-dev/handoff/internal/syncbuf"
	"github.com/handoff-dev/handoff/testvm/lab/labtest"
)

// bin is the handoff binary under test.
var bin string

func TestMain(m *testing.M) {
	b, cleanup, err := labtest.Binary()
	if err != nil {
		fmt.Fprintln(os.Stderr, "synctest: no handoff binary to test:", err)
		os.Exit(1)
	}
	bin = b
	code := m.Run()
	cleanup()
	os.Exit(code)
}

// The lines a first start of 'handoff serve' prints (see leasectl.Serve).
var (
	loginLine  = regexp.MustCompile(`--token (\S+) --fingerprint (\S+)`)
	listenLine = regexp.MustCompile(`handoff serve: https://(\S+), certificate fingerprint (\S+)`)
)

// server is a running 'handoff serve'.
type server struct {
	data, addr string // its --data, and host:port where it listens
	token, fp  string // the first device's token (first start only) and the certificate's fingerprint
	cmd        *exec.Cmd
	out        *syncbuf.Buffer // everything it printed, for failure messages
	exited     chan struct{}   // closed once the process is gone
	stopped    bool            // killed or stopped on purpose
}

// startServe runs 'handoff serve --data data --listen listen [more...]'
// until the test ends (then it must stop within 10 s of SIGTERM and exit
// 0), and returns once it says where it listens.
func startServe(t *testing.T, data, listen string, more ...string) *server {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	s := &server{data: data, out: &syncbuf.Buffer{}, exited: make(chan struct{})}
	s.cmd = exec.Command(bin, append([]string{"serve", "--data", data, "--listen", listen}, more...)...)
	s.cmd.Stdout, s.cmd.Stderr = w, s.out
	if err := s.cmd.Start(); err != nil {
		r.Close()
		w.Close()
		t.Fatalf("start handoff serve: %v", err)
	}
	w.Close()
	go func() {
		s.cmd.Wait()
		close(s.exited)
	}()
	t.Cleanup(func() { s.stop(t) })
	listening := make(chan [2]string, 1)
	go func() {
		defer r.Close()
		lines := bufio.NewScanner(r)
		for lines.Scan() {
			fmt.Fprintln(s.out, lines.Text())
			if m := loginLine.FindStringSubmatch(lines.Text()); m != nil {
				s.token = m[1]
			}
			if m := listenLine.FindStringSubmatch(lines.Text()); m != nil {
				listening <- [2]string{m[1], m[2]}
			}
		}
	}()
	select {
	case m := <-listening:
		s.addr, s.fp = m[0], m[1]
	case <-s.exited:
		t.Fatalf("handoff serve --data %s --listen %s exited before it listened (%v); it printed:\n%s", data, listen, s.cmd.ProcessState, s.out)
	case <-time.After(30 * time.Second):
		t.Fatalf("handoff serve --data %s --listen %s did not say where it listens within 30 s; it printed:\n%s", data, listen, s.out)
	}
	return s
}

// url is what a device logs in to.
func (s *server) url() string { return "https://" + s.addr }

// kill9 kills the server as a power cut would, and waits until it is gone.
func (s *server) kill9(t *testing.T) {
	t.Helper()
	s.stopped = true
	if err := s.cmd.Process.Signal(syscall.SIGKILL); err != nil && !errors.Is(err, os.ErrProcessDone) {
		t.Fatalf("kill -9 handoff serve: %v", err)
	}
	select {
	case <-s.exited:
	case <-time.After(10 * time.Second):
		t.Fatal("handoff serve still runs 10 s after kill -9")
	}
}

// stop asks the server to stop as systemd would, and checks it does so
// cleanly; a server that hangs is killed so that nothing outlives the test.
func (s *server) stop(t *testing.T) {
	select {
	case <-s.exited:
		if !s.stopped {
			t.Errorf("handoff serve exited by itself during the test (%v); it printed:\n%s", s.cmd.ProcessState, s.out)
		}
		return
	default:
	}
	s.stopped = true
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
		if !s.cmd.ProcessState.Success() {
			t.Errorf("handoff serve exited with %v on SIGTERM, want 0; it printed:\n%s", s.cmd.ProcessState, s.out)
		}
	case <-time.After(10 * time.Second):
		s.cmd.Process.Kill()
		<-s.exited
		t.Errorf("handoff serve did not stop within 10 s of SIGTERM (killed it); it printed:\n%s", s.out)
	}
}

// device is one machine of the user's: its own config (the saved login)
// and its own chunk cache.
type device struct {
	name  string
	dir   string // HOME, with XDG_CONFIG_HOME and XDG_CACHE_HOME inside
	cache string // --cache
}

func newDevice(t *testing.T, name string) *device {
	dir := t.TempDir()
	return &device{name: name, dir: dir, cache: filepath.Join(dir, "chunks")}
}

// result is how one run of handoff ended.
type result struct {
	args           []string
	stdout, stderr string
	code           int
}

func (r result) String() string {
	return fmt.Sprintf("handoff %s: exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(r.args, " "), r.code, r.stdout, r.stderr)
}

// command is handoff with args as this device runs it.
func (d *device) command(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(os.Environ(), "HOME="+d.dir,
		"XDG_CONFIG_HOME="+filepath.Join(d.dir, "config"), "XDG_CACHE_HOME="+filepath.Join(d.dir, "cache"))
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// run runs handoff to its end (at most a minute).
func (d *device) run(t *testing.T, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := d.command(ctx, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := result{args: args, stdout: stdout.String(), stderr: stderr.String()}
	var exit *exec.ExitError
	switch {
	case ctx.Err() != nil:
		t.Fatalf("still running after a minute, killed:\n%s", r)
	case errors.As(err, &exit):
		r.code = exit.ExitCode()
	case err != nil:
		t.Fatalf("run handoff %s: %v", strings.Join(args, " "), err)
	}
	return r
}

// sync runs 'handoff sync' with this device's cache.
func (d *device) sync(t *testing.T, args ...string) result {
	t.Helper()
	return d.run(t, append(append([]string{"sync"}, args...), "--cache", d.cache)...)
}

// ok fails the test unless r exited 0.
func ok(t *testing.T, r result) result {
	t.Helper()
	if r.code != 0 {
		t.Fatalf("want success, got:\n%s", r)
	}
	return r
}

// login saves a login to url with this token and fingerprint, as the line
// 'handoff serve' prints tells the user to.
func (d *device) login(t *testing.T, url, token, fp string) {
	t.Helper()
	ok(t, d.run(t, "lease", "login", "--server", url, "--token", token, "--fingerprint", fp))
}

// stats are the numbers a push or pull reports with --json.
type stats map[string]any

func (s stats) String() string {
	b, _ := json.Marshal(map[string]any(s))
	return string(b)
}

// num is the first of the named fields present; the names are
// alternatives, as the engine renames fields.
func (s stats) num(t *testing.T, names ...string) int64 {
	t.Helper()
	for _, n := range names {
		if v, ok := s[n]; ok {
			f, ok := v.(float64)
			if !ok {
				t.Fatalf("stats field %s is %T (%v), want a number; stats: %v", n, v, v, s)
			}
			return int64(f)
		}
	}
	t.Fatalf("stats have none of %v; they are: %v", names, s)
	return 0
}

// The stats fields the tests read, by meaning, in the engine's JSON
// spelling and in Go's (before the fields had tags).
func (s stats) chunks(t *testing.T) int64    { return s.num(t, "chunks", "Chunks") }
func (s stats) zero(t *testing.T) int64      { return s.num(t, "zero_chunks", "ZeroChunks") }
func (s stats) fetched(t *testing.T) int64   { return s.num(t, "sent", "Sent") }
func (s stats) fromCache(t *testing.T) int64 { return s.num(t, "from_cache", "FromCache") }

func (s stats) inPlace(t *testing.T) int64 { return s.num(t, "in_place", "InPlace") }

func (s stats) patched(t *testing.T) int64 { return s.num(t, "patched", "Patched") }
func (s stats) size(t *testing.T) int64    { return s.num(t, "image_bytes", "ImageBytes") }

// wireBytes is what crossed the network: requests and answers once the
// engine counts them (wire_bytes), whole packed chunks (SentBytes) before.
func (s stats) wireBytes(t *testing.T) int64 {
	return s.num(t, "wire_bytes", "WireBytes", "SentBytes")
}

var rootLine = regexp.MustCompile(`^[0-9a-f]{64}$`)

// push runs 'sync push FILE' and returns the root it prints first.
func (d *device) push(t *testing.T, file string) string {
	t.Helper()
	r := ok(t, d.sync(t, "push", file))
	root, _, _ := strings.Cut(r.stdout, "\n")
	if !rootLine.MatchString(root) {
		t.Fatalf("sync push printed %q as its first line, want the root (64 hex digits):\n%s", root, r)
	}
	return root
}

// pushJSON runs 'sync push FILE --json': {"root": ..., "stats": {...}}.
func (d *device) pushJSON(t *testing.T, file string) (string, stats) {
	t.Helper()
	r := ok(t, d.sync(t, "push", file, "--json"))
	var out struct {
		Root  string `json:"root"`
		Stats stats  `json:"stats"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &out); err != nil || !rootLine.MatchString(out.Root) || out.Stats == nil {
		t.Fatalf("sync push --json printed no root and stats (%v):\n%s", err, r)
	}
	return out.Root, out.Stats
}

// pullJSON runs 'sync pull ROOT FILE --json' and returns its stats.
func (d *device) pullJSON(t *testing.T, root, file string) stats {
	t.Helper()
	r := ok(t, d.sync(t, "pull", root, file, "--json"))
	return parseStats(t, r)
}

func parseStats(t *testing.T, r result) stats {
	t.Helper()
	var s stats
	if err := json.Unmarshal([]byte(r.stdout), &s); err != nil || s == nil {
		t.Fatalf("--json printed no JSON object (%v):\n%s", err, r)
	}
	if inner, ok := s["stats"].(map[string]any); ok {
		return inner
	}
	return s
}

// sameFile fails the test unless got has want's bytes.
func sameFile(t *testing.T, got, want string) {
	t.Helper()
	g, err := os.Open(got)
	if err != nil {
		t.Fatalf("the pulled image: %v", err)
	}
	defer g.Close()
	w, err := os.Open(want)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	gb, wb := make([]byte, 1<<20), make([]byte, 1<<20)
	for off := int64(0); ; off += 1 << 20 {
		gn, gerr := io.ReadFull(g, gb)
		wn, werr := io.ReadFull(w, wb)
		if !bytes.Equal(gb[:gn], wb[:wn]) {
			i := 0
			for i < min(gn, wn) && gb[i] == wb[i] {
				i++
			}
			t.Fatalf("%s differs from %s at byte %d", got, want, off+int64(i))
		}
		if gerr != nil || werr != nil {
			if (gerr == nil) != (werr == nil) {
				t.Fatalf("%s and %s differ in size (%v, %v)", got, want, gerr, werr)
			}
			return
		}
	}
}

func fileSize(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

// interruptedPull starts a pull of root to out on d and, once threshold
// objects are in d's cache, calls interrupt; it returns how the pull ended.
func interruptedPull(t *testing.T, d *device, root, out string, threshold int, interrupt func(*exec.Cmd)) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := d.command(ctx, "sync", "pull", root, out, "--cache", d.cache)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case err := <-exited:
			t.Fatalf("the pull ended (%v) before %d objects were in the cache (%d were): the link is too fast to interrupt it; stdout:\n%s\nstderr:\n%s",
				err, threshold, cachedObjects(d.cache), stdout.String(), stderr.String())
		case <-tick.C:
			if cachedObjects(d.cache) >= threshold {
				interrupt(cmd)
				<-exited
				return result{args: cmd.Args[1:], stdout: stdout.String(), stderr: stderr.String(), code: cmd.ProcessState.ExitCode()}
			}
		}
	}
}

// cachedObjects counts the objects a cache folder holds: entries of its
// packs' indexes (44 bytes each: hash, offset, length), as the workstation's
// cache keeps them, and object files, as a --store folder does.
func cachedObjects(dir string) int {
	n := 0
	filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err != nil || !e.Type().IsRegular() || strings.HasPrefix(e.Name(), ".") {
			return nil
		}
		switch {
		case strings.HasSuffix(e.Name(), ".idx"):
			if fi, err := e.Info(); err == nil {
				n += int(fi.Size() / 44)
			}
		case filepath.Base(filepath.Dir(filepath.Dir(p))) == "objects":
			n++
		}
		return nil
	})
	return n
}

// entries lists a directory's names.
func entries(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}

func need(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is not installed: run 'make deps' (it installs e2fsprogs and qemu-utils)", tool)
		}
	}
}

func runTool(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

// libDir holds the shared libraries whose copies fill the images: real
// code and data, the kind of bytes a desktop disk holds.
const libDir = "/usr/lib/x86_64-linux-gnu"

// fillTree puts real files into dir: the time zone database, then copies of
// shared libraries (largest first, none over 8 MiB) until about want bytes.
func fillTree(t *testing.T, dir string, want int64) {
	t.Helper()
	runTool(t, "cp", "-a", "/usr/share/zoneinfo", dir)
	es, err := os.ReadDir(libDir)
	if err != nil {
		t.Fatal(err)
	}
	type lib struct {
		name string
		size int64
	}
	var libs []lib
	for _, e := range es {
		fi, err := e.Info()
		if err == nil && fi.Mode().IsRegular() && strings.Contains(e.Name(), ".so") && fi.Size() >= 64<<10 && fi.Size() <= 8<<20 {
			libs = append(libs, lib{e.Name(), fi.Size()})
		}
	}
	sort.Slice(libs, func(i, j int) bool {
		return libs[i].size > libs[j].size || libs[i].size == libs[j].size && libs[i].name < libs[j].name
	})
	dst := filepath.Join(dir, "lib")
	if err := os.Mkdir(dst, 0o755); err != nil {
		t.Fatal(err)
	}
	var total int64
	for _, l := range libs {
		if total >= want {
			break
		}
		if total+l.size > want+want/8 {
			continue
		}
		b, err := os.ReadFile(filepath.Join(libDir, l.name))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, l.name), b, 0o644); err != nil {
			t.Fatalf("copy %s into the image tree: %v", l.name, err)
		}
		total += l.size
	}
	if total < want/2 {
		t.Fatalf("found only %d bytes of shared libraries in %s, want about %d", total, libDir, want)
	}
}

// makeExt4 makes an ext4 image of size (mkfs.ext4's notation: 48M) from
// about fill bytes of real files, as mkfs.ext4 -d lays them out.
func makeExt4(t *testing.T, dir, name, size string, fill int64) string {
	t.Helper()
	need(t, "mkfs.ext4")
	tree := filepath.Join(dir, name+".tree")
	if err := os.Mkdir(tree, 0o755); err != nil {
		t.Fatal(err)
	}
	fillTree(t, tree, fill)
	img := filepath.Join(dir, name)
	runTool(t, "mkfs.ext4", "-q", "-F", "-d", tree, img, size)
	if err := os.RemoveAll(tree); err != nil {
		t.Fatal(err)
	}
	return img
}

// freeAddr is a loopback address where nothing listens: a server that is
// down.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// slowProxy forwards loopback connections to target, the server's answers
// at rate bytes per second in all: a slow link, so that a pull is still
// running when the server is killed.
type slowProxy struct {
	ln     net.Listener
	target string
	rate   float64

	mu    sync.Mutex
	next  time.Time
	conns map[net.Conn]bool
	wg    sync.WaitGroup
}

func startSlowProxy(t *testing.T, target string, rate float64) *slowProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &slowProxy{ln: ln, target: target, rate: rate, conns: map[net.Conn]bool{}}
	p.wg.Go(p.accept)
	t.Cleanup(func() {
		ln.Close()
		p.mu.Lock()
		for c := range p.conns {
			c.Close()
		}
		p.mu.Unlock()
		p.wg.Wait()
	})
	return p
}

func (p *slowProxy) addr() string { return p.ln.Addr().String() }

// cut drops every connection at once, as a power cut of the server does:
// nothing the server had sent but the client had not read arrives.
func (p *slowProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		if tc, ok := c.(*net.TCPConn); ok {
			tc.SetLinger(0) // a reset, not a polite close
		}
		c.Close()
	}
}

func (p *slowProxy) track(c net.Conn, on bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if on {
		p.conns[c] = true
	} else {
		delete(p.conns, c)
	}
}

func (p *slowProxy) accept() {
	for {
		client, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.wg.Go(func() { p.serve(client) })
	}
}

func (p *slowProxy) serve(client net.Conn) {
	p.track(client, true)
	defer p.track(client, false)
	defer client.Close()
	upstream, err := net.Dial("tcp", p.target)
	if err != nil {
		return // the server is down: the client sees its connection closed
	}
	p.track(upstream, true)
	defer p.track(upstream, false)
	defer upstream.Close()
	var wg sync.WaitGroup
	wg.Go(func() {
		io.Copy(upstream, client)
		upstream.Close()
	})
	buf := make([]byte, 16<<10)
	for {
		n, err := upstream.Read(buf)
		if n > 0 {
			p.wait(n)
			if _, err := client.Write(buf[:n]); err != nil {
				break
			}
		}
		if err != nil {
			break
		}
	}
	client.Close()
	wg.Wait()
}

// wait holds n bytes back until the link's rate lets them through.
func (p *slowProxy) wait(n int) {
	p.mu.Lock()
	now := time.Now()
	if p.next.Before(now) {
		p.next = now
	}
	d := p.next.Sub(now)
	p.next = p.next.Add(time.Duration(float64(n) / p.rate * float64(time.Second)))
	p.mu.Unlock()
	time.Sleep(d)
}
