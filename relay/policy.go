package relay

import (
	"fmt"

	"github.com/handoff-dev/handoff/units"
)

// Mode is how the sender puts the next stretch of the stream on the link.
type Mode int

const (
	// Fast compresses with zstd's fastest level: a gigabit link on a
	// small machine.
	Fast Mode = iota
	// Dense compresses with zstd's better level: a home link, where every
	// byte saved is link time saved and the CPU has time to spare.
	Dense
	// Raw passes the stream through as it comes: it does not compress, or
	// the compressor would be slower than the link.
	Raw
)

func (m Mode) String() string {
	switch m {
	case Fast:
		return "zstd fast"
	case Dense:
		return "zstd better"
	}
	return "passthrough"
}

// Measure is what the sender saw over its last window.
type Measure struct {
	// Ratio is compressed over raw bytes of what was compressed (a sample
	// of the stream while passing through); zero: nothing compressed yet.
	Ratio float64
	// CompressRate is raw bytes/s through zstd's fastest level, one core.
	CompressRate float64
	// LinkRate is the bytes/s the link took while it was full (writes
	// waited on it); zero: it never was, the link kept up.
	LinkRate float64
	// Busy is the share of the window the compressor worked: near 1 it,
	// not the link or the source, held the stream back.
	Busy float64
}

const (
	// worthRatio: above it the stream is treated as incompressible (pages
	// already compressed, encrypted swap).
	worthRatio = 0.9
	// denseCost is how much slower zstd's better level is than its
	// fastest on guest memory, both streamed in 50 KiB flushes: 36 against
	// 187 MB/s on one core here, for the lab guest's save stream (35% and
	// 49% of it), so it is taken where the link, not the CPU, is short.
	denseCost = 5.2
	// headroom keeps a mode only when its rate beats the other's clearly:
	// the measures are noisy and the mode should not flap.
	headroom = 1.25
	// fastHeadroom is how much faster than the link the compressor must
	// be for compressing to pay at all: its measured rate is one core's,
	// but while it compresses, TLS, QEMU's migration thread, the guest's
	// vCPU and the far end's decompressor take the same two cores. At
	// 1 Gbit/s (link 118 MB/s, compressor ~165 MB/s) compressing took
	// 1.9-4.0 s against 1.4 s passed through.
	fastHeadroom = 2.0
	// busyLimit: a compressor busier than this is the bottleneck.
	busyLimit = 0.85
)

// Choose picks the mode for the next window from the last one's measures,
// and says why. Compressing pays when the compressor outruns the link: the
// link then carries Ratio times fewer bytes for the same pages. When the
// link was never full nothing shows its rate: a compressor that was the
// bottleneck then gives way to passthrough, which fills the link and so
// measures it for the next window.
func Choose(m Measure) (Mode, string) {
	switch {
	case m.Ratio == 0 || m.CompressRate == 0:
		// Passing through costs nothing and fills a fast link at once, which
		// measures it; a slow link loses only a window's compression.
		return Raw, "nothing measured yet: passing through while sampling"
	case m.Ratio > worthRatio:
		return Raw, fmt.Sprintf("the stream does not compress (%.0f%%)", 100*m.Ratio)
	case m.LinkRate == 0 && m.Busy > busyLimit:
		return Raw, fmt.Sprintf("the compressor (%s) holds the stream back and the link keeps up", units.Rate(m.CompressRate))
	case m.LinkRate == 0:
		return Fast, "the link keeps up; compressing saves its bytes"
	case m.CompressRate/denseCost > headroom*m.LinkRate/m.Ratio:
		return Dense, fmt.Sprintf("the link (%s) is far slower than the compressor (%s)", units.Rate(m.LinkRate), units.Rate(m.CompressRate))
	case m.CompressRate > fastHeadroom*m.LinkRate:
		return Fast, fmt.Sprintf("the compressor (%s) outruns the link (%s)", units.Rate(m.CompressRate), units.Rate(m.LinkRate))
	}
	return Raw, fmt.Sprintf("the link (%s) outruns the compressor (%s)", units.Rate(m.LinkRate), units.Rate(m.CompressRate))
}
