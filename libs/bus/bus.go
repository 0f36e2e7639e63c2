// Package bus defines what every Flotilla message carries and the JetStream
// streams Flotilla declares.
//
// Every message has a message id (used for JetStream de-duplication), the W3C
// trace context of the work that caused it, the actor, the time and a schema
// version, all as headers; domain events additionally wrap their payload in an
// events.v1.Event envelope that repeats them, so a replayed event is
// self-describing.
package bus

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	eventsv1 "flotilla.dev/flotilla/api/gen/flotilla/events/v1"
	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/libs/natsx"
)

// Header names every Flotilla message carries (besides traceparent/tracestate).
const (
	HeaderMsgID = nats.MsgIdHdr // "Nats-Msg-Id"
	HeaderActor = "Flotilla-Actor"
	// HeaderSource is the address of the API client a request is made for,
	// as the gateway saw it (for login throttling and audit records).
	HeaderSource = "Flotilla-Source"
	// HeaderRole and HeaderTokenID are the role and the token id (bearer.ID)
	// of the API credential a request is made with, as the gateway verified
	// them (trusted from the gateway only).
	HeaderRole          = "Flotilla-Role"
	HeaderTokenID       = "Flotilla-Token-Id"
	HeaderTime          = "Flotilla-Time"
	HeaderSchemaVersion = "Flotilla-Schema-Version"
	HeaderType          = "Flotilla-Type"
	// HeaderSubject names a message's subject where it is kept apart from
	// the bus: in an outbox row (its destination) and in a consumed
	// message's metadata (where it arrived).
	HeaderSubject = "Flotilla-Subject"
)

// SchemaVersion is the payload schema version of the events this build emits.
const SchemaVersion = 1

// Message is a message ready to publish.
type Message struct {
	Subject string
	Header  nats.Header
	Data    []byte
}

// ID returns the message id.
func (m Message) ID() string { return m.Header.Get(HeaderMsgID) }

// NATS returns m as a message to publish.
func (m Message) NATS() *nats.Msg {
	return &nats.Msg{Subject: m.Subject, Header: m.Header, Data: m.Data}
}

// NewMessage builds a message with a fresh id, the trace context of ctx, the
// actor, the time and the schema version.
func NewMessage(ctx context.Context, subject, typ string, actor vocab.Actor, now time.Time, payload proto.Message) (Message, error) {
	data, err := proto.Marshal(payload)
	if err != nil {
		return Message{}, fmt.Errorf("encode %s: %w", typ, err)
	}
	h := nats.Header{}
	h.Set(HeaderMsgID, uuid.Must(uuid.NewV7()).String())
	h.Set(HeaderActor, string(actor))
	h.Set(HeaderTime, now.UTC().Format(time.RFC3339Nano))
	h.Set(HeaderSchemaVersion, strconv.Itoa(SchemaVersion))
	h.Set(HeaderType, typ)
	natsx.Inject(ctx, h)
	return Message{Subject: subject, Header: h, Data: data}, nil
}

// NewEvent builds a domain event about one entity: the envelope carries data
// (the entity after the change), and the subject is
// subjects.Event(entity, id, verb).
func NewEvent(ctx context.Context, entity, id string, verb vocab.Verb, actor vocab.Actor, entityVersion int64, now time.Time, data proto.Message) (Message, error) {
	anyData, err := anypb.New(data)
	if err != nil {
		return Message{}, fmt.Errorf("wrap event data: %w", err)
	}
	typ := subjects.EventType(entity, string(verb))
	ev := &eventsv1.Event{
		Type:          typ,
		Entity:        entity,
		EntityId:      id,
		Actor:         string(actor),
		Time:          timestamppb.New(now),
		SchemaVersion: SchemaVersion,
		Data:          anyData,
		EntityVersion: entityVersion,
	}
	msg, err := NewMessage(ctx, subjects.Event(entity, id, string(verb)), typ, actor, now, ev)
	if err != nil {
		return Message{}, err
	}
	// The envelope repeats the message id so a replayed event names itself.
	ev.Id = msg.ID()
	if msg.Data, err = proto.Marshal(ev); err != nil {
		return Message{}, fmt.Errorf("encode %s: %w", typ, err)
	}
	return msg, nil
}

// DecodeEvent reads an event envelope.
func DecodeEvent(data []byte) (*eventsv1.Event, error) {
	ev := &eventsv1.Event{}
	if err := proto.Unmarshal(data, ev); err != nil {
		return nil, fmt.Errorf("decode event: %w", err)
	}
	return ev, nil
}

// AuditTimeout bounds the wait for JetStream to store an audit record.
const AuditTimeout = 5 * time.Second

// PublishAudit publishes an audit record (a NewMessage of rec) into the
// audit stream and waits for JetStream to store it (StoreAudit): whoever
// must not act unaudited acts only once it returns nil.
func PublishAudit(ctx context.Context, js jetstream.JetStream, subject, typ string, actor vocab.Actor, now time.Time, rec proto.Message) error {
	msg, err := NewMessage(ctx, subject, typ, actor, now, rec)
	if err != nil {
		return err
	}
	return StoreAudit(ctx, js, msg.NATS(), AuditTimeout)
}

// StoreAudit stores an audit record's message on the audit stream (Store),
// waiting at most within. Storing the same message again is harmless.
func StoreAudit(ctx context.Context, js jetstream.JetStream, m *nats.Msg, within time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	_, err := Store(ctx, js, m, jetstream.WithExpectStream(subjects.AuditStream))
	return err
}
