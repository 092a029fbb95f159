package auth

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
)

// Challenge-response: the one primitive every handshake that proves
// possession of the cluster key uses (the control session, the ring's raw
// TCP data path). Each side picks a fresh random nonce; each proves it holds
// the key with a MAC over both nonces, its role, and what the proof is for
// (the binding: node id, generation and ranks, ...). A recorded proof is
// worthless in another handshake, because the other side's nonce differs;
// the role label stops a proof being reflected back to its sender; the
// purpose (a sub-key per protocol) stops a proof of one protocol being
// offered in another.

// NonceSize is the size of a handshake nonce.
const NonceSize = 32

// ProofSize is the size of a proof (HMAC-SHA256).
const ProofSize = sha256.Size

// NewNonce returns NonceSize fresh random bytes.
func NewNonce() ([]byte, error) {
	n := make([]byte, NonceSize)
	if _, err := rand.Read(n); err != nil {
		return nil, fmt.Errorf("auth: handshake nonce: %w", err)
	}
	return n, nil
}

// Proof is role's proof of the key for one handshake of protocol purpose:
// HMAC-SHA256 under k.SubKey(purpose) of role, a zero byte, binding, then
// the initiator's nonce a and the responder's nonce b.
func (k Key) Proof(purpose, role string, binding, a, b []byte) []byte {
	m := hmac.New(sha256.New, k.SubKey(purpose))
	m.Write([]byte(role))
	m.Write([]byte{0})
	m.Write(binding)
	m.Write(a)
	m.Write(b)
	return m.Sum(nil)
}

// CheckProof reports, in constant time, whether proof is role's proof for
// this handshake (see Proof).
func (k Key) CheckProof(purpose, role string, binding, a, b, proof []byte) bool {
	return hmac.Equal(proof, k.Proof(purpose, role, binding, a, b))
}
