package libvirt

import (
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"

	"github.com/handoff-dev/handoff/switchover"
)

// jobStats is the part of a libvirt job-stats reply that handoff reads.
type jobStats struct {
	elapsed     time.Duration
	iteration   uint64
	dirtyPages  uint64 // pages/s
	pageSize    uint64
	bps         uint64 // memory bytes/s on the wire
	remaining   uint64
	transferred uint64
	total       uint64
	downtime    time.Duration
	hasDowntime bool // the side reported one: a hand back's source may not
	postcopyReq uint64

	diskTotal, diskRemaining, diskBps uint64
}

func parseJobStats(params []golibvirt.TypedParam) jobStats {
	var s jobStats
	for _, p := range params {
		v, ok := paramUint(p.Value)
		if !ok {
			continue
		}
		switch p.Field {
		case "time_elapsed":
			s.elapsed = time.Duration(v) * time.Millisecond
		case "memory_iteration":
			s.iteration = v
		case "memory_dirty_rate":
			s.dirtyPages = v
		case "memory_page_size":
			s.pageSize = v
		case "memory_bps":
			s.bps = v
		case "memory_remaining":
			s.remaining = v
		case "data_processed":
			s.transferred = v
		case "memory_total":
			s.total = v
		case "downtime":
			s.downtime, s.hasDowntime = time.Duration(v)*time.Millisecond, true
		case "memory_postcopy_requests":
			s.postcopyReq = v
		case "disk_total":
			s.diskTotal = v
		case "disk_remaining":
			s.diskRemaining = v
		case "disk_bps":
			s.diskBps = v
		}
	}
	if s.pageSize == 0 {
		s.pageSize = 4096
	}
	return s
}

// sample turns a job-stats reply into the policy's input. libvirt reports
// the dirty rate in pages per second; the policy wants bytes.
func (s jobStats) sample(phase switchover.Phase) switchover.Sample {
	return switchover.Sample{
		Elapsed:     s.elapsed,
		Phase:       phase,
		Iteration:   s.iteration,
		DirtyRate:   float64(s.dirtyPages * s.pageSize),
		Bandwidth:   float64(s.bps),
		Remaining:   s.remaining,
		Transferred: s.transferred,
		Total:       s.total,

		DiskRemaining: s.diskRemaining,
		DiskTotal:     s.diskTotal,
		DiskRate:      float64(s.diskBps),
	}
}

func paramUint(v golibvirt.TypedParamValue) (uint64, bool) {
	switch x := v.I.(type) {
	case uint64:
		return x, true
	case int64:
		return uint64(x), x >= 0
	case uint32:
		return uint64(x), true
	case int32:
		return uint64(x), x >= 0
	case float64:
		return uint64(x), x >= 0
	}
	return 0, false
}
