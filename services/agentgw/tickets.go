package agentgw

import (
	"context"
	"fmt"
	"math/rand/v2"
	"time"

	"flotilla.dev/flotilla/api/endpoints"
	cav1 "flotilla.dev/flotilla/api/gen/flotilla/ca/v1"
	"flotilla.dev/flotilla/libs/rpc"
)

// TLS sessions: an agent that reconnects — its gateway restarted, or it
// moved to another behind the same address — resumes the TLS session it
// had, when the gateway can open its session ticket, instead of a full
// handshake: neither side signs or verifies a certificate. Every gateway
// seals and opens tickets with the keys the CA derives for them
// (ticketkeys.get), so each opens the tickets of every other, and of the
// ones before a restart. A resumed stream carries the certificate of the
// session it resumes, checked with the CA (checkAgent) like any other.

// ticketKeysRetry is how soon keys the CA could not give are asked for
// again; ticketKeysJitter spreads the gateways' asking after the keys roll.
const (
	ticketKeysRetry  = time.Minute
	ticketKeysJitter = 30 * time.Second
)

// loadTicketKeys sets the session ticket keys from the CA; it returns when
// to ask again.
func (s *Service) loadTicketKeys(ctx context.Context) (time.Time, error) {
	ctx, cancel := context.WithTimeout(ctx, s.requestTimeout)
	defer cancel()
	resp, err := rpc.Call(ctx, s.bus, endpoints.TicketKeysGet, &cav1.GetTicketKeysRequest{})
	if err != nil {
		return time.Time{}, fmt.Errorf("agentgw: session ticket keys from the CA: %w", err)
	}
	keys := make([][32]byte, 0, len(resp.GetKeys()))
	for i, k := range resp.GetKeys() {
		if len(k) != 32 {
			return time.Time{}, fmt.Errorf("agentgw: session ticket key %d from the CA has %d bytes, not 32", i, len(k))
		}
		keys = append(keys, [32]byte(k))
	}
	if len(keys) == 0 {
		return time.Time{}, fmt.Errorf("agentgw: the CA gave no session ticket keys")
	}
	s.tlsConfig.SetSessionTicketKeys(keys)
	return resp.GetRefreshTime().AsTime(), nil
}

// refreshTicketKeys sets the session ticket keys from the CA and returns
// when to do it again: when they roll, or soon when the CA did not give
// them. Until a gateway has them, its tickets are its own: they open only
// in this process.
func (s *Service) refreshTicketKeys(ctx context.Context) time.Time {
	next, err := s.loadTicketKeys(ctx)
	if err == nil {
		return next
	}
	if ctx.Err() == nil {
		s.log.WarnContext(ctx, "agents' TLS sessions resume only with this gateway until the CA gives the session ticket keys; retrying",
			"error", err, "retry_in", ticketKeysRetry)
	}
	return time.Now().Add(ticketKeysRetry)
}

// keepTicketKeys refreshes the session ticket keys at next, and again each
// time they roll, until ctx ends.
func (s *Service) keepTicketKeys(ctx context.Context, next time.Time) {
	for {
		wait := time.Until(next) + rand.N(ticketKeysJitter)
		select {
		case <-ctx.Done():
			return
		case <-time.After(max(wait, time.Second)):
		}
		next = s.refreshTicketKeys(ctx)
	}
}
