package testvm

import (
	"fmt"
	"io"
)

// cpioEntry is one file of an initramfs. The kernel reads the "newc"
// format; writing it here saves a dependency on the cpio tool and makes
// the archive byte-for-byte reproducible (owners and times are fixed).
type cpioEntry struct {
	Name  string
	Mode  uint32 // type and permission bits, as in stat(2)
	Data  []byte // contents of a regular file or the target of a symlink
	Major uint32 // device numbers of a device node
	Minor uint32
}

const (
	modeDir     = 0o040000
	modeRegular = 0o100000
	modeSymlink = 0o120000
	modeCharDev = 0o020000
)

// writeCPIO writes entries in newc format, then the trailer.
func writeCPIO(w io.Writer, entries []cpioEntry) error {
	cw := &countingWriter{w: w}
	for i, e := range append(entries, cpioEntry{Name: "TRAILER!!!"}) {
		nlink := 1
		if e.Mode&0o170000 == modeDir {
			nlink = 2
		}
		_, err := fmt.Fprintf(cw, "070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
			i+1, e.Mode, 0, 0, nlink, 0, len(e.Data), 0, 0, e.Major, e.Minor, len(e.Name)+1, 0)
		if err != nil {
			return err
		}
		if err := cw.writeAligned(append([]byte(e.Name), 0)); err != nil {
			return err
		}
		if err := cw.writeAligned(e.Data); err != nil {
			return err
		}
	}
	return nil
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// writeAligned writes p, then pads to the 4-byte boundary newc requires.
func (c *countingWriter) writeAligned(p []byte) error {
	if _, err := c.Write(p); err != nil {
		return err
	}
	if pad := (4 - c.n%4) % 4; pad > 0 {
		_, err := c.Write(make([]byte, pad))
		return err
	}
	return nil
}
