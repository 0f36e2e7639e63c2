package gateway

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/encoding/protojson"

	"flotilla.dev/flotilla/api/endpoints"
	cav1 "flotilla.dev/flotilla/api/gen/flotilla/ca/v1"
	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/libs/apierr"
	"flotilla.dev/flotilla/libs/bus"
)

// Limits of the log and event endpoints.
const (
	maxEvents = 10000
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
