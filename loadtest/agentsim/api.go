package agentsim

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"time"

	"flotilla.dev/flotilla/loadtest/apiclient"
)

// api is a client of Flotilla's REST API with an operator's bearer token.
type api struct{ *apiclient.Client }

func newAPI(base, token string) *api {
	c := apiclient.New(base, MaxConcurrency, 60*time.Second)
	c.HTTP.Transport.(*http.Transport).MaxConnsPerHost = MaxConcurrency
	c.Token = token
	return &api{c}
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
		if err := c.Do(ctx, "GET", "/api/v1/"+collection+"?"+q.Encode(), nil, &page); err != nil {
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

// maxMissingNamed is how many lines an agent misses that storedLines names.
const maxMissingNamed = 10

// storedLines counts the distinct sequence numbers of agentsim's lines the
// logs API returns for an instance, paging through everything kept, and
// names the first few of lines 1 to want it does not return.
func (c *api) storedLines(ctx context.Context, id string, want int) (int64, []uint64, error) {
	if want <= 0 {
		return 0, nil, nil
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
		if err := c.Do(ctx, "GET", "/api/v1/instances/"+id+"/logs?"+q.Encode(), nil, &out); err != nil {
			return 0, nil, err
		}
		for _, l := range out.Lines {
			if l.Text == lineText(l.Seq) {
				seen[l.Seq] = struct{}{}
			}
		}
		if token = out.NextPageToken; token == "" {
			var missing []uint64
			for seq := uint64(1); seq <= uint64(want) && len(missing) < maxMissingNamed; seq++ {
				if _, ok := seen[seq]; !ok {
					missing = append(missing, seq)
				}
			}
			return int64(len(seen)), missing, nil
		}
	}
}
