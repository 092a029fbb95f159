package control

import (
	"errors"
	"fmt"
	"time"

	"github.com/ringtune/ringtune/auth"
)

// The session handshake. The gRPC token (auth) already proves that the
// caller holds the cluster key for this one call; the handshake binds the
// session to a challenge-response over fresh nonces from both sides, with
// auth's one primitive (Key.Proof), so that neither a recorded token nor a
// recorded handshake opens a session again, and the node also learns that
// it talks to a holder of the key:
//
//	node → coordinator  hello{id, …, nonce_n}
//	coordinator → node  challenge{nonce_c, proof("coordinator", id, nonce_n, nonce_c)}
//	node → coordinator  auth{proof("node", id, nonce_n, nonce_c)}
//
// Both proofs bind the node id, so the session's identity is the one
// proven. Only then does the coordinator look at the id and send the job.

const sessionPurpose = "ringtune control session v2"

// HandshakeTimeout bounds the wait for the other side's handshake message,
// so that a peer that stalls mid-handshake cannot hold a session.
const HandshakeTimeout = 20 * time.Second

// recvWithin receives one message or gives up after d. On a timeout the
// receiving goroutine lives until the caller ends the stream (which both
// callers do when they return an error). The stream's end needs no case of
// its own: Recv returns then, with the status that says why.
func recvWithin(st Stream, d time.Duration) (*Msg, error) {
	type res struct {
		m   *Msg
		err error
	}
	ch := make(chan res, 1)
	go func() {
		m, err := st.Recv()
		ch <- res{m, err}
	}()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case r := <-ch:
		return r.m, r.err
	case <-t.C:
		return nil, fmt.Errorf("no handshake message within %s", d)
	}
}

// ClientHandshake opens the node's side of a session on st: it sends hello
// (h with a fresh nonce; Proto set), checks the coordinator's proof and
// answers with its own.
func ClientHandshake(st Stream, key auth.Key, h Hello) error {
	nonce, err := auth.NewNonce()
	if err != nil {
		return err
	}
	h.Nonce, h.Proto = nonce, Version
	if err := st.Send(&Msg{V: Version, Type: TypeHello, Hello: &h}); err != nil {
		return fmt.Errorf("control: send hello: %w", err)
	}
	m, err := recvWithin(st, HandshakeTimeout)
	if err != nil {
		return fmt.Errorf("control: waiting for the coordinator's challenge: %w", err)
	}
	if m.Type != TypeChallenge {
		return fmt.Errorf("control: the coordinator answered hello with %q, want %q", m.Type, TypeChallenge)
	}
	if !key.CheckProof(sessionPurpose, "coordinator", []byte(h.ID), nonce, m.Nonce, m.Proof) {
		return errors.New("control: the coordinator's proof of the cluster key does not match: it holds a different key (check --key-file) or is not the coordinator")
	}
	if err := st.Send(&Msg{V: Version, Type: TypeAuth, Proof: key.Proof(sessionPurpose, "node", []byte(h.ID), nonce, m.Nonce)}); err != nil {
		return fmt.Errorf("control: send auth: %w", err)
	}
	return nil
}

// ServerHandshake runs the coordinator's side on st after it received
// hello (a validated TypeHello message): it sends a challenge on a fresh
// nonce and checks the node's answer. Nothing else of the session is read
// before it succeeds.
func ServerHandshake(st Stream, key auth.Key, hello *Msg) error {
	h := hello.Hello
	nonce, err := auth.NewNonce()
	if err != nil {
		return err
	}
	proof := key.Proof(sessionPurpose, "coordinator", []byte(h.ID), h.Nonce, nonce)
	if err := st.Send(&Msg{V: Version, Type: TypeChallenge, Nonce: nonce, Proof: proof}); err != nil {
		return fmt.Errorf("control: send challenge to node %s: %w", h.ID, err)
	}
	m, err := recvWithin(st, HandshakeTimeout)
	if err != nil {
		return fmt.Errorf("control: node %s: waiting for its answer to the challenge: %w", h.ID, err)
	}
	if m.Type != TypeAuth {
		return fmt.Errorf("control: node %s answered the challenge with %q, want %q", h.ID, m.Type, TypeAuth)
	}
	if !key.CheckProof(sessionPurpose, "node", []byte(h.ID), h.Nonce, nonce, m.Proof) {
		return fmt.Errorf("control: node %s: its proof of the cluster key does not match (a replayed handshake or another key)", h.ID)
	}
	return nil
}

// CheckNodeID refuses ids no node may have: empty, or the coordinator's.
func CheckNodeID(id string) error {
	switch id {
	case "":
		return errors.New("empty node id")
	case CoordinatorID:
		return fmt.Errorf("node id %q is reserved for the coordinator; give the node another --name", id)
	}
	return nil
}
