package agent_test

import (
	"crypto/tls"
	"testing"

	"flotilla.dev/flotilla/agent"
)

// The session cache keeps the sessions of the certificate held now: none
// without a certificate, none after the certificate changed, none after
// Forget.
func TestTheSessionCacheKeepsTheSessionsOfTheCertificateHeld(t *testing.T) {
	t.Parallel()
	var held *tls.Certificate
	c := agent.NewSessionCache(func() *tls.Certificate { return held })
	has := func() bool {
		_, ok := c.Get("gw")
		return ok
	}
	c.Put("gw", &tls.ClientSessionState{})
	if has() {
		t.Fatal("a session was kept without a certificate (joining)")
	}
	held = &tls.Certificate{}
	c.Put("gw", &tls.ClientSessionState{})
	if !has() {
		t.Fatal("the session of the certificate held was not kept")
	}
	held = &tls.Certificate{} // renewed
	if has() {
		t.Fatal("a session of the certificate before was kept")
	}
	c.Put("gw", &tls.ClientSessionState{})
	c.Forget()
	if has() {
		t.Fatal("a session was kept after Forget")
	}
}
