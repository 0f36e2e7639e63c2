package node

import (
	"crypto/tls"
	"os"
	"sync"
	"time"
)

// KeyPairFiles serves a certificate and key kept in two files, reloading
// them when either file changes (a renewal or a refresh written by the
// agent), so a server picks the new pair up at its next handshake without a
// restart; connections already open keep theirs. A pair that does not load
// (half-written, mismatched) is ignored and the previous one kept.
type KeyPairFiles struct {
	certFile, keyFile string

	mu      sync.Mutex
	cert    *tls.Certificate
	stamp   [2]time.Time
	checked time.Time
}

// NewKeyPairFiles loads the pair once; it must load.
func NewKeyPairFiles(certFile, keyFile string) (*KeyPairFiles, error) {
	k := &KeyPairFiles{certFile: certFile, keyFile: keyFile}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, err
	}
	k.cert, k.stamp = &cert, k.stamps()
	return k, nil
}

func (k *KeyPairFiles) stamps() [2]time.Time {
	var s [2]time.Time
	for i, f := range []string{k.certFile, k.keyFile} {
		if fi, err := os.Stat(f); err == nil {
			s[i] = fi.ModTime()
		}
	}
	return s
}

// reloadEvery bounds how often the files are looked at.
const reloadEvery = 200 * time.Millisecond

// GetCertificate is a tls.Config.GetCertificate: the latest pair.
func (k *KeyPairFiles) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if now := time.Now(); now.Sub(k.checked) >= reloadEvery {
		k.checked = now
		if s := k.stamps(); s != k.stamp {
			if cert, err := tls.LoadX509KeyPair(k.certFile, k.keyFile); err == nil {
				k.cert, k.stamp = &cert, s
			}
		}
	}
	return k.cert, nil
}
