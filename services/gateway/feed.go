package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/encoding/protojson"

	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/libs/apierr"
	"flotilla.dev/flotilla/libs/bus"
)

// Limits of the event endpoints.
const (
	// defaultFeedEvents and maxFeedEvents: the newest events the fleet's
	// feed answers (or starts a follow with).
	defaultFeedEvents = 50
	maxFeedEvents     = 1000
	// sseKeepAlive is how often an idle event stream sends a comment, so
	// proxies keep it open and a client notices a dead connection.
	sseKeepAlive = 15 * time.Second
)

// feedEntities are the kinds of entity GET /api/v1/events serves: the
// API's resources (a user's events are not the fleet's).
var feedEntities = []string{subjects.NounInstance, subjects.NounNetwork, subjects.NounTemplate, subjects.NounCloudAccount, subjects.NounRollout}

// eventQuery is a checked request for events.
type eventQuery struct {
	since time.Time // zero: from the oldest kept
	// newest is how many of the newest events (at or after since) come first.
	newest int
	follow bool
	// after resumes a follow after this stream sequence (the Last-Event-ID
	// an EventSource sends when it reconnects).
	after uint64
}

// parseEventQuery reads since, limit, follow and Last-Event-ID (header or
// lastEventId parameter), naming the field of a bad one.
func parseEventQuery(r *http.Request) (eventQuery, error) {
	q := eventQuery{newest: defaultFeedEvents}
	v := r.URL.Query()
	if s := v.Get("since"); s != "" {
		t, err := time.Parse(time.RFC3339, s)
		if err != nil {
			return q, apierr.Invalid("since", "%q is not an RFC 3339 time such as 2026-01-02T15:04:05Z", s)
		}
		q.since = t
	}
	if s := v.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 || n > maxFeedEvents {
			return q, apierr.Invalid("limit", "must be a number between 0 and %d: how many of the newest events", maxFeedEvents)
		}
		q.newest = n
	}
	switch s := v.Get("follow"); s {
	case "", "false":
	case "true":
		q.follow = true
	default:
		return q, apierr.Invalid("follow", "%q is not true or false", s)
	}
	after, err := lastEventID(r, q.follow)
	if err != nil {
		return q, err
	}
	q.after = after
	return q, nil
}

// lastEventID reads the Last-Event-ID header (or the lastEventId
// parameter) of a follow, which resumes it after that event: the stream
// sequence a server-sent event's id gives, which an EventSource sends back
// when it reconnects. 0: none. It is refused on a request that is not a
// follow, and when it is not such an id.
func lastEventID(r *http.Request, follow bool) (uint64, error) {
	last := r.Header.Get("Last-Event-ID")
	if last == "" {
		last = r.URL.Query().Get("lastEventId")
	}
	if last == "" {
		return 0, nil
	}
	n, err := strconv.ParseUint(last, 10, 64)
	if err != nil || !follow {
		return 0, apierr.Invalid("lastEventId", "resumes a follow: the id of the last event received")
	}
	return n, nil
}

// fleetEvents answers GET /api/v1/events: the newest events of one kind of
// entity (entity=instance, the default; network, template, cloudaccount,
// rollout),
// or of one of them (id=), oldest first (limit=N, default 50, from
// since=RFC3339); with follow=true as server-sent events that go on with
// new ones: the console's live feeds.
func (g *Gateway) fleetEvents(w http.ResponseWriter, r *http.Request) {
	id := r.URL.Query().Get("id")
	if id == "" {
		id = "*"
	} else if err := apierr.CheckID("id", id); err != nil {
		g.writeError(w, r, err)
		return
	}
	entity := r.URL.Query().Get("entity")
	if entity == "" {
		entity = subjects.NounInstance
	}
	if !slices.Contains(feedEntities, entity) {
		g.writeError(w, r, apierr.Invalid("entity", "%q is not one of %s", entity, strings.Join(feedEntities, ", ")))
		return
	}
	q, err := parseEventQuery(r)
	if err != nil {
		g.writeError(w, r, err)
		return
	}
	g.serveEvents(w, r, subjects.EntityEvents(entity, id), q)
}

// serveEvents answers q for the events on filter: a JSON list, or a
// follow as server-sent events (each an "event" whose id is its stream
// sequence, so a reconnecting EventSource resumes where it stopped).
func (g *Gateway) serveEvents(w http.ResponseWriter, r *http.Request, filter string, q eventQuery) {
	ctx := r.Context()
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	stream, err := g.js.Stream(rctx, subjects.EventsStream)
	if err != nil {
		g.writeError(w, r, apierr.Unavailable("the events stream is not available: %v", err))
		return
	}
	var start uint64 // the stream sequence a follow starts at
	var out []json.RawMessage
	if q.after > 0 {
		start = q.after + 1
	} else {
		var seqs []uint64
		if q.newest > 0 {
			err := bus.ReadBackwards(rctx, stream, filter, 0, uint64(max(8*q.newest, 1024)), func(m jetstream.Msg, meta *jetstream.MsgMetadata) bool {
				if len(seqs) == q.newest || meta.Timestamp.Before(q.since) {
					return false
				}
				if b, ok := encodeEvent(m.Data()); ok {
					out = append(out, b)
					seqs = append(seqs, meta.Sequence.Stream)
				}
				return true
			})
			if err != nil {
				g.writeError(w, r, fmt.Errorf("read events: %w", err))
				return
			}
		}
		slices.Reverse(out)
		if len(seqs) > 0 {
			start = seqs[len(seqs)-1]
		} else {
			info, err := stream.Info(rctx)
			if err != nil {
				g.writeError(w, r, fmt.Errorf("events stream info: %w", err))
				return
			}
			start = info.State.LastSeq + 1
		}
	}
	if !q.follow {
		if out == nil {
			out = []json.RawMessage{}
		}
		writeJSON(w, map[string]any{"events": out})
		return
	}
	cons, err := stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{FilterSubjects: []string{filter},
		DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: start})
	if err != nil {
		g.writeError(w, r, fmt.Errorf("events consumer: %w", err))
		return
	}
	g.serveSSE(ctx, w, r, cons, func(m jetstream.Msg) (sseEvent, bool) {
		b, ok := encodeEvent(m.Data())
		if !ok {
			return sseEvent{}, false
		}
		meta, err := m.Metadata()
		if err != nil {
			return sseEvent{}, false
		}
		return sseEvent{id: strconv.FormatUint(meta.Sequence.Stream, 10), event: "event", data: b}, true
	})
}

// encodeEvent turns a stored event envelope into its JSON for the API.
func encodeEvent(data []byte) ([]byte, bool) {
	ev, err := bus.DecodeEvent(data)
	if err != nil {
		return nil, false
	}
	b, err := protojson.Marshal(ev)
	return b, err == nil
}

// sseEvent is one server-sent event; data is one line of JSON.
type sseEvent struct {
	id, event string
	data      []byte
}

// serveSSE sends what the consumer delivers, each message as the event
// encode makes of it (those it declines are skipped), until the client
// goes away or the token cache ends it (then a last comment says why), with a
// comment every sseKeepAlive while idle.
func (g *Gateway) serveSSE(ctx context.Context, w http.ResponseWriter, r *http.Request, cons jetstream.Consumer, encode func(jetstream.Msg) (sseEvent, bool)) {
	flusher, ok := w.(http.Flusher)
	if !ok {
		g.writeError(w, r, errors.New("streaming unsupported"))
		return
	}
	ctx, release := g.tokens.hold(ctx)
	defer release()
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	flusher.Flush()
	defer func() {
		if why := streamEnded(ctx); why != nil {
			_, _ = fmt.Fprintf(w, ": %v\n\n", why)
			flusher.Flush()
		}
	}()
	_ = follow(ctx, cons, func(m jetstream.Msg) error {
		ev, ok := encode(m)
		if !ok {
			return nil
		}
		if _, err := fmt.Fprintf(w, "id: %s\nevent: %s\ndata: %s\n\n", ev.id, ev.event, ev.data); err != nil {
			return err
		}
		flusher.Flush()
		return nil
	}, func() error {
		if _, err := fmt.Fprint(w, ": keep-alive\n\n"); err != nil {
			return err
		}
		flusher.Flush()
		return nil
	})
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}
