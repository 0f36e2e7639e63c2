package rpc

import (
	"context"
	"errors"
	"time"

	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"

	"flotilla.dev/flotilla/api/endpoints"
	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/libs/apierr"
	"flotilla.dev/flotilla/libs/bus"
	"flotilla.dev/flotilla/libs/natsx"
)

// DefaultTimeout bounds a call whose context has no deadline.
const DefaultTimeout = natsx.DefaultTimeout

// EveryGrace is how long a call to an endpoint every instance answers
// (endpoints.Info.Every) waits for a good answer after an error answer
// before it returns the error: the instances of a healthy cluster answer
// within milliseconds of each other.
const EveryGrace = 500 * time.Millisecond

// Client calls declared endpoints as one Flotilla service: only endpoints
// that list the service as a caller, acting as the service itself unless a
// call says otherwise (As).
type Client struct {
	nc      *nats.Conn
	service string
	timeout time.Duration
}

// NewClient returns a client calling as service over nc. timeout bounds each
// call whose context has no earlier deadline (0: DefaultTimeout).
func NewClient(nc *nats.Conn, service string, timeout time.Duration) *Client {
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	registerClientMetrics()
	return &Client{nc: nc, service: service, timeout: timeout}
}

// Service is the service the client calls as.
func (c *Client) Service() string { return c.service }

// CallOption changes one call.
type CallOption func(*callOptions)

type callOptions struct {
	actor   vocab.Actor
	source  string
	cred    Credential
	timeout time.Duration
}

// As sends the call on behalf of actor (the Flotilla-Actor header): the
// gateway passes on the authenticated user, the agent gateway the agent.
func As(actor vocab.Actor) CallOption { return func(o *callOptions) { o.actor = actor } }

// ForClient names the address of the API client the call is made for
// (the gateway's calls); the service reads it with Source.
func ForClient(addr string) CallOption { return func(o *callOptions) { o.source = addr } }

// WithCredential names the role and token id of the API credential the
// call is made with (the gateway's calls); the service reads them with
// CredentialOf.
func WithCredential(c Credential) CallOption { return func(o *callOptions) { o.cred = c } }

// Timeout bounds this call instead of the client's timeout.
func Timeout(d time.Duration) CallOption { return func(o *callOptions) { o.timeout = d } }

// Call sends req to the endpoint and returns its reply. Every failure is an
// *apierr.Error: the service's error as it sent it (kind, reason, field,
// message); unavailable when no instance of the service takes the request
// within ResponderWait (it is sent again meanwhile: see untilTaken) or none
// answers in time, or when the bus connection was lost while the call
// waited for its answer (natsx.ErrConnectionLost), or when ctx was
// canceled first (the caller gave up); permission denied when
// c's service is not one of the endpoint's declared callers (nothing is
// sent). An endpoint every instance answers (endpoints.Info.Every) gets
// the request to each, and the first answer that is not an error is the
// reply; an error answer is returned when no good one follows within
// EveryGrace. A closed connection or an undecodable reply is an internal error
// wrapping the cause.
func Call[Req, Resp proto.Message](ctx context.Context, c *Client, ep endpoints.Endpoint[Req, Resp], req Req, opts ...CallOption) (Resp, error) {
	var zero Resp
	info := ep.Info()
	if !info.CalledBy(c.service) {
		return zero, apierr.PermissionDenied("%s may not call %s.%s: it is not one of the endpoint's declared callers", c.service, info.Service, info.Name)
	}
	o := callOptions{actor: vocab.System(c.service), timeout: c.timeout}
	for _, opt := range opts {
		opt(&o)
	}
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	hdr := nats.Header{}
	hdr.Set(bus.HeaderActor, string(o.actor))
	if o.source != "" {
		hdr.Set(bus.HeaderSource, o.source)
	}
	if o.cred.Role != "" {
		hdr.Set(bus.HeaderRole, string(o.cred.Role))
	}
	if o.cred.TokenID != "" {
		hdr.Set(bus.HeaderTokenID, o.cred.TokenID)
	}
	resp := ep.NewResponse()
	err := untilTaken(ctx, info.Service, func() error {
		if info.Every {
			return natsx.RequestFirst(ctx, c.nc, info.CallSubject(c.service), EveryGrace, req, resp, hdr)
		}
		return natsx.Request(ctx, c.nc, info.CallSubject(c.service), req, resp, hdr)
	})
	if err != nil {
		return zero, clientError(info.Service, err)
	}
	return resp, nil
}

// ResponderWait is how long a call keeps sending its request while no
// instance of the service takes it: none listens (NATS's no responders),
// for one because it is about to make its bus connection again (a
// homecoming; see natsx.Quiescer, Service and Subscriber). Nobody acted on
// the request, so sending it again is safe.
// A service whose only instance goes home, pausing for the requests it
// holds (up to natsx.HomeDrain), new requests held (as long again) and
// the reconnection (as long again at most), costs its callers that
// moment rather than an error; a service that is down is answered
// unavailable ResponderWait after the first try, or when the call's time
// is up if that is sooner.
const ResponderWait = 3 * natsx.HomeDrain

// How the tries of untilTaken are spaced: from the first wait, doubling,
// up to the last.
const (
	untakenFirstWait = 10 * time.Millisecond
	untakenLastWait  = 250 * time.Millisecond
)

// untilTaken calls send until it returns anything but an untaken request's
// error, ResponderWait has passed since the first try, or ctx ends, and
// returns its last error; but a try sent again that ctx's deadline cut
// short returns the untaken error before it: nobody took the request a
// moment ago, and the call's time ran out before anything could answer
// again (NATS's no responders too takes a round trip).
func untilTaken(ctx context.Context, service string, send func() error) error {
	end := time.Now().Add(ResponderWait)
	wait := untakenFirstWait
	var before error // the previous try's, untaken
	for {
		err := send()
		if before != nil && errors.Is(err, context.DeadlineExceeded) && errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return before
		}
		before = err
		left := time.Until(end)
		if !untaken(err) || left <= 0 {
			return err
		}
		metrics.untaken.WithLabelValues(service).Inc()
		t := time.NewTimer(min(wait, left))
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
		wait = min(2*wait, untakenLastWait)
	}
}

// untaken says whether err is a request that no instance took: nobody
// listened.
func untaken(err error) bool { return errors.Is(err, nats.ErrNoResponders) }

// clientError maps a failed request to an *apierr.Error.
func clientError(service string, err error) error {
	var se *natsx.ServiceError
	switch {
	case errors.As(err, &se):
		return apierr.FromBus(se.Code, se.Message, se.Header)
	case errors.Is(err, nats.ErrMaxPayload):
		e := apierr.TooLarge("", "the request is larger than the bus's message limit")
		e.Err = err
		return e
	case errors.Is(err, nats.ErrNoResponders):
		e := apierr.Unavailable("the %s service is not available; try again shortly", service)
		e.Err = err
		return e
	case errors.Is(err, natsx.ErrConnectionLost):
		e := apierr.Unavailable("the bus connection was lost before the %s service answered, so the request may or may not have taken effect; try again shortly", service)
		e.Err = err
		return e
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, nats.ErrTimeout):
		e := apierr.Unavailable("the %s service did not answer in time; try again shortly", service)
		e.Err = err
		return e
	case errors.Is(err, context.Canceled):
		// The caller went away (an API client, or a load balancer that
		// cut its request): not a fault of Flotilla's to log as one.
		e := apierr.Unavailable("the request was given up before the %s service answered; it may or may not have taken effect", service)
		e.Err = err
		return e
	}
	return err
}
