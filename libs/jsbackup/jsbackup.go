// Package jsbackup copies JetStream streams while their server runs, and
// creates them again from the copy in another server.
//
// Each stream is copied by JetStream's snapshot ($JS.API.STREAM.SNAPSHOT):
// the server reads the stream's messages as they stand when the request
// arrives and sends them, an s2-compressed archive, in chunks the receiver
// acknowledges one by one (a slow disk slows the snapshot down instead of
// losing a chunk). Copy keeps the archive as it came, in <name>.snapshot,
// beside the stream's configuration in <name>.json, after checking that it
// is whole (it ends with the archive's end-of-backup entry). Send hands
// both to a server's restore API ($JS.API.STREAM.RESTORE), on one server or
// in a cluster.
//
// The streams' consumers come with them, each where it stood at the
// snapshot: a durable consumer goes on after a restore from the message it
// had reached (the services declare theirs again as they start, unchanged).
package jsbackup

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/klauspost/compress/s2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats-server/v2/server/archive"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// The headers nats.go gives a status message (a headers-only message
// whose first line is "NATS/1.0 <status> <description>").
const (
	statusHeader      = "Status"
	descriptionHeader = "Description"
)

// ChunkWait is how long Copy waits for the server's next chunk of a
// snapshot before it gives the stream up.
const ChunkWait = 30 * time.Second

// The files of a copied stream in the copy's directory.
const (
	snapshotExt = ".snapshot"
	configExt   = ".json"
)

// Stream is what a copied stream held when its snapshot was taken.
type Stream struct {
	Name     string    `json:"name"`
	Messages uint64    `json:"messages"`
	FirstSeq uint64    `json:"firstSeq"`
	LastSeq  uint64    `json:"lastSeq"`
	LastTime time.Time `json:"lastTime"`
	// Bytes is the size of its snapshot file (compressed).
	Bytes int64 `json:"bytes"`
}

// Names lists the streams of the account nc is a user of, sorted.
func Names(ctx context.Context, nc *nats.Conn) ([]string, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	var names []string
	list := js.StreamNames(ctx)
	for name := range list.Name() {
		names = append(names, name)
	}
	if err := list.Err(); err != nil {
		return nil, fmt.Errorf("list the streams: %w", err)
	}
	slices.Sort(names)
	return names, nil
}

// Copy snapshots the streams named (Names) into dir, one after the other:
// <name>.snapshot and <name>.json each. A stream whose files are already
// in dir is an error: nothing is overwritten. On an error, the files
// written so far stay, and the caller decides what to do with them.
func Copy(ctx context.Context, nc *nats.Conn, dir string, names ...string) ([]Stream, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	out := make([]Stream, 0, len(names))
	for _, name := range names {
		s, err := snapshot(ctx, nc, name, dir)
		if err != nil {
			return out, fmt.Errorf("copy stream %s: %w", name, err)
		}
		out = append(out, s)
	}
	return out, nil
}

// snapshot has the server send stream name's snapshot, and writes it and
// the stream's configuration into dir.
func snapshot(ctx context.Context, nc *nats.Conn, name, dir string) (Stream, error) {
	// The chunks come to an inbox of this connection, subscribed before
	// the request so that none is missed; a synchronous subscription
	// holds up to 64 MB, beyond the 8 MB the server sends unacknowledged.
	inbox := nc.NewInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		return Stream{}, err
	}
	defer func() { _ = sub.Unsubscribe() }()
	req, err := json.Marshal(server.JSApiStreamSnapshotRequest{DeliverSubject: inbox})
	if err != nil {
		return Stream{}, err
	}
	reply, err := nc.RequestWithContext(ctx, fmt.Sprintf(server.JSApiStreamSnapshotT, name), req)
	if err != nil {
		return Stream{}, fmt.Errorf("ask for its snapshot: %w", err)
	}
	var resp server.JSApiStreamSnapshotResponse
	if err := json.Unmarshal(reply.Data, &resp); err != nil {
		return Stream{}, fmt.Errorf("the snapshot's answer: %w", err)
	}
	if resp.Error != nil {
		return Stream{}, fmt.Errorf("the NATS server refused its snapshot: %s", resp.Error.Description)
	}
	if resp.Config == nil || resp.Config.Name != name {
		return Stream{}, errors.New("the snapshot's answer has no configuration of the stream")
	}
	cfg, err := json.MarshalIndent(resp.Config, "", "  ")
	if err != nil {
		return Stream{}, err
	}
	if err := createFile(filepath.Join(dir, name+configExt), func(w io.Writer) error {
		_, err := w.Write(cfg)
		return err
	}); err != nil {
		return Stream{}, err
	}

	st := Stream{Name: name}
	path := filepath.Join(dir, name+snapshotExt)
	err = createFile(path, func(w io.Writer) error {
		// The archive is checked as it is written: read back from a pipe
		// by check, which must see its end-of-backup entry.
		pr, pw := io.Pipe()
		checked := make(chan error, 1)
		go func() {
			var err error
			st.Messages, st.FirstSeq, st.LastSeq, st.LastTime, err = check(pr)
			_ = pr.CloseWithError(errors.Join(err, errors.New("the check of the snapshot ended early")))
			checked <- err
		}()
		err := receive(ctx, sub, io.MultiWriter(w, pw))
		_ = pw.CloseWithError(err)
		return errors.Join(err, <-checked)
	})
	if err != nil {
		return Stream{}, err
	}
	fi, err := os.Stat(path)
	if err != nil {
		return Stream{}, err
	}
	st.Bytes = fi.Size()
	return st, nil
}

// receive writes the snapshot's chunks to w, acknowledging each once w
// took it, until the server's closing message, which is empty: without a
// status (a snapshot of one chunk) or with 204 when the snapshot is whole,
// with another status (and its description) when it failed.
func receive(ctx context.Context, sub *nats.Subscription, w io.Writer) error {
	for {
		wait, cancel := context.WithTimeout(ctx, ChunkWait)
		m, err := sub.NextMsgWithContext(wait)
		cancel()
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case errors.Is(err, context.DeadlineExceeded):
			return fmt.Errorf("the NATS server sent nothing for %v", ChunkWait)
		case err != nil:
			return err
		}
		if len(m.Data) == 0 {
			if status := m.Header.Get(statusHeader); status != "" && status != "204" {
				return fmt.Errorf("the NATS server ended the snapshot with status %s %s", status, m.Header.Get(descriptionHeader))
			}
			return nil
		}
		if _, err := w.Write(m.Data); err != nil {
			return err
		}
		if m.Reply != "" {
			if err := m.Respond(nil); err != nil {
				return fmt.Errorf("acknowledge a chunk: %w", err)
			}
		}
	}
}

// check reads a snapshot archive through to its end-of-backup entry and
// returns the messages it holds: how many, the first and last sequence,
// and the last one's time.
func check(r io.Reader) (msgs, first, last uint64, lastTime time.Time, err error) {
	ar := archive.NewReader(s2.NewReader(r))
	for {
		hdr, err := ar.Next()
		if errors.Is(err, io.EOF) {
			return 0, 0, 0, time.Time{}, errors.New("the snapshot ends before its end-of-backup entry: it is not whole")
		}
		if err != nil {
			return 0, 0, 0, time.Time{}, fmt.Errorf("read the snapshot: %w", err)
		}
		switch {
		case hdr.Sequence > 0:
			msgs++
			if first == 0 {
				first = hdr.Sequence
			}
			last, lastTime = hdr.Sequence, time.Unix(0, hdr.Timestamp).UTC()
		case hdr.Name == "" && hdr.Timestamp == 0 && hdr.HeaderSize == 0 && hdr.PayloadSize == 0:
			if _, err := io.Copy(io.Discard, r); err != nil {
				return 0, 0, 0, time.Time{}, err
			}
			return msgs, first, last, lastTime, nil
		}
	}
}

// Check reads stream name's configuration and snapshot from dir, as Copy
// wrote them, and returns what the snapshot holds; an error if either is
// missing or unreadable, or the snapshot is not whole.
func Check(dir, name string) (Stream, error) {
	_, st, f, err := open(dir, name)
	if err != nil {
		return Stream{}, err
	}
	return st, f.Close()
}

// open reads stream name's configuration from dir and checks its
// snapshot whole (the server would keep what a truncated archive holds),
// returning it opened at its start.
func open(dir, name string) (*server.StreamConfig, Stream, *os.File, error) {
	b, err := os.ReadFile(filepath.Join(dir, name+configExt))
	if err != nil {
		return nil, Stream{}, nil, err
	}
	var cfg server.StreamConfig
	if err := json.Unmarshal(b, &cfg); err != nil {
		return nil, Stream{}, nil, fmt.Errorf("%s%s: %w", name, configExt, err)
	}
	if cfg.Name != name {
		return nil, Stream{}, nil, fmt.Errorf("%s%s configures stream %q", name, configExt, cfg.Name)
	}
	path := filepath.Join(dir, name+snapshotExt)
	f, err := os.Open(path)
	if err != nil {
		return nil, Stream{}, nil, err
	}
	st := Stream{Name: name}
	if st.Messages, st.FirstSeq, st.LastSeq, st.LastTime, err = check(f); err != nil {
		f.Close()
		return nil, Stream{}, nil, fmt.Errorf("%s: %w", path, err)
	}
	if st.Bytes, err = f.Seek(0, io.SeekCurrent); err == nil {
		_, err = f.Seek(0, io.SeekStart)
	}
	if err != nil {
		f.Close()
		return nil, Stream{}, nil, err
	}
	return &cfg, st, f, nil
}

// SendChunk is how much of a snapshot Send sends at a time; SendWait how
// long it waits for the server to take a chunk, and for the server to
// finish the stream once it has them all.
const (
	SendChunk = 128 * 1024
	SendWait  = 2 * time.Minute
)

// Send creates every stream Copy wrote into dir through the JetStream API
// ($JS.API.STREAM.RESTORE), where the NATS servers nc is connected to
// place it: in a cluster, on as many servers as its configuration's
// replicas. The server restores each from its snapshot as it arrives,
// chunk by acknowledged chunk. nc's user needs the restore API and the
// chunks' subjects ($JS.API.STREAM.RESTORE.*, $JS.SNAPSHOT.RESTORE.>), and
// the delete API ($JS.API.STREAM.DELETE.*). A stream that exists is
// refused by the server. Send is all or nothing: at the first stream that
// fails (refused, its snapshot not whole), it deletes those it created
// (Remove) and returns the error. replicas, when not 0, replaces each
// stream's number of replicas (a data directory's streams have one; a
// cluster's three).
func Send(ctx context.Context, nc *nats.Conn, dir string, replicas int) ([]Stream, error) {
	names, err := snapshots(dir)
	if err != nil {
		return nil, err
	}
	var out []Stream
	for _, name := range names {
		s, started, err := send(ctx, nc, dir, name, replicas)
		if err != nil {
			err = fmt.Errorf("restore stream %s: %w", name, err)
			// Those it made, and this one if the server took it on (one
			// it refused, as there already, is not Send's to delete).
			made := make([]string, 0, len(out)+1)
			for _, s := range out {
				made = append(made, s.Name)
			}
			if started {
				made = append(made, name)
			}
			if rerr := Remove(context.WithoutCancel(ctx), nc, made...); rerr != nil {
				return nil, errors.Join(err, fmt.Errorf("the streams restored before it are left: %w", rerr))
			}
			return nil, fmt.Errorf("%w (the %d restored before it were deleted again)", err, len(out))
		}
		out = append(out, s)
	}
	return out, nil
}

// Remove deletes the streams named, where nc's servers hold them (the
// delete API, $JS.API.STREAM.DELETE.*); one that is not there is fine.
func Remove(ctx context.Context, nc *nats.Conn, names ...string) error {
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	var errs []error
	for _, name := range names {
		if err := js.DeleteStream(ctx, name); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
			errs = append(errs, fmt.Errorf("delete stream %s: %w", name, err))
		}
	}
	return errors.Join(errs...)
}

// send restores stream name from dir; started says the server took the
// restore on (it made the stream, or began to).
func send(ctx context.Context, nc *nats.Conn, dir, name string, replicas int) (_ Stream, started bool, _ error) {
	cfg, st, f, err := open(dir, name)
	if err != nil {
		return Stream{}, started, err
	}
	defer f.Close()
	if replicas != 0 {
		cfg.Replicas = replicas
	}
	req, err := json.Marshal(server.JSApiStreamRestoreRequest{Config: *cfg,
		State: server.StreamState{Msgs: st.Messages, FirstSeq: st.FirstSeq, LastSeq: st.LastSeq, LastTime: st.LastTime}})
	if err != nil {
		return Stream{}, started, err
	}
	// A cluster that has just started may not know all its servers to be
	// up yet, and find no servers to place the replicas on: asked again
	// for up to SendWait.
	var resp server.JSApiStreamRestoreResponse
	for deadline := time.Now().Add(SendWait); ; time.Sleep(time.Second) {
		reply, err := nc.RequestWithContext(ctx, fmt.Sprintf(server.JSApiStreamRestoreT, name), req)
		if err != nil {
			return Stream{}, started, fmt.Errorf("ask to restore it: %w", err)
		}
		resp = server.JSApiStreamRestoreResponse{}
		if err := json.Unmarshal(reply.Data, &resp); err != nil {
			return Stream{}, started, fmt.Errorf("the restore's answer: %w", err)
		}
		if resp.Error == nil {
			started = true
			break
		}
		if resp.Error.ErrCode != uint16(server.JSClusterNoPeersErrF) || time.Now().After(deadline) {
			return Stream{}, started, fmt.Errorf("the NATS server refused to restore it: %s", resp.Error.Description)
		}
	}
	chunk := make([]byte, SendChunk)
	for {
		n, rerr := io.ReadFull(f, chunk)
		if n > 0 {
			if err := sendChunk(ctx, nc, resp.DeliverSubject, chunk[:n]); err != nil {
				return Stream{}, started, err
			}
		}
		if errors.Is(rerr, io.EOF) || errors.Is(rerr, io.ErrUnexpectedEOF) {
			break
		}
		if rerr != nil {
			return Stream{}, started, rerr
		}
	}
	// An empty chunk ends the snapshot; the answer comes once the stream
	// is whole on its servers.
	return st, started, sendChunk(ctx, nc, resp.DeliverSubject, nil)
}

// sendChunk sends a chunk of a snapshot and waits for the server to take
// it: an empty answer, or the stream's creation answer (the last chunk's,
// or an error's).
func sendChunk(ctx context.Context, nc *nats.Conn, subject string, chunk []byte) error {
	wait, cancel := context.WithTimeout(ctx, SendWait)
	defer cancel()
	var m *nats.Msg
	for {
		var err error
		m, err = nc.RequestWithContext(wait, subject, chunk)
		// In a cluster the server that takes the chunks may subscribe a
		// moment after the answer naming their subject: nobody got this
		// one, so it is sent again.
		if errors.Is(err, nats.ErrNoResponders) && wait.Err() == nil {
			time.Sleep(50 * time.Millisecond)
			continue
		}
		if err != nil {
			return fmt.Errorf("send a chunk of its snapshot: %w", err)
		}
		break
	}
	if len(m.Data) == 0 {
		return nil
	}
	var resp server.JSApiStreamCreateResponse
	if err := json.Unmarshal(m.Data, &resp); err != nil {
		return fmt.Errorf("the restore's answer to a chunk: %w", err)
	}
	if resp.Error != nil {
		return fmt.Errorf("the NATS server refused its snapshot: %s", resp.Error.Description)
	}
	return nil
}

// snapshots are the names of the streams whose snapshots are in dir.
func snapshots(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range entries {
		if name, ok := strings.CutSuffix(e.Name(), snapshotExt); ok && !e.IsDir() {
			names = append(names, name)
		}
	}
	return names, nil
}

// createFile creates path (it must not exist) with what write writes,
// synced; a failed write leaves no file.
func createFile(path string, write func(io.Writer) error) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	err = write(f)
	if err == nil {
		err = f.Sync()
	}
	if err = errors.Join(err, f.Close()); err != nil {
		_ = os.Remove(path)
	}
	return err
}
