package vnc

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"image"
	"net"
	"sync"
	"time"

	govnc "github.com/mitchellh/go-vnc"
)

// Frame is one state of the remote screen.
type Frame struct {
	Image *image.RGBA     // a copy the receiver owns and may keep
	Dirty image.Rectangle // what changed since the previous Frame (all of it after a resize or reconnect)
	// Rects are the rectangles that changed, as the server sent them (at
	// most maxRects; more merge into Dirty): a change at the top and one at
	// the bottom are two small areas, not the screen between them.
	Rects []image.Rectangle
	Seq   uint64
}

// Dialer opens the byte stream to the VNC server (unix socket, TCP, or an
// SSH channel).
type Dialer func(ctx context.Context) (net.Conn, error)

// Options configure Connect.
type Options struct {
	Dial Dialer
	// Encodings in order of preference: "zlib", "raw". Default: zlib then
	// raw, which keeps a view usable on a slow link.
	Encodings []string
	// Reconnect redials with backoff when the server closes the connection
	// (as QEMU does when its guest migrates away or restarts).
	Reconnect bool
}

// Client is a live view of one VNC server.
type Client struct {
	opts   Options
	frames chan Frame
	done   chan struct{}
	cancel context.CancelFunc

	mu   sync.Mutex // guards conn and size; serialises writes to the server
	conn *govnc.ClientConn
	size image.Point
	err  error
	// The user's last key or pointer event, and the last message that set
	// QEMU's refresh timer back (see nudgePlan); input wakes serve.
	lastInput, lastReset time.Time
	input                chan struct{}
}

// Connect does the RFB handshake and starts one goroutine, owned by the
// Client, that reads the server until ctx ends or Close is called.
func Connect(ctx context.Context, opts Options) (*Client, error) {
	if opts.Dial == nil {
		return nil, errors.New("vnc: no Dial given")
	}
	encs, err := encodingList(opts.Encodings)
	if err != nil {
		return nil, err
	}
	s, err := dialSession(ctx, opts.Dial, encs)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	c := &Client{opts: opts, frames: make(chan Frame, 1), done: make(chan struct{}), cancel: cancel, input: make(chan struct{}, 1)}
	go c.run(ctx, s, encs)
	return c, nil
}

func encodingList(names []string) ([]govnc.Encoding, error) {
	if len(names) == 0 {
		names = []string{"zlib", "raw"}
	}
	var encs []govnc.Encoding
	for _, n := range names {
		switch n {
		case "zlib":
			encs = append(encs, encodingStub(encZlib))
		case "raw":
			encs = append(encs, encodingStub(encRaw))
		default:
			return nil, fmt.Errorf("vnc: unknown encoding %q (known: zlib, raw)", n)
		}
	}
	return append(encs, encodingStub(encDesktopSize)), nil
}

// session is one connection to the server.
type session struct {
	conn *govnc.ClientConn
	msgs chan govnc.ServerMessage
	dead chan struct{} // closed when the connection fails
}

func dialSession(ctx context.Context, dial Dialer, encs []govnc.Encoding) (*session, error) {
	nc, err := dial(ctx)
	if err != nil {
		return nil, fmt.Errorf("connect to the VNC server: %w", err)
	}
	stop := context.AfterFunc(ctx, func() { nc.Close() })
	defer stop()
	bc := &bufConn{Conn: nc, r: bufio.NewReaderSize(nc, 256<<10), dead: make(chan struct{})}
	msgs := make(chan govnc.ServerMessage, 4)
	conn, err := govnc.Client(bc, &govnc.ClientConfig{
		Auth:            []govnc.ClientAuth{new(govnc.ClientAuthNone)},
		ServerMessageCh: msgs,
		ServerMessages:  []govnc.ServerMessage{&updateMessage{zlib: newZlibStream()}},
	})
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("VNC handshake: %w", err)
	}
	pf := pixelFormat
	if err := conn.SetPixelFormat(&pf); err != nil {
		conn.Close()
		return nil, fmt.Errorf("VNC set pixel format: %w", err)
	}
	if err := conn.SetEncodings(encs); err != nil {
		conn.Close()
		return nil, fmt.Errorf("VNC set encodings: %w", err)
	}
	return &session{conn: conn, msgs: msgs, dead: bc.dead}, nil
}

// close ends the session and waits for go-vnc's reader to stop: it may
// be blocked handing over a message nobody reads any more.
func (s *session) close() {
	s.conn.Close()
	for {
		select {
		case <-s.msgs:
		case <-s.dead:
			return
		}
	}
}

// bufConn buffers reads: go-vnc reads the wire a field at a time. It also
// tells when the connection dies, which go-vnc does not.
type bufConn struct {
	net.Conn
	r    *bufio.Reader
	dead chan struct{}
	once sync.Once
}

func (b *bufConn) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err != nil {
		b.once.Do(func() { close(b.dead) })
	}
	return n, err
}

func (c *Client) run(ctx context.Context, s *session, encs []govnc.Encoding) {
	defer close(c.done)
	defer close(c.frames)
	var seq uint64
	backoff := 100 * time.Millisecond
	for {
		err := c.serve(ctx, s, &seq)
		s.close()
		if ctx.Err() != nil || !c.opts.Reconnect {
			c.mu.Lock()
			c.err = err
			c.mu.Unlock()
			return
		}
		for {
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			if s, err = dialSession(ctx, c.opts.Dial, encs); err == nil {
				backoff = 100 * time.Millisecond
				break
			}
			backoff = min(2*backoff, 2*time.Second)
		}
	}
}

// serve draws one connection's updates until it fails or ctx ends.
func (c *Client) serve(ctx context.Context, s *session, seq *uint64) error {
	w, h := int(s.conn.FrameBufferWidth), int(s.conn.FrameBufferHeight)
	fb := image.NewRGBA(image.Rect(0, 0, w, h))
	c.mu.Lock()
	c.conn, c.size = s.conn, fb.Rect.Size()
	err := s.conn.FramebufferUpdateRequest(false, 0, 0, uint16(w), uint16(h))
	c.mu.Unlock()
	if err != nil {
		return err
	}
	dirty := fb.Rect // a new connection shows the whole screen anew
	rects := []image.Rectangle{fb.Rect}
	var input <-chan struct{} // nil: this server is not nudged
	if nudgesQEMU(s.conn.DesktopName) {
		input = c.input
	}
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	var wake <-chan time.Time // nil while no nudge is due
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-s.dead:
			return errors.New("the VNC server closed the connection")
		case <-input:
			timer.Reset(nudgeEvery)
			wake = timer.C
		case <-wake:
			c.mu.Lock()
			nudge, next := nudgePlan(time.Now(), c.lastInput, c.lastReset)
			var err error
			if nudge {
				err = s.conn.KeyEvent(nudgeKey, false)
				c.lastReset = time.Now()
			}
			c.mu.Unlock()
			if err != nil {
				return err
			}
			wake = nil
			if next > 0 {
				timer.Reset(next)
				wake = timer.C
			}
		case msg := <-s.msgs:
			up, ok := msg.(*updateMessage)
			if !ok {
				continue // bells and clipboard: not shown
			}
			full := false
			for _, r := range up.rects {
				var d image.Rectangle
				fb, d = apply(fb, r)
				if r.resize {
					full = true
					c.mu.Lock()
					c.size = fb.Rect.Size()
					c.mu.Unlock()
				}
				dirty = dirty.Union(d)
				if !d.Empty() {
					rects = append(rects, d)
				}
			}
			if full {
				dirty, rects = fb.Rect, append(rects[:0], fb.Rect)
			}
			*seq++
			c.publish(Frame{Image: cloneRGBA(fb), Dirty: dirty, Rects: MergeRects(nil, rects, dirty), Seq: *seq})
			dirty, rects = image.Rectangle{}, rects[:0]
			c.mu.Lock()
			err := s.conn.FramebufferUpdateRequest(!full, 0, 0, uint16(fb.Rect.Dx()), uint16(fb.Rect.Dy()))
			c.mu.Unlock()
			if err != nil {
				return err
			}
		}
	}
}

// publish hands f over, replacing an unread older frame: a slow reader
// gets the newest screen, never a backlog. Dirty areas merge so the
// reader still learns everything that changed.
func (c *Client) publish(f Frame) {
	select {
	case old := <-c.frames:
		if old.Image.Rect == f.Image.Rect {
			f.Dirty = f.Dirty.Union(old.Dirty)
			f.Rects = MergeRects(old.Rects, f.Rects, f.Dirty)
		} else {
			f.Dirty, f.Rects = f.Image.Rect, []image.Rectangle{f.Image.Rect}
		}
	default:
	}
	c.frames <- f
}

// maxRects bounds a Frame's list of changed rectangles; past it, their
// union stands for them.
const maxRects = 32

// MergeRects appends more to rects (in a new slice: the receiver may keep
// both) and returns them, or just union when they grow past maxRects.
func MergeRects(rects, more []image.Rectangle, union image.Rectangle) []image.Rectangle {
	if len(rects)+len(more) > maxRects {
		return []image.Rectangle{union}
	}
	return append(append(make([]image.Rectangle, 0, len(rects)+len(more)), rects...), more...)
}

func cloneRGBA(m *image.RGBA) *image.RGBA {
	return &image.RGBA{Pix: append([]byte(nil), m.Pix...), Stride: m.Stride, Rect: m.Rect}
}

// Frames delivers the screen as it changes; closed when the client stops.
func (c *Client) Frames() <-chan Frame { return c.frames }

// Size is the remote screen's size.
func (c *Client) Size() image.Point {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.size
}

// Key presses or releases one key.
func (c *Client) Key(keysym uint32, down bool) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn == nil {
		return errors.New("vnc: not connected")
	}
	if err := c.conn.KeyEvent(keysym, down); err != nil {
		return err
	}
	c.inputSent()
	return nil
}

// inputSent notes a key or pointer event, which set QEMU's refresh timer
// back, and has serve keep it there a while; with c.mu held.
func (c *Client) inputSent() {
	c.lastInput = time.Now()
	c.lastReset = c.lastInput
	select {
	case c.input <- struct{}{}:
	default:
	}
}

// Tap presses the modifiers, presses and releases the key, and releases
// the modifiers.
func (c *Client) Tap(keysym uint32, mods Modifiers) error {
	for _, ev := range tapSequence(keysym, mods) {
		if err := c.Key(ev.sym, ev.down); err != nil {
			return fmt.Errorf("send key: %w", err)
		}
	}
	return nil
}

// Pointer moves the pointer to (x, y) with buttons held (bit 0 left, 1
// middle, 2 right, 3 and 4 wheel).
func (c *Client) Pointer(buttons uint8, x, y int) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn == nil {
		return errors.New("vnc: not connected")
	}
	if err := c.conn.PointerEvent(govnc.ButtonMask(buttons), uint16(max(0, x)), uint16(max(0, y))); err != nil {
		return err
	}
	c.inputSent()
	return nil
}

// Close stops the client and waits for its goroutine.
func (c *Client) Close() error {
	c.cancel()
	<-c.done
	return nil
}

// Err is why the client stopped, once Frames is closed.
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}
