package gateway

import (
	"net/http"
	"os"
	"runtime"
	"sync"

	"flotilla.dev/flotilla/libs/filecopy"
)

// AgentDownloadPath is where the gateway serves the agent binary of its
// version to new cloud VMs, which verify it against the SHA-256 their user
// data carries: "/downloads/flotilla-agent/<version>/<os>-<arch>".
func AgentDownloadPath(version string) string {
	return "/downloads/flotilla-agent/" + version + "/" + runtime.GOOS + "-" + runtime.GOARCH
}

// agentDownload serves Deps.AgentBinary at AgentDownloadPath, with its
// SHA-256 in the X-Checksum-Sha256 header (computed once). Only this
// manager's version and platform are served: a VM gets the agent that
// matches its manager. No token: the binary is no secret, and the VM has
// none yet.
type agentDownload struct {
	path string
	once sync.Once
	sum  string
	err  error
}

func (d *agentDownload) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if d.path == "" {
		http.Error(w, "this manager serves no agent binary", http.StatusNotFound)
		return
	}
	d.once.Do(func() { d.sum, d.err = filecopy.SHA256(d.path) })
	if d.err != nil {
		http.Error(w, "the agent binary cannot be read", http.StatusInternalServerError)
		return
	}
	f, err := os.Open(d.path)
	if err != nil {
		http.Error(w, "the agent binary cannot be read", http.StatusInternalServerError)
		return
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		http.Error(w, "the agent binary cannot be read", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("X-Checksum-Sha256", d.sum)
	http.ServeContent(w, r, "flotilla-agent", st.ModTime(), f)
}
