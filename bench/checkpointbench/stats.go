package checkpointbench

import (
	"slices"
	"time"
)

type number interface{ ~int64 | ~float64 }

// Median is the middle of xs (the mean of the two middle ones for an even
// count); 0 for none. xs is left as it was.
func Median[T number](xs []T) T {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	m := len(s) / 2
	if len(s)%2 == 1 {
		return s[m]
	}
	return (s[m-1] + s[m]) / 2
}

// Worst is the largest of xs; 0 for none.
func Worst[T number](xs []T) T {
	if len(xs) == 0 {
		return 0
	}
	return slices.Max(xs)
}

// Summary is a link's checkpoints in the table's figures. The first
// checkpoint sends the whole memory file (and the disk since the move):
// its bytes stand apart, and the medians of bytes are of the later ones,
// the steady state; the pause and the time to commit take all.
type Summary struct {
	N                       int
	PauseMedian, PauseWorst time.Duration
	TookMedian, TookWorst   time.Duration
	FirstSent, FirstLink    int64
	// SentMedian and LinkMedian are over the checkpoints after the first;
	// Later is how many there are (0: no medians).
	SentMedian, LinkMedian int64
	Later                  int
	// MemoryBytes is the median memory file; -1 when no manifest was read.
	MemoryBytes int64
	// Of the later checkpoints whose Reference is known (Judged of them):
	// the median reference, and the median and worst of each one's link
	// bytes over its reference.
	Judged                  int
	RefMedian               int64
	RatioMedian, RatioWorst float64
}

// Summarize figures cps, in the order they were taken.
func Summarize(cps []Checkpoint) Summary {
	s := Summary{N: len(cps), MemoryBytes: -1}
	if len(cps) == 0 {
		return s
	}
	var pauses, took []time.Duration
	var sent, link, memory, refs []int64
	var ratios []float64
	for i, c := range cps {
		pauses, took = append(pauses, c.Pause), append(took, c.Took)
		if c.MemoryBytes >= 0 {
			memory = append(memory, c.MemoryBytes)
		}
		if i > 0 {
			sent, link = append(sent, c.Sent), append(link, c.LinkBytes)
			if c.Reference.Zstd > 0 {
				refs = append(refs, c.Reference.Zstd)
				ratios = append(ratios, float64(c.LinkBytes)/float64(c.Reference.Zstd))
			}
		}
	}
	s.PauseMedian, s.PauseWorst = Median(pauses), Worst(pauses)
	s.TookMedian, s.TookWorst = Median(took), Worst(took)
	s.FirstSent, s.FirstLink = cps[0].Sent, cps[0].LinkBytes
	s.SentMedian, s.LinkMedian, s.Later = Median(sent), Median(link), len(sent)
	if len(memory) > 0 {
		s.MemoryBytes = Median(memory)
	}
	if s.Judged = len(ratios); s.Judged > 0 {
		s.RefMedian, s.RatioMedian, s.RatioWorst = Median(refs), Median(ratios), Worst(ratios)
	}
	return s
}
