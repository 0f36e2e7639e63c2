package app

import (
	"context"
	"sync"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	agentv1 "flotilla.dev/flotilla/api/gen/flotilla/agent/v1"
	inventoryv1 "flotilla.dev/flotilla/api/gen/flotilla/inventory/v1"
	"flotilla.dev/flotilla/api/vocab"
	"flotilla.dev/flotilla/libs/apierr"
	"flotilla.dev/flotilla/services/inventory/adapters"
)

// Heartbeats are kept off the instance row. An agent's heartbeat (every few
// seconds, from every agent) that changes nothing an operator sees on the
// instance — its status, agent version, node URL and address, and disk
// usage within a step — is held in memory and written with the others in
// one statement to the narrow instance_liveness table every
// HeartbeatFlushInterval; reads of instances show the latest beat. Only a
// heartbeat that changes what the row shows takes the row's lock and
// rewrites it.
const (
	// HeartbeatFlushInterval is how often held heartbeats are written.
	HeartbeatFlushInterval = 2 * time.Second
	// knownFor is how long this process trusts what it last read or wrote
	// of an instance's agent, unconfirmed, before reading the row again:
	// with several inventory processes, another may have changed it
	// meanwhile. Each flush confirms what is known of the agents whose
	// beats it wrote (one query: is each row as it was when learnt?), so
	// an agent that keeps beating here is read once, and a change another
	// process made is noticed at the next flush after a beat.
	knownFor = 2 * time.Minute
	// diskStep is the smallest change of disk usage written to the row:
	// the larger of 64 MiB and 1 % of the disk.
	diskStep = 64 << 20
)

// liveness holds what this process knows of agents and their heartbeats
// not yet written.
type liveness struct {
	mu      sync.Mutex
	known   map[string]knownAgent
	pending map[string]adapters.Beat
}

// knownAgent is what an instance row shows of its agent, as of the row's
// update time updated; learnt is when this process read, wrote or last
// confirmed it.
type knownAgent struct {
	status, version, vmID, url, privateIP string
	diskUsed, diskTotal                   int64
	certEnd                               time.Time // the node certificate's end
	updated, learnt                       time.Time
}

func newLiveness() *liveness {
	return &liveness{known: map[string]knownAgent{}, pending: map[string]adapters.Beat{}}
}

// remember records what an instance row now shows.
func (l *liveness) remember(in *inventoryv1.Instance, now time.Time) {
	k := knownAgent{status: in.GetAgent().GetStatus(), version: in.GetAgent().GetVersion(), vmID: in.GetAgent().GetVmId(), url: in.GetAddresses().GetUrl(),
		privateIP: in.GetAddresses().GetPrivateIp(), diskUsed: in.GetDataDisk().GetUsedBytes(), diskTotal: in.GetDataDisk().GetTotalBytes(),
		updated: in.GetUpdateTime().AsTime(), learnt: now}
	if end := in.GetAgent().GetNodeCertificateNotAfter(); end != nil {
		k.certEnd = end.AsTime()
	}
	l.mu.Lock()
	l.known[in.GetId()] = k
	l.mu.Unlock()
}

// forget drops what is known of an instance: its row was changed.
func (l *liveness) forget(id string) {
	l.mu.Lock()
	delete(l.known, id)
	l.mu.Unlock()
}

func (l *liveness) knownOf(id string, now time.Time) (knownAgent, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	k, ok := l.known[id]
	if ok && now.Sub(k.learnt) > knownFor {
		delete(l.known, id)
		return knownAgent{}, false
	}
	return k, ok
}

// confirm keeps what is known of the agents of ids whose rows are as they
// were when it was learnt (updated: each row's update time, read after
// learnt), from now, and forgets the rest: another process changed their
// rows, or deleted them.
func (l *liveness) confirm(ids []string, updated map[string]time.Time, now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, id := range ids {
		k, ok := l.known[id]
		if !ok {
			continue
		}
		if u, found := updated[id]; found && u.Equal(k.updated) {
			k.learnt = now
			l.known[id] = k
		} else {
			delete(l.known, id)
		}
	}
}

// hold keeps a beat for the next flush (the newest per instance, with the
// newest stream start held).
func (l *liveness) hold(b adapters.Beat) {
	l.mu.Lock()
	if cur, ok := l.pending[b.InstanceID]; ok {
		b.ConnectedAt = later(b.ConnectedAt, cur.ConnectedAt)
		if !cur.At.Before(b.At) {
			cur.ConnectedAt, b = b.ConnectedAt, cur
		}
	}
	l.pending[b.InstanceID] = b
	l.mu.Unlock()
}

// take returns the held beats and forgets them.
func (l *liveness) take() []adapters.Beat {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]adapters.Beat, 0, len(l.pending))
	for _, b := range l.pending {
		out = append(out, b)
	}
	clear(l.pending)
	return out
}

// held returns the held beat of an instance.
func (l *liveness) held(id string) (adapters.Beat, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.pending[id]
	return b, ok
}

// changesRow says whether a heartbeat changes what the row shows.
func (k knownAgent) changesRow(hb *agentv1.Heartbeat) bool {
	step := max(int64(diskStep), k.diskTotal/100)
	used := hb.GetDiskUsedBytes() - k.diskUsed
	return k.status != string(vocab.AgentConnected) ||
		(hb.GetAgentVersion() != "" && hb.GetAgentVersion() != k.version) ||
		(hb.GetNodeUrl() != "" && hb.GetNodeUrl() != k.url) ||
		(hb.GetPrivateIp() != "" && k.privateIP == "") ||
		(hb.GetNodeCertificateNotAfter() != nil && !hb.GetNodeCertificateNotAfter().AsTime().Equal(k.certEnd)) ||
		hb.GetDiskTotalBytes() != k.diskTotal || used > step || -used > step
}

// knownAgent returns what the instance row shows of its agent, from memory
// when this process learnt it recently; found is false when the instance
// is gone.
func (a *App) knownAgent(ctx context.Context, id string) (k knownAgent, found bool, err error) {
	now := a.now()
	if k, ok := a.live.knownOf(id, now); ok {
		return k, true, nil
	}
	in := &inventoryv1.Instance{}
	if err := InstanceTable.Get(ctx, a.pool, id, adapters.NoLock, in); err != nil {
		if apierr.Is(err, apierr.KindNotFound) {
			return knownAgent{}, false, nil
		}
		return knownAgent{}, false, err
	}
	a.live.remember(in, now)
	k, _ = a.live.knownOf(id, now)
	return k, true, nil
}

// heartbeat takes a heartbeat off the row when it changes nothing the row
// shows; it reports false when the caller must write the row.
func (a *App) heartbeat(ctx context.Context, id string, hb *agentv1.Heartbeat, at time.Time) (bool, error) {
	k, found, err := a.knownAgent(ctx, id)
	if err != nil || !found {
		return !found && err == nil, err // deleted: dropped
	}
	if k.changesRow(hb) {
		return false, nil
	}
	a.live.hold(adapters.Beat{InstanceID: id, At: at, DiskUsed: hb.GetDiskUsedBytes(), DiskTotal: hb.GetDiskTotalBytes()})
	return true, nil
}

// reconnected takes an agent's new stream off the row when the row shows
// the agent connected already, at the same version on the same VM: its agent gateway
// restarted, or it moved to another gateway, before anyone saw it gone.
// Like a heartbeat, the stream's start is held as the agent's latest beat
// (its disk usage as last known), and as its newest stream's start; it
// reports false when the caller must write the row (and the
// agent-connected event).
func (a *App) reconnected(ctx context.Context, id string, hello *agentv1.Hello, at time.Time) (bool, error) {
	k, found, err := a.knownAgent(ctx, id)
	if err != nil || !found {
		return !found && err == nil, err
	}
	if k.status != string(vocab.AgentConnected) || hello.GetAgentVersion() != k.version || hello.GetVmId() != k.vmID {
		return false, nil
	}
	b := adapters.Beat{InstanceID: id, At: at, DiskUsed: k.diskUsed, DiskTotal: k.diskTotal, ConnectedAt: at}
	if h, ok := a.live.held(id); ok {
		b.DiskUsed, b.DiskTotal = h.DiskUsed, h.DiskTotal
	}
	a.live.hold(b)
	return true, nil
}

// staleDisconnect says whether a disconnect d of in's agent, reported at
// at, is of a stream older than its newest: the agent connected again, to
// this agent gateway or another, before the disconnect came in. Each
// stream's disconnect names its start (its connect's time); the newest
// start is in the row (a connect that was written), the liveness table or
// held here (one taken as a heartbeat). A disconnect that names no start
// (the inventory's own, for missed heartbeats; a gateway's from before) is
// stale if the agent was heard from after at: the agent gateway reports a
// disconnect only while no newer stream of the agent is registered there,
// and that stream's events are later.
func (a *App) staleDisconnect(ctx context.Context, q adapters.Querier, in *inventoryv1.Instance, d *agentv1.Disconnected, at time.Time) (bool, error) {
	newest, seen := in.GetAgent().GetConnectTime().AsTime(), in.GetAgent().GetLastHeartbeat().AsTime()
	if b, ok := a.live.held(in.GetId()); ok {
		newest, seen = later(newest, b.ConnectedAt), later(seen, b.At)
	}
	beats, err := adapters.Beats(ctx, q, []string{in.GetId()})
	if err != nil {
		return false, err
	}
	if b, ok := beats[in.GetId()]; ok {
		newest, seen = later(newest, b.ConnectedAt), later(seen, b.At)
	}
	if start := d.GetStreamStart(); start != nil {
		return newest.After(start.AsTime()), nil
	}
	return seen.After(at), nil
}

// later is the later of a and b.
func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// FlushHeartbeats writes the heartbeats held since the last flush; beats
// that could not be written are held again, unless newer ones came.
//
// It then confirms what this process knows of those agents (see knownFor).
func (a *App) FlushHeartbeats(ctx context.Context) error {
	beats := a.live.take()
	if err := adapters.UpsertBeats(ctx, a.pool, beats); err != nil {
		for _, b := range beats {
			a.live.hold(b)
		}
		return err
	}
	if len(beats) == 0 {
		return nil
	}
	ids := make([]string, len(beats))
	for i, b := range beats {
		ids[i] = b.InstanceID
	}
	now := a.now()
	updated, err := adapters.UpdateTimes(ctx, a.pool, ids)
	if err != nil {
		return err // what is known expires unconfirmed
	}
	a.live.confirm(ids, updated, now)
	return nil
}

// withLiveness shows on instances their agents' latest heartbeats (and
// newest streams' starts): those written to the liveness table and those
// this process holds.
func (a *App) withLiveness(ctx context.Context, ins ...*inventoryv1.Instance) error {
	var ids []string
	for _, in := range ins {
		if in.GetAgent() != nil {
			ids = append(ids, in.GetId())
		}
	}
	if len(ids) == 0 {
		return nil
	}
	beats, err := adapters.Beats(ctx, a.pool, ids)
	if err != nil {
		return err
	}
	for _, in := range ins {
		b, ok := beats[in.GetId()]
		if h, held := a.live.held(in.GetId()); held {
			connected := later(b.ConnectedAt, h.ConnectedAt)
			if !ok || b.At.Before(h.At) {
				b, ok = h, true
			}
			b.ConnectedAt = connected
		}
		if !ok || in.GetAgent() == nil {
			continue
		}
		if b.ConnectedAt.After(in.GetAgent().GetConnectTime().AsTime()) {
			in.Agent.ConnectTime = timestamppb.New(b.ConnectedAt)
		}
		if !in.GetAgent().GetLastHeartbeat().AsTime().Before(b.At) {
			continue
		}
		in.Agent.LastHeartbeat = timestamppb.New(b.At)
		if in.DataDisk == nil {
			in.DataDisk = &inventoryv1.DataDisk{}
		}
		in.DataDisk.UsedBytes, in.DataDisk.TotalBytes = b.DiskUsed, b.DiskTotal
	}
	return nil
}

// SweepHeartbeats removes the heartbeats of deleted instances.
func (a *App) SweepHeartbeats(ctx context.Context) (int64, error) {
	return adapters.DeleteOrphanBeats(ctx, a.pool)
}
