package agentsim

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

// api is a client of Flotilla's REST API with an operator's bearer token.
type api struct {
	base  string
	token string
	http  *http.Client
}

func newAPI(base, token string) *api {
	return &api{base: base, token: token, http: &http.Client{Timeout: 60 * time.Second,
		Transport: &http.Transport{MaxIdleConnsPerHost: MaxConcurrency, MaxConnsPerHost: MaxConcurrency}}}
}

// apiError is an error answer of the API.
type apiError struct {
	Status  int
	Reason  string `json:"reason"`
	Message string `json:"message"`
}

func (e *apiError) Error() string { return fmt.Sprintf("%d %s: %s", e.Status, e.Reason, e.Message) }

// statusOf returns the HTTP status of an API error, or 0.
func statusOf(err error) int {
	var e *apiError
	if errors.As(err, &e) {
		return e.Status
	}
	return 0
}

// do sends body (nil, or a value to encode as JSON) and decodes a
// successful answer into out (if not nil).
func (c *api) do(ctx context.Context, method, path string, body, out any) error {
	var r io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, r)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	if resp.StatusCode >= 300 {
		e := &apiError{Status: resp.StatusCode}
		if json.Unmarshal(data, e) != nil || e.Message == "" {
			e.Message = string(data)
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

// resource is what agentsim reads of a network, template or instance.
type resource struct {
	ID          string `json:"id"`
	Name        string `json:"name"`
	Provider    string `json:"provider"`
	State       string `json:"state"`
	StateDetail string `json:"stateDetail"`
	VMID        string `json:"vmId"`
	Agent       struct {
		Status string `json:"status"`
	} `json:"agent"`
}

// list reads every page of a collection ("networks", "templates",
// "instances") and calls f with each item.
func (c *api) list(ctx context.Context, collection string, f func(resource)) error {
	token := ""
	for {
		var page map[string]json.RawMessage
		q := url.Values{"pageSize": {"500"}}
		if token != "" {
			q.Set("pageToken", token)
		}
		if err := c.do(ctx, "GET", "/api/v1/"+collection+"?"+q.Encode(), nil, &page); err != nil {
			return err
		}
		var items []resource
		if err := json.Unmarshal(page[collection], &items); err != nil {
			return fmt.Errorf("list %s: %w", collection, err)
		}
		for _, it := range items {
			f(it)
		}
		token = ""
		if raw, ok := page["nextPageToken"]; ok {
			_ = json.Unmarshal(raw, &token)
		}
		if token == "" {
			return nil
		}
	}
}

// joinToken is the answer of POST /api/v1/instances/{id}:joinToken.
type joinToken struct {
	Token            string `json:"token"`
	AgentGatewayAddr string `json:"agentGatewayAddr"`
	CACertificatePEM string `json:"caCertificatePem"`
	VMID             string `json:"vmId"`
}

// storedLines counts the distinct sequence numbers of agentsim's lines the
// logs API returns for an instance, paging through everything kept.
func (c *api) storedLines(ctx context.Context, id string, want int) (int64, error) {
	if want <= 0 {
		return 0, nil
	}
	seen := make(map[uint64]struct{}, want)
	token := ""
	for {
		var out struct {
			Lines []struct {
				Seq  uint64 `json:"seq,string"`
				Text string `json:"text"`
			} `json:"lines"`
			NextPageToken string `json:"nextPageToken"`
		}
		q := url.Values{"pageSize": {"5000"}, "order": {"asc"}}
		if token != "" {
			q.Set("pageToken", token)
		}
		if err := c.do(ctx, "GET", "/api/v1/instances/"+id+"/logs?"+q.Encode(), nil, &out); err != nil {
			return 0, err
		}
		for _, l := range out.Lines {
			if l.Text == lineText(l.Seq) {
				seen[l.Seq] = struct{}{}
			}
		}
		if token = out.NextPageToken; token == "" {
			return int64(len(seen)), nil
		}
	}
}

// loopback refuses an address that is not this machine: agentsim's load
// goes nowhere else.
func loopback(what, host string) error {
	if host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return nil
	}
	return fmt.Errorf("%s: %q is not this machine (localhost or 127.0.0.0/8); agentsim loads only loopback targets", what, host)
}
