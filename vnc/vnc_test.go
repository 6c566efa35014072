package vnc

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"image"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/handoff-dev/handoff/testvm"
)

// guest is the real test guest under plain QEMU, its VNC server on a unix
// socket and its HMP monitor on another.
type guest struct {
	dir, vncSock, serial string
	mon                  net.Conn
	monR                 *bufio.Reader
	cmd                  *exec.Cmd
}

func startGuest(t *testing.T, dir string) *guest {
	t.Helper()
	g, err := testvm.Build(context.Background(), testvm.BuildOptions{})
	if err != nil {
		t.Fatal(err)
	}
	q := &guest{dir: dir, vncSock: filepath.Join(dir, "vnc.sock"), serial: filepath.Join(dir, "serial.log")}
	mon := filepath.Join(dir, "mon.sock")
	q.cmd = exec.Command("qemu-system-x86_64", "-accel", "tcg", "-m", "256", "-nodefaults", "-no-reboot",
		"-kernel", g.Kernel, "-initrd", g.Initrd, "-append", testvm.Params{}.KernelArgs(),
		"-vga", "std", "-display", "none", "-vnc", "unix:"+q.vncSock,
		"-serial", "file:"+q.serial, "-monitor", "unix:"+mon+",server,nowait")
	if err := q.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.cmd.Process.Kill(); q.cmd.Wait() })
	deadline := time.Now().Add(20 * time.Second)
	for {
		if c, err := net.Dial("unix", mon); err == nil {
			q.mon, q.monR = c, bufio.NewReader(c)
			t.Cleanup(func() { c.Close() })
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("qemu's monitor never came up")
		}
		time.Sleep(50 * time.Millisecond)
	}
	q.prompt(t)
	return q
}

func (q *guest) prompt(t *testing.T) {
	t.Helper()
	q.mon.SetReadDeadline(time.Now().Add(30 * time.Second))
	var b strings.Builder
	for !strings.HasSuffix(b.String(), "(qemu) ") {
		c, err := q.monR.ReadByte()
		if err != nil {
			t.Fatalf("qemu monitor: %v", err)
		}
		b.WriteByte(c)
	}
}

func (q *guest) hmp(t *testing.T, cmd string) {
	t.Helper()
	fmt.Fprintf(q.mon, "%s\n", cmd)
	q.prompt(t)
}

func (q *guest) status(t *testing.T) testvm.Status {
	f, err := os.Open(q.serial)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, _ := testvm.ParseSerialLog(f)
	return st
}

func (q *guest) waitTick(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for q.status(t).Tick < n {
		if time.Now().After(deadline) {
			t.Fatalf("guest never reached tick %d", n)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// screendump is QEMU's own picture of the screen, from a PPM file.
func (q *guest) screendump(t *testing.T) *image.RGBA {
	t.Helper()
	path := filepath.Join(q.dir, "screen.ppm")
	q.hmp(t, "screendump "+path)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var w, h, maxv int
	r := bytes.NewReader(b)
	if _, err := fmt.Fscanf(r, "P6\n%d %d\n%d\n", &w, &h, &maxv); err != nil {
		t.Fatalf("parse PPM: %v", err)
	}
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	rgb := b[len(b)-w*h*3:]
	for i := range w * h {
		copy(img.Pix[i*4:], rgb[i*3:i*3+3])
		img.Pix[i*4+3] = 0xff
	}
	return img
}

func unixDialer(path string) Dialer {
	return func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", path)
	}
}

// nextFrame waits for a frame that satisfies ok.
func nextFrame(t *testing.T, c *Client, what string, ok func(Frame) bool) Frame {
	t.Helper()
	timeout := time.After(30 * time.Second)
	for {
		select {
		case f, open := <-c.Frames():
			if !open {
				t.Fatalf("frames ended while waiting for %s: %v", what, c.Err())
			}
			if ok(f) {
				return f
			}
		case <-timeout:
			t.Fatalf("no frame with %s within 30s", what)
		}
	}
}

func TestViewMatchesQEMUAndForwardsKeys(t *testing.T) {
	q := startGuest(t, t.TempDir())
	q.waitTick(t, 2)
	for _, enc := range []string{"raw", "zlib"} {
		t.Run(enc, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			start := time.Now()
			c, err := Connect(ctx, Options{Dial: unixDialer(q.vncSock), Encodings: []string{enc}})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			first := nextFrame(t, c, "the whole screen", func(f Frame) bool { return f.Dirty == f.Image.Rect })
			t.Logf("%s: first frame %v after %v", enc, first.Image.Rect.Size(), time.Since(start))
			if first.Image.Rect.Dx() < 640 || first.Image.Rect.Dy() < 350 {
				t.Fatalf("screen is %v, want a VGA text screen", first.Image.Rect)
			}
			// The guest redraws its counter every second: an incremental
			// update must arrive, and then the view must equal QEMU's own
			// picture of the screen, pixel for pixel.
			nextFrame(t, c, "an incremental update", func(f Frame) bool { return f.Seq > first.Seq && !f.Dirty.Empty() })
			var last Frame
			for attempt := 0; ; attempt++ {
				want := q.screendump(t)
				time.Sleep(300 * time.Millisecond) // let the update after the dump arrive
				for drained := false; !drained; {
					select {
					case f := <-c.Frames():
						last = f
					default:
						drained = last.Image != nil
						if !drained {
							time.Sleep(100 * time.Millisecond)
						}
					}
				}
				if bytes.Equal(last.Image.Pix, want.Pix) {
					break
				}
				if attempt == 5 {
					t.Fatalf("the view differs from QEMU's screendump in %d of %d bytes", diff(last.Image.Pix, want.Pix), len(want.Pix))
				}
			}
		})
	}

	// Keys typed through the view reach the guest's console.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c, err := Connect(ctx, Options{Dial: unixDialer(q.vncSock)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	nextFrame(t, c, "a frame", func(Frame) bool { return true })
	for _, r := range "hi" {
		if err := c.Tap(KeysymForRune(r), 0); err != nil {
			t.Fatal(err)
		}
	}
	// As X11 clients do, a shifted letter goes as its capital: QEMU
	// matches keysyms to the shift state it sees.
	c.Tap(KeysymForRune('X'), ModShift)
	c.Tap(KeysymForRune('c'), ModCtrl) // Ctrl-C reaches the guest as a byte, not a signal to us
	c.Tap(KeyReturn, 0)
	c.Tap(KeyUp, 0)
	deadline := time.Now().Add(20 * time.Second)
	for want := "hiX\x03\r\x1b[A"; q.status(t).Keys != want; {
		if time.Now().After(deadline) {
			t.Fatalf("guest read keys %q, want %q", q.status(t).Keys, want)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func diff(a, b []byte) int {
	n := 0
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			n++
		}
	}
	return n + max(len(a), len(b)) - min(len(a), len(b))
}

func TestReconnectsWhenTheServerComesBack(t *testing.T) {
	dir := t.TempDir()
	q := startGuest(t, dir)
	q.waitTick(t, 1)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c, err := Connect(ctx, Options{Dial: unixDialer(q.vncSock), Reconnect: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	before := nextFrame(t, c, "a frame", func(Frame) bool { return true })

	// As when a guest migrates away and another QEMU serves its screen.
	q.cmd.Process.Kill()
	q.cmd.Wait()
	os.Remove(q.vncSock)
	startGuest(t, dir)
	after := nextFrame(t, c, "a whole screen from the new server", func(f Frame) bool {
		return f.Seq > before.Seq && f.Dirty == f.Image.Rect
	})
	if after.Image == nil {
		t.Fatal("no frame after reconnecting")
	}
}

func TestConnectFailsClearly(t *testing.T) {
	_, err := Connect(context.Background(), Options{Dial: unixDialer("/nonexistent/vnc.sock")})
	if err == nil || !strings.Contains(err.Error(), "/nonexistent/vnc.sock") {
		t.Errorf("Connect to a missing socket: %v, want an error naming it", err)
	}
	if _, err := Connect(context.Background(), Options{Dial: unixDialer("x"), Encodings: []string{"tight"}}); err == nil || !strings.Contains(err.Error(), "tight") {
		t.Errorf("unknown encoding: %v", err)
	}
}
