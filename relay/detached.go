package relay

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"syscall"
	"time"
)

// Detached is the workstation's end of the relay in a process of its own,
// outside its client's session: a client killed mid-move (kill -9, a
// closed terminal, Ctrl-C's signal to the terminal's process group) takes
// no stream with it, so the job goes on in libvirtd and the next client
// takes it over, as it does a job whose memory goes directly. Once its
// client is gone the process lives until the streams it carries end.
type Detached struct {
	// Command makes that process: one that runs RunDetached with the same
	// Carrier (handoff itself, with the arguments that name it).
	Command func() *exec.Cmd
	// Stats, if set, mirrors the process's counts while its client lives.
	Stats *Stats
}

// report is one line the detached end writes to its client.
type report struct {
	Port  int    `json:"port,omitempty"`
	Error string `json:"error,omitempty"` // it could not open a way
	Raw   uint64 `json:"raw,omitempty"`
	Wire  uint64 `json:"wire,omitempty"`
	Mode  Mode   `json:"mode,omitempty"`
	Why   string `json:"why,omitempty"`
	Done  bool   `json:"done,omitempty"`  // the last line, after stop
	Broke string `json:"broke,omitempty"` // with Done: what broke a stream
}

// stopWord, on the detached end's input, is its client's stop. Input that
// ends without it means the client is gone.
const stopWord = "stop"

// Carry starts the detached end and returns the port of the way it opens;
// stop ends it and returns what broke a stream, as Carrier's does.
func (d *Detached) Carry(ctx context.Context) (int, func() error, error) {
	return d.carry(ctx, setup{})
}

// CarryMirror is Carry for the disks' NBD mirror: see Mirror.
func (d *Detached) CarryMirror(ctx context.Context, m *Mirror) (int, func() error, error) {
	return d.carry(ctx, setup{Mirror: m})
}

// setup is the first line on the detached end's input: what its way is.
type setup struct {
	Mirror *Mirror `json:"mirror,omitempty"`
}

func (d *Detached) carry(ctx context.Context, way setup) (int, func() error, error) {
	cmd := d.Command()
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	control, err := cmd.StdinPipe()
	if err != nil {
		return 0, nil, err
	}
	reports, reportsW, err := os.Pipe()
	if err != nil {
		return 0, nil, err
	}
	// Its reports go on a descriptor of their own: a write there after its
	// client died fails, where one to standard output would kill it.
	cmd.ExtraFiles = []*os.File{reportsW}
	err = cmd.Start()
	reportsW.Close()
	if err != nil {
		reports.Close()
		return 0, nil, fmt.Errorf("start the relay's workstation end (%s): %w", cmd.Path, err)
	}
	json.NewEncoder(control).Encode(way) // if it died already, its reports say so
	first := make(chan report, 1)
	var last report
	ended := make(chan struct{})
	go func() {
		defer close(ended)
		defer reports.Close()
		sc := bufio.NewScanner(reports)
		opened := false
		for sc.Scan() {
			var r report
			if json.Unmarshal(sc.Bytes(), &r) != nil {
				continue
			}
			if !opened {
				opened = true
				first <- r
				continue
			}
			if d.Stats != nil {
				d.Stats.Raw.Store(r.Raw)
				d.Stats.Wire.Store(r.Wire)
				d.Stats.mode.Store(int32(r.Mode))
				d.Stats.why.Store(&r.Why)
			}
			last = r
		}
		if !opened {
			close(first)
		}
	}()
	stop := func() error {
		io.WriteString(control, stopWord+"\n")
		control.Close()
		<-ended
		werr := cmd.Wait()
		switch {
		case !last.Done:
			return fmt.Errorf("the relay's workstation end ended without its last report (%v)", werr)
		case last.Broke != "":
			return errors.New(last.Broke)
		}
		return nil
	}
	select {
	case r, ok := <-first:
		switch {
		case !ok:
			stop()
			return 0, nil, errors.New("the relay's workstation end ended before it opened a way")
		case r.Error != "":
			stop()
			return 0, nil, errors.New(r.Error)
		}
		return r.Port, stop, nil
	case <-ctx.Done():
		stop()
		return 0, nil, ctx.Err()
	}
}

// RunDetached is the process Detached starts: it opens a way with c, says
// its port on out, and carries until its client writes the stop word on
// in, or, if in ends without it (the client died), until the streams it
// carries have ended: the job they belong to goes on without its client.
func RunDetached(ctx context.Context, c *Carrier, in io.Reader, out io.Writer) error {
	if c.Stats == nil {
		c.Stats = &Stats{}
	}
	enc := json.NewEncoder(out)
	input := bufio.NewReader(in)
	var way setup
	line, err := input.ReadBytes('\n')
	if err == nil {
		err = json.Unmarshal(line, &way)
	}
	if err != nil {
		enc.Encode(report{Error: fmt.Sprintf("read what way to open: %v", err)})
		return err
	}
	if way.Mirror != nil {
		c.Mirror = way.Mirror
	}
	port, w, stop, err := c.open(ctx)
	if err != nil {
		enc.Encode(report{Error: err.Error()})
		return err
	}
	if err := enc.Encode(report{Port: port}); err != nil {
		stop()
		return fmt.Errorf("tell the client the relay's port: %w", err)
	}
	told := make(chan bool, 1) // true: stop; false: the client is gone
	go func() {
		sc := bufio.NewScanner(input)
		for sc.Scan() {
			if sc.Text() == stopWord {
				told <- true
				return
			}
		}
		told <- false
	}()
	counts := func() report {
		mode, why := c.Stats.Mode()
		return report{Raw: c.Stats.Raw.Load(), Wire: c.Stats.Wire.Load(), Mode: mode, Why: why}
	}
	finish := func() error {
		r := counts()
		r.Done = true
		if err := stop(); err != nil {
			r.Broke = err.Error()
		}
		enc.Encode(r) // nobody reads it if the client is gone
		return nil
	}
	tick := time.NewTicker(reportEvery)
	defer tick.Stop()
	var orphaned time.Time
	for {
		select {
		case <-ctx.Done():
			return finish()
		case byClient := <-told:
			if byClient {
				return finish()
			}
			orphaned = time.Now()
		case <-tick.C:
			if orphaned.IsZero() {
				enc.Encode(counts())
			} else if outlived(int(w.live.Load()), int(w.ended.Load()), time.Since(orphaned)) {
				return finish()
			}
		}
	}
}

// reportEvery is how often the detached end sends its counts.
const reportEvery = 250 * time.Millisecond

// orphanWait is how long an end whose client died waits for a stream that
// has not begun: the job may still be setting up in libvirtd.
const orphanWait = 2 * time.Minute

// outlived says whether an end whose client died orphanedFor ago is done:
// no stream is carried now, and one has ended (the job finished, failed or
// was aborted by the client that took it over; a post-copy resumed after
// that goes as its new client sets it up) or none began in orphanWait.
func outlived(live, ended int, orphanedFor time.Duration) bool {
	return live == 0 && (ended > 0 || orphanedFor > orphanWait)
}
