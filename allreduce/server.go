package allreduce

import (
	"context"
	"crypto/tls"
	"fmt"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ringtune/ringtune/auth"
)

// gRPC transport tuning for ring traffic, shared by the ring's own server,
// ServerOptions and the ring's client connections.
const (
	// streamWindow is the HTTP/2 stream flow-control window. A fixed window
	// at or above 64 KiB also turns off gRPC's BDP probing, which on loopback
	// grows windows slowly and stalls big chunks. 16 MiB keeps 4–16 chunks
	// in flight per link, which hides the receiver's add behind the sender.
	streamWindow = 16 << 20
	// connWindow covers one ring stream plus control traffic on the same
	// connection.
	connWindow = 32 << 20
	// ioBuffer is gRPC's bufio size for socket reads and writes: 1 MiB turns
	// a chunk into a handful of syscalls instead of one per 32 KiB default.
	ioBuffer = 1 << 20
	// maxMsg admits the largest chunk plus header (gRPC's default receive
	// limit of 4 MiB would refuse chunks above it).
	maxMsg = MaxChunkBytes + headerLen + 1024
)

const (
	serviceName  = "ringtune.allreduce.Ring"
	streamName   = "Stream"
	streamMethod = "/" + serviceName + "/" + streamName
)

// helloWait bounds how long an incoming stream waits for the local ring of
// its generation to be created (peers of a new generation start at slightly
// different times).
const helloWait = DefaultTimeout

// TransportServerOptions are the flow-control and buffer settings a gRPC
// server needs to carry ring traffic at full speed.
func TransportServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.InitialWindowSize(streamWindow),
		grpc.InitialConnWindowSize(connWindow),
		grpc.WriteBufferSize(ioBuffer),
		grpc.ReadBufferSize(ioBuffer),
		grpc.MaxRecvMsgSize(maxMsg),
	}
}

// ServerOptions are TransportServerOptions plus authentication (and TLS when
// tlsConf is set): use them to build a *grpc.Server that hosts a Server next
// to other services.
func ServerOptions(key auth.Key, tlsConf *tls.Config) []grpc.ServerOption {
	return append(TransportServerOptions(), auth.ServerOptions(key, tlsConf)...)
}

func dialOptions(key auth.Key, tlsConf *tls.Config) []grpc.DialOption {
	return append(auth.DialOptions(key, tlsConf),
		grpc.WithInitialWindowSize(streamWindow),
		grpc.WithInitialConnWindowSize(connWindow),
		grpc.WithWriteBufferSize(ioBuffer),
		grpc.WithReadBufferSize(ioBuffer),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxMsg), grpc.MaxCallSendMsgSize(maxMsg)),
		// Retries would keep sent chunks referenced for replay; a ring
		// stream is never retried, a failure ends the generation.
		grpc.WithDisableRetry(),
	)
}

// Server is the ring's gRPC service. Register it once on a *grpc.Server;
// rings of successive generations attach to it (Config.Server) and incoming
// streams are routed by the generation in their hello.
type Server struct {
	key     auth.Key
	mu      sync.Mutex
	rings   map[uint64]*Ring
	newest  uint64
	changed chan struct{} // closed and replaced when rings change
}

// NewServer returns a ring service that accepts streams authenticated with
// key. It checks the token itself as well, so it is safe even on a server
// built without auth interceptors.
func NewServer(key auth.Key) (*Server, error) {
	if err := key.Validate(); err != nil {
		return nil, fmt.Errorf("allreduce: NewServer: %w", err)
	}
	return &Server{key: key, rings: map[uint64]*Ring{}, changed: make(chan struct{})}, nil
}

// ringService exists so grpc.ServiceDesc.HandlerType has an interface to
// check *Server against.
type ringService interface {
	serveStream(grpc.ServerStream) error
}

var serviceDesc = grpc.ServiceDesc{
	ServiceName: serviceName,
	HandlerType: (*ringService)(nil),
	Streams: []grpc.StreamDesc{{
		StreamName:    streamName,
		ServerStreams: true,
		ClientStreams: true,
		Handler: func(srv any, ss grpc.ServerStream) error {
			return srv.(ringService).serveStream(ss)
		},
	}},
	Metadata: "allreduce (see package doc for the wire format)",
}

// Register adds the ring service to a gRPC server (or any registrar).
func (s *Server) Register(reg grpc.ServiceRegistrar) { reg.RegisterService(&serviceDesc, s) }

func (s *Server) attach(r *Ring) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.rings[r.cfg.Generation]; ok {
		return fmt.Errorf("allreduce: a ring for generation %d is already attached to this server; Close it first", r.cfg.Generation)
	}
	s.rings[r.cfg.Generation] = r
	s.newest = max(s.newest, r.cfg.Generation)
	close(s.changed)
	s.changed = make(chan struct{})
	return nil
}

func (s *Server) detach(r *Ring) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.rings[r.cfg.Generation] == r {
		delete(s.rings, r.cfg.Generation)
	}
}

// lookup finds the ring of generation gen, waiting briefly for it to be
// created; a generation older than the newest one ever attached is stale and
// refused at once.
func (s *Server) lookup(ctx context.Context, gen uint64) (*Ring, error) {
	timer := time.NewTimer(helloWait)
	defer timer.Stop()
	for {
		s.mu.Lock()
		r, ok := s.rings[gen]
		newest, ch := s.newest, s.changed
		s.mu.Unlock()
		if ok {
			return r, nil
		}
		if gen < newest {
			return nil, fmt.Errorf("stream for generation %d rejected: this node is at generation %d (the sender is stale; it must rejoin)", gen, newest)
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-timer.C:
			return nil, fmt.Errorf("stream for generation %d rejected: no ring of that generation was created here within %v (newest is %d)", gen, helloWait, newest)
		}
	}
}

func (s *Server) serveStream(ss grpc.ServerStream) error {
	if err := s.key.CheckContext(ss.Context(), streamMethod); err != nil {
		return err
	}
	var in inMsg
	if err := ss.RecvMsg(&in); err != nil {
		return fmt.Errorf("allreduce: reading hello: %w", err)
	}
	r, err := s.lookup(ss.Context(), in.hdr.Gen)
	if err != nil {
		return status.Error(codes.FailedPrecondition, "allreduce: "+err.Error())
	}
	return r.serveLeft(ss, in.hdr)
}
