package relay

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/klauspost/compress/zstd"
	"golang.org/x/sys/unix"

	"github.com/handoff-dev/handoff/internal/pipe"
)

// A frame on the link is a kind byte, the payload's length (4 bytes, big
// endian) and the payload: the stream's bytes as they came (frameRaw), or
// the next flush of one of two zstd streams, its raw length (4 bytes) first.
// Every frame is a flush: what the source QEMU wrote reaches the
// destination without waiting for more. The compressed frames of a level
// continue one zstd stream, so a frame's matches reach back a whole window
// of the stream, not just into its own few kilobytes: on the lab guest's
// memory in 50 KiB frames, 44.5 MB at zstd's better level streamed against
// 60.9 MB frame by frame (57.2 and 61.4 MB at its default level).
const (
	frameRaw    byte = 0
	frameFast   byte = 1 // the next flush of the Fast mode's stream
	frameDense  byte = 2 // the next flush of the Dense mode's stream
	frameHeader      = 5
	// streamHeader is a compressed frame's header and the raw length
	// that follows it.
	streamHeader = frameHeader + 4
	// streamWindow is how far back a compressed frame's matches may reach:
	// what the receiver keeps of each stream.
	streamWindow = 8 << 20
	// readSize is the most one frame carries. A read returns what QEMU has
	// written so far, so a page answered in post-copy goes out in a frame
	// of its own at once, while a bulk copy fills whole frames.
	readSize = 256 << 10
	maxFrame = 2 * readSize
	// window is how often the sender measures and chooses its mode.
	window = 500 * time.Millisecond
	// linkMemory is how long a measured link rate stays believed while the
	// link is no longer full.
	linkMemory = 10 * time.Second
	// blockedWrite: a write that took longer waited for the link.
	blockedWrite = time.Millisecond
	// queuedFromQEMU is the receive buffer for the source QEMU, and
	// segmentFromQEMU the segment size it is told to use: see
	// listenForQEMU.
	queuedFromQEMU  = 64 << 10
	segmentFromQEMU = 1448
	// unsentOnLink is the most the link's socket holds unsent.
	unsentOnLink = 128 << 10
	// frameTime and unsentTime are how much of the link's time a frame of
	// raw stream and the link's unsent bytes may take once its rate is
	// known (queueFor); minFrame and minUnsent are their floors.
	frameTime  = 20 * time.Millisecond
	unsentTime = 10 * time.Millisecond
	minFrame   = 16 << 10
	minUnsent  = 16 << 10
	// sampleEvery: while passing through, one frame in this many is
	// compressed anyway, to keep Ratio and CompressRate current.
	sampleEvery = 8
)

// Stats counts what one end moved, the stream's bytes and the link's;
// safe to read while it runs.
type Stats struct {
	Raw  atomic.Uint64 // stream bytes from the source QEMU
	Wire atomic.Uint64 // bytes the link carried for them
	mode atomic.Int32
	why  atomic.Pointer[string]
}

// Mode is the sender's mode now, and why it was chosen.
func (s *Stats) Mode() (Mode, string) {
	why := ""
	if p := s.why.Load(); p != nil {
		why = *p
	}
	return Mode(s.mode.Load()), why
}

// Ratio is wire bytes over stream bytes so far; 1 before any.
func (s *Stats) Ratio() float64 {
	raw := s.Raw.Load()
	if raw == 0 {
		return 1
	}
	return float64(s.Wire.Load()) / float64(raw)
}

// Send carries one migration stream: what the source QEMU writes on qemu
// goes to link in frames, compressed as Choose decides, and what comes back
// on link (the destination's return path, post-copy's page requests) goes to
// qemu as it is. It returns when both directions have ended, or ctx has.
func Send(ctx context.Context, qemu, link net.Conn, stats *Stats) error {
	keepUnsentShort(link, unsentOnLink)
	return pipe.Both(ctx, qemu, link, func() error { return sendFrames(qemu, link, stats) }, func() error { return pipe.Copy(qemu, link) })
}

// Receive is Send's other end: frames from link become the stream into
// qemu (the destination QEMU), and qemu's return path goes back on link.
func Receive(ctx context.Context, link, qemu net.Conn, stats *Stats) error {
	return pipe.Both(ctx, qemu, link, func() error { return receiveFrames(link, qemu, stats) }, func() error { return pipe.Copy(link, qemu) })
}

// listenForQEMU makes ln's connections from the source QEMU hold little:
// what waits between QEMU and the relay is queued ahead of the last pages,
// which QEMU counts as sent, so the switch's pause (and the post-copy's
// device state) waits for it to cross the link. Loopback's 64 KiB segments
// let QEMU's send buffer grow to over a megabyte (measured: 250 ms of a
// post-copy switch at 20 Mbit/s); Ethernet-sized segments and a small
// window keep it to tens of kilobytes, which loopback still moves at
// gigabytes a second.
func listenForQEMU(ln net.Listener) {
	control(ln, func(fd int) {
		unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_MAXSEG, segmentFromQEMU)
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, queuedFromQEMU)
	})
}

// control runs f on c's socket, if it has one.
func control(c any, f func(fd int)) {
	for {
		inner, ok := c.(interface{ NetConn() net.Conn })
		if !ok {
			break
		}
		c = inner.NetConn()
	}
	sc, ok := c.(syscall.Conn)
	if !ok {
		return
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return
	}
	raw.Control(func(fd uintptr) { f(int(fd)) })
}

// keepUnsentShort bounds what waits unsent in the link's socket
// (TCP_NOTSENT_LOWAT): the kernel would otherwise grow it to megabytes, all
// queued ahead of the last pages, which the switch's pause then waits for
// (measured: 1.5-1.7 s of downtime for a 300 ms target at 20 Mbit/s). What
// is in flight stays the congestion window's, so a long fat link still
// fills.
func keepUnsentShort(link net.Conn, unsent int) {
	control(link, func(fd int) {
		unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NOTSENT_LOWAT, unsent)
	})
}

// queueFor sizes what waits ahead of the stream's next bytes for a link
// of linkRate bytes/s (0: not known yet): the raw bytes one frame takes
// from QEMU, and what the link's socket may hold unsent. Every byte queued
// is one a post-copy page request waits behind, and the switch's device
// state too: at 20 Mbit/s the fixed 256 KiB frames and 128 KiB unsent made
// a page request wait 174 ms on average (9.6 s of vCPU time blocked for 55
// requests; 7 ms without the relay) and the switch 300-550 ms. A slow link
// gets frames of about frameTime of its rate, and as little unsent; a fast
// one keeps the full sizes, which fill it.
func queueFor(linkRate float64) (frame, unsent int) {
	if linkRate <= 0 {
		return readSize, unsentOnLink
	}
	size := func(d time.Duration, least, most int) int {
		return min(max(int(linkRate*d.Seconds()), least), most)
	}
	return size(frameTime, minFrame, readSize), size(unsentTime, minUnsent, unsentOnLink)
}

// sendFrames reads qemu into frames and writes them to link: one goroutine
// compresses while another writes, so the two cores both work.
func sendFrames(qemu, link net.Conn, stats *Stats) error {
	// One frame waits while one is written: enough to keep both cores
	// busy, and no more queued ahead of the last pages.
	frames := make(chan []byte, 1)
	var written sync.WaitGroup
	var writeErr error
	var blocked blockedWrites
	written.Go(func() {
		for f := range frames {
			start := time.Now()
			_, err := link.Write(f)
			if d := time.Since(start); d > blockedWrite {
				blocked.add(len(f), d)
			}
			if err != nil {
				writeErr = err
				qemu.Close() // stop reading: nothing can go on
				for range frames {
				}
				return
			}
			stats.Wire.Add(uint64(len(f)))
		}
		pipe.CloseWrite(link)
	})
	// An empty frame first tells the far end that the source connected,
	// before it sends a byte: there its destination is dialled, whose
	// side of the protocol may speak first (NBD's server greets).
	frames <- putHeader(make([]byte, frameHeader), frameRaw)
	s, err := newSender(stats, &blocked)
	if err == nil {
		s.resize = func(unsent int) { keepUnsentShort(link, unsent) }
		err = s.run(qemu, frames)
	}
	close(frames)
	written.Wait()
	if writeErr != nil {
		return fmt.Errorf("send the migration stream: %w", writeErr)
	}
	if pipe.IsClosed(err) {
		return nil
	}
	return err
}

// blockedWrites sums the writes that waited for the link: their bytes over
// their time is the link's rate.
type blockedWrites struct {
	mu    sync.Mutex
	bytes int
	took  time.Duration
}

func (b *blockedWrites) add(n int, d time.Duration) {
	b.mu.Lock()
	b.bytes += n
	b.took += d
	b.mu.Unlock()
}

func (b *blockedWrites) take() (int, time.Duration) {
	b.mu.Lock()
	defer b.mu.Unlock()
	n, d := b.bytes, b.took
	b.bytes, b.took = 0, 0
	return n, d
}

type sender struct {
	stats   *Stats
	blocked *blockedWrites
	fast    *compressor
	dense   *compressor // made when first chosen: it holds megabytes of tables
	mode    Mode

	windowStart time.Time
	busy        time.Duration // compressing, this window
	sampledRaw  int           // raw bytes compressed, this window
	sampledOut  int
	fastTime    time.Duration // fastest-level-equivalent time for sampledRaw
	frames      int
	link        float64 // bytes/s, last measured
	linkAt      time.Time

	frameSize int              // raw bytes a frame takes from QEMU (queueFor)
	unsent    int              // what the link's socket may hold unsent
	resize    func(unsent int) // applies unsent to the link; nil: nothing to apply
}

func newSender(stats *Stats, blocked *blockedWrites) (*sender, error) {
	fast, err := newCompressor(zstd.SpeedFastest, frameFast)
	if err != nil {
		return nil, err
	}
	s := &sender{stats: stats, blocked: blocked, fast: fast, windowStart: time.Now(), frameSize: readSize, unsent: unsentOnLink}
	s.setMode(Choose(Measure{}))
	return s, nil
}

// compressor is one of the link's zstd streams: each frame it makes is a
// flush of what it was given since the last.
type compressor struct {
	kind byte
	enc  *zstd.Encoder
	out  appendWriter
}

func newCompressor(level zstd.EncoderLevel, kind byte) (*compressor, error) {
	c := &compressor{kind: kind}
	enc, err := zstd.NewWriter(&c.out, zstd.WithEncoderLevel(level), zstd.WithEncoderConcurrency(1),
		zstd.WithEncoderCRC(false), zstd.WithWindowSize(streamWindow))
	if err != nil {
		return nil, fmt.Errorf("start the stream's compressor: %w", err)
	}
	c.enc = enc
	return c, nil
}

// frame compresses raw into the next frame of c's stream. Once given to
// the stream's encoder, raw must reach the far end compressed, even when it
// did not shrink: later frames may refer back to it.
func (c *compressor) frame(raw []byte) ([]byte, error) {
	c.out.b = make([]byte, streamHeader, streamHeader+len(raw)/2)
	if _, err := c.enc.Write(raw); err != nil {
		return nil, fmt.Errorf("compress the migration stream: %w", err)
	}
	if err := c.enc.Flush(); err != nil {
		return nil, fmt.Errorf("compress the migration stream: %w", err)
	}
	f := c.out.b
	c.out.b = nil
	binary.BigEndian.PutUint32(f[frameHeader:], uint32(len(raw)))
	return putHeader(f, c.kind), nil
}

type appendWriter struct{ b []byte }

func (w *appendWriter) Write(p []byte) (int, error) {
	w.b = append(w.b, p...)
	return len(p), nil
}

func (s *sender) setMode(m Mode, why string) {
	s.mode = m
	s.stats.mode.Store(int32(m))
	s.stats.why.Store(&why)
}

func (s *sender) run(qemu net.Conn, frames chan<- []byte) error {
	for {
		buf := make([]byte, frameHeader+s.frameSize)
		n, err := qemu.Read(buf[frameHeader:])
		if n > 0 {
			s.stats.Raw.Add(uint64(n))
			f, ferr := s.frame(buf, n)
			if ferr != nil {
				return ferr
			}
			frames <- f
			s.measure()
		}
		if err != nil {
			return err
		}
	}
}

// frame makes a frame of the n stream bytes that follow buf's header room.
func (s *sender) frame(buf []byte, n int) ([]byte, error) {
	raw := buf[frameHeader : frameHeader+n]
	s.frames++
	c, denseLevel := s.fast, false
	switch {
	case s.mode == Dense:
		if s.dense == nil {
			dense, err := newCompressor(zstd.SpeedBetterCompression, frameDense)
			if err != nil {
				return nil, err
			}
			s.dense = dense
		}
		c, denseLevel = s.dense, true
	case s.mode == Raw && s.frames%sampleEvery != 0:
		return putHeader(buf[:frameHeader+n], frameRaw), nil
	}
	start := time.Now()
	out, err := c.frame(raw)
	if err != nil {
		return nil, err
	}
	took := time.Since(start)
	s.busy += took
	if denseLevel {
		took = time.Duration(float64(took) / denseCost)
	}
	s.sampledRaw += n
	s.sampledOut += len(out) - streamHeader
	s.fastTime += took
	return out, nil
}

func putHeader(f []byte, kind byte) []byte {
	f[0] = kind
	binary.BigEndian.PutUint32(f[1:frameHeader], uint32(len(f)-frameHeader))
	return f
}

// measure closes a window when one has passed and lets Choose pick the next
// window's mode.
func (s *sender) measure() {
	now := time.Now()
	elapsed := now.Sub(s.windowStart)
	if elapsed < window {
		return
	}
	var m Measure
	if s.sampledRaw > 0 && s.fastTime > 0 {
		m.Ratio = float64(s.sampledOut) / float64(s.sampledRaw)
		m.CompressRate = float64(s.sampledRaw) / s.fastTime.Seconds()
	}
	m.Busy = s.busy.Seconds() / elapsed.Seconds()
	if n, took := s.blocked.take(); took > elapsed/10 {
		s.link, s.linkAt = float64(n)/took.Seconds(), now
	}
	if now.Sub(s.linkAt) < linkMemory {
		m.LinkRate = s.link
	}
	frame, unsent := queueFor(m.LinkRate)
	if s.frameSize = frame; unsent != s.unsent && s.resize != nil {
		s.resize(unsent)
	}
	s.unsent = unsent
	if m.Ratio > 0 {
		s.setMode(Choose(m))
	}
	s.windowStart, s.busy, s.sampledRaw, s.sampledOut, s.fastTime = now, 0, 0, 0, 0
}

// receiveFrames undoes sendFrames: each frame's bytes, decompressed where
// they were compressed, go to qemu in order.
func receiveFrames(link, qemu net.Conn, stats *Stats) error {
	streams := map[byte]*decompressor{}
	defer func() {
		for _, d := range streams {
			d.dec.Close()
		}
	}()
	header := make([]byte, frameHeader)
	payload := make([]byte, maxFrame)
	decoded := make([]byte, readSize)
	for {
		if _, err := io.ReadFull(link, header); err != nil {
			pipe.CloseWrite(qemu)
			if pipe.IsClosed(err) {
				return nil
			}
			return fmt.Errorf("receive the migration stream: %w", err)
		}
		size := binary.BigEndian.Uint32(header[1:])
		if size > maxFrame {
			return fmt.Errorf("receive the migration stream: a frame of %d bytes, more than the %d a sender makes: the other end is not a handoff relay of this version", size, maxFrame)
		}
		p := payload[:size]
		if _, err := io.ReadFull(link, p); err != nil {
			return fmt.Errorf("receive the migration stream: a frame cut short: %w", err)
		}
		out := p
		switch kind := header[0]; kind {
		case frameRaw:
		case frameFast, frameDense:
			d := streams[kind]
			if d == nil {
				var err error
				if d, err = newDecompressor(); err != nil {
					return err
				}
				streams[kind] = d
			}
			var err error
			if out, err = d.frame(p, decoded); err != nil {
				return fmt.Errorf("receive the migration stream: %w", err)
			}
		default:
			return fmt.Errorf("receive the migration stream: unknown frame kind %d: the other end is not a handoff relay of this version", kind)
		}
		if _, err := qemu.Write(out); err != nil {
			return fmt.Errorf("write the migration stream to QEMU: %w", err)
		}
		stats.Wire.Add(uint64(frameHeader + size))
		stats.Raw.Add(uint64(len(out)))
	}
}

// decompressor is the receiving end of one of the link's zstd streams.
type decompressor struct {
	in  flushFeed
	dec *zstd.Decoder
}

func newDecompressor() (*decompressor, error) {
	d := &decompressor{}
	dec, err := zstd.NewReader(&d.in, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(streamWindow), zstd.WithDecoderMaxMemory(streamWindow))
	if err != nil {
		return nil, fmt.Errorf("start the stream's decompressor: %w", err)
	}
	d.dec = dec
	return d, nil
}

// frame decodes payload (a raw length, then the stream's next flush) into
// buf: exactly that length, from exactly that flush.
func (d *decompressor) frame(payload, buf []byte) ([]byte, error) {
	if len(payload) < streamHeader-frameHeader {
		return nil, fmt.Errorf("a compressed frame of %d bytes, too short for its length", len(payload))
	}
	n := binary.BigEndian.Uint32(payload)
	if n > uint32(len(buf)) {
		return nil, fmt.Errorf("a compressed frame of %d raw bytes, more than the %d a sender makes: the other end is not a handoff relay of this version", n, len(buf))
	}
	d.in.p = payload[streamHeader-frameHeader:]
	if _, err := io.ReadFull(d.dec, buf[:n]); err != nil {
		return nil, fmt.Errorf("a damaged frame: %w", err)
	}
	if len(d.in.p) > 0 {
		return nil, fmt.Errorf("a damaged frame: %d bytes past its %d raw ones", len(d.in.p), n)
	}
	return buf[:n], nil
}

// flushFeed gives the decoder one frame's flush at a time. The decoder
// reads no further than the flush's last block while it is asked for no
// more than the frame's raw length, so running dry mid-read means the
// frame was cut.
type flushFeed struct{ p []byte }

func (f *flushFeed) Read(b []byte) (int, error) {
	if len(f.p) == 0 {
		return 0, io.ErrUnexpectedEOF
	}
	n := copy(b, f.p)
	f.p = f.p[n:]
	return n, nil
}
