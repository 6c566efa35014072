package testvm

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Guest is a bootable test guest: a kernel and its initramfs.
type Guest struct {
	Kernel string // path to vmlinuz
	Initrd string // path to the initramfs (uncompressed newc cpio: it unpacks faster under TCG)
}

// BuildOptions tune Build; the zero value is fine.
type BuildOptions struct {
	CacheDir  string    // default: os.UserCacheDir()/handoff/testvm
	Progress  io.Writer // human progress lines for slow steps; may be nil
	AgentPath string    // the guest agent binary; default: handoff-guest beside this program, else built from source
	Mirror    string    // BuildDebian's Debian mirror; default: the one apt uses here
}

// AgentName is the guest agent's file name, as `make build` leaves it
// beside the handoff binary.
const AgentName = "handoff-guest"

// busyboxPath is where Debian's busybox-static installs its binary.
const busyboxPath = "/bin/busybox"

// initScript mounts what the agent needs and keeps the agent running: if it
// ever died, the guest would otherwise sit silent and a test would wait for
// ticks that never come.
const initScript = `#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
/bin/busybox --install -s /bin
while true; do
	/bin/handoff-guest
	echo "handoff-guest agent exited with status $?; restarting" > /dev/ttyS0
	sleep 1
done
`

// Build returns the test guest, building it only when its inputs changed:
// the kernel package, busybox, the agent or the init script.
func Build(ctx context.Context, opts BuildOptions) (Guest, error) {
	say := func(format string, a ...any) {
		if opts.Progress != nil {
			fmt.Fprintf(opts.Progress, "testvm: "+format+"\n", a...)
		}
	}
	cache, err := cacheDir(opts.CacheDir)
	if err != nil {
		return Guest{}, err
	}
	if err := os.MkdirAll(cache, 0o755); err != nil {
		return Guest{}, fmt.Errorf("make test guest cache %s: %w", cache, err)
	}
	kernel, err := ensureKernel(ctx, cache, say)
	if err != nil {
		return Guest{}, err
	}
	busybox, err := os.ReadFile(busyboxPath)
	if err != nil {
		return Guest{}, fmt.Errorf("read %s: %w (install Debian's busybox-static: make deps)", busyboxPath, err)
	}
	agentPath, err := findAgent(ctx, opts.AgentPath, cache, say)
	if err != nil {
		return Guest{}, err
	}
	agent, err := os.ReadFile(agentPath)
	if err != nil {
		return Guest{}, fmt.Errorf("read guest agent: %w", err)
	}
	entries := initramfs(busybox, agent)
	sum := sha256.New()
	for _, e := range entries {
		fmt.Fprintf(sum, "%s %o %d %d %d\n", e.Name, e.Mode, e.Major, e.Minor, len(e.Data))
		sum.Write(e.Data)
	}
	key := hex.EncodeToString(sum.Sum(nil))[:16]
	initrd := filepath.Join(cache, "initrd-"+key+".cpio")
	if _, err := os.Stat(initrd); err == nil {
		return Guest{Kernel: kernel, Initrd: initrd}, nil
	}
	say("writing initramfs %s", initrd)
	var buf bytes.Buffer
	if err := writeCPIO(&buf, entries); err != nil {
		return Guest{}, fmt.Errorf("write initramfs: %w", err)
	}
	if err := writeFileAtomic(initrd, buf.Bytes()); err != nil {
		return Guest{}, fmt.Errorf("write initramfs: %w", err)
	}
	// Older initramfs files are superseded for good: their inputs are gone.
	old, _ := filepath.Glob(filepath.Join(cache, "initrd-*.cpio"))
	for _, p := range old {
		if p != initrd {
			os.Remove(p)
		}
	}
	return Guest{Kernel: kernel, Initrd: initrd}, nil
}

func initramfs(busybox, agent []byte) []cpioEntry {
	return []cpioEntry{
		{Name: "bin", Mode: modeDir | 0o755},
		{Name: "dev", Mode: modeDir | 0o755},
		// The kernel opens /dev/console for /init before devtmpfs is
		// mounted: without this node /init has no stdout.
		{Name: "dev/console", Mode: modeCharDev | 0o600, Major: 5, Minor: 1},
		{Name: "proc", Mode: modeDir | 0o755},
		{Name: "sys", Mode: modeDir | 0o755},
		{Name: "tmp", Mode: modeDir | 0o1777},
		{Name: "bin/busybox", Mode: modeRegular | 0o755, Data: busybox},
		{Name: "bin/sh", Mode: modeSymlink | 0o777, Data: []byte("busybox")},
		{Name: "bin/" + AgentName, Mode: modeRegular | 0o755, Data: agent},
		{Name: "init", Mode: modeRegular | 0o755, Data: []byte(initScript)},
	}
}

var kernelPackage = regexp.MustCompile(`^linux-image-6\.1\.0-([0-9]+)-amd64$`)

// ensureKernel returns the cached vmlinuz of the newest Debian 6.1 kernel
// package, downloading that one package when it is not cached yet.
func ensureKernel(ctx context.Context, cache string, say func(string, ...any)) (string, error) {
	pkg, version, err := newestKernelCached(ctx, cache)
	if err != nil {
		// Offline with a kernel already cached: the guest still boots.
		if cached, _ := filepath.Glob(filepath.Join(cache, "kernels", "*", "vmlinuz")); len(cached) > 0 {
			sort.Strings(cached)
			say("%v; using the cached %s", err, cached[len(cached)-1])
			return cached[len(cached)-1], nil
		}
		return "", err
	}
	path := filepath.Join(cache, "kernels", pkg+"_"+version, "vmlinuz")
	if _, err := os.Stat(path); err == nil {
		return path, nil
	}
	tmp, err := os.MkdirTemp(cache, "download-")
	if err != nil {
		return "", fmt.Errorf("make download directory: %w", err)
	}
	defer os.RemoveAll(tmp)
	// apt drops to its _apt user to download; let it write here.
	os.Chmod(tmp, 0o777)
	say("downloading %s %s (apt-get download, about 70 MB)", pkg, version)
	get := exec.CommandContext(ctx, "apt-get", "download", pkg+"="+version)
	get.Dir = tmp
	if out, err := get.CombinedOutput(); err != nil {
		return "", fmt.Errorf("apt-get download %s=%s: %w: %s (check the package mirror; apt-get update may help)", pkg, version, err, lastLine(out))
	}
	debs, _ := filepath.Glob(filepath.Join(tmp, "*.deb"))
	if len(debs) != 1 {
		return "", fmt.Errorf("apt-get download %s left %d .deb files, want 1", pkg, len(debs))
	}
	say("extracting the kernel from %s", filepath.Base(debs[0]))
	vmlinuz, err := extractKernel(ctx, debs[0])
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return "", err
	}
	if err := writeFileAtomic(path, vmlinuz); err != nil {
		return "", fmt.Errorf("cache kernel: %w", err)
	}
	return path, nil
}

// aptLists changes whenever apt-get update brings new package lists.
const aptLists = "/var/lib/apt/lists"

// newestKernelCached remembers apt's answer until the package lists change:
// asking apt costs over a second, and every lab and test builds the guest.
func newestKernelCached(ctx context.Context, cache string) (pkg, version string, err error) {
	memo := filepath.Join(cache, "kernel-package")
	var stamp string
	if fi, err := os.Stat(aptLists); err == nil {
		stamp = fi.ModTime().UTC().Format(time.RFC3339Nano)
	}
	if b, err := os.ReadFile(memo); err == nil && stamp != "" {
		if f := strings.Fields(string(b)); len(f) == 3 && f[0] == stamp {
			return f[1], f[2], nil
		}
	}
	pkg, version, err = newestKernel(ctx)
	if err == nil && stamp != "" {
		writeFileAtomic(memo, []byte(stamp+" "+pkg+" "+version+"\n"))
	}
	return pkg, version, err
}

// newestKernel asks apt for the newest linux-image-6.1.0-N-amd64 package
// and its candidate version. One exact package: a name pattern handed to
// apt-get download would fetch every version there is.
func newestKernel(ctx context.Context) (pkg, version string, err error) {
	out, err := exec.CommandContext(ctx, "apt-cache", "pkgnames", "linux-image-6.1.0-").Output()
	if err != nil {
		return "", "", fmt.Errorf("list kernel packages (apt-cache pkgnames): %w", err)
	}
	best := -1
	for _, name := range strings.Fields(string(out)) {
		m := kernelPackage.FindStringSubmatch(name)
		if m == nil {
			continue
		}
		if n, _ := strconv.Atoi(m[1]); n > best {
			best, pkg = n, name
		}
	}
	if pkg == "" {
		return "", "", errors.New("no linux-image-6.1.0-N-amd64 package known to apt (run apt-get update; this needs Debian 12's package lists)")
	}
	out, err = exec.CommandContext(ctx, "apt-cache", "show", "--no-all-versions", pkg).Output()
	if err != nil {
		return "", "", fmt.Errorf("apt-cache show %s: %w", pkg, err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(line, "Version: "); ok {
			return pkg, strings.TrimSpace(v), nil
		}
	}
	return "", "", fmt.Errorf("apt-cache show %s printed no version", pkg)
}

// extractKernel reads boot/vmlinuz-* out of a kernel .deb without
// unpacking its 400 MB of modules.
func extractKernel(ctx context.Context, deb string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, "dpkg-deb", "--fsys-tarfile", deb)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("dpkg-deb --fsys-tarfile %s: %w", deb, err)
	}
	var vmlinuz []byte
	tr := tar.NewReader(stdout)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			cmd.Process.Kill()
			cmd.Wait()
			return nil, fmt.Errorf("read %s: %w", deb, err)
		}
		if strings.HasPrefix(strings.TrimPrefix(h.Name, "./"), "boot/vmlinuz-") && h.Typeflag == tar.TypeReg {
			if vmlinuz, err = io.ReadAll(tr); err != nil {
				return nil, fmt.Errorf("read vmlinuz from %s: %w", deb, err)
			}
		}
	}
	if err := cmd.Wait(); err != nil {
		return nil, fmt.Errorf("dpkg-deb --fsys-tarfile %s: %w: %s", deb, err, lastLine(stderr.Bytes()))
	}
	if vmlinuz == nil {
		return nil, fmt.Errorf("%s holds no boot/vmlinuz-*", deb)
	}
	return vmlinuz, nil
}

// findAgent locates the guest agent: the given path, else the one `make
// build` put beside this program, else a fresh build from the source tree
// (as under go test, where this program is a test binary in a temp dir).
func findAgent(ctx context.Context, given, cache string, say func(string, ...any)) (string, error) {
	if given != "" {
		return given, nil
	}
	if self, err := os.Executable(); err == nil {
		beside := filepath.Join(filepath.Dir(self), AgentName)
		if _, err := os.Stat(beside); err == nil {
			return beside, nil
		}
	}
	out := filepath.Join(cache, "agent", AgentName)
	say("building the guest agent from source")
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", out, "github.com/handoff-dev/handoff/testvm/guestagent")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if msg, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("the guest agent %s is not beside this program, and building it from source failed: %w: %s (run make build, which puts it in bin/)", AgentName, err, lastLine(msg))
	}
	return out, nil
}

func writeFileAtomic(path string, data []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), ".tmp-"+filepath.Base(path))
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(0o644); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

func lastLine(b []byte) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return lines[len(lines)-1]
}
