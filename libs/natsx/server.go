package natsx

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// ReadyTimeout is how long StartEmbedded waits for the server to accept
// connections.
const ReadyTimeout = 10 * time.Second

// EmbeddedOptions configures an in-process nats-server with JetStream.
type EmbeddedOptions struct {
	// ServerName names the server (shown in monitoring and JetStream
	// metadata). Empty lets nats-server use its generated id.
	ServerName string
	// Host is the address to listen on. Empty means 127.0.0.1 (nats-server's
	// own default is every interface).
	Host string
	// Port is the client port: -1 picks a free one, 0 means nats-server's
	// default (4222).
	Port int
	// StoreDir is where JetStream keeps its data. Required.
	StoreDir string
	// Auth, when set, configures client authentication on the server's
	// options (Flotilla's: busauth.Authority.Configure, trusted operator
	// and JWT accounts).
	Auth func(*server.Options) error
	// DontListen starts the server without a network listener; clients can
	// only connect in-process (see ConnectInProcess).
	DontListen bool
	// Logger receives the server's log lines; nil discards them. Debug and
	// trace lines are never produced.
	Logger *slog.Logger
}

// StartEmbedded starts a nats-server with JetStream in this process and waits
// up to ReadyTimeout for it to accept connections. On failure (port taken,
// store directory unusable, not ready in time) it shuts the server down and
// returns an error saying why. The caller stops the server with Shutdown and
// WaitForShutdown.
func StartEmbedded(opts EmbeddedOptions) (*server.Server, error) {
	if opts.StoreDir == "" {
		return nil, errors.New("embedded nats: StoreDir is required for JetStream")
	}
	host := opts.Host
	if host == "" {
		host = "127.0.0.1"
	}
	sopts := &server.Options{
		ServerName: opts.ServerName,
		Host:       host,
		Port:       opts.Port,
		JetStream:  true,
		StoreDir:   opts.StoreDir,
		DontListen: opts.DontListen,
		NoSigs:     true,
	}
	if opts.Auth != nil {
		if err := opts.Auth(sopts); err != nil {
			return nil, fmt.Errorf("embedded nats: authentication: %w", err)
		}
	}
	ns, err := server.NewServer(sopts)
	if err != nil {
		return nil, fmt.Errorf("embedded nats: %w", err)
	}
	logger := &serverLogger{log: opts.Logger, fatal: make(chan string, 1)}
	ns.SetLoggerV2(logger, false, false, false)

	ns.Start()
	ready := make(chan bool, 1)
	go func() { ready <- ns.ReadyForConnections(ReadyTimeout) }()
	select {
	case ok := <-ready:
		if !ok {
			ns.Shutdown()
			return nil, fmt.Errorf("embedded nats %s:%d: not ready for connections after %s", host, opts.Port, ReadyTimeout)
		}
	case msg := <-logger.fatal:
		ns.Shutdown()
		return nil, fmt.Errorf("embedded nats %s:%d: %s", host, opts.Port, msg)
	}
	if !ns.JetStreamEnabled() {
		ns.Shutdown()
		return nil, fmt.Errorf("embedded nats %s:%d: JetStream is not enabled", host, opts.Port)
	}
	return ns, nil
}

// serverLogger forwards nats-server's log lines to slog and reports its first
// fatal error on a channel instead of exiting.
type serverLogger struct {
	log       *slog.Logger
	fatal     chan string
	fatalOnce sync.Once
}

func (l *serverLogger) logf(level slog.Level, format string, v []any) {
	if l.log != nil {
		l.log.Log(context.Background(), level, fmt.Sprintf(format, v...), "component", "nats-server")
	}
}

func (l *serverLogger) Noticef(format string, v ...any) { l.logf(slog.LevelInfo, format, v) }
func (l *serverLogger) Warnf(format string, v ...any)   { l.logf(slog.LevelWarn, format, v) }
func (l *serverLogger) Errorf(format string, v ...any)  { l.logf(slog.LevelError, format, v) }
func (l *serverLogger) Debugf(format string, v ...any)  { l.logf(slog.LevelDebug, format, v) }
func (l *serverLogger) Tracef(format string, v ...any)  { l.logf(slog.LevelDebug, format, v) }

func (l *serverLogger) Fatalf(format string, v ...any) {
	l.logf(slog.LevelError, format, v)
	l.fatalOnce.Do(func() { l.fatal <- fmt.Sprintf(format, v...) })
}
