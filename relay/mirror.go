package relay

import (
	"errors"
	"io"
	"net"
	"net/url"
	"strings"
	"sync"

	"github.com/handoff-dev/handoff/internal/pipe"
	"github.com/handoff-dev/handoff/internal/qcow2"
	"github.com/handoff-dev/handoff/relay/nbddelta"
)

// Mirror makes a way carry the disks' NBD mirror as each write's changes
// against the chain below the mirrored overlay, which both hosts hold
// (see package nbddelta). Its maps name, by NBD export, the top file of
// that chain on each host; an export in neither goes whole.
type Mirror struct {
	Here  map[string]string // on this workstation
	There map[string]string // on the server
}

// refParam is the query parameter naming one export's chain on the server:
// EXPORT=PATH. Its presence (mirror=1 without any) makes a session a
// mirror's.
const (
	refParam    = "ref"
	mirrorParam = "mirror"
)

func (m *Mirror) query() url.Values {
	q := url.Values{mirrorParam: {"1"}}
	for export, path := range m.There {
		q.Add(refParam, export+"="+path)
	}
	return q
}

// mirrorOf reads a session request's mirror: nil for a memory stream.
func mirrorOf(q url.Values) map[string]string {
	if q.Get(mirrorParam) == "" {
		return nil
	}
	refs := map[string]string{}
	for _, r := range q[refParam] {
		if export, path, ok := strings.Cut(r, "="); ok {
			refs[export] = path
		}
	}
	return refs
}

// chains opens the chains a stream's writes are compared with, each once,
// on first use; a chain that does not open reads as no chain, so the
// source sends its writes whole and the destination refuses a write sent
// as changes to it. close closes what was opened.
func chains(paths map[string]string) (ref nbddelta.Reference, close func() error) {
	var mu sync.Mutex
	open := map[string]*qcow2.Image{}
	ref = func(export string) io.ReaderAt {
		mu.Lock()
		defer mu.Unlock()
		if img, ok := open[export]; ok {
			return readerOrNil(img)
		}
		path, ok := paths[export]
		if !ok {
			return nil
		}
		img, err := qcow2.Open(path)
		if err != nil {
			img = nil
		}
		open[export] = img
		return readerOrNil(img)
	}
	close = func() error {
		mu.Lock()
		defer mu.Unlock()
		var err error
		for _, img := range open {
			if img != nil {
				err = errors.Join(err, img.Close())
			}
		}
		return err
	}
	return ref, close
}

func readerOrNil(img *qcow2.Image) io.ReaderAt {
	if img == nil {
		return nil
	}
	return img
}

// encodedConn is the source QEMU's connection, read as nbddelta encodes it.
type encodedConn struct {
	net.Conn
	r    *io.PipeReader
	done chan struct{}
}

// encodeFrom reads qemu (an NBD client) through nbddelta.Encode. The
// encoder's goroutine ends with qemu's stream, or when the conn closes.
func encodeFrom(qemu net.Conn, paths map[string]string) net.Conn {
	ref, closeRefs := chains(paths)
	pr, pw := io.Pipe()
	c := &encodedConn{Conn: qemu, r: pr, done: make(chan struct{})}
	go func() {
		defer close(c.done)
		pw.CloseWithError(errors.Join(nbddelta.Encode(pw, qemu, ref), closeRefs()))
	}()
	return c
}

func (c *encodedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

func (c *encodedConn) Close() error {
	err := c.Conn.Close()
	c.r.Close()
	<-c.done
	return err
}

func (c *encodedConn) CloseWrite() error { pipe.CloseWrite(c.Conn); return nil }

// NetConn is the connection under the encoder, for socket options.
func (c *encodedConn) NetConn() net.Conn { return c.Conn }

// decodedConn is the destination QEMU's connection, written through
// nbddelta.Decode.
type decodedConn struct {
	net.Conn
	w    *io.PipeWriter
	done chan struct{}
	err  error // the decoder's, once done is closed
}

func decodeInto(qemu net.Conn, paths map[string]string) net.Conn {
	ref, closeRefs := chains(paths)
	pr, pw := io.Pipe()
	c := &decodedConn{Conn: qemu, w: pw, done: make(chan struct{})}
	go func() {
		defer close(c.done)
		c.err = errors.Join(nbddelta.Decode(qemu, pr, ref), closeRefs())
		pr.CloseWithError(c.err)
		if c.err != nil {
			qemu.Close() // the source's mirror fails, and with it the move: no write is lost
		}
	}()
	return c
}

func (c *decodedConn) Write(p []byte) (int, error) { return c.w.Write(p) }

// CloseWrite ends the stream into QEMU once the decoder has written all.
func (c *decodedConn) CloseWrite() error {
	c.w.Close()
	<-c.done
	pipe.CloseWrite(c.Conn)
	return c.err
}

func (c *decodedConn) Close() error {
	err := c.Conn.Close()
	c.w.CloseWithError(net.ErrClosed)
	<-c.done
	return err
}

func (c *decodedConn) NetConn() net.Conn { return c.Conn }
