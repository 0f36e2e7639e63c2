// Package pki is the X.509 machinery of Flotilla's fleet certificate
// authority and of the parties that use its certificates.
//
// An Authority is a signing certificate and its private key, kept as two PEM
// files. LoadOrCreate loads them, or at first start generates a self-signed
// ECDSA P-256 root ("Flotilla fleet CA", ten years) and writes it so that
// several manager nodes sharing the files never overwrite each other: each
// writes temporary files and links them into place exclusively, and a node
// that loses the race loads the winner's pair. An operator brings their own
// CA (a root, or an intermediate followed by its chain) by pointing the same
// settings at their files.
//
// The Authority issues leaf certificates from a Profile: AgentProfile for an
// agent's client identity (subject CN = instance id, O = AgentOrganization,
// client authentication) and ServerProfile for an instance's HTTPS server.
// ParseCSR checks a certificate request's signature and key strength; the
// identity in the request is never trusted, the profile decides it.
//
// For the parties on either end of an mTLS connection the package builds TLS
// 1.3 configurations (MutualTLSServerConfig, MutualTLSClientConfig) and reads
// the instance id out of a verified agent certificate (AgentInstanceID,
// PeerInstanceID). Private keys never appear in any error this package
// returns.
package pki
