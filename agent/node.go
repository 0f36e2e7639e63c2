package agent

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// Node software supervision.
const (
	// nodeReadyTimeout bounds the wait for a started node software to answer.
	nodeReadyTimeout = 30 * time.Second
	// nodeStopTimeout is how long the node software has to stop after
	// SIGTERM before it is killed.
	nodeStopTimeout = 10 * time.Second
	// nodeRestartMax caps the wait before restarting a node software that
	// exited by itself.
	nodeRestartMax = 30 * time.Second
)

// nodeRunner runs the node software as a child process, restarts it when it
// exits by itself, and stops it on request.
type nodeRunner struct {
	a   *agent
	op  sync.Mutex // one Start or Stop at a time
	mu  sync.Mutex // guards cur
	cur *nodeProc
}

// nodeProc is one supervised node software.
type nodeProc struct {
	url  string
	stop chan struct{} // closed to stop supervising
	done chan struct{} // closed once the child has exited for good
	mu   sync.Mutex
	cmd  *exec.Cmd
}

// URL returns the URL of the running node software, or "".
func (n *nodeRunner) URL() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cur == nil {
		return ""
	}
	return n.cur.url
}

// Start (re)starts the node software for spec and waits until it answers
// GET /, returning its URL.
func (n *nodeRunner) Start(ctx context.Context, spec nodeSpec) (string, error) {
	n.op.Lock()
	defer n.op.Unlock()
	n.stop()
	scheme := "http"
	if spec.CertFile != "" {
		scheme = "https"
	}
	// The state file keeps ${secret:NAME} references, never values: they
	// are fetched again through the gateway each time the node starts.
	env := make([]string, len(spec.Env))
	for i, e := range spec.Env {
		v, err := expandSecrets(ctx, e, n.a.fetchSecret)
		if err != nil {
			return "", fmt.Errorf("node software environment: %w", err)
		}
		env[i] = v
	}
	// A local VM's node listens on loopback, where its clients are; a cloud
	// VM's on every interface, named by the host clients reach it at. The
	// agent checks it on loopback either way.
	port := strconv.Itoa(spec.Port)
	addr, probe := net.JoinHostPort("127.0.0.1", port), scheme+"://"+net.JoinHostPort("127.0.0.1", port)+"/"
	p := &nodeProc{url: probe, stop: make(chan struct{}), done: make(chan struct{})}
	if spec.Host != "" {
		addr, p.url = net.JoinHostPort("", port), scheme+"://"+net.JoinHostPort(spec.Host, port)+"/"
	}
	output := make(chan struct{}, 1)
	cmd, exited, err := n.launch(spec, env, addr, output)
	if err != nil {
		return "", err
	}
	p.cmd = cmd
	if err := waitReady(ctx, probe, exited, output); err != nil {
		_ = signalGroup(cmd, syscall.SIGKILL)
		<-exited
		return "", fmt.Errorf("node software did not start: %w", err)
	}
	go n.supervise(spec, env, addr, p, exited)
	n.mu.Lock()
	n.cur = p
	n.mu.Unlock()
	n.a.logf(ctx, "node software is serving %s", p.url)
	return p.url, nil
}

// launch starts the child with env (secrets resolved); exited receives its
// Wait result, and output (if not nil) is signalled whenever it prints a line.
func (n *nodeRunner) launch(spec nodeSpec, env []string, addr string, output chan<- struct{}) (*exec.Cmd, chan error, error) {
	argv := append([]string(nil), n.a.cfg.NodeBinary...)
	argv = append(argv, "--listen", addr, "--instance-name", spec.InstanceName)
	if spec.CertFile != "" {
		argv = append(argv, "--cert-file", spec.CertFile, "--key-file", spec.KeyFile)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = n.a.cfg.DataDir
	cmd.Env = environ(env, n.a.cfg.DataDir)
	line := func(add func(source, text string)) func(string) {
		return func(l string) {
			add(SourceNode, n.a.mask.Mask(l))
			if output != nil {
				select {
				case output <- struct{}{}:
				default:
				}
			}
		}
	}
	out, err := newOutputPipes(line(n.a.logs.Add), line(n.a.logs.AddStderr))
	if err != nil {
		return nil, nil, fmt.Errorf("start node software %s: %w", argv[0], err)
	}
	out.Attach(cmd)
	ownProcessGroup(cmd, false)
	cmd.WaitDelay = time.Second
	if err := cmd.Start(); err != nil {
		out.Abandon()
		return nil, nil, fmt.Errorf("start node software %s: %w", argv[0], err)
	}
	out.Start()
	exited := make(chan error, 1)
	go func() {
		err := cmd.Wait()
		exited <- err
		// What it printed last still reaches the logs, at the buffer's pace.
		out.Wait(time.Second)
	}()
	return cmd, exited, nil
}

// supervise restarts the node software when it exits by itself, with a
// growing pause, until it is told to stop; then it stops the current child:
// SIGTERM to its process group, SIGKILL if it has not exited after
// nodeStopTimeout.
func (n *nodeRunner) supervise(spec nodeSpec, env []string, addr string, p *nodeProc, exited chan error) {
	defer close(p.done)
	pause := time.Second
	for {
		select {
		case <-p.stop:
			p.mu.Lock()
			cmd := p.cmd
			p.mu.Unlock()
			if cmd == nil {
				return
			}
			_ = signalGroup(cmd, syscall.SIGTERM)
			select {
			case <-exited:
			case <-time.After(nodeStopTimeout):
				_ = signalGroup(cmd, syscall.SIGKILL)
				<-exited
			}
			return
		case err := <-exited:
			p.mu.Lock()
			p.cmd = nil
			p.mu.Unlock()
			n.a.logf(context.Background(), "the node software exited (%v); starting it again in %s", err, pause)
			select {
			case <-p.stop:
				return
			case <-time.After(pause):
			}
			pause = min(2*pause, nodeRestartMax)
			cmd, ex, err := n.launch(spec, env, addr, nil)
			if err != nil {
				n.a.logf(context.Background(), "%v", err)
				ex = make(chan error, 1)
				ex <- err
			}
			p.mu.Lock()
			p.cmd = cmd
			p.mu.Unlock()
			exited = ex
		}
	}
}

// Stop stops the node software and waits until it has exited.
func (n *nodeRunner) Stop() {
	n.op.Lock()
	defer n.op.Unlock()
	n.stop()
}

func (n *nodeRunner) stop() {
	n.mu.Lock()
	p := n.cur
	n.cur = nil
	n.mu.Unlock()
	if p == nil {
		return
	}
	close(p.stop)
	<-p.done
	n.a.logf(context.Background(), "node software stopped")
}

// waitReady asks url until it answers, the child exits or the time is up:
// at once, then whenever the child prints a line (servers usually say when
// they listen), and otherwise after pauses growing from 5 ms to 250 ms, so
// a fast server is seen within milliseconds and a slow one costs few probes.
// The certificate is not checked: this asks whether the server is up.
func waitReady(ctx context.Context, url string, exited <-chan error, output <-chan struct{}) error {
	client := &http.Client{
		Timeout:   2 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}, //nolint:gosec // a liveness probe of our own child
	}
	defer client.CloseIdleConnections()
	deadline := time.NewTimer(nodeReadyTimeout)
	defer deadline.Stop()
	pause := 5 * time.Millisecond
	var last error
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := client.Do(req)
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			_ = resp.Body.Close()
			return nil
		}
		last = err
		next := time.NewTimer(pause)
		select {
		case err := <-exited:
			next.Stop()
			return fmt.Errorf("it exited: %v", err)
		case <-ctx.Done():
			next.Stop()
			return ctx.Err()
		case <-deadline.C:
			next.Stop()
			return fmt.Errorf("no answer from %s in %s: %v", url, nodeReadyTimeout, last)
		case <-output:
			next.Stop()
		case <-next.C:
			pause = min(2*pause, 250*time.Millisecond)
		}
	}
}
