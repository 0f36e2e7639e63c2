package ca

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"

	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/sync/errgroup"
	"google.golang.org/protobuf/proto"

	"flotilla.dev/flotilla/api/endpoints"
	cav1 "flotilla.dev/flotilla/api/gen/flotilla/ca/v1"
	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	"flotilla.dev/flotilla/api/subjects"
	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/libs/apierr"
	"flotilla.dev/flotilla/libs/bus"
)

// An agent certificate is current while its instance exists and is not
// deprovisioned, the VM it names is the instance's current VM, and its
// serial is one the CA keeps for the instance: a join keeps only the new
// certificate's (revoking every earlier VM's), a renewal keeps the renewed
// and the new one, and the agent's first check with the new one drops the
// renewed one. So a copy of an older certificate stops working as soon as
// the agent uses its newer one, and no certificate outlives its instance or
// its VM.

// AgentCertsBucket holds an AgentCertRecord per instance id.
const AgentCertsBucket = subjects.AgentCertsBucket

// agentCerts keeps the current agent certificates per instance in a KV
// bucket.
type agentCerts struct {
	kv jetstream.KeyValue
	js jetstream.JetStream
}

func newAgentCerts(ctx context.Context, js jetstream.JetStream, replicas int) (*agentCerts, error) {
	kv, err := bus.DeclareKeyValue(ctx, js, jetstream.KeyValueConfig{
		Bucket:       AgentCertsBucket,
		Description:  "Flotilla agent certificates still current, per instance: the VM and the serials",
		History:      1,
		MaxValueSize: 4096,
		Storage:      jetstream.FileStorage,
		Replicas:     replicas,
	})
	if err != nil {
		return nil, err
	}
	return &agentCerts{kv: kv, js: js}, nil
}

// certRead is an instance's record as read, with its revision (a nil
// record at revision 0: there is none).
type certRead struct {
	rec *cav1.AgentCertRecord
	rev uint64
}

// get returns the instance's record and its revision. It reads from the
// bucket's leader: a replica a moment behind would still show a serial
// just revoked, or no record for a VM that just joined.
func (c *agentCerts) get(ctx context.Context, id string) (certRead, error) {
	val, rev, err := bus.GetLatest(ctx, c.js, AgentCertsBucket, id)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return certRead{}, nil
	}
	if err != nil {
		return certRead{}, fmt.Errorf("read agent certificates of %s: %w", id, err)
	}
	return decodeCert(id, bus.Entry{Value: val, Revision: rev})
}

// getMany reads the records of ids as get reads each, in two requests
// instead of one per id (bus.GetLatestMany); bus.ErrReadEach when they
// could not be read together (read each with get).
func (c *agentCerts) getMany(ctx context.Context, ids []string) (map[string]certRead, error) {
	got, err := bus.GetLatestMany(ctx, c.js, AgentCertsBucket, ids)
	if err != nil {
		return nil, fmt.Errorf("read agent certificates: %w", err)
	}
	out := make(map[string]certRead, len(ids))
	for _, id := range ids {
		e, ok := got[id]
		if !ok {
			out[id] = certRead{}
			continue
		}
		if out[id], err = decodeCert(id, e); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// decodeCert is the record of instance id as the bucket holds it.
func decodeCert(id string, e bus.Entry) (certRead, error) {
	rec := &cav1.AgentCertRecord{}
	if err := proto.Unmarshal(e.Value, rec); err != nil {
		return certRead{}, fmt.Errorf("decode agent certificates of %s: %w", id, err)
	}
	return certRead{rec: rec, rev: e.Revision}, nil
}

// put stores rec if the record is still at revision (0: absent); a
// concurrent change is a conflict the caller may retry.
func (c *agentCerts) put(ctx context.Context, id string, rec *cav1.AgentCertRecord, revision uint64) error {
	data, err := proto.Marshal(rec)
	if err != nil {
		return err
	}
	if revision == 0 {
		_, err = c.kv.Create(ctx, id, data)
		if errors.Is(err, jetstream.ErrKeyExists) {
			err = errConcurrentCert
		}
	} else {
		_, err = c.kv.Update(ctx, id, data, revision)
		if isRevisionConflict(err) {
			err = errConcurrentCert
		}
	}
	if err != nil && !errors.Is(err, errConcurrentCert) {
		return fmt.Errorf("record agent certificates of %s: %w", id, err)
	}
	return err
}

// set replaces the record whatever it was (a join: a new VM's first
// certificate).
func (c *agentCerts) set(ctx context.Context, id string, rec *cav1.AgentCertRecord) error {
	data, err := proto.Marshal(rec)
	if err != nil {
		return err
	}
	if _, err := c.kv.Put(ctx, id, data); err != nil {
		return fmt.Errorf("record agent certificates of %s: %w", id, err)
	}
	return nil
}

// forget drops an instance's record (the instance is gone).
func (c *agentCerts) forget(ctx context.Context, id string) error {
	if err := c.kv.Delete(ctx, id); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		return fmt.Errorf("forget agent certificates of %s: %w", id, err)
	}
	return nil
}

var errConcurrentCert = apierr.Conflict(apierr.ReasonConcurrentChange, "the agent's certificates changed at the same moment; try again")

// current checks that the certificate of instance id bound to vm with
// serial is current (see above), and returns the instance's record and its
// revision, and the instance's VM. A certificate that names no VM (issued
// before certificates did) is current only while the CA keeps no record
// for the instance.
func (s *Service) current(ctx context.Context, id, vm, serial string) (*cav1.AgentCertRecord, uint64, string, error) {
	inst, err := s.instances.GetInstance(ctx, id)
	if apierr.Is(err, apierr.KindNotFound) {
		inst, err = nil, nil
	}
	if err != nil {
		return nil, 0, "", err
	}
	return s.currentOf(ctx, inst, id, vm, serial, nil)
}

// currentOf is current with the instance read already (nil: it does not
// exist), and its record too if read is set.
func (s *Service) currentOf(ctx context.Context, inst *inventoryv1.Instance, id, vm, serial string, read *certRead) (*cav1.AgentCertRecord, uint64, string, error) {
	revoked := func(format string, args ...any) error {
		return apierr.PermissionDenied("the agent certificate %s of instance %s is no longer valid: "+format, append([]any{serial, id}, args...)...)
	}
	if inst == nil {
		if err := s.certs.forget(ctx, id); err != nil {
			return nil, 0, "", err
		}
		return nil, 0, "", revoked("the instance was deleted")
	}
	if err := liveVM(inst, vm); err != nil {
		return nil, 0, "", revoked("%s", err)
	}
	if read == nil {
		r, err := s.certs.get(ctx, id)
		if err != nil {
			return nil, 0, "", err
		}
		read = &r
	}
	rec, rev := read.rec, read.rev
	switch {
	case rec == nil && vm == "":
		return nil, 0, inst.GetVmId(), nil // issued before certificates named their VM
	case rec == nil:
		return nil, 0, "", revoked("the CA has no record of it")
	case rec.GetVmId() != vm || !slices.Contains(rec.GetSerials(), serial):
		return nil, 0, "", revoked("a newer certificate replaced it")
	}
	return rec, rev, inst.GetVmId(), nil
}

// liveVM says why an agent on vm may not act for inst, if it may not. An
// instance being deprovisioned or deleted has released its VM's agent
// already (agent.v1.Release), or is about to stop the VM: its agent may
// not connect again, which on a machine Flotilla does not stop (provider
// external) would leave it holding a stream after the release.
func liveVM(inst *inventoryv1.Instance, vm string) error {
	switch st := vocab.State(inst.GetState()); {
	case st == vocab.StateDeprovisioned || st == vocab.StateCreated || inst.GetVmId() == "":
		return fmt.Errorf("the instance is %s and has no VM", st)
	case st == vocab.StateDeprovisioning || st == vocab.StateDeleting:
		return fmt.Errorf("the instance is %s: its VM is released", st)
	case vm != "" && vm != inst.GetVmId():
		return fmt.Errorf("it was issued for VM %s, and the instance's VM is %s", vm, inst.GetVmId())
	}
	return nil
}

// checkAgents answers agent.check-many for the agent gateway, before it
// serves the streams of the agents named: it reads their instances in one
// request to the inventory and says of each agent whether its certificate
// is current. A check with the newest certificate revokes the ones it
// replaced.
func (s *Service) checkAgents(ctx context.Context, actor vocab.Actor, req *cav1.CheckAgentsRequest) (*cav1.CheckAgentsResponse, error) {
	if actor != vocab.System(subjects.AgentGW) {
		return nil, apierr.PermissionDenied("%s may not check agents' certificates: the agent gateway checks those of its streams", actor)
	}
	agents := req.GetAgents()
	if len(agents) > endpoints.MaxBatch {
		return nil, apierr.Invalid("agents", "must name at most %d agents, got %d", endpoints.MaxBatch, len(agents))
	}
	ids := make([]string, len(agents))
	for i, a := range agents {
		ids[i] = a.GetInstanceId()
	}
	slices.Sort(ids)
	ids = slices.Compact(ids) // an agent may come twice
	found := map[string]*inventoryv1.Instance{}
	if len(ids) > 0 {
		ins, err := s.instances.GetInstances(ctx, ids)
		if err != nil {
			return nil, err
		}
		for _, in := range ins {
			found[in.GetId()] = in
		}
	}
	// The records of the batch's live instances, read together: one
	// request each was thousands of requests through the JetStream API
	// when thousands of agents came back at once. If that read fails or
	// comes from a replica behind, each agent's check reads its own, all
	// at once.
	live := make([]string, 0, len(found))
	for id := range found {
		live = append(live, id)
	}
	records, err := s.certs.getMany(ctx, live)
	if err != nil && !errors.Is(err, bus.ErrReadEach) {
		s.log.WarnContext(ctx, "agent certificate records not read together; reading each", "agents", len(live), "error", err)
	}
	results := make([]*cav1.CheckAgentResult, len(agents))
	// Every agent of the batch at once (at most endpoints.MaxBatch): the
	// few that need it write their record.
	var g errgroup.Group
	for i, a := range agents {
		g.Go(func() error {
			var read *certRead
			if r, ok := records[a.GetInstanceId()]; ok {
				read = &r
			}
			results[i] = checkResult(ctx, s.log, s.checkAgent(ctx, found[a.GetInstanceId()], a, read))
			return nil
		})
	}
	_ = g.Wait()
	return &cav1.CheckAgentsResponse{Results: results}, nil
}

// checkAgent checks one agent's certificate, inst being its instance (nil:
// it does not exist), with its record as read already if read is set.
func (s *Service) checkAgent(ctx context.Context, inst *inventoryv1.Instance, req *cav1.CheckAgentRequest, read *certRead) error {
	id := req.GetInstanceId()
	for range 3 {
		rec, rev, _, err := s.currentOf(ctx, inst, id, req.GetVmId(), req.GetSerial(), read)
		read = nil // after a conflict, read it again
		if err != nil {
			return err
		}
		serials := rec.GetSerials()
		if len(serials) < 2 || serials[len(serials)-1] != req.GetSerial() {
			return nil
		}
		err = s.certs.put(ctx, id, &cav1.AgentCertRecord{VmId: rec.GetVmId(), Serials: []string{req.GetSerial()}}, rev)
		if !errors.Is(err, errConcurrentCert) {
			if err == nil {
				s.log.InfoContext(ctx, "agent certificates revoked: the agent uses its newer one", "instance_id", id, "revoked", serials[:len(serials)-1])
			}
			return err
		}
	}
	return errConcurrentCert
}

// checkResult is the answer for one agent of a batch: err as the caller
// may see it (an internal error is logged and named by an id).
func checkResult(ctx context.Context, log *slog.Logger, err error) *cav1.CheckAgentResult {
	kind, reason, message := apierr.ItemParts(ctx, log, err)
	return &cav1.CheckAgentResult{ErrorKind: kind, ErrorReason: reason, ErrorMessage: message}
}
