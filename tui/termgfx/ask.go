package termgfx

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"image"
	"io"
	"os"
	"time"

	"github.com/charmbracelet/x/term"
	"golang.org/x/sys/unix"
)

// Ask sends Queries to the terminal on in and out and reads its answers
// until the DA1 reply (or timeout, or ctx). It puts the terminal in raw
// mode for the exchange and restores it. When sixel has fewer than 256
// colour registers it asks for 256 (xterm allows it), then asks again.
func Ask(ctx context.Context, in *os.File, out io.Writer, timeout time.Duration) (Caps, error) {
	fd := in.Fd()
	if !term.IsTerminal(fd) {
		return Caps{}, errors.New("the input is not a terminal")
	}
	old, err := term.MakeRaw(fd)
	if err != nil {
		return Caps{}, fmt.Errorf("raw mode: %w", err)
	}
	defer term.Restore(fd, old)
	c, err := round(ctx, int(fd), out, Queries, timeout)
	if err != nil {
		return c, err
	}
	if c.Kitty {
		c.KittyFiles = kittyReadsFiles(ctx, int(fd), out, timeout)
	}
	if c.Sixel && c.SixelColors > 0 && c.SixelColors < 256 {
		more, err := round(ctx, int(fd), out, "\x1b[?1;3;256S\x1b[?1;1;0S\x1b[c", timeout)
		if err == nil && more.SixelColors > c.SixelColors {
			c.SixelColors = more.SixelColors
		}
	}
	if ws, err := unix.IoctlGetWinsize(int(fd), unix.TIOCGWINSZ); err == nil && c.Cell == (image.Point{}) {
		// The kernel's window size carries pixels where the terminal fills them in.
		switch {
		case ws.Xpixel > 0 && ws.Col > 0 && ws.Ypixel > 0 && ws.Row > 0:
			c.Cell = image.Pt(int(ws.Xpixel/ws.Col), int(ws.Ypixel/ws.Row))
		case c.Screen.X > 0 && ws.Col > 0 && ws.Row > 0:
			c.Cell = image.Pt(c.Screen.X/int(ws.Col), c.Screen.Y/int(ws.Row))
		}
	}
	return c, nil
}

// round writes q and reads until a DA1 answer.
func round(ctx context.Context, fd int, out io.Writer, q string, timeout time.Duration) (Caps, error) {
	if _, err := io.WriteString(out, q); err != nil {
		return Caps{}, fmt.Errorf("ask the terminal: %w", err)
	}
	deadline := time.Now().Add(timeout)
	var got []byte
	buf := make([]byte, 1024)
	for {
		if err := ctx.Err(); err != nil {
			return Caps{}, err
		}
		left := time.Until(deadline)
		if left <= 0 {
			c, _ := ParseReplies(got)
			return c, fmt.Errorf("the terminal did not answer within %v (answers so far: %q)", timeout, got)
		}
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, int(min(left, 50*time.Millisecond)/time.Millisecond)+1)
		if err != nil && !errors.Is(err, unix.EINTR) {
			return Caps{}, fmt.Errorf("wait for the terminal: %w", err)
		}
		if n <= 0 {
			continue
		}
		r, err := unix.Read(fd, buf)
		if err != nil {
			return Caps{}, fmt.Errorf("read the terminal's answers: %w", err)
		}
		got = append(got, buf[:r]...)
		if c, done := ParseReplies(got); done {
			return c, nil
		}
	}
}

// TempDir is where pictures for a kitty on this machine go: memory, where
// there is such a place.
func TempDir() string {
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		return "/dev/shm"
	}
	return os.TempDir()
}

// TempPattern names the files; kitty reads only files whose name says
// what they are for.
const TempPattern = "handoff-tty-graphics-protocol-*"

// kittyReadsFiles asks kitty to read a one-pixel picture from a temporary
// file: it can when it runs on this machine.
func kittyReadsFiles(ctx context.Context, fd int, out io.Writer, timeout time.Duration) bool {
	f, err := os.CreateTemp(TempDir(), TempPattern)
	if err != nil {
		return false
	}
	defer os.Remove(f.Name())
	_, err = f.Write([]byte{0, 0, 0})
	if f.Close() != nil || err != nil {
		return false
	}
	q := "\x1b_Gi=32,s=1,v=1,a=q,t=t,f=24;" + base64.StdEncoding.EncodeToString([]byte(f.Name())) + "\x1b\\\x1b[c"
	c, err := round(ctx, fd, out, q, timeout)
	return err == nil && c.KittyFiles
}
