// Package apiclient is the small client of Flotilla's REST API that the
// load drivers (apiload, fleetbench, agentsim) share, and the rule that they
// load this machine only.
package apiclient

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"time"
)

// Client calls the API at Base with a bearer Token (none before Login).
type Client struct {
	Base  string
	Token string
	HTTP  *http.Client
}

// New is a client of base keeping up to idle connections open between
// requests, each request bounded by timeout.
func New(base string, idle int, timeout time.Duration) *Client {
	return &Client{Base: base, HTTP: &http.Client{Timeout: timeout, Transport: &http.Transport{MaxIdleConnsPerHost: idle}}}
}

// Login logs in as user and keeps the token.
func (c *Client) Login(ctx context.Context, user, password string) error {
	var login struct{ Token string }
	if err := c.Do(ctx, http.MethodPost, "/api/v1/login", map[string]string{"username": user, "password": password}, &login); err != nil {
		return err
	}
	c.Token = login.Token
	return nil
}

// Error is an error answer of the API.
type Error struct {
	Status  int
	Reason  string `json:"reason"`
	Message string `json:"message"`
}

func (e *Error) Error() string { return fmt.Sprintf("%d %s: %s", e.Status, e.Reason, e.Message) }

// StatusOf returns the HTTP status of an API error, or 0.
func StatusOf(err error) int {
	var e *Error
	if errors.As(err, &e) {
		return e.Status
	}
	return 0
}

// Do sends body (nil, or a value to encode as JSON) and decodes a
// successful answer into out (if not nil); an error answer is an *Error.
func (c *Client) Do(ctx context.Context, method, path string, body, out any) error {
	var r io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.Base+path, r)
	if err != nil {
		return err
	}
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	if resp.StatusCode >= 300 {
		e := &Error{Status: resp.StatusCode}
		if json.Unmarshal(data, e) != nil || e.Message == "" {
			e.Message = string(bytes.TrimSpace(data))
		}
		return fmt.Errorf("%s %s: %w", method, path, e)
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("%s %s: decode the answer: %w", method, path, err)
		}
	}
	return nil
}

// Loopback refuses a host (or the host of a URL) that is not this machine:
// the load drivers' load goes nowhere else.
func Loopback(what, hostOrURL string) error {
	host := hostOrURL
	if u, err := url.Parse(hostOrURL); err == nil && u.Host != "" {
		host = u.Hostname()
	}
	if ip := net.ParseIP(host); host == "localhost" || (ip != nil && ip.IsLoopback()) {
		return nil
	}
	return fmt.Errorf("%s: %q is not this machine (localhost or 127.0.0.0/8); the load drivers load only loopback targets", what, host)
}
