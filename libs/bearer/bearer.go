// Package bearer names an API bearer token without holding it: the digest
// it is stored as, and the short id audit records and revocation notices
// call it by. Neither can be turned back into the token.
package bearer

import (
	"crypto/sha256"
	"encoding/hex"
)

// Digest is how a token is stored and looked up: its SHA-256 digest.
func Digest(token string) [sha256.Size]byte { return sha256.Sum256([]byte(token)) }

// ID names a token in audit records and revocation notices: the first 8
// bytes of its digest, in hex.
func ID(token string) string { return IDOf(Digest(token)) }

// IDOf is the id of a token's digest.
func IDOf(d [sha256.Size]byte) string { return hex.EncodeToString(d[:8]) }
