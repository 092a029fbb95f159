package bulk

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/experimental"

	"github.com/ringtune/ringtune/auth"
)

// Result describes a verified transfer.
type Result struct {
	Bytes int64
	// SHA256 (hex) is the content's SHA-256: the transfer's checksum, or
	// under SumCRC32C the one Fetch computed to check want ("" without).
	SHA256 string
	// CRC32C (hex) is the transfer's checksum under SumCRC32C.
	CRC32C string
}

// ErrMismatch is wrapped by Fetch's error when the bytes received do not
// match the sender's trailer or the expected hash.
var ErrMismatch = errors.New("bulk: transfer does not match its checksum")

// ErrStalled is wrapped by Fetch's error when no chunk arrived within the
// chunk timeout.
var ErrStalled = errors.New("bulk: peer stalled")

// Dial connects to a gRPC server that hosts the bulk service (the
// coordinator's control server or a node's ring server), authenticated with
// key. The connection's windows are left at gRPC's defaults: flow control,
// not window size, is what bounds memory here. Its read buffers come from
// the bulk plane's pool, which does not zero them (see chunkPool).
func Dial(addr string, key auth.Key, tlsConf *tls.Config) (*grpc.ClientConn, error) {
	cc, err := grpc.NewClient(addr, append(auth.DialOptions(key, tlsConf), grpc.WithDisableRetry(), experimental.WithBufferPool(pool))...)
	if err != nil {
		return nil, fmt.Errorf("bulk: dial %s: %w", addr, err)
	}
	return cc, nil
}

// Fetch streams what req names from the server on cc into w, hashing as it
// goes. chunkTimeout (0: DefaultChunkTimeout) bounds the wait for each
// chunk; time spent in w.Write does not count. want, when not empty, is the
// SHA-256 (hex) the content must have (under SumCRC32C Fetch computes it
// on this side only).
//
// A nil error means every byte arrived, in order, and the sums agree. On
// error w may have received part of the stream: the caller must discard it.
// A w that is a *FileSink takes the received chunks without a copy.
func Fetch(ctx context.Context, cc *grpc.ClientConn, req Request, w io.Writer, chunkTimeout time.Duration, want string) (Result, error) {
	return fetch(ctx, cc, req, w, chunkTimeout, want, nil)
}

// FetchHashed is Fetch that also writes every byte, in order, into h: a
// caller that keeps a content hash of its own (a checkpoint's SHA-256)
// asks for a SumCRC32C transfer and hashes with SHA-256 on its side only.
// h's sum is that of the whole content once FetchHashed returns nil.
func FetchHashed(ctx context.Context, cc *grpc.ClientConn, req Request, w io.Writer, chunkTimeout time.Duration, h hash.Hash) (Result, error) {
	return fetch(ctx, cc, req, w, chunkTimeout, "", h)
}

func fetch(ctx context.Context, cc *grpc.ClientConn, req Request, w io.Writer, chunkTimeout time.Duration, want string, extra hash.Hash) (Result, error) {
	if err := req.validate(); err != nil {
		return Result{}, err
	}
	if chunkTimeout <= 0 {
		chunkTimeout = DefaultChunkTimeout
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var stalled atomic.Bool
	dog := time.AfterFunc(chunkTimeout, func() { stalled.Store(true); cancel() })
	defer dog.Stop()
	fail := func(err error) (Result, error) {
		if stalled.Load() {
			return Result{}, fmt.Errorf("%w: no data for %s on %s from %s: %v", ErrStalled, chunkTimeout, req, cc.Target(), err)
		}
		return Result{}, fmt.Errorf("bulk: %s from %s: %w", req, cc.Target(), err)
	}

	st, err := cc.NewStream(ctx, &serviceDesc.Streams[0], GetMethod,
		grpc.CallContentSubtype(codecName), grpc.MaxCallRecvMsgSize(MaxChunkBytes+64))
	if err != nil {
		return fail(err)
	}
	f, err := jsonFrame(kindRequest, req)
	if err != nil {
		return fail(err)
	}
	if err := st.SendMsg(f); err != nil {
		return fail(err)
	}
	if err := st.CloseSend(); err != nil {
		return fail(err)
	}
	h := req.newSum()
	// content is the SHA-256 want is checked against, when the wire's
	// checksum is not that.
	var content hash.Hash
	if want != "" && req.Sum == SumCRC32C {
		content = sha256.New()
	}
	var total int64
	taker, _ := w.(chunkTaker)
	for {
		var in frame
		if err := st.RecvMsg(&in); err != nil {
			if errors.Is(err, io.EOF) {
				err = errors.New("stream ended without its trailer (the sender stopped)")
			}
			return fail(err)
		}
		switch in.kind {
		case kindData:
			dog.Stop()
			n := 0
			in.pieces(func(p []byte) {
				h.Write(p)
				if content != nil {
					content.Write(p)
				}
				if extra != nil {
					extra.Write(p)
				}
				n += len(p)
			})
			total += int64(n)
			var err error
			if taker != nil {
				// The sink owns the buffers from here: no copy.
				err = taker.take(in.data)
			} else {
				// One write per chunk (a pipe's reader wakes once).
				bp := pool.Get(n)
				b := (*bp)[:0]
				in.pieces(func(p []byte) { b = append(b, p...) })
				in.release()
				_, err = w.Write(b)
				pool.Put(bp)
			}
			if err != nil {
				return Result{}, fmt.Errorf("bulk: %s from %s: write: %w", req, cc.Target(), err)
			}
			dog.Reset(chunkTimeout)
		case kindEnd:
			var t trailer
			err := json.Unmarshal(in.body, &t)
			in.release()
			if err != nil {
				return fail(fmt.Errorf("decode trailer: %w", err))
			}
			got := hex.EncodeToString(h.Sum(nil))
			res := Result{Bytes: total}
			sent := t.SHA256
			if req.Sum == SumCRC32C {
				sent, res.CRC32C = t.CRC32C, got
				if content != nil {
					res.SHA256 = hex.EncodeToString(content.Sum(nil))
				}
			} else {
				res.SHA256 = got
			}
			if sent == "" {
				return Result{}, fmt.Errorf("%w: %s from %s: the sender's trailer has no %s (a version that ignores the request's checksum kind?)", ErrMismatch, req, cc.Target(), req.sumName())
			}
			if t.Bytes != total || sent != got {
				return Result{}, fmt.Errorf("%w: %s from %s: received %d bytes with %s %s, the sender sent %d bytes with %s", ErrMismatch, req, cc.Target(), total, req.sumName(), got, t.Bytes, sent)
			}
			if want != "" && res.SHA256 != want {
				return Result{}, fmt.Errorf("%w: %s from %s: content has SHA-256 %s, want %s", ErrMismatch, req, cc.Target(), res.SHA256, want)
			}
			// The stream must end here; anything more is a protocol error.
			var extra frame
			err = st.RecvMsg(&extra)
			extra.release()
			if !errors.Is(err, io.EOF) {
				if err == nil {
					err = errors.New("data after the trailer")
				}
				return fail(err)
			}
			return res, nil
		default:
			in.release()
			return fail(fmt.Errorf("unexpected message kind %q", in.kind))
		}
	}
}
