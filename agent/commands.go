package agent

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"time"

	agentv1 "flotilla.dev/flotilla/api/gen/flotilla/agent/v1"
	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/libs/pki"
)

// commandLoop runs the commands from the gateway one at a time, until ctx
// ends.
func (a *agent) commandLoop(ctx context.Context) {
	for {
		cmd, err := a.cmds.Next(ctx)
		if err != nil {
			return
		}
		switch act := cmd.GetAction().(type) {
		case *agentv1.Command_Bootstrap:
			a.bootstrap(ctx, cmd.GetId(), act.Bootstrap)
		case *agentv1.Command_StopNode:
			a.stopNode(ctx, cmd.GetId())
		case *agentv1.Command_RefreshCertificate:
			a.refreshCertificate(ctx, cmd.GetId(), act.RefreshCertificate)
		case *agentv1.Command_UpgradeAgent:
			a.upgradeAgent(ctx, cmd.GetId(), act.UpgradeAgent)
		case *agentv1.Command_RefreshConfiguration:
			a.refreshConfiguration(ctx, cmd.GetId(), act.RefreshConfiguration)
		default:
			a.logf(ctx, "command %s has no action this agent knows; ignored", cmd.GetId())
		}
	}
}

// bootstrap runs the setup actions, installs and starts the node software,
// reporting each step. A command that already completed on this VM only
// makes sure the node software runs and reports done again.
func (a *agent) bootstrap(ctx context.Context, id string, b *agentv1.Bootstrap) {
	st := a.state.Get()
	if st.CompletedCommandID == id && st.Node != nil {
		if a.node.URL() == "" {
			spec := *st.Node
			spec.Stopped = false
			a.progress(ctx, id, vocab.StepStarting, vocab.ProgressStarted, "", 0)
			url, err := a.node.Start(ctx, spec)
			if err == nil {
				err = a.state.Update(func(s *state) { s.Node = &spec })
			}
			if err != nil {
				a.progress(ctx, id, vocab.StepStarting, vocab.ProgressFailed, err.Error(), 0)
				return
			}
			a.progress(ctx, id, vocab.StepStarting, vocab.ProgressSucceeded, url, 0)
		}
		a.progress(ctx, id, vocab.StepDone, vocab.ProgressSucceeded, a.node.URL(), 0)
		return
	}

	a.logf(ctx, "command %s: bootstrapping instance %s: %d setup actions, node software %q, HTTPS %q",
		id, b.GetInstanceName(), len(b.GetSetupActions()), b.GetNodeVersion(), b.GetHttpsStrategy())
	r := a.setupRunner()
	for i, act := range b.GetSetupActions() {
		a.progress(ctx, id, vocab.StepRunningSetup, vocab.ProgressStarted, act.GetType(), i)
		if err := r.run(ctx, act); err != nil {
			// Named as the template names it: setupActions[2]: script exited with code 3.
			msg := fmt.Sprintf("setupActions[%d]: %v", i, err)
			a.progress(ctx, id, vocab.StepRunningSetup, vocab.ProgressFailed, a.mask.Mask(msg), i)
			return
		}
		a.progress(ctx, id, vocab.StepRunningSetup, vocab.ProgressSucceeded, act.GetType(), i)
	}

	a.progress(ctx, id, vocab.StepInstalling, vocab.ProgressStarted, b.GetNodeVersion(), 0)
	if err := a.install(b.GetNodeVersion()); err != nil {
		a.progress(ctx, id, vocab.StepInstalling, vocab.ProgressFailed, err.Error(), 0)
		return
	}
	a.progress(ctx, id, vocab.StepInstalling, vocab.ProgressSucceeded, b.GetNodeVersion(), 0)

	a.progress(ctx, id, vocab.StepStarting, vocab.ProgressStarted, "", 0)
	spec, err := a.nodeSpec(ctx, st, b, r.envTemplates)
	var url string
	if err == nil {
		url, err = a.node.Start(ctx, spec)
	}
	if err == nil {
		err = a.state.Update(func(s *state) {
			s.Node = &spec
			s.CompletedCommandID = id
			s.Setup = &setupRecord{Ran: ranOf(b.GetSetupActions())}
		})
	}
	if err != nil {
		a.progress(ctx, id, vocab.StepStarting, vocab.ProgressFailed, a.mask.Mask(err.Error()), 0)
		return
	}
	a.kickCert(false) // a certificate of its own to renew from now on
	a.progress(ctx, id, vocab.StepStarting, vocab.ProgressSucceeded, url, 0)
	a.progress(ctx, id, vocab.StepDone, vocab.ProgressSucceeded, url, 0)
}

// stopNode stops the node software and keeps it stopped across restarts.
func (a *agent) stopNode(ctx context.Context, id string) {
	a.node.Stop()
	if err := a.state.Update(func(s *state) {
		if s.Node != nil {
			s.Node.Stopped = true
		}
	}); err != nil {
		a.progress(ctx, id, vocab.StepDone, vocab.ProgressFailed, err.Error(), 0)
		return
	}
	a.progress(ctx, id, vocab.StepDone, vocab.ProgressSucceeded, "node software stopped", 0)
}

// install places the node software: the local provider's is the node
// command of the binary shipped with Flotilla, so this checks it can be run
// and records the version in a manifest under the state directory.
func (a *agent) install(version string) error {
	if _, err := exec.LookPath(a.cfg.NodeBinary[0]); err != nil {
		return fmt.Errorf("node software %s: %w", a.cfg.NodeBinary[0], err)
	}
	dir := filepath.Join(a.cfg.StateDir, nodeDirName)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("install node software: %w", err)
	}
	manifest, err := json.MarshalIndent(map[string]any{
		"nodeVersion": version,
		"command":     a.cfg.NodeBinary,
		"installTime": time.Now().UTC().Format(time.RFC3339),
	}, "", "  ")
	if err != nil {
		return err
	}
	if err := writeFileAtomic(filepath.Join(dir, "manifest.json"), manifest, 0o600); err != nil {
		return fmt.Errorf("install node software: %w", err)
	}
	return nil
}

// nodeSpec decides how the node software runs: its port (asked for, the
// one it had, or a free one), the setup's environment and, for
// self-signed HTTPS, a key and a certificate from the fleet CA.
func (a *agent) nodeSpec(ctx context.Context, st state, b *agentv1.Bootstrap, env []string) (nodeSpec, error) {
	port, err := nodePort(b, st, listenAnyPort)
	if err != nil {
		return nodeSpec{}, err
	}
	spec := nodeSpec{InstanceName: b.GetInstanceName(), NodeVersion: b.GetNodeVersion(), Port: port, Host: b.GetNodeHost(), Env: env}
	switch vocab.HTTPSStrategy(b.GetHttpsStrategy()) {
	case "", vocab.HTTPSNone:
	case vocab.HTTPSSelfSigned:
		if err := a.serverCertificate(ctx, &spec); err != nil {
			return spec, err
		}
	case vocab.HTTPSCustomCertificate:
		if err := a.customCertificate(ctx, &spec); err != nil {
			return spec, err
		}
	case vocab.HTTPSACME:
		if err := a.acmeCertificate(ctx, &spec, b.GetAcme()); err != nil {
			return spec, err
		}
	default:
		return spec, fmt.Errorf("HTTPS strategy %q is not supported by this agent (none, self-signed, custom-certificate, acme)", b.GetHttpsStrategy())
	}
	return spec, nil
}

// customCertificate fetches the instance's custom certificate chain and
// private key through the gateway (the CA resolves the key from the secret
// broker or AWS Secrets Manager) and writes both, mode 0600, where the node
// software reads them: it serves a replaced pair from its next handshake.
func (a *agent) customCertificate(ctx context.Context, spec *nodeSpec) error {
	resp, err := a.request(ctx, func(id string) *agentv1.AgentMessage {
		return &agentv1.AgentMessage{Body: &agentv1.AgentMessage_ServerCertRequest{
			ServerCertRequest: &agentv1.ServerCertRequest{RequestId: id, Custom: true}}}
	})
	if err != nil {
		return fmt.Errorf("custom certificate: %w", err)
	}
	r := resp.GetServerCertResponse()
	if r.GetError() != "" {
		return fmt.Errorf("custom certificate: %s", r.GetError())
	}
	keyPEM := []byte(r.GetPrivateKeyPem())
	defer clear(keyPEM)
	if _, err := tls.X509KeyPair([]byte(r.GetCertificatePem()), keyPEM); err != nil {
		return fmt.Errorf("custom certificate from the gateway: %w", err)
	}
	if err := a.writeNodeTLS(spec, []byte(r.GetCertificatePem()), keyPEM); err != nil {
		return err
	}
	a.logf(ctx, "installed the node software's custom certificate")
	return nil
}

// writeNodeTLS writes the node software's certificate chain and key, mode
// 0600, each replaced atomically (the key first: the node reloads when the
// certificate changes).
func (a *agent) writeNodeTLS(spec *nodeSpec, certPEM, keyPEM []byte) error {
	dir := filepath.Join(a.cfg.StateDir, nodeDirName)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	spec.CertFile, spec.KeyFile = filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	if err := writeFileAtomic(spec.KeyFile, keyPEM, 0o600); err != nil {
		return fmt.Errorf("save server key: %w", err)
	}
	if err := writeFileAtomic(spec.CertFile, certPEM, 0o600); err != nil {
		return fmt.Errorf("save server certificate: %w", err)
	}
	return nil
}

// refreshCertificate is the operator's :refresh-certificate: a
// certificate the agent renews itself (the fleet CA's, an ACME one) is
// renewed now, for the instance's names as they are now; a custom one is
// fetched again with its key. The running node software serves the new
// pair from its next handshake, without a restart.
func (a *agent) refreshCertificate(ctx context.Context, id string, r *agentv1.RefreshCertificate) {
	st := a.state.Get()
	if st.Node == nil || st.Node.CertFile == "" {
		a.logf(ctx, "command %s: refresh-certificate: the node software serves no certificate here; ignored", id)
		return
	}
	if o := r.GetAcme(); o != nil && st.Node.ACME != nil && len(o.GetDomains()) > 0 && o.GetDirectoryUrl() != "" {
		if next := acmeSpecOf(o); !reflect.DeepEqual(next, st.Node.ACME) {
			if err := a.state.Update(func(s *state) { s.Node.ACME = next }); err != nil { // Update copies the node's spec
				a.logf(ctx, "command %s: refresh-certificate: keeping the new ACME order failed: %v", id, err)
				return
			}
			a.logf(ctx, "command %s: the ACME order is now for %v from %s (%s)", id, next.Domains, next.DirectoryURL, next.how())
		}
	}
	if renewsNodeCert(st.Node) {
		a.logf(ctx, "command %s: renewing the node software's certificate now", id)
		a.kickCert(true)
		return
	}
	spec := *st.Node
	if err := a.customCertificate(ctx, &spec); err != nil {
		a.logf(ctx, "command %s: refresh-certificate failed: %v", id, err)
		a.progress(ctx, st.CompletedCommandID, vocab.StepRenewingCertificate, vocab.ProgressFailed, err.Error(), 0)
		return
	}
	a.logf(ctx, "command %s: refreshed the custom certificate", id)
	a.progress(ctx, st.CompletedCommandID, vocab.StepRenewingCertificate, vocab.ProgressSucceeded, "custom certificate installed", 0)
}

// serverCertificate makes the node software's HTTPS key, has the fleet CA
// certify it through the gateway (for the names the inventory holds for
// the instance) and writes both, mode 0600, under the state directory.
func (a *agent) serverCertificate(ctx context.Context, spec *nodeSpec) error {
	key, err := pki.GenerateKey()
	if err != nil {
		return err
	}
	csr, err := pki.NewCSR(key, spec.InstanceName)
	if err != nil {
		return err
	}
	resp, err := a.request(ctx, func(id string) *agentv1.AgentMessage {
		return &agentv1.AgentMessage{Body: &agentv1.AgentMessage_ServerCertRequest{
			ServerCertRequest: &agentv1.ServerCertRequest{RequestId: id, CsrDer: csr}}}
	})
	if err != nil {
		return fmt.Errorf("server certificate: %w", err)
	}
	r := resp.GetServerCertResponse()
	if r.GetError() != "" {
		return fmt.Errorf("server certificate: %s", r.GetError())
	}
	keyPEM, err := pki.EncodePrivateKeyPEM(key)
	if err != nil {
		return err
	}
	if _, err := tls.X509KeyPair([]byte(r.GetCertificatePem()), keyPEM); err != nil {
		return fmt.Errorf("server certificate from the gateway: %w", err)
	}
	if err := a.writeNodeTLS(spec, []byte(r.GetCertificatePem()), keyPEM); err != nil {
		return err
	}
	spec.FleetCA = true
	a.logf(ctx, "got the node software's server certificate from the fleet CA")
	return nil
}

// fetchSecret reads one of the instance's secrets through the gateway. The
// value is masked in every log line from now on.
func (a *agent) fetchSecret(ctx context.Context, name string) (string, error) {
	resp, err := a.request(ctx, func(id string) *agentv1.AgentMessage {
		return &agentv1.AgentMessage{Body: &agentv1.AgentMessage_SecretRequest{
			SecretRequest: &agentv1.SecretRequest{RequestId: id, Name: name}}}
	})
	if err != nil {
		return "", err
	}
	r := resp.GetSecretResponse()
	if r.GetError() != "" {
		return "", errors.New(r.GetError())
	}
	v := string(r.GetValue())
	a.mask.Add(v)
	return v, nil
}

// nodePort is the node software's port: the one the bootstrap asks for,
// else the one it had, else a free one. HTTP-01 answers on its own port at
// every renewal while the node serves, so a port the agent picks is never
// that one.
func nodePort(b *agentv1.Bootstrap, st state, listen func() (net.Listener, error)) (int, error) {
	if p := int(b.GetNodePort()); p != 0 {
		return p, nil
	}
	taken := 0
	if vocab.HTTPSStrategy(b.GetHttpsStrategy()) == vocab.HTTPSACME {
		if o := acmeSpecOf(b.GetAcme()); !o.dns01() {
			taken = o.HTTPPort
		}
	}
	if st.Node != nil && st.Node.Port != 0 && st.Node.Port != taken {
		return st.Node.Port, nil
	}
	// A listener whose port is taken stays open until another is in hand,
	// so the next try cannot be given it again.
	var held []net.Listener
	defer func() {
		for _, l := range held {
			l.Close()
		}
	}()
	for {
		l, err := listen()
		if err != nil {
			return 0, fmt.Errorf("find a free port for the node software: %w", err)
		}
		held = append(held, l)
		if port := l.Addr().(*net.TCPAddr).Port; port != taken {
			return port, nil
		}
	}
}

// listenAnyPort listens on a port of 127.0.0.1 that is free now.
func listenAnyPort() (net.Listener, error) { return net.Listen("tcp", "127.0.0.1:0") }
