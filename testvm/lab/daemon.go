package lab

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/handoff-dev/handoff/libvirt"
)

func ensureUser(ctx context.Context, h Host) (uid, gid int, err error) {
	if _, err := user.Lookup(h.User); err != nil {
		if err := run(ctx, "useradd", "--system", "--user-group", "--no-create-home",
			"--home-dir", filepath.Join(h.Dir, "home"), "--shell", "/usr/sbin/nologin", h.User); err != nil {
			return 0, 0, fmt.Errorf("make lab user: %w", err)
		}
	}
	u, err := user.Lookup(h.User)
	if err != nil {
		return 0, 0, fmt.Errorf("look up lab user %s: %w", h.User, err)
	}
	uid, _ = strconv.Atoi(u.Uid)
	gid, _ = strconv.Atoi(u.Gid)
	return uid, gid, nil
}

// startDaemon starts a session-mode libvirtd for h, as h's user, inside h's
// namespace, so that its QEMUs live on that host's side of the link.
func startDaemon(ctx context.Context, h *Host) error {
	keepFilesFromDaemons()
	uid, gid, err := ensureUser(ctx, *h)
	if err != nil {
		return err
	}
	home, runDir := filepath.Join(h.Dir, "home"), filepath.Join(h.Dir, "run")
	conf := filepath.Join(home, ".config", "libvirt")
	for _, d := range []string{h.Dir, home, runDir, conf, filepath.Join(home, ".cache")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("make %s: %w", d, err)
		}
	}
	files := map[string]string{
		// Each daemon needs its own host UUID, or libvirt refuses the
		// migration as one "to the same host".
		filepath.Join(conf, "libvirtd.conf"): fmt.Sprintf("host_uuid = %q\nunix_sock_rw_perms = \"0777\"\n", h.HostUUID),
		// QEMU's output goes to a plain file: no virtlogd to manage.
		filepath.Join(conf, "qemu.conf"): "stdio_handler = \"file\"\n",
	}
	for path, body := range files {
		if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
			return fmt.Errorf("write %s: %w", path, err)
		}
	}
	for _, d := range []string{home, runDir, filepath.Join(home, ".config"), conf, filepath.Join(home, ".cache")} {
		if err := os.Chown(d, uid, gid); err != nil {
			return err
		}
	}
	logPath := filepath.Join(h.Dir, "libvirtd.log")
	log, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer log.Close()
	// setsid --fork detaches the daemon from us: it outlives 'handoff lab
	// up', and no process of ours has to reap it.
	configHome, err := linkConfig(*h, filepath.Join(home, ".config"))
	if err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, "setsid", "--fork", "ip", "netns", "exec", h.Netns,
		"setpriv", "--reuid", strconv.Itoa(uid), "--regid", strconv.Itoa(gid), "--clear-groups", "--",
		"env", "-i", "HOME="+home, "XDG_RUNTIME_DIR="+runDir, "XDG_CONFIG_HOME="+configHome,
		"XDG_CACHE_HOME="+filepath.Join(home, ".cache"), "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
		"/usr/sbin/libvirtd", "--pid-file", filepath.Join(runDir, "libvirtd.pid"))
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("start libvirtd for the %s: %w (log: %s)", h.Name, err, logPath)
	}
	return nil
}

// configLinks holds a short name for each lab daemon's config folder.
// A session daemon puts the unix socket of a guest's agent channel under
// it (XDG_CONFIG_HOME/libvirt/qemu/channel/target/domain-N-NAME/...), and
// a socket's path may be 107 bytes at most: under a lab's own folder it
// was 112 for the default lab. The link's name is the host's link device,
// unique to the lab.
const configLinks = "/run/handoff-cfg"

func configLink(h Host) string { return filepath.Join(configLinks, h.Dev) }

// linkConfig points h's short config name at dir and returns the name.
func linkConfig(h Host, dir string) (string, error) {
	if err := os.MkdirAll(configLinks, 0o755); err != nil {
		return "", fmt.Errorf("make %s: %w", configLinks, err)
	}
	link := configLink(h)
	if err := os.Remove(link); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("replace the lab's config link %s: %w", link, err)
	}
	if err := os.Symlink(dir, link); err != nil {
		return "", fmt.Errorf("link %s to the %s's config folder: %w", link, h.Name, err)
	}
	return link, nil
}

// waitForDaemon waits for h's daemon to answer and opens its socket to the
// other lab user, for peer-to-peer migration.
func waitForDaemon(ctx context.Context, h *Host) error {
	deadline := time.Now().Add(30 * time.Second)
	pidFile := filepath.Join(h.Dir, "run", "libvirtd.pid")
	for {
		if _, err := os.Stat(h.Socket); err == nil {
			if b, err := os.ReadFile(pidFile); err == nil {
				h.PID, _ = strconv.Atoi(strings.TrimSpace(string(b)))
			}
			if h.PID != 0 {
				break
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("libvirtd for the %s did not open %s within 30s (log: %s)", h.Name, h.Socket, filepath.Join(h.Dir, "libvirtd.log"))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	if err := os.Chmod(filepath.Dir(h.Socket), 0o755); err != nil {
		return err
	}
	if err := os.Chmod(h.Socket, 0o777); err != nil {
		return err
	}
	// The socket is there from its bind; the daemon accepts on it only
	// once it listens, a moment later (CI once asked in between).
	for {
		c, err := libvirt.Connect(ctx, h.URI)
		if err == nil {
			return c.Close()
		}
		if !errors.Is(err, syscall.ECONNREFUSED) || time.Now().After(deadline) {
			return fmt.Errorf("libvirtd for the %s: %w (log: %s)", h.Name, err, filepath.Join(h.Dir, "libvirtd.log"))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Down removes every process, namespace, user and file a lab in dir made.
// It is safe to run when nothing, or half a lab, is there.
func Down(ctx context.Context, dir string) error {
	if dir == "" {
		dir = DefaultDir
	}
	stopServe(dir)
	stopRelayEnds(dir)
	srv, ws := hosts(dir)
	uffd := ""
	if l, err := Load(dir); err == nil {
		srv, ws, uffd = l.Server, l.Workstation, l.UFFD
	}
	var errs []error
	for _, h := range []Host{srv, ws} {
		killNetns(ctx, h.Netns)
		if u, err := user.Lookup(h.User); err == nil {
			uid, _ := strconv.Atoi(u.Uid)
			killUser(uid)
			if err := run(ctx, "userdel", h.User); err != nil {
				errs = append(errs, err)
			}
		}
		if err := os.Remove(configLink(h)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
		if _, err := os.Stat(filepath.Join("/run/netns", h.Netns)); err == nil {
			if err := run(ctx, "ip", "netns", "del", h.Netns); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if uffd != "" {
		if _, err := setSysctl("vm.unprivileged_userfaultfd", uffd); err != nil {
			errs = append(errs, fmt.Errorf("restore vm.unprivileged_userfaultfd: %w", err))
		}
	}
	if err := os.RemoveAll(dir); err != nil {
		errs = append(errs, err)
	}
	os.Remove(configLinks) // once no lab links there
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("take the lab down (run 'handoff lab down' again): %w", err)
	}
	return nil
}

// killNetns ends every process inside the namespace.
func killNetns(ctx context.Context, ns string) {
	out, err := exec.CommandContext(ctx, "ip", "netns", "pids", ns).Output()
	if err != nil {
		return
	}
	var pids []int
	for _, f := range strings.Fields(string(out)) {
		if p, err := strconv.Atoi(f); err == nil {
			pids = append(pids, p)
		}
	}
	killAll(pids)
}

// killUser ends every process the user runs.
func killUser(uid int) {
	killAll(pidsWhere(func(proc string) bool {
		var st syscall.Stat_t
		return syscall.Stat(proc, &st) == nil && int(st.Uid) == uid
	}))
}

// killAll asks politely, then insists: a daemon gets two seconds to close.
func killAll(pids []int) {
	for _, p := range pids {
		syscall.Kill(p, syscall.SIGTERM)
	}
	deadline := time.Now().Add(2 * time.Second)
	for _, p := range pids {
		for syscall.Kill(p, 0) == nil && time.Now().Before(deadline) && !zombie(p) {
			time.Sleep(50 * time.Millisecond)
		}
		syscall.Kill(p, syscall.SIGKILL)
	}
}

func zombie(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	_, rest, _ := strings.Cut(string(b), ") ")
	return strings.HasPrefix(rest, "Z")
}
