package saveimage

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"maps"
	"strings"
	"testing"
)

// stream writes a save file the way libvirt and QEMU lay it out, and keeps
// what a correct split must give: where page data sits in the file and each
// page's final content.
type stream struct {
	bytes.Buffer
	blocks map[string]int64 // block name → image offset, as Split must lay them out
	last   string
	pages  []pageAt         // page data in the file, in order
	final  map[int64][]byte // image offset → the page's last content (nil: zeroed)
	rest   int              // offset of the first device section
}

type pageAt struct {
	at  int   // file offset of the data
	img int64 // image offset
}

type testBlock struct {
	name   string
	length int64
}

func newStream() *stream {
	return &stream{blocks: map[string]int64{}, final: map[int64][]byte{}}
}

func (s *stream) be16(v uint16) { s.Write(binary.BigEndian.AppendUint16(nil, v)) }
func (s *stream) be32(v uint32) { s.Write(binary.BigEndian.AppendUint32(nil, v)) }
func (s *stream) be64(v uint64) { s.Write(binary.BigEndian.AppendUint64(nil, v)) }
func (s *stream) name(n string) { s.WriteByte(byte(len(n))); s.WriteString(n) }

func (s *stream) libvirt(magic string, format uint32, xml string) {
	s.WriteString(magic)
	le := binary.LittleEndian
	var h [4 * 19]byte
	le.PutUint32(h[0:], 2)                  // version
	le.PutUint32(h[4:], uint32(len(xml)+1)) // data_len
	le.PutUint32(h[8:], 1)                  // was_running
	le.PutUint32(h[12:], format)
	le.PutUint32(h[16:], uint32(len(xml)/2)) // cookieOffset
	s.Write(h[:])
	s.WriteString(xml)
	s.WriteByte(0)
}

func (s *stream) qemu() {
	s.be32(qemuMagic)
	s.be32(qemuVersion)
	s.WriteByte(secConfiguration)
	s.be32(uint32(len("pc-i440fx-10.0")))
	s.WriteString("pc-i440fx-10.0")
	s.WriteByte(secSubsection)
	s.name("configuration/target-page-bits")
	s.be32(1)
	s.be32(12)
	s.WriteByte(secSubsection)
	s.name("configuration/capabilities")
	s.be32(1)
	s.be32(2)
	s.name("x-ignore-shared-not")
	s.name("validate-uuid")
}

func (s *stream) start(id uint32, name string, version uint32) {
	s.WriteByte(secStart)
	s.be32(id)
	s.name(name)
	s.be32(0)
	s.be32(version)
}

func (s *stream) section(t byte, id uint32) { s.WriteByte(t); s.be32(id) }

func (s *stream) footer(id uint32) { s.WriteByte(secFooter); s.be32(id) }

func (s *stream) memSize(blocks ...testBlock) {
	var total int64
	for _, b := range blocks {
		total += b.length
	}
	s.be64(uint64(total) | flagMemSize)
	var end int64
	for _, b := range blocks {
		s.name(b.name)
		s.be64(uint64(b.length))
		off := (end + BlockAlign - 1) / BlockAlign * BlockAlign
		s.blocks[b.name] = off
		end = off + b.length
	}
}

// header writes a page record's header, naming the block unless it is the
// last one named.
func (s *stream) header(block string, addr int64, flag uint64) {
	if block == s.last {
		s.be64(uint64(addr) | flag | flagContinue)
		return
	}
	s.be64(uint64(addr) | flag)
	s.name(block)
	s.last = block
}

func (s *stream) page(block string, addr int64, fill byte) {
	s.header(block, addr, flagPage)
	img := s.blocks[block] + addr
	p := bytes.Repeat([]byte{fill}, PageSize)
	p[0], p[PageSize-1] = byte(addr>>12), byte(len(s.pages)) // tell pages apart
	s.pages = append(s.pages, pageAt{at: s.Len(), img: img})
	s.final[img] = p
	s.Write(p)
}

func (s *stream) zero(block string, addr int64) {
	s.header(block, addr, flagZero)
	s.WriteByte(0)
	img := s.blocks[block] + addr
	if _, ok := s.final[img]; ok {
		s.final[img] = nil
	}
}

// sample writes a whole save file: two blocks, pages sent twice, a page sent
// then zeroed, a zero page never sent, a command, device state and trailing
// bytes after EOF.
func sample() *stream {
	s := newStream()
	s.libvirt(libvirtMagic, 0, "<domain type='qemu'><name>t</name></domain>")
	s.qemu()
	s.start(2, "ram", ramVersion)
	s.memSize(testBlock{"pc.ram", 4 * PageSize}, testBlock{"0000:00:02.0/vga.vram", 2 * PageSize})
	s.be64(flagMultifdFlush)
	s.be64(flagEOS)
	s.footer(2)

	s.section(secPart, 2)
	s.page("pc.ram", 0, 0xa1)
	s.page("pc.ram", PageSize, 0xa2)
	s.zero("pc.ram", 2*PageSize) // never sent: stays a hole
	s.page("0000:00:02.0/vga.vram", PageSize, 0xb1)
	s.page("pc.ram", 3*PageSize, 0xa3)
	s.be64(flagEOS)
	s.footer(2)

	s.section(secPart, 2)
	s.page("pc.ram", PageSize, 0xc2) // sent again: the last copy wins
	s.page("pc.ram", 3*PageSize, 0xc3)
	s.zero("pc.ram", 3*PageSize) // sent, then zeroed
	s.be64(flagEOS)
	s.footer(2)

	s.WriteByte(secCommand)
	s.be16(7)
	s.be16(3)
	s.WriteString("cmd")

	s.section(secEnd, 2)
	s.page("0000:00:02.0/vga.vram", 0, 0xd0)
	s.be64(flagEOS)
	s.footer(2)

	s.rest = s.Len()
	s.WriteByte(secFull)
	s.be32(3)
	s.name("timer")
	s.be32(0)
	s.be32(2)
	s.WriteString("device state with \x00\x7e bytes")
	s.footer(3)
	s.WriteByte(secEOF)
	s.WriteByte(0x06)
	s.be32(2)
	s.WriteString("{}")
	s.WriteString("trailing bytes")
	return s
}

// memImage is an image in memory, page by page, that keeps which pages
// were written.
type memImage map[int64][]byte

func (m memImage) WriteAt(p []byte, off int64) (int, error) {
	if off%PageSize != 0 || len(p) != PageSize {
		return 0, fmt.Errorf("write of %d bytes at %#x, not one page", len(p), off)
	}
	m[off] = bytes.Clone(p)
	return len(p), nil
}

// page returns the page at off, zeros where nothing was written.
func (m memImage) page(off int64) []byte {
	if p, ok := m[off]; ok {
		return p
	}
	return make([]byte, PageSize)
}

func sameImage(a, b memImage) bool { return maps.EqualFunc(a, b, bytes.Equal) }

type op struct {
	lit []byte // nil for a copy
	off int64
	n   int
}

// record is a Recipe that keeps what it is told, joining literals.
type record struct{ ops []op }

func (r *record) Literal(p []byte) error {
	if n := len(r.ops); n > 0 && r.ops[n-1].lit != nil {
		r.ops[n-1].lit = append(r.ops[n-1].lit, p...)
		return nil
	}
	r.ops = append(r.ops, op{lit: append([]byte{}, p...)})
	return nil
}

func (r *record) Copy(off int64, n int) error {
	r.ops = append(r.ops, op{off: off, n: n})
	return nil
}

func (r *record) replay(image memImage) []byte {
	var out []byte
	for _, o := range r.ops {
		if o.lit != nil {
			out = append(out, o.lit...)
			continue
		}
		out = append(out, image.page(o.off)[:o.n]...)
	}
	return out
}

func split(t testing.TB, file []byte) (Layout, memImage, *record) {
	t.Helper()
	img, rec := memImage{}, &record{}
	lay, err := Split(bytes.NewReader(file), img, rec)
	if err != nil {
		t.Fatalf("Split: %v", err)
	}
	return lay, img, rec
}

func TestSplit(t *testing.T) {
	s := sample()
	file := s.Bytes()
	lay, img, rec := split(t, file)

	want := Layout{
		Blocks: []Block{
			{Name: "pc.ram", Offset: 0, Length: 4 * PageSize},
			{Name: "0000:00:02.0/vga.vram", Offset: BlockAlign, Length: 2 * PageSize},
		},
		ImageSize:     BlockAlign + 2*PageSize,
		FileSize:      int64(len(file)),
		StreamOffset:  libvirtHeader + int64(len("<domain type='qemu'><name>t</name></domain>")+1),
		Pages:         7,
		RepeatedPages: 2,
		ZeroPages:     2,
		LiteralBytes:  int64(len(file) - 7*PageSize),
	}
	if fmt.Sprint(lay) != fmt.Sprint(want) {
		t.Errorf("layout\n got %+v\nwant %+v", lay, want)
	}

	// The image holds each page's final content, and nothing was written
	// where only a zero record came.
	for off, p := range s.final {
		got := img.page(off)
		if p == nil {
			p = make([]byte, PageSize)
		}
		if !bytes.Equal(got, p) {
			t.Errorf("image page at %#x starts %x, want %x", off, got[:4], p[:4])
		}
	}
	if _, ok := img[2*PageSize]; ok {
		t.Errorf("a zero page never sent was written to the image; it should stay a hole")
	}

	// Replaying gives the file back, each page record with its final content.
	out := rec.replay(img)
	if len(out) != len(file) {
		t.Fatalf("replay is %d bytes, the file %d", len(out), len(file))
	}
	expect := bytes.Clone(file)
	for _, p := range s.pages {
		final := s.final[p.img]
		if final == nil {
			final = make([]byte, PageSize)
		}
		copy(expect[p.at:], final)
	}
	if !bytes.Equal(out, expect) {
		i := 0
		for out[i] == expect[i] {
			i++
		}
		t.Fatalf("replay differs from the expected file first at byte %d", i)
	}

	// Every copy is one whole page at a page of a block.
	for _, o := range rec.ops {
		if o.lit == nil && (o.n != PageSize || o.off%PageSize != 0 || o.off >= lay.ImageSize) {
			t.Errorf("copy of %d bytes at %#x", o.n, o.off)
		}
	}

	// Splitting the replayed file gives the same image and recipe.
	lay2, img2, rec2 := split(t, out)
	if !sameImage(img, img2) || fmt.Sprint(rec.ops) != fmt.Sprint(rec2.ops) {
		t.Errorf("splitting the replayed file gives another image or recipe")
	}
	if lay2.Pages != lay.Pages || lay2.LiteralBytes != lay.LiteralBytes {
		t.Errorf("splitting the replayed file gives layout %+v, want %+v", lay2, lay)
	}
}

// TestSplitSmallReads feeds the file a few bytes at a time.
func TestSplitSmallReads(t *testing.T) {
	file := sample().Bytes()
	_, img, rec := split(t, file)
	img2, rec2 := memImage{}, &record{}
	if _, err := Split(&trickle{r: bytes.NewReader(file)}, img2, rec2); err != nil {
		t.Fatalf("Split: %v", err)
	}
	if !sameImage(img, img2) || fmt.Sprint(rec.ops) != fmt.Sprint(rec2.ops) {
		t.Errorf("reading in small pieces gives another image or recipe")
	}
}

type trickle struct{ r io.Reader }

func (t *trickle) Read(p []byte) (int, error) { return t.r.Read(p[:min(len(p), 7)]) }

func TestSplitRefuses(t *testing.T) {
	tests := []struct {
		name  string
		build func(s *stream)
		want  string
	}{
		{"wrong magic", func(s *stream) {
			s.libvirt("NotALibvirtSave!", 0, "<domain/>")
		}, "not a libvirt save file"},
		{"unfinished", func(s *stream) {
			s.libvirt(libvirtPartial, 0, "<domain/>")
			s.qemu()
		}, "unfinished"},
		{"compressed", func(s *stream) {
			s.libvirt(libvirtMagic, 2, "<domain/>")
			s.qemu()
		}, "compressed"},
		{"qemu magic", func(s *stream) {
			s.libvirt(libvirtMagic, 0, "<domain/>")
			s.be32(0x12345678)
			s.be32(3)
		}, "not QEVM"},
		{"xbzrle", func(s *stream) {
			ramStart(s)
			s.be64(flagXBZRLE | flagContinue)
		}, "XBZRLE"},
		{"compressed page", func(s *stream) {
			ramStart(s)
			s.be64(flagCompress)
		}, "compressed pages"},
		{"unknown block", func(s *stream) {
			ramStart(s)
			s.be64(flagPage)
			s.name("pc.rom")
			s.Write(make([]byte, PageSize))
		}, `"pc.rom", which the block list lacks`},
		{"page past the block", func(s *stream) {
			ramStart(s)
			s.be64(4*PageSize | flagPage)
			s.name("pc.ram")
		}, "past the end"},
		{"continue first", func(s *stream) {
			ramStart(s)
			s.be64(flagPage | flagContinue)
		}, "none came before"},
		{"block list short of its total", func(s *stream) {
			s.libvirt(libvirtMagic, 0, "<domain/>")
			s.qemu()
			s.start(2, "ram", ramVersion)
			s.be64(8*PageSize | flagMemSize)
			s.name("pc.ram")
			s.be64(4 * PageSize)
			s.be64(0x1000) // a postcopy page size where a name should be
		}, "does not add up"},
		{"another iterable", func(s *stream) {
			s.libvirt(libvirtMagic, 0, "<domain/>")
			s.qemu()
			s.start(3, "dirty-bitmap", 1)
		}, `"dirty-bitmap"`},
		{"devices before ram ends", func(s *stream) {
			ramStart(s)
			s.be64(flagEOS)
			s.WriteByte(secFull)
		}, "before the RAM section ended"},
		{"unknown subsection", func(s *stream) {
			s.libvirt(libvirtMagic, 0, "<domain/>")
			s.qemu()
			s.WriteByte(secSubsection)
			s.name("configuration/something-new")
			s.be32(1)
		}, "something-new"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newStream()
			tt.build(s)
			s.Write(make([]byte, 64)) // so that nothing ends short
			_, err := Split(bytes.NewReader(s.Bytes()), memImage{}, &record{})
			if !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Split: %v, want ErrUnsupported saying %q", err, tt.want)
			}
		})
	}
}

// ramStart writes a file up to the first ram payload, with one 4-page block.
func ramStart(s *stream) {
	s.libvirt(libvirtMagic, 0, "<domain/>")
	s.qemu()
	s.start(2, "ram", ramVersion)
	s.memSize(testBlock{"pc.ram", 4 * PageSize})
}

// TestSplitCutShort cuts the sample anywhere before the device state.
func TestSplitCutShort(t *testing.T) {
	s := sample()
	file := s.Bytes()
	for n := 0; n < s.rest; n += 61 {
		_, err := Split(bytes.NewReader(file[:n]), memImage{}, &record{})
		if !errors.Is(err, io.ErrUnexpectedEOF) || !strings.Contains(err.Error(), "cut short") {
			t.Fatalf("Split of the first %d bytes: %v, want io.ErrUnexpectedEOF saying the file is cut short", n, err)
		}
	}
}

type failingRecipe struct{ record }

var errRecipe = errors.New("recipe full")

func (f *failingRecipe) Copy(int64, int) error { return errRecipe }

func TestSplitRecipeError(t *testing.T) {
	_, err := Split(bytes.NewReader(sample().Bytes()), memImage{}, &failingRecipe{})
	if !errors.Is(err, errRecipe) {
		t.Errorf("Split: %v, want the recipe's error", err)
	}
}

// FuzzSplit checks that Split never panics and that whatever it accepts
// splits again, after a replay, into the same image and recipe.
func FuzzSplit(f *testing.F) {
	f.Add(sample().Bytes())
	s := newStream()
	ramStart(s)
	s.page("pc.ram", 0, 1)
	s.be64(flagEOS)
	f.Add(s.Bytes())
	f.Fuzz(func(t *testing.T, file []byte) {
		img, rec := memImage{}, &record{}
		if _, err := Split(bytes.NewReader(file), img, rec); err != nil {
			return
		}
		out := rec.replay(img)
		if len(out) != len(file) {
			t.Fatalf("replay is %d bytes, the file %d", len(out), len(file))
		}
		img2, rec2 := memImage{}, &record{}
		if _, err := Split(bytes.NewReader(out), img2, rec2); err != nil {
			t.Fatalf("Split of the replay: %v", err)
		}
		if !sameImage(img, img2) || fmt.Sprint(rec.ops) != fmt.Sprint(rec2.ops) {
			t.Fatalf("splitting the replayed file gives another image or recipe")
		}
	})
}

type nullImage struct{}

func (nullImage) WriteAt(p []byte, _ int64) (int, error) { return len(p), nil }

type nullRecipe struct{}

func (nullRecipe) Literal([]byte) error  { return nil }
func (nullRecipe) Copy(int64, int) error { return nil }

// BenchmarkSplit splits a 160 MB stream: 40960 pages, one in four zero.
func BenchmarkSplit(b *testing.B) {
	s := newStream()
	s.libvirt(libvirtMagic, 0, "<domain/>")
	s.qemu()
	s.start(2, "ram", ramVersion)
	s.memSize(testBlock{"pc.ram", 256 << 20})
	s.be64(flagEOS)
	s.section(secEnd, 2)
	page := bytes.Repeat([]byte{0x5a}, PageSize)
	for i := range int64(52000) {
		if i%4 == 3 {
			s.zero("pc.ram", i*PageSize)
			continue
		}
		s.header("pc.ram", i*PageSize, flagPage)
		s.Write(page)
	}
	s.be64(flagEOS)
	s.WriteByte(secEOF)
	file := s.Bytes()
	b.SetBytes(int64(len(file)))
	b.ResetTimer()
	for b.Loop() {
		if _, err := Split(bytes.NewReader(file), nullImage{}, nullRecipe{}); err != nil {
			b.Fatal(err)
		}
	}
}
