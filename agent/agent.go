package agent

import (
	"cmp"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	agentv1 "flotilla.dev/flotilla/api/gen/flotilla/agent/v1"
	"flotilla.dev/flotilla/api/vocab"
)

// requestTimeout bounds the wait for the gateway's answer to a secret or
// certificate request, across reconnects.
const requestTimeout = 2 * time.Minute

// agent is one running agent.
type agent struct {
	cfg   Config
	roots *x509.CertPool
	// gatewayCAs are the agent gateway CAs of the bundle: the gateway's
	// chain must pass through one.
	gatewayCAs []*x509.Certificate
	key        crypto.Signer
	cert       atomic.Pointer[heldCert]
	state      *stateStore
	logs       *logBuffer
	out        *outbox
	cmds       *commandQueue
	node       *nodeRunner
	mask       *masker

	// tlsSessions are the TLS sessions of its certificate, resumed when
	// it connects again.
	tlsSessions *SessionCache

	privateIP atomic.Pointer[string]
	diskUsed  atomic.Int64
	load1     atomic.Uint64 // math.Float64bits

	// cycle asks the current stream to end cleanly so the next one
	// presents the renewed certificate.
	cycle chan struct{}

	pendingMu sync.Mutex
	pending   map[string]chan *agentv1.GatewayMessage
	lostMu    sync.Mutex
	lost      chan struct{} // closed when the current stream ends

	// certKick wakes certLoop; certForce makes it renew at once.
	certKick  chan struct{}
	certForce atomic.Bool

	// released is closed when the gateway says the instance let this VM
	// go (agent.v1.Release); releasedWhy is its reason.
	released    chan struct{}
	releaseOnce sync.Once
	releasedWhy atomic.Pointer[string]

	// upgrading is closed when the agent is to stop and be replaced by
	// the binary upgradeTo names (agent.v1.UpgradeAgent).
	upgrading   chan struct{}
	upgradeOnce sync.Once
	upgradeTo   atomic.Pointer[Upgraded]
}

// Run runs the agent until ctx ends: it joins the fleet if it has no valid
// certificate, keeps a stream to the gateway (reconnecting with jittered
// backoff), runs the commands it gets, renews its certificate and reports
// heartbeats and logs. When ctx ends it stops the node software, closes the
// stream (sending what it can) and returns nil; told to upgrade, it does
// the same and returns *Upgraded, for the caller to Exec. It returns an error for bad
// settings and for what it cannot get past alone: a refused join token, or
// a certificate that expired with no usable token.
func Run(ctx context.Context, cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	cfg, err := cfg.withDefaults()
	if err != nil {
		return err
	}
	a, err := newAgent(cfg)
	if err != nil {
		return err
	}
	a.logf(ctx, "flotilla agent %s starting: gateway %s, VM %s, data disk %s", cfg.Version, cfg.GatewayAddr, cfg.VMID, cfg.DataDir)
	if cfg.UpgradeFailed != "" {
		a.progress(ctx, a.instanceCommandID(a.state.Get()), vocab.StepUpgradingAgent, vocab.ProgressFailed, cfg.UpgradeFailed, 0)
	}
	if len(cfg.DataDevices) > 0 {
		logf := func(format string, args ...any) { a.logf(ctx, format, args...) }
		if err := mountDataDisk(ctx, cfg.DataDevices, cfg.DataDir, cfg.DataDeviceWait, logf); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
	}
	if err := a.ensureCert(ctx); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}

	bg, stopBG := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { a.statsLoop(bg) })
	wg.Go(func() { a.renewLoop(bg) })
	wg.Go(func() { a.commandLoop(bg) })
	wg.Go(func() { a.certLoop(bg) })
	if st := a.state.Get(); st.CompletedCommandID != "" && st.Node != nil && !st.Node.Stopped {
		wg.Go(func() {
			if _, err := a.node.Start(bg, *st.Node); err != nil {
				a.logf(bg, "starting the node software again failed: %v", err)
			}
		})
	}

	stopping := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
		case <-a.released:
		case <-a.upgrading:
		}
		a.node.Stop()
		close(stopping)
	}()
	err = a.sessions(ctx, stopping)
	// Nothing empties the log buffer any more: a program's output still
	// waiting for room is let go.
	a.logs.Close()
	stopBG()
	wg.Wait()
	a.node.Stop()
	if why := a.releasedWhy.Load(); why != nil {
		return a.forget(*why)
	}
	if up := a.upgradeTo.Load(); up != nil && ctx.Err() == nil {
		a.cfg.Log.Info("the agent stopped to be upgraded", "binary", up.Binary, "version", up.Version)
		return up
	}
	return err
}

// release ends the agent's part (agent.v1.Release): Run stops the node
// software, closes the stream cleanly (sending this line with the rest)
// and forgets the instance.
func (a *agent) release(ctx context.Context, why string) {
	a.releaseOnce.Do(func() {
		a.logf(ctx, "released: %s; stopping the node software and leaving the fleet (the data directory stays)", why)
		a.releasedWhy.Store(&why)
		close(a.released)
	})
}

// forget drops what bound the agent to its instance once released: the
// certificate (the CA refuses it now) and the instance's state, so the
// agent started again with a new join token joins afresh.
func (a *agent) forget(why string) error {
	if err := a.state.Update(func(s *state) { *s = state{} }); err != nil {
		return fmt.Errorf("released (%s), but the state was not cleared: %w", why, err)
	}
	if err := os.Remove(filepath.Join(a.cfg.StateDir, certFileName)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("released (%s), but the certificate was not removed: %w", why, err)
	}
	a.logf(context.Background(), "released: %s; this agent serves no instance now: to serve one again, start it with a new join token", why)
	return nil
}

// newAgent prepares the directories, reads the CA bundle, the key and the
// state.
func newAgent(cfg Config) (*agent, error) {
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("--state-dir: %w", err)
	}
	if err := os.Chmod(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("--state-dir: %w", err)
	}
	if err := os.MkdirAll(cfg.DataDir, 0o755); err != nil {
		return nil, fmt.Errorf("--data-dir: %w", err)
	}
	roots, gatewayCAs, err := loadRoots(cfg.CAFile)
	if err != nil {
		return nil, err
	}
	key, created, err := loadOrCreateKey(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	st, err := loadState(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	a := &agent{
		cfg:        cfg,
		roots:      roots,
		gatewayCAs: gatewayCAs,
		key:        key,
		state:      st,
		logs:       newLogBuffer(cfg.LogBufferLines, time.Now),
		out:        newOutbox(),
		cmds:       newCommandQueue(),
		mask:       &masker{},
		cycle:      make(chan struct{}, 1),
		pending:    map[string]chan *agentv1.GatewayMessage{},
		certKick:   make(chan struct{}, 1),
		lost:       make(chan struct{}),
		released:   make(chan struct{}),
		upgrading:  make(chan struct{}),
	}
	a.node = &nodeRunner{a: a}
	a.tlsSessions = NewSessionCache(a.tlsCert)
	if err := a.adoptFleetCACert(); err != nil {
		return nil, err
	}
	if created {
		a.logf(context.Background(), "generated the agent key")
	}
	return a, nil
}

// logf logs a line of the agent's own, locally and to the instance's logs.
func (a *agent) logf(ctx context.Context, format string, args ...any) {
	text := fmt.Sprintf(format, args...)
	a.cfg.Log.InfoContext(ctx, text)
	a.logs.AddOwn(text)
}

// instanceCommandID is the command id the progress of a command that
// changes a set-up instance is reported under (an upgrade, a refresh): the
// bootstrap that set it up, or, for a failed setup's instance, the
// bootstrap's id, the VM's.
func (a *agent) instanceCommandID(st state) string {
	return cmp.Or(st.CompletedCommandID, a.cfg.VMID)
}

// progress reports a step of a command.
func (a *agent) progress(ctx context.Context, cmdID string, step vocab.Step, status vocab.Progress, message string, actionIndex int) {
	p := &agentv1.Progress{CommandId: cmdID, Step: string(step), Status: string(status), Message: message, ActionIndex: int32(actionIndex)}
	if status == vocab.ProgressSucceeded && (step == vocab.StepStarting || step == vocab.StepDone) {
		p.NodeUrl = a.node.URL() // running needs it: no wait for the next heartbeat
	}
	a.out.Push(&agentv1.AgentMessage{Body: &agentv1.AgentMessage_Progress{Progress: p}})
	text := fmt.Sprintf("command %s: %s %s", cmdID, step, status)
	if step == vocab.StepRunningSetup {
		text = fmt.Sprintf("command %s: %s action %d %s", cmdID, step, actionIndex, status)
	}
	if message != "" {
		text += ": " + message
	}
	a.logf(ctx, "%s", text)
}

// request sends a request to the gateway and waits for its answer, sending
// it again on the next stream when the one that carried it ends first.
func (a *agent) request(ctx context.Context, build func(requestID string) *agentv1.AgentMessage) (*agentv1.GatewayMessage, error) {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	id := hex.EncodeToString(b)
	ch := make(chan *agentv1.GatewayMessage, 1)
	a.pendingMu.Lock()
	a.pending[id] = ch
	a.pendingMu.Unlock()
	defer func() {
		a.pendingMu.Lock()
		delete(a.pending, id)
		a.pendingMu.Unlock()
	}()
	m := build(id)
	deadline := time.NewTimer(requestTimeout)
	defer deadline.Stop()
	for {
		a.lostMu.Lock()
		lost := a.lost
		a.lostMu.Unlock()
		a.out.Remove(m)
		a.out.Push(m)
		select {
		case r := <-ch:
			return r, nil
		case <-ctx.Done():
			a.out.Remove(m)
			return nil, ctx.Err()
		case <-deadline.C:
			a.out.Remove(m)
			return nil, fmt.Errorf("no answer from the agent gateway in %s", requestTimeout)
		case <-lost:
		}
	}
}

// answer hands a response to the request waiting for it.
func (a *agent) answer(requestID string, m *agentv1.GatewayMessage) {
	a.pendingMu.Lock()
	ch := a.pending[requestID]
	a.pendingMu.Unlock()
	if ch != nil {
		select {
		case ch <- m:
		default:
		}
	}
}

// streamEnded wakes the requests that were waiting on the stream that ended.
func (a *agent) streamEnded() {
	a.lostMu.Lock()
	close(a.lost)
	a.lost = make(chan struct{})
	a.lostMu.Unlock()
}

// outbox holds the messages (progress, requests) waiting for a stream, in
// order. A message whose send failed goes back to the front.
type outbox struct {
	mu     sync.Mutex
	items  []*agentv1.AgentMessage
	notify chan struct{}
}

func newOutbox() *outbox { return &outbox{notify: make(chan struct{}, 1)} }

// Push appends m.
func (o *outbox) Push(m *agentv1.AgentMessage) {
	o.mu.Lock()
	o.items = append(o.items, m)
	o.mu.Unlock()
	select {
	case o.notify <- struct{}{}:
	default:
	}
}

// PushFront puts m back first.
func (o *outbox) PushFront(m *agentv1.AgentMessage) {
	o.mu.Lock()
	o.items = append([]*agentv1.AgentMessage{m}, o.items...)
	o.mu.Unlock()
}

// Pop takes the first message, or nil.
func (o *outbox) Pop() *agentv1.AgentMessage {
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.items) == 0 {
		return nil
	}
	m := o.items[0]
	o.items[0] = nil
	o.items = o.items[1:]
	return m
}

// Remove takes m out if it is still waiting.
func (o *outbox) Remove(m *agentv1.AgentMessage) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	for i, x := range o.items {
		if x == m {
			o.items = append(o.items[:i:i], o.items[i+1:]...)
			return true
		}
	}
	return false
}

// Notify is signalled when a message is pushed.
func (o *outbox) Notify() <-chan struct{} { return o.notify }

// commandQueue holds the commands waiting to run, in order. A command whose
// id is waiting or running is not queued again, nor is one of the last
// finishedKept that ran to their end, unless it is a bootstrap: a command
// sent again (a sender retrying after a lost answer, or reaching the agent
// through two gateways while its stream moves) runs once. A bootstrap sent
// again runs again on purpose: it only makes sure the node software runs and
// reports done once more (bootstrap), which is how its sender learns the
// outcome it missed.
type commandQueue struct {
	mu       sync.Mutex
	items    []*agentv1.Command
	running  *agentv1.Command
	finished []string // ids, oldest first, at most finishedKept
	notify   chan struct{}
}

// finishedKept is how many finished commands' ids the queue remembers.
const finishedKept = 64

func newCommandQueue() *commandQueue { return &commandQueue{notify: make(chan struct{}, 1)} }

// Push queues cmd unless the same command is waiting or running, or ran
// already (see commandQueue).
func (q *commandQueue) Push(cmd *agentv1.Command) bool {
	id := cmd.GetId()
	q.mu.Lock()
	if q.running != nil && q.running.GetId() == id ||
		slices.ContainsFunc(q.items, func(c *agentv1.Command) bool { return c.GetId() == id }) ||
		cmd.GetBootstrap() == nil && slices.Contains(q.finished, id) {
		q.mu.Unlock()
		return false
	}
	q.items = append(q.items, cmd)
	q.mu.Unlock()
	select {
	case q.notify <- struct{}{}:
	default:
	}
	return true
}

// Next waits for the next command and marks it running; the one running
// before is finished.
func (q *commandQueue) Next(ctx context.Context) (*agentv1.Command, error) {
	for {
		q.mu.Lock()
		if q.running != nil {
			if len(q.finished) == finishedKept {
				q.finished = slices.Delete(q.finished, 0, 1)
			}
			q.finished = append(q.finished, q.running.GetId())
			q.running = nil
		}
		if len(q.items) > 0 {
			c := q.items[0]
			q.items = q.items[1:]
			q.running = c
			q.mu.Unlock()
			return c, nil
		}
		q.mu.Unlock()
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-q.notify:
		}
	}
}
