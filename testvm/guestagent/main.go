// Command handoff-guest is the agent of the test guest (see package
// testvm): it ticks on the serial console, draws a counter on the screen,
// dirties memory at the rate the kernel command line asks, proves every
// tick that no memory was lost, and echoes typed keys to the serial log.
package main

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/handoff-dev/handoff/testvm"
	"golang.org/x/sys/unix"
)

// sealedMB is the size of the once-written region: over a thousand pages,
// so a migration that drops any part of its first pass is caught.
const sealedMB = 4

// corruptWord, typed on the console, damages the sealed region on purpose.
const corruptWord = "#corrupt"

// step is how often the agent dirties memory: short enough that the rate
// is smooth within each second a migration samples.
const step = 50 * time.Millisecond

// maxBusyCredit bounds how much of the agent's own work is written up after it.
const maxBusyCredit = 500 * time.Millisecond

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "handoff-guest:", err)
		os.Exit(1)
	}
}

func run() error {
	recordsPath := flag.String("records", "", "check a disk too: keep records in this file (the Debian guest)")
	flag.Parse()
	var serial io.Writer
	var disk *records
	if *recordsPath != "" {
		// systemd's getty and the kernel share the serial port on Debian;
		// the kernel's log reaches it whole, line by line.
		kmsg, err := os.OpenFile("/dev/kmsg", os.O_WRONLY, 0)
		if err != nil {
			return fmt.Errorf("open the kernel log: %w", err)
		}
		defer kmsg.Close()
		serial = kmsgWriter{kmsg}
		if disk, err = openRecords(*recordsPath); err != nil {
			fmt.Fprintf(serial, "handoff-guest error: %v\n", err)
			return err
		}
	} else {
		tty, err := os.OpenFile("/dev/ttyS0", os.O_WRONLY|syscall.O_NOCTTY, 0)
		if err != nil {
			tty = os.Stdout
		}
		serial = tty
	}
	var diskProblem string
	if disk != nil {
		start, err := disk.recover()
		if err != nil {
			return err
		}
		diskProblem = start.problem
		fmt.Fprintln(serial, testvm.FormatDiskStart(testvm.DiskStart{Records: start.records, Fsynced: int(start.fsynced),
			Last: int(start.last), Repaired: start.repaired, Problem: start.problem}))
	}
	cmdline, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return fmt.Errorf("read kernel command line: %w", err)
	}
	params, err := testvm.ParseKernelArgs(string(cmdline))
	if err != nil {
		fmt.Fprintf(serial, "handoff-guest error: %v; running with no load\n", err)
		params = testvm.Params{WSSMB: testvm.DefaultWSSMB}
	}
	// Memory outside the Go heap: the collector never moves or frees it,
	// and its pages are exactly the ones we account for.
	wssBytes := params.WSSMB << 20
	if params.DirtyMBps == 0 {
		wssBytes = 0
	}
	mem, err := syscall.Mmap(-1, 0, wssBytes+sealedMB<<20, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
	if err != nil {
		return fmt.Errorf("map %d MB of working set: %w", params.WSSMB+sealedMB, err)
	}
	seed := uint64(time.Now().UnixNano())
	sealed := newSealedRegion(mem[wssBytes:], seed)
	ws := newWorkingSet(mem[:wssBytes], corpus(), seed)
	pace := &pacer{bytesPerSec: params.DirtyMBps * 1e6}

	con, keys := openConsole(serial)
	if con != nil {
		defer con.tty.Close()
	}
	fmt.Fprintf(serial, "handoff-guest started: dirtying %g MB/s over %d MB\n", params.DirtyMBps, params.WSSMB)

	ticker := time.NewTicker(step)
	defer ticker.Stop()
	start, last := time.Now(), time.Now()
	var busy time.Duration // the last tick's own work: checks, disk, screen
	tick := 0
	var typed []byte
	var problem string
	for {
		select {
		case now := <-ticker.C:
			ws.dirty(pace.pages(now.Sub(last).Seconds(), step.Seconds(), busy.Seconds()))
			last, busy = now, 0
			if int(now.Sub(start)/time.Second) <= tick {
				continue
			}
			tick++
			if problem == "" {
				if err := sealed.verify(); err != nil {
					problem = err.Error()
				} else if err := ws.verify(); err != nil {
					problem = err.Error()
				}
			}
			t := testvm.Tick{N: tick, Uptime: uptime(), DirtiedMB: int(ws.wrote / 1e6), Problem: problem}
			if disk != nil {
				p, err := disk.tick()
				if err != nil {
					p = err.Error()
				}
				if diskProblem == "" {
					diskProblem = p
				}
				t.Disk, t.DiskSeq, t.DiskProblem = true, int(disk.durable), diskProblem
			}
			fmt.Fprintln(serial, testvm.FormatTick(t))
			if con != nil {
				con.draw(screen{Tick: t.N, Uptime: t.Uptime, DirtiedMB: t.DirtiedMB, Disk: t.Disk, DiskSeq: t.DiskSeq,
					Problem: t.Problems()})
			}
			// Capped: the checks read every page, so in a post-copy move they
			// wait on the link, and that wait is a pause like any other.
			busy = min(time.Since(now), maxBusyCredit)
		case k, ok := <-keys:
			if !ok {
				keys = nil
				continue
			}
			fmt.Fprintln(serial, testvm.FormatKey(k))
			typed = append(typed, k...)
			if len(typed) > 256 {
				typed = typed[len(typed)-256:]
			}
			if bytes.HasSuffix(typed, []byte(corruptWord)) {
				sealed.mem[len(sealed.mem)/2] ^= 0xff
			}
		}
	}
}

// console is the VGA console. Each tick redraws it; a typed key is echoed
// by the reader at once, under the same lock, whatever the main loop is
// busy with: its checks read every page each second, hundreds of
// milliseconds on an emulated CPU, and a desktop's echo does not wait for
// such work. The view's key-to-screen latency is then the path's.
type console struct {
	tty   *os.File
	mu    sync.Mutex
	shown screen
	typed []byte
}

// draw shows s with the keys typed so far.
func (c *console) draw(s screen) {
	c.mu.Lock()
	defer c.mu.Unlock()
	s.Keys = c.shown.Keys
	c.shown = s
	c.tty.WriteString(s.render())
}

// echo adds k to the typed keys and redraws their line.
func (c *console) echo(k []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.typed = append(c.typed, k...)
	if len(c.typed) > 60 {
		c.typed = c.typed[len(c.typed)-60:]
	}
	c.shown.Keys = printable(c.typed)
	c.tty.WriteString(c.shown.renderKeys())
}

// openConsole puts the VGA console in raw mode and reads keys from it,
// echoing each; the reader goroutine lives as long as the agent.
func openConsole(serial io.Writer) (*console, <-chan []byte) {
	tty, err := os.OpenFile("/dev/tty1", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		fmt.Fprintf(serial, "handoff-guest error: open console: %v\n", err)
		return nil, nil
	}
	if err := makeRaw(tty); err != nil {
		fmt.Fprintf(serial, "handoff-guest error: raw console: %v\n", err)
	}
	con := &console{tty: tty}
	keys := make(chan []byte, 64)
	go func() {
		defer close(keys)
		buf := make([]byte, 64)
		for {
			n, err := tty.Read(buf)
			if err != nil {
				return
			}
			con.echo(buf[:n])
			keys <- bytes.Clone(buf[:n])
		}
	}()
	return con, keys
}

func makeRaw(f *os.File) error {
	t, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	if err != nil {
		return err
	}
	t.Iflag &^= unix.ICRNL | unix.IXON | unix.ISTRIP | unix.INLCR | unix.IGNCR
	t.Lflag &^= unix.ICANON | unix.ECHO | unix.ISIG | unix.IEXTEN
	t.Cc[unix.VMIN], t.Cc[unix.VTIME] = 1, 0
	return unix.IoctlSetTermios(int(f.Fd()), unix.TCSETS, t)
}

// kmsgWriter writes each line to the kernel log at a level that passes
// "quiet", so it reaches the serial console.
type kmsgWriter struct{ f *os.File }

func (k kmsgWriter) Write(p []byte) (int, error) {
	if _, err := k.f.Write(append([]byte("<2>"), p...)); err != nil {
		return 0, err
	}
	return len(p), nil
}

// openRecords opens the records file for direct I/O: reads must come from
// the disk, not from the page cache that moves with memory. The image
// ships the file with every block written (see testvm.writeRecordsFile);
// if it is missing or short, it is written full of zeroes here, never
// fallocated: ext4 answers reads of unwritten blocks from memory.
func openRecords(path string) (*records, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|syscall.O_DIRECT, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open records %s for direct I/O: %w", path, err)
	}
	// Page-aligned buffers outside the Go heap, as O_DIRECT wants.
	buf, err := syscall.Mmap(-1, 0, (1+sweepBlocks)*blockSize, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
	if err != nil {
		f.Close()
		return nil, err
	}
	one, many := buf[:blockSize], buf[blockSize:]
	if fi, err := f.Stat(); err != nil || fi.Size() < testvm.RecordsBytes {
		for off := int64(0); off < testvm.RecordsBytes; off += int64(len(many)) {
			if _, err := f.WriteAt(many, off); err != nil {
				f.Close()
				return nil, fmt.Errorf("write the records file full: %w", err)
			}
		}
		if err := f.Sync(); err != nil {
			f.Close()
			return nil, err
		}
	}
	return newRecords(f, testvm.RecordsBytes/blockSize, one, many), nil
}

// corpus is the code and text the working set's pages copy: the agent's
// and busybox's own bytes, as a desktop's memory is mostly such things.
func corpus() []byte {
	var c []byte
	for _, p := range []string{"/proc/self/exe", "/bin/busybox", "/usr/bin/bash", "/usr/lib/x86_64-linux-gnu/libc.so.6"} {
		if b, err := os.ReadFile(p); err == nil {
			c = append(c, b...)
		}
	}
	return c
}

func uptime() float64 {
	b, err := os.ReadFile("/proc/uptime")
	if err != nil {
		return 0
	}
	f, _ := strconv.ParseFloat(strings.Fields(string(b))[0], 64)
	return f
}
