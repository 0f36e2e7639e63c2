package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"flotilla.dev/flotilla/api/endpoints"
	agentv1 "flotilla.dev/flotilla/api/gen/flotilla/agent/v1"
	cav1 "flotilla.dev/flotilla/api/gen/flotilla/ca/v1"
	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/libs/apierr"
	"flotilla.dev/flotilla/libs/bus"
)

// Limits of the log and event endpoints.
const (
	defaultLogLines = 200
	maxLogLines     = bus.AgentLogLinesKept
	maxEvents       = 10000
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

// logLine is one log line as the API shows it.
type logLine struct {
	Seq    uint64    `json:"seq"`
	Time   time.Time `json:"time"`
	Source string    `json:"source"`
	Text   string    `json:"text"`
}

// instanceLogs answers GET /api/v1/instances/{id}/logs[?lines=N][&follow=true]:
// the last N lines of the instance's agent, setup and node-software output,
// as JSON; with follow=true as server-sent events that go on with new lines
// until the client goes away.
func (g *Gateway) instanceLogs(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	id := r.PathValue("id")
	if err := apierr.CheckID("id", id); err != nil {
		g.writeError(w, r, err)
		return
	}
	if _, err := call(ctx, g, endpoints.InstanceGet, &inventoryv1.GetInstanceRequest{Id: id}); err != nil {
		g.writeError(w, r, err)
		return
	}
	n := defaultLogLines
	if v := r.URL.Query().Get("lines"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 1 || n > maxLogLines {
			g.writeError(w, r, apierr.Invalid("lines", "must be a number between 1 and %d", maxLogLines))
			return
		}
	}
	follow := r.URL.Query().Get("follow") == "true"
	stream, err := g.js.Stream(ctx, subjects.AgentLogsStream)
	if err != nil {
		g.writeError(w, r, apierr.Unavailable("the agent log stream is not available: %v", err))
		return
	}
	// Start n messages before the end of this instance's subject.
	cfg := jetstream.OrderedConsumerConfig{FilterSubjects: []string{subjects.AgentLogs(id)}}
	info, err := stream.Info(ctx, jetstream.WithSubjectFilter(subjects.AgentLogs(id)))
	if err != nil {
		g.writeError(w, r, fmt.Errorf("log stream info: %w", err))
		return
	}
	have := info.State.Subjects[subjects.AgentLogs(id)]
	skip := uint64(0)
	if have > uint64(n) {
		skip = have - uint64(n)
	}
	cons, err := stream.OrderedConsumer(ctx, cfg)
	if err != nil {
		g.writeError(w, r, fmt.Errorf("log consumer: %w", err))
		return
	}
	decode := func(m jetstream.Msg) (logLine, bool) {
		l := &agentv1.LogLine{}
		if proto.Unmarshal(m.Data(), l) != nil {
			return logLine{}, false
		}
		return logLine{Seq: l.GetSeq(), Time: l.GetTime().AsTime(), Source: l.GetSource(), Text: l.GetText()}, true
	}
	if !follow {
		// The backlog: everything up to what exists now, keeping the last n.
		var lines []logLine
		for seen := uint64(0); seen < have; {
			batch, err := cons.Fetch(500, jetstream.FetchMaxWait(2*time.Second))
			if err != nil {
				g.writeError(w, r, fmt.Errorf("read logs: %w", err))
				return
			}
			got := 0
			for m := range batch.Messages() {
				got++
				seen++
				if seen <= skip {
					continue
				}
				if l, ok := decode(m); ok {
					lines = append(lines, l)
				}
			}
			if got == 0 {
				break
			}
		}
		if lines == nil {
			lines = []logLine{}
		}
		writeJSON(w, map[string]any{"lines": lines})
		return
	}
	flusher, ok := w.(http.Flusher)
	if !ok {
		g.writeError(w, r, errors.New("streaming unsupported"))
		return
	}
	// One iterator serves the backlog and then new lines (an ordered consumer
	// cannot switch from Fetch to Messages).
	msgs, err := cons.Messages()
	if err != nil {
		g.writeError(w, r, fmt.Errorf("follow logs: %w", err))
		return
	}
	defer msgs.Stop()
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	flusher.Flush()
	next := make(chan jetstream.Msg)
	go func() {
		defer close(next)
		for {
			m, err := msgs.Next()
			if err != nil {
				return
			}
			select {
			case next <- m:
			case <-ctx.Done():
				return
			}
		}
	}()
	keepalive := time.NewTicker(15 * time.Second)
	defer keepalive.Stop()
	var seen uint64
	for {
		select {
		case <-ctx.Done():
			return
		case <-keepalive.C:
			if _, err := fmt.Fprint(w, ": keep-alive\n\n"); err != nil {
				return
			}
			flusher.Flush()
		case m, ok := <-next:
			if !ok {
				return
			}
			seen++
			if seen <= skip {
				continue
			}
			l, ok := decode(m)
			if !ok {
				continue
			}
			b, _ := json.Marshal(l)
			if _, err := fmt.Fprintf(w, "id: %d\nevent: log\ndata: %s\n\n", l.Seq, b); err != nil {
				return
			}
			flusher.Flush()
		}
	}
}

// instanceEvents answers GET /api/v1/instances/{id}/events[?since=RFC3339]:
// the instance's timeline replayed from the events stream, oldest first. It
// works for deleted instances too: history is kept.
func (g *Gateway) instanceEvents(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
	defer cancel()
	id := r.PathValue("id")
	if err := apierr.CheckID("id", id); err != nil {
		g.writeError(w, r, err)
		return
	}
	cfg := jetstream.OrderedConsumerConfig{FilterSubjects: []string{subjects.EntityEvents(subjects.NounInstance, id)}}
	if v := r.URL.Query().Get("since"); v != "" {
		since, err := time.Parse(time.RFC3339, v)
		if err != nil {
			g.writeError(w, r, apierr.Invalid("since", "%q is not an RFC 3339 time such as 2026-01-02T15:04:05Z", v))
			return
		}
		cfg.DeliverPolicy, cfg.OptStartTime = jetstream.DeliverByStartTimePolicy, &since
	}
	stream, err := g.js.Stream(ctx, subjects.EventsStream)
	if err != nil {
		g.writeError(w, r, apierr.Unavailable("the events stream is not available: %v", err))
		return
	}
	cons, err := stream.OrderedConsumer(ctx, cfg)
	if err != nil {
		g.writeError(w, r, fmt.Errorf("events consumer: %w", err))
		return
	}
	var out []json.RawMessage
	for len(out) < maxEvents {
		batch, err := cons.FetchNoWait(500)
		if err != nil {
			g.writeError(w, r, fmt.Errorf("read events: %w", err))
			return
		}
		got := 0
		for m := range batch.Messages() {
			got++
			ev, err := bus.DecodeEvent(m.Data())
			if err != nil {
				continue
			}
			b, err := protojson.Marshal(ev)
			if err != nil {
				continue
			}
			out = append(out, b)
		}
		if got == 0 {
			break
		}
	}
	if out == nil {
		out = []json.RawMessage{}
	}
	writeJSON(w, map[string]any{"events": out})
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}
