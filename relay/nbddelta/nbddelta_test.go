package nbddelta

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"testing"
)

const export = "drive-virtio-disk0"

// client builds what an NBD client sends.
type client struct{ bytes.Buffer }

func (c *client) flags() *client { c.Write([]byte{0, 0, 0, 3}); return c }

func (c *client) option(code uint32, data []byte) *client {
	binary.Write(c, binary.BigEndian, uint64(optMagic))
	binary.Write(c, binary.BigEndian, code)
	binary.Write(c, binary.BigEndian, uint32(len(data)))
	c.Write(data)
	return c
}

func (c *client) goTo(name string) *client {
	var d bytes.Buffer
	binary.Write(&d, binary.BigEndian, uint32(len(name)))
	d.WriteString(name)
	d.Write([]byte{0, 0})
	return c.option(optGo, d.Bytes())
}

func (c *client) request(extended bool, kind uint16, off int64, payload []byte, n int) *client {
	if extended {
		binary.Write(c, binary.BigEndian, uint32(extendedMagic))
	} else {
		binary.Write(c, binary.BigEndian, uint32(requestMagic))
	}
	binary.Write(c, binary.BigEndian, uint16(0))
	binary.Write(c, binary.BigEndian, kind)
	binary.Write(c, binary.BigEndian, uint64(0x1234))
	binary.Write(c, binary.BigEndian, uint64(off))
	if extended {
		binary.Write(c, binary.BigEndian, uint64(n))
	} else {
		binary.Write(c, binary.BigEndian, uint32(n))
	}
	c.Write(payload)
	return c
}

// mirror is a stream as QEMU's mirror sends it over disk: 64 KiB writes
// each changing one 4 KiB block, an unaligned one, reads, a write past
// the reference's end, and the disconnect.
func mirror(t *testing.T, disk []byte, extended bool) []byte {
	t.Helper()
	rng := rand.New(rand.NewPCG(1, 2))
	c := (&client{}).flags().option(3, nil).goTo(export)
	for i := range 20 {
		off := int64(rng.IntN(len(disk)/65536-1)) * 65536
		data := bytes.Clone(disk[off : off+65536])
		for j := 4096 * (i % 16); j < 4096*(i%16)+4096; j++ {
			data[j] = byte(rng.Uint32())
		}
		c.request(extended, cmdWrite, off, data, len(data))
		c.request(extended, 0, off, nil, 65536) // a read: no payload
	}
	odd := bytes.Clone(disk[1000 : 1000+10000])
	odd[9999] ^= 0xff
	c.request(extended, cmdWrite, 1000, odd, len(odd))
	c.request(extended, cmdWrite, int64(len(disk))-100, bytes.Repeat([]byte{7}, 300), 300)
	c.request(extended, 2, 0, nil, 0) // NBD_CMD_DISC
	return c.Bytes()
}

func refOf(disk []byte) Reference {
	return func(name string) io.ReaderAt {
		if name != export {
			return nil
		}
		return bytes.NewReader(disk)
	}
}

func roundTrip(src []byte, at, to Reference) (encoded, decoded []byte, err error) {
	var enc, dec bytes.Buffer
	if err := Encode(&enc, bytes.NewReader(src), at); err != nil {
		return nil, nil, err
	}
	err = Decode(&dec, bytes.NewReader(enc.Bytes()), to)
	return enc.Bytes(), dec.Bytes(), err
}

func TestWritesGoAsTheirChangedBlocks(t *testing.T) {
	disk := make([]byte, 8<<20)
	fill(disk, 3)
	for _, extended := range []bool{false, true} {
		src := mirror(t, disk, extended)
		encoded, decoded, err := roundTrip(src, refOf(disk), refOf(disk))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(decoded, src) {
			t.Fatalf("extended headers %v: the stream decoded differs from the client's", extended)
		}
		// 21 changed blocks and the write past the end, against 1.3 MB.
		if len(encoded) > 22*4096+4096 {
			t.Errorf("extended headers %v: %d bytes encoded of %d: writes not sent as their changes", extended, len(encoded), len(src))
		}
	}
}

func TestAnExportWithoutACopyGoesWhole(t *testing.T) {
	disk := make([]byte, 1<<20)
	fill(disk, 5)
	src := mirror(t, disk, false)
	encoded, decoded, err := roundTrip(src, nil, refOf(disk))
	if err != nil || !bytes.Equal(decoded, src) {
		t.Fatalf("decoded %d bytes of %d, %v", len(decoded), len(src), err)
	}
	if len(encoded) < len(src) {
		t.Errorf("%d bytes encoded of %d without a reference", len(encoded), len(src))
	}
}

func TestChainsThatDifferAreRefused(t *testing.T) {
	disk := make([]byte, 1<<20)
	fill(disk, 7)
	other := bytes.Clone(disk)
	for i := range other {
		other[i] ^= 1
	}
	_, _, err := roundTrip(mirror(t, disk, false), refOf(disk), refOf(other))
	if !errors.Is(err, ErrMismatch) {
		t.Errorf("a write rebuilt on another chain: %v, want ErrMismatch", err)
	}
	// A copy that lacks the disk cannot rebuild a write sent as changes.
	if _, _, err := roundTrip(mirror(t, disk, false), refOf(disk), nil); err == nil {
		t.Error("a write sent as changes decoded without a copy")
	}
}

func TestAStreamCutShortIsAnError(t *testing.T) {
	disk := make([]byte, 1<<20)
	src := mirror(t, disk, false)
	for _, n := range []int{2, 30, len(src) / 2} {
		var out bytes.Buffer
		if err := Encode(&out, bytes.NewReader(src[:n]), refOf(disk)); !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Errorf("cut at %d: %v, want io.ErrUnexpectedEOF", n, err)
		}
	}
	if err := Encode(io.Discard, bytes.NewReader(nil), refOf(disk)); err != nil {
		t.Errorf("a client that never spoke: %v", err)
	}
	var out bytes.Buffer
	bad := (&client{}).flags().goTo(export)
	bad.Write([]byte("GET / HTTP/1.1\r\n\r\n"))
	if err := Encode(&out, bytes.NewReader(bad.Bytes()), refOf(disk)); err == nil {
		t.Error("a stream that is no NBD passed")
	}
}

func fill(b []byte, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, seed))
	for i := 0; i+8 <= len(b); i += 8 {
		binary.LittleEndian.PutUint64(b[i:], rng.Uint64())
	}
}
