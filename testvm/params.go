package testvm

import (
	"fmt"
	"strconv"
	"strings"
)

// Params go on the guest's kernel command line and set its load.
type Params struct {
	DirtyMBps float64 // MB/s of memory the agent dirties; 0 leaves memory still
	WSSMB     int     // working set the dirtying walks over, MB; 0 means DefaultWSSMB
}

// DefaultWSSMB is the working set when Params leave it out: large enough
// that a dirty rate has room, small enough for a 256 MiB guest.
const DefaultWSSMB = 64

// kernelBaseArgs keep the boot quiet and fast under TCG: the serial console
// is slow, and the agent's lines should stand out in it.
const kernelBaseArgs = "console=ttyS0 edd=off quiet loglevel=3"

// KernelArgs is the full kernel command line for these parameters.
func (p Params) KernelArgs() string {
	return fmt.Sprintf("%s handoff.dirty=%s handoff.wss=%d", kernelBaseArgs,
		strconv.FormatFloat(p.DirtyMBps, 'f', -1, 64), p.withDefaults().WSSMB)
}

// DebianKernelArgs is the kernel command line of the Debian guest: its
// root disk, and the kernel log unthrottled, since the agent reports
// through it a line a second (and a line a key).
func (p Params) DebianKernelArgs() string {
	return "root=/dev/vda rw printk.devkmsg=on " + p.KernelArgs()
}

func (p Params) withDefaults() Params {
	if p.WSSMB <= 0 {
		p.WSSMB = DefaultWSSMB
	}
	return p
}

// ParseKernelArgs reads Params back from a kernel command line, as the
// agent does from /proc/cmdline. Unknown words are the kernel's and are
// ignored; a malformed handoff.* value is an error, so a typo never runs a
// test with a load nobody asked for.
func ParseKernelArgs(cmdline string) (Params, error) {
	var p Params
	for _, word := range strings.Fields(cmdline) {
		key, value, _ := strings.Cut(word, "=")
		var err error
		switch key {
		case "handoff.dirty":
			p.DirtyMBps, err = strconv.ParseFloat(value, 64)
			if err == nil && p.DirtyMBps < 0 {
				err = fmt.Errorf("negative rate")
			}
		case "handoff.wss":
			p.WSSMB, err = strconv.Atoi(value)
			if err == nil && p.WSSMB < 0 {
				err = fmt.Errorf("negative size")
			}
		default:
			continue
		}
		if err != nil {
			return Params{}, fmt.Errorf("kernel argument %q: %w", word, err)
		}
	}
	return p.withDefaults(), nil
}
