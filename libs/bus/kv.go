package bus

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// kvOperation is the header a key-value bucket's delete and purge markers
// carry.
const kvOperation = "KV-Operation"

// noMessage is JetStream's error code for a message (here: a key) that is
// not there.
const noMessage = 10037

// GetLatest reads key in the key-value bucket from the bucket's stream
// leader, with the revision of that value: what the last acknowledged write
// left. A KeyValue's Get asks with a direct get, which any replica may
// answer, and a replica a moment behind the others answers what the key
// held before: for a record that revokes (the CA's agent certificates) or
// that was just written for immediate use (a join token), that is not good
// enough. A missing or deleted key is jetstream.ErrKeyNotFound.
func GetLatest(ctx context.Context, js jetstream.JetStream, bucket, key string) ([]byte, uint64, error) {
	v, rev, removed, err := getLast(ctx, js, bucket, key)
	if err == nil && removed {
		err = jetstream.ErrKeyNotFound
	}
	return v, rev, err
}

// getLast reads from the leader of bucket's stream the last message whose
// key matches key (a key or a wildcard): its value and sequence, and
// whether it is a delete or purge marker; jetstream.ErrKeyNotFound if
// there is none.
func getLast(ctx context.Context, js jetstream.JetStream, bucket, key string) ([]byte, uint64, bool, error) {
	req, err := json.Marshal(struct {
		LastFor string `json:"last_by_subj"`
	}{"$KV." + bucket + "." + key})
	if err != nil {
		return nil, 0, false, err
	}
	msg, err := js.Conn().RequestWithContext(ctx, apiPrefix(js)+"STREAM.MSG.GET.KV_"+bucket, req)
	if err != nil {
		return nil, 0, false, fmt.Errorf("read %s from bucket %s: %w", key, bucket, err)
	}
	var resp struct {
		Error *struct {
			Code        int    `json:"err_code"`
			Description string `json:"description"`
		} `json:"error"`
		Message *struct {
			Seq     uint64 `json:"seq"`
			Headers []byte `json:"hdrs"`
			Data    []byte `json:"data"`
		} `json:"message"`
	}
	if err := json.Unmarshal(msg.Data, &resp); err != nil {
		return nil, 0, false, fmt.Errorf("read %s from bucket %s: %w", key, bucket, err)
	}
	switch {
	case resp.Error != nil && resp.Error.Code == noMessage:
		return nil, 0, false, jetstream.ErrKeyNotFound
	case resp.Error != nil:
		return nil, 0, false, fmt.Errorf("read %s from bucket %s: %s (%d)", key, bucket, resp.Error.Description, resp.Error.Code)
	case resp.Message == nil:
		return nil, 0, false, fmt.Errorf("read %s from bucket %s: %w", key, bucket, jetstream.ErrInvalidJetStreamResponse)
	}
	if len(resp.Message.Headers) > 0 {
		h, err := nats.DecodeHeadersMsg(resp.Message.Headers)
		if err != nil {
			return nil, 0, false, fmt.Errorf("read %s from bucket %s: %w", key, bucket, err)
		}
		if h.Get(kvOperation) != "" { // a delete or purge marker
			return nil, resp.Message.Seq, true, nil
		}
	}
	return resp.Message.Data, resp.Message.Seq, false, nil
}

// apiPrefix is the prefix of js's JetStream API subjects ("$JS.API.").
func apiPrefix(js jetstream.JetStream) string {
	switch o := js.Options(); {
	case o.Domain != "":
		return "$JS." + o.Domain + ".API."
	case o.APIPrefix != "":
		return strings.TrimSuffix(o.APIPrefix, ".") + "."
	}
	return jetstream.DefaultAPIPrefix
}

// Entry is a key's value in a key-value bucket and its revision.
type Entry struct {
	Value    []byte
	Revision uint64
}

// ErrReadEach is GetLatestMany's answer when it could not read the keys
// together (the replica that answered had not reached the leader's last
// sequence, the stream had no leader, or the batched read failed): read
// each key with GetLatest.
var ErrReadEach = errors.New("the keys could not be read together from a replica as current as the stream's leader")

// GetLatestMany reads keys in the key-value bucket as GetLatest reads each
// (what the last acknowledged write left), in two requests instead of one
// per key: the stream leader's last sequence, then one direct get of every
// key's last value, which any replica may answer, and which counts only
// if that replica had reached the leader's sequence (else ErrReadEach). A
// key missing, deleted or purged is absent from the map.
func GetLatestMany(ctx context.Context, js jetstream.JetStream, bucket string, keys []string) (map[string]Entry, error) {
	if len(keys) == 0 {
		return map[string]Entry{}, nil
	}
	synced, err := lastRevision(ctx, js, bucket)
	if err != nil {
		return nil, err
	}
	got, ok := getMany(ctx, js, bucket, keys, synced)
	if !ok {
		return nil, ErrReadEach
	}
	return got, nil
}

// lastRevision is the last sequence of the bucket's stream as its leader
// has it (0: the bucket is empty). It asks for the stream's info, which
// the leader answers from the counts it keeps; a read of the stream's last
// message (last_by_subj ">") matches every key the stream holds, which at
// 10 000 agents' certificate records costs the server several times as
// much. While the stream has no leader a replica answers, perhaps one
// behind: that answer does not count.
func lastRevision(ctx context.Context, js jetstream.JetStream, bucket string) (uint64, error) {
	st, err := js.Stream(ctx, "KV_"+bucket)
	if err != nil {
		return 0, fmt.Errorf("the last revision of bucket %s: %w", bucket, err)
	}
	info := st.CachedInfo()
	if info.Cluster != nil && info.Cluster.Leader == "" {
		return 0, fmt.Errorf("the last revision of bucket %s: %w", bucket, ErrReadEach)
	}
	return info.State.LastSeq, nil
}

// getMany reads keys' last values in one batched direct get, and reports
// whether the answer counts: complete, and from a replica that had every
// message up to synced.
func getMany(ctx context.Context, js jetstream.JetStream, bucket string, keys []string, synced uint64) (map[string]Entry, bool) {
	subjects := make([]string, len(keys))
	for i, k := range keys {
		subjects[i] = "$KV." + bucket + "." + k
	}
	req, err := json.Marshal(struct {
		MultiLast []string `json:"multi_last"`
	}{subjects})
	if err != nil {
		return nil, false
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
	}
	nc := js.Conn()
	inbox := nc.NewRespInbox()
	msgs := make(chan *nats.Msg, len(keys)+1)
	sub, err := nc.ChanSubscribe(inbox, msgs)
	if err != nil {
		return nil, false
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := nc.PublishRequest(apiPrefix(js)+"DIRECT.GET.KV_"+bucket, inbox, req); err != nil {
		return nil, false
	}
	prefix := "$KV." + bucket + "."
	got := make(map[string]Entry, len(keys))
	for {
		var m *nats.Msg
		select {
		case m = <-msgs:
		case <-ctx.Done():
			return nil, false
		}
		switch m.Header.Get("Status") {
		case "":
		case "204": // the end of the batch: the replica's last sequence when it answered
			upTo, err := strconv.ParseUint(m.Header.Get("Nats-UpTo-Sequence"), 10, 64)
			return got, err == nil && upTo >= synced
		case "404": // none of the keys: counts only if the bucket was empty
			return got, synced == 0
		default:
			return nil, false
		}
		seq, err := strconv.ParseUint(m.Header.Get("Nats-Sequence"), 10, 64)
		key, ok := strings.CutPrefix(m.Header.Get("Nats-Subject"), prefix)
		if err != nil || !ok {
			return nil, false
		}
		if m.Header.Get(kvOperation) == "" { // not a delete or purge marker
			got[key] = Entry{Value: m.Data, Revision: seq}
		}
	}
}
