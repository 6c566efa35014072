package syncengine

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"
)

// The image operations over HTTP, each a POST of a JSON request:
//
//	index     {"path": P}             the image at P into the store
//	checkout  {"root": R, "path": P}  the image or chain R to P
//	assemble  {"recipe": R, "base": B, "path": P}
//	                                  the file recipe R makes of image B, to P
//
// Both may run for tens of seconds, so the answer is a stream of JSON
// lines: progress while the work goes on (and at least every few seconds,
// so that no proxy takes the link for dead), then one line with the
// result or the error. A request whose client goes away is cancelled:
// the work stops, the store keeps whole objects only, and a checkout's
// target stays as it was.

// imageLine is one line of an image operation's answer.
type imageLine struct {
	Progress *imageProgress  `json:"progress,omitempty"`
	Result   json.RawMessage `json:"result,omitempty"`
	Error    string          `json:"error,omitempty"`
	Kind     string          `json:"kind,omitempty"` // what the error is, for the client's errors.Is
}

type imageProgress struct {
	Step  string `json:"step"`
	Done  int64  `json:"done"`
	Total int64  `json:"total"`
}

// The kinds of error an answer names.
var imageErrorKinds = map[string]error{
	"outside":   ErrOutsideImages,
	"in-use":    ErrInUse,
	"busy":      ErrBusy,
	"not-found": ErrNotFound,
	"disk-full": ErrDiskFull,
	"corrupt":   ErrCorrupt,
	"cancelled": context.Canceled,
}

func imageErrorKind(err error) string {
	for k, sentinel := range imageErrorKinds {
		if errors.Is(err, sentinel) {
			return k
		}
	}
	return ""
}

// maxImageRequest bounds a request: a path and a root.
const maxImageRequest = 64 << 10

// heartbeat is how often an answer says where the work stands, at most and
// at least.
const heartbeat = 2 * time.Second

// Handler serves the image operations; `handoff serve` mounts it under
// /v1/disks/ behind its device tokens.
func (im *Images) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /index", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Path string `json:"path"`
		}
		streamImageOp(w, r, &req, func(ctx context.Context, progress Progress) (any, error) {
			return im.Index(ctx, req.Path, progress)
		})
	})
	mux.HandleFunc("POST /checkout", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Root Hash   `json:"root"`
			Path string `json:"path"`
		}
		streamImageOp(w, r, &req, func(ctx context.Context, progress Progress) (any, error) {
			return im.Checkout(ctx, req.Root, req.Path, progress)
		})
	})
	mux.HandleFunc("POST /assemble", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Recipe Hash   `json:"recipe"`
			Base   Hash   `json:"base"`
			Path   string `json:"path"`
		}
		streamImageOp(w, r, &req, func(ctx context.Context, progress Progress) (any, error) {
			return im.Assemble(ctx, req.Recipe, req.Base, req.Path, progress)
		})
	})
	return mux
}

// streamImageOp reads the request into req, runs op and streams its
// progress and its end as JSON lines.
func streamImageOp(w http.ResponseWriter, r *http.Request, req any, op func(context.Context, Progress) (any, error)) {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxImageRequest+1))
	if err == nil && len(body) > maxImageRequest {
		err = fmt.Errorf("over %d bytes", maxImageRequest)
	}
	if err == nil {
		d := json.NewDecoder(bytes.NewReader(body))
		d.DisallowUnknownFields()
		err = d.Decode(req)
	}
	if err != nil {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusBadRequest)
		json.NewEncoder(w).Encode(map[string]string{"error": "malformed request: " + err.Error()})
		return
	}
	// The server's own timeouts, if any, must not cut a long operation.
	rc := http.NewResponseController(w)
	rc.SetWriteDeadline(time.Time{})
	rc.SetReadDeadline(time.Time{})
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	out := &lineWriter{w: w, rc: rc}

	ctx, cancel := context.WithCancel(r.Context())
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Go(func() { // says where the work stands at least every heartbeat
		t := time.NewTicker(heartbeat)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				out.beat()
			}
		}
	})
	res, err := op(ctx, out.progress)
	cancel()
	wg.Wait()
	if err != nil {
		out.write(imageLine{Error: err.Error(), Kind: imageErrorKind(err)})
		return
	}
	b, err := json.Marshal(res)
	if err != nil {
		out.write(imageLine{Error: fmt.Sprintf("encode the result: %v", err)})
		return
	}
	out.write(imageLine{Result: b})
}

// lineWriter writes an answer's lines, from the work and the heartbeat.
type lineWriter struct {
	w  io.Writer
	rc *http.ResponseController

	mu   sync.Mutex
	last imageProgress
	at   time.Time // when a line was last written
}

func (l *lineWriter) write(line imageLine) {
	b, _ := json.Marshal(line)
	l.w.Write(append(b, '\n'))
	l.rc.Flush()
	l.at = time.Now()
}

// progress is the work's Progress: a line at most every heartbeat/4, and
// one at the end of each step.
func (l *lineWriter) progress(step string, done, total int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	p := imageProgress{step, done, total}
	stepEnd := done >= total
	l.last = p
	if !stepEnd && time.Since(l.at) < heartbeat/4 {
		return
	}
	l.write(imageLine{Progress: &p})
}

// beat repeats the last progress if nothing was said for a heartbeat.
func (l *lineWriter) beat() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if time.Since(l.at) >= heartbeat {
		p := l.last
		l.write(imageLine{Progress: &p})
	}
}

// ImagesClient asks the home server to index and check out images on its
// own disk, over the token and pinned TLS of the chunk store's client.
type ImagesClient struct {
	Base     string // e.g. https://server:7443/v1/disks
	Token    string
	Client   *http.Client // best made with NewHTTPClient
	Progress Progress     // may be nil: the server's progress, as it reports it
}

func (c ImagesClient) String() string { return "the server's image folders at " + c.Base }

// Index asks the server to store the image at path on its disk (and its
// backing chain) in its store, and returns its root.
func (c ImagesClient) Index(ctx context.Context, path string) (IndexResult, error) {
	var res IndexResult
	err := c.do(ctx, "index", map[string]any{"path": path}, &res)
	return res, err
}

// Checkout asks the server to write the image or chain root from its store
// to path on its disk.
func (c ImagesClient) Checkout(ctx context.Context, root Hash, path string) (CheckoutResult, error) {
	var res CheckoutResult
	err := c.do(ctx, "checkout", map[string]any{"root": root, "path": path}, &res)
	return res, err
}

// Assemble asks the server to write to path on its disk the file that
// recipe makes of base, both in its store.
func (c ImagesClient) Assemble(ctx context.Context, recipe, base Hash, path string) (AssembleResult, error) {
	var res AssembleResult
	err := c.do(ctx, "assemble", map[string]any{"recipe": recipe, "base": base, "path": path}, &res)
	return res, err
}

func (c ImagesClient) do(ctx context.Context, op string, req, res any) error {
	body, err := json.Marshal(req)
	if err != nil {
		return err
	}
	// The chunk store's client says what a refused token, a server without
	// the operation or a broken link mean.
	rc, err := HTTPStore{Base: c.Base, Token: c.Token, Client: c.Client}.call(ctx, nil, op, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("%s %s: %w", op, c, err)
	}
	defer rc.Close()
	d := json.NewDecoder(rc)
	for {
		var line imageLine
		if err := d.Decode(&line); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("%s at %s: the answer broke off before its end (%v): the link or the server stopped; run the same command again (%w)", op, c.Base, err, errCut)
		}
		switch {
		case line.Error != "":
			return &remoteError{line.Error, imageErrorKinds[line.Kind]}
		case line.Result != nil:
			if err := json.Unmarshal(line.Result, res); err != nil {
				return fmt.Errorf("%s at %s: the result is not one this handoff reads (%v): is the server up to date?", op, c.Base, err)
			}
			return nil
		case line.Progress != nil && c.Progress != nil:
			c.Progress(line.Progress.Step, line.Progress.Done, line.Progress.Total)
		}
	}
}
