package relay

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// nbdWrites is an NBD client's side of a mirror: its flags, NBD_OPT_GO
// for export, and writes of 64 KiB each changing one 4 KiB block of disk.
func nbdWrites(disk []byte, export string, writes int) []byte {
	var b bytes.Buffer
	put := func(vs ...any) {
		for _, v := range vs {
			binary.Write(&b, binary.BigEndian, v)
		}
	}
	put(uint32(3), uint64(0x49484156454f5054), uint32(7), uint32(4+len(export)+2), uint32(len(export)))
	b.WriteString(export)
	put(uint16(0))
	rng := rand.New(rand.NewPCG(9, 9))
	for i := range writes {
		off := uint64(i%(len(disk)/65536)) * 65536
		data := bytes.Clone(disk[off : off+65536])
		for j := range 4096 {
			data[4096*(i%16)+j] = byte(rng.Uint32())
		}
		put(uint32(0x25609513), uint16(0), uint16(1), uint64(i), off, uint32(len(data)))
		b.Write(data)
	}
	put(uint32(0x25609513), uint16(0), uint16(2), uint64(writes), uint64(0), uint32(0))
	return b.Bytes()
}

func TestAMirrorsWritesCrossAsTheirChanges(t *testing.T) {
	server, workstation := hostOn("127.0.0.2"), hostOn("127.0.0.1")
	srv := startServer(t, server, 8e6)
	disk := guestMemory(4 << 20)
	here, there := filepath.Join(t.TempDir(), "disk.raw"), filepath.Join(t.TempDir(), "disk.raw")
	for _, p := range []string{here, there} {
		if err := os.WriteFile(p, disk, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	const export = "drive-virtio-disk0"
	stream := nbdWrites(disk, export, 64)
	for _, tc := range directions(server, workstation) {
		t.Run(tc.name, func(t *testing.T) {
			stats := &Stats{}
			port, ln := carryTo(t, &Carrier{Server: srv, Local: workstation, ToServer: tc.toServer, Stats: stats,
				Mirror: &Mirror{Here: map[string]string{export: here}, There: map[string]string{export: there}}}, tc.destination)
			got := make(chan []byte, 1)
			go func() {
				c, err := ln.Accept()
				if err != nil {
					got <- nil
					return
				}
				defer c.Close()
				c.SetReadDeadline(time.Now().Add(20 * time.Second))
				b, _ := io.ReadAll(c)
				got <- b
			}()
			src, err := tc.source.Dial(context.Background(), port)
			if err != nil {
				t.Fatal(err)
			}
			defer src.Close()
			if _, err := src.Write(stream); err != nil {
				t.Fatal(err)
			}
			src.(interface{ CloseWrite() error }).CloseWrite()
			if b := <-got; !bytes.Equal(b, stream) {
				t.Fatalf("the destination got %d bytes, not the %d the source wrote", len(b), len(stream))
			}
			// 64 changed blocks of random bytes, 256 KiB, and little else: the
			// rest of the 4 MiB of writes is the copy's own (whole, they
			// compress to about 1.7 MB).
			if wire := stats.Wire.Load(); wire > 64*4096+16<<10 {
				t.Errorf("%d bytes on the link for %d bytes of writes: not sent as their changes", wire, len(stream))
			}
		})
	}
}
