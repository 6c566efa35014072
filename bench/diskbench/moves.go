package diskbench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/handoff-dev/handoff/libvirt"
	"github.com/handoff-dev/handoff/testvm/lab"
)

// migrateResult is what the bench reads of 'handoff migrate --json”s
// last line.
type migrateResult struct {
	Phase            string `json:"phase"`
	Mode             string `json:"mode"`
	TotalMs          int64  `json:"total_ms"`
	DowntimeMs       int64  `json:"downtime_ms"`
	TransferredBytes int64  `json:"transferred_bytes"`
	DiskBytes        int64  `json:"disk_bytes"`
	Error            string `json:"error"`
}

// readMigrate reads the lines of 'handoff migrate --json' as they come and
// says when, by clock, the first progress report of a completed migration
// came (the result, the last line, says so too, but after tidying): the
// VM runs on the destination from then on (what follows is tidying, as the
// overlay's commit), and the last line, the result.
func readMigrate(r io.Reader, clock func() time.Duration) (running time.Duration, res migrateResult, err error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	running = -1
	var last []byte
	for sc.Scan() {
		line := sc.Bytes()
		var rec struct {
			Phase string  `json:"phase"`
			Mode  *string `json:"mode"` // only in the result
		}
		if json.Unmarshal(line, &rec) != nil {
			continue
		}
		if rec.Phase == "completed" && rec.Mode == nil && running < 0 {
			running = clock()
		}
		last = append(last[:0], line...)
	}
	if err := sc.Err(); err != nil {
		return running, res, err
	}
	if last == nil {
		return running, res, fmt.Errorf("handoff migrate --json printed no JSON")
	}
	if err := json.Unmarshal(last, &res); err != nil {
		return running, res, fmt.Errorf("handoff migrate --json's last line: %w", err)
	}
	if res.Phase != "completed" {
		return running, res, fmt.Errorf("the migration ended %s: %s", res.Phase, res.Error)
	}
	if running < 0 {
		return running, res, fmt.Errorf("handoff migrate --json completed without a report that it had")
	}
	return running, res, nil
}

// handoffMove moves the guest to host to with 'handoff migrate', its chunk
// cache under cache, its memory stream on MemoryPort, and returns when it
// ran there, counted from the command's start.
func handoffMove(ctx context.Context, l *lab.Lab, bin, cache string, to lab.Host) (time.Duration, migrateResult, error) {
	cmd := exec.CommandContext(ctx, bin, "migrate", "--json", "--lab", l.Dir,
		"--migrate-uri", fmt.Sprintf("tcp://%s:%d", to.Addr, MemoryPort))
	cmd.Env = append(os.Environ(), "XDG_CACHE_HOME="+cache)
	// Ctrl-C reaches the command as it reaches a user's: it aborts the
	// move and leaves the VM where it was.
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	cmd.WaitDelay = time.Minute
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return 0, migrateResult{}, err
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return 0, migrateResult{}, fmt.Errorf("run %s migrate: %w", bin, err)
	}
	running, res, rerr := readMigrate(out, func() time.Duration { return time.Since(start) })
	io.Copy(io.Discard, out)
	if err := cmd.Wait(); err != nil {
		return running, res, fmt.Errorf("handoff migrate to the %s: %w: %s", to.Name, err, strings.TrimSpace(stderr.String()))
	}
	if rerr != nil {
		return running, res, fmt.Errorf("handoff migrate to the %s: %w", to.Name, rerr)
	}
	return running, res, nil
}

// virshMove moves the guest from the server to the workstation as virsh
// does without handoff: an empty qcow2 of the disk's size made on the
// workstation first, then every allocated block mirrored over NBD while
// memory is copied. It returns when the VM ran there, counted from the
// start of making that file.
func virshMove(ctx context.Context, l *lab.Lab, workDir string) (time.Duration, error) {
	start := time.Now()
	c, err := libvirt.Connect(ctx, l.Server.URI)
	if err != nil {
		return 0, err
	}
	d, err := c.Lookup(l.Domain())
	if err != nil {
		c.Close()
		return 0, err
	}
	disks, err := d.Disks()
	c.Close()
	if err != nil {
		return 0, err
	}
	if len(disks) != 1 {
		return 0, fmt.Errorf("the guest has %d disks on the server; the bench moves one", len(disks))
	}
	top, ws := disks[0].Top().Path, l.WorkstationImages
	dest := filepath.Join(ws, filepath.Base(top))
	info, err := exec.CommandContext(ctx, "qemu-img", "info", "-U", "--output=json", top).Output()
	if err != nil {
		return 0, fmt.Errorf("qemu-img info %s: %w", top, err)
	}
	var vi struct {
		Size int64 `json:"virtual-size"`
	}
	if err := json.Unmarshal(info, &vi); err != nil || vi.Size <= 0 {
		return 0, fmt.Errorf("qemu-img info %s: no virtual size in %s", top, info)
	}
	if out, err := exec.CommandContext(ctx, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "compat=1.1", dest, fmt.Sprint(vi.Size)).CombinedOutput(); err != nil {
		return 0, fmt.Errorf("qemu-img create %s: %w: %s", dest, err, out)
	}
	if err := chownLike(dest, ws); err != nil {
		return 0, err
	}
	x, err := exec.CommandContext(ctx, "virsh", "-c", l.Server.URI, "dumpxml", "--migratable", l.Domain()).Output()
	if err != nil {
		return 0, fmt.Errorf("virsh dumpxml %s: %w", l.Domain(), err)
	}
	xmlPath := filepath.Join(workDir, "virsh-dest.xml")
	if err := os.WriteFile(xmlPath, []byte(strings.ReplaceAll(string(x), filepath.Dir(top), ws)), 0o644); err != nil {
		return 0, err
	}
	defer os.Remove(xmlPath)
	cmd := exec.CommandContext(ctx, "virsh", "-c", l.Server.URI, "migrate", "--live", "--p2p", "--copy-storage-all",
		"--migrate-disks", disks[0].Target, "--xml", xmlPath,
		"--migrateuri", fmt.Sprintf("tcp://%s:%d", l.Workstation.Addr, MemoryPort),
		"--disks-uri", "tcp://"+l.Workstation.Addr, l.Domain(), l.Workstation.URI)
	cmd.Cancel = func() error {
		// Stop the job the way a user would, so the guest stays put.
		exec.Command("virsh", "-c", l.Server.URI, "domjobabort", l.Domain()).Run()
		return nil
	}
	cmd.WaitDelay = time.Minute
	if out, err := cmd.CombinedOutput(); err != nil {
		return 0, fmt.Errorf("virsh migrate --copy-storage-all: %w: %s", err, out)
	}
	return time.Since(start), nil
}

// chownLike gives path dir's owner: the workstation's daemon must open it.
func chownLike(path, dir string) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return err
	}
	st := fi.Sys().(*syscall.Stat_t)
	if err := os.Chown(path, int(st.Uid), int(st.Gid)); err != nil {
		return fmt.Errorf("give %s to the owner of %s: %w", path, dir, err)
	}
	return nil
}

// guestAfter waits for the guest to tick on host a few more times and
// returns its own verdict on its memory and disk: "ok", or what is wrong.
func guestAfter(ctx context.Context, l *lab.Lab, host string) string {
	st, err := l.Status(ctx)
	if err != nil {
		return "unknown: " + err.Error()
	}
	if st.GuestHost != host {
		return fmt.Sprintf("runs on %s, not the %s", st.GuestHost, host)
	}
	if err := l.WaitTick(ctx, st.GuestTick+3, 2*time.Minute); err != nil {
		return "stopped ticking: " + err.Error()
	}
	if st, err = l.Status(ctx); err != nil {
		return "unknown: " + err.Error()
	}
	if st.GuestIntegrity == "ok" && st.GuestDiskIntegrity == "ok" {
		return "ok"
	}
	return fmt.Sprintf("memory %s, disk %s: %s", st.GuestIntegrity, st.GuestDiskIntegrity, st.GuestProblem)
}
