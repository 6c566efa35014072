package syncbench

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// Config says what Run measures and where it works.
type Config struct {
	// Dir is where Run makes its working directory (default: the system's
	// temp dir). It needs about five times Size free.
	Dir string
	// Size of the image in bytes (default 2 GiB).
	Size int64
	// Fraction of the image's 4 KiB blocks the update changes (default 1%).
	Fraction float64
	// Seed chooses the changed blocks and their new contents (default 1).
	Seed uint64
	// Keep leaves the working directory in place afterwards.
	Keep bool
	// Sources are the directories the image's files and the new blocks'
	// contents come from (default /usr/bin, /usr/lib, /usr/share).
	Sources []string
	// Server is a handoff binary to run as the home server ('handoff
	// serve'), so that its CPU time is apart from the workstation's.
	// Empty: the same handlers run in this process.
	Server string
}

func (c Config) withDefaults() Config {
	if c.Size == 0 {
		c.Size = 2 << 30
	}
	if c.Fraction == 0 {
		c.Fraction = 0.01
	}
	if c.Seed == 0 {
		c.Seed = 1
	}
	if len(c.Sources) == 0 {
		c.Sources = defaultSources()
	}
	return c
}

// The rows of a Table, by case and tool.
const (
	CaseServerPush = "server push (local)"
	CaseCold       = "cold pull"
	CaseColdLink   = "cold pull, 1 Gbit/s link"
	CaseIndex      = "index local image"
	CaseUpdate     = "update"

	ToolHandoff   = "handoff"
	ToolReference = "reference: zstd -3 of the changed blocks"
	ToolRsyncZ    = "rsync -z"
	ToolRsync     = "rsync"
	ToolZstd      = "zstd -3 full copy"
)

// Row is one measurement. Bytes are counted at the socket, through a
// proxy: Down to the workstation, Up to the server. Negative means the row
// moved nothing over a socket. A CPU time of zero was not measured apart.
type Row struct {
	Case, Tool string
	Down, Up   int64
	Time       time.Duration
	Busy       time.Duration // of Time, how long bytes flowed to the workstation (where measured)
	Rate       float64       // image bytes per second
	// WorkstationCPU is the CPU time on the workstation's side: handoff's
	// client and the counting proxy (and the server's handlers when they
	// run in the same process), the rsync client, zstd -d.
	WorkstationCPU time.Duration
	// ServerCPU is the CPU time on the server's side: 'handoff serve',
	// the rsync daemon and its children, zstd -3.
	ServerCPU time.Duration
	Note      string
}

// Table is what Run measured.
type Table struct {
	Image         ImageInfo
	ChangedBlocks int
	ChangedBytes  int64
	Reference     int64 // the changed blocks' new contents through zstd -3
	Rows          []Row
	// UpdateRatio is handoff's update, both directions, over Reference.
	UpdateRatio float64
	// IndexRate is bytes per second indexing the local image.
	IndexRate float64
	// Elapsed is the whole run, image making included.
	Elapsed time.Duration
	// ColdWireRate is the cold pull's bytes on the wire per second of
	// wall time on loopback: a link slower than this limits a real pull.
	ColdWireRate float64
	// ColdCoreRate is the cold pull's bytes on the wire per CPU second on
	// the workstation's side: what one of its cores can carry.
	ColdCoreRate float64
	// LinkWireRate is the cold pull's bytes per second over a link shaped
	// to 1 Gbit/s, counted at the link (TCP/IP headers included); zero
	// where NoLink says why there was none.
	LinkWireRate float64
	LinkBusyRate float64 // the same, over the time bytes flowed
	LinkTCPRate  float64 // what one plain TCP stream moved over that link, the same way
	NoLink       string
}

// Row returns the row for a case and tool.
func (t Table) Row(c, tool string) (Row, bool) {
	for _, r := range t.Rows {
		if r.Case == c && r.Tool == tool {
			return r, true
		}
	}
	return Row{}, false
}

// Run measures, in one go, on an ext4 image of real files: a cold pull of
// it from a chunk server over HTTPS, indexing it, and after a fraction of
// its blocks changed on the server, the update by handoff, by rsync (with
// and without -z) against an rsync daemon, and as a full zstd copy. Every
// transfer runs through a counting proxy on 127.0.0.1, and every pulled
// image is compared with the server's byte for byte. A server process
// (Config.Server) runs, where root can make one, on the far side of a veth
// link in a network namespace of the bench's own: a second cold pull
// crosses it shaped to 1 Gbit/s by tc. Progress goes to
// progress; the caller prints the Table. Processes and temporary files
// are removed when Run returns, whether it failed or ctx ended.
func Run(ctx context.Context, cfg Config, progress io.Writer) (t Table, err error) {
	cfg = cfg.withDefaults()
	start := time.Now()
	defer func() {
		t.Elapsed = time.Since(start)
		// A killed rsync or zstd says "signal: killed"; say why instead.
		if err != nil && ctx.Err() != nil {
			err = fmt.Errorf("stopped: %w (everything the bench started was stopped)", context.Cause(ctx))
		}
	}()
	if err := needTools("mkfs.ext4", "dumpe2fs", "rsync", "zstd"); err != nil {
		return t, err
	}
	work, err := os.MkdirTemp(cfg.Dir, "handoff-syncbench-")
	if err != nil {
		return t, fmt.Errorf("make the bench's directory: %w", err)
	}
	if cfg.Keep {
		defer fmt.Fprintf(progress, "syncbench: kept %s\n", work)
	} else {
		defer os.RemoveAll(work)
	}
	d := layout(work)
	for _, dir := range []string{d.server, d.serverData, d.serverCache, d.ws, d.wsCache, d.wsLink, d.rsync, d.rsyncWS, d.zstdWS} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return t, fmt.Errorf("make the bench's directories: %w", err)
		}
	}
	say := func(format string, a ...any) { fmt.Fprintf(progress, "syncbench: "+format+"\n", a...) }

	// The server's image and its first version in the server's store.
	if t.Image, err = makeImage(ctx, d.serverImage, cfg.Size, cfg.Sources, progress); err != nil {
		return t, err
	}
	say("push the image into the server's store")
	root, row, err := timedPush(ctx, d.serverImage, d.serverData, d.serverCache, cfg.Size)
	if err != nil {
		return t, err
	}
	t.Rows = append(t.Rows, row)

	var srv *chunkServer
	var link *shapedLink
	if cfg.Server != "" {
		if t.NoLink = linkSupport(); t.NoLink == "" {
			if link, err = newShapedLink(ctx); err != nil {
				return t, err
			}
			defer link.close()
		}
		srv, err = startServeProcess(ctx, cfg.Server, d.serverData, link)
	} else {
		t.NoLink = "the server runs in this process"
		srv, err = startChunkServer(ctx, d.serverData)
	}
	if err != nil {
		return t, err
	}
	defer srv.close()

	say("cold pull over HTTPS")
	settle()
	row, err = oursPull(ctx, srv, root, d, CaseCold, cfg.Size)
	if err != nil {
		return t, err
	}
	t.Rows = append(t.Rows, row)
	t.ColdWireRate = float64(row.Down+row.Up) / row.Time.Seconds()
	t.ColdCoreRate = float64(row.Down+row.Up) / row.WorkstationCPU.Seconds()

	if link != nil {
		say("cold pull over a link shaped to %s", linkRate)
		if row, t.LinkTCPRate, err = linkPull(ctx, link, srv, root, d, cfg.Size); err != nil {
			return t, err
		}
		t.Rows = append(t.Rows, row)
		t.LinkWireRate = float64(row.Down+row.Up) / row.Time.Seconds()
		t.LinkBusyRate = float64(row.Down+row.Up) / row.Busy.Seconds()
	}

	say("index the local image")
	elapsed, cpu, err := index(ctx, d.wsImage)
	if err != nil {
		return t, err
	}
	t.IndexRate = float64(cfg.Size) / elapsed.Seconds()
	t.Rows = append(t.Rows, Row{Case: CaseIndex, Tool: ToolHandoff, Down: -1, Up: -1, Time: elapsed,
		Rate: t.IndexRate, WorkstationCPU: cpu, Note: fmt.Sprintf("best of %d, page cache warm", indexRuns)})

	// rsync's basis: the workstation's old image, kept aside before the
	// update replaces it, and synced, so that the engine's syncs during the
	// update do not count the time of writing this copy.
	if err := copyFile(ctx, d.wsImage, d.oldImage); err != nil {
		return t, fmt.Errorf("keep the old image for rsync: %w", err)
	}
	if err := syncFile(d.oldImage); err != nil {
		return t, fmt.Errorf("keep the old image for rsync: %w", err)
	}

	say("change %.2g%% of the server's blocks", 100*cfg.Fraction)
	ch, err := changeBlocks(ctx, d.serverImage, cfg.Fraction, cfg.Seed, cfg.Sources)
	if err != nil {
		return t, err
	}
	t.ChangedBlocks, t.ChangedBytes = len(ch.Offsets), int64(len(ch.Data))
	if t.Reference, err = ReferenceSize(ctx, ch.Data); err != nil {
		return t, err
	}
	t.Rows = append(t.Rows, Row{Case: CaseUpdate, Tool: ToolReference, Down: t.Reference, Up: -1,
		Note: fmt.Sprintf("%d blocks, %s before compression", t.ChangedBlocks, formatBytes(t.ChangedBytes))})

	say("push the new version into the server's store")
	root, row, err = timedPush(ctx, d.serverImage, d.serverData, d.serverCache, cfg.Size)
	if err != nil {
		return t, err
	}
	row.Note = "new version; " + row.Note
	t.Rows = append(t.Rows, row)

	say("update pull over HTTPS")
	settle()
	row, err = oursPull(ctx, srv, root, d, CaseUpdate, cfg.Size)
	if err != nil {
		return t, err
	}
	t.UpdateRatio = float64(row.Down+row.Up) / float64(t.Reference)
	row.Note = fmt.Sprintf("%.2f × reference; ", t.UpdateRatio) + row.Note
	t.Rows = append(t.Rows, row)

	rows, err := rsyncUpdates(ctx, d, cfg.Size, say)
	t.Rows = append(t.Rows, rows...)
	if err != nil {
		return t, err
	}

	say("zstd -3 full copy of the new image")
	dst := filepath.Join(d.zstdWS, "image.img")
	// Both zstd ends are processes of their own, so this process's CPU
	// time meanwhile is the proxy's: its share of handoff's rows.
	settle()
	proxy0 := selfCPU()
	m, err := zstdCopy(ctx, d.serverImage, dst)
	if err != nil {
		return t, err
	}
	proxyCPU := selfCPU() - proxy0
	if err := sameFiles(ctx, dst, d.serverImage); err != nil {
		return t, fmt.Errorf("zstd copy: %w", err)
	}
	os.Remove(dst)
	t.Rows = append(t.Rows, transferRow(CaseUpdate, ToolZstd, m, cfg.Size,
		fmt.Sprintf("verified; the same as a cold copy; the counting proxy took %.2f CPU s for it", proxyCPU.Seconds())))
	return t, nil
}

// linkPull is a cold pull into a workstation directory and cache of its
// own, with the link shaped for its duration, and no proxy: its bytes are
// counted at the link. It returns the rate of a plain TCP stream over the
// same link, counted the same way.
func linkPull(ctx context.Context, link *shapedLink, srv *chunkServer, root rootHash, d dirs, size int64) (_ Row, tcp float64, err error) {
	if err := link.shape(ctx, linkRate); err != nil {
		return Row{}, 0, err
	}
	defer link.shape(context.Background(), "")
	if tcp, err = link.tcpRate(ctx, min(size/8, 256<<20)); err != nil {
		return Row{}, 0, err
	}
	d.wsImage, d.wsCache = filepath.Join(d.wsLink, "image.img"), filepath.Join(d.wsLink, "cache")
	defer os.RemoveAll(d.wsLink)
	settle()
	row, err := measuredPull(ctx, srv, root, d, CaseColdLink, size, link.through)
	row.Note = fmt.Sprintf("tc tbf %s on a veth pair, the server in a network namespace; bytes counted at the link, TCP/IP headers included; one plain TCP stream moves %s/s over it, so counted; %s",
		linkRate, formatBytes(int64(tcp)), row.Note)
	return row, tcp, err
}

// settle writes back what earlier steps left dirty, so that each timed
// transfer starts on a quiet disk and pays only for its own writes: the
// kernel charges writeback to whoever writes when too much is dirty.
func settle() { syscall.Sync() }

// dirs is where everything of one run lives.
type dirs struct {
	server, serverImage, serverData, serverCache string
	ws, wsImage, wsCache, oldImage               string
	wsLink                                       string // the pull over the shaped link
	rsync, rsyncWS, zstdWS                       string
}

func layout(work string) dirs {
	j := filepath.Join
	return dirs{
		server: j(work, "server"), serverImage: j(work, "server", "image.img"),
		serverData: j(work, "server-data"), serverCache: j(work, "server-cache"),
		ws: j(work, "ws"), wsImage: j(work, "ws", "image.img"), wsCache: j(work, "ws-cache"),
		oldImage: j(work, "ws-old.img"), wsLink: j(work, "ws-link"),
		rsync: j(work, "rsyncd"), rsyncWS: j(work, "ws-rsync"), zstdWS: j(work, "ws-zstd"),
	}
}

func timedPush(ctx context.Context, image, dataDir, cache string, size int64) (rootHash, Row, error) {
	cpu0, start := selfCPU(), time.Now()
	root, err := pushLocal(ctx, image, dataDir, cache)
	if err != nil {
		return root, Row{}, err
	}
	elapsed := time.Since(start)
	return root, Row{Case: CaseServerPush, Tool: ToolHandoff, Down: -1, Up: -1, Time: elapsed,
		Rate: float64(size) / elapsed.Seconds(), ServerCPU: selfCPU() - cpu0, Note: "no network"}, nil
}

// oursPull pulls root onto the workstation's image through a counting
// proxy and checks the result against the server's image.
func oursPull(ctx context.Context, srv *chunkServer, root rootHash, d dirs, name string, size int64) (Row, error) {
	return measuredPull(ctx, srv, root, d, name, size, throughProxy)
}

// measuredPull is oursPull, measured by through.
func measuredPull(ctx context.Context, srv *chunkServer, root rootHash, d dirs, name string, size int64, through measure) (Row, error) {
	var st engineStats
	var server0 time.Duration
	if srv.cpu != nil {
		var err error
		if server0, err = srv.cpu(); err != nil {
			return Row{}, err
		}
	}
	m, err := through(ctx, srv.Addr, func(addr string) (cpuTimes, error) {
		var cpu time.Duration
		var err error
		st, cpu, err = pullRemote(ctx, srv, addr, root, d.wsCache, d.wsImage)
		return cpuTimes{Workstation: cpu}, err
	})
	if err != nil {
		return Row{}, fmt.Errorf("%s: %w", name, err)
	}
	where := "the server runs in this process: its CPU time is in the workstation's"
	if srv.cpu != nil {
		server1, err := srv.cpu()
		if err != nil {
			return Row{}, err
		}
		m.Server = server1 - server0
		where = "server: handoff serve"
	}
	if err := sameFiles(ctx, d.wsImage, d.serverImage); err != nil {
		return Row{}, fmt.Errorf("%s: %w", name, err)
	}
	note := fmt.Sprintf("verified; %d of %d chunks fetched (%d as changes only), engine counted %s; %s",
		st.Sent, st.Chunks, st.Patched, formatBytes(st.WireBytes), where)
	return transferRow(name, ToolHandoff, m, size, note), nil
}

func transferRow(name, tool string, m measured, size int64, note string) Row {
	return Row{Case: name, Tool: tool, Down: m.Down, Up: m.Up, Time: m.Time, Busy: m.Busy,
		Rate: float64(size) / m.Time.Seconds(), WorkstationCPU: m.Workstation, ServerCPU: m.Server, Note: note}
}

// sameFiles checks that two files hold the same bytes: a bench that moved
// the wrong bytes measured nothing.
func sameFiles(ctx context.Context, got, want string) error {
	a, err := os.Open(got)
	if err != nil {
		return fmt.Errorf("verify: %w", err)
	}
	defer a.Close()
	b, err := os.Open(want)
	if err != nil {
		return fmt.Errorf("verify: %w", err)
	}
	defer b.Close()
	bufA, bufB := make([]byte, 4<<20), make([]byte, 4<<20)
	var off int64
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		na, errA := io.ReadFull(a, bufA)
		nb, errB := io.ReadFull(b, bufB)
		if na != nb || !bytes.Equal(bufA[:na], bufB[:nb]) {
			i := 0
			for i < min(na, nb) && bufA[i] == bufB[i] {
				i++
			}
			return fmt.Errorf("verify: %s differs from the server's image %s at byte %d: the transfer is wrong", got, want, off+int64(i))
		}
		off += int64(na)
		if errA != nil || errB != nil {
			if errA == io.ErrUnexpectedEOF || errA == io.EOF {
				return nil
			}
			return fmt.Errorf("verify %s: %v %v", got, errA, errB)
		}
	}
}

func syncFile(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// rsyncUpdates pulls the new image with rsync, with and without -z, from a
// daemon serving the server's directory, each time onto the old image.
func rsyncUpdates(ctx context.Context, d dirs, size int64, say func(string, ...any)) ([]Row, error) {
	var rows []Row
	daemon, err := startRsyncDaemon(ctx, d.rsync, d.server)
	if err != nil {
		return rows, err
	}
	defer daemon.stop()
	for _, tool := range []string{ToolRsyncZ, ToolRsync} {
		say("%s of the update", tool)
		dst := filepath.Join(d.rsyncWS, filepath.Base(d.serverImage))
		// A link is enough: rsync writes a new file and renames it over
		// dst, reading the old one as its basis.
		os.Remove(dst)
		if err := os.Link(d.oldImage, dst); err != nil {
			return rows, fmt.Errorf("give rsync the old image: %w", err)
		}
		settle()
		server0, err := procCPU(daemon.pid())
		if err != nil {
			return rows, err
		}
		var compression string
		m, err := throughProxy(ctx, daemon.Addr, func(addr string) (cpuTimes, error) {
			cpu, c, err := rsyncPull(ctx, addr, filepath.Base(d.serverImage), dst, tool == ToolRsyncZ)
			compression = c
			return cpuTimes{Workstation: cpu}, err
		})
		if err != nil {
			return rows, err
		}
		// The daemon's child for the connection did the work; its CPU
		// time is the daemon's once the child has exited.
		if err := waitNoChildren(ctx, daemon.pid()); err != nil {
			return rows, fmt.Errorf("%s: %w", tool, err)
		}
		server1, err := procCPU(daemon.pid())
		if err != nil {
			return rows, err
		}
		m.Server = server1 - server0
		if err := sameFiles(ctx, dst, d.serverImage); err != nil {
			return rows, fmt.Errorf("%s: %w", tool, err)
		}
		note := "verified"
		if compression != "" {
			note = "compressed with " + compression + "; " + note
		}
		rows = append(rows, transferRow(CaseUpdate, tool, m, size, note))
		os.Remove(dst)
	}
	return rows, nil
}
