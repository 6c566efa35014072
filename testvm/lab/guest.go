package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/handoff-dev/handoff/libvirt"
	"github.com/handoff-dev/handoff/testvm"
)

// GuestKind names one of the lab's two guests. Both are defined on the
// server; Config.GuestKind says which one runs.
type GuestKind string

const (
	// Busybox is the tiny guest with no disk (GuestName): a migration moves
	// memory and device state only. Tests of memory alone use it.
	Busybox GuestKind = "busybox"
	// Desktop is the Debian 12 desktop guest (DesktopName): systemd on a
	// qcow2 disk kept on the server alone, with records on it checked
	// against memory every tick. Disk tests use it.
	Desktop GuestKind = "debian"
)

// DesktopName is the Debian guest's domain name.
const DesktopName = "handoff-desktop"

// DesktopMemMB is the Debian guest's memory: systemd, the agent's working
// set and the page cache fit with room to spare.
const DesktopMemMB = 512

// ParseGuestKind reads a --guest flag.
func ParseGuestKind(s string) (GuestKind, error) {
	switch k := GuestKind(s); k {
	case Busybox, Desktop:
		return k, nil
	case "":
		return Busybox, nil
	}
	return "", fmt.Errorf("unknown guest %q: busybox (memory only) or debian (a desktop on a disk)", s)
}

// Domain is the guest's domain name.
func (k GuestKind) Domain() string {
	if k == Desktop {
		return DesktopName
	}
	return GuestName
}

// firstTickWithin is how long a guest may take from start to its first
// tick: the Debian guest boots systemd under TCG, about a minute.
func (k GuestKind) firstTickWithin() time.Duration {
	if k == Desktop {
		return 240 * time.Second
	}
	return 90 * time.Second
}

// Domain is the running guest's domain name (GuestName in a lab saved
// before there were two guests).
func (l *Lab) Domain() string {
	if l.GuestDomain == "" {
		return GuestName
	}
	return l.GuestDomain
}

// guests are what the lab boots, built (or taken from the cache) once per
// Up or RestartGuest. The desktop is missing if it could not be built
// while the busybox guest was chosen: that lab works without it.
type guests struct {
	busybox testvm.Guest
	desktop *testvm.DebianGuest
}

func buildGuests(ctx context.Context, kind GuestKind, cacheDir string, progress io.Writer, say func(string, ...any)) (guests, error) {
	var g guests
	var err error
	opts := testvm.BuildOptions{CacheDir: cacheDir, Progress: progress}
	if g.busybox, err = testvm.Build(ctx, opts); err != nil {
		return g, fmt.Errorf("build the busybox test guest: %w", err)
	}
	d, err := testvm.BuildDebian(ctx, opts)
	switch {
	case err == nil:
		g.desktop = &d
	case kind == Desktop:
		return g, fmt.Errorf("build the Debian test guest: %w", err)
	default:
		say("warning: the Debian guest %s is not defined: %v", DesktopName, err)
	}
	return g, nil
}

// guestDir holds what both hosts read of the guests (kernels, initrds)
// and their serial logs, which both hosts' QEMUs append to.
func (l *Lab) guestDir() string { return filepath.Join(l.Dir, "guest") }

func (l *Lab) desktopSerialLog() string { return filepath.Join(l.guestDir(), "desktop-serial.log") }

// imagesDir is a host's own folder for guest disks: its libvirt user's
// alone (mode 700), so that nothing is shared between the hosts.
func imagesDir(h Host) string { return filepath.Join(h.Dir, "images") }

// prepareImages makes both hosts' image folders, owned by their daemons'
// users, and puts a fresh copy of the desktop's disk in the server's.
func (l *Lab) prepareImages(ctx context.Context, g guests) error {
	for _, h := range []Host{l.Server, l.Workstation} {
		uid, gid, err := ensureUser(ctx, h)
		if err != nil {
			return err
		}
		dir := imagesDir(h)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return fmt.Errorf("make %s's image folder: %w", h.Name, err)
		}
		if err := os.Chmod(dir, 0o700); err != nil {
			return err
		}
		if err := os.Chown(dir, uid, gid); err != nil {
			return err
		}
		if h.Name != l.Server.Name || g.desktop == nil {
			continue
		}
		disk := filepath.Join(dir, DesktopName+".qcow2")
		os.Remove(disk)
		if err := testvm.CopyDisk(ctx, g.desktop.Disk, disk); err != nil {
			return fmt.Errorf("copy the Debian guest's disk to the server: %w", err)
		}
		if err := os.Chmod(disk, 0o600); err != nil {
			return err
		}
		if err := os.Chown(disk, uid, gid); err != nil {
			return err
		}
		l.GuestDisk = disk
	}
	l.WorkstationImages = imagesDir(l.Workstation)
	return nil
}

// defineGuests copies kernels and initrds where both hosts read them,
// makes fresh serial logs, defines both guests on the server and starts
// the chosen one.
func (l *Lab) defineGuests(ctx context.Context, g guests) error {
	if err := l.prepareGuestFiles(g.busybox); err != nil {
		return err
	}
	dir := l.guestDir()
	params := testvm.Params{DirtyMBps: l.Guest.DirtyMBps, WSSMB: l.Guest.WSSMB}
	xmls := map[GuestKind]string{
		Busybox: DomainXML(GuestName, l.Guest.MemMB, filepath.Join(dir, "vmlinuz"), filepath.Join(dir, "initrd"), params.KernelArgs(), filepath.Join(dir, "serial.log")),
	}
	if g.desktop != nil {
		for src, dst := range map[string]string{g.desktop.Kernel: "desktop-vmlinuz", g.desktop.Initrd: "desktop-initrd"} {
			if err := copyFile(src, filepath.Join(dir, dst), 0o644); err != nil {
				return fmt.Errorf("copy the Debian guest's %s: %w", dst, err)
			}
		}
		if err := makeSerialLog(l.desktopSerialLog()); err != nil {
			return err
		}
		mem := DesktopMemMB
		if l.GuestKind == Desktop {
			mem = max(mem, l.Guest.MemMB)
		}
		xmls[Desktop] = DesktopXML(DesktopName, mem, filepath.Join(dir, "desktop-vmlinuz"), filepath.Join(dir, "desktop-initrd"),
			params.DebianKernelArgs(), l.desktopSerialLog(), l.GuestDisk)
	}
	l.GuestDomain = l.GuestKind.Domain()
	if l.GuestKind == Desktop {
		l.SerialLog = l.desktopSerialLog()
	}
	if err := l.save(); err != nil {
		return err
	}
	c, err := libvirt.Connect(ctx, l.Server.URI)
	if err != nil {
		return err
	}
	defer c.Close()
	for kind, x := range xmls {
		if kind == l.GuestKind {
			continue
		}
		if err := defineOnly(ctx, l.Server, x); err != nil {
			return fmt.Errorf("define the %s guest on the server: %w", kind, err)
		}
	}
	if _, err := c.DefineAndStart(xmls[l.GuestKind]); err != nil {
		return fmt.Errorf("start the %s test guest: %w (QEMU's log: %s)", l.GuestKind, err,
			filepath.Join(l.Server.Dir, "home", ".cache", "libvirt", "qemu", "log", l.Domain()+".log"))
	}
	return nil
}

// defineOnly defines a domain without starting it (virsh define: the
// libvirt package starts what it defines).
func defineOnly(ctx context.Context, h Host, domainXML string) error {
	f, err := os.CreateTemp("", "handoff-domain-*.xml")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if _, err := f.WriteString(domainXML); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return run(ctx, "virsh", "-q", "-c", h.URI, "define", f.Name())
}

// undefineGuests stops and forgets both guests wherever they are.
func (l *Lab) undefineGuests(ctx context.Context) error {
	for _, h := range []Host{l.Server, l.Workstation} {
		c, err := libvirt.Connect(ctx, h.URI)
		if err != nil {
			return err
		}
		for _, name := range []string{GuestName, DesktopName} {
			if d, err := c.Lookup(name); err == nil {
				err = d.Destroy(true)
				if err != nil {
					c.Close()
					return fmt.Errorf("remove %s from the %s: %w", name, h.Name, err)
				}
			} else if !errors.Is(err, libvirt.ErrNoDomain) {
				c.Close()
				return err
			}
		}
		c.Close()
	}
	return nil
}

func makeSerialLog(path string) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o666)
	if err != nil {
		return fmt.Errorf("make serial log: %w", err)
	}
	f.Close()
	return os.Chmod(path, 0o666)
}
