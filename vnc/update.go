package vnc

import (
	"encoding/binary"
	"fmt"
	"io"

	govnc "github.com/mitchellh/go-vnc"
)

// encodingStub names an encoding in SetEncodings; the decoding is ours
// (see updateMessage), so go-vnc never calls Read.
type encodingStub int32

func (e encodingStub) Type() int32 { return int32(e) }

func (e encodingStub) Read(*govnc.ClientConn, *govnc.Rectangle, io.Reader) (govnc.Encoding, error) {
	return nil, fmt.Errorf("encoding %d is decoded by package vnc", int32(e))
}

// updateMessage reads FramebufferUpdate messages in place of go-vnc's
// reader, which always decodes raw pixel by pixel. One per connection: it
// holds the connection's zlib stream.
type updateMessage struct {
	zlib  *zlibStream
	rects []*rectUpdate
}

func (*updateMessage) Type() uint8 { return 0 }

func (m *updateMessage) Read(_ *govnc.ClientConn, r io.Reader) (govnc.ServerMessage, error) {
	var head [3]byte // padding, number of rectangles
	if _, err := io.ReadFull(r, head[:]); err != nil {
		return nil, err
	}
	n := int(binary.BigEndian.Uint16(head[1:]))
	out := &updateMessage{rects: make([]*rectUpdate, 0, n)}
	for range n {
		var h [12]byte
		if _, err := io.ReadFull(r, h[:]); err != nil {
			return nil, err
		}
		x, y := binary.BigEndian.Uint16(h[0:]), binary.BigEndian.Uint16(h[2:])
		w, ht := binary.BigEndian.Uint16(h[4:]), binary.BigEndian.Uint16(h[6:])
		rect := rectOf(x, y, w, ht)
		var u *rectUpdate
		var err error
		switch enc := int32(binary.BigEndian.Uint32(h[8:])); enc {
		case encRaw:
			u, err = decodeRaw(rect, r)
		case encZlib:
			u, err = m.zlib.decode(rect, r)
		case encDesktopSize:
			u = &rectUpdate{rect: rectOf(0, 0, w, ht), resize: true}
		default:
			err = fmt.Errorf("the server sent encoding %d, which was not asked for", enc)
		}
		if err != nil {
			return nil, err
		}
		out.rects = append(out.rects, u)
	}
	return out, nil
}
