package gateway

import (
	"encoding/json"
	"net/http"

	"flotilla.dev/flotilla/api/endpoints"
	cav1 "flotilla.dev/flotilla/api/gen/flotilla/ca/v1"
)

// caPEM serves GET /api/v1/ca/certificate: the fleet CA certificate as a PEM
// file, for curl --cacert and openssl verify -CAfile. (GET /api/v1/ca has it
// as JSON with its expiry and fingerprint.)
func (g *Gateway) caPEM(w http.ResponseWriter, r *http.Request) {
	c, err := call(r.Context(), g, endpoints.CACertificateGet, &cav1.GetCACertificateRequest{})
	if err != nil {
		g.writeError(w, r, err)
		return
	}
	w.Header().Set("Content-Type", "application/x-pem-file")
	_, _ = w.Write([]byte(c.GetCertificatePem()))
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}
