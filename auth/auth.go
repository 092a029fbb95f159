// Package auth authenticates ringtune's gRPC traffic (node↔node data plane and
// coordinator↔node control plane) with a credential derived from the cluster
// key.
//
// Every RPC carries, in the "authorization" metadata entry, a token
//
//	rt1.<unix seconds>.<nonce, 16 hex>.<HMAC-SHA256, hex>
//
// whose MAC covers the version, the timestamp, the nonce and the full gRPC
// method name, keyed with a sub-key derived from the cluster key (so the same
// cluster key can also key memberlist without the two uses sharing a MAC key).
// The server accepts a token only for the method it was minted for and only
// within MaxSkew of its own clock. Interceptors check it before the handler
// runs, so no message of an unauthenticated stream is ever read.
//
// A token is single-use: each server built with ServerOptions remembers the
// tokens it accepted until they expire (MaxSkew past their time) and refuses
// a second use, so a captured token cannot be replayed, against that server
// or as another call. Without TLS the token still travels in the clear; pass
// a *tls.Config to ServerOptions/DialOptions (see TLSConfigs) so that it
// cannot be captured at all.
package auth

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// KeySize is the size of a generated key; MinKeySize the shortest key
// accepted. 32 bytes is also a valid AES-256 memberlist key.
const (
	KeySize    = 32
	MinKeySize = 32
)

// MaxSkew is how far a token's timestamp may lie from the server's clock.
const MaxSkew = 5 * time.Minute

// MetadataKey is the gRPC metadata entry that carries the token.
const MetadataKey = "authorization"

const tokenVersion = "rt1"

// Key is the cluster key shared by the coordinator and every node.
type Key []byte

// GenerateKey returns a new random key of KeySize bytes.
func GenerateKey() (Key, error) {
	k := make(Key, KeySize)
	if _, err := rand.Read(k); err != nil {
		return nil, fmt.Errorf("auth: generate key: %w", err)
	}
	return k, nil
}

// Validate reports whether k is long enough to be used.
func (k Key) Validate() error {
	if len(k) < MinKeySize {
		return fmt.Errorf("auth: key is %d bytes, need at least %d (generate one with auth.GenerateKey or WriteKeyFile)", len(k), MinKeySize)
	}
	return nil
}

// Encode returns the key file text form of k: base64, one line.
func (k Key) Encode() string { return base64.StdEncoding.EncodeToString(k) + "\n" }

// WriteKeyFile generates a new key and writes it to path (mode 0600). It
// refuses to overwrite an existing file so a running cluster's key is never
// lost by accident.
func WriteKeyFile(path string) (Key, error) {
	k, err := GenerateKey()
	if err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("auth: write key file %s: %w", path, err)
	}
	if _, err := f.WriteString(k.Encode()); err != nil {
		f.Close()
		return nil, fmt.Errorf("auth: write key file %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return nil, fmt.Errorf("auth: write key file %s: %w", path, err)
	}
	return k, nil
}

// LoadKeyFile reads a key file: the key in base64 on one line (surrounding
// whitespace is ignored), as written by WriteKeyFile.
func LoadKeyFile(path string) (Key, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("auth: key file %s does not exist (create one with `coordinator keygen %s`)", path, path)
	}
	if err != nil {
		return nil, fmt.Errorf("auth: read key file %s: %w", path, err)
	}
	text := strings.TrimSpace(string(b))
	if text == "" {
		return nil, fmt.Errorf("auth: key file %s is empty; it must hold a base64 key of at least %d bytes", path, MinKeySize)
	}
	k, err := base64.StdEncoding.DecodeString(text)
	if err != nil {
		return nil, fmt.Errorf("auth: key file %s is not valid base64: %w", path, err)
	}
	if len(k) < MinKeySize {
		return nil, fmt.Errorf("auth: key file %s holds a %d-byte key, need at least %d bytes; generate a new one", path, len(k), MinKeySize)
	}
	return k, nil
}

// macKey derives the token MAC key so that the cluster key is never used
// directly for two purposes.
func (k Key) macKey() []byte { return k.SubKey("ringtune grpc token v1") }

// SubKey derives a 32-byte key for one named purpose (HMAC-SHA256 of the
// purpose under the cluster key). Each protocol that authenticates with the
// cluster key uses its own purpose string, so a MAC made for one protocol can
// never be replayed as proof in another.
func (k Key) SubKey(purpose string) []byte {
	m := hmac.New(sha256.New, k)
	m.Write([]byte(purpose))
	return m.Sum(nil)
}

func mac(macKey []byte, ts, nonce, method string) []byte {
	m := hmac.New(sha256.New, macKey)
	m.Write([]byte(tokenVersion + "\x00" + ts + "\x00" + nonce + "\x00" + method))
	return m.Sum(nil)
}

// Token mints a token for one call of the full gRPC method name
// ("/pkg.Service/Method") at time now.
func (k Key) Token(method string, now time.Time) (string, error) {
	var n [8]byte
	if _, err := rand.Read(n[:]); err != nil {
		return "", fmt.Errorf("auth: token nonce: %w", err)
	}
	ts := strconv.FormatInt(now.Unix(), 10)
	nonce := hex.EncodeToString(n[:])
	return tokenVersion + "." + ts + "." + nonce + "." + hex.EncodeToString(mac(k.macKey(), ts, nonce, method)), nil
}

// Verify checks a token for method at time now. Errors say why it was
// refused but never reveal the expected MAC.
func (k Key) Verify(method, token string, now time.Time) error {
	parts := strings.Split(token, ".")
	if len(parts) != 4 || parts[0] != tokenVersion {
		return errors.New("malformed token (want rt1.<time>.<nonce>.<mac>)")
	}
	sec, err := strconv.ParseInt(parts[1], 10, 64)
	if err != nil {
		return fmt.Errorf("malformed token time %q", parts[1])
	}
	if d := now.Sub(time.Unix(sec, 0)); d > MaxSkew || d < -MaxSkew {
		return fmt.Errorf("token time is %v away from this server's clock (limit %v); check the clocks", d.Round(time.Second), MaxSkew)
	}
	got, err := hex.DecodeString(parts[3])
	if err != nil {
		return errors.New("malformed token MAC")
	}
	if subtle.ConstantTimeCompare(got, mac(k.macKey(), parts[1], parts[2], method)) != 1 {
		return errors.New("token MAC does not match: the caller holds a different cluster key")
	}
	return nil
}

// CheckContext verifies the token in the incoming metadata of ctx for method,
// without the single-use check (see Verifier). The error is a gRPC
// Unauthenticated status.
func (k Key) CheckContext(ctx context.Context, method string) error {
	_, err := k.checkContext(ctx, method)
	return err
}

func (k Key) checkContext(ctx context.Context, method string) (string, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	vals := md.Get(MetadataKey)
	if len(vals) == 0 {
		return "", status.Errorf(codes.Unauthenticated, "auth: %s: no %q metadata; the caller must dial with auth.DialOptions and the cluster key", method, MetadataKey)
	}
	if err := k.Verify(method, vals[0], time.Now()); err != nil {
		return "", status.Errorf(codes.Unauthenticated, "auth: %s: %v", method, err)
	}
	return vals[0], nil
}

// Verifier checks tokens for one server and accepts each token once: it
// remembers every token it accepted until the token expires (MaxSkew after
// its time, when Verify would refuse it anyway), so the memory it holds is
// bounded by the calls of the last 2×MaxSkew.
type Verifier struct {
	k    Key
	mu   sync.Mutex
	seen map[string]time.Time // token → when it expires
	next time.Time            // next sweep of expired entries
}

// NewVerifier returns a Verifier for key k.
func NewVerifier(k Key) *Verifier { return &Verifier{k: k, seen: map[string]time.Time{}} }

// Check verifies the token in ctx's metadata for method and refuses a token
// it has already accepted. The error is a gRPC Unauthenticated status.
func (v *Verifier) Check(ctx context.Context, method string) error {
	tok, err := v.k.checkContext(ctx, method)
	if err != nil {
		return err
	}
	// Verify accepted the token, so its time parses.
	sec, _ := strconv.ParseInt(strings.Split(tok, ".")[1], 10, 64)
	now := time.Now()
	v.mu.Lock()
	defer v.mu.Unlock()
	if now.After(v.next) {
		for t, exp := range v.seen {
			if now.After(exp) {
				delete(v.seen, t)
			}
		}
		v.next = now.Add(10 * time.Second)
	}
	if _, dup := v.seen[tok]; dup {
		return status.Errorf(codes.Unauthenticated, "auth: %s: token already used: a token is good for one call only (a replayed or copied token)", method)
	}
	v.seen[tok] = time.Unix(sec, 0).Add(MaxSkew + time.Second)
	return nil
}

// UnaryServerInterceptor rejects unary calls without a valid, unused token.
func UnaryServerInterceptor(k Key) grpc.UnaryServerInterceptor {
	return NewVerifier(k).Unary
}

// StreamServerInterceptor rejects streams without a valid, unused token
// before the handler reads any message.
func StreamServerInterceptor(k Key) grpc.StreamServerInterceptor {
	return NewVerifier(k).Stream
}

// Unary is a unary server interceptor that calls Check.
func (v *Verifier) Unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	if err := v.Check(ctx, info.FullMethod); err != nil {
		return nil, err
	}
	return h(ctx, req)
}

// Stream is a stream server interceptor that calls Check.
func (v *Verifier) Stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	if err := v.Check(ss.Context(), info.FullMethod); err != nil {
		return err
	}
	return h(srv, ss)
}

// ServerOptions returns the options that authenticate every unary and stream
// call of a server, each token once; with a non-nil tlsConf the server also
// speaks TLS.
func ServerOptions(k Key, tlsConf *tls.Config) []grpc.ServerOption {
	v := NewVerifier(k)
	opts := []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(v.Unary),
		grpc.ChainStreamInterceptor(v.Stream),
	}
	if tlsConf != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(tlsConf)))
	}
	return opts
}

type perRPC struct {
	k      Key
	secure bool
}

// PerRPCCredentials returns credentials that attach a fresh token to every
// call. requireTLS makes gRPC refuse to send it over a plaintext connection.
func PerRPCCredentials(k Key, requireTLS bool) credentials.PerRPCCredentials {
	return perRPC{k: k, secure: requireTLS}
}

func (p perRPC) GetRequestMetadata(ctx context.Context, _ ...string) (map[string]string, error) {
	ri, ok := credentials.RequestInfoFromContext(ctx)
	if !ok {
		return nil, errors.New("auth: no request info in context; use PerRPCCredentials only as gRPC call credentials")
	}
	tok, err := p.k.Token(ri.Method, time.Now())
	if err != nil {
		return nil, err
	}
	return map[string]string{MetadataKey: tok}, nil
}

func (p perRPC) RequireTransportSecurity() bool { return p.secure }

// DialOptions returns client options that attach a token to every call; with
// a nil tlsConf the connection is plaintext.
func DialOptions(k Key, tlsConf *tls.Config) []grpc.DialOption {
	if tlsConf == nil {
		return []grpc.DialOption{
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithPerRPCCredentials(PerRPCCredentials(k, false)),
		}
	}
	return []grpc.DialOption{
		grpc.WithTransportCredentials(credentials.NewTLS(tlsConf)),
		grpc.WithPerRPCCredentials(PerRPCCredentials(k, true)),
	}
}
