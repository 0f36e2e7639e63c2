package testkit

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
)

// BreakingProxy stands in front of the HTTP server at target and breaks
// the first follow of path (a request for it with follow=true) after its
// first whole server-sent event, as a gateway that dies or a proxy that
// drops the connection would; the next refusals follows of path are
// answered 503 by the proxy itself, as HAProxy does while no gateway is up.
// Every other request, and every later follow, goes through whole. It
// returns the proxy's URL and counts the follows of path it saw. It closes
// when tb ends.
func BreakingProxy(tb testing.TB, target, path string, refusals int) (string, *atomic.Int32) {
	tb.Helper()
	u, err := url.Parse(target)
	if err != nil {
		tb.Fatalf("testkit: breaking proxy: %v", err)
	}
	follows := &atomic.Int32{}
	proxy := httputil.NewSingleHostReverseProxy(u)
	proxy.FlushInterval = -1
	proxy.ModifyResponse = func(resp *http.Response) error {
		if resp.Request.URL.Path != path || resp.Request.URL.Query().Get("follow") != "true" {
			return nil
		}
		switch n := int(follows.Add(1)); {
		case n == 1:
			resp.Body = &breakAfterFirstEvent{body: resp.Body}
		case n <= 1+refusals:
			_ = resp.Body.Close()
			const page = "<html><body><h1>503 Service Unavailable</h1>\nNo server is available to handle this request.\n</body></html>\n"
			resp.StatusCode, resp.Status = http.StatusServiceUnavailable, "503 Service Unavailable"
			resp.Header = http.Header{"Content-Type": {"text/html"}, "Content-Length": {strconv.Itoa(len(page))}}
			resp.Body, resp.ContentLength = io.NopCloser(strings.NewReader(page)), int64(len(page))
		}
		return nil
	}
	front := httptest.NewServer(proxy)
	tb.Cleanup(front.Close)
	return front.URL, follows
}

// breakAfterFirstEvent passes a stream's bytes on up to the end of its
// first event (the blank line after its data), then breaks the stream.
type breakAfterFirstEvent struct {
	body io.ReadCloser
	seen []byte
	done bool
}

func (c *breakAfterFirstEvent) Read(p []byte) (int, error) {
	if c.done {
		return 0, io.ErrUnexpectedEOF
	}
	n, err := c.body.Read(p)
	from := len(c.seen)
	c.seen = append(c.seen, p[:n]...)
	if data := bytes.Index(c.seen, []byte("data:")); data >= 0 {
		if end := bytes.Index(c.seen[data:], []byte("\n\n")); end >= 0 {
			c.done = true
			return data + end + 2 - from, nil
		}
	}
	return n, err
}

func (c *breakAfterFirstEvent) Close() error { return c.body.Close() }
