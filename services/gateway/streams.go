package gateway

import (
	"context"
	"encoding/base64"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"flotilla.dev/flotilla/api/endpoints"
	cav1 "flotilla.dev/flotilla/api/gen/flotilla/ca/v1"
	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/libs/apierr"
	"flotilla.dev/flotilla/libs/bus"
)

// caPEM serves GET /api/v1/ca/certificate: the fleet CA certificate as a PEM
// file, for curl --cacert and openssl verify -CAfile. (GET /api/v1/ca has it
// as JSON with its expiry and fingerprint.)
func (g *Gateway) caPEM(w http.ResponseWriter, r *http.Request) {
	c, err := call(r.Context(), g, endpoints.CACertificateGet, &cav1.GetCACertificateRequest{})
	if err != nil {
		g.writeError(w, r, err)
		return
	}
	w.Header().Set("Content-Type", "application/x-pem-file")
	_, _ = w.Write([]byte(c.GetCertificatePem()))
}

// Limits of ListInstanceEvents' pages.
const (
	defaultEventPageSize = 1000
	maxEventPageSize     = 10000
)

// ListInstanceEvents pages through the instance's timeline.
func (s instanceServer) ListInstanceEvents(ctx context.Context, r *inventoryv1.ListInstanceEventsRequest) (*inventoryv1.ListInstanceEventsResponse, error) {
	resp, err := s.g.listEvents(ctx, r)
	if err != nil {
		return nil, apierr.GRPCStatus(ctx, s.g.log, err)
	}
	return resp, nil
}

// listEvents replays a page of the instance's events from the events
// stream, oldest first. A page token is "events:<seq>" (base64url): the
// stream sequence the next page starts at.
func (g *Gateway) listEvents(ctx context.Context, r *inventoryv1.ListInstanceEventsRequest) (*inventoryv1.ListInstanceEventsResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	id := r.GetId()
	if err := apierr.CheckID("id", id); err != nil {
		return nil, err
	}
	size := int(r.GetPageSize())
	if size < 0 || size > maxEventPageSize {
		return nil, apierr.Invalid("pageSize", "%d is out of range: must be between 1 and %d (0 means %d)", size, maxEventPageSize, defaultEventPageSize)
	}
	if size == 0 {
		size = defaultEventPageSize
	}
	var since time.Time
	if v := r.GetSince(); v != "" {
		var err error
		if since, err = time.Parse(time.RFC3339, v); err != nil {
			return nil, apierr.Invalid("since", "%q is not an RFC 3339 time such as 2026-01-02T15:04:05Z", v)
		}
	}
	var from uint64 // the token carries on where its page ended, since or not
	if v := r.GetPageToken(); v != "" {
		raw, err := base64.RawURLEncoding.DecodeString(v)
		num, ok := strings.CutPrefix(string(raw), "events:")
		seq, perr := strconv.ParseUint(num, 10, 64)
		if err != nil || !ok || perr != nil || seq == 0 {
			return nil, apierr.Invalid("pageToken", "is not a token from a previous response")
		}
		from = seq
	}
	stream, err := g.js.Stream(ctx, subjects.EventsStream)
	if err != nil {
		return nil, apierr.Unavailable("the events stream is not available: %v", err)
	}
	resp := &inventoryv1.ListInstanceEventsResponse{}
	var last uint64
	err = bus.ReadSubject(ctx, stream, subjects.EntityEvents(subjects.NounInstance, id), from, since, func(m jetstream.Msg, md *jetstream.MsgMetadata) bool {
		last = md.Sequence.Stream
		if ev, err := bus.DecodeEvent(m.Data()); err == nil {
			resp.Events = append(resp.Events, ev)
		}
		return len(resp.Events) < size
	})
	if err != nil {
		return nil, fmt.Errorf("read events: %w", err)
	}
	if len(resp.Events) == size && last > 0 {
		resp.NextPageToken = base64.RawURLEncoding.EncodeToString([]byte("events:" + strconv.FormatUint(last+1, 10)))
	}
	return resp, nil
}
