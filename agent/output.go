package agent

import (
	"os"
	"os/exec"
	"sync/atomic"
	"time"
)

// outputPipe carries a child's output to the log buffer, line by line.
//
// The child writes into a pipe of its own (an *os.File, so exec.Cmd copies
// nothing itself) and the agent reads it here. When the log buffer is full
// the reader waits, the pipe fills, and the child blocks on its next write:
// a chatty program slows down instead of losing lines. exec.Cmd's own copy
// would be cut off WaitDelay after the child exits, losing what the buffer
// held back; here, after the child exited, the pipe is closed only once it
// stayed idle (the reader waiting for data, not for room) for idleAfterExit:
// a daemon the program started may keep its copy of the pipe open.
type outputPipe struct {
	r, w *os.File
	lw   *lineWriter
	done chan struct{}
	// reading is when the reader started waiting for data (unix nanoseconds),
	// or 0 while it is handing lines to the buffer.
	reading atomic.Int64
}

// newOutputPipe makes a pipe whose lines go to emit; give W to the child.
func newOutputPipe(emit func(string)) (*outputPipe, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	return &outputPipe{r: r, w: w, lw: newLineWriter(emit), done: make(chan struct{})}, nil
}

// W is the end the child writes to.
func (p *outputPipe) W() *os.File { return p.w }

// Start closes the agent's copy of the write end (the child has its own
// now) and reads until every writer has closed it. Call it once the child
// started, or Abandon if it did not.
func (p *outputPipe) Start() {
	_ = p.w.Close()
	go func() {
		defer close(p.done)
		defer p.lw.Close()
		buf := make([]byte, 32<<10)
		for {
			p.reading.Store(time.Now().UnixNano())
			n, err := p.r.Read(buf)
			p.reading.Store(0)
			if n > 0 {
				_, _ = p.lw.Write(buf[:n])
			}
			if err != nil {
				return
			}
		}
	}()
}

// Abandon closes both ends of a pipe whose child never started.
func (p *outputPipe) Abandon() {
	_ = p.w.Close()
	_ = p.r.Close()
}

// Wait, once the child has exited, returns when everything written to the
// pipe has gone to the log buffer, or when the pipe stayed idle for
// idleAfterExit (a process the child left behind holds it open): then it
// closes the pipe and returns.
func (p *outputPipe) Wait(idleAfterExit time.Duration) {
	tick := time.NewTicker(min(idleAfterExit/4, 250*time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-p.done:
			_ = p.r.Close()
			return
		case <-tick.C:
			if since := p.reading.Load(); since != 0 && time.Since(time.Unix(0, since)) >= idleAfterExit {
				_ = p.r.Close()
				<-p.done
				return
			}
		}
	}
}

// outputPipes are a child's standard output and standard error, each an
// outputPipe.
type outputPipes struct{ out, err *outputPipe }

// newOutputPipes makes the pipes of a child whose output lines go to
// stdout and whose error lines go to stderr.
func newOutputPipes(stdout, stderr func(string)) (*outputPipes, error) {
	out, err := newOutputPipe(stdout)
	if err != nil {
		return nil, err
	}
	errOut, err := newOutputPipe(stderr)
	if err != nil {
		out.Abandon()
		return nil, err
	}
	return &outputPipes{out: out, err: errOut}, nil
}

// Attach makes the pipes cmd's standard output and error.
func (p *outputPipes) Attach(cmd *exec.Cmd) { cmd.Stdout, cmd.Stderr = p.out.W(), p.err.W() }

// Start, Abandon and Wait are outputPipe's, for both.
func (p *outputPipes) Start()   { p.out.Start(); p.err.Start() }
func (p *outputPipes) Abandon() { p.out.Abandon(); p.err.Abandon() }

// Wait waits for both pipes, side by side (outputPipe.Wait).
func (p *outputPipes) Wait(idleAfterExit time.Duration) {
	done := make(chan struct{})
	go func() { p.err.Wait(idleAfterExit); close(done) }()
	p.out.Wait(idleAfterExit)
	<-done
}
