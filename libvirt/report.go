package libvirt

// ProgressRecord is one line of 'handoff migrate --json'.
type ProgressRecord struct {
	Phase            string  `json:"phase"`
	Iteration        uint64  `json:"iteration"`
	DirtyRateBps     float64 `json:"dirty_rate_bps"`
	BandwidthBps     float64 `json:"bandwidth_bps"`
	RemainingBytes   uint64  `json:"remaining_bytes"`
	TransferredBytes uint64  `json:"transferred_bytes"`
	TotalBytes       uint64  `json:"total_bytes"`
	DiskRemaining    uint64  `json:"disk_remaining_bytes,omitempty"`
	DiskTotal        uint64  `json:"disk_total_bytes,omitempty"`
	DiskRateBps      float64 `json:"disk_rate_bps,omitempty"`
	ElapsedMs        int64   `json:"elapsed_ms"`
	Decision         string  `json:"decision"`
	Converging       bool    `json:"converging"`
	SwitchInMs       int64   `json:"switch_in_ms"`
	Reason           string  `json:"reason"`
}

// Record is p as a --json line.
func (p Progress) Record() ProgressRecord {
	s, d := p.Sample, p.Decision
	return ProgressRecord{
		Phase: string(s.Phase), Iteration: s.Iteration, DirtyRateBps: s.DirtyRate, BandwidthBps: s.Bandwidth,
		RemainingBytes: s.Remaining, TransferredBytes: s.Transferred, TotalBytes: s.Total,
		DiskRemaining: s.DiskRemaining, DiskTotal: s.DiskTotal, DiskRateBps: s.DiskRate,
		ElapsedMs: s.Elapsed.Milliseconds(), Decision: string(d.Action), Converging: d.Converging,
		SwitchInMs: d.SwitchIn.Milliseconds(), Reason: d.Reason,
	}
}

// ResultRecord is the last line of 'handoff migrate --json'.
type ResultRecord struct {
	Phase            string `json:"phase"`
	Mode             string `json:"mode"`
	DowntimeMs       *int64 `json:"downtime_ms,omitempty"` // nil: neither side reported one
	TotalMs          int64  `json:"total_ms"`
	TransferredBytes uint64 `json:"transferred_bytes"`
	MemoryBytes      uint64 `json:"memory_bytes"`
	Iterations       uint64 `json:"iterations"`
	// DiskBytes is what the disks' own transfer put on the link, apart
	// from the migration stream.
	DiskBytes int64 `json:"disk_bytes,omitempty"`
	// RelayBytes is what the migration stream put on the link after
	// handoff's relay compressed it; TransferredBytes is QEMU's count.
	RelayBytes uint64 `json:"relay_bytes,omitempty"`
	Error      string `json:"error,omitempty"`
}

// Record is r as the final --json line.
func (r Result) Record() ResultRecord {
	var downtime *int64
	if r.DowntimeKnown {
		ms := r.Downtime.Milliseconds()
		downtime = &ms
	}
	return ResultRecord{Phase: "completed", Mode: r.Mode, DowntimeMs: downtime,
		TotalMs: r.Total.Milliseconds(), TransferredBytes: r.Transferred, MemoryBytes: r.MemoryTotal, Iterations: r.Iterations}
}

// Run migrates and calls onProgress for each report until the job ends.
func Run(m *Migration, onProgress func(Progress)) (Result, error) {
	for p := range m.Progress() {
		onProgress(p)
	}
	return m.Wait()
}
