package relay

import (
	"bytes"
	"io"
	"math/rand/v2"
	"net"
	"strings"
	"testing"
)

// frames makes the sender's frames of data, n bytes a frame, in modes.
func frames(t *testing.T, data []byte, n int, modes ...Mode) [][]byte {
	t.Helper()
	s, err := newSender(&Stats{}, &blockedWrites{})
	if err != nil {
		t.Fatal(err)
	}
	var out [][]byte
	for i, k := 0, 0; i < len(data); i, k = i+n, k+1 {
		s.mode = modes[k%len(modes)]
		chunk := data[i:min(i+n, len(data))]
		buf := make([]byte, frameHeader+len(chunk))
		copy(buf[frameHeader:], chunk)
		f, err := s.frame(buf, len(chunk))
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, f)
	}
	return out
}

// receive runs receiveFrames on fs and returns what it wrote to QEMU.
func receive(fs [][]byte) ([]byte, error) {
	sent, link := net.Pipe()
	qemu, dest := net.Pipe()
	go func() {
		for _, f := range fs {
			if _, err := sent.Write(f); err != nil {
				break
			}
		}
		sent.Close()
	}()
	got := make(chan []byte)
	go func() { b, _ := io.ReadAll(dest); got <- b }()
	err := receiveFrames(link, qemu, &Stats{})
	qemu.Close()
	link.Close()
	return <-got, err
}

func TestCompressedFramesReachBackAcrossFrames(t *testing.T) {
	// 1 MiB of random pages twice: the second copy is all matches into the
	// first, which only a stream that spans the frames finds.
	page := make([]byte, 1<<20)
	rand.NewChaCha8([32]byte{1}).Read(page)
	data := append(append([]byte{}, page...), page...)
	for _, tc := range []struct {
		name  string
		modes []Mode
	}{
		{"fast", []Mode{Fast}},
		{"dense", []Mode{Dense}},
		{"modes taking turns, raw frames between", []Mode{Dense, Fast, Raw, Dense, Raw, Raw, Fast}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fs := frames(t, data, 50<<10, tc.modes...)
			wire := 0
			for _, f := range fs {
				wire += len(f)
			}
			got, err := receive(fs)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, data) {
				t.Fatalf("the destination got %d bytes unlike the %d sent", len(got), len(data))
			}
			if len(tc.modes) == 1 && wire > len(page)*11/10 {
				t.Errorf("the link carried %d bytes for a page of %d sent twice: the second copy did not refer back", wire, len(page))
			}
		})
	}
}

func TestADamagedCompressedFrameIsRefused(t *testing.T) {
	data := bytes.Repeat([]byte("the guest's memory, "), 10000)
	for _, tc := range []struct {
		name   string
		damage func(f []byte) []byte
	}{
		{"a flush cut short", func(f []byte) []byte {
			f = f[:len(f)-3]
			return putHeader(f, f[0])
		}},
		{"a raw length beyond the flush", func(f []byte) []byte {
			f[frameHeader+3]++
			return f
		}},
		{"a raw length past any frame", func(f []byte) []byte {
			f[frameHeader] = 0x7f
			return f
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fs := frames(t, data, 64<<10, Dense)
			fs[1] = tc.damage(fs[1])
			_, err := receive(fs)
			if err == nil || !strings.Contains(err.Error(), "frame") {
				t.Errorf("receiveFrames = %v, want a damaged frame named", err)
			}
		})
	}
}
