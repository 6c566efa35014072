package vnc

import (
	"bytes"
	"context"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/handoff-dev/handoff/testvm"
	"github.com/handoff-dev/handoff/testvm/qemutest"
)

func bootWithVNC(t *testing.T, dir string) *qemutest.Guest {
	q := qemutest.Boot(t, dir, testvm.Params{}, true)
	q.WaitFor("the first tick", 90*time.Second, func(s testvm.Status) bool { return s.Tick >= 1 })
	return q
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
	q := bootWithVNC(t, t.TempDir())
	for _, enc := range []string{"raw", "zlib"} {
		t.Run(enc, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			start := time.Now()
			c, err := Connect(ctx, Options{Dial: unixDialer(q.VNCSocket), Encodings: []string{enc}})
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
				want := q.ScreenImage("screen.ppm")
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
	c, err := Connect(ctx, Options{Dial: unixDialer(q.VNCSocket)})
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
	q.WaitFor("the typed keys", 20*time.Second, func(s testvm.Status) bool { return s.Keys == "hiX\x03\r\x1b[A" })
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
	q := bootWithVNC(t, dir)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c, err := Connect(ctx, Options{Dial: unixDialer(q.VNCSocket), Reconnect: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	before := nextFrame(t, c, "a frame", func(Frame) bool { return true })

	// As when a guest migrates away and another QEMU serves its screen.
	q.Kill()
	os.Remove(q.VNCSocket)
	qemutest.Boot(t, dir, testvm.Params{}, true)
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

// BenchmarkConnectToFirstFrame is the time from Connect, against a running
// guest, to the first whole frame in hand: what a user waits for when the
// view opens.
func BenchmarkConnectToFirstFrame(b *testing.B) {
	q := qemutest.Boot(b, b.TempDir(), testvm.Params{}, true)
	q.WaitFor("the first tick", 90*time.Second, func(s testvm.Status) bool { return s.Tick >= 1 })
	ctx := b.Context()
	b.ResetTimer()
	for range b.N {
		c, err := Connect(ctx, Options{Dial: unixDialer(q.VNCSocket)})
		if err != nil {
			b.Fatal(err)
		}
		select {
		case f := <-c.Frames():
			if f.Image.Rect.Empty() {
				b.Fatal("the first frame is empty")
			}
		case <-time.After(30 * time.Second):
			b.Fatal("no first frame within 30s")
		}
		c.Close()
	}
}
