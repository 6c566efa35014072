package leasectl

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/handoff-dev/handoff/internal/stalldial"
	"io"
	"net"
	"net/http"
	"net/url"
	"time"
)

// Client talks to a handoff server's lease API.
type Client struct {
	base  string
	token string
	http  *http.Client
}

// NewClient reaches the server at base (https://host:port) with a device
// token, trusting only the certificate with the given fingerprint.
func NewClient(base, token, fingerprint string) *Client {
	return NewClientVia(base, token, fingerprint, nil)
}

// NewClientVia is NewClient over the connections dial opens (nil: the
// system's dialer), as http.Transport's DialContext: the lab's
// workstation dials from inside its network namespace, across its link.
func NewClientVia(base, token, fingerprint string, dial func(ctx context.Context, network, addr string) (net.Conn, error)) *Client {
	return &Client{base: base, token: token, http: &http.Client{
		Timeout:   30 * time.Second,
		Transport: &http.Transport{TLSClientConfig: PinnedTLS(fingerprint), DialContext: stalldial.Wrap(dial)},
	}}
}

func (c *Client) call(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return fmt.Errorf("lease server %s: %w", c.base, err)
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("reach the lease server %s: %w (is handoff serve running there?)", c.base, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var e apiError
		json.NewDecoder(io.LimitReader(resp.Body, maxBody)).Decode(&e)
		return e.asError(resp.Status)
	}
	if out == nil {
		return nil
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

// asError turns the server's refusal back into the state machine's error.
func (e apiError) asError(status string) error {
	for _, ec := range errorCodes {
		if ec.code == e.Code {
			if ec.err == ErrHeld {
				return &HeldError{Holder: e.Holder, Expires: e.Expires}
			}
			return fmt.Errorf("%w (server: %s)", ec.err, e.Error)
		}
	}
	if e.Error == "" {
		e.Error = "no reason given"
	}
	return errors.New("lease server: " + status + ": " + e.Error)
}

func imagePath(image string, op string) string {
	p := "/v1/images/" + url.PathEscape(image)
	if op != "" {
		p += "/" + op
	}
	return p
}

func (c *Client) Create(ctx context.Context, image string) error {
	return c.call(ctx, http.MethodPost, imagePath(image, ""), struct{}{}, nil)
}

func (c *Client) Acquire(ctx context.Context, image, holder string, ttl time.Duration) (l Lease, err error) {
	return l, c.call(ctx, http.MethodPost, imagePath(image, "acquire"), request{Holder: holder, TTLSeconds: ttl.Seconds()}, &l)
}

func (c *Client) Renew(ctx context.Context, image, lease string, ttl time.Duration) (l Lease, err error) {
	return l, c.call(ctx, http.MethodPost, imagePath(image, "renew"), request{LeaseID: lease, TTLSeconds: ttl.Seconds()}, &l)
}

func (c *Client) Release(ctx context.Context, image, lease string) error {
	return c.call(ctx, http.MethodPost, imagePath(image, "release"), request{LeaseID: lease}, nil)
}

func (c *Client) Steal(ctx context.Context, image, holder, reason string, ttl time.Duration) (l Lease, err error) {
	return l, c.call(ctx, http.MethodPost, imagePath(image, "steal"), request{Holder: holder, Reason: reason, TTLSeconds: ttl.Seconds()}, &l)
}

func (c *Client) Checkout(ctx context.Context, image string) (co Checkout, err error) {
	return co, c.call(ctx, http.MethodPost, imagePath(image, "checkout"), struct{}{}, &co)
}

func (c *Client) Commit(ctx context.Context, image string, req CommitRequest) (cm Commit, err error) {
	q := request{Parent: req.Parent, LeaseID: req.LeaseID, Holder: req.Holder, Manifest: req.Manifest}
	return cm, c.call(ctx, http.MethodPost, imagePath(image, "commits"), q, &cm)
}

func (c *Client) Branch(ctx context.Context, image, newImage string, req CommitRequest) (cm Commit, err error) {
	q := request{Parent: req.Parent, LeaseID: req.LeaseID, Holder: req.Holder, Manifest: req.Manifest, NewImage: newImage}
	return cm, c.call(ctx, http.MethodPost, imagePath(image, "branch"), q, &cm)
}

func (c *Client) Status(ctx context.Context, image string) (s *State, err error) {
	return s, c.call(ctx, http.MethodGet, imagePath(image, ""), nil, &s)
}
