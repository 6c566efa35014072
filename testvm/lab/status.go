package lab

import (
	"context"
	"time"

	"github.com/handoff-dev/handoff/libvirt"
)

// Status is what 'handoff lab status --json' prints.
type Status struct {
	ServerURI      string `json:"server_uri"`
	WorkstationURI string `json:"workstation_uri"`
	Domain         string `json:"domain"`
	GuestHost      string `json:"guest_host"` // "server", "workstation", or "none"
	// MigratingFrom and MigratingSince are set while a migration of the
	// guest is under way: the host it leaves, and when it began (RFC 3339).
	// In post-copy the guest runs on the other host already.
	MigratingFrom  string  `json:"migrating_from,omitempty"`
	MigratingSince string  `json:"migrating_since,omitempty"`
	GuestTick      int     `json:"guest_tick"`
	GuestUptime    float64 `json:"guest_uptime"`
	GuestIntegrity string  `json:"guest_integrity"`       // "ok" or "FAIL"
	GuestPanic     string  `json:"guest_panic,omitempty"` // the guest kernel's death line, if it died
	Bandwidth      string  `json:"link_bandwidth"`
	RTTMillis      float64 `json:"link_rtt_ms"`
	SerialLog      string  `json:"serial_log"`
	// ServerSSHURI is set on a NAT lab: the server as the workstation
	// reaches it, from inside the workstation's namespace.
	ServerSSHURI     string      `json:"server_ssh_uri,omitempty"`
	WorkstationNetns string      `json:"workstation_netns"`
	Serve            ServeStatus `json:"serve"` // the server's handoff serve, as the workstation sees it

	// GuestProblem is what broke, when GuestIntegrity (memory and, on the
	// Debian guest, disk) is FAIL. GuestDiskIntegrity is the Debian guest's
	// disk verdict ("ok" or "FAIL"; "" for the busybox guest), GuestDiskSeq
	// its last fsynced record.
	GuestProblem       string `json:"guest_problem,omitempty"`
	GuestDiskIntegrity string `json:"guest_disk_integrity,omitempty"`
	GuestDiskSeq       int    `json:"guest_disk_seq,omitempty"`
}

// Status reports where the guest runs and what it last said.
func (l *Lab) Status(ctx context.Context) (Status, error) {
	st := Status{
		ServerURI: l.Server.URI, WorkstationURI: l.Workstation.URI, Domain: l.Domain(),
		GuestHost: "none", Bandwidth: l.Link.Bandwidth, RTTMillis: float64(l.Link.RTT.Microseconds()) / 1000,
		SerialLog: l.SerialLog, ServerSSHURI: l.ServerSSHURI, WorkstationNetns: l.Workstation.Netns,
	}
	st.Serve = l.serveStatus(ctx)
	host, err := l.GuestHost(ctx)
	if err != nil {
		return st, err
	}
	st.GuestHost = host
	if from, u, err := l.MigrationUnderWay(ctx); err == nil && u != nil {
		st.MigratingFrom, st.MigratingSince = from, u.Since.Format(time.RFC3339)
	}
	serial, err := l.GuestSerial()
	if err != nil {
		return st, err
	}
	st.GuestTick, st.GuestUptime, st.GuestIntegrity, st.GuestPanic = serial.Tick, serial.Uptime, serial.Integrity, serial.Panic
	st.GuestProblem, st.GuestDiskIntegrity, st.GuestDiskSeq = serial.Problem, serial.Disk, serial.DiskSeq
	return st, nil
}

// GuestHost names the host where the guest runs: "server", "workstation"
// or "none".
func (l *Lab) GuestHost(ctx context.Context) (string, error) {
	for _, h := range []Host{l.Server, l.Workstation} {
		c, err := libvirt.Connect(ctx, h.URI)
		if err != nil {
			return "", err
		}
		state := libvirt.StateShutoff
		if d, err := c.Lookup(l.Domain()); err == nil {
			state, _ = d.State()
		}
		c.Close()
		if state == libvirt.StateRunning {
			return h.Name, nil
		}
	}
	return "none", nil
}

// MigrationUnderWay finds an outgoing migration of the guest on either
// host: the host it leaves and the job, or a nil job.
func (l *Lab) MigrationUnderWay(ctx context.Context) (string, *libvirt.UnderWay, error) {
	for _, h := range []Host{l.Server, l.Workstation} {
		c, err := libvirt.Connect(ctx, h.URI)
		if err != nil {
			return "", nil, err
		}
		u, err := libvirt.FindUnderWay(c, l.Domain())
		c.Close()
		if err == nil && u != nil {
			return h.Name, u, nil
		}
	}
	return "", nil, nil
}

// Conns connects to both hosts' daemons; the caller closes them.
func (l *Lab) Conns(ctx context.Context) (server, workstation *libvirt.Conn, err error) {
	server, err = libvirt.Connect(ctx, l.Server.URI)
	if err != nil {
		return nil, nil, err
	}
	workstation, err = libvirt.Connect(ctx, l.Workstation.URI)
	if err != nil {
		server.Close()
		return nil, nil, err
	}
	return server, workstation, nil
}

// MigrateURI is where QEMU on the source host sends memory for a migration
// to dst: the destination's address on the lab link.
func (l *Lab) MigrateURI(dst string) string {
	if dst == l.Server.Name {
		return "tcp://" + l.Server.Addr
	}
	return "tcp://" + l.Workstation.Addr
}
