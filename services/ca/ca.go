// Package ca is Flotilla's fleet certificate authority. It keeps the fleet
// CA's certificate and key as PEM files (generated at first start, or the
// operator's own), hands out one-time join tokens, exchanges a join token
// and a CSR for an agent's identity certificate (subject CN = instance id),
// renews agent certificates, and issues instance HTTPS server certificates.
// Join tokens live only as SHA-256 digests in the JetStream key-value bucket
// JoinTokensBucket, and are consumed exactly once even when several manager
// nodes race for the same one. Every endpoint is a bus request/reply
// endpoint (libs/rpc) under "flotilla.svc.ca."; the identity in a CSR is
// never trusted, and private keys never leave the process that made them.
package ca

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/types/known/timestamppb"

	"flotilla.dev/flotilla/api/endpoints"
	cav1 "flotilla.dev/flotilla/api/gen/flotilla/ca/v1"
	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/libs/apierr"
	"flotilla.dev/flotilla/libs/awsx"
	"flotilla.dev/flotilla/libs/bus"
	"flotilla.dev/flotilla/libs/pki"
	"flotilla.dev/flotilla/libs/rpc"
)

// Lifetimes of what the CA issues.
const (
	// DefaultAgentCertTTL is how long an agent certificate is valid when
	// Deps.AgentCertTTL is 0. Agents renew well before it ends.
	DefaultAgentCertTTL = 24 * time.Hour
	// DefaultServerCertTTL is how long an instance server certificate is
	// valid when Deps.ServerCertTTL is 0.
	DefaultServerCertTTL = 90 * 24 * time.Hour
)

// Deps are what the service is built from; the caller owns them.
type Deps struct {
	NATS           *nats.Conn
	Log            *slog.Logger
	TracerProvider trace.TracerProvider
	Version        string
	// Concurrency is how many requests each of its endpoints serves at
	// once (0: rpc.DefaultConcurrency).
	Concurrency int
	// CertFile and KeyFile are the PEM files of the CA's signing
	// certificate (optionally followed by its issuers) and its unencrypted
	// private key, e.g. <data-dir>/ca/ca.crt and ca.key. Both are required.
	// When neither exists New generates a CA there (see pki.LoadOrCreate);
	// an operator supplies their own by pointing these at their files.
	CertFile string
	KeyFile  string
	// Replicas is the replication of the join-token bucket (1 embedded,
	// 3 in a cluster); 0 means 1.
	Replicas int
	// AgentCertTTL is the lifetime of agent certificates; 0 means
	// DefaultAgentCertTTL.
	AgentCertTTL time.Duration
	// ServerCertTTL is the lifetime of instance server certificates; 0
	// means DefaultServerCertTTL.
	ServerCertTTL time.Duration
	// Now is the clock; nil means time.Now. Tests move it to expire tokens.
	Now func() time.Time
	// Instances looks instances up; nil means the inventory over the bus.
	Instances Instances
	// GatewayNames are the agent gateway's names, which no instance's
	// server certificate may carry.
	GatewayNames []string
	// CloudAccount gives the AWS account of a network, to read the private
	// keys its custom certificates reference in AWS Secrets Manager; nil
	// means such references cannot be resolved.
	CloudAccount CloudAccountOf
	// AWSOptions adjust every AWS configuration (tests record the actions).
	AWSOptions []awsx.Option
}

// GatewayCAFiles are where the agent gateway's intermediate CA is kept:
// beside the fleet CA's certificate and key, generated at first start.
func GatewayCAFiles(certFile, keyFile string) (cert, key string) {
	return filepath.Join(filepath.Dir(certFile), "agentgw-ca.crt"), filepath.Join(filepath.Dir(keyFile), "agentgw-ca.key")
}

// Instances reads instances and their templates, to check what is asked
// for one against its spec, provider and state.
type Instances interface {
	GetInstance(ctx context.Context, id string) (*inventoryv1.Instance, error)
	// GetInstances reads many instances at once, leaving out those that
	// do not exist.
	GetInstances(ctx context.Context, ids []string) ([]*inventoryv1.Instance, error)
	GetTemplate(ctx context.Context, id string) (*inventoryv1.Template, error)
}

// busInstances reads instances from the inventory.
type busInstances struct{ c *rpc.Client }

func (b busInstances) GetInstance(ctx context.Context, id string) (*inventoryv1.Instance, error) {
	return rpc.Call(ctx, b.c, endpoints.InstanceGet, &inventoryv1.GetInstanceRequest{Id: id})
}

func (b busInstances) GetInstances(ctx context.Context, ids []string) ([]*inventoryv1.Instance, error) {
	r, err := rpc.Call(ctx, b.c, endpoints.InstanceGetMany, &inventoryv1.GetInstancesRequest{Ids: ids})
	return r.GetInstances(), err
}

func (b busInstances) GetTemplate(ctx context.Context, id string) (*inventoryv1.Template, error) {
	return rpc.Call(ctx, b.c, endpoints.TemplateGet, &inventoryv1.GetTemplateRequest{Id: id})
}

// Service is the running ca service.
type Service struct {
	rpc       *rpc.Service
	instances Instances
	auth      *pki.Authority
	// gatewayAuth is the agent gateway's intermediate: it signs the agent
	// gateway's server certificate and nothing else.
	gatewayAuth  *pki.Authority
	gatewayNames []string
	tokens       *joinTokens
	js           jetstream.JetStream
	certs        *agentCerts
	log          *slog.Logger
	now          func() time.Time
	agentTTL     time.Duration
	serverTTL    time.Duration
	// bus reads networks and stored keys; cloudAccount and awsOpts read
	// keys from AWS Secrets Manager (custom.go).
	bus          *rpc.Client
	cloudAccount CloudAccountOf
	awsOpts      []awsx.Option
}

// New loads or creates the CA's key material, declares the join-token
// bucket and registers the endpoints. The service takes requests once New
// returns.
func New(ctx context.Context, d Deps) (*Service, error) {
	if err := d.validate(); err != nil {
		return nil, err
	}
	s := &Service{
		log:          d.Log.With("service", subjects.CA),
		instances:    d.Instances,
		now:          d.Now,
		agentTTL:     d.AgentCertTTL,
		serverTTL:    d.ServerCertTTL,
		gatewayNames: d.GatewayNames,
		bus:          rpc.NewClient(d.NATS, subjects.CA, 0),
		cloudAccount: d.CloudAccount,
		awsOpts:      d.AWSOptions,
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.instances == nil {
		s.instances = busInstances{rpc.NewClient(d.NATS, subjects.CA, 0)}
	}
	if s.agentTTL == 0 {
		s.agentTTL = DefaultAgentCertTTL
	}
	if s.serverTTL == 0 {
		s.serverTTL = DefaultServerCertTTL
	}

	auth, created, err := pki.LoadOrCreate(d.CertFile, d.KeyFile, s.now())
	if err != nil {
		return nil, fmt.Errorf("ca: %w", err)
	}
	s.auth = auth
	cert := auth.Certificate()
	msg := "loaded CA"
	if created {
		msg = "generated a new CA"
	}
	s.log.InfoContext(ctx, msg, "subject", cert.Subject.String(), "fingerprint_sha256", auth.Fingerprint(),
		"not_after", cert.NotAfter, "cert_file", d.CertFile, "key_file", d.KeyFile)
	if fi, err := os.Stat(d.KeyFile); err == nil && fi.Mode().Perm()&0o077 != 0 {
		s.log.WarnContext(ctx, "CA key file is readable by other users: chmod 600 it", "key_file", d.KeyFile, "mode", fi.Mode().Perm().String())
	}
	gwCert, gwKey := GatewayCAFiles(d.CertFile, d.KeyFile)
	if s.gatewayAuth, created, err = pki.LoadOrCreateGatewayCA(auth, gwCert, gwKey, s.now()); err != nil {
		return nil, fmt.Errorf("ca: %w", err)
	}
	if created {
		s.log.InfoContext(ctx, "generated the agent gateway CA", "fingerprint_sha256", s.gatewayAuth.Fingerprint(), "cert_file", gwCert, "key_file", gwKey)
	}

	js, err := jetstream.New(d.NATS)
	if err != nil {
		return nil, fmt.Errorf("ca: jetstream: %w", err)
	}
	s.js = js
	replicas := d.Replicas
	if replicas == 0 {
		replicas = 1
	}
	if err := bus.EnsureStreams(ctx, js, replicas, endpoints.StreamsOf(subjects.CA)...); err != nil {
		return nil, fmt.Errorf("ca: %w", err)
	}
	if s.tokens, err = newJoinTokens(ctx, js, replicas); err != nil {
		return nil, fmt.Errorf("ca: %w", err)
	}
	if s.certs, err = newAgentCerts(ctx, js, replicas); err != nil {
		return nil, fmt.Errorf("ca: %w", err)
	}

	s.rpc, err = rpc.New(d.NATS, subjects.CA, d.Version, "Flotilla certificate authority", s.log, d.TracerProvider, s.ready, rpc.WithConcurrency(d.Concurrency))
	if err != nil {
		return nil, err
	}
	for _, add := range []func() error{
		func() error { return rpc.Handle(s.rpc, endpoints.CACertificateGet, s.getCACertificate) },
		func() error { return rpc.Handle(s.rpc, endpoints.JoinTokenCreate, s.createJoinToken) },
		func() error { return rpc.Handle(s.rpc, endpoints.AgentJoin, s.joinAgent) },
		func() error { return rpc.Handle(s.rpc, endpoints.AgentSign, s.signAgent) },
		func() error { return rpc.Handle(s.rpc, endpoints.AgentCheckMany, s.checkAgents) },
		func() error { return rpc.Handle(s.rpc, endpoints.ServerSign, s.signServer) },
		func() error { return rpc.Handle(s.rpc, endpoints.TicketKeysGet, s.getTicketKeys) },
		func() error { return rpc.Handle(s.rpc, endpoints.CustomCertGet, s.getCustomCertificate) },
		func() error { return rpc.Handle(s.rpc, endpoints.ACMEAccountGet, s.getACMEAccount) },
		func() error { return rpc.Handle(s.rpc, endpoints.ACMECertGet, s.getACMECertificate) },
		func() error { return rpc.Handle(s.rpc, endpoints.ACMECertPut, s.putACMECertificate) },
	} {
		if err := add(); err != nil {
			_ = s.rpc.Stop()
			return nil, err
		}
	}
	return s, nil
}

func (d Deps) validate() error {
	var errs []error
	if d.NATS == nil || d.Log == nil || d.TracerProvider == nil {
		errs = append(errs, errors.New("NATS, Log and TracerProvider are required"))
	}
	if d.CertFile == "" || d.KeyFile == "" {
		errs = append(errs, errors.New("CertFile and KeyFile (the CA certificate and key PEM files) are required"))
	}
	if d.Replicas < 0 {
		errs = append(errs, fmt.Errorf("deps: Replicas %d is negative", d.Replicas))
	}
	if d.AgentCertTTL < 0 {
		errs = append(errs, fmt.Errorf("AgentCertTTL: %v is negative", d.AgentCertTTL))
	}
	if d.ServerCertTTL < 0 {
		errs = append(errs, fmt.Errorf("ServerCertTTL: %v is negative", d.ServerCertTTL))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("ca: %w", err)
	}
	return nil
}

// Run serves until ctx ends, then stops taking requests.
func (s *Service) Run(ctx context.Context) error {
	<-ctx.Done()
	return s.rpc.Stop()
}

// Authority returns the CA, for code in the same process that needs its
// certificate (a trust pool, say). Other processes ask certificate.get.
func (s *Service) Authority() *pki.Authority { return s.auth }

// GatewayAuthority returns the agent gateway's intermediate CA, whose
// bundle (CertificatePEM) agents are bootstrapped with.
func (s *Service) GatewayAuthority() *pki.Authority { return s.gatewayAuth }

// ready fails once the CA certificate has expired: nothing it issues would
// verify.
func (s *Service) ready(context.Context) error {
	if na := s.auth.Certificate().NotAfter; s.now().After(na) {
		return fmt.Errorf("the CA certificate expired at %s", na.UTC().Format(time.RFC3339))
	}
	return nil
}

// Readiness is why the service's last readiness check failed ("" when it
// passed) and whether this instance stepped out of its queue groups for it,
// for the cluster's list of managers.
func (s *Service) Readiness() (notReady string, out bool) { return s.rpc.Readiness() }

// getCACertificate answers certificate.get.
func (s *Service) getCACertificate(_ context.Context, _ vocab.Actor, _ *cav1.GetCACertificateRequest) (*cav1.CACertificate, error) {
	return &cav1.CACertificate{
		CertificatePem:    string(s.auth.CertificatePEM()),
		AgentGatewayCaPem: string(s.gatewayAuth.CertificatePEM()),
		NotAfter:          timestamppb.New(s.auth.Certificate().NotAfter),
		FingerprintSha256: s.auth.Fingerprint(),
	}, nil
}

// createJoinToken answers jointoken.create: for the provisioner, only for
// an instance that exists and is being provisioned; for an operator (through
// the gateway), only for an instance of provider external that has its VM id
// and waits for its agent. Every token is audited before it is handed out.
func (s *Service) createJoinToken(ctx context.Context, actor vocab.Actor, req *cav1.CreateJoinTokenRequest) (*cav1.JoinToken, error) {
	id := req.GetInstanceId()
	if err := pki.CheckInstanceID(id); err != nil {
		return nil, apierr.Invalid("instanceId", "%s", err)
	}
	ttl := DefaultJoinTokenTTL
	if secs := req.GetTtlSeconds(); secs != 0 {
		maxSecs := int64(MaxJoinTokenTTL / time.Second)
		if secs < 0 || secs > maxSecs {
			return nil, apierr.Invalid("ttlSeconds", "%d is out of range: must be between 1 and %d (0 means %d)", secs, maxSecs, int64(DefaultJoinTokenTTL/time.Second))
		}
		ttl = time.Duration(secs) * time.Second
	}
	inst, err := s.instance(ctx, id)
	if err != nil {
		return nil, err
	}
	switch {
	case actor == vocab.System(subjects.Provisioner):
		if st := vocab.State(inst.GetState()); st != vocab.StateProvisioning {
			return nil, apierr.Conflict(apierr.ReasonInvalidState, "instance %q is %s: join tokens are issued only while it is being provisioned", id, st)
		}
	case actor.Kind() == vocab.ActorUser:
		if err := s.awaitsExternalAgent(ctx, inst); err != nil {
			return nil, err
		}
	default:
		return nil, apierr.PermissionDenied("%s may not ask for join tokens: the provisioner may, and operators for external instances", actor)
	}
	expire := s.now().Add(ttl)
	token, err := s.tokens.create(ctx, id, expire)
	if err != nil {
		return nil, err
	}
	if err := s.auditJoinToken(ctx, actor, inst, token, expire); err != nil {
		return nil, err
	}
	s.log.InfoContext(ctx, "join token created", "instance_id", id, "token_id", tokenID(token), "expire_time", expire, "actor", actor)
	return &cav1.JoinToken{Token: token, ExpireTime: timestamppb.New(expire), VmId: inst.GetVmId()}, nil
}

// awaitsExternalAgent refuses, naming the rule, unless inst is of provider
// external, being provisioned, with its VM id recorded and no agent yet
// past its join: the only time an operator may mint its agent a token.
func (s *Service) awaitsExternalAgent(ctx context.Context, inst *inventoryv1.Instance) error {
	tmpl, err := s.instances.GetTemplate(ctx, inst.GetTemplateId())
	if err != nil {
		return fmt.Errorf("read the template of instance %s: %w", inst.GetId(), err)
	}
	if p := vocab.Provider(tmpl.GetProvider()); p != vocab.ProviderExternal {
		return apierr.Unsupported("", "instance %q runs on provider %q: join tokens are minted on demand only for provider %q (the provisioner bootstraps the agents of the others)",
			inst.GetId(), p, vocab.ProviderExternal)
	}
	st, step := vocab.State(inst.GetState()), vocab.Step(inst.GetStateDetail())
	if st != vocab.StateProvisioning || inst.GetVmId() == "" || (step != vocab.StepLaunchingVM && step != vocab.StepWaitingForAgent) {
		where := string(st)
		if d := inst.GetStateDetail(); d != "" {
			where += " (" + d + ")"
		}
		return apierr.Conflict(apierr.ReasonInvalidState, "instance %q is %s: join tokens are minted only while it is being provisioned and waits for its agent; provision it, then ask again",
			inst.GetId(), where)
	}
	return nil
}

// auditJoinToken writes the audit record of a token issued and waits for
// JetStream to store it: no record, no token.
func (s *Service) auditJoinToken(ctx context.Context, actor vocab.Actor, inst *inventoryv1.Instance, token string, expire time.Time) error {
	now := s.now()
	rec := &cav1.JoinTokenAudit{InstanceId: inst.GetId(), VmId: inst.GetVmId(), Actor: string(actor), TokenId: tokenID(token),
		ExpireTime: timestamppb.New(expire), Time: timestamppb.New(now)}
	if actor.Kind() == vocab.ActorUser {
		rec.Source = rpc.Source(ctx)
	}
	err := bus.PublishAudit(ctx, s.js, subjects.Audit(subjects.NounJoinToken, inst.GetId(), subjects.VerbCreate),
		subjects.EventType(subjects.NounJoinToken, subjects.VerbCreate), actor, now, rec)
	if err != nil {
		e := apierr.Unavailable("the audit log cannot record this join token now, so it is not issued; try again shortly")
		e.Err = fmt.Errorf("audit join token for %s: %w", inst.GetId(), err)
		return e
	}
	return nil
}

// joinAgent answers agent.join: it consumes the token, then certifies the
// CSR's key as the token's instance, bound to the instance's current VM.
// The new certificate is the instance's only current one: every earlier
// VM's is revoked.
func (s *Service) joinAgent(ctx context.Context, actor vocab.Actor, req *cav1.JoinRequest) (*cav1.AgentCertificate, error) {
	if req.GetToken() == "" {
		return nil, apierr.Invalid("token", "is required")
	}
	tok, err := s.tokens.lookup(ctx, req.GetToken())
	if err != nil {
		return nil, err
	}
	if !s.now().Before(tok.ExpireTime) {
		s.log.InfoContext(ctx, "expired join token presented", "instance_id", tok.InstanceID, "expire_time", tok.ExpireTime)
		return nil, errBadToken
	}
	// A bad CSR leaves the token for a corrected retry.
	csr, err := parseCSR(req.GetCsrDer())
	if err != nil {
		return nil, err
	}
	inst, err := s.instance(ctx, tok.InstanceID)
	if err != nil {
		return nil, err
	}
	if err := liveVM(inst, ""); err != nil {
		return nil, apierr.Conflict(apierr.ReasonInvalidState, "instance %s cannot take an agent: %s", tok.InstanceID, err)
	}
	if err := s.tokens.consume(ctx, tok); err != nil {
		return nil, err
	}
	cert, iss, err := s.issueAgent(ctx, actor, tok.InstanceID, inst.GetVmId(), csr, "join")
	if err != nil {
		return nil, err
	}
	if err := s.certs.set(ctx, tok.InstanceID, &cav1.AgentCertRecord{VmId: inst.GetVmId(), Serials: []string{pki.Serial(iss)}}); err != nil {
		return nil, err
	}
	return cert, nil
}

// signAgent answers agent.sign: the agent gateway has verified the agent's
// current certificate and acts for that agent, whose instance is the only
// one it may renew, and only while that certificate is current. The new
// certificate is for the same VM; the renewed one stays current until the
// agent checks in with the new one.
func (s *Service) signAgent(ctx context.Context, actor vocab.Actor, req *cav1.SignAgentRequest) (*cav1.AgentCertificate, error) {
	id := req.GetInstanceId()
	if err := pki.CheckInstanceID(id); err != nil {
		return nil, apierr.Invalid("instanceId", "%s", err)
	}
	if err := actsFor(actor, id); err != nil {
		return nil, err
	}
	csr, err := parseCSR(req.GetCsrDer())
	if err != nil {
		return nil, err
	}
	for range 3 {
		// A certificate from before VMs were named renews into one that
		// names the instance's VM.
		rec, rev, vm, err := s.current(ctx, id, req.GetVmId(), req.GetSerial())
		if err != nil {
			return nil, err
		}
		cert, iss, err := s.issueAgent(ctx, actor, id, vm, csr, "renew")
		if err != nil {
			return nil, err
		}
		next := &cav1.AgentCertRecord{VmId: vm, Serials: []string{pki.Serial(iss)}}
		if rec != nil {
			next.Serials = []string{req.GetSerial(), pki.Serial(iss)}
		}
		err = s.certs.put(ctx, id, next, rev)
		if errors.Is(err, errConcurrentCert) {
			continue // the new certificate was never handed out
		}
		if err != nil {
			return nil, err
		}
		return cert, nil
	}
	return nil, errConcurrentCert
}

func (s *Service) issueAgent(ctx context.Context, actor vocab.Actor, instanceID, vmID string, csr *x509.CertificateRequest, via string) (*cav1.AgentCertificate, *x509.Certificate, error) {
	iss, err := s.auth.Issue(csr.PublicKey, pki.AgentProfile(instanceID, vmID, s.now(), s.agentTTL))
	if err != nil {
		return nil, nil, fmt.Errorf("issue agent certificate for %s: %w", instanceID, err)
	}
	s.logIssued(ctx, "agent", instanceID, iss.Certificate, "vm_id", vmID, "via", via, "actor", actor)
	return &cav1.AgentCertificate{
		InstanceId:     instanceID,
		CertificatePem: string(iss.PEM),
		CaPem:          string(s.auth.CertificatePEM()),
		NotAfter:       timestamppb.New(iss.Certificate.NotAfter),
	}, iss.Certificate, nil
}

// signServer answers server.sign: for an instance's agent, only names its
// instance's spec gives it (pki.InstanceServerNames); for the agent gateway
// itself, its own names.
func (s *Service) signServer(ctx context.Context, actor vocab.Actor, req *cav1.SignServerRequest) (*cav1.ServerCertificate, error) {
	id := req.GetInstanceId()
	if err := pki.CheckInstanceID(id); err != nil {
		return nil, apierr.Invalid("instanceId", "%s", err)
	}
	csr, err := parseCSR(req.GetCsrDer())
	if err != nil {
		return nil, err
	}
	names, err := parseSANs(req.GetSans())
	if err != nil {
		return nil, err
	}
	if actor != vocab.System(subjects.AgentGW) || id != pki.GatewayInstanceID {
		if err := actsFor(actor, id); err != nil {
			return nil, err
		}
		inst, err := s.instance(ctx, id)
		if err != nil {
			return nil, err
		}
		allowed := pki.InstanceServerNames(inst, s.gatewayNames)
		for i, n := range names.all {
			if !slices.Contains(allowed, n) {
				return nil, apierr.Invalid(fmt.Sprintf("sans[%d]", i), "%q is not a name of instance %s (its ssl.sans and private addresses are %v)", n, id, allowed)
			}
		}
	}
	// CN = the first SAN (clients match the SANs; the CN is for people),
	// or the instance id when there is none or it is too long for a CN.
	cn := id
	if len(names.all) > 0 && len(names.all[0]) <= pki.MaxInstanceIDLength {
		cn = names.all[0]
	}
	issuer := s.auth
	if actor == vocab.System(subjects.AgentGW) && id == pki.GatewayInstanceID {
		issuer = s.gatewayAuth // the only certificate its intermediate signs
	}
	iss, err := issuer.Issue(csr.PublicKey, pki.ServerProfile(cn, names.dns, names.ips, s.now(), s.serverTTL))
	if err != nil {
		return nil, fmt.Errorf("issue server certificate for %s: %w", id, err)
	}
	s.logIssued(ctx, "server", id, iss.Certificate, "sans", names.all, "actor", actor)
	return &cav1.ServerCertificate{
		CertificatePem: string(iss.PEM),
		CaPem:          string(s.auth.CertificatePEM()),
		NotAfter:       timestamppb.New(iss.Certificate.NotAfter),
	}, nil
}

// The agent gateways' TLS session ticket keys: a new one each day, each
// kept for as long as a ticket may live (seven days in TLS 1.3), so a
// ticket sealed on any of those days still opens.
const (
	ticketKeyPeriod = 24 * time.Hour
	ticketKeysKept  = 8
)

// getTicketKeys answers ticketkeys.get: the agent gateways' session ticket
// keys, newest first, derived from the agent gateway CA's key (which every
// manager shares), so every gateway, restarted or not, opens the tickets
// of every other. Only the agent gateway may call it (its declaration).
func (s *Service) getTicketKeys(context.Context, vocab.Actor, *cav1.GetTicketKeysRequest) (*cav1.TicketKeys, error) {
	period := int64(ticketKeyPeriod / time.Second)
	day := s.now().Unix() / period
	out := &cav1.TicketKeys{RefreshTime: timestamppb.New(time.Unix((day+1)*period, 0))}
	for d := day; d > day-ticketKeysKept; d-- {
		k, err := s.gatewayAuth.DeriveKey(fmt.Sprintf("flotilla agent gateway TLS session tickets, day %d", d))
		if err != nil {
			return nil, err
		}
		out.Keys = append(out.Keys, k)
	}
	return out, nil
}

// actsFor refuses unless actor is the agent of instance id.
func actsFor(actor vocab.Actor, id string) error {
	if actor.Kind() != vocab.ActorAgent || actor.Name() != id {
		return apierr.PermissionDenied("%s may not ask for instance %s's certificates", actor, id)
	}
	return nil
}

// instance reads an instance, which must exist (not found: it does not).
func (s *Service) instance(ctx context.Context, id string) (*inventoryv1.Instance, error) {
	inst, err := s.instances.GetInstance(ctx, id)
	if apierr.Is(err, apierr.KindNotFound) {
		return nil, apierr.NotFound("instance", id)
	}
	return inst, err
}

// logIssued records an issuance: never key material.
func (s *Service) logIssued(ctx context.Context, kind, instanceID string, cert *x509.Certificate, attrs ...any) {
	s.log.InfoContext(ctx, "certificate issued", append([]any{
		"kind", kind, "instance_id", instanceID, "serial", pki.Serial(cert), "not_after", cert.NotAfter,
	}, attrs...)...)
}

// parseCSR is pki.ParseCSR with its rules reported against csrDer.
func parseCSR(der []byte) (*x509.CertificateRequest, error) {
	csr, err := pki.ParseCSR(der)
	if err != nil {
		return nil, apierr.Invalid("csrDer", "%s", err)
	}
	return csr, nil
}
