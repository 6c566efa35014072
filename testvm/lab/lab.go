package lab

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/handoff-dev/handoff/libvirt"
	"github.com/handoff-dev/handoff/testvm"
)

// DefaultDir is where the lab keeps its state; /run is emptied at boot, as
// a lab does not outlive the machine's processes.
const DefaultDir = "/run/handoff-lab"

// GuestName is the test guest's domain name on both hosts.
const GuestName = "handoff-guest"

// Host is one of the lab's two machines.
type Host struct {
	Name     string // "server" or "workstation"
	User     string // system user that runs its libvirt daemon
	Netns    string
	Dev      string // its end of the veth link
	Addr     string // its address on the link
	Dir      string
	Socket   string // the libvirt daemon's unix socket
	URI      string // libvirt URI root uses to reach the daemon
	PID      int    // the libvirt daemon
	HostUUID string
}

// Lab is a running lab, as recorded in its state file.
type Lab struct {
	Dir         string
	Server      Host
	Workstation Host
	Link        Link
	Guest       GuestConfig
	// GuestKind is the guest that runs (both are defined on the server);
	// GuestDomain its domain name, SerialLog its serial log.
	GuestKind   GuestKind `json:",omitempty"`
	GuestDomain string    `json:",omitempty"`
	SerialLog   string
	// GuestDisk is the Debian guest's disk on the server, in a folder only
	// the server's libvirt user reads; WorkstationImages is the
	// workstation's such folder, its libvirt user's, for disks it receives.
	GuestDisk         string `json:",omitempty"`
	WorkstationImages string `json:",omitempty"`
	// UFFD is vm.unprivileged_userfaultfd before the lab set it, restored by Down.
	UFFD string
	// NAT is set when the workstation accepts no inbound connections and
	// reaches the server over SSH at ServerSSHURI (run from inside the
	// workstation's namespace).
	NAT          bool   `json:",omitempty"`
	ServerSSHURI string `json:",omitempty"`

	progress io.Writer
}

// GuestConfig sizes the test guest.
type GuestConfig struct {
	MemMB     int
	DirtyMBps float64
	WSSMB     int
}

// DefaultGuest is the guest the issue asks for: 256 MiB, 2 MB/s over 64 MB.
var DefaultGuest = GuestConfig{MemMB: 256, DirtyMBps: 2, WSSMB: 64}

// DefaultDesktop sizes the Debian guest: 512 MiB, its disk records
// written and checked every tick, and no extra memory dirtied: the disk
// tests are about disks, and a still memory keeps their moves short on
// two shared cores.
var DefaultDesktop = GuestConfig{MemMB: DesktopMemMB, DirtyMBps: 0, WSSMB: 32}

// Config is what Up builds.
type Config struct {
	Dir      string // default DefaultDir
	Link     Link
	Guest    GuestConfig
	CacheDir string    // testvm's cache; default the user's cache directory
	NAT      bool      // put the workstation behind NAT; the server behind SSH
	Handoff  string    // the handoff binary the server runs as 'handoff serve'
	Progress io.Writer // one line per slow step; may be nil

	// GuestKind is the guest to run: Busybox (the default) or Desktop.
	GuestKind GuestKind
}

// hosts names the lab's two hosts. The default lab has plain names; a lab
// in another directory (a test's) gets a tag from it, so that it can never
// touch the user's own lab.
func hosts(dir string) (Host, Host) {
	tag := ""
	if filepath.Clean(dir) != DefaultDir {
		sum := sha256.Sum256([]byte(filepath.Clean(dir)))
		tag = hex.EncodeToString(sum[:2])
	}
	mk := func(name, user, ns, dev, addr, uuid string) Host {
		if tag != "" {
			user, ns, dev = user+"-"+tag, ns+"-"+tag, dev[:len(dev)-1]+tag
		}
		d := filepath.Join(dir, name)
		sock := filepath.Join(d, "run", "libvirt", "libvirt-sock")
		return Host{Name: name, User: user, Netns: ns, Dev: dev, Addr: addr, Dir: d, Socket: sock,
			URI: "qemu+unix:///session?socket=" + sock, HostUUID: uuid}
	}
	// TEST-NET-1 addresses: documentation-only, they can never be anyone's.
	return mk("server", "handoff-srv", "handoff-srv", "hsrv0", "192.0.2.1", "5a1f0c3e-0000-4000-8000-000000000001"),
		mk("workstation", "handoff-ws", "handoff-ws", "hws0", "192.0.2.2", "5a1f0c3e-0000-4000-8000-000000000002")
}

// Up starts the lab, or returns the one already running in cfg.Dir if it is
// healthy. A broken or half-made lab is taken down first.
func Up(ctx context.Context, cfg Config) (*Lab, error) {
	if cfg.Dir == "" {
		cfg.Dir = DefaultDir
	}
	if cfg.Link == (Link{}) {
		cfg.Link = DefaultLink
	}
	if cfg.GuestKind == "" {
		cfg.GuestKind = Busybox
	}
	if cfg.Guest == (GuestConfig{}) {
		cfg.Guest = DefaultGuest
		if cfg.GuestKind == Desktop {
			cfg.Guest = DefaultDesktop
		}
	}
	if _, err := ParseGuestKind(string(cfg.GuestKind)); err != nil {
		return nil, err
	}
	if _, err := ShapeCommands("x", cfg.Link, true); err != nil {
		return nil, err
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("the lab needs root (network namespaces, users and tc): run it with sudo")
	}
	say := func(format string, a ...any) {
		if cfg.Progress != nil {
			fmt.Fprintf(cfg.Progress, format+"\n", a...)
		}
	}
	if l, err := Load(cfg.Dir); err == nil {
		healthy := l.healthy(ctx)
		switch {
		case healthy && l.NAT == cfg.NAT && l.kind() == cfg.GuestKind:
			say("lab already up in %s", cfg.Dir)
			return l, nil
		case healthy:
			say("the lab in %s runs another setup (the %s guest, NAT %v); making it anew", cfg.Dir, l.kind(), l.NAT)
		default:
			say("taking down a broken lab in %s", cfg.Dir)
		}
	}
	if err := Down(ctx, cfg.Dir); err != nil {
		return nil, err
	}

	if warning := qemuWarning(ctx); warning != "" {
		say("%s", warning)
	}
	say("building the test guests")
	guests, err := buildGuests(ctx, cfg.GuestKind, cfg.CacheDir, cfg.Progress, say)
	if err != nil {
		return nil, err
	}

	srv, ws := hosts(cfg.Dir)
	l := &Lab{Dir: cfg.Dir, Server: srv, Workstation: ws, Link: cfg.Link, Guest: cfg.Guest, GuestKind: cfg.GuestKind,
		SerialLog: filepath.Join(cfg.Dir, "guest", "serial.log"), progress: cfg.Progress}
	ok := false
	defer func() {
		if !ok {
			// Leave nothing behind a failed Up: a half lab breaks the next run.
			Down(context.WithoutCancel(ctx), cfg.Dir)
		}
	}()
	if err := os.MkdirAll(filepath.Join(cfg.Dir, "guest"), 0o755); err != nil {
		return nil, fmt.Errorf("make lab directory: %w", err)
	}
	// The state file goes first, so Down knows what to remove even if Up
	// dies halfway.
	if err := l.save(); err != nil {
		return nil, err
	}
	if l.UFFD, err = setSysctl("vm.unprivileged_userfaultfd", "1"); err != nil {
		return nil, fmt.Errorf("allow post-copy for unprivileged QEMU: %w", err)
	}
	if err := l.save(); err != nil {
		return nil, err
	}

	say("making hosts %s and %s", srv.Netns, ws.Netns)
	if err := l.makeNetwork(ctx); err != nil {
		return nil, err
	}
	for _, h := range []*Host{&l.Server, &l.Workstation} {
		say("starting libvirtd for the %s (user %s)", h.Name, h.User)
		if err := startDaemon(ctx, h); err != nil {
			return nil, err
		}
		if err := l.save(); err != nil {
			return nil, err
		}
	}
	for _, h := range []*Host{&l.Server, &l.Workstation} {
		if err := waitForDaemon(ctx, h); err != nil {
			return nil, err
		}
	}
	if err := l.startServe(ctx, cfg.Handoff); err != nil {
		return nil, err
	}
	if cfg.NAT {
		say("putting the workstation behind NAT; the server answers SSH on %s", l.Server.Addr)
		if err := l.startNAT(ctx); err != nil {
			return nil, err
		}
	}
	if err := l.prepareImages(ctx, guests); err != nil {
		return nil, err
	}
	say("starting the %s guest %s on the server (dirtying %.1f MB/s over %d MB)", cfg.GuestKind, cfg.GuestKind.Domain(), cfg.Guest.DirtyMBps, cfg.Guest.WSSMB)
	if err := l.defineGuests(ctx, guests); err != nil {
		return nil, err
	}
	if err := l.WaitTick(ctx, 1, cfg.GuestKind.firstTickWithin()); err != nil {
		return nil, err
	}
	ok = true
	say("lab up: server %s, workstation %s", l.Server.URI, l.Workstation.URI)
	return l, nil
}

func (l *Lab) statePath() string { return filepath.Join(l.Dir, "lab.json") }

func (l *Lab) save() error {
	b, err := json.MarshalIndent(l, "", "  ")
	if err != nil {
		return err
	}
	tmp := l.statePath() + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return fmt.Errorf("save lab state: %w", err)
	}
	return os.Rename(tmp, l.statePath())
}

// ErrNoLab is returned (wrapped) by Load when no lab is up.
var ErrNoLab = errors.New("no lab is up")

// Load reads the state of the lab in dir.
func Load(dir string) (*Lab, error) {
	if dir == "" {
		dir = DefaultDir
	}
	b, err := os.ReadFile(filepath.Join(dir, "lab.json"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w in %s: start one with 'handoff lab up'", ErrNoLab, dir)
	}
	if err != nil {
		return nil, fmt.Errorf("read lab state: %w", err)
	}
	var l Lab
	if err := json.Unmarshal(b, &l); err != nil {
		return nil, fmt.Errorf("lab state %s is damaged (%v): run 'handoff lab down' and start again", dir, err)
	}
	return &l, nil
}

func (l *Lab) healthy(ctx context.Context) bool {
	for _, h := range []Host{l.Server, l.Workstation} {
		if h.PID == 0 || syscall.Kill(h.PID, 0) != nil {
			return false
		}
		c, err := libvirt.Connect(ctx, h.URI)
		if err != nil {
			return false
		}
		c.Close()
	}
	return true
}

func (l *Lab) makeNetwork(ctx context.Context) error {
	srv, ws := l.Server, l.Workstation
	steps := [][]string{
		{"ip", "netns", "add", srv.Netns},
		{"ip", "netns", "add", ws.Netns},
		{"ip", "link", "add", srv.Dev, "type", "veth", "peer", "name", ws.Dev},
		{"ip", "link", "set", srv.Dev, "netns", srv.Netns},
		{"ip", "link", "set", ws.Dev, "netns", ws.Netns},
	}
	for _, h := range []Host{srv, ws} {
		steps = append(steps,
			[]string{"ip", "-n", h.Netns, "addr", "add", h.Addr + "/24", "dev", h.Dev},
			[]string{"ip", "-n", h.Netns, "link", "set", h.Dev, "up"},
			[]string{"ip", "-n", h.Netns, "link", "set", "lo", "up"},
		)
	}
	for _, s := range steps {
		if err := run(ctx, s...); err != nil {
			return err
		}
	}
	warning, err := l.Shape(ctx, l.Link)
	if warning != "" && l.progress != nil {
		fmt.Fprintln(l.progress, "warning:", warning)
	}
	return err
}

// Shape sets the link's bandwidth and round trip in both directions. It
// returns a warning, not an error, when the kernel cannot add delay.
func (l *Lab) Shape(ctx context.Context, link Link) (warning string, err error) {
	withNetem := hasNetem(ctx, l.Server.Netns, l.Server.Dev)
	if link.RTT > 0 && !withNetem {
		warning = fmt.Sprintf("this kernel has no netem qdisc: the link runs at %s but without the %v round trip", link.Bandwidth, link.RTT)
	}
	for _, h := range []Host{l.Server, l.Workstation} {
		cmds, err := ShapeCommands(h.Dev, link, withNetem)
		if err != nil {
			return "", err
		}
		// A fresh root first: replacing tbf by netem keeps no stale child.
		run(ctx, "ip", "netns", "exec", h.Netns, "tc", "qdisc", "del", "dev", h.Dev, "root")
		for _, c := range cmds {
			if err := run(ctx, append([]string{"ip", "netns", "exec", h.Netns, "tc"}, c...)...); err != nil {
				return "", fmt.Errorf("shape the lab link: %w", err)
			}
		}
	}
	l.Link = link
	return warning, l.save()
}

// SetLink takes the lab link down (a laptop that left the network: both
// ends' interfaces down, connections over it stall) or up again.
func (l *Lab) SetLink(ctx context.Context, up bool) error {
	state := "down"
	if up {
		state = "up"
	}
	for _, h := range []Host{l.Server, l.Workstation} {
		if err := run(ctx, "ip", "-n", h.Netns, "link", "set", h.Dev, state); err != nil {
			return fmt.Errorf("set the lab link %s: %w", state, err)
		}
	}
	return nil
}

// ResetConnections destroys every TCP connection between the two hosts
// (ss -K), as a NAT that forgets them or a laptop that changes networks
// does: each end sees a reset at once, where a cut link alone leaves TCP
// retransmitting for many minutes.
func (l *Lab) ResetConnections(ctx context.Context) error {
	for _, pair := range [][2]Host{{l.Server, l.Workstation}, {l.Workstation, l.Server}} {
		if err := run(ctx, "ip", "netns", "exec", pair[0].Netns, "ss", "-K", "dst", pair[1].Addr); err != nil {
			return fmt.Errorf("reset the lab's connections: %w", err)
		}
	}
	return nil
}

// hasNetem tries netem on the device; the root qdisc is set anew after.
func hasNetem(ctx context.Context, ns, dev string) bool {
	return run(ctx, "ip", "netns", "exec", ns, "tc", "qdisc", "replace", "dev", dev, "root", "netem", "delay", "1us") == nil
}

// prepareGuestFiles copies the busybox guest's kernel and initrd where
// both lab users can read them, and makes the serial log both QEMUs append
// to: the log then runs on across migrations, one tick after another.
func (l *Lab) prepareGuestFiles(g testvm.Guest) error {
	dir := l.guestDir()
	for src, dst := range map[string]string{g.Kernel: "vmlinuz", g.Initrd: "initrd"} {
		if err := copyFile(src, filepath.Join(dir, dst), 0o644); err != nil {
			return fmt.Errorf("copy guest %s: %w", dst, err)
		}
	}
	if err := os.Chmod(dir, 0o777); err != nil {
		return err
	}
	return makeSerialLog(filepath.Join(dir, "serial.log"))
}

func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// RestartGuest stops the guests wherever they run and starts the lab's
// guest afresh on the server with new settings (the Debian guest on a
// fresh disk), keeping the rest of the lab.
func (l *Lab) RestartGuest(ctx context.Context, g GuestConfig, progress io.Writer) error {
	say := func(format string, a ...any) {
		if progress != nil {
			fmt.Fprintf(progress, format+"\n", a...)
		}
	}
	l.GuestKind = l.kind()
	guests, err := buildGuests(ctx, l.GuestKind, "", progress, say)
	if err != nil {
		return err
	}
	if err := l.undefineGuests(ctx); err != nil {
		return err
	}
	l.Guest = g
	if err := l.prepareImages(ctx, guests); err != nil {
		return err
	}
	if err := l.defineGuests(ctx, guests); err != nil {
		return err
	}
	return l.WaitTick(ctx, 1, l.GuestKind.firstTickWithin())
}

// kind is the guest the lab runs (Busybox in a lab saved before there
// were two).
func (l *Lab) kind() GuestKind {
	if l.GuestKind == "" {
		return Busybox
	}
	return l.GuestKind
}

// DomainXML describes the busybox test guest: TCG (no KVM here), no disk
// and no NIC, so a migration moves memory and device state only; VNC on a
// unix socket libvirt places in each host's own directory.
func DomainXML(name string, memMB int, kernel, initrd, cmdline, serialLog string) string {
	return domainXML(name, memMB, kernel, initrd, cmdline, serialLog, "")
}

// DesktopXML describes the Debian guest: DomainXML's with its qcow2 disk
// on virtio. cache='none' (direct I/O on the host) is what a migration
// without shared storage wants, and it keeps the host's page cache out of
// what the guest's fsyncs promise.
func DesktopXML(name string, memMB int, kernel, initrd, cmdline, serialLog, disk string) string {
	return domainXML(name, memMB, kernel, initrd, cmdline, serialLog, disk)
}

func domainXML(name string, memMB int, kernel, initrd, cmdline, serialLog, disk string) string {
	esc := func(s string) string {
		var b bytes.Buffer
		xmlEscape(&b, s)
		return b.String()
	}
	diskXML, genID := "", ""
	if disk != "" {
		// The desktop guest is restored from checkpoints: each restore
		// gives it a new VM generation ID, which its kernel's vmgenid
		// driver reads to reseed its random numbers. Its agent's channel
		// lets a checkpoint have it flush its writes to the disk first.
		genID = "\n  <genid/>"
		diskXML = fmt.Sprintf(`    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='none'/>
      <source file='%s'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <channel type='unix'>
      <target type='virtio' name='org.qemu.guest_agent.0'/>
    </channel>
`, esc(disk))
	}
	return fmt.Sprintf(`<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>%s</name>%s
  <memory unit='MiB'>%d</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>%s</kernel>
    <initrd>%s</initrd>
    <cmdline>%s</cmdline>
  </os>
  <features><acpi/></features>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>%s</emulator>
%s    <serial type='file'>
      <source path='%s' append='on'/>
      <target port='0'/>
    </serial>
    <input type='keyboard' bus='ps2'/>
    <graphics type='vnc'>
      <listen type='socket'/>
    </graphics>
    <video><model type='vga'/></video>
    <memballoon model='none'/>
  </devices>
  <qemu:commandline>
    <qemu:arg value='-chardev'/>
    <qemu:arg value='socket,id=handoffqmp,path=%s,abstract=on,server=on,wait=off'/>
    <qemu:arg value='-mon'/>
    <qemu:arg value='chardev=handoffqmp,mode=control'/>
  </qemu:commandline>
</domain>
`, esc(name), genID, memMB, esc(kernel), esc(initrd), esc(cmdline), esc(qemuEmulator), diskXML, esc(serialLog), esc(monitorSocket(name)))
}

func xmlEscape(b *bytes.Buffer, s string) {
	r := strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;", "'", "&apos;", `"`, "&quot;")
	b.WriteString(r.Replace(s))
}

// WaitTick waits until the guest's serial log shows a tick of at least n.
func (l *Lab) WaitTick(ctx context.Context, n int, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		st, err := l.GuestSerial()
		if err == nil && st.Tick >= n {
			return nil
		}
		if st.Panic != "" {
			return fmt.Errorf("the test guest's kernel died after tick %d: %s (serial log %s)", st.Tick, st.Panic, l.SerialLog)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the test guest printed no tick %d within %v (serial log %s, last tick %d)", n, timeout, l.SerialLog, st.Tick)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// GuestSerial reads what the guest has said on its serial console so far.
func (l *Lab) GuestSerial() (testvm.Status, error) {
	f, err := os.Open(l.SerialLog)
	if err != nil {
		return testvm.Status{}, fmt.Errorf("read guest serial log: %w", err)
	}
	defer f.Close()
	return testvm.ParseSerialLog(f)
}

func run(ctx context.Context, args ...string) error {
	out, err := exec.CommandContext(ctx, args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

func setSysctl(key, value string) (old string, err error) {
	path := "/proc/sys/" + strings.ReplaceAll(key, ".", "/")
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	old = strings.TrimSpace(string(b))
	if old == value {
		return old, nil
	}
	return old, os.WriteFile(path, []byte(value), 0o644)
}
