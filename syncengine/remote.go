package syncengine

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/handoff-dev/handoff/internal/stalldial"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"time"
)

// Remote is a store a Client pulls from and pushes to: the home server's
// (HTTPStore) or a directory (DirStore), which run the same protocol.
type Remote interface {
	// call sends one operation's request and returns its record stream.
	call(ctx context.Context, codec *Codec, op string, body io.Reader) (io.ReadCloser, error)
	// String names the store in messages.
	String() string
}

var (
	_ Remote = HTTPStore{}
	_ Remote = DirStore{}
)

func (d DirStore) String() string { return "the chunk store in " + d.Dir }

// call runs the operation in this process, through a pipe, so a directory
// store speaks exactly the protocol the home server does.
func (d DirStore) call(ctx context.Context, codec *Codec, op string, body io.Reader) (io.ReadCloser, error) {
	fn, ok := (&server{store: d, codec: codec}).operations()[op]
	if !ok {
		return nil, fmt.Errorf("unknown operation %q", op)
	}
	ctx, cancel := context.WithCancel(ctx)
	pr, pw := io.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		pw.CloseWithError(serve(ctx, codec, fn, body, pw))
	}()
	return &pipeCloser{pr, cancel, done}, nil
}

// pipeCloser stops the operation behind a pipe when its reader is closed,
// and waits for it.
type pipeCloser struct {
	*io.PipeReader
	cancel context.CancelFunc
	done   <-chan struct{}
}

func (p *pipeCloser) Close() error {
	p.cancel()
	err := p.PipeReader.Close()
	<-p.done
	return err
}

// HTTPStore is the home server's chunk store, reached through Handler.
type HTTPStore struct {
	Base   string // e.g. https://server:7443/v1/chunks
	Token  string
	Client *http.Client // best made with NewHTTPClient
}

// NewHTTPClient is a client for an HTTPStore that keeps a connection open
// for each of a pull's parallel transfers: with the default two, every
// other request paid a TLS handshake and TCP slow start, and a cold pull
// over a 1 Gbit/s link moved 85% of what the link carries.
func NewHTTPClient(tlsConfig *tls.Config) *http.Client { return NewHTTPClientVia(tlsConfig, nil) }

// NewHTTPClientVia is NewHTTPClient over the connections dial opens (nil:
// the system's dialer), as http.Transport's DialContext: the lab's
// workstation dials from inside its network namespace, across its link.
func NewHTTPClientVia(tlsConfig *tls.Config, dial func(ctx context.Context, network, addr string) (net.Conn, error)) *http.Client {
	return &http.Client{Transport: &http.Transport{
		TLSClientConfig:     tlsConfig,
		DialContext:         stalldial.Wrap(dial),
		MaxIdleConnsPerHost: transfers,
		IdleConnTimeout:     time.Minute,
	}}
}

func (s HTTPStore) String() string { return "the chunk store at " + s.Base }

func (s HTTPStore) call(ctx context.Context, _ *Codec, op string, body io.Reader) (io.ReadCloser, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimSuffix(s.Base, "/")+"/"+op, body)
	if err != nil {
		return nil, fmt.Errorf("chunk store address %q: %w", s.Base, err)
	}
	req.Header.Set("Content-Type", "application/x-handoff-records")
	if s.Token != "" {
		req.Header.Set("Authorization", "Bearer "+s.Token)
	}
	c := s.Client
	if c == nil {
		c = http.DefaultClient
	}
	resp, err := c.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // the URL and method say nothing the store's name does not
		}
		var op *net.OpError
		if errors.As(err, &op) && op.Op == "dial" {
			return nil, linkError{fmt.Errorf("reach %s: %w: is the server running, and is the address right?", s, err)}
		}
		return nil, linkError{fmt.Errorf("the link to %s broke: %w", s, err)}
	}
	if resp.StatusCode == http.StatusOK {
		return resp.Body, nil
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	text := strings.TrimSpace(string(msg))
	var reason struct{ Error string }
	if json.Unmarshal(msg, &reason) == nil && reason.Error != "" {
		text = reason.Error
	}
	switch resp.StatusCode {
	case http.StatusUnauthorized, http.StatusForbidden:
		if text == "" {
			text = "log in again with 'handoff lease login'"
		}
		return nil, fmt.Errorf("%s refused this device's token: %s", s, text)
	case http.StatusNotFound, http.StatusMethodNotAllowed:
		return nil, fmt.Errorf("%s does not serve %q (%s): is the address the server's, and is the server up to date?", s, op, resp.Status)
	}
	return nil, fmt.Errorf("%s: %s: %s", s, resp.Status, text)
}

// linkError is a failure of the link itself: worth another try, and told
// in the link's words, not the protocol's.
type linkError struct{ error }

func (e linkError) Unwrap() []error { return []error{errCut, e.error} }

// counter counts the bytes that pass through a reader.
type counter struct {
	r io.Reader
	n *atomic.Int64
}

func (c counter) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.n.Add(int64(n))
	return n, err
}

// exchange sends one request and opens its answer's record stream,
// counting the bytes both ways in *wire.
func exchange(ctx context.Context, r Remote, codec *Codec, op string, body io.Reader, wire *atomic.Int64) (*recordReader, func(), error) {
	rc, err := r.call(ctx, codec, op, counter{body, wire})
	if err != nil {
		return nil, nil, err
	}
	return newRecordReader(counter{rc, wire}, codec), func() {
		// What the reader left (an HTTP body's last bytes) is read, so
		// that the connection goes back to be used again, unless a broken
		// answer left much.
		io.CopyN(io.Discard, rc, 64<<10)
		rc.Close()
	}, nil
}
