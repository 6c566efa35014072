package saveimage

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// ErrUnsupported marks a save file Split cannot take apart; send it whole.
var ErrUnsupported = errors.New("save file not supported for splitting, send it whole")

// Recipe receives the save file as the rebuild will replay it, in order.
type Recipe interface {
	Literal(p []byte) error      // bytes of the file as they are (p may be reused after the call)
	Copy(off int64, n int) error // n bytes of the image at off
}

// PageSize is the size of a RAM page in the stream and in the image.
const PageSize = 4096

// BlockAlign is the alignment of each RAM block's offset in the image.
const BlockAlign = 1 << 20

// Layout describes the image Split wrote and what the stream held.
type Layout struct {
	Blocks    []Block
	ImageSize int64 // end of the last block

	FileSize     int64 // bytes read from the save file
	StreamOffset int64 // where QEMU's stream starts, after libvirt's header

	Pages         int64 // page records (4 KiB of data each)
	RepeatedPages int64 // page records for a page sent before
	ZeroPages     int64 // zero-page records
	LiteralBytes  int64 // bytes of the file passed to Recipe.Literal
}

// Block is one RAM block of the guest, as the stream's block list names it.
type Block struct {
	Name   string
	Offset int64 // in the image
	Length int64 // the block's used length
}

// Split reads a save file from r, writes every RAM page into image at its
// fixed offset (the last copy of a page in the stream wins; a zero-page
// record writes zeros only where something was written before, so the image
// stays sparse), and describes the file to recipe. It returns the layout.
// See the package documentation for the contract.
func Split(r io.Reader, image io.WriterAt, recipe Recipe) (Layout, error) {
	s := &splitter{
		br:     bufio.NewReaderSize(r, readBuffer),
		image:  image,
		recipe: recipe,
		lit:    make([]byte, 0, literalBuffer),
		names:  map[string]int{},
		sent:   map[int64]*[chunkWords]uint64{},
	}
	err := s.split()
	if err == nil {
		err = s.flush()
	}
	s.layout.FileSize = s.off
	return s.layout, err
}

const (
	readBuffer    = 4 << 20
	literalBuffer = 64 << 10

	// The sent-page bitmap is kept in chunks of chunkWords*64 pages, made
	// when first touched, so a block list claiming terabytes costs nothing.
	chunkWords = 64
	chunkPages = chunkWords * 64
)

// libvirt's header (src/qemu/qemu_saveimage.h).
const (
	libvirtMagic   = "LibvirtQemudSave"
	libvirtPartial = "LibvirtQemudPart"
	libvirtHeader  = 16 + 4*5 + 4*14
)

// QEMU's stream (migration/savevm.h, migration/ram.h).
const (
	qemuMagic   = 0x5145564d
	qemuVersion = 3

	secEOF           = 0x00
	secStart         = 0x01
	secPart          = 0x02
	secEnd           = 0x03
	secFull          = 0x04
	secSubsection    = 0x05
	secConfiguration = 0x07
	secCommand       = 0x08
	secFooter        = 0x7e

	ramVersion = 4

	flagFull         = 0x01
	flagZero         = 0x02
	flagMemSize      = 0x04
	flagPage         = 0x08
	flagEOS          = 0x10
	flagContinue     = 0x20
	flagXBZRLE       = 0x40
	flagHook         = 0x80
	flagCompress     = 0x100
	flagMultifdFlush = 0x200
	flagMask         = PageSize - 1

	maxBlocks      = 4096
	maxBlockLength = 1 << 46 // 64 TiB, far above any guest we move
)

type splitter struct {
	br     *bufio.Reader
	off    int64 // bytes of the file consumed
	image  io.WriterAt
	recipe Recipe
	lit    []byte // literal bytes not yet passed to recipe

	layout Layout
	names  map[string]int // block name → index in layout.Blocks
	last   int            // block of the last page record, -1 before any
	sent   map[int64]*[chunkWords]uint64
	zero   []byte // a zero page, made on first use

	ramID   uint32
	ramSeen bool
	ramDone bool
}

func (s *splitter) split() error {
	s.last = -1
	if err := s.libvirtHeader(); err != nil {
		return err
	}
	s.layout.StreamOffset = s.off
	b, err := s.take(8, "QEMU's stream header")
	if err != nil {
		return err
	}
	if m := binary.BigEndian.Uint32(b); m != qemuMagic {
		return unsupported("QEMU's stream at byte %d starts with %#x, not QEVM (%#x)", s.layout.StreamOffset, m, qemuMagic)
	}
	if v := binary.BigEndian.Uint32(b[4:]); v != qemuVersion {
		return unsupported("QEMU's stream has version %d; only version %d is known", v, qemuVersion)
	}
	first := true
	for {
		t, err := s.byte("a section type")
		if err != nil {
			return err
		}
		switch t {
		case secConfiguration:
			if !first {
				return unsupported("a configuration record at byte %d, after the first section", s.off-1)
			}
			if err := s.configuration(); err != nil {
				return err
			}
		case secStart:
			if err := s.start(); err != nil {
				return err
			}
		case secPart, secEnd:
			if err := s.part(t == secEnd); err != nil {
				return err
			}
		case secCommand:
			if err := s.command(); err != nil {
				return err
			}
		case secFull, secEOF:
			if !s.ramDone {
				return unsupported("device state or the end of the stream at byte %d before the RAM section ended", s.off-1)
			}
			return s.rest()
		default:
			return unsupported("unknown section type %#x at byte %d", t, s.off-1)
		}
		first = false
	}
}

func (s *splitter) libvirtHeader() error {
	b, err := s.take(libvirtHeader, "libvirt's header")
	if err != nil {
		return err
	}
	switch string(b[:16]) {
	case libvirtMagic:
	case libvirtPartial:
		return unsupported("libvirt marks the save file unfinished (%q): wait for the save to complete", libvirtPartial)
	default:
		return unsupported("not a libvirt save file: it starts with %q, not %q", b[:16], libvirtMagic)
	}
	le := binary.LittleEndian
	version, dataLen, format := le.Uint32(b[16:]), le.Uint32(b[20:]), le.Uint32(b[28:])
	if version != 1 && version != 2 {
		return unsupported("libvirt header version %d (byte-swapped or newer); only 1 and 2 are known", version)
	}
	if format != 0 {
		return unsupported("libvirt save format %d: the file is compressed or sparse, only raw (0) can be split", format)
	}
	return s.literal(int64(dataLen), "the domain XML of libvirt's header")
}

// configuration reads the configuration record after its type byte: the
// machine type and subsections (the vmstate "configuration" in savevm.c).
func (s *splitter) configuration() error {
	b, err := s.take(4, "the configuration's length")
	if err != nil {
		return err
	}
	if n := binary.BigEndian.Uint32(b); n > 1024 {
		return unsupported("a machine type of %d bytes in the configuration", n)
	} else if err := s.literal(int64(n), "the machine type"); err != nil {
		return err
	}
	for {
		p, err := s.br.Peek(1)
		if err != nil || p[0] != secSubsection {
			return nil // a short file is caught by the next read
		}
		name, err := s.subsectionHeader()
		if err != nil {
			return err
		}
		switch name {
		case "configuration/target-page-bits":
			b, err := s.take(4, "the target page bits")
			if err != nil {
				return err
			}
			if bits := binary.BigEndian.Uint32(b); 1<<bits != PageSize {
				return unsupported("target pages of 2^%d bytes; only %d-byte pages can be split", bits, PageSize)
			}
		case "configuration/capabilities":
			b, err := s.take(4, "the capability count")
			if err != nil {
				return err
			}
			for range binary.BigEndian.Uint32(b) {
				n, err := s.byte("a capability's length")
				if err != nil {
					return err
				}
				if err := s.literal(int64(n), "a capability's name"); err != nil {
					return err
				}
			}
		case "configuration/uuid":
			if err := s.literal(16, "the VM's UUID"); err != nil {
				return err
			}
		default:
			return unsupported("unknown configuration subsection %q", name)
		}
	}
}

func (s *splitter) subsectionHeader() (string, error) {
	if _, err := s.take(1, "a subsection"); err != nil {
		return "", err
	}
	name, err := s.name("a subsection's name")
	if err != nil {
		return "", err
	}
	_, err = s.take(4, "a subsection's version")
	return name, err
}

// start reads a START section after its type byte: it must be ram's.
func (s *splitter) start() error {
	b, err := s.take(4, "a section id")
	if err != nil {
		return err
	}
	id := binary.BigEndian.Uint32(b)
	name, err := s.name("a section name")
	if err != nil {
		return err
	}
	if name != "ram" {
		return unsupported("an iterable section %q besides ram (a disk or device migrated live?)", name)
	}
	if s.ramSeen {
		return unsupported("a second ram section")
	}
	b, err = s.take(8, "ram's instance and version")
	if err != nil {
		return err
	}
	if v := binary.BigEndian.Uint32(b[4:]); v != ramVersion {
		return unsupported("ram section version %d; only %d is known", v, ramVersion)
	}
	s.ramID, s.ramSeen = id, true
	if err := s.ram(); err != nil {
		return err
	}
	return s.footer(id)
}

// part reads a PART or END section after its type byte.
func (s *splitter) part(end bool) error {
	b, err := s.take(4, "a section id")
	if err != nil {
		return err
	}
	id := binary.BigEndian.Uint32(b)
	if !s.ramSeen || id != s.ramID || s.ramDone {
		return unsupported("a section part at byte %d for section %d, which is not an open ram section", s.off-5, id)
	}
	if err := s.ram(); err != nil {
		return err
	}
	s.ramDone = end
	return s.footer(id)
}

func (s *splitter) footer(id uint32) error {
	p, err := s.br.Peek(1)
	if err != nil || p[0] != secFooter {
		return nil // footers are optional; a short file is caught by the next read
	}
	b, err := s.take(5, "a section footer")
	if err != nil {
		return err
	}
	if got := binary.BigEndian.Uint32(b[1:]); got != id {
		return unsupported("the footer at byte %d closes section %d, not %d", s.off-5, got, id)
	}
	return nil
}

func (s *splitter) command() error {
	b, err := s.take(4, "a command")
	if err != nil {
		return err
	}
	return s.literal(int64(binary.BigEndian.Uint16(b[2:])), "a command's data")
}

// ram reads the records of one ram section's payload, up to EOS.
func (s *splitter) ram() error {
	for {
		b, err := s.take(8, "a RAM record header")
		if err != nil {
			return err
		}
		at := s.off - 8
		h := binary.BigEndian.Uint64(b)
		addr, flags := int64(h&^flagMask), h&flagMask
		kind := flags &^ flagContinue
		if flags&flagContinue != 0 && (kind == flagEOS || kind == flagMultifdFlush || kind == flagMemSize) {
			return unsupported("RAM record at byte %d has CONTINUE (%#x) without a page", at, flags)
		}
		switch kind {
		case flagEOS:
			return nil
		case flagMultifdFlush:
		case flagMemSize:
			if err := s.blockList(h &^ flagMask); err != nil {
				return err
			}
		case flagZero:
			blk, err := s.block(flags, addr, at)
			if err != nil {
				return err
			}
			c, err := s.byte("a zero page's fill byte")
			if err != nil {
				return err
			}
			if c != 0 {
				return unsupported("a zero-page record at byte %d fills with %#x, not 0", at, c)
			}
			if err := s.zeroPage(blk.Offset + addr); err != nil {
				return err
			}
		case flagPage:
			blk, err := s.block(flags, addr, at)
			if err != nil {
				return err
			}
			if err := s.page(blk.Offset + addr); err != nil {
				return err
			}
		default:
			return unsupported("RAM record at byte %d has flags %#x (%s)", at, flags, flagNames(flags))
		}
	}
}

func flagNames(flags uint64) string {
	switch {
	case flags&flagXBZRLE != 0:
		return "XBZRLE delta pages: turn the xbzrle capability off for saves"
	case flags&flagCompress != 0:
		return "compressed pages: turn compression off for saves"
	case flags&flagHook != 0:
		return "an RDMA hook"
	case flags&flagFull != 0:
		return "the obsolete FULL flag"
	}
	return "a combination this package does not know"
}

// blockList reads MEM_SIZE's list of blocks, whose used lengths add up to
// total, and lays the blocks out in the image.
func (s *splitter) blockList(total uint64) error {
	if s.layout.Blocks != nil {
		return unsupported("a second RAM block list")
	}
	s.layout.Blocks = []Block{}
	left := total
	for left > 0 {
		if len(s.layout.Blocks) == maxBlocks {
			return unsupported("more than %d RAM blocks", maxBlocks)
		}
		name, err := s.name("a RAM block's name")
		if err != nil {
			return err
		}
		b, err := s.take(8, "a RAM block's length")
		if err != nil {
			return err
		}
		n := binary.BigEndian.Uint64(b)
		if name == "" || n > left || n%PageSize != 0 || n > maxBlockLength {
			return unsupported("RAM block list does not add up at %q (%d bytes of %d left): "+
				"postcopy, ignore-shared or mapped-ram add fields this package does not read", name, n, left)
		}
		if _, dup := s.names[name]; dup {
			return unsupported("RAM block %q is listed twice", name)
		}
		left -= n
		off := (s.layout.ImageSize + BlockAlign - 1) &^ (BlockAlign - 1)
		s.names[name] = len(s.layout.Blocks)
		s.layout.Blocks = append(s.layout.Blocks, Block{Name: name, Offset: off, Length: int64(n)})
		s.layout.ImageSize = off + int64(n)
	}
	return nil
}

// block finds the block of a page record at byte at: the last one under
// CONTINUE, else the one named next in the stream.
func (s *splitter) block(flags uint64, addr, at int64) (Block, error) {
	if flags&flagContinue == 0 {
		name, err := s.name("a page's block name")
		if err != nil {
			return Block{}, err
		}
		i, ok := s.names[name]
		if !ok {
			return Block{}, unsupported("page record at byte %d is for RAM block %q, which the block list lacks", at, name)
		}
		s.last = i
	} else if s.last < 0 {
		return Block{}, unsupported("page record at byte %d continues a block but none came before", at)
	}
	blk := s.layout.Blocks[s.last]
	if addr+PageSize > blk.Length {
		return Block{}, unsupported("page record at byte %d is at %#x, past the end of RAM block %q (%#x bytes)", at, addr, blk.Name, blk.Length)
	}
	return blk, nil
}

func (s *splitter) page(off int64) error {
	if err := s.flush(); err != nil {
		return err
	}
	p, err := s.br.Peek(PageSize)
	if err != nil {
		return s.short(err, "a page")
	}
	if _, err := s.image.WriteAt(p, off); err != nil {
		return fmt.Errorf("writing the page at %#x of the image: %w", off, err)
	}
	if err := s.recipe.Copy(off, PageSize); err != nil {
		return err
	}
	s.br.Discard(PageSize)
	s.off += PageSize
	s.layout.Pages++
	if s.mark(off) {
		s.layout.RepeatedPages++
	}
	return nil
}

// zeroPage writes zeros at off only when a page was written there before.
func (s *splitter) zeroPage(off int64) error {
	s.layout.ZeroPages++
	if !s.isSent(off) {
		return nil
	}
	if s.zero == nil {
		s.zero = make([]byte, PageSize)
	}
	if _, err := s.image.WriteAt(s.zero, off); err != nil {
		return fmt.Errorf("zeroing the page at %#x of the image: %w", off, err)
	}
	return nil
}

// mark records that the page at image offset off was written and reports
// whether it had been before.
func (s *splitter) mark(off int64) bool {
	page := off / PageSize
	c := s.sent[page/chunkPages]
	if c == nil {
		c = new([chunkWords]uint64)
		s.sent[page/chunkPages] = c
	}
	i := page % chunkPages
	was := c[i/64]&(1<<(i%64)) != 0
	c[i/64] |= 1 << (i % 64)
	return was
}

func (s *splitter) isSent(off int64) bool {
	page := off / PageSize
	c := s.sent[page/chunkPages]
	i := page % chunkPages
	return c != nil && c[i/64]&(1<<(i%64)) != 0
}

// rest passes everything after the RAM (device state, EOF, the JSON
// description, trailing bytes) through as literal.
func (s *splitter) rest() error {
	if err := s.flush(); err != nil {
		return err
	}
	for {
		n := s.br.Buffered()
		if n == 0 {
			_, err := s.br.Peek(1)
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return fmt.Errorf("reading the save file at byte %d: %w", s.off, err)
			}
			continue
		}
		p, _ := s.br.Peek(n)
		if err := s.recipe.Literal(p); err != nil {
			return err
		}
		s.br.Discard(n)
		s.off += int64(n)
		s.layout.LiteralBytes += int64(n)
	}
}

// take reads n bytes (n <= literalBuffer) as literal and returns them; the
// slice is valid until the next read.
func (s *splitter) take(n int, what string) ([]byte, error) {
	if len(s.lit)+n > cap(s.lit) {
		if err := s.flush(); err != nil {
			return nil, err
		}
	}
	p, err := s.br.Peek(n)
	if err != nil {
		return nil, s.short(err, what)
	}
	s.lit = append(s.lit, p...)
	s.br.Discard(n)
	s.off += int64(n)
	return s.lit[len(s.lit)-n:], nil
}

func (s *splitter) byte(what string) (byte, error) {
	b, err := s.take(1, what)
	if err != nil {
		return 0, err
	}
	return b[0], nil
}

// name reads a length byte and that many bytes of name.
func (s *splitter) name(what string) (string, error) {
	n, err := s.byte(what)
	if err != nil {
		return "", err
	}
	b, err := s.take(int(n), what)
	if err != nil {
		return "", err
	}
	return string(b), nil
}

// literal reads n bytes of any length as literal.
func (s *splitter) literal(n int64, what string) error {
	for n > 0 {
		k := int(min(n, literalBuffer))
		if _, err := s.take(k, what); err != nil {
			return err
		}
		n -= int64(k)
	}
	return nil
}

func (s *splitter) flush() error {
	if len(s.lit) == 0 {
		return nil
	}
	s.layout.LiteralBytes += int64(len(s.lit))
	err := s.recipe.Literal(s.lit)
	s.lit = s.lit[:0]
	return err
}

// short turns a failed read into an error that says where the file ends.
func (s *splitter) short(err error, what string) error {
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		return fmt.Errorf("the save file is cut short at byte %d, in %s (was the save interrupted?): %w",
			s.off+int64(s.br.Buffered()), what, io.ErrUnexpectedEOF)
	}
	return fmt.Errorf("reading %s at byte %d of the save file: %w", what, s.off, err)
}

func unsupported(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrUnsupported, fmt.Sprintf(format, args...))
}
