package libvirt

import (
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"
)

// Layer is one image file of a disk's chain.
type Layer struct {
	Path   string
	Format string // "qcow2", "raw"
}

// Disk is one writable disk of a domain that lives in files: the one QEMU
// writes to first, then its backing files down to the base.
type Disk struct {
	Target string // the guest's name for it: "vda"
	Alias  string // libvirt's name for its device in QEMU: "virtio-disk0"; "" on a domain not running
	Chain  []Layer
}

// NBDExport is the name a migration's NBD server exports the disk by on
// the destination (libvirt's drive alias).
func (d Disk) NBDExport() string { return "drive-" + d.Alias }

// Top is the file the guest writes to.
func (d Disk) Top() Layer { return d.Chain[0] }

// ErrUnmovableDisk is returned (wrapped) for a disk handoff cannot move:
// a block device, a network disk, a shared one.
var ErrUnmovableDisk = errors.New("disk cannot move")

// Disks lists the domain's writable disks, as it runs now.
func (d *Domain) Disks() ([]Disk, error) {
	x, err := d.XML()
	if err != nil {
		return nil, err
	}
	disks, err := disksFromXML(x)
	if err != nil {
		return nil, fmt.Errorf("disks of %s on %s: %w", d.Name(), d.conn.uri, err)
	}
	return disks, nil
}

type xmlSource struct {
	File string `xml:"file,attr"`
	Dev  string `xml:"dev,attr"`
	Name string `xml:"name,attr"`
}

type xmlBacking struct {
	Type   string `xml:"type,attr"`
	Format struct {
		Type string `xml:"type,attr"`
	} `xml:"format"`
	Source  xmlSource   `xml:"source"`
	Backing *xmlBacking `xml:"backingStore"`
}

// disksFromXML reads the writable disks of a domain's XML; read-only disks
// and CD-ROMs stay where they are, as every host has its own.
func disksFromXML(domainXML string) ([]Disk, error) {
	var doc struct {
		Disks []struct {
			Type   string `xml:"type,attr"`
			Device string `xml:"device,attr"`
			Driver struct {
				Type string `xml:"type,attr"`
			} `xml:"driver"`
			Source  xmlSource   `xml:"source"`
			Backing *xmlBacking `xml:"backingStore"`
			Target  struct {
				Dev string `xml:"dev,attr"`
			} `xml:"target"`
			Alias struct {
				Name string `xml:"name,attr"`
			} `xml:"alias"`
			ReadOnly  *struct{} `xml:"readonly"`
			Shareable *struct{} `xml:"shareable"`
		} `xml:"devices>disk"`
	}
	if err := xml.Unmarshal([]byte(domainXML), &doc); err != nil {
		return nil, fmt.Errorf("parse domain XML: %w", err)
	}
	var disks []Disk
	for _, x := range doc.Disks {
		if x.Device == "cdrom" || x.Device == "floppy" || x.ReadOnly != nil {
			continue
		}
		name := x.Target.Dev
		switch {
		case x.Shareable != nil:
			return nil, fmt.Errorf("%w: %s is shareable: it is meant to stay on shared storage; detach it first (virsh detach-disk DOMAIN %s)", ErrUnmovableDisk, name, name)
		case x.Type == "block":
			return nil, fmt.Errorf("%w: %s is the block device %s: handoff moves disks kept in image files; convert it (qemu-img convert -O qcow2 %s FILE) or detach it", ErrUnmovableDisk, name, x.Source.Dev, x.Source.Dev)
		case x.Type != "file":
			return nil, fmt.Errorf("%w: %s is a %s disk (%s): handoff moves disks kept in image files", ErrUnmovableDisk, name, x.Type, x.Source.Name)
		case x.Source.File == "":
			continue // an empty drive: nothing to move
		}
		d := Disk{Target: name, Alias: x.Alias.Name, Chain: []Layer{{Path: x.Source.File, Format: orDefault(x.Driver.Type, "raw")}}}
		for b := x.Backing; b != nil && b.Source.File != ""; b = b.Backing {
			if b.Type != "" && b.Type != "file" {
				return nil, fmt.Errorf("%w: %s has a %s backing image: handoff moves image files only", ErrUnmovableDisk, name, b.Type)
			}
			d.Chain = append(d.Chain, Layer{Path: b.Source.File, Format: orDefault(b.Format.Type, "raw")})
		}
		disks = append(disks, d)
	}
	return disks, nil
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// OverlayPath names the overlay that a freeze tagged tag starts beside top.
func OverlayPath(top, tag string) string {
	dir, base := filepath.Split(top)
	base = strings.TrimSuffix(base, filepath.Ext(base))
	return filepath.Join(dir, base+"."+tag+".qcow2")
}

// Freeze starts a new, empty overlay on every disk at one instant, so that
// everything below it stops changing and can be copied while the VM runs
// on. It returns the disks as they are now, the overlays on top. The
// snapshot keeps no metadata: libvirt refuses to migrate a domain that has
// snapshots.
func (d *Domain) Freeze(tag string) ([]Disk, error) { return d.snapshot(tag, "") }

// Checkpoint saves the domain's memory to memoryPath (a file in libvirt's
// save format, which Restore reads) and starts a new overlay on every disk
// at the instant the memory was taken, while the VM runs on (a live
// external snapshot, without metadata as Freeze's). The layer below each
// overlay then holds the disk at that instant, to pair with the memory.
//
// The duration is how long the guest stood still for it, as QEMU measured
// (the final copy of memory and the disks' switch); zero when QEMU did not
// say.
func (d *Domain) Checkpoint(tag, memoryPath string) ([]Disk, time.Duration, error) {
	if memoryPath == "" {
		return nil, 0, fmt.Errorf("checkpoint %s: no file named for its memory", d.Name())
	}
	disks, err := d.snapshot(tag, memoryPath)
	if err != nil {
		return nil, 0, err
	}
	var paused time.Duration
	typ, params, err := d.conn.lv.DomainGetJobStats(d.dom, golibvirt.DomainJobStatsCompleted)
	if err == nil && golibvirt.DomainJobType(typ) == golibvirt.DomainJobCompleted {
		paused = parseJobStats(params).downtime
	}
	return disks, paused, nil
}

// snapshot is Freeze, with the memory saved too when memoryPath is set.
func (d *Domain) snapshot(tag, memoryPath string) ([]Disk, error) {
	disks, err := d.Disks()
	if err != nil {
		return nil, err
	}
	if len(disks) == 0 && memoryPath == "" {
		return nil, nil
	}
	// The overlays are made first, through the disks' pools, with small
	// clusters (see overlayCluster), and the snapshot reuses them.
	var made []string
	unmake := func() {
		for _, path := range made {
			d.conn.DeleteVolume(path)
		}
	}
	var b strings.Builder
	memory := "<memory snapshot='no'/>"
	flags := golibvirt.DomainSnapshotCreateDiskOnly
	if memoryPath != "" {
		memory = fmt.Sprintf("<memory snapshot='external' file='%s'/>", xmlText(memoryPath))
		flags = golibvirt.DomainSnapshotCreateLive
	}
	fmt.Fprintf(&b, "<domainsnapshot><name>%s</name>%s<disks>", xmlText(tag), memory)
	for _, disk := range disks {
		top := disk.Top()
		pool, err := d.conn.EnsurePool(filepath.Dir(top.Path))
		if err != nil {
			unmake()
			return nil, err
		}
		if err := pool.Refresh(); err != nil {
			unmake()
			return nil, err
		}
		size, err := d.conn.VirtualSize(top.Path)
		if err != nil {
			unmake()
			return nil, err
		}
		overlay, err := pool.CreateOverlay(filepath.Base(OverlayPath(top.Path, tag)), top, size)
		if err != nil {
			unmake()
			return nil, err
		}
		made = append(made, overlay)
		fmt.Fprintf(&b, "<disk name='%s' snapshot='external'><driver type='qcow2'/><source file='%s'/></disk>",
			xmlText(disk.Target), xmlText(overlay))
	}
	b.WriteString("</disks></domainsnapshot>")
	flags |= golibvirt.DomainSnapshotCreateNoMetadata | golibvirt.DomainSnapshotCreateAtomic | golibvirt.DomainSnapshotCreateReuseExt
	if _, err := d.conn.lv.DomainSnapshotCreateXML(d.dom, b.String(), uint32(flags)); err != nil {
		unmake()
		if memoryPath != "" {
			return nil, fmt.Errorf("checkpoint %s on %s (a live external snapshot, memory to %s): %w", d.Name(), d.conn.uri, memoryPath, err)
		}
		return nil, fmt.Errorf("freeze the disks of %s on %s (a disk-only external snapshot): %w", d.Name(), d.conn.uri, err)
	}
	return d.Disks()
}

// CommitTop merges a disk's running top layer into the layer below it and
// makes that the top again, while the VM runs; the merged overlay file is
// deleted. It undoes a Freeze, and keeps chains short after a move.
func (d *Domain) CommitTop(ctx context.Context, target string) error {
	disks, err := d.Disks()
	if err != nil {
		return err
	}
	var disk *Disk
	for i := range disks {
		if disks[i].Target == target {
			disk = &disks[i]
		}
	}
	if disk == nil {
		return fmt.Errorf("commit %s of %s: no such writable disk on %s", target, d.Name(), d.conn.uri)
	}
	if len(disk.Chain) < 2 {
		return nil // nothing below to commit into
	}
	top := disk.Top().Path
	fail := func(err error) error {
		return fmt.Errorf("commit %s (%s) of %s on %s into %s: %w", target, top, d.Name(), d.conn.uri, disk.Chain[1].Path, err)
	}
	flags := golibvirt.DomainBlockCommitActive | golibvirt.DomainBlockCommitShallow
	if err := d.conn.lv.DomainBlockCommit(d.dom, target, nil, nil, 0, flags); err != nil {
		return fail(err)
	}
	// An active commit never ends by itself: it mirrors until it is told
	// to pivot, which it can once every block is copied.
	if err := d.waitBlockJob(ctx, target, func(cur, end uint64) bool { return end > 0 && cur == end }); err != nil {
		d.conn.lv.DomainBlockJobAbort(d.dom, target, 0)
		return fail(err)
	}
	if err := d.pivot(ctx, target); err != nil {
		return fail(err)
	}
	if err := d.waitBlockJob(ctx, target, nil); err != nil {
		return fail(err)
	}
	if err := d.conn.DeleteVolume(top); err != nil {
		return fmt.Errorf("committed %s of %s, but %w", target, d.Name(), err)
	}
	return nil
}

// pivot ends an active commit on its base. Every block copied is not yet
// ready: QEMU says so a moment later, and refuses the pivot until then.
func (d *Domain) pivot(ctx context.Context, target string) error {
	for {
		err := d.conn.lv.DomainBlockJobAbort(d.dom, target, golibvirt.DomainBlockJobAbortPivot)
		if err == nil || !strings.Contains(err.Error(), "not ready") {
			return err
		}
		select {
		case <-ctx.Done():
			d.conn.lv.DomainBlockJobAbort(d.dom, target, 0)
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// waitBlockJob waits until done says the disk's block job is far enough
// along, or, with done nil, until the job has gone.
func (d *Domain) waitBlockJob(ctx context.Context, target string, done func(cur, end uint64) bool) error {
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		found, _, _, cur, end, err := d.conn.lv.DomainGetBlockJobInfo(d.dom, target, 0)
		if err != nil {
			return err
		}
		if found == 0 {
			if done == nil {
				return nil
			}
			return errors.New("the block job ended before it was ready")
		}
		if done != nil && done(cur, end) {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

func xmlText(s string) string {
	var b strings.Builder
	xml.EscapeText(&b, []byte(s))
	return strings.ReplaceAll(b.String(), "'", "&apos;")
}

// checkDisks refuses a migration that would leave a disk behind: libvirt
// would answer only "Unsafe migration" for a disk the hosts do not share.
func checkDisks(dom *Domain, c *DiskCopy) error {
	disks, err := dom.Disks()
	if err != nil {
		return err
	}
	if c == nil {
		if len(disks) == 0 {
			return nil
		}
		var names []string
		for _, d := range disks {
			names = append(names, d.Target+" ("+d.Top().Path+")")
		}
		return fmt.Errorf("%s keeps its disks in files on %s: %s; move them with it (handoff migrate --disks copy, or handoff grab, which sends only what the other host lacks), or say that both hosts share them (--disks shared)", dom.Name(), dom.conn.uri, strings.Join(names, ", "))
	}
	if len(c.Targets) == 0 {
		return errors.New("a disk copy must name its disks: libvirt would copy every writable disk")
	}
	for _, t := range c.Targets {
		found := false
		for _, d := range disks {
			found = found || d.Target == t
		}
		if !found {
			return fmt.Errorf("%s has no writable disk %s on %s", dom.Name(), t, dom.conn.uri)
		}
	}
	return nil
}

// MigratableXML is the domain's live description as another host can
// take it: without this host's own details (ids, aliases of its devices).
func (d *Domain) MigratableXML() (string, error) {
	x, err := d.conn.lv.DomainGetXMLDesc(d.dom, golibvirt.DomainXMLMigratable)
	if err != nil {
		return "", fmt.Errorf("migratable XML of %s on %s: %w", d.Name(), d.conn.uri, err)
	}
	return x, nil
}

// DisksInUse maps every image file a running domain on this host uses,
// any layer of its chains, to that domain's name.
func (c *Conn) DisksInUse() (map[string]string, error) {
	doms, _, err := c.lv.ConnectListAllDomains(1, golibvirt.ConnectListDomainsActive)
	if err != nil {
		return nil, fmt.Errorf("list running domains on %s: %w", c.uri, err)
	}
	used := map[string]string{}
	for _, dom := range doms {
		d := &Domain{conn: c, dom: dom}
		disks, err := d.Disks()
		if err != nil {
			continue // a domain we cannot read keeps its own disks
		}
		for _, disk := range disks {
			for _, l := range disk.Chain {
				used[l.Path] = dom.Name
			}
		}
	}
	return used, nil
}

// DefinedDisks maps each writable disk of the domain's persistent
// definition to its file: where the host keeps it while the domain runs
// elsewhere.
func (d *Domain) DefinedDisks() (map[string]string, error) {
	x, err := d.conn.lv.DomainGetXMLDesc(d.dom, golibvirt.DomainXMLInactive)
	if err != nil {
		return nil, fmt.Errorf("definition of %s on %s: %w", d.Name(), d.conn.uri, err)
	}
	disks, err := disksFromXML(x)
	if err != nil {
		return nil, fmt.Errorf("definition of %s on %s: %w", d.Name(), d.conn.uri, err)
	}
	m := map[string]string{}
	for _, disk := range disks {
		m[disk.Target] = disk.Top().Path
	}
	return m, nil
}
