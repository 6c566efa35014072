package switchover

import "fmt"

// Plan is how a migration is set up before it starts. QEMU cannot turn
// post-copy on together with compression or multifd, so the choice is made
// up front, from the dirty rate measured before the job and the link's rate.
type Plan struct {
	// Compress sends pages compressed (QEMU's "mt" zlib threads): fewer
	// bytes on a slow link, but no post-copy fallback.
	Compress bool
	// PostCopy keeps post-copy available for a guest that never converges.
	PostCopy bool
	Reason   string
}

// convergeMargin is how far below the link the dirty rate must be for
// pre-copy alone to be a safe bet: the guest's rate varies, and the policy
// needs several passes that shrink.
const convergeMargin = 0.5

// compressorRate is about what QEMU's zlib threads (level 1) get through on
// a small machine shared with the guest; on a faster link compression only
// slows the copy (measured on the lab: 1 Gbit/s, 4.2 s compressed against
// 1.2 s plain for the same guest).
const compressorRate = 40e6

// ChoosePlan picks compression when the guest dirties memory well below what
// the link carries, and post-copy otherwise. linkRate is the link's bytes/s
// (zero: unknown, so post-copy stays available: a plan that cannot finish
// must never be chosen blind). postCopyAllowed is false on hosts that lack
// userfaultfd.
func ChoosePlan(dirtyRate, linkRate float64, postCopyAllowed bool) Plan {
	switch {
	case linkRate <= 0 && postCopyAllowed:
		return Plan{PostCopy: true, Reason: "link rate unknown: keeping post-copy as the fallback"}
	case linkRate <= 0:
		return Plan{Compress: true, Reason: "link rate unknown and post-copy off: compressing"}
	case linkRate >= compressorRate && postCopyAllowed:
		return Plan{PostCopy: true, Reason: fmt.Sprintf("link %s outruns compression: plain pre-copy, post-copy ready", FormatRate(linkRate))}
	case dirtyRate < convergeMargin*linkRate:
		return Plan{Compress: true, Reason: fmt.Sprintf("guest dirties %s, well below the link's %s: compressing pre-copy", FormatRate(dirtyRate), FormatRate(linkRate))}
	case postCopyAllowed:
		return Plan{PostCopy: true, Reason: fmt.Sprintf("guest dirties %s against the link's %s: post-copy ready", FormatRate(dirtyRate), FormatRate(linkRate))}
	}
	return Plan{Compress: true, Reason: fmt.Sprintf("guest dirties %s against the link's %s and post-copy is off: compressing and hoping", FormatRate(dirtyRate), FormatRate(linkRate))}
}
