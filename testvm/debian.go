package testvm

import (
	"bufio"
	"context"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// DebianGuest is the desktop test guest: Debian 12 with systemd on a disk.
// Its kernel and initramfs are booted directly (they are Debian's own,
// taken out of the tree), so the disk carries no boot loader.
type DebianGuest struct {
	Kernel string // vmlinuz of Debian's linux-image-amd64
	Initrd string // Debian's initramfs-tools image, with the virtio and ext4 modules
	// Disk is the cached qcow2 (v3, compat=1.1). It is shared by every
	// caller: boot a copy of it, never the file itself.
	Disk string
}

// DebianSuite is the Debian release the guest is built from.
const DebianSuite = "bookworm"

// DebianDiskSize is the guest disk's virtual size: a few GiB, mostly free,
// as a desktop's disk is, with room for the agent's records.
const DebianDiskSize = 3 << 30

// debianPackages are added to debootstrap's minbase: a real systemd boot
// with Debian's kernel and its initramfs, and the QEMU guest agent, which
// udev starts once the domain's agent channel appears (checkpoints have
// the guest flush through it).
var debianPackages = []string{"systemd-sysv", "udev", "kmod", "linux-image-amd64", "initramfs-tools", "qemu-guest-agent"}

// treeRecipeVersion names what trimTree and the initramfs settings do;
// bump it when they change, so cached trees are rebuilt.
const treeRecipeVersion = "debian-tree-1"

// trimTree makes the debootstrap tree as small as is honest and writes the
// settings every copy of the guest shares. It runs as root with the tree as
// $1, before the tree is cached.
//
//go:embed debian_trim.sh
var trimTree string

// AgentInGuest is where the agent lives on the Debian guest's disk.
const AgentInGuest = "/usr/local/sbin/" + AgentName

// RecordsInGuest is the file the agent writes its records to, and
// RecordsBytes its size: scattered 4 KiB writes over it overwrite blocks in
// place, as a desktop's files are rewritten.
const (
	RecordsInGuest = "/var/lib/handoff-guest/records"
	RecordsBytes   = 64 << 20
)

// agentUnit starts the agent as early as the root file system is there and
// keeps it running: a guest that stops ticking would look hung.
const agentUnit = `[Unit]
Description=handoff test guest agent: disk and memory integrity on the console
DefaultDependencies=no
After=systemd-remount-fs.service
StartLimitIntervalSec=0

[Service]
ExecStart=` + AgentInGuest + ` -records ` + RecordsInGuest + `
Restart=always
RestartSec=1

[Install]
WantedBy=sysinit.target
`

// diskRecipeVersion names what makeDisk does beyond its inputs; bump it
// when that changes.
const diskRecipeVersion = "debian-disk-3"

// maskedUnits would compete with the agent for the consoles (the gettys)
// or write the disk on a schedule nobody asked for (the timers).
var maskedUnits = []string{
	"serial-getty@ttyS0.service", "getty@tty1.service", "autovt@tty1.service",
	"apt-daily.timer", "apt-daily-upgrade.timer", "dpkg-db-backup.timer", "e2scrub_all.timer", "fstrim.timer",
}

// BuildDebian returns the Debian desktop guest, building only what its
// inputs changed. It caches in two layers: the debootstrap tree (minutes;
// keyed by suite, packages and recipe, not by the mirror), and the disk
// made from it with the agent and its unit (seconds; keyed by the tree and
// those files), so a new agent costs only the second. Builders running at
// once each build in a directory of their own and rename into place.
// It needs root (debootstrap, chroot) and, for a cold tree, the mirror.
func BuildDebian(ctx context.Context, opts BuildOptions) (DebianGuest, error) {
	say := func(format string, a ...any) {
		if opts.Progress != nil {
			fmt.Fprintf(opts.Progress, "testvm: "+format+"\n", a...)
		}
	}
	cache, err := cacheDir(opts.CacheDir)
	if err != nil {
		return DebianGuest{}, err
	}
	dir := filepath.Join(cache, "debian")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return DebianGuest{}, fmt.Errorf("make Debian guest cache %s: %w", dir, err)
	}
	removeStale(dir)
	tree, err := ensureTree(ctx, dir, opts.Mirror, say)
	if err != nil {
		return DebianGuest{}, err
	}
	agentPath, err := findAgent(ctx, opts.AgentPath, cache, say)
	if err != nil {
		return DebianGuest{}, err
	}
	agent, err := os.ReadFile(agentPath)
	if err != nil {
		return DebianGuest{}, fmt.Errorf("read guest agent: %w", err)
	}
	files := guestFiles(agent)
	sum := sha256.New()
	fmt.Fprintf(sum, "%s %d %s %d %s\n", filepath.Base(tree), DebianDiskSize, RecordsInGuest, RecordsBytes, diskRecipeVersion)
	for _, f := range files {
		fmt.Fprintf(sum, "%s %o %q %d\n", f.path, f.mode, f.link, len(f.data))
		sum.Write(f.data)
	}
	key := hex.EncodeToString(sum.Sum(nil))[:16]
	g := DebianGuest{Kernel: filepath.Join(tree, "vmlinuz"), Initrd: filepath.Join(tree, "initrd.img"),
		Disk: filepath.Join(dir, "disk-"+key+".qcow2")}
	if _, err := os.Stat(g.Disk); err == nil {
		return g, nil
	}
	start := time.Now()
	say("making the Debian guest's disk (%d GiB virtual) from %s", DebianDiskSize>>30, filepath.Base(tree))
	if err := makeDisk(ctx, dir, filepath.Join(tree, "root"), files, g.Disk); err != nil {
		return DebianGuest{}, err
	}
	say("disk %s ready in %v", filepath.Base(g.Disk), time.Since(start).Round(100*time.Millisecond))
	supersede(dir, "disk-*.qcow2", g.Disk)
	return g, nil
}

func cacheDir(given string) (string, error) {
	if given != "" {
		return given, nil
	}
	dir, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("find a cache directory for the test guest: %w (set $HOME or $XDG_CACHE_HOME)", err)
	}
	return filepath.Join(dir, "handoff", "testvm"), nil
}

// treeKey names a tree by what went into it, never by where it came from:
// any mirror of the same suite gives the same guest.
func treeKey() string {
	sum := sha256.Sum256([]byte(strings.Join([]string{treeRecipeVersion, DebianSuite, strings.Join(debianPackages, ","), trimTree}, "\n")))
	return hex.EncodeToString(sum[:])[:16]
}

// treeNeedsBytes is what a cold tree build needs free: debootstrap's tree
// with its downloaded packages before the trim (about 830 MB), and a disk.
const treeNeedsBytes = 1500 << 20

// ensureTree returns the cached tree directory (root/, vmlinuz,
// initrd.img), bootstrapping it when it is missing.
func ensureTree(ctx context.Context, dir, mirror string, say func(string, ...any)) (string, error) {
	final := filepath.Join(dir, "tree-"+treeKey())
	if _, err := os.Stat(filepath.Join(final, "root")); err == nil {
		return final, nil
	}
	if os.Geteuid() != 0 {
		return "", errors.New("building the Debian guest needs root (debootstrap and chroot): run it with sudo, or as root")
	}
	if _, err := exec.LookPath("debootstrap"); err != nil {
		return "", errors.New("debootstrap is not installed: run make deps (it is in the Makefile's DEB_PACKAGES)")
	}
	if err := checkRoom(dir, treeNeedsBytes); err != nil {
		return "", err
	}
	if mirror == "" {
		mirror = aptMirror()
	}
	if err := checkMirror(ctx, mirror); err != nil {
		return "", err
	}
	tmp, err := os.MkdirTemp(dir, "tmp-tree-")
	if err != nil {
		return "", fmt.Errorf("make a build directory in %s: %w", dir, err)
	}
	defer os.RemoveAll(tmp)
	if err := os.Chmod(tmp, 0o755); err != nil {
		return "", err
	}
	root := filepath.Join(tmp, "root")
	start := time.Now()
	say("debootstrap %s from %s (about two minutes; cached afterwards)", DebianSuite, mirror)
	args := []string{"--variant=minbase", "--include=" + strings.Join(debianPackages, ","), DebianSuite, root, mirror}
	if err := runLogged(ctx, say, "debootstrap", args...); err != nil {
		return "", fmt.Errorf("debootstrap %s from %s: %w (check that this machine reaches the mirror and has room in %s)", DebianSuite, mirror, err, dir)
	}
	say("debootstrap done in %v; trimming the tree and making its initramfs", time.Since(start).Round(time.Second))
	if err := runLogged(ctx, say, "sh", "-c", trimTree, "trim", root); err != nil {
		return "", fmt.Errorf("trim the Debian tree: %w", err)
	}
	for name, pattern := range map[string]string{"vmlinuz": "vmlinuz-*", "initrd.img": "initrd.img-*"} {
		found, _ := filepath.Glob(filepath.Join(root, "boot", pattern))
		if len(found) != 1 {
			return "", fmt.Errorf("the Debian tree has %d /boot/%s, want 1", len(found), pattern)
		}
		// Out of the disk: the guest boots them directly, and a disk
		// without them is 15 MB smaller to move.
		if err := os.Rename(found[0], filepath.Join(tmp, name)); err != nil {
			return "", err
		}
	}
	if err := os.Rename(tmp, final); err != nil {
		if _, statErr := os.Stat(filepath.Join(final, "root")); statErr == nil {
			return final, nil // another builder finished first: same inputs, same tree
		}
		return "", fmt.Errorf("cache the Debian tree: %w", err)
	}
	say("Debian tree cached in %v", time.Since(start).Round(time.Second))
	supersede(dir, "tree-*", final)
	return final, nil
}

// runLogged runs a slow command, passing its phase lines (those that end
// in "...", as debootstrap's do) to say, and returns its last lines on error.
func runLogged(ctx context.Context, say func(string, ...any), name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", name, err)
	}
	var tail []string
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		line := sc.Text()
		if isPhase(line) {
			say("%s: %s", name, strings.TrimPrefix(line, "I: "))
		}
		if tail = append(tail, line); len(tail) > 5 {
			tail = tail[1:]
		}
	}
	if err := cmd.Wait(); err != nil {
		return fmt.Errorf("%w: %s", err, strings.Join(tail, " | "))
	}
	return nil
}

// isPhase tells debootstrap's phase lines ("Unpacking the base system...")
// from its per-package ones ("Unpacking libc6..."), hundreds of them.
func isPhase(line string) bool {
	f := strings.Fields(strings.TrimPrefix(line, "I: "))
	if !strings.HasSuffix(line, "...") || len(f) == 0 {
		return false
	}
	switch f[0] {
	case "Retrieving", "Validating", "Extracting", "Unpacking", "Configuring":
		return len(f) > 1 && (f[1] == "the" || f[1] == "required" || f[1] == "base")
	}
	return true
}

// aptMirror is the Debian mirror this machine's apt uses for the suite, so
// the guest comes from where the host's packages come from.
func aptMirror() string {
	if b, err := os.ReadFile("/etc/apt/sources.list.d/debian.sources"); err == nil {
		if m := mirrorFromDeb822(string(b), DebianSuite); m != "" {
			return m
		}
	}
	if b, err := os.ReadFile("/etc/apt/sources.list"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			if len(f) >= 3 && f[0] == "deb" && f[2] == DebianSuite {
				return f[1]
			}
		}
	}
	return "http://deb.debian.org/debian"
}

// mirrorFromDeb822 finds the URI of the stanza that serves suite itself
// (not its -security or -updates pockets alone).
func mirrorFromDeb822(sources, suite string) string {
	for _, stanza := range strings.Split(sources, "\n\n") {
		var uri string
		hasSuite := false
		for _, line := range strings.Split(stanza, "\n") {
			k, v, ok := strings.Cut(line, ":")
			if !ok || strings.HasPrefix(strings.TrimSpace(line), "#") {
				continue
			}
			switch strings.TrimSpace(k) {
			case "URIs":
				if f := strings.Fields(v); len(f) > 0 {
					uri = f[0]
				}
			case "Suites":
				for _, s := range strings.Fields(v) {
					hasSuite = hasSuite || s == suite
				}
			}
		}
		if uri != "" && hasSuite {
			return uri
		}
	}
	return ""
}

// checkMirror asks the mirror for the suite's Release file, so that an
// unreachable mirror is one clear line, not debootstrap's log.
func checkMirror(ctx context.Context, mirror string) error {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	url := strings.TrimSuffix(mirror, "/") + "/dists/" + DebianSuite + "/Release"
	req, err := http.NewRequestWithContext(ctx, http.MethodHead, url, nil)
	if err != nil {
		return fmt.Errorf("Debian mirror %q: %w", mirror, err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("cannot reach the Debian mirror to build the guest: %w (check the network, or the URIs in /etc/apt/sources.list.d/debian.sources)", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("the Debian mirror answered %s for %s: is it a Debian mirror with %s?", resp.Status, url, DebianSuite)
	}
	return nil
}

func checkRoom(dir string, need uint64) error {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return fmt.Errorf("check free space in %s: %w", dir, err)
	}
	if free := st.Bavail * uint64(st.Bsize); free < need {
		return fmt.Errorf("only %d MB free in %s; building the Debian guest needs about %d MB there (free some, or set BuildOptions.CacheDir / $XDG_CACHE_HOME elsewhere)", free>>20, dir, need>>20)
	}
	return nil
}

// guestFile is one file the disk layer adds to the tree.
type guestFile struct {
	path string // inside the guest, without the leading slash
	mode os.FileMode
	data []byte
	link string // a symlink's target, instead of data
}

// guestFiles are what the disk layer adds to the cached tree: the agent,
// its unit enabled, and the masks. Their bytes are the disk's cache key.
func guestFiles(agent []byte) []guestFile {
	unit := "etc/systemd/system/handoff-guest.service"
	files := []guestFile{
		{path: strings.TrimPrefix(AgentInGuest, "/"), mode: 0o755, data: agent},
		{path: strings.TrimPrefix(RecordsInGuest, "/"), mode: 0o644}, // written in place by writeRecordsFile
		{path: unit, mode: 0o644, data: []byte(agentUnit)},
		{path: "etc/systemd/system/sysinit.target.wants/handoff-guest.service", link: "/" + unit},
	}
	for _, u := range maskedUnits {
		files = append(files, guestFile{path: "etc/systemd/system/" + u, link: "/dev/null"})
	}
	return files
}

// makeDisk copies the tree by hard links (the cached tree stays as it
// is), adds files, makes an ext4 of it and converts that to qcow2.
func makeDisk(ctx context.Context, dir, tree string, files []guestFile, out string) error {
	if err := checkRoom(dir, 2*DebianDiskSize/3); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp(dir, "tmp-disk-")
	if err != nil {
		return fmt.Errorf("make a build directory in %s: %w", dir, err)
	}
	defer os.RemoveAll(tmp)
	staging := filepath.Join(tmp, "root")
	if err := runQuiet(ctx, "cp", "-al", tree, staging); err != nil {
		return err
	}
	for _, f := range files {
		p := filepath.Join(staging, f.path)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		// Unlink first: the staging copy shares inodes with the cache.
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		if f.link != "" {
			err = os.Symlink(f.link, p)
		} else {
			err = os.WriteFile(p, f.data, f.mode)
		}
		if err != nil {
			return fmt.Errorf("add %s to the guest: %w", f.path, err)
		}
	}
	if err := addUserFiles(ctx, staging); err != nil {
		return err
	}
	raw := filepath.Join(tmp, "disk.raw")
	if err := os.WriteFile(raw, nil, 0o644); err != nil {
		return err
	}
	if err := os.Truncate(raw, DebianDiskSize); err != nil {
		return err
	}
	// Inode tables and journal written now, not lazily by the guest's
	// kernel: that would be background writes in every test.
	if err := runQuiet(ctx, "mkfs.ext4", "-q", "-F", "-L", "handoff-root", "-b", "4096",
		"-E", "lazy_itable_init=0,lazy_journal_init=0", "-d", staging, raw); err != nil {
		return fmt.Errorf("%w (is e2fsprogs installed? make deps)", err)
	}
	if err := writeRecordsFile(ctx, tmp, raw); err != nil {
		return err
	}
	qcow := filepath.Join(tmp, "disk.qcow2")
	if err := runQuiet(ctx, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", "-o", "compat=1.1", raw, qcow); err != nil {
		return err
	}
	if err := os.Chmod(qcow, 0o644); err != nil {
		return err
	}
	return os.Rename(qcow, out)
}

// userFileCopies is how many copies of the system's /usr stand in for a
// user's files in /home/desktop: a desktop's disk holds more of its
// user's data than of its system, and a disk test that moved only a
// trimmed system would flatter every tool that copies whole disks less.
const userFileCopies = 3

// addUserFiles fills /home/desktop with real bytes of every kind
// (programs, libraries, text, data): copies, not hard links, so each is
// its own blocks on the disk.
func addUserFiles(ctx context.Context, staging string) error {
	home := filepath.Join(staging, "home", "desktop")
	for i, name := range []string{"Documents", "Projects", "Downloads"}[:userFileCopies] {
		dst := filepath.Join(home, name)
		if err := os.MkdirAll(dst, 0o755); err != nil {
			return err
		}
		if err := runQuiet(ctx, "cp", "-r", "--no-preserve=links", filepath.Join(staging, "usr"), filepath.Join(dst, fmt.Sprintf("usr-%d", i))); err != nil {
			return fmt.Errorf("fill the guest's home folder: %w", err)
		}
	}
	return nil
}

func runQuiet(ctx context.Context, name string, args ...string) error {
	if out, err := exec.CommandContext(ctx, name, args...).CombinedOutput(); err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, lastLine(out))
	}
	return nil
}

// supersede removes the cache's other entries matching pattern: their
// inputs are gone. Callers copy a disk before they boot it; an entry made
// in the last minutes is left, as a builder with other inputs (another
// agent binary) may be about to copy it.
func supersede(dir, pattern, keep string) {
	old, _ := filepath.Glob(filepath.Join(dir, pattern))
	for _, p := range old {
		if fi, err := os.Stat(p); p != keep && err == nil && time.Since(fi.ModTime()) > 10*time.Minute {
			os.RemoveAll(p)
		}
	}
}

// removeStale clears build directories a killed builder left; a live
// builder's directory is younger than any build takes.
func removeStale(dir string) {
	tmps, _ := filepath.Glob(filepath.Join(dir, "tmp-*"))
	for _, p := range tmps {
		if fi, err := os.Stat(p); err == nil && time.Since(fi.ModTime()) > time.Hour {
			os.RemoveAll(p)
		}
	}
}

// CopyDisk copies a guest disk (sparse: holes stay holes) for one boot.
func CopyDisk(ctx context.Context, src, dst string) error {
	return runQuiet(ctx, "cp", "--sparse=always", src, dst)
}

// writeRecordsFile gives the (empty) records file its blocks, zero and
// marked written. Written matters: ext4 answers a read of a hole or of an
// unwritten (fallocated) extent with zeroes without asking the disk, from
// the extent tree in memory. A memory restored against a disk from a later
// instant would then read zeroes where that disk holds newer records, and
// the check would pass. Zero blocks cost nothing in the qcow2.
func writeRecordsFile(ctx context.Context, tmp, raw string) error {
	const blocks = RecordsBytes / 4096
	if err := runQuiet(ctx, "debugfs", "-w", "-R", fmt.Sprintf("fallocate %s 0 %d", RecordsInGuest, blocks-1), raw); err != nil {
		return err
	}
	out, err := exec.CommandContext(ctx, "debugfs", "-R", "ex "+RecordsInGuest, raw).Output()
	if err != nil {
		return fmt.Errorf("debugfs ex %s: %w", RecordsInGuest, err)
	}
	extents, err := parseExtents(string(out))
	if err != nil {
		return err
	}
	var script strings.Builder
	fmt.Fprintf(&script, "sif %s size %d\nextent_open %s\n", RecordsInGuest, RecordsBytes, RecordsInGuest)
	mapped := 0
	for _, e := range extents {
		for i := range e.length {
			fmt.Fprintf(&script, "set_bmap %d %d\n", e.logical+i, e.physical+i)
		}
		mapped += e.length
	}
	script.WriteString("extent_close\n")
	if mapped != blocks {
		return fmt.Errorf("debugfs gave the records file %d blocks, want %d", mapped, blocks)
	}
	scriptPath := filepath.Join(tmp, "records.debugfs")
	if err := os.WriteFile(scriptPath, []byte(script.String()), 0o644); err != nil {
		return err
	}
	if err := runQuiet(ctx, "debugfs", "-w", "-f", scriptPath, raw); err != nil {
		return err
	}
	out, err = exec.CommandContext(ctx, "debugfs", "-R", "ex "+RecordsInGuest, raw).Output()
	if err != nil || strings.Contains(string(out), "Uninit") {
		return fmt.Errorf("the records file still has unwritten extents (%v):\n%s", err, out)
	}
	return runQuiet(ctx, "e2fsck", "-fn", raw)
}

type extent struct{ logical, physical, length int }

// parseExtents reads debugfs's "ex" table:
//
//	Level Entries       Logical        Physical Length Flags
//	 0/ 0   1/  1     0 - 16383   4250 -  20633  16384 Uninit
func parseExtents(table string) ([]extent, error) {
	var es []extent
	for _, line := range strings.Split(table, "\n")[1:] {
		f := strings.Fields(strings.ReplaceAll(line, "/", " / "))
		// 0 / 0 1 / 1 LSTART - LEND PSTART - PEND LEN [FLAGS]
		if len(f) < 13 {
			continue
		}
		var e extent
		if _, err := fmt.Sscan(f[6]+" "+f[9]+" "+f[12], &e.logical, &e.physical, &e.length); err != nil {
			return nil, fmt.Errorf("debugfs extent line %q: %w", line, err)
		}
		es = append(es, e)
	}
	if len(es) == 0 {
		return nil, fmt.Errorf("debugfs listed no extents:\n%s", table)
	}
	return es, nil
}
