package bulk

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"

	"github.com/ringtune/ringtune/auth"
)

const (
	serviceName = "ringtune.bulk.Bulk"
	getName     = "Get"
	// GetMethod is the full method name, for authentication.
	GetMethod = "/" + serviceName + "/" + getName
)

// Source opens the byte stream a request names. The server reads it to EOF
// (a read error other than io.EOF aborts the transfer with that error, and
// the client rejects it) and closes it when the transfer ends, succeeds or
// fails; Close must unblock a Read in progress. An error from Source goes
// back to the client as the transfer's error: it should say what is missing
// and why.
type Source func(ctx context.Context, r Request) (io.ReadCloser, error)

// Server serves Get from a Source.
type Server struct {
	key     auth.Key
	src     Source
	timeout atomic.Int64 // per-chunk deadline, ns
}

// NewServer returns a bulk service reading from src. chunkTimeout (0:
// DefaultChunkTimeout) bounds the time to produce and send one chunk; past
// it the transfer is abandoned and the source closed.
func NewServer(key auth.Key, src Source, chunkTimeout time.Duration) (*Server, error) {
	if err := key.Validate(); err != nil {
		return nil, fmt.Errorf("bulk: NewServer: %w", err)
	}
	if src == nil {
		return nil, errors.New("bulk: NewServer: nil source")
	}
	s := &Server{key: key, src: src}
	s.SetChunkTimeout(chunkTimeout)
	return s, nil
}

// SetChunkTimeout changes the per-chunk deadline of transfers that start
// from now on (0: DefaultChunkTimeout). A node learns the cluster's
// cluster.bulk_timeout only from its job, after its server is up.
func (s *Server) SetChunkTimeout(d time.Duration) {
	if d <= 0 {
		d = DefaultChunkTimeout
	}
	s.timeout.Store(int64(d))
}

type service interface{ get(grpc.ServerStream) error }

var serviceDesc = grpc.ServiceDesc{
	ServiceName: serviceName,
	HandlerType: (*service)(nil),
	Streams: []grpc.StreamDesc{{
		StreamName:    getName,
		ServerStreams: true,
		Handler: func(srv any, ss grpc.ServerStream) error {
			return srv.(service).get(ss)
		},
	}},
	Metadata: "bulk (see package doc for the wire format)",
}

// Register adds the service to a gRPC server, whose options (auth, TLS,
// flow-control windows) then apply to it.
func (s *Server) Register(reg grpc.ServiceRegistrar) { reg.RegisterService(&serviceDesc, s) }

func (s *Server) get(ss grpc.ServerStream) error {
	if err := s.key.CheckContext(ss.Context(), GetMethod); err != nil {
		return err
	}
	var in frame
	if err := ss.RecvMsg(&in); err != nil {
		return fmt.Errorf("bulk: read request: %w", err)
	}
	if in.kind != kindRequest {
		in.release()
		return status.Errorf(codes.InvalidArgument, "bulk: first message is of kind %q, want a request", in.kind)
	}
	var req Request
	err := json.Unmarshal(in.body, &req)
	in.release()
	if err != nil {
		return status.Errorf(codes.InvalidArgument, "bulk: decode request: %v", err)
	}
	if err := req.validate(); err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	ctx, cancel := context.WithCancel(ss.Context())
	defer cancel()
	rc, err := s.src(ctx, req)
	if err != nil {
		return status.Errorf(codes.Unavailable, "bulk: %s: %v", req, err)
	}
	var once sync.Once
	closeSrc := func() { once.Do(func() { _ = rc.Close() }) }
	defer closeSrc()
	// A client that goes away (or cancels) ends the transfer: closing the
	// source unblocks a producer waiting on it.
	stopAfter := context.AfterFunc(ctx, closeSrc)
	defer stopAfter()

	// The watchdog closes the source when one chunk takes longer than the
	// timeout: that unblocks a producer stuck behind a dead consumer (the
	// send stalls under flow control until gRPC notices the peer is gone)
	// or a source that stopped producing.
	stalled := false
	var mu sync.Mutex
	timeout := time.Duration(s.timeout.Load())
	dog := time.AfterFunc(timeout, func() {
		mu.Lock()
		stalled = true
		mu.Unlock()
		cancel()
		closeSrc()
	})
	defer dog.Stop()

	size := req.chunk()
	h := req.newSum()
	var total int64
	for {
		bp := pool.Get(size)
		n, rerr := io.ReadFull(rc, *bp)
		if n > 0 {
			h.Write((*bp)[:n])
			total += int64(n)
			*bp = (*bp)[:n]
			if err := ss.SendMsg(&frame{kind: kindData, payload: mem.NewBuffer(bp, pool)}); err != nil {
				return err
			}
			dog.Reset(timeout)
		} else {
			pool.Put(bp)
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			break
		}
		if rerr != nil {
			mu.Lock()
			st := stalled
			mu.Unlock()
			if st {
				return status.Errorf(codes.DeadlineExceeded, "bulk: %s: no progress for %s after %d bytes", req, timeout, total)
			}
			return status.Errorf(codes.Aborted, "bulk: %s: source failed after %d bytes: %v", req, total, rerr)
		}
	}
	f, err := jsonFrame(kindEnd, req.trailerFor(total, h))
	if err != nil {
		return err
	}
	return ss.SendMsg(f)
}
