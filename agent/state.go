package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
)

// Files under Config.StateDir.
const (
	stateFileName = "state.json"
	keyFileName   = "agent.key"
	certFileName  = "agent.crt"
	nodeDirName   = "node"
)

// state is what the agent remembers on the VM across restarts.
type state struct {
	// InstanceID is the instance the agent's certificate names.
	InstanceID string `json:"instanceId,omitempty"`
	// CompletedCommandID is the last Bootstrap that ran to the end.
	CompletedCommandID string `json:"completedCommandId,omitempty"`
	// Node is how the node software runs, once a Bootstrap started it.
	Node *nodeSpec `json:"node,omitempty"`
	// Setup is what that Bootstrap's setup ran (nil: recorded by no
	// agent, one from before RefreshConfiguration).
	Setup *setupRecord `json:"setup,omitempty"`
}

// setupRecord is what a VM's setup ran that a RefreshConfiguration does
// not run again: its scripts and packages, in order (with their
// ${secret:NAME} references, never a value).
type setupRecord struct {
	Ran []ranAction `json:"ran"`
}

// ranAction is a script or packages action.
type ranAction struct {
	Type     string   `json:"type"`
	Script   string   `json:"script,omitempty"`
	Packages []string `json:"packages,omitempty"`
}

// nodeSpec is how to run the node software.
type nodeSpec struct {
	InstanceName string `json:"instanceName"`
	NodeVersion  string `json:"nodeVersion,omitempty"`
	Port         int    `json:"port"`
	// Host is the host clients reach the node at ("": 127.0.0.1, where it
	// then listens; set, it listens on every interface).
	Host string `json:"host,omitempty"`
	// CertFile and KeyFile are set for HTTPS.
	CertFile string `json:"certFile,omitempty"`
	KeyFile  string `json:"keyFile,omitempty"`
	// Env is what the setup's env actions set, NAME=value with the
	// ${secret:NAME} references kept: secret values are never written to
	// the VM's disk; they are fetched again when the node starts.
	Env []string `json:"env,omitempty"`
	// Stopped is set by StopNode: the agent does not start it at restart.
	Stopped bool `json:"stopped,omitempty"`
	// ACME is the order of an "acme" certificate, renewed by certLoop.
	ACME *acmeSpec `json:"acme,omitempty"`
	// FleetCA is set when the certificate is the fleet CA's ("self-signed"),
	// renewed by certLoop.
	FleetCA bool `json:"fleetCA,omitempty"`
}

// stateStore is the state file, rewritten whole (write, sync, rename) on
// every change.
type stateStore struct {
	path string
	mu   sync.Mutex
	st   state
}

// loadState reads dir's state file, or starts empty when there is none.
func loadState(dir string) (*stateStore, error) {
	s := &stateStore{path: filepath.Join(dir, stateFileName)}
	data, err := os.ReadFile(s.path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return s, nil
	case err != nil:
		return nil, fmt.Errorf("read state: %w", err)
	}
	if err := json.Unmarshal(data, &s.st); err != nil {
		return nil, fmt.Errorf("state file %s is corrupt (remove it to start afresh): %w", s.path, err)
	}
	return s, nil
}

// Get returns a copy of the state.
func (s *stateStore) Get() state {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.st
	if st.Node != nil {
		n := *st.Node
		st.Node = &n
	}
	return st
}

// Update changes the state with f and saves it.
func (s *stateStore) Update(f func(*state)) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	next := s.st
	if next.Node != nil {
		n := *next.Node
		next.Node = &n
	}
	f(&next)
	data, err := json.MarshalIndent(next, "", "  ")
	if err != nil {
		return fmt.Errorf("encode state: %w", err)
	}
	if err := writeFileAtomic(s.path, data, 0o600); err != nil {
		return fmt.Errorf("save state: %w", err)
	}
	s.st = next
	return nil
}

// writeFileAtomic replaces path with data: a reader sees the old file or
// the new one, never a part.
func writeFileAtomic(path string, data []byte, mode fs.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer func() { _ = os.Remove(tmp) }()
	if err := f.Chmod(mode); err != nil {
		_ = f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		_ = f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		_ = f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
